"""Data for the examples, made from synthetic scenes with ground-truth depth (``dynocc_data.tools.synthetic``).

* :func:`make_training_shards`: render scenes, write them as H.264 clips and run ``dynocc_data.generation`` on
  them: DynOcc shards made by the pipeline, exactly as from real videos (no ground truth goes in).
* :func:`gt_pairs`: point pairs whose order comes from the **ground-truth depth** of a frame, never from the
  pipeline: half "random" pairs (two points anywhere in the frame) and half "edge" pairs (two points 2..16 px
  apart on different layers, i.e. straddling a ground-truth depth edge). Pairs whose depths differ by less than
  ``min_ratio`` (2 % by default) are ties and left out; A is the farther point in exactly half of the pairs
  (chosen at random), so a constant prediction scores 50 %.
* :func:`write_dense_set`: frames of scenes with their ground-truth depth as a dense-depth source (JPEG + 16-bit
  PNG in millimetres, listed in a CSV), read with ``dynocc_data.DenseDepthDataset``.
* :func:`write_gt_pair_set`: frames of other scenes plus their ground-truth pairs written in the YouTube3D
  release format (CSV + JPEGs + Python-2 ``5 x N`` pickles, built with :mod:`dynocc_data.tools.fake_releases`), read back
  with ``dynocc_data.YouTube3DDataset``. Used as the held-out validation set (scenes the shards never saw) and
  as a YouTube3D-format training source to mix in.

Every set is made from its own scene seeds, so validation scenes never appear in training data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dynocc_data.datasets.youtube3d import to_youtube3d_target
from dynocc_data.generation import GenerateConfig, GenerateSummary, generate
from dynocc_data.tools.synthetic import SceneConfig, make_scene, write_scene

from dynocc_data.tools.fake_releases import (
    DenseSample,
    YouTube3DSample,
    py2_ndarray_pickle,
    write_dense_release,
    write_youtube3d_release,
)

__all__ = ["GTPairConfig", "SceneSet", "gt_pairs", "make_training_shards", "write_dense_set", "write_gt_pair_set"]

logger = logging.getLogger(__name__)

# Seed blocks: training scenes use seed + i, the others start far away so the sets never share a scene.
VAL_SEED_OFFSET = 100_000
YT3D_SEED_OFFSET = 200_000


@dataclass
class SceneSet:
    """Which synthetic scenes to render: ``count`` scenes with seeds ``seed, seed+1, ...`` and this config."""

    count: int
    seed: int
    config: SceneConfig = field(default_factory=lambda: SceneConfig(height=240, width=320, num_frames=24))


@dataclass
class GTPairConfig:
    """How :func:`gt_pairs` draws pairs from a ground-truth depth map."""

    random_pairs: int = 100  #: pairs of two points anywhere in the frame
    edge_pairs: int = 100  #: pairs straddling a depth edge (the two points on different layers)
    edge_offset: tuple[float, float] = (2.0, 16.0)  #: distance between the two points of an edge pair, px
    min_ratio: float = 1.02  #: depths closer than this ratio are ties and left out
    frames: tuple[int, ...] = (6, 17)  #: frames taken from each scene


def _draw(depth: np.ndarray, labels: np.ndarray, count: int, edge: bool, cfg: GTPairConfig,
          rng: np.random.Generator) -> np.ndarray:
    """Up to ``count`` pairs ``[n,4]`` (yA, xA, yB, xB) of one kind, ties left out."""
    h, w = depth.shape
    chosen: list[np.ndarray] = []
    have = 0
    for _ in range(20):  # rejection sampling in vectorised rounds
        m = 8 * count
        a = np.stack([rng.integers(0, h, m), rng.integers(0, w, m)], 1)
        if edge:
            angle = rng.uniform(0, 2 * np.pi, m)
            dist = rng.uniform(*cfg.edge_offset, m)
            b = np.rint(a + np.stack([np.sin(angle), np.cos(angle)], 1) * dist[:, None]).astype(np.int64)
        else:
            b = np.stack([rng.integers(0, h, m), rng.integers(0, w, m)], 1)
        inside = (b[:, 0] >= 0) & (b[:, 0] < h) & (b[:, 1] >= 0) & (b[:, 1] < w)
        a, b = a[inside], b[inside]
        da, db = depth[a[:, 0], a[:, 1]], depth[b[:, 0], b[:, 1]]
        keep = np.maximum(da, db) >= cfg.min_ratio * np.minimum(da, db)
        if edge:
            keep &= labels[a[:, 0], a[:, 1]] != labels[b[:, 0], b[:, 1]]
        found = np.concatenate([a[keep], b[keep]], 1)
        chosen.append(found[: count - have])
        have += len(chosen[-1])
        if have >= count:
            break
    return np.concatenate(chosen) if chosen else np.zeros((0, 4), np.int64)


def gt_pairs(depth: np.ndarray, labels: np.ndarray, cfg: GTPairConfig, rng: np.random.Generator
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pairs ``int64 [N,4]``, ordinals ``int64 [N]`` (+1: A farther, from ``depth``) and ``is_edge`` ``bool [N]``.

    See the module docstring; exactly ``N // 2`` ordinals (a random half) are -1 and the rest +1.
    """
    random_p = _draw(depth, labels, cfg.random_pairs, False, cfg, rng)
    edge_p = _draw(depth, labels, cfg.edge_pairs, True, cfg, rng)
    pairs = np.concatenate([random_p, edge_p]).astype(np.int64)
    is_edge = np.concatenate([np.zeros(len(random_p), bool), np.ones(len(edge_p), bool)])
    # orient every pair "A farther", then swap a random half: exactly N // 2 ordinals are -1
    nearer = depth[pairs[:, 0], pairs[:, 1]] < depth[pairs[:, 2], pairs[:, 3]]
    pairs[nearer] = pairs[nearer][:, [2, 3, 0, 1]]
    swap = np.zeros(len(pairs), bool)
    swap[rng.permutation(len(pairs))[: len(pairs) // 2]] = True
    pairs[swap] = pairs[swap][:, [2, 3, 0, 1]]
    ordinal = np.sign(depth[pairs[:, 0], pairs[:, 1]] - depth[pairs[:, 2], pairs[:, 3]]).astype(np.int64)
    return torch.from_numpy(pairs), torch.from_numpy(ordinal), torch.from_numpy(is_edge)


def write_gt_pair_set(root: str | Path, scenes: SceneSet, pair_config: GTPairConfig | None = None,
                      csv_name: str = "gt_pairs.csv") -> Path:
    """Render ``scenes`` and write the chosen frames with ground-truth pairs as a YouTube3D-format release.

    Layout under ``root``: ``<scene>/<frame>.jpg``, ``<scene>/<frame>_gt.pkl`` (5xN, Python 2 protocol 2) and
    ``csv_name`` listing them; also ``<csv stem>_edge.npy`` (``bool``, the ``is_edge`` flags of all pairs in
    CSV order) so that WHDR can be split by pair kind. Returns the CSV path.
    """
    cfg = pair_config or GTPairConfig()
    root = Path(root)
    samples, edge_flags = [], []
    for i in range(scenes.count):
        seed = scenes.seed + i
        scene = make_scene(scenes.config, seed)
        rng = np.random.default_rng(seed)
        for t in cfg.frames:
            t = min(t, scene.num_frames - 1)
            pairs, ordinal, is_edge = gt_pairs(scene.depth[t], scene.labels[t], cfg, rng)
            target = to_youtube3d_target(pairs, ordinal, scene.size).numpy()
            image = torch.from_numpy(np.ascontiguousarray(scene.frames[t])).permute(2, 0, 1).contiguous()
            name = f"scene_{seed:06d}/{t:04d}"
            samples.append(YouTube3DSample(f"./{name}.jpg", f"./{name}_gt.pkl", image, py2_ndarray_pickle(target)))
            edge_flags.append(is_edge.numpy())
    csv_path = write_youtube3d_release(root, samples, csv_name=csv_name)
    np.save(root / f"{Path(csv_name).stem}_edge.npy", np.concatenate(edge_flags), allow_pickle=False)
    logger.info("%s: %d images, %d ground-truth pairs", csv_path, len(samples), sum(len(e) for e in edge_flags))
    return csv_path


def make_training_shards(root: str | Path, scenes: SceneSet, config: GenerateConfig | None = None,
                         shard_size: int = 1000, progress: bool = False) -> tuple[Path, GenerateSummary]:
    """Render ``scenes`` as clips under ``root/videos`` and generate DynOcc shards into ``root/shards``
    (``shard_size`` samples per shard: enough shards for every DataLoader worker to get some).

    Already-written clips are kept (so an interrupted run can go on); returns the shard folder and the summary.
    """
    root = Path(root)
    videos = root / "videos"
    for i in range(scenes.count):
        name = f"scene_{scenes.seed + i:06d}"
        if not (videos / f"{name}.mp4").is_file():
            write_scene(make_scene(scenes.config, scenes.seed + i), videos, name)
    summary = generate([str(videos)], root / "shards", config or GenerateConfig(), shard_size=shard_size,
                       progress=progress)
    return root / "shards", summary


def write_dense_set(root: str | Path, scenes: SceneSet, frames: tuple[int, ...] = (3, 9, 15, 21),
                    csv_name: str = "dense.csv") -> Path:
    """Render ``scenes`` and write the chosen frames with their **ground-truth depth** as a dense-depth source.

    The layout a user has for such data (read by ``dynocc_data.DenseDepthDataset`` with ``depth_scale=0.001``):
    ``<scene>/<frame>.jpg`` and ``<scene>/<frame>_depth.png`` (16-bit PNG, millimetres, 0 = none) listed in
    ``csv_name`` (``image,depth`` header). Returns the CSV path.
    """
    root = Path(root)
    samples = []
    for i in range(scenes.count):
        seed = scenes.seed + i
        scene = make_scene(scenes.config, seed)
        for t in frames:
            t = min(t, scene.num_frames - 1)
            image = torch.from_numpy(np.ascontiguousarray(scene.frames[t])).permute(2, 0, 1).contiguous()
            millimetres = np.clip(np.rint(scene.depth[t].astype(np.float64) * 1000), 1, 65535).astype(np.uint16)
            name = f"scene_{seed:06d}/{t:04d}"
            samples.append(DenseSample(f"{name}.jpg", f"{name}_depth.png", image, millimetres))
    csv_path = write_dense_release(root, samples, csv_name=csv_name)
    logger.info("%s: %d images with ground-truth depth", csv_path, len(samples))
    return csv_path
