"""Evaluation runs: make scenes or take clips, generate shards, read the items back and score them.

Items are read with :class:`~dynocc_data.datasets.DynOccDataset` exactly as training code would;
:mod:`dynocc_data.tools.scoring` (ground truth) and :mod:`dynocc_data.tools.reference` (a background model of
static-camera footage) hold the scoring itself, pure functions on arrays and items.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..datasets.dynocc import DynOccDataset
from ..generation import generate
from ..generation.config import frame_steps
from ..generation.video import open_video, select_frames
from .reference import MASK_CATEGORIES, MaskEvalResult, MovingMaskConfig, classify_pairs_by_mask, reference_mask
from .scoring import (
    CATEGORIES,
    CATEGORY_TEXT,
    EvalResult,
    classify_pairs,
    format_result,
    layer_edge_distance,
    outside_image,
    pairs_to_gt,
    pooled,
    score_items,
)
from .semireal import make_semireal_scenes, read_video_frames
from .synthetic import SceneConfig, load_scene_gt, make_scenes

__all__ = [
    "CATEGORIES",
    "CATEGORY_TEXT",
    "EVAL_SCENE_CONFIG",
    "EvalResult",
    "classify_pairs",
    "count_real_clips",
    "evaluate_semireal",
    "evaluate_shards",
    "evaluate_static_camera",
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


def video_steps(params: Mapping[str, Any], fps: float) -> tuple[int, int]:
    """The stride and flow gap a run used on a video of ``fps`` frames per second.

    Args:
        params: the run's parameters (``stride``, ``gap``, ``reference_fps``; defaults 4, 4, None).
        fps: the video's frame rate.

    Returns:
        ``(stride, gap)`` in frames (:func:`~dynocc_data.generation.config.frame_steps`).
    """
    return frame_steps(params.get("stride", 4), params.get("gap", 4), fps, params.get("reference_fps"))


def selected_frames(num_frames: Mapping[str, int], params: Mapping[str, Any],
                    fps: Mapping[str, float] | None = None) -> dict[str, list[int]]:
    """Every frame the generator selected in each video.

    Args:
        num_frames: video -> its frame count.
        params: the run's parameters (``gap``, ``stride``, ``reference_fps``, ``max_frames``; defaults 4, 4,
            None, None).
        fps: video -> its frame rate (a video not in it: the configured stride and gap).

    Returns:
        video -> the selected frames.
    """
    out = {}
    for name, n in num_frames.items():
        stride, gap = video_steps(params, (fps or {}).get(name, 0.0))
        out[name] = select_frames(n, stride=stride, gap=gap, max_frames=params.get("max_frames"))
    return out


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
    selected = selected_frames({name: gt.num_frames for name, gt in scenes.items()}, params,
                               {name: gt.fps for name, gt in scenes.items()})
    for name in {f["video"] for f in stats.get("failed", [])} & set(scenes):
        log.warning("%s failed during generation; its boundaries count as uncovered", name)
    items = DynOccDataset(str(shards), strategy="stored", keep_boundary=False)
    gaps = {name: video_steps(params, gt.fps)[1] for name, gt in scenes.items()}
    return score_items(items, scenes, coverage_radius=coverage_radius, selected=selected, gap=gaps,
                       min_motion=min_motion)


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


# ---------------------------------------------------------------------------------------- real footage


def _video_key(video: str | os.PathLike) -> str:
    """The ``meta["video"]`` that ``generate`` gives a video passed as a single file: its file name."""
    return Path(video).name


def _read_clips(videos: list[str], max_side: int | None) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Every frame of each video at the size ``generate`` works at, and its frame rate, keyed like ``meta["video"]``.

    Raises:
        ValueError: two videos have the same file name (their items could not be told apart).
    """
    clips: dict[str, np.ndarray] = {}
    rates: dict[str, float] = {}
    for video in videos:
        key = _video_key(video)
        if key in clips:
            raise ValueError(f"{video}: another input has the same file name {key!r}")
        clips[key], rates[key] = read_video_frames(video, max_side=max_side)
    return clips, rates


