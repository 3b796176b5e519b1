"""Occlusion boundaries from two-way optical flow (DynOcc step 2 and 3).

A moving occlusion boundary is a discontinuity of the flow field. Flow is reliable only where the two
sides move *apart* (a diverging edge: both sides stay visible in the other frame); where they converge,
the occluded side disappears and its flow is smeared across the edge. So the edge map keeps only the
diverging part of the flow gradient, of the flow to the next frame and of the flow to the previous
frame (a leading edge converges forwards and diverges backwards, so the two together cover the moving
outline). Image intensity is never used: texture and painted edges are not depth edges.

Pipeline, every stage a pure function on batched tensors (same code on CPU and CUDA):

1. :func:`flow_edges` — dense: flow Jacobian (derivative of Gaussian), edge normal = direction of the
   largest flow change, diverging strength = normal component of that change.
2. :func:`non_max_suppression` — dense: thin the strength map to 1 px across the edge normal.
3. :func:`measure_jumps` — sparse: the flow jump across each thin edge pixel, in pixels
   (``F(p + r n) - F(p - r n)``), measured outside the smeared band.
4. :func:`hysteresis` — sparse: keep weak pixels connected to strong ones, drop short segments
   (connected components by :func:`connected_components`).

:func:`detect_boundaries` runs all of them on the two flows of a frame.

Longer than 500 lines because the four stages and the point-set classes they hand to each other belong together
(one stage's output is the next one's input), each documented with its Args and Returns.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "PointSet",
    "BoundaryConfig",
    "Boundaries",
    "EdgePoints",
    "flow_edges",
    "non_max_suppression",
    "measure_jumps",
    "hysteresis",
    "connected_components",
    "detect_boundaries",
    "sample_bilinear",
    "truncated_distance",
]


@dataclass(frozen=True)
class BoundaryConfig:
    """Parameters of boundary detection (pixels refer to the processed frame).

    Attributes:
        sigma: Gaussian scale of the flow derivatives.
        min_strength: dense pre-threshold on the diverging flow gradient (px/px) before the sparse stages.
        min_cosine: keep edges whose flow change makes at most acos(min_cosine) with the normal (drops shear).
        jump_radius: distance either side of an edge pixel at which the flow jump is measured.
        low: hysteresis: weak edge when the sides separate by at least ``low`` px per flow gap.
        high: hysteresis: strong edge at ``high`` px of separation.
        min_length: drop connected segments with fewer pixels.
    """

    sigma: float = 1.0
    min_strength: float = 0.04
    min_cosine: float = 0.25
    jump_radius: float = 3.0
    low: float = 0.3
    high: float = 0.7
    min_length: int = 12


class PointSet:
    """Mixin for dataclasses of per-point tensors (``POINT_FIELDS``, first dimension N) plus metadata."""

    POINT_FIELDS: tuple[str, ...] = ()

    def __len__(self) -> int:
        return int(getattr(self, self.POINT_FIELDS[0]).shape[0])

    def select(self, keep: torch.Tensor):
        """The subset of points given by ``keep``.

        Args:
            keep: bool mask [N] or int64 indices.

        Returns:
            A copy with the selected points (metadata unchanged).
        """
        idx = torch.nonzero(keep).squeeze(1) if keep.dtype == torch.bool else keep
        return dataclasses.replace(self, **{f: getattr(self, f).index_select(0, idx) for f in self.POINT_FIELDS})


@dataclass
class EdgePoints(PointSet):
    """Candidate edge pixels of a batch of flows, kept sparse (a few percent of the pixels).

    The normal's orientation is kept as the doubled angle 2θ: a normal has no sign, so 2θ describes it without
    ambiguity or trigonometry.

    Attributes:
        b: int64 [N] batch index.
        y: int64 [N] row.
        x: int64 [N] column.
        strength: [N] diverging strength.
        cos2: [N] cos 2θ of the normal.
        sin2: [N] sin 2θ of the normal.
        source: [N] index of the flow it came from.
        shape: (B, H, W).
    """

    b: torch.Tensor
    y: torch.Tensor
    x: torch.Tensor
    strength: torch.Tensor
    cos2: torch.Tensor
    sin2: torch.Tensor
    source: torch.Tensor
    shape: tuple[int, int, int]
    POINT_FIELDS = ("b", "y", "x", "strength", "cos2", "sin2", "source")

    def normal(self) -> torch.Tensor:
        """The unit normals.

        Returns:
            (ny, nx) [N,2] with nx >= 0.
        """
        nx = ((1 + self.cos2) * 0.5).clamp_min(0).sqrt()
        ny = ((1 - self.cos2) * 0.5).clamp_min(0).sqrt() * torch.where(self.sin2 < 0, -1.0, 1.0)
        return torch.stack([ny, nx], 1)

    def direction_bins(self) -> torch.Tensor:
        """The normal quantised to 4 directions.

        Returns:
            [N]: 0 along x, 1 diagonal (1,1), 2 along y, 3 (1,-1).
        """
        c, s = self.cos2, self.sin2
        return torch.where(c.abs() >= s.abs(), torch.where(c > 0, 0, 2), torch.where(s > 0, 1, 3))

    def dense_strength(self, pad: int = 0) -> torch.Tensor:
        """The strength as a dense map.

        Args:
            pad: zero border added on every side.

        Returns:
            [B,H+2pad,W+2pad], 0 off the candidates.
        """
        B, H, W = self.shape
        out = torch.zeros(B, H + 2 * pad, W + 2 * pad, dtype=self.strength.dtype, device=self.b.device)
        out[self.b, self.y + pad, self.x + pad] = self.strength
        return out

    @staticmethod
    def merge(a: "EdgePoints", b: "EdgePoints") -> "EdgePoints":
        """Per pixel, the stronger of two candidate sets.

        Args:
            a: candidates of one flow; wins ties.
            b: candidates of the other flow, same shape.

        Returns:
            The union, keeping one candidate per pixel.
        """
        sa, sb = a.dense_strength(), b.dense_strength()
        keep_a = a.strength >= sb[a.b, a.y, a.x]
        keep_b = b.strength > sa[b.b, b.y, b.x]
        a, b = a.select(keep_a), b.select(keep_b)
        return dataclasses.replace(a, **{f: torch.cat([getattr(a, f), getattr(b, f)]) for f in a.POINT_FIELDS})


@dataclass
class Boundaries(PointSet):
    """Thin boundary pixels of a batch of frames, as flat lists of N points.

    Attributes:
        b: int64 [N] batch index.
        y: int64 [N] row.
        x: int64 [N] column.
        normal: float [N,2] (ny, nx), unit, sign arbitrary.
        jump: float [N,2] flow difference (dx, dy) from the ``-normal`` to the ``+normal`` side, measured on the
            flow that found the edge.
        source: int64 [N], 0 = found on the flow to the next frame, 1 = to the previous frame.
        segment: int64 [N] connected-component label (index of the component's first point; 0..K-1 after
            :func:`detect_boundaries`).
        shape: (B, H, W).
    """

    b: torch.Tensor
    y: torch.Tensor
    x: torch.Tensor
    normal: torch.Tensor
    jump: torch.Tensor
    source: torch.Tensor
    segment: torch.Tensor
    shape: tuple[int, int, int]
    POINT_FIELDS = ("b", "y", "x", "normal", "jump", "source", "segment")

    def mask(self) -> torch.Tensor:
        """The boundary pixels as a dense mask.

        Returns:
            bool [B,H,W].
        """
        m = torch.zeros(self.shape, dtype=torch.bool, device=self.b.device)
        m[self.b, self.y, self.x] = True
        return m

    def rebatch(self, index: int, batch_size: int) -> "Boundaries":
        """The same points as one item of a larger batch.

        Args:
            index: the batch index every point gets.
            batch_size: the batch's size, in ``shape``.

        Returns:
            The relabelled boundaries.
        """
        return Boundaries(torch.full_like(self.b, index), self.y, self.x, self.normal, self.jump, self.source,
                          self.segment, (batch_size, *self.shape[1:]))

    @staticmethod
    def cat(items: "list[Boundaries]") -> "Boundaries":
        """Stack single-frame boundaries into one batch.

        Args:
            items: single-frame boundaries of one frame size (at least one).

        Returns:
            One batch, item i at batch index i, segment labels offset so that they stay unique.
        """
        B = len(items)
        parts = [it.rebatch(i, B) for i, it in enumerate(items)]
        # segment labels are point indices: offset them so they stay unique in the batch
        offset, seg = 0, []
        for p in parts:
            seg.append(p.segment + offset)
            offset += int(p.segment.max()) + 1 if len(p) else 0
        return Boundaries(*(torch.cat([getattr(p, f) for p in parts]) for f in ("b", "y", "x", "normal", "jump",
                                                                                "source")),
                          torch.cat(seg), (B, *items[0].shape[1:]))


# On the CPU a few dense filters run in OpenCV, much faster there than single-channel torch kernels; the
# torch versions run everywhere else and give the same numbers (tests switch this off to compare them).
USE_OPENCV_ON_CPU = True


def _use_opencv(t: torch.Tensor) -> bool:
    return USE_OPENCV_ON_CPU and t.device.type == "cpu"


def _gaussian_derivative_taps(sigma: float) -> tuple[list[float], list[float]]:
    """1-D Gaussian smoothing and derivative-of-Gaussian taps (the derivative has unit response to a ramp)."""
    r = max(1, int(math.ceil(2.0 * sigma)))
    t = [float(i) for i in range(-r, r + 1)]
    g = [math.exp(-0.5 * (v / sigma) ** 2) for v in t]
    total = sum(g)
    g = [v / total for v in g]
    norm = sum(v * v * w for v, w in zip(t, g))
    return g, [v * w / norm for v, w in zip(t, g)]


def flow_derivatives(flow: torch.Tensor, sigma: float) -> torch.Tensor:
    """d/dx and d/dy of each flow channel at scale ``sigma``: [B,2,2,H,W] = [b, (u, v), (x, y)].

    Separable derivative-of-Gaussian filters with replicated borders. On CPU this runs OpenCV's
    ``sepFilter2D`` (an order of magnitude faster than single-channel ``conv2d`` there); elsewhere the
    same filters run as ``conv2d``. Both give the same numbers.
    """
    g, dg = _gaussian_derivative_taps(sigma)
    B, C, H, W = flow.shape
    if _use_opencv(flow):
        kg, kd = np.asarray(g, np.float32), np.asarray(dg, np.float32)
        planes = flow.detach().to(torch.float32).contiguous().numpy()
        out = np.empty((B, C, 2, H, W), np.float32)
        for i in range(B):
            for ch in range(C):
                cv2.sepFilter2D(planes[i, ch], cv2.CV_32F, kd, kg, dst=out[i, ch, 0], borderType=cv2.BORDER_REPLICATE)
                cv2.sepFilter2D(planes[i, ch], cv2.CV_32F, kg, kd, dst=out[i, ch, 1], borderType=cv2.BORDER_REPLICATE)
        return torch.from_numpy(out).to(flow.dtype)
    kg = torch.tensor(g, device=flow.device, dtype=flow.dtype)
    kd = torch.tensor(dg, device=flow.device, dtype=flow.dtype)
    k = torch.stack([kg[:, None] * kd[None, :], kd[:, None] * kg[None, :]])[:, None]  # [2,1,k,k]: d/dx, d/dy
    pad = k.shape[-1] // 2
    d = F.conv2d(F.pad(flow.reshape(B * C, 1, H, W), (pad,) * 4, mode="replicate"), k)
    return d.reshape(B, C, 2, H, W)


def flow_edges(flow: torch.Tensor, *, sigma: float = 1.0, min_strength: float = 0.0, source: int = 0) -> EdgePoints:
    """Diverging edge strength of a batch of flows, at the pixels where it exceeds ``min_strength``.

    The normal n is the direction in which the flow changes most (top eigenvector of JᵀJ, J the flow Jacobian);
    the strength is ``n·(J n)``, the rate at which the flow component along n grows along n: positive where the
    sides separate (diverging), negative where they converge, zero across pure shear. Since the strength never
    exceeds ``|J|``, only pixels with ``|J| > min_strength`` (a few percent) are examined after the dense
    derivative filters.

    Args:
        flow: float [B,2,H,W] (dx, dy).
        sigma: Gaussian scale of the derivatives.
        min_strength: keep pixels whose strength exceeds this.
        source: the index recorded in ``source`` of every point.

    Returns:
        The candidate edge pixels.
    """
    d = flow_derivatives(flow, sigma)  # [b, flow channel (u, v), derivative (x, y), H, W]
    mag2 = d[:, 0, 0] * d[:, 0, 0]  # |J|², accumulated in place: these maps are large, allocations cost
    for i, j in ((0, 1), (1, 0), (1, 1)):
        mag2.addcmul_(d[:, i, j], d[:, i, j])
    b, y, x = torch.nonzero(mag2 > min_strength * min_strength, as_tuple=True)
    ux, uy, vx, vy = (d[:, i, j][b, y, x] for i, j in ((0, 0), (0, 1), (1, 0), (1, 1)))
    a_minus_c = ux * ux + vx * vx - uy * uy - vy * vy  # JᵀJ = [[a, b], [b, c]]
    two_b = 2 * (ux * uy + vx * vy)
    r = torch.sqrt(a_minus_c * a_minus_c + two_b * two_b)
    flat = r < 1e-12
    r = torch.where(flat, 1.0, r)
    cos2 = torch.where(flat, 1.0, a_minus_c / r)
    sin2 = two_b / r
    # nᵀJn with n = (cos θ, sin θ): (ux + vy)/2 + ((ux - vy) cos 2θ + (uy + vx) sin 2θ)/2
    strength = 0.5 * (ux + vy + (ux - vy) * cos2 + (uy + vx) * sin2)
    pts = EdgePoints(b, y, x, strength, cos2, sin2, torch.full_like(b, source), tuple(mag2.shape))
    return pts.select(strength > min_strength)


_NMS_OFFSETS = ((0, 1), (1, 1), (1, 0), (1, -1))  # neighbour along each direction bin (dy, dx)


def non_max_suppression(pts: EdgePoints) -> torch.Tensor:
    """Canny-style thinning: the candidates that are maxima of the strength along the quantised normal.

    ``>=`` on one side and ``>`` on the other, so a plateau two pixels wide keeps exactly one.

    Args:
        pts: the candidates.

    Returns:
        bool [N], True for the maxima.
    """
    dense = pts.dense_strength(pad=1)
    off = torch.tensor(_NMS_OFFSETS, device=pts.b.device)[pts.direction_bins()]
    y, x = pts.y + 1, pts.x + 1
    ahead = dense[pts.b, y + off[:, 0], x + off[:, 1]]
    behind = dense[pts.b, y - off[:, 0], x - off[:, 1]]
    return (pts.strength >= ahead) & (pts.strength > behind)


def sample_bilinear(field: torch.Tensor, b: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of ``field`` at float points, border-clamped.

    Points grouped by item (as the stages produce them: ``b`` non-decreasing) are sampled with one
    ``grid_sample`` call per item; otherwise one call samples all B*C channels at every point and keeps each
    point's own C (B times the work, still correct).

    Args:
        field: [B,C,H,W].
        b: int64 [N] batch index of each point.
        y: [N] row, float.
        x: [N] column, float.

    Returns:
        [N,C].
    """
    B, C, H, W = field.shape
    n = b.numel()
    grid = torch.stack([x.to(field.dtype) * (2.0 / max(W - 1, 1)) - 1.0,
                        y.to(field.dtype) * (2.0 / max(H - 1, 1)) - 1.0], -1)
    if B == 1 or n == 0:
        return F.grid_sample(field[:1], grid.view(1, 1, n, 2), mode="bilinear", padding_mode="border",
                             align_corners=True).view(C, n).T
    if bool((b[1:] >= b[:-1]).all()):
        counts = torch.bincount(b, minlength=B).tolist()
        parts = [F.grid_sample(field[i:i + 1], g.view(1, 1, -1, 2), mode="bilinear", padding_mode="border",
                               align_corners=True).view(C, -1)
                 for i, g in enumerate(grid.split(counts)) if counts[i]]
        return torch.cat(parts, 1).T
    out = F.grid_sample(field.reshape(1, B * C, H, W), grid.view(1, 1, n, 2), mode="bilinear",
                        padding_mode="border", align_corners=True).view(B, C, n)
    return out[b, :, torch.arange(n, device=b.device)]


