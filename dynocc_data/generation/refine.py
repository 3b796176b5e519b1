"""Where exactly is the outline, and do the pixels where pairs will go really move with their side?

Two corrections applied to ordered boundary points before pairs are sampled:

* **Placement.** Patch-based flow (DIS, and to a lesser degree RAFT) spreads the occluder's motion a few
  pixels onto what it occludes: the silhouette is part of the occluder's appearance, so every patch that
  contains it moves with the occluder. A flow edge therefore sits on the *back* side of the true outline
  (on our synthetic scenes with ground truth: 0-4 px, about 2 px on average, with the default DIS flow).
  Once the front side is known, each point is moved ``shift`` pixels towards it.
* **Verification.** A pair point is only as good as the surface it lands on. For the front point
  ``p + offset·n`` and the back point ``p - offset·n``, a small patch is warped to the neighbouring frames
  with the front side's motion and with the back side's motion (each sampled well off the boundary). The
  point's own side must explain its pixels better than the other side does, by ``min_margin``: this drops
  points that landed on the wrong surface, and points where the image has too little texture for the two
  motions to be told apart (flow there is filled in from the surroundings, so neither placement nor order
  can be trusted). Intensity serves only as evidence of motion, never to find edges.
* **Shadow test.** A cast shadow moves with its object, so patch-based flow tracks its outline like an
  occlusion edge and the two tests above pass; yet both of its sides are the same ground. A shadow (and a
  shading change) scales the light but keeps the colour's direction in RGB, while two different surfaces
  rarely share it exactly. So the two pair points' mean colours must differ in direction by at least
  ``min_colour_angle`` degrees. This is the test that removes most same-surface pairs on synthetic scenes
  with shadows; its cost is the edges between two surfaces of the same hue (grey on grey), which are dropped
  too.
* **One-motion test.** Patch flow inside a large, fast, plainly coloured rigid object (a car seen from above) is
  not uniform: a white roof and a dark windscreen get flows a pixel or two apart out of 30, and the boundary
  detector finds an edge there. A true occlusion boundary separates two motions that differ by a large share of
  the motion itself. So the two sides' flows (at ``motion_offset``) must differ by at least
  ``min_motion_contrast`` of the larger of them (on the static-camera cars: every pair inside a car below 0.15,
  every right one above 0.25).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .boundaries import sample_bilinear
from .cuts import patch_residuals

__all__ = ["RefineConfig", "side_margins", "motion_contrasts", "colour_angles", "brightness_ratios",
           "refine_boundaries"]


@dataclass(frozen=True)
class RefineConfig:
    """Placement and verification of ordered boundary points (pixels of the processed frame).

    Attributes:
        shift: move every point this far towards its front side (the bias of flow edges, see module doc).
        pair_offset: verify the pixels this far either side of the (shifted) boundary: where pairs are sampled.
        motion_offset: each side's motion is the flow this far off the boundary, beyond the smeared band.
        min_margin: keep points whose two pair pixels are explained better by their own side's motion than by the
            other's by at least this mean absolute RGB difference (0..1); None keeps every point.
        patch: the patch compared is a (2·patch+1)² grid of samples...
        patch_step: ...``patch_step`` pixels apart (1, 2: nine samples spread over 5x5 pixels).
        min_colour_angle: keep points whose two pair pixels' mean colours (same patch) differ in direction by at
            least this many degrees (the shadow test, see module doc); None keeps every point.
        shadow_exempt_ratio: the colour test spares points whose front pair point is at least this many times as
            bright as the back one (:func:`brightness_ratios`): a shadow darkens the side that moves with it, so
            such an edge cannot be one (grey-on-grey outlines such as a light car on asphalt survive); None: the
            colour test everywhere (default: 1.5 gains frames and pairs on grey footage but costs 0.3 points of
            precision on synthetic scenes, see the README).
        min_motion_contrast: keep points whose two sides' motions differ by at least this share of the larger
            of them (:func:`motion_contrasts`, the one-motion test, see module doc); None keeps every point.
        min_segment: finally drop segments with fewer surviving points: real occlusion boundaries are long and
            coherent, flow artefacts are short fragments.
    """

    shift: float = 2.0
    pair_offset: float = 6.0
    motion_offset: float = 10.0
    min_margin: float = 0.0075
    patch: int = 1
    patch_step: float = 2.0
    min_colour_angle: float | None = 8.0
    shadow_exempt_ratio: float | None = None
    min_motion_contrast: float | None = 0.2
    min_segment: int = 20


def side_margins(ordered, image: torch.Tensor, flows: list[torch.Tensor], targets: list[torch.Tensor], *,
                 offset: float, motion_offset: float, patch: int = 1, step: float = 1.0) -> torch.Tensor:
    """How much better each side's own motion explains the pixels where its pair point will go.

    For the front point p + offset·n and the back point p - offset·n, warp a small patch to every
    neighbour with the front motion (flow sampled at p + motion_offset·n) and with the back motion, and take
    ``residual(other motion) - residual(own motion)``, the best over the neighbours.

    Args:
        ordered: :class:`~dynocc_data.generation.ordering.OrderedBoundaries` (normals point to the front).
        image: the frames, float RGB [B,3,H,W] in 0..1.
        flows: ``flows[k]`` [B,2,H,W] leads to the frames ``targets[k]``.
        targets: the neighbour frames, as ``image``.
        offset: distance of the pair points from the boundary.
        motion_offset: distance off the boundary at which each side's motion is sampled.
        patch: the patch is a (2·patch+1)² grid of samples...
        step: ...this many pixels apart.

    Returns:
        The smaller of the two sides' margins [N]: near 0 where the pixels cannot tell the motions apart (no
        texture), negative where a point sits on the wrong surface.
    """
    n = len(ordered)
    if n == 0:
        return image.new_zeros(0)
    y, x = ordered.y.to(image.dtype), ordered.x.to(image.dtype)
    ny, nx = ordered.normal[:, 0], ordered.normal[:, 1]
    motions = _side_motions(ordered, flows, motion_offset)  # per neighbour: front, back motion
    margins = []
    for side in (0, 1):  # front point, back point
        s = 1.0 if side == 0 else -1.0
        qy, qx = y + s * offset * ny, x + s * offset * nx
        best = torch.full((n,), -float("inf"), device=image.device)
        for (front, back), target in zip(motions, targets):
            res_front, res_back = patch_residuals(image, target, ordered.b, qy, qx, [front, back], patch=patch,
                                                  step=step)
            best = torch.maximum(best, res_back - res_front if side == 0 else res_front - res_back)
        margins.append(best)
    return torch.minimum(*margins)


def _side_motions(ordered, flows: list[torch.Tensor], motion_offset: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per flow, the front and back motions [N,2]: the flow sampled at p + motion_offset·n and p - motion_offset·n."""
    if not flows:
        return []
    y, x = ordered.y.to(flows[0].dtype), ordered.x.to(flows[0].dtype)
    dy, dx = motion_offset * ordered.normal[:, 0], motion_offset * ordered.normal[:, 1]
    return [(sample_bilinear(flow, ordered.b, y + dy, x + dx), sample_bilinear(flow, ordered.b, y - dy, x - dx))
            for flow in flows]