def evaluate_static_camera(videos: list[str], out: str | os.PathLike, generate_config=None, *,
                           mask_config: MovingMaskConfig | None = None, progress: bool = False,
                           **generate_kwargs) -> MaskEvalResult:
    """Generate shards from real static-camera clips and score their pairs against a background model.

    Each pair is judged by :func:`~dynocc_data.tools.reference.reference_mask` of its frame (moving objects in
    front of the static background); see :mod:`dynocc_data.tools.reference` for the categories and caveats.

    Args:
        videos: video files with a camera that does not move (file names must differ).
        out: work folder; shards go to ``<out>/shards``.
        generate_config: the generation settings (defaults of ``generate``).
        mask_config: the background model's parameters.
        progress: show progress bars.
        **generate_kwargs: passed to :func:`~dynocc_data.generation.generate`.

    Returns:
        The pooled result with one per clip in ``per_video``.
    """
    shards = Path(out) / "shards"
    generate([str(v) for v in videos], shards, generate_config, progress=progress, **generate_kwargs)
    params = read_run_params(shards)
    clips, rates = _read_clips(videos, params.get("max_side", 640))
    per_video = {key: MaskEvalResult() for key in clips}
    for key, frames in clips.items():
        per_video[key].frames_selected = len(selected_frames({key: len(frames)}, params, rates)[key])
    masks: dict[tuple[str, int], np.ndarray] = {}
    for item in DynOccDataset(str(shards), strategy="stored", keep_boundary=False):
        key, t = item["meta"]["video"], int(item["meta"]["frame"])
        frames = clips[key]
        if (key, t) not in masks:
            masks[(key, t)] = reference_mask(frames, t, mask_config)
        pairs = item["pairs"].numpy().astype(np.float64)
        image_size = tuple(item["image"].shape[-2:])
        codes = classify_pairs_by_mask(pairs_to_gt(pairs, image_size, frames.shape[1:3]), item["ordinal"].numpy(),
                                       masks[(key, t)], outside=outside_image(pairs, image_size))
        res = per_video[key]
        res.frames_written += 1
        for code, n in zip(*np.unique(codes, return_counts=True)):
            res.counts[MASK_CATEGORIES[code]] += int(n)
    total = MaskEvalResult(per_video=per_video)
    for res in per_video.values():
        total.add(res)
    return total


def evaluate_semireal(videos: list[str], out: str | os.PathLike, *, num_scenes: int = 2, seed: int = 1000,
                      scene_config: SceneConfig | None = None, generate_config=None, coverage_radius: float = 4.0,
                      progress: bool = False, **generate_kwargs) -> EvalResult:
    """Make ``num_scenes`` semi-real scenes over each video, generate shards from them and score them.

    Args:
        videos: the background footage (any videos).
        out: work folder; scenes go to ``<out>/scenes``, shards to ``<out>/shards``.
        num_scenes: scenes per video (seeds ``seed``, ``seed + 1``, ...).
        seed: seed of the first scene.
        scene_config: objects and shadows (:data:`~dynocc_data.tools.semireal.SEMIREAL_CONFIG` by default).
        generate_config: the generation settings.
        coverage_radius: see :func:`~dynocc_data.tools.scoring.score_items`.
        progress: show progress bars.
        **generate_kwargs: passed to :func:`~dynocc_data.generation.generate`.

    Returns:
        The result; pairs with both points on the footage are counted as ``unscored``.
    """
    scene_dir = Path(out) / "scenes"
    max_side = generate_config.max_side if generate_config is not None else 640
    for video in videos:
        make_semireal_scenes(video, scene_dir, num_scenes, seed=seed, config=scene_config, max_side=max_side)
    generate([str(scene_dir)], Path(out) / "shards", generate_config, progress=progress, **generate_kwargs)
    return evaluate_shards(Path(out) / "shards", scene_dir, coverage_radius=coverage_radius)


def count_real_clips(videos: list[str], out: str | os.PathLike, generate_config=None, *, progress: bool = False,
                     **generate_kwargs) -> MaskEvalResult:
    """Generate shards from real clips and count their pairs and frames (nothing judges the pairs here).

    Args:
        videos: video files (file names must differ).
        out: work folder; shards go to ``<out>/shards``.
        generate_config: the generation settings.
        progress: show progress bars.
        **generate_kwargs: passed to :func:`~dynocc_data.generation.generate`.

    Returns:
        A result whose ``right`` count holds every pair, unjudged: read only ``pairs``, ``pairs_per_frame``,
        ``frames_selected``, ``frames_written`` and ``frames_written_share``.
    """
    shards = Path(out) / "shards"
    generate([str(v) for v in videos], shards, generate_config, progress=progress, **generate_kwargs)
    params = read_run_params(shards)
    per_video = {}
    for video in videos:
        with open_video(str(video), max_side=params.get("max_side", 640)) as reader:
            n, fps = reader.num_frames, float(reader.fps)
        per_video[_video_key(video)] = MaskEvalResult(
            frames_selected=len(selected_frames({"v": n}, params, {"v": fps})["v"]))
    for item in DynOccDataset(str(shards), strategy="stored", keep_boundary=False):
        res = per_video[item["meta"]["video"]]
        res.frames_written += 1
        res.counts["right"] += len(item["pairs"])
    total = MaskEvalResult(per_video=per_video)
    for res in per_video.values():
        total.add(res)
    return total