def measure_jumps(flow: torch.Tensor, b: torch.Tensor, y: torch.Tensor, x: torch.Tensor,
                  normal: torch.Tensor, *, radius: float) -> torch.Tensor:
    """Flow difference (dx, dy) across edge points: ``F(p + r n) - F(p - r n)``.

    Args:
        flow: [B,2,H,W].
        b: int64 [N] batch index.
        y: [N] row.
        x: [N] column.
        normal: [N,2] unit normals (ny, nx).
        radius: ``r``, the distance either side, in pixels.

    Returns:
        [N,2] in pixels.
    """
    yf, xf = y.to(flow.dtype), x.to(flow.dtype)
    ny, nx = normal[:, 0], normal[:, 1]
    plus = sample_bilinear(flow, b, yf + radius * ny, xf + radius * nx)
    minus = sample_bilinear(flow, b, yf - radius * ny, xf - radius * nx)
    return plus - minus


_FORWARD_NEIGHBOURS = ((0, 1), (1, -1), (1, 0), (1, 1))


def connected_components(b: torch.Tensor, y: torch.Tensor, x: torch.Tensor,
                         shape: tuple[int, int, int]) -> torch.Tensor:
    """8-connected components of a sparse set of pixels.

    Hook-and-shortcut iterations (as in GPU connected-component algorithms) on the graph of neighbouring points:
    O(log N) rounds, no Python loop over points.

    Args:
        b: int64 [N] batch index.
        y: int64 [N] row.
        x: int64 [N] column.
        shape: (B, H, W).

    Returns:
        int64 [N] labels: the index (into the inputs) of the first point of each component, so the labelling is
        canonical and identical on every device.
    """
    n = b.numel()
    device = b.device
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=device)
    B, H, W = shape
    index = torch.full((B * (H + 1) * (W + 2),), -1, dtype=torch.long, device=device)
    # padded grid (one spare row below, one column each side) so neighbour lookups never wrap
    lin = (b * (H + 1) + y) * (W + 2) + (x + 1)
    index[lin] = torch.arange(n, device=device)
    src, dst = [], []
    for dy, dx in _FORWARD_NEIGHBOURS:
        nb = index[lin + dy * (W + 2) + dx]
        ok = nb >= 0
        src.append(torch.nonzero(ok).squeeze(1))
        dst.append(nb[ok])
    i = torch.cat(src)
    j = torch.cat(dst)
    parent = torch.arange(n, device=device)
    while True:
        pi, pj = parent[i], parent[j]
        differ = pi != pj
        if not bool(differ.any()):
            return parent
        pi, pj = pi[differ], pj[differ]
        parent.scatter_reduce_(0, torch.maximum(pi, pj), torch.minimum(pi, pj), reduce="amin")
        while True:  # shortcut until every point points at a root
            grand = parent[parent]
            if torch.equal(grand, parent):
                break
            parent = grand


