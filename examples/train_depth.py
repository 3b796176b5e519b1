"""Train a small monocular depth network on DynOcc shards with the ordinal ranking loss.

::

    # shards made by `dynocc-data generate`; validation on ground-truth pairs (YouTube3D-format CSV) or DIW
    python examples/train_depth.py --shards shards/ --val val/gt_pairs.csv --out runs/r18 --steps 20000 \\
        --arch resnet18 --size 256 320 --batch-size 16 --workers 8
    # mix in YouTube3D (and DIW): a fraction W of the items comes from them
    python examples/train_depth.py --shards shards/ --youtube3d YT_train.csv --mix-weight 0.3 --val-diw DIW_val.csv ...
    python examples/train_depth.py --out runs/r18 --resume          # go on from runs/r18/last.pt
    python examples/train_depth.py --quick --out runs/quick         # CPU, minutes: makes its own synthetic data
    # DynOcc + a dense-depth source (CSV of image,depth files, a ReDWeb folder, or converted shards), one loop:
    # half the batches from each (per-batch mixing), ranking loss on DynOcc's pairs, ssi_loss on the dense depth
    python examples/train_depth.py --shards shards/ --dense ReDWeb_V1/ --dense-weight 0.5 ...
    python examples/train_depth.py --quick --dense synthetic --dense-weight 0.5 --out runs/mixed

**Model and output convention** (``examples/models.py``): an encoder-decoder on a torchvision backbone (random
init; ImageNet weights only with ``--pretrained`` when already cached) that predicts **log depth**
``[B,1,H,W]`` at the input size: larger = farther, defined up to an additive constant. It goes to
``dynocc_data.losses.ranking_loss`` as it is (``inverse=False``); ``exp()`` of it is depth up to scale.

**Data**: ``DynOccDataset(shards, strategy=...)`` with ``create_transform(train=True, size=...)`` (random resized
crop, horizontal flip, colour jitter: never a vertical flip, which would turn the ground upside down), batched by
``create_loader`` with ``collate_pairs``; ``--youtube3d CSV`` / ``--diw CSV`` are mixed in through
``dynocc_data.datasets.mix.mix`` with weights ``1 - W`` for DynOcc and ``W`` for the others (split equally).

**Dense sources** (``--dense SOURCE``): a ``DenseDepthDataset`` (or converted shards) with the same transform
(the depth is cropped and flipped with the image), mixed in by ``mix(..., per_batch=True)``: every batch comes
from one source, ``--dense-weight`` of them from the dense one (0: DynOcc alone, 1: dense alone). A dense batch
is scored by ``dynocc_data.losses.ssi_loss`` (MiDaS, gradient term included) between the prediction and the
target in one space: log depth for ``depth``/``depth_scale`` targets (scale and shift of log depth), ``exp(-pred)``
against disparity kinds, ``exp(pred)`` against ``depth_affine``; times the source's loss weight
(``--dense-loss-weight``, carried in ``batch["loss_weight"]``). ``--quick --dense synthetic`` renders the
training scenes' frames with their ground-truth depth (16-bit PNG in mm, listed in a CSV) as the dense source.

**Validation**: every ``--val-every`` steps, WHDR (``dynocc_data.losses.whdr``, difference rule, threshold 0) of
the prediction resized to each image's size, on ``--val CSV`` (ground-truth pairs in the YouTube3D release format,
e.g. ``examples/synthetic_gt.py``; with a ``<stem>_edge.npy`` next to it, also split into random and edge pairs)
and/or ``--val-diw CSV``. A predicted tie on an unequal pair counts as half an error (the expected error of
breaking it at random), so a constant prediction scores 50 % on balanced pairs.

**Checkpoints**: ``<out>/last.pt`` every ``--ckpt-every`` steps and at the end, ``<out>/best.pt`` at the best
validation WHDR, each written to a temporary file and renamed (never a half-written checkpoint under the final
name); ``--resume`` restores model, optimiser, LR schedule, AMP scaler, step and epoch, and the data stream
where it stopped, mid-epoch (the checkpoint holds the ``StatefulDataLoader``'s ``state_dict()``, so the batches
after it are those the uninterrupted run would have seen; a checkpoint without it resumes at the next epoch).
Logs go to the console, to ``<out>/log.jsonl`` and to TensorBoard (``<out>/tb``) when it is installed.

**Devices**: ``--device auto`` (CUDA when available); ``--amp auto`` uses float16 autocast + gradient scaling on
CUDA and none on the CPU (``--amp bf16`` is available on both).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


from models import ARCHS, ModelConfig, build_model  # noqa: E402

from dynocc_data.collate import to_device  # noqa: E402
from dynocc_data.datasets import (  # noqa: E402
    DenseDepthDataset,
    DIWDataset,
    DynOccDataset,
    YouTube3DDataset,
    create_loader,
    mix,
)
from dynocc_data.losses import ranking_loss, ssi_loss, whdr  # noqa: E402
from dynocc_data.transforms import create_transform  # noqa: E402

__all__ = ["TrainConfig", "TrainResult", "ValSet", "evaluate", "load_val_sets", "main", "train"]

logger = logging.getLogger("train_depth")


# ------------------------------------------------------------------------------------------------ config


@dataclass
class TrainConfig:
    """Every option of a training run (saved in each checkpoint)."""

    out: str
    shards: list[str] = field(default_factory=list)
    strategy: str = "stored"  #: pair strategy of dynocc_data.sampling applied at load time
    sampler_options: dict[str, Any] = field(default_factory=dict)
    youtube3d: str | None = None
    diw: str | None = None
    mix_weight: float = 0.3  #: share of items drawn from --youtube3d/--diw (when given)
    dense: str | None = None  #: dense-depth source: a CSV, a ReDWeb folder or converted shards
    dense_weight: float = 0.5  #: share of batches drawn from --dense (1: dense alone)
    dense_loss_weight: float = 1.0  #: loss weight of the dense batches
    dense_options: dict[str, Any] = field(default_factory=dict)  #: DenseDepthDataset options (depth_scale, ...)
    val: list[str] = field(default_factory=list)  #: ground-truth pair sets, YouTube3D CSV format
    val_diw: list[str] = field(default_factory=list)
    model: ModelConfig = field(default_factory=ModelConfig)
    size: tuple[int, int] = (192, 256)  #: training input (h, w): random resized crops of this size
    crop_scale: tuple[float, float] = (0.5, 1.0)  #: area fraction of the frame each training crop covers
    eval_size: tuple[int, int] | None = None  #: evaluation input (h, w); None: every image at its own size
    batch_size: int = 16
    steps: int = 20000
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: float = 0.05  #: fraction of the steps with a linear LR warm-up (then cosine decay to 0)
    shuffle: int = 500  #: DynOcc shuffle buffer
    workers: int = 4
    seed: int = 0
    val_every: int = 1000
    log_every: int = 50
    ckpt_every: int = 1000
    device: str = "auto"
    threads: int | None = None  #: torch CPU threads (None: torch's default)
    amp: str = "auto"  #: auto | off | fp16 | bf16
    resume: bool = False

    def __post_init__(self) -> None:
        """Accept JSON forms (lists, dicts) and reject impossible values with one line."""
        if isinstance(self.model, dict):
            self.model = ModelConfig(**self.model)
        self.size = tuple(int(s) for s in self.size)  # type: ignore[assignment]
        self.crop_scale = tuple(float(s) for s in self.crop_scale)  # type: ignore[assignment]
        if self.eval_size is not None:
            self.eval_size = tuple(int(s) for s in self.eval_size)  # type: ignore[assignment]
        if len(self.size) != 2 or min(self.size) < 32:
            raise ValueError(f"size must be (h, w) with both >= 32, got {self.size}")
        if not 0.0 <= self.dense_weight <= 1.0 or self.dense_loss_weight < 0:
            raise ValueError(f"dense_weight must be in [0, 1] and dense_loss_weight >= 0, got {self.dense_weight}, "
                             f"{self.dense_loss_weight}")
        if not 0.0 <= self.mix_weight < 1.0:
            raise ValueError(f"mix_weight must be in [0, 1), got {self.mix_weight}")
        if self.amp not in ("auto", "off", "fp16", "bf16"):
            raise ValueError(f"amp must be auto, off, fp16 or bf16, got {self.amp!r}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    """What a run ends with: the final step, the validation history, the checkpoint paths and the model (in its
    final state, eval mode)."""

    step: int
    history: list[dict[str, Any]]
    last: Path
    best: Path | None
    seconds: float
    model: nn.Module


# -------------------------------------------------------------------------------------------- validation


@dataclass
class ValSet:
    """A named validation set: a map-style dataset of contract items, optionally with ``is_edge`` flags per pair
    (in item order) to split WHDR into random and edge pairs."""

    name: str
    dataset: Any
    edge: np.ndarray | None = None


def load_val_sets(cfg: TrainConfig) -> list[ValSet]:
    """The ``--val`` (YouTube3D-format ground truth) and ``--val-diw`` sets of ``cfg``."""
    sets = []
    for path in cfg.val:
        edge_file = Path(path).with_name(f"{Path(path).stem}_edge.npy")
        edge = np.load(edge_file, allow_pickle=False) if edge_file.is_file() else None
        sets.append(ValSet(f"val:{Path(path).stem}", YouTube3DDataset(path), edge))
    for path in cfg.val_diw:
        sets.append(ValSet(f"diw:{Path(path).stem}", DIWDataset(path)))
    return sets


def _resize_input(image: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """``uint8 [3,H,W]`` -> ``float32 [3,h,w]`` in [0, 1] (bilinear, antialiased; ``None``: keep the size)."""
    x = image.float().div(255.0)[None]
    if size is None or tuple(size) == tuple(x.shape[-2:]):
        return x[0]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)[0]


class _Tally:
    """Pooled error counts over many images: errors, ties (counted as half errors) and pairs, per subset."""

    def __init__(self) -> None:
        """Start empty."""
        self.counts: dict[str, list[float]] = {}

    def add(self, name: str, depth: torch.Tensor, pairs: torch.Tensor, ordinal: torch.Tensor,
            mask: torch.Tensor) -> None:
        """Score one image's prediction ``[H,W]`` on the pairs selected by ``mask``."""
        n = int(mask.sum())
        if n == 0:
            return
        res = whdr(depth[None], pairs[None], ordinal[None], mask=mask[None])
        p = pairs[mask]
        flat = depth.reshape(-1)
        width = depth.shape[-1]
        tie = flat[p[:, 0] * width + p[:, 1]] == flat[p[:, 2] * width + p[:, 3]]
        ties = int((tie & (ordinal[mask] != 0)).sum())
        entry = self.counts.setdefault(name, [0.0, 0.0, 0.0])
        entry[0] += res.whdr * n
        entry[1] += ties
        entry[2] += n

    def rates(self) -> dict[str, float]:
        """WHDR per subset, ties counted as half an error."""
        return {k: (e - 0.5 * t) / n for k, (e, t, n) in self.counts.items() if n}

    def sizes(self) -> dict[str, int]:
        """Number of pairs per subset."""
        return {k: int(v[2]) for k, v in self.counts.items()}