def motion_contrasts(ordered, flows: list[torch.Tensor], *, motion_offset: float) -> torch.Tensor:
    """How different the two sides' motions are, as a share of the larger one [N] (mean over the flows).

    ``|f(p + d·n) - f(p - d·n)| / max(|f(p + d·n)|, |f(p - d·n)|)`` with ``d = motion_offset``: near 0 where both
    sides move alike (one rigid object with a flow error inside it), 1 where one side is still, up to 2 where they
    move opposite ways.

    Args:
        ordered: ordered boundary points (normals point to the front side).
        flows: ``flows[k]`` [B,2,H,W], the flows of the points' frames.
        motion_offset: distance off the boundary at which each side's motion is sampled, px.

    Returns:
        float [N], 0..2.
    """
    n = len(ordered)
    if n == 0 or not flows:
        return torch.zeros(n, device=ordered.normal.device)
    total = torch.zeros(n, dtype=flows[0].dtype, device=flows[0].device)
    for front, back in _side_motions(ordered, flows, motion_offset):
        larger = torch.maximum(front.norm(dim=1), back.norm(dim=1)).clamp_min(1e-3)
        total += (front - back).norm(dim=1) / larger
    return total / len(flows)


def _pair_means(ordered, image: torch.Tensor, *, offset: float, patch: int, step: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean RGB [N,3] of the patches at the front pair pixel p + offset·n and at the back one p - offset·n."""
    n = len(ordered)
    r = torch.arange(-patch, patch + 1, device=image.device, dtype=image.dtype) * step
    oy, ox = (o.reshape(1, -1) for o in torch.meshgrid(r, r, indexing="ij"))
    P = oy.shape[1]
    b = ordered.b[:, None].expand(n, P).reshape(-1)
    y, x = ordered.y.to(image.dtype)[:, None], ordered.x.to(image.dtype)[:, None]
    ny, nx = ordered.normal[:, :1], ordered.normal[:, 1:]
    front, back = (sample_bilinear(image, b, (y + s * offset * ny + oy).reshape(-1),
                                   (x + s * offset * nx + ox).reshape(-1)).view(n, P, -1).mean(1) for s in (1.0, -1.0))
    return front, back


def colour_angles(ordered, image: torch.Tensor, *, offset: float, patch: int = 1, step: float = 1.0) -> torch.Tensor:
    """Angle in degrees [N] between the mean RGB colours of the patches at the two pair points p ± offset·n.

    Near 0 where both sides have the same colour up to brightness (a shadow, shading, one surface); the patch
    is the (2·patch+1)² grid of samples ``step`` px apart that :func:`~dynocc_data.generation.cuts.patch_residuals`
    compares.

    Args:
        ordered: ordered boundary points (normals point to the front side).
        image: float RGB [B,3,H,W] in 0..1, the frames of the points.
        offset: distance of the two pair points from the boundary, px.
        patch: half-size of the patch grid.
        step: spacing of the patch samples, px.

    Returns:
        float [N] angles in degrees, 0..90 for non-negative colours.
    """
    if len(ordered) == 0:
        return image.new_zeros(0)
    front, back = _pair_means(ordered, image, offset=offset, patch=patch, step=step)
    cos = (front * back).sum(1) / (front.norm(dim=1) * back.norm(dim=1)).clamp_min(1e-6)
    return torch.rad2deg(torch.acos(cos.clamp(-1.0, 1.0)))


def brightness_ratios(ordered, image: torch.Tensor, *, offset: float, patch: int = 1, step: float = 1.0
                      ) -> torch.Tensor:
    """Mean brightness of the front pair point's patch over the back one's [N] (the patches of :func:`colour_angles`).

    A cast shadow moves with its object, so on a shadow's outline the front side (the side that moves with the
    outline) is the shadowed one: the ratio is below 1. Where it is 1 or more the front side is not a shadow.

    Args:
        ordered: ordered boundary points (normals point to the front side).
        image: float RGB [B,3,H,W] in 0..1, the frames of the points.
        offset: distance of the two pair points from the boundary, px.
        patch: half-size of the patch grid.
        step: spacing of the patch samples, px.

    Returns:
        float [N], >= 0.
    """
    if len(ordered) == 0:
        return image.new_zeros(0)
    front, back = _pair_means(ordered, image, offset=offset, patch=patch, step=step)
    return front.mean(1) / back.mean(1).clamp_min(1e-4)


def refine_boundaries(ordered, image: torch.Tensor, flows: list[torch.Tensor], targets: list[torch.Tensor],
                      config: RefineConfig = RefineConfig(), *, stages: dict | None = None):
    """Shift ordered points towards their front side, then keep those whose pair pixels verify.

    Args:
        ordered: :class:`~dynocc_data.generation.ordering.OrderedBoundaries` (normals point to the front) of the
            frames ``image``.
        image: the frames, float RGB [B,3,H,W] in 0..1.
        flows: ``flows[k]`` [B,2,H,W] leads to the frames ``targets[k]``.
        targets: the neighbour frames, as ``image``.
        config: the placement and verification parameters.
        stages: when a dict, the points after each step (``placed``, ``motion``, ``margin``, ``shadow``,
            ``final``) are put in it, to measure what each step keeps.

    Returns:
        The shifted points that pass the one-motion test, the margin check (with ``min_margin``) and the shadow
        test, in segments of at least ``min_segment`` points.
    """
    stages = {} if stages is None else stages
    out = stages["placed"] = ordered.shifted(torch.full((len(ordered),), float(config.shift),
                                                        device=ordered.normal.device))
    if config.min_motion_contrast is not None and len(out):
        contrast = motion_contrasts(out, flows, motion_offset=config.motion_offset)
        out = out.shifted(torch.zeros_like(contrast), contrast >= config.min_motion_contrast)
    stages["motion"] = out
    if config.min_margin is not None and len(out):
        margin = side_margins(out, image, flows, targets, offset=config.pair_offset,
                              motion_offset=config.motion_offset, patch=config.patch, step=config.patch_step)
        out = out.shifted(torch.zeros_like(margin), margin >= config.min_margin)
    stages["margin"] = out
    if config.min_colour_angle is not None and len(out):
        angle = colour_angles(out, image, offset=config.pair_offset, patch=config.patch, step=config.patch_step)
        keep = angle >= config.min_colour_angle
        if config.shadow_exempt_ratio is not None:
            keep |= brightness_ratios(out, image, offset=config.pair_offset, patch=config.patch,
                                      step=config.patch_step) >= config.shadow_exempt_ratio
        out = out.shifted(torch.zeros_like(angle), keep)
    stages["shadow"] = out
    if config.min_segment > 1 and len(out):
        _, seg, count = torch.unique(out.segment, return_inverse=True, return_counts=True)
        out = out.shifted(torch.zeros(len(out), device=out.normal.device), count[seg] >= config.min_segment)
    stages["final"] = out
    return out