def hysteresis(b: torch.Tensor, y: torch.Tensor, x: torch.Tensor, value: torch.Tensor,
               shape: tuple[int, int, int], *, low: float, high: float,
               min_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Hysteresis on a sparse set of points.

    Keeps the points with ``value >= low`` whose 8-connected segment of such points has a point ``>= high`` and
    at least ``min_length`` points.

    Args:
        b: int64 [N] batch index.
        y: int64 [N] row.
        x: int64 [N] column.
        value: [N] the thresholded value.
        shape: (B, H, W).
        low: the weak threshold.
        high: the strong threshold.
        min_length: the fewest points a kept segment has.

    Returns:
        ``(keep bool [N], segment label int64 [N])``; labels are valid where kept.
    """
    weak = value >= low
    labels = torch.full_like(b, -1)
    idx = torch.nonzero(weak).squeeze(1)
    if idx.numel() == 0:
        return weak, labels
    lab = connected_components(b[idx], y[idx], x[idx], shape)
    n = idx.numel()
    size = torch.zeros(n, dtype=torch.long, device=b.device).index_add_(0, lab, torch.ones_like(lab))
    strong = torch.zeros(n, dtype=torch.bool, device=b.device).index_put_(
        (lab,), value[idx] >= high, accumulate=True)
    ok = strong[lab] & (size[lab] >= min_length)
    keep = torch.zeros_like(weak)
    keep[idx[ok]] = True
    labels[idx] = idx[lab]  # label = index of the component's first point in the full list
    return keep, labels


def detect_boundaries(flow_next: torch.Tensor, flow_prev: torch.Tensor,
                      config: BoundaryConfig = BoundaryConfig()) -> Boundaries:
    """Thin, confident, diverging occlusion boundaries of a batch of frames.

    Each pixel keeps the more diverging of the two flows.

    Args:
        flow_next: [B,2,H,W] flow from each frame to the frame ``gap`` later, or ``None``.
        flow_prev: [B,2,H,W] flow to the frame ``gap`` earlier, or ``None``.
        config: the detection parameters.

    Returns:
        The boundaries, segments labelled 0..K-1.

    Raises:
        ValueError: when both flows are ``None``.
    """
    flows = [f for f in (flow_next, flow_prev) if f is not None]
    if not flows:
        raise ValueError("detect_boundaries needs at least one flow")
    pts = [flow_edges(f, sigma=config.sigma, min_strength=config.min_strength, source=i) for i, f in enumerate(flows)]
    cand = EdgePoints.merge(*pts) if len(pts) == 2 else pts[0]
    thin = cand.select(non_max_suppression(cand))
    b, y, x = thin.b, thin.y, thin.x
    n = thin.normal()
    which = thin.source  # index into ``flows``
    jump = torch.empty(b.numel(), 2, dtype=flows[0].dtype, device=b.device)
    for s, f in enumerate(flows):
        sel = which == s
        jump[sel] = measure_jumps(f, b[sel], y[sel], x[sel], n[sel], radius=config.jump_radius)
    source = which if flow_next is not None else torch.ones_like(which)
    along = (jump[:, 0] * n[:, 1] + jump[:, 1] * n[:, 0])  # separation along the normal, px
    cosine = along / jump.norm(dim=1).clamp_min(1e-6)
    value = torch.where(cosine >= config.min_cosine, along, torch.zeros_like(along))
    keep, labels = hysteresis(b, y, x, value, thin.shape, low=config.low, high=config.high,
                              min_length=config.min_length)
    kept = Boundaries(b, y, x, n, jump, source, labels, thin.shape).select(keep)
    kept.segment = torch.unique(kept.segment, return_inverse=True)[1]  # compact ids 0..K-1
    return kept


def truncated_distance(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Euclidean distance to the nearest true pixel of ``mask``, exact up to ``radius`` and clipped there.

    On CPU, OpenCV's exact distance transform; elsewhere separable min-plus passes (as in
    Felzenszwalb-Huttenlocher, truncated). Both give the same numbers.

    Args:
        mask: bool [B,H,W].
        radius: the clipping distance, in pixels.

    Returns:
        float32 [B,H,W].
    """
    if _use_opencv(mask):
        free = (~mask).to(torch.uint8).numpy()
        out = np.empty(free.shape, np.float32)
        for i in range(free.shape[0]):
            cv2.distanceTransform(free[i], cv2.DIST_L2, cv2.DIST_MASK_PRECISE, dst=out[i])
        return torch.from_numpy(out).clamp_max_(float(radius))
    big = float(2 * (radius + 1) ** 2)
    g = torch.where(mask, 0.0, big).to(torch.float32)
    H, W = mask.shape[-2:]
    offs = torch.arange(-radius, radius + 1, device=mask.device)
    gp = F.pad(g, (radius, radius), value=big)
    row = torch.full_like(g, big)
    for k, d in enumerate(offs.tolist()):
        row = torch.minimum(row, gp[..., k:k + W] + d * d)
    rp = F.pad(row, (0, 0, radius, radius), value=big)
    out = torch.full_like(g, big)
    for k, d in enumerate(offs.tolist()):
        out = torch.minimum(out, rp[..., k:k + H, :] + d * d)
    return out.clamp_max(radius * radius).sqrt()
