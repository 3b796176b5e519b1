"""Statistics of DynOcc shards (``dynocc-data stats``): what the generated data looks like, in numbers.

:func:`shard_stats` reads every sample once (through :class:`~dynocc_data.datasets.dynocc.DynOccDataset`, stored
pairs, with the boundary) and returns a JSON-ready dict:

* ``samples``, ``videos``, ``frames_per_video`` (``video_id -> samples``: one sample per frame), ``pairs``,
  ``boundary_points``, ``frames_without_pairs``;
* summaries (``count``, ``mean``, ``std``, ``min``, ``p10``, ``median``, ``p90``, ``max`` and a ``histogram`` of
  ``edges``/``counts``) of ``pairs_per_frame``, ``boundary_points_per_frame``, ``pair_offset`` (distance between A
  and B, stored-image pixels), ``boundary_confidence`` and ``jump`` (relative motion across the boundary, pixels
  per flow gap) of every boundary point;
* ``labels``: ``counts`` and ``shares`` of ``"+1"`` (A farther), ``"-1"`` (A closer) and ``"0"`` (equal);
* ``image_sizes`` and ``orig_sizes``: ``"HxW" -> samples``;
* ``read``: samples skipped and shards found broken while reading (see ``DynOccDataset.stats``).

Counts, sums, minima, maxima and histograms are exact and computed in a streaming way; quantiles are exact up to
:data:`RESERVOIR` values per quantity and estimated from a uniform random sample (fixed seed) beyond. Histogram
bins are half-open ``[a, b)`` on a grid of a base width (1 for counts, 0.5 px for offsets, 0.05 for confidences and
jumps) times 1, 2 or 5 times a power of ten, as fine as allows at most :data:`MAX_BINS` bins between the bin of
the smallest value and the bin of the largest. Non-finite values (none in a sound shard) are left out of a summary
and counted in its ``nonfinite`` key, present only then.

With ``plots=DIR`` the histograms are also drawn as PNGs with matplotlib (the optional ``plots`` extra).
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..datasets.dynocc import DynOccDataset
from ..errors import DynOccError

__all__ = ["format_summary", "shard_stats", "Accumulator", "summarize", "plot_stats", "RESERVOIR", "MAX_BINS"]

log = logging.getLogger(__name__)

RESERVOIR = 200_000
MAX_BINS = 30
MAX_FINE_BINS = 100_000  # beyond, the fine bins are merged ten by ten (and the base width grows ten times)
LABELS = {1: "+1", -1: "-1", 0: "0"}
# quantity -> (base bin width, axis label)
QUANTITIES = {
    "pairs_per_frame": (1.0, "pairs per frame"),
    "boundary_points_per_frame": (1.0, "boundary points per frame"),
    "pair_offset": (0.5, "distance between A and B (px)"),
    "boundary_confidence": (0.05, "boundary confidence"),
    "jump": (0.05, "relative motion across the boundary (px per gap)"),
}


@dataclass
class Accumulator:
    """Streaming summary of non-negative values: exact moments, extremes and fine histogram, sampled quantiles.

    Build it with ``width`` (and optionally ``capacity`` and ``seed``); the other fields are its running state.

    Attributes:
        width: the fine bin width (multiplied by 10 whenever more than :data:`MAX_FINE_BINS` bins would be needed).
        capacity: the most values kept for the quantiles (a uniform random sample beyond).
        seed: the seed of that sample.
        count: the number of finite values added.
        total: their sum.
        total_sq: the sum of their squares.
        nonfinite: the number of non-finite values, left out of everything else.
        low: the smallest value (``inf`` before any).
        high: the largest value (``-inf`` before any).
        bins: the fine histogram: counts of ``[k * width, (k + 1) * width)``.
        sample: the values kept for the quantiles.
    """

    width: float
    capacity: int = RESERVOIR
    seed: int = 0
    count: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    nonfinite: int = 0
    low: float = math.inf
    high: float = -math.inf
    bins: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    sample: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    def add(self, values: Any) -> None:
        """Add a batch of values.

        Args:
            values: anything ``numpy.asarray`` takes, flattened; negative values count in the first bin.
        """
        v = np.asarray(values, dtype=np.float64).ravel()
        finite = np.isfinite(v)
        if not finite.all():
            self.nonfinite += int((~finite).sum())
            v = v[finite]
        if not v.size:
            return
        self.total += float(v.sum())
        self.total_sq += float(np.square(v).sum())
        self.low, self.high = min(self.low, float(v.min())), max(self.high, float(v.max()))
        # a tolerance so that values on a bin edge land in the bin they start, also when stored as float32
        # (float32(0.9) / 0.05 = 17.9999995)
        while v.max() / self.width >= MAX_FINE_BINS:
            self._coarsen()
        fine = np.bincount(np.maximum(np.floor(v / self.width + 1e-5), 0).astype(np.int64))
        if len(fine) > len(self.bins):
            self.bins = np.concatenate([self.bins, np.zeros(len(fine) - len(self.bins), np.int64)])
        self.bins[: len(fine)] += fine
        self._reservoir(v)
        self.count += v.size

    def _coarsen(self) -> None:
        """Merge the fine bins ten by ten."""
        bins = np.concatenate([self.bins, np.zeros(-len(self.bins) % 10, np.int64)])
        self.bins = bins.reshape(-1, 10).sum(1)
        self.width *= 10

    def _reservoir(self, v: np.ndarray) -> None:
        """Keep a uniform sample of at most ``capacity`` values (vectorised algorithm R)."""
        room = self.capacity - len(self.sample)
        if room > 0:
            self.sample = np.concatenate([self.sample, v[:room]])
            v = v[room:]
        if not v.size:
            return
        seen = self.count + max(room, 0)  # stream index of v[0]; algorithm R keeps it with chance capacity/(i+1)
        slots = self._rng.integers(0, seen + np.arange(1, v.size + 1))
        keep = slots < self.capacity
        self.sample[slots[keep]] = v[keep]

    def histogram(self, max_bins: int = MAX_BINS) -> dict[str, list]:
        """The histogram of the values added, in at most ``max_bins`` bins.

        Args:
            max_bins: the most bins; the fine bins are merged by the smallest nice factor (1, 2, 5, 10, 20, ...)
                giving at most this many.

        Returns:
            ``edges`` (``len(counts) + 1`` values) and ``counts``, from the bin holding the smallest value to the
            one holding the largest (both empty when no value was added).
        """
        if not self.count:
            return {"edges": [], "counts": []}
        first, end = int(np.flatnonzero(self.bins)[0]), len(self.bins)
        factor = 1
        while math.ceil((end - first // factor * factor) / factor) > max_bins:  # 1, 2, 5, 10, 20, 50, ...
            factor = factor * 5 // 2 if str(factor)[0] == "2" else factor * 2
        start = first // factor
        n = math.ceil(end / factor) - start
        fine = np.zeros((start + n) * factor, np.int64)
        fine[:end] = self.bins
        counts = fine[start * factor:].reshape(n, factor).sum(1)
        edges = [round((start + i) * factor * self.width, 10) for i in range(n + 1)]
        return {"edges": edges, "counts": [int(c) for c in counts]}


def summarize(acc: Accumulator) -> dict[str, Any]:
    """The JSON summary of an accumulator.

    Args:
        acc: the accumulator.

    Returns:
        ``count``, ``mean``, ``std``, ``min``, ``p10``, ``median``, ``p90``, ``max`` (``None`` for statistics of no
        values), ``histogram``, and ``nonfinite`` when there were any.
    """
    extra = {"nonfinite": acc.nonfinite} if acc.nonfinite else {}
    if not acc.count:
        return {**extra, "count": 0, "mean": None, "std": None, "min": None, "p10": None, "median": None, "p90": None,
                "max": None, "histogram": acc.histogram()}
    mean = acc.total / acc.count
    p10, median, p90 = (float(q) for q in np.quantile(acc.sample, [0.1, 0.5, 0.9]))
    return {
        **extra, "count": acc.count, "mean": mean, "std": math.sqrt(max(0.0, acc.total_sq / acc.count - mean * mean)),
        "min": acc.low, "p10": p10, "median": median, "p90": p90, "max": acc.high, "histogram": acc.histogram(),
    }


def _size(value: Any) -> str:
    return "x".join(str(int(v)) for v in value) if value else "?"


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise DynOccError("plots need the matplotlib package, which is not installed: "
                          "pip install matplotlib (or dynocc-data[plots])") from None


def _save_figure(fig: Any, path: Path) -> Path:
    """Save a matplotlib figure as PNG through a temporary name."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)
    return path


