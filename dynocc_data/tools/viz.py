"""Pictures of the data: per-sample overlays, a legend, contact sheets, and :func:`show` (``dynocc-data show``).

Overlay legend (also drawn as a strip by :func:`legend_strip`, under every overlay :func:`show` writes and on
top of its contact sheet):

* each boundary point is a short stroke across the boundary, **green on the front (closer, occluding) side**
  and **magenta on the back (farther, occluded) side**;
* each pair is a thin light line from its closer point, a small **cyan** disc, to its farther point, a small
  **orange** disc; pairs labelled equal (``0``) have two grey discs.

The image under the drawing is dimmed (``dim``) and upscaled ``scale`` times with nearest-neighbour, so the pixel
``(y, x)`` of the item is the ``scale x scale`` block starting at ``(y * scale, x * scale)`` of the overlay.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import cv2
import numpy as np
import torch

from ..datasets.dynocc import DynOccDataset
from ..errors import InputError

__all__ = ["draw_overlay", "legend_strip", "contact_sheet", "save_png", "show",
           "FRONT", "BACK", "CLOSER", "FARTHER", "EQUAL"]

log = logging.getLogger(__name__)

FRONT = (60, 220, 60)
BACK = (220, 60, 220)
CLOSER = (40, 220, 255)
FARTHER = (255, 150, 30)
EQUAL = (200, 200, 200)
PAIR_LINE = (235, 235, 235)
BACKGROUND = (24, 24, 24)
SHEET_NAME = "contact_sheet.png"

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_FONT_SCALE = 0.4
_TEXT = (255, 255, 255)


def _to_hwc(image: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        if image.dtype != torch.uint8:
            image = (image.float().clamp(0, 1) * 255).round().to(torch.uint8)
        image = image.permute(1, 2, 0).numpy()
    return np.ascontiguousarray(image)


def draw_overlay(item: Mapping[str, Any], *, scale: int = 2, max_pairs: int | None = 400, dim: float = 0.75,
                 draw_boundary: bool = True) -> np.ndarray:
    """Draw an item: its image (upscaled, dimmed), the boundary's sides and the pairs.

    Pair lines are drawn first and the discs on top, so no line hides a point.

    Args:
        item: an item with ``image`` (``[3,H,W]`` uint8 or float in ``[0, 1]``, or ``HxWx3``), ``pairs``,
            ``ordinal`` and, optionally, ``boundary``.
        scale: integer upscaling factor (nearest neighbour).
        max_pairs: draw at most this many pairs (a fixed random subset); ``None`` for all.
        dim: the factor the image's brightness is multiplied by, so that the marks stand out.
        draw_boundary: draw each boundary point's front (closer) and back (farther) side.

    Returns:
        The RGB uint8 picture ``[H*scale, W*scale, 3]``.
    """
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
        idx = np.sort(np.random.default_rng(0).choice(idx, max_pairs, replace=False))
    ends = []
    for k in idx:
        ya, xa, yb, xb = pairs[k]
        a, b = pt(ya, xa), pt(yb, xb)
        r = int(ordinal[k])
        closer, farther = (b, a) if r > 0 else (a, b)  # +1: A farther
        cv2.line(canvas, closer, farther, PAIR_LINE, 1, cv2.LINE_AA)
        ends.append((closer, farther, r))
    radius = max(1, scale)
    for closer, farther, r in ends:
        cv2.circle(canvas, farther, radius, EQUAL if r == 0 else FARTHER, -1, cv2.LINE_AA)
        cv2.circle(canvas, closer, radius, EQUAL if r == 0 else CLOSER, -1, cv2.LINE_AA)
    return canvas


def _fit_text(text: str, width: int) -> str:
    """``text`` cut (with ``..``) so that it fits in ``width`` pixels in the caption font."""
    if cv2.getTextSize(text, _FONT, _FONT_SCALE, 1)[0][0] <= width:
        return text
    while text and cv2.getTextSize(text + "..", _FONT, _FONT_SCALE, 1)[0][0] > width:
        text = text[:-1]
    return text + ".." if text else ""


def _caption(tile: np.ndarray, text: str) -> np.ndarray:
    """``tile`` with an 18-pixel black bar under it holding ``text`` (cut to fit)."""
    bar = np.zeros((18, tile.shape[1], 3), np.uint8)
    cv2.putText(bar, _fit_text(text, tile.shape[1] - 6), (3, 13), _FONT, _FONT_SCALE, _TEXT, 1, cv2.LINE_AA)
    return np.concatenate([tile, bar], 0)


_LEGEND = (("front", "front (closer) side"), ("back", "back (farther) side"),
           ("closer", "closer point"), ("pair", "pair"), ("farther", "farther point"), ("equal", "equal pair"))


_GLYPH_WIDTH = {"front": 14, "back": 14, "pair": 28, "closer": 10, "farther": 10, "equal": 10}


def _legend_glyph(canvas: np.ndarray, kind: str, x: int, cy: int) -> None:
    """Draw one legend symbol (``_GLYPH_WIDTH[kind]`` wide) with its left edge at ``x``, centred on row ``cy``."""
    if kind in ("front", "back"):
        cv2.line(canvas, (x, cy), (x + 12, cy), FRONT if kind == "front" else BACK, 2, cv2.LINE_AA)
    elif kind == "pair":
        cv2.line(canvas, (x + 3, cy), (x + 23, cy), PAIR_LINE, 1, cv2.LINE_AA)
        cv2.circle(canvas, (x + 3, cy), 3, CLOSER, -1, cv2.LINE_AA)
        cv2.circle(canvas, (x + 23, cy), 3, FARTHER, -1, cv2.LINE_AA)
    else:
        colour = {"closer": CLOSER, "farther": FARTHER, "equal": EQUAL}[kind]
        cv2.circle(canvas, (x + 4, cy), 4, colour, -1, cv2.LINE_AA)


def legend_strip(width: int) -> np.ndarray:
    """A strip explaining the overlay colours; entries wrap onto more lines if needed.

    Args:
        width: the strip's width in pixels.

    Returns:
        The RGB uint8 strip ``[h, width, 3]``.
    """
    line_h, pad = 18, 6
    entries = []
    for kind, label in _LEGEND:
        tw = cv2.getTextSize(label, _FONT, _FONT_SCALE, 1)[0][0]
        entries.append((kind, label, _GLYPH_WIDTH[kind] + 4 + tw))
    lines: list[list[tuple[str, str, int]]] = [[]]
    x = pad
    for entry in entries:
        if lines[-1] and x + entry[2] > width - pad:
            lines.append([])
            x = pad
        lines[-1].append(entry)
        x += entry[2] + 14
    canvas = np.zeros((len(lines) * line_h + 4, width, 3), np.uint8)
    canvas[:] = BACKGROUND
    for i, line in enumerate(lines):
        cy, x = 2 + i * line_h + line_h // 2, pad
        for kind, label, w in line:
            _legend_glyph(canvas, kind, x, cy)
            cv2.putText(canvas, label, (x + _GLYPH_WIDTH[kind] + 4, cy + 4), _FONT, _FONT_SCALE, _TEXT, 1, cv2.LINE_AA)
            x += w + 14
    return canvas


def _row_widths(aspects: Sequence[float], width: int) -> list[int]:
    """Integer widths proportional to ``aspects`` that add up to exactly ``width``."""
    total = sum(aspects)
    edges = [round(width * sum(aspects[:i]) / total) for i in range(len(aspects) + 1)]
    return [max(1, b - a) for a, b in zip(edges[:-1], edges[1:])]


def contact_sheet(tiles: Sequence[np.ndarray], *, captions: Sequence[str] | None = None, columns: int = 4,
                  tile_width: int = 320, gap: int = 2) -> np.ndarray:
    """Lay RGB tiles out in rows of ``columns`` tiles, each row scaled to one height so that it fills the sheet.

    The sheet is ``columns * tile_width + (columns - 1) * gap`` pixels wide. Tiles keep their aspect ratio; the
    tiles of a row share a height chosen so that they exactly fill the row, so tiles of different aspect ratios
    leave no padding. Only the last row, when it has fewer than ``columns`` tiles, is left-aligned at the height a
    full row of typical (median aspect) tiles would have (or lower, so that it fits).

    Args:
        tiles: RGB uint8 ``HxWx3`` pictures.
        captions: one text per tile, in a bar under it (cut to fit).
        columns: tiles per row.
        tile_width: the width of a typical tile in pixels.
        gap: pixels of dark background between tiles.

    Returns:
        The RGB uint8 sheet.

    Raises:
        ValueError: when there are no tiles, or not as many captions as tiles.
    """
    if not tiles:
        raise ValueError("contact_sheet needs at least one tile")
    if captions is not None and len(captions) != len(tiles):
        raise ValueError(f"contact_sheet got {len(tiles)} tiles but {len(captions)} captions")
    columns = max(1, min(columns, len(tiles)))
    sheet_w = columns * tile_width + (columns - 1) * gap
    aspects = [t.shape[1] / t.shape[0] for t in tiles]
    typical_h = tile_width / float(np.median(aspects))
    rows = []
    for start in range(0, len(tiles), columns):
        idx = list(range(start, min(start + columns, len(tiles))))
        avail = sheet_w - (len(idx) - 1) * gap
        row_aspects = [aspects[i] for i in idx]
        height = avail / sum(row_aspects)
        if len(idx) < columns:  # a short last row: do not blow it up to fill the width
            height = min(height, typical_h)
            widths = [max(1, round(a * height)) for a in row_aspects]
        else:
            widths = _row_widths(row_aspects, avail)
        h = max(1, round(height))
        parts = []
        for n, (i, w) in enumerate(zip(idx, widths)):
            t = cv2.resize(tiles[i], (w, h), interpolation=cv2.INTER_AREA)
            if captions is not None:
                t = _caption(t, captions[i])
            if n:
                parts.append(np.full((t.shape[0], gap, 3), BACKGROUND, np.uint8))
            parts.append(t)
        row = np.concatenate(parts, 1)
        if row.shape[1] < sheet_w:
            row = np.concatenate([row, np.full((row.shape[0], sheet_w - row.shape[1], 3), BACKGROUND, np.uint8)], 1)
        if rows:
            rows.append(np.full((gap, sheet_w, 3), BACKGROUND, np.uint8))
        rows.append(row)
    return np.concatenate(rows, 0)


def save_png(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """Write an RGB picture as PNG (through a temporary name; folders are created).

    Args:
        path: the PNG file.
        rgb: an RGB uint8 ``HxWx3`` picture.

    Returns:
        ``path``.

    Raises:
        OSError: when OpenCV cannot encode the picture (and as writing the file does).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    tmp = path.with_name(path.name + ".partial")
    tmp.write_bytes(buf.tobytes())
    os.replace(tmp, path)
    return path


