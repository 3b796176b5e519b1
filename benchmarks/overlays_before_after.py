"""Side-by-side overlays of the pairs of two generate runs on the same real frames: before | after.

Both runs must have read the same videos with the same frame selection (e.g. two versions of the code, default
settings). Every frame written by either run gets a row (a frame written by one side only shows "not written" on
the other), at most ``--per-video`` rows per video, spread over the clip; rows are grouped into sheets of
``--rows``. Pairs are drawn as in ``dynocc-data show``: closer point red, farther point blue.

    python benchmarks/overlays_before_after.py --before runs/old --after runs/new --out docs/pairs_before_after/x
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

from dynocc_data.datasets import DynOccDataset
from dynocc_data.tools.viz import contact_sheet, draw_overlay


def _items(shards: Path) -> dict[tuple[str, int], dict]:
    """Every item of a run by (video, frame), with its boundary dropped (pairs only)."""
    return {(it["meta"]["video"], int(it["meta"]["frame"])): it
            for it in DynOccDataset(str(shards), strategy="stored", keep_boundary=False)}


def _spread(frames: list[int], k: int) -> list[int]:
    """At most ``k`` of the sorted ``frames``, evenly spread."""
    if len(frames) <= k:
        return frames
    return [frames[int(round(i * (len(frames) - 1) / (k - 1)))] for i in range(k)] if k > 1 else frames[:1]


def main() -> None:
    """Write the sheets and print what they hold."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", type=Path, required=True, help="generate output folder of the old run")
    p.add_argument("--after", type=Path, required=True, help="generate output folder of the new run")
    p.add_argument("--out", type=Path, required=True, help="file prefix of the sheets (<out>_<video>_<n>.jpg)")
    p.add_argument("--per-video", type=int, default=8, help="rows per video (default 8)")
    p.add_argument("--rows", type=int, default=4, help="rows per sheet (default 4)")
    p.add_argument("--tile-width", type=int, default=480)
    args = p.parse_args()
    before, after = _items(args.before), _items(args.after)
    by_video: dict[str, list[int]] = defaultdict(list)
    for video, frame in sorted(set(before) | set(after)):
        by_video[video].append(frame)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for video, frames in sorted(by_video.items()):
        chosen = _spread(frames, args.per_video)
        tiles, captions = [], []
        for frame in chosen:
            shape = next(tuple(items[(video, frame)]["image"].shape[-2:]) for items in (before, after)
                         if (video, frame) in items)  # the frame is in one run at least
            for side, items in (("before", before), ("after", after)):
                item = items.get((video, frame))
                if item is None:
                    tiles.append(np.full((shape[0] * 2, shape[1] * 2, 3), 40, np.uint8))
                    captions.append(f"{video} t={frame} {side}: not written")
                else:
                    tiles.append(draw_overlay(item, scale=2, max_pairs=None, draw_boundary=False))
                    captions.append(f"{video} t={frame} {side}: {len(item['pairs'])} pairs")
        stem = Path(video).stem
        for n, start in enumerate(range(0, len(tiles), 2 * args.rows)):
            sheet = contact_sheet(tiles[start:start + 2 * args.rows], captions=captions[start:start + 2 * args.rows],
                                  columns=2, tile_width=args.tile_width)
            path = args.out.with_name(f"{args.out.name}_{stem}_{n}.jpg")
            cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])
            print(f"{path}: {video} frames {chosen[start // 2:start // 2 + args.rows]}")


if __name__ == "__main__":
    main()