def plot_stats(stats: dict[str, Any], out: str | os.PathLike) -> list[Path]:
    """Draw the histograms and the label balance of a :func:`shard_stats` result as PNGs.

    Args:
        stats: a :func:`shard_stats` result.
        out: the folder to write into (created when missing).

    Returns:
        The paths written: ``<quantity>.png`` for each summarised quantity, then ``labels.png``.

    Raises:
        DynOccError: when matplotlib is not installed.
    """
    _require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(out)
    paths = []
    for name, (_, label) in QUANTITIES.items():
        hist = stats[name]["histogram"]
        fig = Figure(figsize=(6, 3.5))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        if hist["counts"]:
            edges = np.asarray(hist["edges"])
            ax.bar(edges[:-1], hist["counts"], width=np.diff(edges), align="edge", color="#3a7bd5",
                   edgecolor="white", linewidth=0.5)
        s = stats[name]
        note = f"n={s['count']}" + (f", mean {s['mean']:.3g}, median {s['median']:.3g}" if s["count"] else "")
        ax.set(xlabel=label, ylabel="count", title=f"{name}  ({note})")
        ax.title.set_fontsize(9)
        fig.tight_layout()
        paths.append(_save_figure(fig, out / f"{name}.png"))
    fig = Figure(figsize=(4, 3))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    names = list(stats["labels"]["shares"])
    ax.bar(range(len(names)), [stats["labels"]["shares"][k] for k in names], color=["#d5573a", "#3a7bd5", "#999999"])
    ax.set_xticks(range(len(names)), names)
    ax.set(xlabel="ordinal label (+1: A farther, -1: A closer, 0: equal)", ylabel="share of pairs",
           title="label balance")
    ax.xaxis.label.set_fontsize(8)
    fig.tight_layout()
    paths.append(_save_figure(fig, out / "labels.png"))
    return paths