def _pick(counts: Sequence[int], limit: int) -> list[list[int]]:
    """Positions (within each shard) of ``limit`` samples spread evenly over shards holding ``counts`` samples."""
    total = sum(counts)
    wanted = [i * total // limit for i in range(limit)] if total > limit else list(range(total))
    out: list[list[int]] = [[] for _ in counts]
    start = 0
    for shard, count in enumerate(counts):
        out[shard] = [p - start for p in wanted if start <= p < start + count]
        start += count
    return out


def _items(shards: Any, limit: int, spread: bool) -> Iterator[dict[str, Any]]:
    """Up to ``limit`` items of ``shards`` (stored pairs, with boundary).

    They are spread over the data when the sample counts are known (``index.json``) and ``spread``, else the
    first ones.
    """
    ds = DynOccDataset(shards, strategy="stored", keep_boundary=True)
    counts = [s.count for s in ds.shards]
    if not spread or any(c is None for c in counts):
        for n, item in enumerate(ds):
            if n >= limit:
                return
            yield item
        return
    for info, positions in zip(ds.shards, _pick(counts, limit)):
        if not positions:
            continue
        wanted = set(positions)
        for pos, item in enumerate(DynOccDataset([info.url], strategy="stored", keep_boundary=True)):
            if pos in wanted:
                yield item
            if pos >= positions[-1]:
                break


def _file_stem(key: str) -> str:
    """A sample key as a safe file name."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", key).strip("_") or "sample"


def show(shards: Any, out: str | os.PathLike, *, limit: int = 24, columns: int = 4, scale: int = 2,
         spread: bool = True, max_pairs: int | None = 400) -> list[Path]:
    """Draw overlays of up to ``limit`` samples of ``shards`` into ``out`` and a contact sheet of them.

    Writes ``<key>.png`` per sample (the :func:`draw_overlay` picture, ``scale`` times the stored size, with a
    legend strip under it) and ``contact_sheet.png`` (legend on top, one captioned tile per sample).

    Args:
        shards: a ``dynocc-data generate`` output folder (``index.json``), a ``.tar``, a brace pattern, or anything
            else :class:`~dynocc_data.datasets.dynocc.DynOccDataset` reads (items with the stored pairs and the
            boundary).
        out: the folder to write into (created when missing).
        limit: the most samples drawn (>= 1).
        columns: tiles per row of the contact sheet (>= 1).
        scale: integer upscaling of each overlay (>= 1).
        spread: with known sample counts, spread the samples evenly over the data (every shard is read up to its
            last chosen sample); otherwise the first ``limit`` are drawn.
        max_pairs: draw at most this many pairs per sample; ``None`` for all.

    Returns:
        The paths written, the contact sheet last.

    Raises:
        ValueError: when ``limit``, ``columns`` or ``scale`` is below 1.
        InputError: when ``shards`` holds no samples (and as the dataset raises for unreadable shards).
    """
    if limit < 1 or columns < 1 or scale < 1:
        raise ValueError(f"limit, columns and scale must be >= 1, got {limit}, {columns}, {scale}")
    out = Path(out)
    paths, tiles, captions = [], [], []
    for item in _items(shards, limit, spread):
        overlay = draw_overlay(item, scale=scale, max_pairs=max_pairs)
        key = str(item["meta"]["key"])
        picture = np.concatenate([overlay, legend_strip(overlay.shape[1])], 0)
        paths.append(save_png(out / f"{_file_stem(key)}.png", picture))
        tiles.append(overlay)
        captions.append(f"{key} ({len(item['pairs'])} pairs)")
    if not tiles:
        raise InputError(str(shards), "no samples to show")
    sheet = contact_sheet(tiles, captions=captions, columns=columns)
    sheet = np.concatenate([legend_strip(sheet.shape[1]), sheet], 0)
    paths.append(save_png(out / SHEET_NAME, sheet))
    log.info("wrote %d overlays and %s", len(tiles), paths[-1])
    return paths
