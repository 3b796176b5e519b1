"""Which side of an occlusion boundary is in front (DynOcc step 4).

An occlusion boundary travels with the occluder. So move each boundary point of frame t by the flow of
each of its two sides (sampled a few pixels off the boundary, outside the band where flow is smeared)
and look where it lands in the neighbouring frame: the side whose motion puts it back on a boundary of
that frame is the front side. Both directions vote (flow to t+g checked against the boundaries of t+g,
flow to t-g against those of t-g). Votes are pooled over nearby points of the same segment that share
the same relative motion, which gives each point a decision and a confidence (the vote margin).

All functions are pure, batched and device-agnostic.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .boundaries import Boundaries, PointSet, sample_bilinear
from .cuts import patch_residuals

__all__ = ["OrderConfig", "OrderedBoundaries", "landing_votes", "pool_votes", "order_boundaries"]


@dataclass(frozen=True)
class OrderConfig:
    """Parameters of the depth-order test (pixels of the processed frame).

    Attributes:
        side_offset: distance off the boundary at which each side's flow is sampled: beyond the band where flow
            estimators spread the occluder's motion onto its surroundings.
        landing_radius: distances to the neighbour frame's boundaries are measured up to this radius.
        min_relative_motion: a direction votes only where the two sides' displacements differ by at least this
            many pixels...
        max_residual: ...and where each side's motion carries its pixels onto matching ones (mean absolute RGB
            difference of a patch, 0..1, at most this; None: no check).
        residual_patch: half-size of that patch (0: the pixel itself).
        pool_radius: votes are pooled over points of the same segment about this far apart.
        min_confidence: points whose pooled vote margin is below this are dropped.
        min_votes: points with less total vote weight around them than this are dropped.
    """

    side_offset: float = 10.0
    landing_radius: int = 6
    min_relative_motion: float = 1.0
    max_residual: float | None = 0.08
    residual_patch: int = 0

    pool_radius: int = 8
    min_confidence: float = 0.5
    min_votes: float = 2.0


@dataclass
class OrderedBoundaries(PointSet):
    """Boundary points with a depth order: the dense annotation of a batch of frames.

    Attributes:
        b: int64 [N] batch index.
        y: int64 [N] row (float after :meth:`shifted`).
        x: int64 [N] column (float after :meth:`shifted`).
        normal: float [N,2] (ny, nx) unit, pointing from the back (farther) side to the front (closer) side.
        confidence: float [N] in [0, 1].
        segment: int64 [N] segment label.
        jump: float [N] relative motion of the sides (px per gap).
    """

    b: torch.Tensor
    y: torch.Tensor
    x: torch.Tensor
    normal: torch.Tensor
    confidence: torch.Tensor
    segment: torch.Tensor
    jump: torch.Tensor
    POINT_FIELDS = ("b", "y", "x", "normal", "confidence", "segment", "jump")

    def shifted(self, offset: torch.Tensor, keep: torch.Tensor | None = None) -> "OrderedBoundaries":
        """Points moved along their normals.

        Args:
            offset: [N] pixels along each normal (towards the front side when positive).
            keep: bool [N]: keep only these points; ``None`` for all.

        Returns:
            The moved points; their positions become float.
        """
        y = self.y.to(self.normal.dtype) + offset * self.normal[:, 0]
        x = self.x.to(self.normal.dtype) + offset * self.normal[:, 1]
        out = dataclasses.replace(self, y=y, x=x)
        return out if keep is None else out.select(keep)

    def frame(self, i: int) -> dict[str, torch.Tensor]:
        """The annotation of one batch item (the ``boundary`` item field).

        Args:
            i: the batch index.

        Returns:
            CPU tensors ``y``, ``x``, ``ny``, ``nx``, ``confidence``, ``jump`` (float32) and ``segment`` (int64,
            compacted to 0..K-1 in order of the labels).
        """
        sel = self.b == i
        seg = self.segment[sel]
        # compact segment ids 0..K-1 per frame, in order of first appearance
        _, seg = torch.unique(seg, sorted=True, return_inverse=True)
        return {
            "y": self.y[sel].float().cpu(), "x": self.x[sel].float().cpu(),
            "ny": self.normal[sel, 0].float().cpu(), "nx": self.normal[sel, 1].float().cpu(),
            "confidence": self.confidence[sel].float().cpu(), "segment": seg.long().cpu(),
            "jump": self.jump[sel].float().cpu(),
        }


def landing_votes(bnd: Boundaries, flow: torch.Tensor, target_distance: torch.Tensor,
                  config: OrderConfig, images: tuple[torch.Tensor, torch.Tensor] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Votes of one flow direction for "the ``+normal`` side is in front".

    Args:
        bnd: the boundaries of the frames.
        flow: [B,2,H,W] from the frames of ``bnd`` to their neighbours.
        target_distance: [B,H,W] the truncated distance to the neighbours' boundaries.
        config: the test's parameters.
        images: the frames and their neighbours, float RGB in 0..1: a direction then abstains where a side's
            motion does not carry that side's pixels onto matching pixels (a flow failure on fast or small
            objects, not evidence).

    Returns:
        ``(vote [N] in [-1, 1], relative motion [N,2])``: the displacement of the + side minus the - side,
        (dx, dy).
    """
    yf, xf = bnd.y.to(flow.dtype), bnd.x.to(flow.dtype)
    ny, nx = bnd.normal[:, 0], bnd.normal[:, 1]
    d = config.side_offset
    f_plus = sample_bilinear(flow, bnd.b, yf + d * ny, xf + d * nx)
    f_minus = sample_bilinear(flow, bnd.b, yf - d * ny, xf - d * nx)
    H, W = flow.shape[-2:]
    dist = target_distance.unsqueeze(1)

    def land(f: torch.Tensor) -> torch.Tensor:
        ly, lx = yf + f[:, 1], xf + f[:, 0]
        inside = (ly >= 0) & (ly <= H - 1) & (lx >= 0) & (lx <= W - 1)
        out = sample_bilinear(dist, bnd.b, ly, lx)[:, 0]
        return torch.where(inside, out, torch.full_like(out, float(config.landing_radius)))

    rel = f_plus - f_minus
    # the two landings are |rel| apart: a perfect landing of one side scores ±1 whatever the motion size
    size = rel.norm(dim=1)
    vote = (land(f_minus) - land(f_plus)) / size.clamp(1.0, float(config.landing_radius))
    usable = size >= config.min_relative_motion
    if images is not None and config.max_residual is not None:
        for f, sign in ((f_plus, 1.0), (f_minus, -1.0)):
            res, = patch_residuals(images[0], images[1], bnd.b, yf + sign * d * ny, xf + sign * d * nx, [f],
                                   patch=config.residual_patch)
            usable &= res <= config.max_residual
    vote = torch.where(usable, vote, torch.zeros_like(vote))
    return vote.clamp(-1, 1), rel