def _same_size_chunks(dataset: Any, batch_size: int) -> Iterator[list[dict[str, Any]]]:
    """Items of a map-style dataset in order, grouped into batches of consecutive same-size images."""
    chunk: list[dict[str, Any]] = []
    for i in range(len(dataset)):
        item = dataset[i]
        if chunk and (len(chunk) == batch_size or chunk[0]["image"].shape != item["image"].shape):
            yield chunk
            chunk = []
        chunk.append(item)
    if chunk:
        yield chunk


@torch.no_grad()
def evaluate(model: nn.Module | Any, val: ValSet, size: tuple[int, int] | None, device: torch.device,
             batch_size: int = 8) -> dict[str, float]:
    """WHDR of ``model`` on ``val``: each image resized to ``size`` (``None``: as it is), the prediction resized
    back to the image.

    ``model`` maps ``float [B,3,h,w]`` in [0, 1] to ``[B,1,h,w]`` (larger = farther). Returns ``whdr`` and, when
    the set has edge flags, ``whdr_random`` and ``whdr_edge`` (fractions), plus ``pairs``.
    """
    was_training = getattr(model, "training", False)
    if isinstance(model, nn.Module):
        model.eval()
    tally, offset = _Tally(), 0
    for chunk in _same_size_chunks(val.dataset, batch_size):
        x = torch.stack([_resize_input(it["image"], size) for it in chunk]).to(device)
        pred = model(x).float().cpu()
        for k, item in enumerate(chunk):
            h, w = item["image"].shape[-2:]
            depth = F.interpolate(pred[k:k + 1], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
            pairs, ordinal = item["pairs"], item["ordinal"]
            n = len(pairs)
            everything = torch.ones(n, dtype=torch.bool)
            tally.add("whdr", depth, pairs, ordinal, everything)
            if val.edge is not None:
                edge = torch.from_numpy(val.edge[offset:offset + n])
                tally.add("whdr_random", depth, pairs, ordinal, ~edge)
                tally.add("whdr_edge", depth, pairs, ordinal, edge)
            offset += n
    if val.edge is not None and offset != len(val.edge):
        raise ValueError(f"{val.name}: {offset} pairs but {len(val.edge)} edge flags")
    if isinstance(model, nn.Module) and was_training:
        model.train()
    return {**tally.rates(), "pairs": tally.sizes().get("whdr", 0)}


# ----------------------------------------------------------------------------------------------- data


def build_dense(cfg: TrainConfig, transform: Any) -> Any:
    """The ``--dense`` source: converted shards (a folder with ``index.json``) or a ``DenseDepthDataset``."""
    if (Path(cfg.dense) / "index.json").is_file():
        return DynOccDataset(cfg.dense, transform=transform, shuffle=cfg.shuffle, seed=cfg.seed, keep_boundary=False)
    options = {"num_pairs": 0, **cfg.dense_options}  # dense batches are scored by ssi_loss on the depth
    return DenseDepthDataset(cfg.dense, transform=transform, seed=cfg.seed, **options)


def build_train_data(cfg: TrainConfig) -> tuple[Any, DynOccDataset]:
    """The training dataset (DynOcc, mixed with YouTube3D / DIW and, per batch, a dense source when given) and its
    DynOcc part."""
    transform = create_transform(train=True, size=cfg.size, scale=cfg.crop_scale)
    dynocc = DynOccDataset(cfg.shards, strategy=cfg.strategy, sampler_options=cfg.sampler_options or None,
                           transform=transform, shuffle=cfg.shuffle, seed=cfg.seed, keep_boundary=False)
    others = []
    if cfg.youtube3d:
        others.append(YouTube3DDataset(cfg.youtube3d, transform=transform))
    if cfg.diw:
        others.append(DIWDataset(cfg.diw, transform=transform))
    if cfg.dense and cfg.dense_weight > 0:
        dynocc.set_num_workers(cfg.workers)
        sparse = 1.0 - cfg.dense_weight
        share = cfg.mix_weight if others else 0.0
        weights = [sparse * (1 - share)] + [sparse * share / max(1, len(others))] * len(others) + [cfg.dense_weight]
        sources = [dynocc, *others, build_dense(cfg, transform)]
        length = max(len(dynocc), cfg.batch_size)
        return mix(sources, weights, stop="never", seed=cfg.seed, epoch_length=length, per_batch=True,
                   batch_size=cfg.batch_size, loss_weights=[1.0] * (len(sources) - 1) + [cfg.dense_loss_weight]), \
            dynocc
    if not others or cfg.mix_weight == 0.0:
        return dynocc, dynocc
    dynocc.set_num_workers(cfg.workers)
    weights = [1.0 - cfg.mix_weight] + [cfg.mix_weight / len(others)] * len(others)
    # An epoch is as many items as DynOcc alone would give; the smaller sources start again when they run out.
    length = max(len(dynocc), cfg.batch_size)
    return mix([dynocc, *others], weights, stop="never", seed=cfg.seed, epoch_length=length), dynocc


def dense_loss(pred: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
    """``ssi_loss`` of a log-depth prediction against the batch's dense targets, in the targets' space."""
    kinds = {m.get("depth_kind") for m in batch["meta"]} - {None}
    if len(kinds) != 1:
        raise ValueError(f"a dense batch needs one depth_kind, got {sorted(kinds)}")
    kind, depth, valid = kinds.pop(), batch["depth"], batch["valid_mask"]
    if kind in ("depth", "depth_scale"):  # log depth up to a shift (scale of depth): fit in log space
        valid = valid & (depth > 0)
        return ssi_loss(pred, torch.log(depth.clamp(min=1e-6)), valid)
    if kind == "depth_affine":
        return ssi_loss(torch.exp(pred), depth, valid)
    return ssi_loss(torch.exp(-pred), depth, valid)  # disparity kinds: inverse depth up to scale (and shift)


def batch_loss(pred: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
    """Ranking loss on the batch's pairs, plus ``ssi_loss`` where it has dense targets, times its loss weight."""
    loss = ranking_loss(pred, batch["pairs"], batch["ordinal"], batch["pair_mask"])
    if "valid_mask" in batch and bool(batch["valid_mask"].any()):
        loss = loss + dense_loss(pred, batch)
    if "loss_weight" in batch:  # per-batch mixing: one source, one weight
        loss = loss * batch["loss_weight"].to(loss.dtype).mean()
    return loss


def batches(loader: torch.utils.data.DataLoader, start_epoch: int,
            resumed: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
    """Endless ``(epoch, batch)`` stream: ``set_epoch`` before each pass (new shuffles and load-time pairs).

    ``resumed``: the loader's state was loaded, so its first pass is the rest of ``start_epoch`` (maybe nothing).
    """
    epoch = start_epoch
    while True:
        loader.dataset.set_epoch(epoch)
        empty = True
        for batch in loader:
            empty = False
            yield epoch, batch
        if empty and not resumed:
            raise RuntimeError("the training data yields no batch (fewer items than --batch-size?)")
        epoch, resumed = epoch + 1, False


# ------------------------------------------------------------------------------------------- training


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (``None``: full precision)."""
    if amp == "auto":
        return torch.float16 if device.type == "cuda" else None
    return {"off": None, "fp16": torch.float16, "bf16": torch.bfloat16}[amp]


def lr_factor(step: int, total: int, warmup: float) -> float:
    """Linear warm-up over ``warmup * total`` steps, then cosine decay to 0."""
    warm = max(1, int(warmup * total))
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file next to ``path``, then rename it over ``path`` (atomic)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only``: tensors and plain data only)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as err:
        raise SystemExit(f"{path}: cannot read checkpoint ({err})") from None


class _Logger:
    """Console + ``log.jsonl`` + TensorBoard (when installed)."""

    def __init__(self, out: Path, tensorboard: bool = True) -> None:
        """Open the JSONL log (appending, for resumed runs) and a SummaryWriter when possible."""
        self.jsonl = open(out / "log.jsonl", "a", encoding="utf-8")
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                logger.info("tensorboard not installed: logging to the console and log.jsonl only")
            else:
                self.tb = SummaryWriter(str(out / "tb"))

    def log(self, step: int, values: dict[str, float], kind: str) -> None:
        """Record ``values`` at ``step``."""
        self.jsonl.write(json.dumps({"kind": kind, "step": step, **values}) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{kind}/{k}", v, step)

    def close(self) -> None:
        """Flush and close."""
        self.jsonl.close()
        if self.tb is not None:
            self.tb.close()


def _validate(model: nn.Module, val_sets: list[ValSet], cfg: TrainConfig, device: torch.device) -> dict[str, float]:
    """Evaluate on every validation set; keys ``<set>/<metric>``."""
    out = {}
    for val in val_sets:
        for k, v in evaluate(model, val, cfg.eval_size, device).items():
            out[f"{val.name}/{k}"] = v
    return out


def _headline(metrics: dict[str, float]) -> float | None:
    """The WHDR that selects ``best.pt``: the first set's overall WHDR."""
    return next((v for k, v in metrics.items() if k.endswith("/whdr")), None)


def train(cfg: TrainConfig, val_sets: list[ValSet] | None = None) -> TrainResult:
    """Run (or resume) one training run as configured; returns the validation history and checkpoints."""
    threads = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        return _train(cfg, val_sets)
    finally:
        torch.set_num_threads(threads)


def _train(cfg: TrainConfig, val_sets: list[ValSet] | None) -> TrainResult:
    """:func:`train` with the thread count set."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    last, best_path = out / "last.pt", out / "best.pt"
    device = resolve_device(cfg.device)
    dtype = amp_dtype(cfg.amp, device)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    model = build_model(cfg.model).to(device)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg.steps, cfg.warmup))
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    step, epoch, history, best = 0, 0, [], math.inf
    if cfg.resume:
        if not last.is_file():
            raise SystemExit(f"{last}: no checkpoint to resume from")
        state = load_checkpoint(last)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        # with the loader's state: the same epoch, from where it stopped; without (older checkpoints): the next
        step, epoch, history = state["step"], state["epoch"] + ("loader" not in state), state["history"]
        best = min((h["headline"] for h in history if h.get("headline") is not None), default=math.inf)
        logger.info("resumed %s at step %d (epoch %d)", last, step, epoch)
    val_sets = load_val_sets(cfg) if val_sets is None else val_sets
    dataset, dynocc = build_train_data(cfg)
    loader = create_loader(dataset, batch_size=cfg.batch_size, num_workers=cfg.workers, drop_last=True,
                           seed=cfg.seed, pin_memory=device.type == "cuda", persistent_workers=cfg.workers > 0,
                           stateful=True)
    resumed = cfg.resume and "loader" in state
    if resumed:
        loader.load_state_dict(state["loader"])
    logger.info("model %s (%.2fM parameters) on %s, amp %s; %d DynOcc samples, strategy %s",
                cfg.model.arch, sum(p.numel() for p in model.parameters()) / 1e6, device,
                dtype or "off", len(dynocc), cfg.strategy)
    if cfg.dense:
        logger.info("dense source %s: %.0f %% of the batches, loss weight %g", cfg.dense, 100 * cfg.dense_weight,
                    cfg.dense_loss_weight)
    tb = _Logger(out)
    t0, seen_pairs, running = time.perf_counter(), 0, []

    def checkpoint(path: Path) -> None:
        save_checkpoint(path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                               "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                               "step": step, "epoch": epoch, "history": history, "config": cfg.to_dict(),
                               "loader": loader.state_dict()})

    def validate() -> None:
        nonlocal best
        if not val_sets:
            return
        metrics = _validate(model, val_sets, cfg, device)
        headline = _headline(metrics)
        history.append({"step": step, "headline": headline, **metrics})
        tb.log(step, metrics, "val")
        logger.info("step %6d  val %s", step, "  ".join(f"{k} {100 * v:.1f}%" for k, v in metrics.items()
                                                          if not k.endswith("/pairs")))
        if headline is not None and headline < best:
            best = headline
            checkpoint(best_path)

    model.train()
    if step == 0 and not cfg.resume:
        validate()
    stream = batches(loader, epoch, resumed)
    try:
        while step < cfg.steps:
            epoch, batch = next(stream)
            batch = to_device(batch, device, non_blocking=True)
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                pred = model(batch["image"])
            loss = batch_loss(pred.float(), batch)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            running.append(float(loss.detach()))
            seen_pairs += int(batch["pair_mask"].sum())
            if step % cfg.log_every == 0 or step == cfg.steps:
                values = {"loss": sum(running) / len(running), "lr": scheduler.get_last_lr()[0],
                          "pairs_per_image": seen_pairs / (len(running) * cfg.batch_size),
                          "seconds": time.perf_counter() - t0}
                tb.log(step, values, "train")
                logger.info("step %6d  epoch %3d  loss %.4f  lr %.2e  pairs/img %.0f  %.0f s", step, epoch,
                            values["loss"], values["lr"], values["pairs_per_image"], values["seconds"])
                running, seen_pairs = [], 0
            if step % cfg.val_every == 0 or step == cfg.steps:
                validate()
            if step % cfg.ckpt_every == 0 or step == cfg.steps:
                checkpoint(last)
    finally:
        tb.close()
    return TrainResult(step, history, last, best_path if best_path.is_file() else None, time.perf_counter() - t0,
                       model.eval())


# ------------------------------------------------------------------------------------------- quick data


def quick_data(root: Path, seed: int = 0, scenes: int = 40, val_scenes: int = 8, yt3d_scenes: int = 12,
               scene_config: Any = None, shard_size: int = 8, dense_frames: tuple[int, ...] = (3, 9, 15, 21)
               ) -> dict[str, str]:
    """Make (or reuse) synthetic training shards, a YouTube3D-format training fixture and a validation set.

    Three disjoint blocks of scene seeds (``examples/synthetic_gt.py``): ``scenes`` clips -> DynOcc shards (by
    ``dynocc_data.generation``, default settings), ``yt3d_scenes`` scenes -> YouTube3D-format ground-truth pairs (a
    stand-in for the real release; none when 0), ``val_scenes`` scenes -> the held-out ground-truth pairs.
    ``scene_config``: a ``SceneConfig`` (default 240x320, 24 frames). Also the training scenes' ``dense_frames`` with
    their ground-truth depth as a dense-depth source (``write_dense_set``: JPEG + 16-bit PNG in mm, a CSV), for
    ``--dense synthetic``. Returns the paths made.
    """
    from synthetic_gt import (
        VAL_SEED_OFFSET,
        YT3D_SEED_OFFSET,
        GTPairConfig,
        SceneSet,
        make_training_shards,
        write_dense_set,
        write_gt_pair_set,
    )

    from dynocc_data.generation import GenerateConfig
    from dynocc_data.tools.synthetic import SceneConfig

    scene_config = scene_config or SceneConfig(height=240, width=320, num_frames=24)
    shards = root / "train" / "shards"
    if not (shards / "index.json").is_file():
        make_training_shards(root / "train", SceneSet(scenes, seed, scene_config), GenerateConfig(seed=seed),
                             shard_size=shard_size)
    paths = {"shards": str(shards), "videos": str(root / "train" / "videos")}
    dense_csv = root / "dense" / "dense.csv"
    if not dense_csv.is_file():
        write_dense_set(root / "dense", SceneSet(scenes, seed, scene_config), frames=dense_frames)
    paths["dense"] = str(dense_csv)
    sets = [("val", val_scenes, VAL_SEED_OFFSET, GTPairConfig())]
    if yt3d_scenes:
        sets.append(("youtube3d", yt3d_scenes, YT3D_SEED_OFFSET,
                     GTPairConfig(random_pairs=100, edge_pairs=300, frames=(4, 10, 16))))
    for name, count, offset, pairs in sets:
        csv = root / name / "gt_pairs.csv"
        if not csv.is_file():
            write_gt_pair_set(root / name, SceneSet(count, seed + offset, scene_config), pairs)
        paths[name] = str(csv)
    return paths


# ------------------------------------------------------------------------------------------------- CLI


# --quick: native-resolution 96x128 crops of the 240x320 synthetic frames (about 16 % of the area each), evaluated
# on whole frames, so that pairs 2 px from an edge are resolved without paying for full frames in training.
QUICK = {"arch": "mobilenet_v3_small", "size": (96, 128), "crop_scale": (0.12, 0.25), "batch_size": 16,
         "steps": 400, "val_every": 50, "log_every": 25, "ckpt_every": 100, "workers": 1, "threads": 1, "lr": 2e-3}
# --smoke: seconds, for tests (tiny frames need fast objects for the flow to see occlusions; figures meaningless).
SMOKE = {"arch": "mobilenet_v3_small", "width": 16, "size": (48, 64), "crop_scale": (0.2, 0.3), "batch_size": 4,
         "steps": 4, "val_every": 2, "log_every": 1, "ckpt_every": 2, "workers": 0, "threads": 1, "shuffle": 0}
SMOKE_SCENES = {"scenes": 4, "val_scenes": 1, "yt3d_scenes": 1, "shard_size": 2,
                "scene": {"height": 96, "width": 128, "num_frames": 16, "speed": (10.0, 20.0), "num_objects": (3, 4),
                          "static_camera_prob": 0.0}}


def parse_args(argv: Sequence[str] | None) -> tuple[TrainConfig, argparse.Namespace]:
    """Command line -> :class:`TrainConfig` (``--quick`` fills in small CPU defaults and its own data)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", nargs="*", default=[], help="generate output folder(s) or shard URLs")
    p.add_argument("--out", required=True, help="run folder: checkpoints, log.jsonl, tb/")
    p.add_argument("--strategy", default="stored", help="pair strategy (stored, boundary, multiscale, band, uniform)")
    p.add_argument("--sampler-options", default="{}", help="JSON object of strategy options")
    p.add_argument("--youtube3d", default=None, help="YouTube3D CSV to mix in")
    p.add_argument("--diw", default=None, help="DIW CSV to mix in")
    p.add_argument("--mix-weight", type=float, default=0.3, help="share of items from --youtube3d/--diw")
    p.add_argument("--dense", default=None, help="dense-depth source to mix in per batch: a CSV of image,depth "
                   "files, a ReDWeb folder, converted shards, or 'synthetic' (--quick: ground-truth depth)")
    p.add_argument("--dense-weight", type=float, default=0.5, help="share of batches from --dense (1: dense alone)")
    p.add_argument("--dense-loss-weight", type=float, default=1.0, help="loss weight of the dense batches")
    p.add_argument("--dense-options", default="{}", help="JSON object of DenseDepthDataset options")
    p.add_argument("--val", nargs="*", default=[], help="validation CSV(s) of ground-truth pairs (YouTube3D format)")
    p.add_argument("--val-diw", nargs="*", default=[], help="DIW CSV(s) for validation")
    p.add_argument("--arch", default=None, choices=sorted(ARCHS))
    p.add_argument("--width", type=int, default=None, help="decoder channels (default 64)")
    p.add_argument("--pretrained", action="store_true", help="ImageNet encoder (only if cached; never downloads)")
    p.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"), help="training crop size")
    p.add_argument("--crop-scale", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="area fraction of the frame a training crop covers (default 0.5 1.0)")
    p.add_argument("--eval-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="validation input size (default: each image at its own size)")
    for name, kind in (("batch-size", int), ("steps", int), ("lr", float), ("weight-decay", float),
                       ("workers", int), ("seed", int), ("val-every", int), ("log-every", int),
                       ("ckpt-every", int), ("shuffle", int), ("threads", int)):
        p.add_argument(f"--{name}", type=kind, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", default="auto", choices=["auto", "off", "fp16", "bf16"])
    p.add_argument("--resume", action="store_true", help="go on from <out>/last.pt (same options)")
    p.add_argument("--quick", action="store_true", help="small CPU run; makes synthetic data when no --shards")
    p.add_argument("--smoke", action="store_true", help="tiny end-to-end check for tests (implies --quick data)")
    p.add_argument("--data", default=None, help="--quick: folder for the synthetic data (default <out>/data)")
    args = p.parse_args(argv)
    values: dict[str, Any] = dict(SMOKE) if args.smoke else dict(QUICK) if args.quick else {}
    width = values.pop("width", 64)
    for name in ("size", "crop_scale", "eval_size", "batch_size", "steps", "lr", "weight_decay", "workers", "seed",
                 "val_every", "log_every", "ckpt_every", "shuffle", "threads", "arch"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    arch = values.pop("arch", "resnet18")
    try:
        sampler_options = json.loads(args.sampler_options)
    except ValueError as err:
        p.error(f"--sampler-options is not JSON: {err}")
    try:
        dense_options = json.loads(args.dense_options)
    except ValueError as err:
        p.error(f"--dense-options is not JSON: {err}")
    if args.dense == "synthetic" and not (args.quick or args.smoke):
        p.error("--dense synthetic needs --quick (or --smoke), which makes the synthetic data")
    cfg = TrainConfig(out=args.out, shards=list(args.shards), strategy=args.strategy,
                      sampler_options=sampler_options, youtube3d=args.youtube3d, diw=args.diw,
                      dense=args.dense, dense_weight=args.dense_weight, dense_loss_weight=args.dense_loss_weight,
                      dense_options=dense_options,
                      mix_weight=args.mix_weight, val=list(args.val), val_diw=list(args.val_diw),
                      model=ModelConfig(arch=arch, width=args.width or width, pretrained=args.pretrained),
                      device=args.device, amp=args.amp, resume=args.resume, **values)
    return cfg, args


def main(argv: Sequence[str] | None = None) -> TrainResult:
    """Command-line entry point (``argv`` for tests)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("dynocc_data").setLevel(logging.WARNING)  # per-epoch read statistics are noise here
    cfg, args = parse_args(argv)
    if (args.quick or args.smoke) and not cfg.shards:
        root = Path(args.data) if args.data else Path(cfg.out) / "data"
        if args.smoke:
            from dynocc_data.tools.synthetic import SceneConfig

            opts = dict(SMOKE_SCENES)
            data = quick_data(root, seed=cfg.seed, scene_config=SceneConfig(**opts.pop("scene")), **opts)
        else:
            data = quick_data(root, seed=cfg.seed)
        cfg.shards = [data["shards"]]
        if cfg.dense == "synthetic":  # the training scenes' ground-truth depth; no YouTube3D fixture in the mix
            cfg.dense = data["dense"]
            cfg.dense_options = {"depth_scale": 0.001, **cfg.dense_options}
        else:
            cfg.youtube3d = cfg.youtube3d or data["youtube3d"]
        cfg.val = cfg.val or [data["val"]]
    if not cfg.shards:
        raise SystemExit("--shards is required (or --quick, which makes synthetic data)")
    t0 = time.perf_counter()
    result = train(cfg)
    print(f"done: step {result.step} in {time.perf_counter() - t0:.0f} s; last {result.last}, best {result.best}")
    for h in result.history:
        print(f"  step {h['step']:6d}  " + "  ".join(f"{k} {100 * v:.1f}%" for k, v in h.items()
                                                    if "whdr" in k and v is not None))
    return result


if __name__ == "__main__":
    main()
