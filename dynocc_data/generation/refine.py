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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .boundaries import sample_bilinear
from .cuts import patch_residuals

__all__ = ["RefineConfig", "side_margins", "match_ratios", "refine_boundaries"]


@dataclass(frozen=True)
class RefineConfig:
    """Placement and verification of ordered boundary points (pixels of the processed frame)."""

    shift: float = 2.0
    """Move every point this far towards its front side (the bias of flow edges, see module doc)."""
    pair_offset: float = 6.0
    """Verify the pixels this far either side of the (shifted) boundary: where pairs are sampled."""
    motion_offset: float = 10.0
    """Each side's motion is the flow this far off the boundary, beyond the smeared band."""
    min_margin: float = 0.0075
    """Keep points whose two pair pixels are explained better by their own side's motion than by the
    other's by at least this mean absolute RGB difference (0..1); None keeps every point."""
    patch: int = 1
    """The patch compared is a (2·patch+1)² grid of samples..."""
    patch_step: float = 2.0
    """...``patch_step`` pixels apart (1, 2: nine samples spread over 5x5 pixels)."""
    zero_mean: bool = False
    """Compare patches with their mean colour removed (see ``patch_residuals``): a shadow moving over static
    ground darkens it but leaves its texture in place, so the ground's own motion explains it."""
    max_ratio: float | None = None
    """Keep points whose two pair pixels each match their own side's motion at least this much better (ratio of
    patch residuals) than that motion moved ``ratio_shift`` px (see :func:`match_ratios`); None: no test."""
    ratio_shift: float = 3.0
    min_segment: int = 20
    """Finally drop segments with fewer surviving points: real occlusion boundaries are long and
    coherent, flow artefacts are short fragments."""


def side_margins(ordered, image: torch.Tensor, flows: list[torch.Tensor], targets: list[torch.Tensor], *,
                 offset: float, motion_offset: float, patch: int = 1, step: float = 1.0,
                 zero_mean: bool = False) -> torch.Tensor:
    """How much better each side's own motion explains the pixels where its pair point will go.

    For the front point p + offset·n and the back point p - offset·n, warp a small patch to every
    neighbour with the front motion (flow sampled at p + motion_offset·n) and with the back motion, and take
    ``residual(other motion) - residual(own motion)``, the best over the neighbours. Returns the smaller of
    the two sides' margins [N]: near 0 where the pixels cannot tell the motions apart (no texture),
    negative where a point sits on the wrong surface.
    """
    n = len(ordered)
    if n == 0:
        return image.new_zeros(0)
    y, x = ordered.y.to(image.dtype), ordered.x.to(image.dtype)
    ny, nx = ordered.normal[:, 0], ordered.normal[:, 1]
    motions = [[sample_bilinear(flow, ordered.b, y + s * motion_offset * ny, x + s * motion_offset * nx)
                for s in (1.0, -1.0)] for flow in flows]  # per neighbour: front, back motion
    margins = []
    for side in (0, 1):  # front point, back point
        s = 1.0 if side == 0 else -1.0
        qy, qx = y + s * offset * ny, x + s * offset * nx
        best = torch.full((n,), -float("inf"), device=image.device)
        for (front, back), target in zip(motions, targets):
            res_front, res_back = patch_residuals(image, target, ordered.b, qy, qx, [front, back], patch=patch,
                                                  step=step, zero_mean=zero_mean)
            best = torch.maximum(best, res_back - res_front if side == 0 else res_front - res_back)
        margins.append(best)
    return torch.minimum(*margins)


def match_ratios(ordered, image: torch.Tensor, flows: list[torch.Tensor], targets: list[torch.Tensor], *,
                 offset: float, motion_offset: float, patch: int = 1, step: float = 1.0, shift: float = 3.0,
                 zero_mean: bool = True) -> torch.Tensor:
    """How distinctly each side's own motion matches the pixels where its pair point will go.

    For the front point p + offset·n with the front motion (flow at p + motion_offset·n), and the back point with
    the back motion: the patch residual with that motion divided by the smallest residual with the motion moved
    ``shift`` px up, down, left or right; the best (lowest) over the neighbours. A right motion on textured
    pixels matches far better than its shifted copies (ratio well below 1); a wrong one (a shadow or smeared flow
    carried onto static ground, flow filled into a plain surface) matches no better than they do (ratio near 1),
    and so does any motion on pixels without texture. Returns the larger of the two sides' ratios [N].
    """
    n = len(ordered)
    if n == 0:
        return image.new_zeros(0)
    y, x = ordered.y.to(image.dtype), ordered.x.to(image.dtype)
    ny, nx = ordered.normal[:, 0], ordered.normal[:, 1]
    offsets = torch.tensor([[0.0, 0.0], [shift, 0.0], [-shift, 0.0], [0.0, shift], [0.0, -shift]],
                           device=image.device, dtype=image.dtype)
    worst = torch.zeros(n, device=image.device, dtype=image.dtype)
    for s in (1.0, -1.0):  # front point with the front motion, back point with the back motion
        qy, qx = y + s * offset * ny, x + s * offset * nx
        best = torch.full((n,), float("inf"), device=image.device, dtype=image.dtype)
        for flow, target in zip(flows, targets):
            motion = sample_bilinear(flow, ordered.b, y + s * motion_offset * ny, x + s * motion_offset * nx)
            res = patch_residuals(image, target, ordered.b, qy, qx, [motion + o for o in offsets], patch=patch,
                                  step=step, zero_mean=zero_mean)
            best = torch.minimum(best, res[0] / torch.stack(res[1:]).amin(0).clamp_min(1e-6))
        worst = torch.maximum(worst, best)
    return worst


def refine_boundaries(ordered, image: torch.Tensor, flows: list[torch.Tensor], targets: list[torch.Tensor],
                      config: RefineConfig = RefineConfig()):
    """Shift ordered points towards their front side, then keep those whose pair pixels verify.

    ``ordered``: :class:`~dynocc_data.generation.ordering.OrderedBoundaries` (normals point to the front) of the frames
    ``image`` (float RGB [B,3,H,W] in 0..1); ``flows[k]`` [B,2,H,W] lead to the frames ``targets[k]``.
    """
    out = ordered.shifted(torch.full((len(ordered),), float(config.shift), device=ordered.normal.device))
    if config.min_margin is not None and len(out):
        margin = side_margins(out, image, flows, targets, offset=config.pair_offset,
                              motion_offset=config.motion_offset, patch=config.patch, step=config.patch_step,
                              zero_mean=config.zero_mean)
        out = out.shifted(torch.zeros_like(margin), margin >= config.min_margin)
    if config.max_ratio is not None and len(out):
        ratio = match_ratios(out, image, flows, targets, offset=config.pair_offset,
                             motion_offset=config.motion_offset, patch=config.patch, step=config.patch_step,
                             shift=config.ratio_shift)
        out = out.shifted(torch.zeros_like(ratio), ratio <= config.max_ratio)
    if config.min_segment > 1 and len(out):
        _, seg, count = torch.unique(out.segment, return_inverse=True, return_counts=True)
        out = out.shifted(torch.zeros(len(out), device=out.normal.device), count[seg] >= config.min_segment)
    return out