def pool_votes(bnd: Boundaries, vote: torch.Tensor, rel: torch.Tensor,
               config: OrderConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Pool the votes of neighbouring points of the same segment.

    A vote is expressed independently of the (arbitrary) sign of each point's normal as the vector
    ``vote * rel_unit``: "the front side moves by rel relative to the back side", the same for every point
    between the same two surfaces. Those vectors are summed over pieces of each segment (the segment cut
    by a grid of ``2 * pool_radius`` cells, and by the same grid shifted by half a cell, so every point
    pools with neighbours on both sides), and projected back on each point's own ``rel``: points between
    other surfaces (past a junction) move differently and count little. O(N) scatter sums.

    Args:
        bnd: the boundaries.
        vote: [N] the (direction-averaged) votes.
        rel: [N,2K] the relative motions of the sides in every direction.
        config: the pooling parameters (``pool_radius``).

    Returns:
        ``(score [N] in [-1, 1], vote mass [N])``; a score > 0 means the + side is in front.
    """
    n = len(bnd)
    if n == 0:
        z = vote.new_zeros(0)
        return z, z
    cell = 2 * config.pool_radius
    unit = rel / rel.norm(dim=1, keepdim=True).clamp_min(1e-6)
    w = torch.cat([vote.unsqueeze(1) * unit, vote.abs().unsqueeze(1)], 1)  # [N, D+1]: vector sum, mass
    B, H, W = bnd.shape
    rows, cols = H // cell + 2, W // cell + 2
    pooled = torch.zeros_like(w)
    for shift in (0, cell // 2):
        piece = ((bnd.segment * rows + (bnd.y + shift) // cell) * cols + (bnd.x + shift) // cell)
        ids, inverse = torch.unique(piece, return_inverse=True)
        sums = torch.zeros(len(ids), w.shape[1], dtype=w.dtype, device=w.device).index_add_(0, inverse, w)
        pooled += sums[inverse]
    mass = pooled[:, -1]
    score = (pooled[:, :-1] * unit).sum(1) / mass.clamp_min(1e-6)
    return score.clamp(-1, 1), mass / 2


def order_boundaries(bnd: Boundaries, flows: list[torch.Tensor], target_distances: list[torch.Tensor],
                     config: OrderConfig = OrderConfig(), *, images: torch.Tensor | None = None,
                     targets: list[torch.Tensor] | None = None) -> OrderedBoundaries:
    """Depth order of boundary points from one or more (flow, neighbour boundary distance) directions.

    Keeps points whose pooled margin is at least ``min_confidence`` and whose vote mass is at least
    ``min_votes``.

    Args:
        bnd: the boundaries of the frames.
        flows: ``flows[k]`` [B,2,H,W] goes from the frames of ``bnd`` to neighbour k.
        target_distances: ``target_distances[k]`` [B,H,W] is the truncated distance to neighbour k's boundaries.
        config: the test's parameters.
        images: the frames, float RGB in 0..1, for the residual check (with ``targets``).
        targets: ``targets[k]``: neighbour k's frames, as ``images``.

    Returns:
        The kept points, normals oriented to point into the front side, ``confidence`` the pooled margin.
    """
    votes, rels = [], []
    for k, (flow, dist) in enumerate(zip(flows, target_distances)):
        pair = (images, targets[k]) if images is not None and targets is not None else None
        v, rel = landing_votes(bnd, flow, dist, config, pair)
        votes.append(v)
        rels.append(rel)
    vote = torch.stack(votes).sum(0) / len(votes)
    rel = torch.cat(rels, dim=1)  # [N, 2K]: relative motion in every direction
    score, mass = pool_votes(bnd, vote, rel, config)
    keep = (score.abs() >= config.min_confidence) & (mass >= config.min_votes)
    sign = torch.where(score >= 0, 1.0, -1.0).to(bnd.normal.dtype)
    jump = rel.reshape(len(bnd), len(flows), 2).norm(dim=2).amax(1)
    return OrderedBoundaries(bnd.b[keep], bnd.y[keep], bnd.x[keep], (bnd.normal * sign[:, None])[keep],
                             score.abs()[keep], bnd.segment[keep], jump[keep])