def shard_stats(shards: Any, *, plots: str | os.PathLike | None = None) -> dict[str, Any]:
    """Statistics of every sample in ``shards``; see the module docstring for the keys.

    Args:
        shards: a generate output folder, a ``.tar``, a brace pattern, or anything
            :class:`~dynocc_data.datasets.dynocc.DynOccDataset` reads.
        plots: a folder to also write the histograms into (needs matplotlib; checked before reading); they are
            listed under ``"plots"``.

    Returns:
        The JSON-ready statistics.

    Raises:
        DynOccError: with ``plots``, when matplotlib is not installed.
    """
    if plots is not None:
        _require_matplotlib()
    ds = DynOccDataset(shards, strategy="stored", keep_boundary=True)
    acc = {name: Accumulator(width) for name, (width, _) in QUANTITIES.items()}
    frames: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    orig_sizes: Counter[str] = Counter()
    labels: Counter[int] = Counter()
    no_pairs = 0
    for item in ds:
        meta, pairs, bnd = item["meta"], item["pairs"].numpy(), item["boundary"]
        frames[str(meta.get("video_id") or meta["video"])] += 1
        sizes[_size(meta["size"])] += 1
        orig_sizes[_size(meta.get("orig_size"))] += 1
        acc["pairs_per_frame"].add([len(pairs)])
        acc["boundary_points_per_frame"].add([len(bnd["y"])])
        acc["pair_offset"].add(np.hypot(pairs[:, 0] - pairs[:, 2], pairs[:, 1] - pairs[:, 3]))
        acc["boundary_confidence"].add(bnd["confidence"].numpy())
        acc["jump"].add(bnd["jump"].numpy())
        labels.update(int(v) for v in item["ordinal"].numpy())  # the reader checks they are -1, 0, +1
        no_pairs += len(pairs) == 0
    num_pairs = sum(labels.values())
    read = ds.stats
    stats: dict[str, Any] = {
        "samples": sum(frames.values()),
        "videos": len(frames),
        "frames_per_video": dict(sorted(frames.items())),
        "pairs": num_pairs,
        "boundary_points": int(round(acc["boundary_points_per_frame"].total)),
        "frames_without_pairs": int(no_pairs),
        **{name: summarize(a) for name, a in acc.items()},
        "labels": {
            "counts": {LABELS[k]: int(labels[k]) for k in (1, -1, 0)},
            "shares": {LABELS[k]: (labels[k] / num_pairs if num_pairs else 0.0) for k in (1, -1, 0)},
        },
        "image_sizes": dict(sorted(sizes.items())),
        "orig_sizes": dict(sorted(orig_sizes.items())),
        "read": {"skipped_samples": read.skipped_samples, "shard_errors": read.shard_errors},
    }
    if plots is not None:
        stats["plots"] = [str(p) for p in plot_stats(stats, plots)]
    log.info("%d samples of %d videos, %d pairs", stats["samples"], stats["videos"], num_pairs)
    return stats


def format_summary(stats: dict[str, Any]) -> str:
    """The few lines ``dynocc-data stats`` prints by default (``--json`` prints all of ``stats``).

    Args:
        stats: what :func:`shard_stats` returned.

    Returns:
        The summary, one line per quantity, without a final newline.
    """
    def line(name: str, key: str, fmt: str = ".1f") -> str:
        q = stats[key]
        if not q.get("count"):
            return f"{name:<20} none"
        return (f"{name:<20} mean {q['mean']:{fmt}}  median {q['median']:{fmt}}  p10 {q['p10']:{fmt}}  "
                f"p90 {q['p90']:{fmt}}  max {q['max']:{fmt}}")

    videos = ", ".join(f"{name} {n}" for name, n in list(stats["frames_per_video"].items())[:6])
    more = " ..." if len(stats["frames_per_video"]) > 6 else ""
    shares = stats["labels"]["shares"]
    read = stats["read"]
    lines = [
        f"videos {stats['videos']} (samples per video: {videos}{more}), samples {stats['samples']}, "
        f"pairs {stats['pairs']}",
        line("pairs per frame", "pairs_per_frame"),
        line("pair offset (px)", "pair_offset"),
        line("boundary confidence", "boundary_confidence", ".3f"),
        f"{'labels':<20} +1 {shares['+1']:.1%}  -1 {shares['-1']:.1%}  0 {shares['0']:.1%}",
        f"{'image sizes':<20} " + ", ".join(f"{k} ({v})" for k, v in stats["image_sizes"].items()),
    ]
    if read["skipped_samples"] or read["shard_errors"]:
        lines.append(f"{'read errors':<20} {read['skipped_samples']} samples skipped, {read['shard_errors']} "
                     "broken shards")
    if "plots" in stats:
        lines.append(f"{'plots':<20} " + ", ".join(stats["plots"]))
    return "\n".join(lines)
