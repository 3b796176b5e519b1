"""Where exactly is the outline, and do the pixels where pairs will go really move with their side?

Corrections applied to ordered boundary points before pairs are sampled:

* **Placement (snapping to the outline).** Patch-based flow (DIS, and to a lesser degree RAFT) spreads the
  occluder's motion onto what it occludes: the silhouette is part of the occluder's appearance, so every patch
  that contains it moves with the occluder. A flow edge therefore sits on the *back* side of the true outline, by
  a distance that differs per edge and per frame (on our synthetic scenes with ground truth: 0 to 14 px with the
  default DIS flow; a fixed shift of 2 px put 40 % of the moving outline within 4 px of a point). The flow found
  the boundary; the image says exactly where it is: each point moves to the strongest colour edge along its
  normal between ``snap_behind`` px behind and ``snap_ahead`` px ahead of it (towards the front side), which put
  52 % of the outline within 4 px. Intensity only places a boundary that the flow found, it never finds one.
* **Verification.** A pair point is only as good as the surface it lands on. For the front point
  ``p + offset·n`` and the back point ``p - offset·n``, a small patch is warped to the neighbouring frames
  with the front side's motion and with the back side's motion. The front motion is the flow ``motion_offset``
  px inside the front side; the back motion is the flow ``motion_offset`` px beyond the *flow* edge, outside the
  band onto which the occluder's motion was smeared (after snapping, that band lies between the outline and
  the flow edge). The point's own side must not explain its pixels worse than the other side does by more than
  ``-min_margin``: this drops points that landed on the wrong surface, while a pixel of plain background that
  neither motion explains better keeps its pair. But the side that moves more must show it: its own motion must
  explain its pair pixels better than the other side's by ``min_mover_margin``. Flow over a plain surface is
  filled in from around it and can be wrong by pixels (a white wall beside a static skirting board, 3-5 px
  where nothing moves); such a motion, carried by no texture, is no evidence of an occlusion.
* **Edge test.** An occlusion boundary moves with its occluder. A patch centred on the (snapped) outline,
  warped with the front side's motion, must match the neighbouring frames better than with the back side's
  motion (by ``min_edge_margin``). This decides the order photometrically on the exact outline, where the
  landing vote of :mod:`~dynocc_data.generation.ordering` decided it from flow edges a few pixels away: on
  synthetic scenes it removes four in five wrong-order pairs (a moving object behind a static occluder, a
  trailing edge taken for a leading one), and the painted edges next to a moving object that a snap caught
  (they stay with the ground).
* **Shadow test.** A cast shadow moves with its object, so patch-based flow tracks its outline like an
  occlusion edge and the tests above pass; yet both of its sides are the same ground. A shadow (and a
  shading change) scales the light but keeps the colour's direction in RGB, while two different surfaces
  rarely share it exactly. So the two pair points' mean colours must differ in direction by at least
  ``min_colour_angle`` degrees. This is the test that removes most same-surface pairs on synthetic scenes
  with shadows; its cost is the edges between two surfaces of the same hue (grey on grey), which are dropped
  too.
* **One-motion test.** Patch flow inside a large, fast, plainly coloured rigid object (a car seen from above) is
  not uniform: a white roof and a dark windscreen get flows a pixel or two apart out of 30, and the boundary
  detector finds an edge there. A true occlusion boundary separates two motions that differ by a large share of
  the motion itself. So the two sides' flows must differ by at least ``min_motion_contrast`` of the larger of
  them (on the static-camera cars: every pair inside a car below 0.15, every right one above 0.25).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .boundaries import sample_bilinear
from .cuts import patch_residuals

SideMotions = list[tuple[torch.Tensor, torch.Tensor]]
"""Per flow, the front and the back side's motion [N,2] of every point (see ``_side_motions``)."""

__all__ = ["RefineConfig", "colour_edge_offsets", "side_margins", "edge_margins", "motion_contrasts",
           "colour_angles", "brightness_ratios", "refine_boundaries"]


