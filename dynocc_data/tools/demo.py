"""The built-in default of the main job: no download, a minute on a laptop CPU.

``dynocc-data demo --out runs/demo`` writes two small synthetic scenes with ground-truth depth
(:func:`dynocc_data.tools.synthetic.demo_scenes`), generates shards from them with the default settings, reads
them back through :class:`~dynocc_data.datasets.DynOccDataset` exactly as a training job would, scores the
pairs against the ground truth, and draws the samples with their pairs into ``overlay.png``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..datasets.dynocc import DynOccDataset
from ..generation import generate
from .evaluate import evaluate_shards
from .synthetic import demo_scenes
from .viz import contact_sheet, draw_overlay, legend_strip, save_png

__all__ = ["run_demo"]

log = logging.getLogger(__name__)


def run_demo(out: str | os.PathLike = "runs/demo", *, progress: bool = True) -> dict[str, Any]:
    """Run the demo into ``out``.

    The demo owns its folder: ``scenes/`` and ``shards/`` in it are deleted first.

    Args:
        out: the output folder: ``scenes/``, ``shards/``, ``overlay.png`` and ``demo.json`` are written there.
        progress: show progress bars while generating.

    Returns:
        ``summary`` (the generation summary), ``items`` (the number of items read back), ``scores`` (the
        :class:`~dynocc_data.tools.evaluate.EvalResult`) and ``overlay`` (the path of the overlay picture).
    """
    out = Path(out)
    for old in ("scenes", "shards"):  # the demo owns its folder: start afresh
        shutil.rmtree(out / old, ignore_errors=True)
    scenes = out / "scenes"
    videos = demo_scenes(scenes)
    log.info("wrote %d demo scenes to %s", len(videos), scenes)
    summary = generate([str(scenes)], out / "shards", progress=progress)
    items = list(DynOccDataset(str(out / "shards"), strategy="stored"))
    scores = evaluate_shards(out / "shards", scenes)
    tiles = [draw_overlay(item, scale=2) for item in items]
    captions = [f"{it['meta']['key']}: {len(it['pairs'])} pairs" for it in items]
    sheet = contact_sheet(tiles, captions=captions, columns=2, tile_width=640)
    overlay = save_png(out / "overlay.png", np.concatenate([legend_strip(sheet.shape[1]), sheet], 0))
    (out / "demo.json").write_text(json.dumps({"items": len(items), "scores": scores.to_dict()}, indent=1))
    return {"summary": summary, "items": len(items), "scores": scores, "overlay": overlay}
