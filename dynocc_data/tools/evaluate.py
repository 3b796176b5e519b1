"""Evaluation runs: make scenes, generate shards from them, read the items back, and score them.

Items are read with :class:`~dynocc_data.datasets.DynOccDataset` exactly as training code would;
:mod:`dynocc_data.tools.scoring` holds the scoring itself, pure functions on arrays and items.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..datasets.dynocc import DynOccDataset
from ..generation import generate
from ..generation.video import select_frames
from .scoring import (
    CATEGORIES,
    CATEGORY_TEXT,
    EvalResult,
    classify_pairs,
    format_result,
    layer_edge_distance,
    pairs_to_gt,
    pooled,
    score_items,
)
from .synthetic import SceneConfig, load_scene_gt, make_scenes

__all__ = [
    "CATEGORIES",
    "CATEGORY_TEXT",
    "EVAL_SCENE_CONFIG",
    "EvalResult",
    "classify_pairs",
    "evaluate_shards",
    "evaluate_synthetic",
    "format_result",
    "layer_edge_distance",
    "load_scenes",
    "pairs_to_gt",
    "pooled",
    "read_run_params",
    "score_items",
    "selected_frames",
]

log = logging.getLogger(__name__)

EVAL_SCENE_CONFIG = SceneConfig(cast_shadows=True)
"""The scenes ``evaluate`` makes by default: the standard random scenes, with cast shadows."""


# ------------------------------------------------------------------------------------------------- files


def load_scenes(scene_dir: str | os.PathLike) -> dict[str, Any]:
    """Read the ground truths of a folder of scenes.

    Args:
        scene_dir: searched recursively for ``*.gt.npz`` files.

    Returns:
        The ground truths, keyed by their video's path relative to ``scene_dir``.

    Raises:
        FileNotFoundError: when there is no ``*.gt.npz`` file.
    """
    scene_dir = Path(scene_dir)
    scenes = {}
    for p in sorted(scene_dir.rglob("*.gt.npz")):
        video = p.with_name(p.name[: -len(".gt.npz")] + ".mp4")
        scenes[video.relative_to(scene_dir).as_posix()] = load_scene_gt(p)
    if not scenes:
        raise FileNotFoundError(f"{scene_dir}: no *.gt.npz ground truth found")
    return scenes


def read_run_params(shards: str | os.PathLike) -> dict[str, Any]:
    """The generation parameters recorded in a run's ledgers.

    Args:
        shards: a generate output folder.

    Returns:
        The ``params`` of the first run header (empty if none).
    """
    for ledger in sorted(Path(shards).glob("ledger-r*.jsonl")):
        for line in ledger.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("type") == "header":
                return rec.get("params", {})
    return {}


def selected_frames(num_frames: Mapping[str, int], params: Mapping[str, Any]) -> dict[str, list[int]]:
    """Every frame the generator selected in each video.

    Args:
        num_frames: video -> its frame count.
        params: the run's parameters (``gap``, ``stride``, ``max_frames``; defaults 4, 4, None).

    Returns:
        video -> the selected frames.
    """
    gap, stride = params.get("gap", 4), params.get("stride", 4)
    return {name: select_frames(n, stride=stride, gap=gap, max_frames=params.get("max_frames"))
            for name, n in num_frames.items()}


def evaluate_shards(shards: str | os.PathLike, scene_dir: str | os.PathLike, *, coverage_radius: float = 4.0,
                    min_motion: float = 1.0) -> EvalResult:
    """Score the shards of a generate output folder against the ground truth of their scenes.

    Items are read with :class:`~dynocc_data.datasets.DynOccDataset`; the run's parameters come from its ledgers.

    Args:
        shards: a generate output folder.
        scene_dir: the folder of the ``*.gt.npz`` files (written by
            :func:`dynocc_data.tools.synthetic.write_scene`), the input folder of the run.
        coverage_radius: see :func:`~dynocc_data.tools.scoring.score_items`.
        min_motion: see :func:`~dynocc_data.tools.scoring.score_items`.

    Returns:
        The scores.

    Raises:
        FileNotFoundError: ``scene_dir`` holds no ground truth.
    """
    shards = Path(shards)
    scenes = load_scenes(scene_dir)
    stats = json.loads((shards / "stats.json").read_text()) if (shards / "stats.json").exists() else {}
    params = read_run_params(shards)
    selected = selected_frames({name: gt.num_frames for name, gt in scenes.items()}, params)
    for name in {f["video"] for f in stats.get("failed", [])} & set(scenes):
        log.warning("%s failed during generation; its boundaries count as uncovered", name)
    items = DynOccDataset(str(shards), strategy="stored", keep_boundary=False)
    return score_items(items, scenes, coverage_radius=coverage_radius, selected=selected,
                       gap=params.get("gap", 4), min_motion=min_motion)


def evaluate_synthetic(out: str | os.PathLike, *, num_scenes: int = 4, seed: int = 1000,
                       scene_config: SceneConfig | None = None, generate_config=None, coverage_radius: float = 4.0,
                       progress: bool = False, **generate_kwargs) -> EvalResult:
    """Make synthetic scenes, generate shards from them and score them.

    Args:
        out: the work folder: scenes go to ``<out>/scenes``, shards to ``<out>/shards`` (both replaced when
            they exist: running twice into one folder gives the second run's figures).
        num_scenes: the number of scenes.
        seed: the seed of the first scene (then ``seed+1``, ...).
        scene_config: the scene parameters; default :data:`EVAL_SCENE_CONFIG` (with cast shadows).
        generate_config: a :class:`~dynocc_data.generation.GenerateConfig`; default the built-in one.
        coverage_radius: see :func:`~dynocc_data.tools.scoring.score_items`.
        progress: show progress bars while generating.
        **generate_kwargs: more options of :func:`~dynocc_data.generate` (fields of ``RunOptions``).

    Returns:
        The scores.
    """
    out = Path(out)
    scene_dir = out / "scenes"
    for old in (scene_dir, out / "shards"):  # the evaluation owns its work folder: a second run starts afresh
        shutil.rmtree(old, ignore_errors=True)
    make_scenes(scene_dir, num_scenes, seed=seed, config=scene_config if scene_config is not None
                else EVAL_SCENE_CONFIG)
    generate([str(scene_dir)], out / "shards", generate_config, progress=progress, **generate_kwargs)
    return evaluate_shards(out / "shards", scene_dir, coverage_radius=coverage_radius)
