"""Score generated pairs against ground-truth depth (synthetic scenes from :mod:`dynocc_data.tools.synthetic`).

* **pair precision**: share of pairs whose order (``ordinal``) agrees with the ground-truth depth at the
  two points;
* **boundary coverage**: share of ground-truth *moving* occlusion boundary pixels of every selected frame that
  have a pair (its midpoint) within ``coverage_radius`` pixels; frames that made no sample count as uncovered.
  The boundary is where the two sides move at least ``min_motion`` px *across* the outline over the flow gap
  (``Scene.moving_boundary(motion="across")``: the occluder covers or uncovers what is behind it, the event
  DynOcc's cue rests on). ``coverage_any`` counts every outline whose sides move apart in any direction
  (``motion="any"``), parts that only slide along themselves included, which no occlusion test can order;
* **pairs per frame**: over written frames and over all selected frames.

Items are read through :class:`~dynocc_data.datasets.DynOccDataset`, exactly as a user would read them,
so the scores measure what training code gets.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import cv2
import numpy as np

from ..datasets.dynocc import DynOccDataset
from ..generation import generate
from ..generation.video import select_frames
from .synthetic import load_scene_gt, make_scenes

__all__ = ["EvalResult", "score_items", "evaluate_shards", "evaluate_synthetic"]

log = logging.getLogger(__name__)


def _ratio(part: int, whole: int) -> float:
    """``part / whole``, NaN when there is nothing to score."""
    return part / whole if whole else float("nan")


@dataclass
class EvalResult:
    """Scores of a set of items against ground truth (pooled over all frames)."""

    pairs: int = 0
    correct: int = 0
    boundary_pixels: int = 0
    covered_pixels: int = 0
    boundary_pixels_any: int = 0
    covered_pixels_any: int = 0
    frames_selected: int = 0
    frames_written: int = 0
    per_video: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def precision(self) -> float:
        return _ratio(self.correct, self.pairs)

    @property
    def coverage(self) -> float:
        return _ratio(self.covered_pixels, self.boundary_pixels)

    @property
    def coverage_any(self) -> float:
        return _ratio(self.covered_pixels_any, self.boundary_pixels_any)

    @property
    def pairs_per_frame(self) -> float:
        return self.pairs / self.frames_written if self.frames_written else 0.0

    @property
    def pairs_per_selected_frame(self) -> float:
        return self.pairs / self.frames_selected if self.frames_selected else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(precision=self.precision, coverage=self.coverage, coverage_any=self.coverage_any,
                 pairs_per_frame=self.pairs_per_frame,
                 pairs_per_selected_frame=self.pairs_per_selected_frame)
        return d


def _gt_order(depth: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """+1 where depth at (yA, xA) > depth at (yB, xB), -1 where smaller, 0 equal; pts [N,4] in GT pixels."""
    H, W = depth.shape
    ya, xa = np.clip(pts[:, 0], 0, H - 1), np.clip(pts[:, 1], 0, W - 1)
    yb, xb = np.clip(pts[:, 2], 0, H - 1), np.clip(pts[:, 3], 0, W - 1)
    return np.sign(depth[ya, xa] - depth[yb, xb]).astype(np.int64)


def score_items(items: Iterable[Mapping[str, Any]], scenes: Mapping[str, Any], *, coverage_radius: float = 6.0,
                selected: Mapping[str, Iterable[int]] | None = None, gap: int = 2,
                min_motion: float = 1.0) -> EvalResult:
    """Score DynOcc items against scene ground truth.

    ``scenes`` maps the item's ``meta["video"]`` (the path relative to the input root) to a
    :class:`~dynocc_data.tools.synthetic.SceneGT`. ``selected`` maps the same names to every frame the generator
    selected (so frames without a sample count against coverage); by default only the items' frames.
    Pair points are scaled from the stored image to the ground-truth resolution with ``orig_size``.
    """
    res = EvalResult()
    mids: dict[tuple[str, int], list[np.ndarray]] = defaultdict(list)
    per_video: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0, 0])
    for item in items:
        meta = item["meta"]
        name = meta["video"]
        if name not in scenes:
            raise KeyError(f"{meta.get('url', '?')} [{meta['key']}]: no ground truth for video {name!r}")
        gt = scenes[name]
        t = int(meta["frame"])
        H, W = item["image"].shape[-2:]
        oh, ow = meta["orig_size"]
        pairs = item["pairs"].cpu().numpy().astype(np.float64)
        ordinal = item["ordinal"].cpu().numpy()
        scale = np.array([oh / H, ow / W, oh / H, ow / W])
        pts = np.rint(pairs * scale).astype(np.int64)
        agree = _gt_order(gt.depth[t], pts) == ordinal
        res.pairs += len(agree)
        res.correct += int(agree.sum())
        res.frames_written += 1
        per_video[name][0] += len(agree)
        per_video[name][1] += int(agree.sum())
        mids[(name, t)].append(np.stack([(pts[:, 0] + pts[:, 2]) / 2, (pts[:, 1] + pts[:, 3]) / 2], 1))
    frames = {k: sorted(set(v)) for k, v in (selected or {}).items()}
    for name, t in mids:
        frames.setdefault(name, [])
        if t not in frames[name]:
            frames[name].append(t)
    for name, ts in frames.items():
        gt = scenes[name]
        for t in ts:
            res.frames_selected += 1
            near = None  # pixels within coverage_radius of a pair midpoint
            if (name, t) in mids:
                m = np.concatenate(mids[(name, t)])
                shape = gt.depth.shape[1:]
                seed = np.ones(shape, np.uint8)
                seed[np.clip(np.rint(m[:, 0]).astype(int), 0, shape[0] - 1),
                     np.clip(np.rint(m[:, 1]).astype(int), 0, shape[1] - 1)] = 0
                near = cv2.distanceTransform(seed, cv2.DIST_L2, 5) <= coverage_radius
            for slot, motion in ((2, "across"), (4, "any")):
                boundary = gt.moving_boundary(t, gap, min_motion=min_motion, motion=motion)
                n = int(boundary.sum())
                covered = int((boundary & near).sum()) if near is not None else 0
                per_video[name][slot] += n
                per_video[name][slot + 1] += covered
    for v in per_video.values():
        res.boundary_pixels += v[2]
        res.covered_pixels += v[3]
        res.boundary_pixels_any += v[4]
        res.covered_pixels_any += v[5]
    res.per_video = {k: {"pairs": v[0], "precision": _ratio(v[1], v[0]), "coverage": _ratio(v[3], v[2]),
                         "coverage_any": _ratio(v[5], v[4])} for k, v in per_video.items()}
    return res


def evaluate_shards(shards: str | os.PathLike, scene_dir: str | os.PathLike, *, coverage_radius: float = 6.0,
                    min_motion: float = 1.0) -> EvalResult:
    """Score the shards in ``shards`` (a generate output folder) against the ``*.gt.npz`` files of
    ``scene_dir`` (written by :func:`dynocc_data.tools.synthetic.write_scene`), reading items with DynOccDataset."""


    shards, scene_dir = Path(shards), Path(scene_dir)
    scenes = {}
    for p in sorted(scene_dir.rglob("*.gt.npz")):
        video = p.with_name(p.name[: -len(".gt.npz")] + ".mp4")
        scenes[video.relative_to(scene_dir).as_posix()] = load_scene_gt(p)
    if not scenes:
        raise FileNotFoundError(f"{scene_dir}: no *.gt.npz ground truth found")
    stats = json.loads((shards / "stats.json").read_text()) if (shards / "stats.json").exists() else {}
    params = _read_params(shards)
    gap, stride = params.get("gap", 2), params.get("stride", 2)
    selected = {name: select_frames(gt.num_frames, stride=stride, gap=gap, max_frames=params.get("max_frames"))
                for name, gt in scenes.items()}
    failed = {f["video"] for f in stats.get("failed", [])}
    for name in failed & set(scenes):
        log.warning("%s failed during generation; its boundaries count as uncovered", name)
    items = DynOccDataset(str(shards), strategy="stored", keep_boundary=False)
    return score_items(items, scenes, coverage_radius=coverage_radius, selected=selected, gap=gap,
                       min_motion=min_motion)


def _read_params(shards: Path) -> dict[str, Any]:

    for ledger in sorted(shards.glob("ledger-r*.jsonl")):
        for line in ledger.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("type") == "header":
                return rec.get("params", {})
    return {}


def evaluate_synthetic(out: str | os.PathLike, *, num_scenes: int = 4, seed: int = 1000, scene_config=None,
                       generate_config=None, coverage_radius: float = 6.0, progress: bool = False,
                       **generate_kwargs) -> EvalResult:
    """Make ``num_scenes`` synthetic scenes (seeds ``seed``, ``seed+1``, ...), generate shards from them with
    ``generate_config`` and score them. Scenes go to ``<out>/scenes``, shards to ``<out>/shards`` (both replaced
    when they exist: running twice into one folder gives the second run's figures)."""

    out = Path(out)
    scene_dir = out / "scenes"
    for old in (scene_dir, out / "shards"):  # the evaluation owns its work folder: a second run starts afresh
        shutil.rmtree(old, ignore_errors=True)
    make_scenes(scene_dir, num_scenes, seed=seed, config=scene_config)
    generate([str(scene_dir)], out / "shards", generate_config, progress=progress, **generate_kwargs)
    return evaluate_shards(out / "shards", scene_dir, coverage_radius=coverage_radius)
