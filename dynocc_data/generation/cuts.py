"""Is a flow field worth trusting? Shot cuts and flow failures from the photometric warping error.

Across a shot cut the two frames show different scenes, and optical flow between them means nothing;
flow also fails on motion blur, fast motion or flashes. Warping the target frame back with the flow and
comparing it with the source tells them apart from ordinary frames: on a good flow only occlusions and
noise disagree (a few percent of the pixels), across a cut most of the frame does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .boundaries import sample_bilinear

__all__ = ["ReliabilityConfig", "warp", "check_grey", "photometric_error", "blank_frames", "patch_residuals"]


@dataclass(frozen=True)
class ReliabilityConfig:
    """Thresholds of the flow reliability test.

    Attributes:
        pixel_threshold: a pixel disagrees when its warped grey level differs by more than this (0..1 scale).
        max_bad_fraction: a flow is unreliable when more than this fraction of pixels disagree.
        min_contrast: a frame whose grey-level standard deviation (0..255) is below this is blank (single colour).
    """

    pixel_threshold: float = 0.12
    max_bad_fraction: float = 0.25
    min_contrast: float = 3.0


def check_grey(frames: torch.Tensor) -> torch.Tensor:
    """The grey image :func:`photometric_error` compares.

    Make it once per frame when a frame takes part in several checks.

    Args:
        frames: RGB [B,3,H,W], uint8 or float in 0..1.

    Returns:
        float grey [B,1,h,w] in [0, 1], at quarter resolution when the frame's shorter side is at least 128 (a
        cut or a failed flow shows at any scale).
    """
    x = frames.float() / 255.0 if frames.dtype == torch.uint8 else frames
    k = 4 if min(frames.shape[-2:]) >= 128 else 1
    g = F.avg_pool2d(x, k, ceil_mode=True) if k > 1 else x
    w = torch.tensor([0.299, 0.587, 0.114], device=frames.device, dtype=g.dtype).view(1, 3, 1, 1)
    return (g * w).sum(1, keepdim=True)


def warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample ``image`` at ``p + flow(p)`` (bilinear, border padding).

    Args:
        image: [B,C,H,W].
        flow: [B,2,H,W] as dx, dy.

    Returns:
        The warped image, [B,C,H,W].
    """
    B, _, H, W = flow.shape
    ys, xs = torch.meshgrid(torch.arange(H, device=flow.device, dtype=flow.dtype),
                            torch.arange(W, device=flow.device, dtype=flow.dtype), indexing="ij")
    gx = (xs + flow[:, 0]) * (2.0 / max(W - 1, 1)) - 1.0
    gy = (ys + flow[:, 1]) * (2.0 / max(H - 1, 1)) - 1.0
    return F.grid_sample(image, torch.stack([gx, gy], -1), mode="bilinear", padding_mode="border",
                         align_corners=True)


def photometric_error(src: torch.Tensor, dst: torch.Tensor, flow: torch.Tensor, *,
                      pixel_threshold: float = ReliabilityConfig.pixel_threshold) -> torch.Tensor:
    """Fraction [B] of pixels whose grey level disagrees after warping ``dst`` onto ``src`` with ``flow``.

    Pixels whose target falls outside the frame are not counted.

    Args:
        src: RGB [B,3,H,W], uint8 or float in 0..1, or its :func:`check_grey` image (one channel).
        dst: as ``src``.
        flow: [B,2,H,W] from src to dst at full resolution.
        pixel_threshold: a pixel disagrees when its grey levels differ by more than this.

    Returns:
        The fraction of disagreeing pixels, [B].
    """
    gs, gd = (x if x.shape[1] == 1 else check_grey(x) for x in (src, dst))
    h, w = gs.shape[-2:]
    f = flow
    if (h, w) != tuple(flow.shape[-2:]):
        sy, sx = h / flow.shape[-2], w / flow.shape[-1]
        f = F.interpolate(flow, size=(h, w), mode="bilinear", align_corners=False)
        f = torch.stack([f[:, 0] * sx, f[:, 1] * sy], 1)
    warped = warp(gd, f)
    ys, xs = torch.meshgrid(torch.arange(h, device=f.device), torch.arange(w, device=f.device), indexing="ij")
    tx, ty = xs + f[:, 0], ys + f[:, 1]
    inside = (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)
    bad = ((warped - gs).abs()[:, 0] > pixel_threshold) & inside
    return bad.flatten(1).sum(1) / inside.flatten(1).sum(1).clamp_min(1)


def blank_frames(frames: torch.Tensor, *, min_contrast: float = ReliabilityConfig.min_contrast) -> torch.Tensor:
    """Which frames are of a single colour, which carry no usable motion.

    The standard deviation over every 4th row and column, per channel (a frame of one non-grey colour
    differs between channels), is plenty to tell a blank frame.

    Args:
        frames: uint8 [B,3,H,W].
        min_contrast: a frame is blank when every channel's standard deviation (0..255) is below this.

    Returns:
        bool [B].
    """
    return frames[..., ::4, ::4].float().flatten(2).std(2).amax(1) < min_contrast


def patch_residuals(image: torch.Tensor, target: torch.Tensor, b: torch.Tensor, y: torch.Tensor, x: torch.Tensor,
                    motions: list[torch.Tensor], *, patch: int = 1, step: float = 1.0) -> list[torch.Tensor]:
    """Mean absolute RGB difference between a patch of ``image`` and the same patch of ``target``, moved.

    A residual is low when the motion carries the patch onto matching pixels; on a flat region every motion
    scores low, so compare residuals rather than trusting one alone.

    Args:
        image: float [B,3,H,W] in 0..1.
        target: as ``image``.
        b: int64 [N] batch index of each patch centre.
        y: [N] row of each centre.
        x: [N] column of each centre.
        motions: [N,2] displacements (dx, dy) of the patch in ``target``.
        patch: the patch is a (2·patch+1)² grid of samples...
        step: ...this many pixels apart.

    Returns:
        One residual [N] per motion.
    """
    r = torch.arange(-patch, patch + 1, device=image.device, dtype=image.dtype) * step
    oy, ox = torch.meshgrid(r, r, indexing="ij")
    oy, ox = oy.reshape(1, -1), ox.reshape(1, -1)
    n, P = b.numel(), oy.shape[1]
    bb = b[:, None].expand(n, P).reshape(-1)
    qy = y.to(image.dtype)[:, None] + oy
    qx = x.to(image.dtype)[:, None] + ox
    src = sample_bilinear(image, bb, qy.reshape(-1), qx.reshape(-1))
    out = []
    for motion in motions:
        dst = sample_bilinear(target, bb, (qy + motion[:, 1:2]).reshape(-1), (qx + motion[:, 0:1]).reshape(-1))
        out.append((dst - src).abs().mean(1).view(n, P).mean(1))
    return out