@dataclass(frozen=True)
class RefineConfig:
    """Placement and verification of ordered boundary points (pixels of the processed frame).

    Attributes:
        snap_behind: snap each point to the strongest colour edge between ``snap_behind`` px behind it...
        snap_ahead: ...and ``snap_ahead`` px ahead of it, towards its front side (see module doc); None for
            ``snap_behind``: no snapping, every point moves ``shift`` px instead.
        shift: without snapping, move every point this far towards its front side (the mean bias of flow edges).
        pair_offset: verify the pixels this far either side of the (shifted) boundary: where pairs are sampled.
        motion_offset: each side's motion is the flow this far off the boundary, beyond the smeared band.
        min_margin: keep points whose two pair pixels are explained by their own side's motion at least this much
            better than by the other's (mean absolute RGB difference, 0..1; negative: at most that much worse);
            None keeps every point.
        min_mover_margin: keep points where the side that moves more (mean flow length over the neighbours) has a
            margin of at least this: the relative motion must show in the pixels of the side that carries it (the
            plain wall whose flow is wrong beside a static crease, see module doc); None keeps every point.
        min_edge_margin: keep points whose outline patch is explained at least this much better by the front side's
            motion than by the back side's (the edge test, see module doc); None keeps every point.
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

    Raises:
        ConfigError: naming the option, when a distance is negative or not a number.
    """

    snap_behind: float | None = 3.0
    snap_ahead: float = 14.0
    shift: float = 2.0
    pair_offset: float = 6.0
    motion_offset: float = 10.0
    min_margin: float | None = -0.01
    min_mover_margin: float | None = 0.005
    min_edge_margin: float | None = 0.003
    patch: int = 1
    patch_step: float = 2.0
    min_colour_angle: float | None = 8.0
    shadow_exempt_ratio: float | None = None
    min_motion_contrast: float | None = 0.2
    min_segment: int = 20

    def __post_init__(self) -> None:
        """Check the placement options (one-line :class:`~dynocc_data.errors.ConfigError` naming the option)."""
        for name in ("snap_behind", "snap_ahead", "shift", "pair_offset", "motion_offset"):
            value = getattr(self, name)
            if value is None and name == "snap_behind":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ConfigError(f"refine.{name}", f"must be a distance in pixels >= 0, got {value!r}")


def colour_edge_offsets(ordered, image: torch.Tensor, *, behind: float, ahead: float, width: int = 2) -> torch.Tensor:
    """Where along each normal the colour changes most: the offset [N] of the snapped outline.

    The frame is sampled at ``p + s·n`` for ``s`` from ``-behind`` to ``ahead`` in steps of 1 px (bilinear), on
    parallel lines every 2 px up to ``width`` px either side, whose colours are averaged (an outline runs along the
    lines and stays sharp, a texture inside a surface averages out: on textured squares this took the share of
    points within 3 px of the outline from 88-94 % to 93-97 %, as five lines 1 px apart did at 5/3 of the cost),
    and the offset is the ``s`` with the largest colour gradient ``|I(s + 1) - I(s - 1)|`` (RGB vector norm, so a
    change of hue counts as much as one of brightness).

    Args:
        ordered: ordered boundary points (normals point to the front side).
        image: float RGB [B,3,H,W] in 0..1, the frames of the points.
        behind: the search starts this many px behind the point (on its back side)...
        ahead: ...and ends this many px ahead of it.
        width: the profile is the mean of the lines every 2 px up to this many px either side (along the outline).

    Returns:
        float [N], px along each normal (positive: towards the front side).
    """
    n = len(ordered)
    if n == 0:
        return image.new_zeros(0)
    s = torch.arange(-float(behind) - 1.0, float(ahead) + 1.5, 1.0, device=image.device, dtype=image.dtype)
    tt = torch.arange(-width, width + 1, 2, device=image.device, dtype=image.dtype)
    y, x = ordered.y.to(image.dtype)[:, None, None], ordered.x.to(image.dtype)[:, None, None]
    ny, nx = ordered.normal[:, :1, None], ordered.normal[:, 1:, None]
    S, T = s.numel(), tt.numel()
    s_, t_ = s[None, :, None], tt[None, None, :]
    b = ordered.b[:, None].expand(n, S * T).reshape(-1)
    py = (y + s_ * ny + t_ * nx).reshape(-1)
    px = (x + s_ * nx - t_ * ny).reshape(-1)
    profile = sample_bilinear(image, b, py, px).view(n, S, T, -1).mean(2)
    gradient = (profile[:, 2:] - profile[:, :-2]).norm(dim=2)  # at s[1:-1]; the constant 1/2 changes no argmax
    return s[1:-1][gradient.argmax(1)]


