"""Pictures of the data: per-sample overlays and contact sheets.

Overlay legend: each boundary point is drawn as a short stroke across the boundary, **green on the front
(closer) side and magenta on the back (farther) side**; each pair is a thin line from its closer point
(small **cyan** disc) to its farther point (small **orange** disc).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import cv2
import numpy as np
import torch

__all__ = ["draw_overlay", "contact_sheet", "save_png"]

FRONT = (60, 220, 60)
BACK = (220, 60, 220)
CLOSER = (40, 220, 255)
FARTHER = (255, 150, 30)


def _to_hwc(image: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        if image.dtype != torch.uint8:
            image = (image.float().clamp(0, 1) * 255).round().to(torch.uint8)
        image = image.permute(1, 2, 0).numpy()
    return np.ascontiguousarray(image)


def draw_overlay(item: Mapping[str, Any], *, scale: int = 2, max_pairs: int | None = 400, dim: float = 0.75,
                 draw_boundary: bool = True) -> np.ndarray:
    """RGB uint8 picture of an item: its image (upscaled ``scale`` times, dimmed), boundary sides, pairs."""
    img = _to_hwc(item["image"]).astype(np.float32) * dim
    H, W = img.shape[:2]
    canvas = cv2.resize(img.astype(np.uint8), (W * scale, H * scale), interpolation=cv2.INTER_NEAREST)
    s = float(scale)

    def pt(y, x):
        return int(round((x + 0.5) * s - 0.5)), int(round((y + 0.5) * s - 0.5))

    bnd = item.get("boundary") if draw_boundary else None
    if bnd is not None and len(bnd["y"]):
        y, x = bnd["y"].numpy(), bnd["x"].numpy()
        ny, nx = bnd["ny"].numpy(), bnd["nx"].numpy()
        for k in range(len(y)):
            c = pt(y[k], x[k])
            f = pt(y[k] + 1.5 * ny[k], x[k] + 1.5 * nx[k])
            b = pt(y[k] - 1.5 * ny[k], x[k] - 1.5 * nx[k])
            cv2.line(canvas, c, f, FRONT, 1, cv2.LINE_AA)
            cv2.line(canvas, c, b, BACK, 1, cv2.LINE_AA)
    pairs = item["pairs"].cpu().numpy()
    ordinal = item["ordinal"].cpu().numpy()
    idx = np.arange(len(pairs))
    if max_pairs is not None and len(idx) > max_pairs:
        idx = np.random.default_rng(0).choice(idx, max_pairs, replace=False)
    for k in idx:
        ya, xa, yb, xb = pairs[k]
        a, b = pt(ya, xa), pt(yb, xb)
        r = int(ordinal[k])
        closer, farther = (b, a) if r > 0 else (a, b)  # +1: A farther
        cv2.line(canvas, closer, farther, (235, 235, 235), 1, cv2.LINE_AA)
        if r == 0:
            cv2.circle(canvas, a, max(1, scale), (200, 200, 200), -1)
            cv2.circle(canvas, b, max(1, scale), (200, 200, 200), -1)
            continue
        cv2.circle(canvas, closer, max(1, scale), CLOSER, -1, cv2.LINE_AA)
        cv2.circle(canvas, farther, max(1, scale), FARTHER, -1, cv2.LINE_AA)
    return canvas


def _caption(tile: np.ndarray, text: str) -> np.ndarray:
    bar = np.zeros((18, tile.shape[1], 3), np.uint8)
    cv2.putText(bar, text[: max(1, tile.shape[1] // 7)], (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1,
                cv2.LINE_AA)
    return np.concatenate([tile, bar], 0)


def contact_sheet(tiles: Sequence[np.ndarray], *, captions: Sequence[str] | None = None, columns: int = 4,
                  tile_width: int = 320) -> np.ndarray:
    """Lay RGB tiles out in a grid (resized to ``tile_width``), with optional captions."""
    if not tiles:
        raise ValueError("contact_sheet needs at least one tile")
    out = []
    for i, t in enumerate(tiles):
        h = int(round(t.shape[0] * tile_width / t.shape[1]))
        t = cv2.resize(t, (tile_width, h), interpolation=cv2.INTER_AREA)
        out.append(_caption(t, captions[i]) if captions else t)
    th = max(t.shape[0] for t in out)
    out = [np.pad(t, ((0, th - t.shape[0]), (0, 0), (0, 0))) for t in out]
    rows = math.ceil(len(out) / columns)
    out += [np.zeros_like(out[0])] * (rows * columns - len(out))
    return np.concatenate([np.concatenate(out[r * columns:(r + 1) * columns], 1) for r in range(rows)], 0)


def save_png(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """Write an RGB picture as PNG (through a temporary name)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    tmp = path.with_name(path.name + ".partial")
    tmp.write_bytes(buf.tobytes())
    os.replace(tmp, path)
    return path
