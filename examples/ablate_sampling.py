"""Pair-sampling ablation: train the same network on the SAME shards with each strategy, score on ground truth.

::

    python examples/ablate_sampling.py --quick --work /tmp/ablation --docs docs   # CPU, < 10 min with its data
    python examples/ablate_sampling.py --work runs/abl --scenes 400 --steps 5000 --arch resnet18 --size 192 256

Steps (everything seeded by ``--seed``):

1. **Data** (``train_depth.quick_data``): ``--scenes`` synthetic clips (``dynocc_data.tools.synthetic``: ground plane
   with a depth gradient, haze, texture scale falling with depth, moving objects and static occluders) are written
   as H.264 videos and turned into DynOcc shards by ``dynocc_data.generation`` with its default settings. Held-out
   validation pairs come from ``--val-scenes`` *other* scenes and their **ground-truth depth**
   (``examples/synthetic_gt.py``): per frame, 100 random pairs and 100 pairs straddling a depth edge, ties (< 2 %
   depth difference) left out, A the farther point in exactly half. Nothing made by the pipeline is used here.
2. **Training**: for every strategy (``stored``, ``boundary``, ``multiscale``, ``band``, ``uniform``; options:
   the defaults of ``dynocc_data.sampling``, the ``stored`` pairs being those ``generate`` wrote) one run of
   ``train_depth.train`` with identical model, steps, batch size, learning-rate schedule, augmentation and seed;
   only the load-time strategy differs.
3. **Scores**: WHDR on the held-out pairs (overall, random pairs, edge pairs), pairs per frame and the share of
   the training pairs whose order agrees with ground truth (the sign agreement of
   ``dynocc_data.tools.evaluate.score_items``, its old scoring, on the training
   scenes' ``.gt.npz``). Two reference rows that are not trained: a constant depth (50 %: every pair a tie,
   counted as half an error) and "higher in the frame = farther" (the ground-plane prior, which needs no data).
4. **Outputs** in ``--docs``: ``ablation.csv``, ``ablation.md`` (table, setup, timings) and ``ablation.png`` (bars).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


from models import ARCHS, ModelConfig  # noqa: E402
from train_depth import TrainConfig, ValSet, evaluate, load_val_sets, quick_data, train  # noqa: E402

from dynocc_data.datasets import DynOccDataset  # noqa: E402
from dynocc_data.tools.evaluate import score_items  # noqa: E402
from dynocc_data.tools.synthetic import SceneConfig, load_scene_gt  # noqa: E402

__all__ = ["AblationConfig", "Row", "main", "run_ablation"]

logger = logging.getLogger("ablate_sampling")

STRATEGIES = ("stored", "boundary", "multiscale", "band", "uniform")
DESCRIPTIONS = {
    "stored": "pairs written by generate (uniform, spacing 3 px, offset 6 px)",
    "boundary": "every boundary point, both sides at 4 px",
    "multiscale": "every boundary point, each side at 2-12 px",
    "band": "every boundary point, band 2-12 px deep, +-2 px along",
    "uniform": "points 8 px apart along each segment, both sides at 4 px",
    "constant": "constant depth (not trained): every pair a tie",
    "row prior": "higher in the frame = farther (not trained)",
}


@dataclass
class AblationConfig:
    """One ablation: the data to make, the training shared by all strategies, and where to write."""

    work: str
    docs: str
    strategies: tuple[str, ...] = STRATEGIES
    seed: int = 0
    scenes: int = 40
    val_scenes: int = 8
    scene_size: tuple[int, int] = (240, 320)
    scene_frames: int = 24
    scene_options: dict[str, Any] = field(default_factory=dict)  #: other SceneConfig fields
    train: dict[str, Any] = field(default_factory=dict)  #: TrainConfig fields shared by every strategy
    shard_size: int = 8  #: samples per shard (enough shards for every DataLoader worker)
    label: str = ""  #: how the run was started (written into ablation.md)


@dataclass
class Row:
    """One line of the table (fractions in [0, 1]; ``nan`` where it does not apply)."""

    method: str
    description: str
    whdr: float
    whdr_random: float
    whdr_edge: float
    pairs_per_frame: float = float("nan")
    pair_accuracy: float = float("nan")
    train_seconds: float = float("nan")


def _const(x: torch.Tensor) -> torch.Tensor:
    """Constant depth."""
    return torch.zeros(x.shape[0], 1, *x.shape[-2:])


def _row_prior(x: torch.Tensor) -> torch.Tensor:
    """Depth growing towards the top of the frame (the ground-plane prior)."""
    h, w = x.shape[-2:]
    return -torch.arange(h, dtype=torch.float32).view(1, 1, h, 1).expand(x.shape[0], 1, h, w)


def load_scenes(videos: Path) -> dict[str, Any]:
    """Ground truth of the training clips, keyed like ``meta["video"]`` (the clip's file name)."""
    return {p.name[: -len(".gt.npz")] + ".mp4": load_scene_gt(p) for p in sorted(videos.glob("*.gt.npz"))}


def pair_statistics(shards: str, scenes: dict[str, Any], strategy: str, seed: int) -> tuple[float, float]:
    """Pairs per written frame and the share of them that agree with ground-truth depth, for one strategy
    (epoch 0 of the load-time sampling, full frames)."""
    items = DynOccDataset(shards, strategy=strategy, seed=seed, keep_boundary=False)
    result = score_items(items, scenes)
    return result.pairs_per_frame, result.old_precision  # sign agreement, as in the committed docs/ablation.md


def _baseline_rows(val: ValSet, cfg: TrainConfig) -> list[Row]:
    """The untrained reference rows."""
    rows = []
    for name, fn in (("constant", _const), ("row prior", _row_prior)):
        m = evaluate(fn, val, cfg.eval_size, torch.device("cpu"))
        rows.append(Row(name, DESCRIPTIONS[name], m["whdr"], m.get("whdr_random", float("nan")),
                        m.get("whdr_edge", float("nan"))))
    return rows


def run_ablation(cfg: AblationConfig, log: Callable[[str], None] = print) -> tuple[list[Row], dict[str, float]]:
    """Make the data, train every strategy, score; returns the rows and the wall time of each phase (s)."""
    timings: dict[str, float] = {"load_before": os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")}
    t0 = time.perf_counter()
    work = Path(cfg.work)
    scene_config = SceneConfig(height=cfg.scene_size[0], width=cfg.scene_size[1], num_frames=cfg.scene_frames,
                               **cfg.scene_options)
    data = quick_data(work / "data", seed=cfg.seed, scenes=cfg.scenes, val_scenes=cfg.val_scenes, yt3d_scenes=0,
                      scene_config=scene_config, shard_size=cfg.shard_size)
    timings["data"] = time.perf_counter() - t0
    log(f"data ready in {timings['data']:.0f} s: {data['shards']}, validation {data['val']}")
    base = TrainConfig(out=str(work / "runs" / "_"), shards=[data["shards"]], val=[data["val"]],
                       seed=cfg.seed, **cfg.train)
    val = load_val_sets(base)[0]
    rows = _baseline_rows(val, base)
    scenes = load_scenes(Path(data["videos"]))
    for strategy in cfg.strategies:
        t1 = time.perf_counter()
        run = dataclasses.replace(base, out=str(work / "runs" / strategy), strategy=strategy, val=[])
        result = train(run, val_sets=[])
        metrics = evaluate(result.model, val, run.eval_size, next(result.model.parameters()).device)
        per_frame, accuracy = pair_statistics(data["shards"], scenes, strategy, cfg.seed)
        timings[strategy] = time.perf_counter() - t1
        rows.append(Row(strategy, DESCRIPTIONS.get(strategy, strategy), metrics["whdr"],
                        metrics.get("whdr_random", float("nan")), metrics.get("whdr_edge", float("nan")),
                        per_frame, accuracy, result.seconds))
        log(f"{strategy:10s} WHDR {100 * metrics['whdr']:.1f}% (random {100 * metrics['whdr_random']:.1f}%, "
            f"edge {100 * metrics['whdr_edge']:.1f}%)  {timings[strategy]:.0f} s")
    timings["total"] = time.perf_counter() - t0
    return rows, timings


# -------------------------------------------------------------------------------------------------- outputs


def _pct(v: float) -> str:
    """A fraction as a percentage with one decimal ('-' for nan)."""
    return "-" if v != v else f"{100 * v:.1f}"


def write_csv(rows: Sequence[Row], path: Path) -> None:
    """The table as CSV (fractions, not percentages), written to a temporary file and renamed."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=[f.name for f in dataclasses.fields(Row)])
        writer.writeheader()
        for row in rows:
            values = dataclasses.asdict(row)
            writer.writerow({k: (round(v, 5) if isinstance(v, float) else v) for k, v in values.items()})
    tmp.replace(path)


def read_csv(path: Path) -> list[Row]:
    """Rows back from :func:`write_csv`."""
    with open(path, newline="", encoding="utf-8") as fh:
        return [Row(r["method"], r["description"], *(float(r[k]) for k in
                    ("whdr", "whdr_random", "whdr_edge", "pairs_per_frame", "pair_accuracy", "train_seconds")))
                for r in csv.DictReader(fh)]


def write_plot(rows: Sequence[Row], path: Path, title: str) -> None:
    """Bars of WHDR (overall, random pairs, edge pairs) per method, the constant baseline as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = [r.method for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(8.5, 4.0), dpi=110)
    for k, (attr, label) in enumerate((("whdr", "all pairs"), ("whdr_random", "random pairs"),
                                       ("whdr_edge", "edge pairs"))):
        values = [100 * getattr(r, attr) for r in rows]
        bars = ax.bar(x + (k - 1) * 0.27, values, 0.27, label=label)
        if attr == "whdr":
            ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    ax.axhline(50, color="grey", linestyle="--", linewidth=1, label="constant depth (50 %)")
    ax.set_xticks(x, names)
    ax.set_ylabel("WHDR on held-out ground truth (%)  lower is better")
    ax.set_ylim(0, 60)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncols=2, loc="upper right")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def _cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_markdown(rows: Sequence[Row], timings: dict[str, float], cfg: AblationConfig, train_cfg: TrainConfig,
                   path: Path) -> None:
    """The table, the setup and the timings as Markdown."""
    lines = [
        "# Pair-sampling ablation on synthetic scenes",
        "",
        f"Produced by `{cfg.label or 'examples/ablate_sampling.py'}` (`examples/ablate_sampling.py`; setup in its "
        "docstring). Every strategy trains the same network on the **same shards** for the same steps with the same "
        "seed; WHDR is measured on pairs drawn from the **ground-truth depth** of held-out scenes (never on pairs "
        "made by the pipeline): half random pairs, half pairs straddling a depth edge, ties (< 2 %) excluded, "
        "ordinals balanced. Lower is better.",
        "",
        "| method | pairs | pairs / frame | pair accuracy (GT) | WHDR all | WHDR random | WHDR edge | train s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        per_frame = "-" if r.pairs_per_frame != r.pairs_per_frame else f"{r.pairs_per_frame:.0f}"
        secs = "-" if r.train_seconds != r.train_seconds else f"{r.train_seconds:.0f}"
        lines.append(f"| {r.method} | {r.description} | {per_frame} | {_pct(r.pair_accuracy)} | "
                     f"**{_pct(r.whdr)}** | {_pct(r.whdr_random)} | {_pct(r.whdr_edge)} | {secs} |")
    m = train_cfg.model
    lines += [
        "",
        "WHDR in %. *pairs / frame* and *pair accuracy* describe each strategy's training pairs on the full "
        "training frames (epoch 0): the share whose order agrees with ground-truth depth. *row prior* needs no "
        "training and shows how much the ground plane alone gives on random pairs; the boundary-trained networks "
        "have to learn depth cues (haze, texture scale, occlusion) from pairs that cross occlusion boundaries only. "
        "One seed per row: differences of a few points between strategies are within run-to-run variation (rerun "
        "with another `--seed` before reading much into them).",
        "",
        "![ablation](ablation.png)",
        "",
        "## Setup",
        "",
        f"- data: {cfg.scenes} training clips, {cfg.scene_size[0]}x{cfg.scene_size[1]}, {cfg.scene_frames} frames "
        f"(`dynocc_data.tools.synthetic.make_scene`, seeds {cfg.seed}..{cfg.seed + cfg.scenes - 1}), shards by "
        f"`dynocc_data.generation` with default settings; validation: {cfg.val_scenes} other scenes x 2 frames x 200 "
        "ground-truth pairs",
        f"- model: `{m.arch}` encoder (random init) + FPN decoder with full-resolution refinement, predicting log "
        f"depth (`examples/models.py`)",
        f"- training: {train_cfg.steps} steps, batch {train_cfg.batch_size}, crops {train_cfg.size[0]}x"
        f"{train_cfg.size[1]} covering {train_cfg.crop_scale[0]:.2f}-{train_cfg.crop_scale[1]:.2f} of the frame "
        f"area, AdamW lr {train_cfg.lr:g} (warm-up + cosine), `ranking_loss`, seed {cfg.seed}; evaluation on whole "
        "frames",
        "",
        "## Time",
        "",
        f"Machine: {_cpu_name()}, {os.cpu_count()} CPU cores, training with "
        f"{train_cfg.threads or torch.get_num_threads()} torch thread(s) + {train_cfg.workers} DataLoader worker(s), "
        f"torch {torch.__version__} on {'CUDA' if torch.cuda.is_available() else 'CPU'}; load average before the run "
        f"{timings.get('load_before', float('nan')):.2f}.",
        "",
        "| phase | seconds |",
        "|---|---:|",
    ]
    lines += [f"| {k} | {v:.0f} |" for k, v in timings.items() if k != "load_before"]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(path)


# ------------------------------------------------------------------------------------------------------ CLI

QUICK = {"scenes": 40, "val_scenes": 8,
         "train": {"model": ModelConfig(arch="mobilenet_v3_small"), "size": (96, 128), "crop_scale": (0.12, 0.25),
                   "batch_size": 16, "steps": 150, "lr": 2e-3, "workers": 1, "threads": 1, "log_every": 50,
                   "ckpt_every": 1000}}
# --smoke: tiny frames need fast objects for the flow to see occlusions at all (speeds are px/frame at 640 px).
SMOKE = {"scenes": 4, "val_scenes": 1, "scene_size": (96, 128), "scene_frames": 16, "shard_size": 2,
         "scene_options": {"speed": (10.0, 20.0), "num_objects": (3, 4), "static_camera_prob": 0.0},
         "train": {"model": ModelConfig(arch="mobilenet_v3_small", width=16), "size": (48, 64),
                   "crop_scale": (0.2, 0.3), "batch_size": 4, "steps": 2, "workers": 0, "threads": 1, "log_every": 1,
                   "ckpt_every": 1000, "shuffle": 0}}


def parse_args(argv: Sequence[str] | None) -> AblationConfig:
    """Command line -> :class:`AblationConfig`."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", required=True, help="folder for data and runs (data is reused when present)")
    p.add_argument("--docs", default="docs", help="where ablation.md / .csv / .png go")
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    p.add_argument("--quick", action="store_true", help="the CPU configuration of docs/ablation.md (< 10 min)")
    p.add_argument("--smoke", action="store_true", help="tiny end-to-end check (seconds; meaningless figures)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scenes", type=int, default=None)
    p.add_argument("--val-scenes", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--arch", default=None, choices=sorted(ARCHS))
    p.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"))
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    preset = SMOKE if args.smoke else QUICK if args.quick else {
        "train": {"model": ModelConfig(arch="resnet18"), "size": (192, 256), "steps": 5000, "workers": 4}}
    train_opts = dict(preset.get("train", {}))
    for name in ("steps", "batch_size", "size", "workers", "threads"):
        if getattr(args, name) is not None:
            train_opts[name] = getattr(args, name)
    if args.arch is not None:
        train_opts["model"] = dataclasses.replace(train_opts.get("model", ModelConfig()), arch=args.arch)
    train_opts["device"] = args.device
    options = {k: v for k, v in preset.items() if k != "train"}
    for name in ("scenes", "val_scenes"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    unknown = [s for s in args.strategies if s not in STRATEGIES]
    if unknown:
        p.error(f"unknown strategies {unknown}; choose from {', '.join(STRATEGIES)}")
    label = "python examples/ablate_sampling.py " + " ".join(argv if argv is not None else sys.argv[1:])
    return AblationConfig(work=args.work, docs=args.docs, strategies=tuple(args.strategies), seed=args.seed,
                          train=train_opts, label=label, **options)


def main(argv: Sequence[str] | None = None) -> list[Row]:
    """Command-line entry point (``argv`` for tests); returns the table rows."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("dynocc_data").setLevel(logging.WARNING)
    logging.getLogger("train_depth").setLevel(logging.WARNING)
    cfg = parse_args(argv)
    rows, timings = run_ablation(cfg)
    docs = Path(cfg.docs)
    docs.mkdir(parents=True, exist_ok=True)
    train_cfg = TrainConfig(out="-", **cfg.train)
    write_csv(rows, docs / "ablation.csv")
    write_markdown(rows, timings, cfg, train_cfg, docs / "ablation.md")
    write_plot(rows, docs / "ablation.png", f"{train_cfg.model.arch}, {train_cfg.steps} steps, "
                                            f"{cfg.scenes} training clips (same shards for every strategy)")
    (Path(cfg.work) / "timings.json").write_text(json.dumps(timings, indent=1) + "\n", encoding="utf-8")
    print(f"{'method':12s} {'WHDR':>6s} {'random':>7s} {'edge':>6s}")
    for r in rows:
        print(f"{r.method:12s} {_pct(r.whdr):>6s} {_pct(r.whdr_random):>7s} {_pct(r.whdr_edge):>6s}")
    print(f"total {timings['total']:.0f} s; wrote {docs / 'ablation.md'}, .csv, .png")
    return rows


if __name__ == "__main__":
    main()