def side_margins(ordered, image: torch.Tensor, flows: list[torch.Tensor], targets: list[torch.Tensor], *,
                 offset: float, motion_offset: float, patch: int = 1, step: float = 1.0,
                 back_reach: torch.Tensor | None = None, per_side: bool = False,
                 motions: SideMotions | None = None) -> torch.Tensor:
    """How much better each side's own motion explains the pixels where its pair point will go.

    For the front point p + offset·n and the back point p - offset·n, warp a small patch to every
    neighbour with the front motion (flow sampled at p + motion_offset·n) and with the back motion (at
    p - back_reach·n), and take ``residual(other motion) - residual(own motion)``, the best over the neighbours.

    Args:
        ordered: :class:`~dynocc_data.generation.ordering.OrderedBoundaries` (normals point to the front).
        image: the frames, float RGB [B,3,H,W] in 0..1.
        flows: ``flows[k]`` [B,2,H,W] leads to the frames ``targets[k]``.
        targets: the neighbour frames, as ``image``.
        offset: distance of the pair points from the boundary.
        motion_offset: distance off the boundary at which each side's motion is sampled.
        patch: the patch is a (2·patch+1)² grid of samples...
        step: ...this many pixels apart.
        back_reach: [N] distance behind each point at which the back motion is sampled (beyond the smeared band);
            None: ``motion_offset``.
        per_side: return both sides' margins instead of the smaller.
        motions: the sides' motions per flow as :func:`refine_boundaries` already sampled them (then ``flows``,
            ``motion_offset`` and ``back_reach`` are not read again); None samples them.

    Returns:
        The smaller of the two sides' margins [N] (with ``per_side``: [N,2], front point then back point): near 0
        where the pixels cannot tell the motions apart (no texture), negative where a point sits on the wrong
        surface.
    """
    n = len(ordered)
    if n == 0:
        return image.new_zeros(0)
    y, x = ordered.y.to(image.dtype), ordered.x.to(image.dtype)
    ny, nx = ordered.normal[:, 0], ordered.normal[:, 1]
    if motions is None:  # per neighbour: front, back motion
        motions = _side_motions(ordered, flows, motion_offset, back_reach)
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
    return torch.stack(margins, 1) if per_side else torch.minimum(*margins)


def edge_margins(ordered, image: torch.Tensor, flows: list[torch.Tensor], targets: list[torch.Tensor], *,
                 motion_offset: float, patch: int = 1, step: float = 1.0,
                 back_reach: torch.Tensor | None = None, motions: SideMotions | None = None) -> torch.Tensor:
    """Does the outline move with its front side? The edge test's margin [N].

    A patch centred on each point (so holding both sides of the outline) is warped to every neighbour with the
    front motion and with the back motion (as :func:`side_margins` samples them); the margin is
    ``residual(back motion) - residual(front motion)``, averaged over the neighbours. An occluder's outline moves
    with the occluder: positive. A painted edge, a shadow cast on a static wall or a boundary whose order was
    decided the wrong way round: negative.

    Args:
        ordered: ordered boundary points (normals point to the front side), on the outline.
        image: the frames, float RGB [B,3,H,W] in 0..1.
        flows: ``flows[k]`` [B,2,H,W] leads to the frames ``targets[k]``.
        targets: the neighbour frames, as ``image``.
        motion_offset: distance into the front side at which its motion is sampled.
        patch: the patch is a (2·patch+1)² grid of samples...
        step: ...this many pixels apart.
        back_reach: [N] distance behind each point at which the back motion is sampled; None: ``motion_offset``.
        motions: already sampled motions, as in :func:`side_margins`.

    Returns:
        float [N] (mean absolute RGB difference, -1..1).
    """
    n = len(ordered)
    if n == 0 or not flows:
        return image.new_zeros(n)
    if motions is None:
        motions = _side_motions(ordered, flows, motion_offset, back_reach)
    total = image.new_zeros(n)
    for (front, back), target in zip(motions, targets):
        res_front, res_back = patch_residuals(image, target, ordered.b, ordered.y, ordered.x, [front, back],
                                              patch=patch, step=step)
        total += res_back - res_front
    return total / len(flows)


def _mover(motions: SideMotions) -> torch.Tensor:
    """Per point, the side whose motion is longer (summed over the flows): int64 [N], 0 front, 1 back."""
    front = torch.stack([f.norm(dim=1) for f, _ in motions]).sum(0)
    back = torch.stack([b.norm(dim=1) for _, b in motions]).sum(0)
    return (back > front).long()


def _side_motions(ordered, flows: list[torch.Tensor], motion_offset: float,
                  back_reach: torch.Tensor | None = None) -> SideMotions:
    """Per flow, the front and back motions [N,2]: the flow at p + motion_offset·n and at p - back_reach·n."""
    if not flows:
        return []
    y, x = ordered.y.to(flows[0].dtype), ordered.x.to(flows[0].dtype)
    back = motion_offset if back_reach is None else back_reach
    ny, nx = ordered.normal[:, 0], ordered.normal[:, 1]
    return [(sample_bilinear(flow, ordered.b, y + motion_offset * ny, x + motion_offset * nx),
             sample_bilinear(flow, ordered.b, y - back * ny, x - back * nx)) for flow in flows]


def motion_contrasts(ordered, flows: list[torch.Tensor], *, motion_offset: float,
                     back_reach: torch.Tensor | None = None, motions: SideMotions | None = None) -> torch.Tensor:
    """How different the two sides' motions are, as a share of the larger one [N] (mean over the flows).

    ``|f(p + d·n) - f(p - d·n)| / max(|f(p + d·n)|, |f(p - d·n)|)`` with ``d = motion_offset``: near 0 where both
    sides move alike (one rigid object with a flow error inside it), 1 where one side is still, up to 2 where they
    move opposite ways.

    Args:
        ordered: ordered boundary points (normals point to the front side).
        flows: ``flows[k]`` [B,2,H,W], the flows of the points' frames.
        motion_offset: distance off the boundary at which each side's motion is sampled, px.
        back_reach: [N] distance behind each point at which the back motion is sampled; None: ``motion_offset``.
        motions: already sampled motions, as in :func:`side_margins`.

    Returns:
        float [N], 0..2.
    """
    n = len(ordered)
    if n == 0 or not flows:
        return torch.zeros(n, device=ordered.normal.device)
    total = torch.zeros(n, dtype=flows[0].dtype, device=flows[0].device)
    if motions is None:
        motions = _side_motions(ordered, flows, motion_offset, back_reach)
    for front, back in motions:
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
    """Place ordered points on the outline, then keep those whose pair pixels and outline verify.

    Args:
        ordered: :class:`~dynocc_data.generation.ordering.OrderedBoundaries` (normals point to the front) of the
            frames ``image``.
        image: the frames, float RGB [B,3,H,W] in 0..1.
        flows: ``flows[k]`` [B,2,H,W] leads to the frames ``targets[k]``.
        targets: the neighbour frames, as ``image``.
        config: the placement and verification parameters.
        stages: when a dict, the points after each step (``placed``, ``motion``, ``shadow``, ``margin``, ``edge``,
            ``final``) are put in it, to measure what each step keeps.

    Returns:
        The placed points that pass the one-motion test, the shadow test, the margin check and the edge test, in
        segments of at least ``min_segment`` points. Each test keeps or drops a point on its own, so their order
        changes nothing but the time: the cheap ones run first, on every point.
    """
    stages = {} if stages is None else stages
    if config.snap_behind is not None:
        offset = colour_edge_offsets(ordered, image, behind=config.snap_behind, ahead=config.snap_ahead)
    else:
        offset = torch.full((len(ordered),), float(config.shift), device=ordered.normal.device)
    out = stages["placed"] = ordered.shifted(offset)
    # the sides' motions, sampled once for every test: the back side's beyond the flow edge (where the point was
    # before it moved), outside the band onto which the flow smeared the occluder's motion
    motions = _side_motions(out, flows, config.motion_offset, config.motion_offset + offset.clamp_min(0))

    def keep_where(keep: torch.Tensor) -> None:
        nonlocal out, motions
        out = out.select(keep)
        motions = [(front[keep], back[keep]) for front, back in motions]

    if config.min_motion_contrast is not None and len(out):
        keep_where(motion_contrasts(out, flows, motion_offset=config.motion_offset, motions=motions)
                   >= config.min_motion_contrast)
    stages["motion"] = out
    if config.min_colour_angle is not None and len(out):
        angle = colour_angles(out, image, offset=config.pair_offset, patch=config.patch, step=config.patch_step)
        keep = angle >= config.min_colour_angle
        if config.shadow_exempt_ratio is not None:
            keep |= brightness_ratios(out, image, offset=config.pair_offset, patch=config.patch,
                                      step=config.patch_step) >= config.shadow_exempt_ratio
        keep_where(keep)
    stages["shadow"] = out
    if (config.min_margin is not None or config.min_mover_margin is not None) and len(out):
        margins = side_margins(out, image, flows, targets, offset=config.pair_offset,
                               motion_offset=config.motion_offset, patch=config.patch, step=config.patch_step,
                               per_side=True, motions=motions)
        keep = torch.ones(len(out), dtype=torch.bool, device=margins.device)
        if config.min_margin is not None:
            keep &= margins.amin(1) >= config.min_margin
        if config.min_mover_margin is not None and motions:
            keep &= margins.gather(1, _mover(motions)[:, None])[:, 0] >= config.min_mover_margin
        keep_where(keep)
    stages["margin"] = out
    if config.min_edge_margin is not None and len(out):
        keep_where(edge_margins(out, image, flows, targets, motion_offset=config.motion_offset, patch=config.patch,
                                step=config.patch_step, motions=motions) >= config.min_edge_margin)
    stages["edge"] = out
    if config.min_segment > 1 and len(out):
        _, seg, count = torch.unique(out.segment, return_inverse=True, return_counts=True)
        keep_where(count[seg] >= config.min_segment)
    stages["final"] = out
    return out
