"""Pair-sampling strategies: dense boundary annotation -> ordinal point pairs.

Every strategy turns the ``boundary`` annotation of one sample (docs/FORMAT.md, ``boundary.npy``: points
``(y, x)`` with a unit normal ``(ny, nx)`` pointing from the back/farther side to the front/closer side) into
``pairs`` ``int64 [N, 4]`` ``(yA, xA, yB, xB)`` and ``ordinal`` ``int64 [N]`` (``+1``: A farther, ``-1``: A closer).
The generator stores the pairs of one strategy; the dataset loaders re-sample at load time with any strategy,
deterministically per ``(seed, epoch, key)`` through :func:`sample_generator`.

==============  ========================================================================================
strategy        what it draws
==============  ========================================================================================
``stored``      the pairs stored in the shard at generation time, unchanged (optionally a random subset).
``boundary``    at every boundary point, one point on each side at a fixed offset ``d`` along the normal.
``multiscale``  at every boundary point, one point on each side at an offset drawn per side from a range.
``band``        at every boundary point, one point anywhere in a band on each side: normal offset drawn
                from a range plus a small tangential jitter (an area sample rather than a line sample).
``uniform``     boundary points evenly spaced ``spacing`` px apart along each segment's arc length, then
                one point on each side at a fixed offset ``d``.
==============  ========================================================================================

Common options (every config): ``min_confidence`` (boundary points below it are dropped first),
``per_segment_cap`` (at most K of the valid pairs per segment, chosen at random, so long edges do not
dominate), ``max_pairs`` (then a random subset when more) and ``balance`` (swap A and B with probability 0.5
and flip the ordinal).  Pairs come out in boundary order.  Everything runs on CPU tensors with a CPU generator.

Geometry: with ``t = (-nx, ny)`` the tangent, the front (closer) point is ``p + u*n + v*t`` and the back
(farther) point ``p - u'*n + v'*t``; both are rounded to integer pixel indices and a pair is dropped when a
point falls outside the image or both points land on the same pixel.  Before ``balance``, A is the front
point and B the back one, so the ordinal is ``-1``.  All randomness comes from the ``torch.Generator``
passed in; everything is vectorised (no Python loop over points or segments).

Longer than 500 lines because the built-in strategies share the boundary-array bookkeeping and the batched
``sample_many`` path that keeps their results identical to one-by-one draws; each strategy is one small class.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, Union, runtime_checkable

import numpy as np
import torch

from .format.dense import farther_sign

logger = logging.getLogger(__name__)

__all__ = [
    "BandConfig",
    "BandSampler",
    "BoundaryConfig",
    "BoundarySampler",
    "DensePairSampler",
    "MultiscaleConfig",
    "MultiscaleSampler",
    "PairSampler",
    "SamplerConfig",
    "StoredConfig",
    "StoredSampler",
    "UniformConfig",
    "UniformSampler",
    "available_strategies",
    "create_sampler",
    "register_strategy",
    "sample_dense_pairs",
    "sample_generator",
]

# A dict of 1-D tensors (docs/FORMAT.md); a numpy structured array as read from boundary.npy is accepted too.
Boundary = Union[Mapping[str, Union[torch.Tensor, np.ndarray]], np.ndarray]
PairsAndOrdinal = tuple[torch.Tensor, torch.Tensor]

_REQUIRED_FIELDS = ("y", "x", "ny", "nx", "segment")


@runtime_checkable
class PairSampler(Protocol):
    """Anything that turns one sample's boundary annotation into ``(pairs int64 [N,4], ordinal int64 [N])``."""

    def __call__(
        self,
        boundary: Boundary,
        image_size: tuple[int, int],
        generator: torch.Generator,
        stored: PairsAndOrdinal | None = None,
    ) -> PairsAndOrdinal:
        """Draw the pairs of one sample.

        Args:
            boundary: the sample's boundary annotation: a dict of 1-D tensors or ``boundary.npy``'s structured
                array.
            image_size: ``(H, W)`` of the image the pairs index.
            generator: the only source of randomness (see :func:`sample_generator`).
            stored: the sample's stored ``(pairs, ordinal)``, when decoded.

        Returns:
            ``(pairs int64 [N,4], ordinal int64 [N])``.
        """
        ...


# --------------------------------------------------------------------------------------------- configs


def _require(ok: bool, message: str) -> None:
    """Raise a one-line ``ValueError`` when a config value is invalid."""
    if not ok:
        raise ValueError(message)


def _as_range(value: Any, name: str) -> tuple[float, float]:
    """Validate a ``(low, high)`` range of positive distances (JSON lists are accepted)."""
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (low, high) of numbers, got {value!r}") from None
    _require(0 < low <= high, f"{name} must satisfy 0 < low <= high, got {value!r}")
    return low, high


@dataclass(frozen=True)
class SamplerConfig:
    """Options shared by every strategy; subclasses add their own and name the strategy (class attribute ``name``).

    Args:
        max_pairs: a random subset of at most this many pairs; ``None`` for all (>= 0).
        per_segment_cap: at most this many pairs per boundary segment, chosen at random; ``None`` for no cap (>= 0).
        min_confidence: boundary points below this confidence are ignored (in ``[0, 1]``).
        balance: swap A/B with probability 0.5 so both labels are equally frequent.

    Raises:
        ValueError: when an option is out of its range.
    """

    name: ClassVar[str] = ""
    max_pairs: int | None = None
    per_segment_cap: int | None = None
    min_confidence: float = 0.0
    balance: bool = True

    def __post_init__(self) -> None:
        """Check the shared options."""
        for field in ("max_pairs", "per_segment_cap"):
            value = getattr(self, field)
            _require(
                value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0),
                f"{field} must be None or an int >= 0, got {value!r}",
            )
        _require(
            isinstance(self.min_confidence, (int, float)) and 0.0 <= self.min_confidence <= 1.0,
            f"min_confidence must be in [0, 1], got {self.min_confidence!r}",
        )
        _require(isinstance(self.balance, bool), f"balance must be a bool, got {self.balance!r}")

    def build(self) -> PairSampler:
        """Build the sampler this config describes.

        Returns:
            The sampler.

        Raises:
            NotImplementedError: on the base class, which names no strategy.
        """
        raise NotImplementedError(f"{type(self).__name__} does not name a sampler")

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready description, accepted back by :func:`create_sampler`.

        Returns:
            ``{"strategy": name, **options}``.
        """
        return {"strategy": self.name, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class StoredConfig(SamplerConfig):
    """Generation-time pairs passed through; only ``max_pairs`` and ``balance`` apply (off by default).

    Args:
        balance: off by default ("unchanged"): the generator already balanced them.

    Raises:
        ValueError: when ``per_segment_cap`` or ``min_confidence`` is set (stored pairs do not link to boundary
            points), and as :class:`SamplerConfig`.
    """

    name: ClassVar[str] = "stored"
    balance: bool = False

    def __post_init__(self) -> None:
        """Reject options that need the boundary points, which stored pairs do not link to."""
        super().__post_init__()
        _require(self.per_segment_cap is None, "per_segment_cap does not apply to the 'stored' strategy")
        _require(self.min_confidence == 0.0, "min_confidence does not apply to the 'stored' strategy")

    def build(self) -> StoredSampler:
        """Build the sampler.

        Returns:
            A :class:`StoredSampler` of this config.
        """
        return StoredSampler(self)


@dataclass(frozen=True)
class BoundaryConfig(SamplerConfig):
    """One point each side at a fixed ``offset`` px along the normal, at every boundary point.

    Args:
        offset: the distance from the boundary point, in pixels (> 0); plus the options of :class:`SamplerConfig`.

    Raises:
        ValueError: when an option is out of its range.
    """

    name: ClassVar[str] = "boundary"
    offset: float = 4.0

    def __post_init__(self) -> None:
        """Check the offset."""
        super().__post_init__()
        _require(float(self.offset) > 0, f"offset must be > 0, got {self.offset!r}")

    def build(self) -> BoundarySampler:
        """Build the sampler.

        Returns:
            A :class:`BoundarySampler` of this config.
        """
        return BoundarySampler(self)


@dataclass(frozen=True)
class MultiscaleConfig(SamplerConfig):
    """Like ``boundary`` but each side's offset drawn uniformly from ``offset_range`` px, independently.

    Args:
        offset_range: ``(low, high)`` with ``0 < low <= high``, in pixels; plus the options of
            :class:`SamplerConfig`.

    Raises:
        ValueError: when an option is out of its range.
    """

    name: ClassVar[str] = "multiscale"
    offset_range: tuple[float, float] = (2.0, 12.0)

    def __post_init__(self) -> None:
        """Check the range."""
        super().__post_init__()
        object.__setattr__(self, "offset_range", _as_range(self.offset_range, "offset_range"))

    def build(self) -> MultiscaleSampler:
        """Build the sampler.

        Returns:
            A :class:`MultiscaleSampler` of this config.
        """
        return MultiscaleSampler(self)


@dataclass(frozen=True)
class BandConfig(SamplerConfig):
    """Points in a band each side: normal offset in ``depth_range`` px plus tangential jitter in ``±jitter`` px.

    Args:
        depth_range: ``(low, high)`` normal offsets with ``0 < low <= high``, in pixels.
        jitter: the largest tangential offset, in pixels (>= 0); plus the options of :class:`SamplerConfig`.

    Raises:
        ValueError: when an option is out of its range.
    """

    name: ClassVar[str] = "band"
    depth_range: tuple[float, float] = (2.0, 12.0)
    jitter: float = 2.0

    def __post_init__(self) -> None:
        """Check the band."""
        super().__post_init__()
        object.__setattr__(self, "depth_range", _as_range(self.depth_range, "depth_range"))
        _require(float(self.jitter) >= 0, f"jitter must be >= 0, got {self.jitter!r}")

    def build(self) -> BandSampler:
        """Build the sampler.

        Returns:
            A :class:`BandSampler` of this config.
        """
        return BandSampler(self)


@dataclass(frozen=True)
class UniformConfig(SamplerConfig):
    """Boundary points about ``spacing`` px apart along each segment, then one point each side at ``offset``.

    Args:
        spacing: the arc length between sampled boundary points, in pixels (>= 1.5).
        offset: the distance from the boundary point, in pixels (> 0); plus the options of :class:`SamplerConfig`.

    Raises:
        ValueError: when an option is out of its range.
    """

    name: ClassVar[str] = "uniform"
    spacing: float = 8.0
    offset: float = 4.0

    def __post_init__(self) -> None:
        """Check spacing and offset."""
        super().__post_init__()
        # Below ~1.5 px a pixel's arc (up to sqrt(2)) could hold two sample positions; it would just be per-pixel.
        _require(float(self.spacing) >= 1.5, f"spacing must be >= 1.5 px, got {self.spacing!r}")
        _require(float(self.offset) > 0, f"offset must be > 0, got {self.offset!r}")

    def build(self) -> UniformSampler:
        """Build the sampler.

        Returns:
            A :class:`UniformSampler` of this config.
        """
        return UniformSampler(self)


# ------------------------------------------------------------------------------------------ array helpers
#
# A sample has a few hundred to a few thousand boundary points: at that size the cost is per operation, not per
# element, and a numpy operation costs a fraction of a torch one.  The samplers therefore compute with numpy
# arrays (zero-copy views of the CPU tensors they are given) and draw every random number from the torch
# generator, a block at a time, so the result depends on (seed, epoch, key) alone as before.


def _as_array(value: Any, name: str) -> np.ndarray:
    """One boundary field as a numpy array (a zero-copy view of a CPU tensor)."""
    if isinstance(value, torch.Tensor):
        try:
            return value.numpy()
        except (RuntimeError, TypeError):  # on a GPU, or requires grad
            return value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"boundary field {name} is not an array: {err}") from None


def _boundary_arrays(boundary: Boundary, need_confidence: bool) -> dict[str, np.ndarray]:
    """Validate the annotation and return its fields as 1-D arrays (float32 coordinates, int64 segment)."""
    if isinstance(boundary, np.ndarray) and boundary.dtype.names:  # boundary.npy as loaded
        boundary = {name: boundary[name] for name in boundary.dtype.names}
    _require(isinstance(boundary, Mapping), f"boundary must be a mapping of tensors, got {type(boundary).__name__}")
    need = _REQUIRED_FIELDS + (("confidence",) if need_confidence else ())
    missing = [name for name in need if name not in boundary]
    _require(not missing, f"boundary annotation lacks field(s) {', '.join(missing)} (needs {', '.join(need)})")
    out = {name: _as_array(boundary[name], name) for name in need}
    size = out["y"].shape
    bad = [name for name, a in out.items() if a.ndim != 1 or a.shape != size]
    _require(not bad, f"boundary fields must be 1-D of equal length {tuple(size)}; bad: {', '.join(bad)}")
    for name in need:
        out[name] = out[name].astype(np.int64 if name == "segment" else np.float32, copy=False)
    return out


def _check_image_size(image_size: tuple[int, int]) -> tuple[int, int]:
    """Return ``(H, W)`` as ints, or raise when it is not two positive integers."""
    try:
        height, width = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise ValueError(f"image_size must be (H, W), got {image_size!r}") from None
    _require(height > 0 and width > 0, f"image_size must be positive, got {image_size!r}")
    return height, width


def _rand(shape: tuple[int, ...], generator: torch.Generator, dtype: torch.dtype = torch.float32) -> np.ndarray:
    """Uniform ``[0, 1)`` draws from the torch ``generator`` as a numpy array."""
    return torch.rand(shape, generator=generator, dtype=dtype).numpy()


def _randperm(n: int, generator: torch.Generator) -> np.ndarray:
    """A random permutation of ``range(n)`` from the torch ``generator``."""
    return torch.randperm(n, generator=generator).numpy()


def _mask_of(n: int, keep: np.ndarray) -> np.ndarray:
    """Boolean mask of length ``n``, True at ``keep`` (selections stay in input order without a sort)."""
    mask = np.zeros(n, dtype=bool)
    mask[keep] = True
    return mask


def _random_subset(n: int, k: int | None, generator: torch.Generator) -> np.ndarray | None:
    """Mask keeping a random ``k``-subset of ``range(n)``, or None when nothing has to go."""
    if k is None or n <= k:
        return None
    return _mask_of(n, _randperm(n, generator)[:k])


def _cap_per_segment(segment: np.ndarray, cap: int | None, generator: torch.Generator) -> np.ndarray | None:
    """Mask keeping at most ``cap`` random entries per segment id, or None when nothing has to go."""
    n = segment.size
    if cap is None or n <= cap:
        return None
    # Shuffle, then a stable sort by segment: rows grouped by segment, in random order within each group
    # (cheaper than sorting random keys); keep each group's first `cap`.
    perm = _randperm(n, generator)
    order = perm[np.argsort(segment[perm], kind="stable")]
    grouped = segment[order]
    position = np.arange(n)
    is_start = np.ones(n, dtype=bool)
    is_start[1:] = grouped[1:] != grouped[:-1]
    group_start = np.maximum.accumulate(np.where(is_start, position, 0))
    return _mask_of(n, order[position - group_start < cap])


def _arc_length_thin(
    y: np.ndarray,
    x: np.ndarray,
    ny: np.ndarray,
    nx: np.ndarray,
    segment: np.ndarray,
    spacing: float,
    generator: torch.Generator,
) -> np.ndarray:
    """Indices of points ``spacing`` px apart along each segment, by systematic arc-length sampling.

    A point of a thinned 8-connected curve stands for ``1 / max(|ny|, |nx|)`` px of arc (1 on axis-aligned runs,
    sqrt(2) on diagonals).  Points are ordered along their segment's principal axis, their arc intervals laid
    end to end, and the point whose interval holds a position ``phase + k * spacing`` (random phase per
    segment) is kept.  Spacing is exact on straight segments of any direction (and even wherever a segment is
    monotone along its principal axis); on any shape the count is ``length / spacing`` in expectation (a
    segment shorter than ``spacing`` is kept with probability ``length / spacing``).  Inputs must be finite.
    """
    if segment.size == 0:
        return np.empty(0, dtype=np.int64)
    low, high = int(segment.min()), int(segment.max())
    if high - low < 4 * segment.size + 64:  # usual labels 0..S-1: use them as they are, unused ids cost nothing
        seg, num_segments = segment - low, high - low + 1
    else:
        seg_ids, seg = np.unique(segment, return_inverse=True)
        num_segments = seg_ids.size
    y, x = y.astype(np.float64), x.astype(np.float64)

    def per_segment(weights: np.ndarray) -> np.ndarray:
        return np.bincount(seg, weights=weights, minlength=num_segments)

    # Principal axis of each segment from its second moments; the coordinate along it orders the points.
    count, sum_y, sum_x = np.bincount(seg, minlength=num_segments).astype(np.float64), per_segment(y), per_segment(x)
    count = np.maximum(count, 1.0)  # unused ids: no point reads their (meaningless) axis
    var_y = per_segment(y * y) - sum_y * sum_y / count
    var_x = per_segment(x * x) - sum_x * sum_x / count
    cov_yx = per_segment(y * x) - sum_y * sum_x / count
    angle = 0.5 * np.arctan2(2 * cov_yx, var_y - var_x)
    along = y * np.cos(angle)[seg] + x * np.sin(angle)[seg]
    # One sort on (segment, position along it): the stride exceeds any spread of `along`.
    stride = 2.0 * float(np.abs(along).max()) + 1.0
    order = np.argsort(seg * stride + along, kind="stable")
    seg_sorted = seg[order]
    arc = np.clip(1.0 / np.maximum(np.abs(ny), np.abs(nx)).astype(np.float64), 1.0, math.sqrt(2.0))[order]
    end = np.cumsum(arc)  # running arc length over all segments, end of each point's interval
    seg_length = np.bincount(seg_sorted, weights=arc, minlength=num_segments)
    phase = _rand((num_segments,), generator, torch.float64) * spacing
    end = end + (phase - (np.cumsum(seg_length) - seg_length))[seg_sorted]  # per segment, + phase
    hit = np.floor(end / spacing) > np.floor((end - arc) / spacing)
    return order[hit]


def _swaps(n: int, balance: bool, generator: torch.Generator) -> np.ndarray | None:
    """Which of ``n`` pairs to swap (A with B) for ``balance``: each with probability 0.5 (None: no balancing)."""
    return _rand((n,), generator) < 0.5 if balance and n else None


def _swapped(ends: np.ndarray, ordinal: np.ndarray, swap: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """``ends`` ``[4,N]`` rows (yA, xA, yB, xB) and ``ordinal [N]``, A and B swapped (ordinal negated) at ``swap``."""
    if swap is None:
        return ends, ordinal
    return np.where(swap, ends[_SWAP_ENDS], ends), np.where(swap, -ordinal, ordinal)


def _tensors(ends: np.ndarray, ordinal: np.ndarray) -> PairsAndOrdinal:
    """``[4,N]`` rows (yA, xA, yB, xB) -> int64 ``pairs [N,4]`` and ``ordinal [N]`` tensors (own memory)."""
    return (torch.from_numpy(np.ascontiguousarray(ends.T, dtype=np.int64)),
            torch.from_numpy(np.array(ordinal, dtype=np.int64)))


_SWAP_ENDS = np.array([2, 3, 0, 1])  # rows (yA, xA, yB, xB) -> (yB, xB, yA, xA)


def _joined(arrays: list[np.ndarray], axis: int = 0) -> np.ndarray:
    """``np.concatenate(arrays, axis)``, or the one array itself (no copy for a single sample)."""
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=axis)


# ---------------------------------------------------------------------------------------------- samplers


class StoredSampler:
    """Returns the generation-time pairs (as int64), optionally a random ``max_pairs`` subset and balanced.

    Args:
        config: the options; default :class:`StoredConfig()`.
    """

    def __init__(self, config: StoredConfig | None = None) -> None:
        """Keep the config."""
        self.config = config or StoredConfig()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"

    def __call__(
        self,
        boundary: Boundary,
        image_size: tuple[int, int],
        generator: torch.Generator,
        stored: PairsAndOrdinal | None = None,
    ) -> PairsAndOrdinal:
        """Pass ``stored`` through.

        Args:
            boundary: ignored.
            image_size: ignored.
            generator: draws the subset and the swaps.
            stored: the sample's stored ``(pairs [N,4], ordinal [N])``.

        Returns:
            ``(pairs int64 [N,4], ordinal int64 [N])``.

        Raises:
            ValueError: when ``stored`` is missing or malformed.
        """
        _require(stored is not None, "the 'stored' strategy needs the stored pairs (stored=(pairs, ordinal))")
        pairs, ordinal = (torch.as_tensor(t).to(device="cpu", dtype=torch.int64) for t in stored)
        _require(
            pairs.dim() == 2 and pairs.shape[1] == 4 and ordinal.shape == pairs.shape[:1],
            f"stored pairs must be [N,4] with ordinal [N], got {tuple(pairs.shape)} and {tuple(ordinal.shape)}",
        )
        keep = _random_subset(ordinal.numel(), self.config.max_pairs, generator)
        if keep is not None:
            index = torch.from_numpy(np.flatnonzero(keep))
            pairs, ordinal = pairs.index_select(0, index), ordinal.index_select(0, index)
        if not self.config.balance:
            return pairs, ordinal
        return _tensors(*_swapped(pairs.numpy().T, ordinal.numpy(), _swaps(ordinal.numel(), True, generator)))


_SIDES = np.array([[1.0], [-1.0]], dtype=np.float32)  # front point: +offset along the normal, back point: -offset


class _SideSampler:
    """Shared pipeline: usable points -> front/back points -> pixels -> validity -> caps -> balance."""

    config: SamplerConfig
    # Draws from the boundary alone (``stored`` is never read) and takes boundary.npy's structured array as it is:
    # a loader may then skip decoding the stored pairs and the per-field tensors.
    takes_boundary_array: ClassVar[bool] = True

    def __init__(self, config: SamplerConfig) -> None:
        """Keep the config."""
        self.config = config

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"

    def _anchors(
        self, fields: dict[str, np.ndarray], usable: np.ndarray | None, generator: torch.Generator
    ) -> np.ndarray | None:
        """Mask of the boundary points to sample at, given the confident ones (None: all points)."""
        return usable

    def _offsets(self, n: int, generator: torch.Generator) -> tuple[np.ndarray | float, np.ndarray | None]:
        """Normal offsets ``u`` and tangential offsets ``v`` of ``n`` points.

        ``u`` is ``[2,n]`` (front, back) or one float for both; ``v`` is ``[2,n]`` or None.
        """
        raise NotImplementedError

    def __call__(
        self,
        boundary: Boundary,
        image_size: tuple[int, int],
        generator: torch.Generator,
        stored: PairsAndOrdinal | None = None,
    ) -> PairsAndOrdinal:
        """Sample pairs across the boundary; see the module docstring.

        Args:
            boundary: the sample's boundary annotation (dict of 1-D tensors or structured array).
            image_size: ``(H, W)`` of the image.
            generator: the only source of randomness.
            stored: ignored.

        Returns:
            ``(pairs int64 [N,4], ordinal int64 [N])``, in boundary order.
        """
        return self.sample_many([boundary], [image_size], [generator])[0]

    def sample_many(
        self,
        boundaries: Sequence[Boundary],
        image_sizes: Sequence[tuple[int, int]],
        generators: Sequence[torch.Generator],
    ) -> list[PairsAndOrdinal]:
        """``[self(b, size, g) for b, size, g in zip(...)]``, with the arithmetic done once over all the samples.

        The results are the same: each sample draws from its own generator, in the same order as alone.

        Args:
            boundaries: one boundary annotation per sample.
            image_sizes: one ``(H, W)`` per sample.
            generators: one generator per sample.

        Returns:
            One ``(pairs, ordinal)`` per sample.

        Raises:
            ValueError: when the three sequences differ in length, or a boundary or size is malformed.
        """
        cfg = self.config
        if not len(boundaries) == len(image_sizes) == len(generators):
            raise ValueError("sample_many needs as many image sizes and generators as boundaries")
        if not boundaries:
            return []
        fields, shapes, usable, u, v = [], [], [], [], []
        for boundary, image_size, generator in zip(boundaries, image_sizes, generators):
            shapes.append(_check_image_size(image_size))
            f = _boundary_arrays(boundary, need_confidence=cfg.min_confidence > 0)
            fields.append(f)
            usable.append(self._anchors(f, f["confidence"] >= cfg.min_confidence if cfg.min_confidence > 0
                                        else None, generator))
            normal, tangent = self._offsets(f["y"].size, generator)
            u.append(_SIDES * normal)  # [2, n], or [2, 1] for one offset on every point
            v.append(tangent)
        sizes = [f["y"].size for f in fields]
        starts = list(itertools.accumulate(sizes, initial=0))
        y, x, ny, nx = (_joined([f[name] for f in fields]) for name in ("y", "x", "ny", "nx"))
        if len(fields) > 1:
            u = [np.broadcast_to(offsets, (2, n)) for offsets, n in zip(u, sizes)]
        limit = np.array([[h, w, h, w] for h, w in shapes]).T  # [4, samples], a column per point below
        limit = limit[:, :1] if len(set(shapes)) == 1 else np.repeat(limit, sizes, axis=1)

        # Whole [2, n] blocks (row 0: A = front, row 1: B = back) written into the rows (yA, xA, yB, xB) of one
        # [4, n] array: p +- u * n + v * t with t = (-nx, ny).
        ends = np.empty((4, y.size), dtype=np.float32)
        un = _joined(u, axis=1)
        with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf points fail the tests below and are dropped
            np.add(y, un * ny, out=ends[0::2])
            np.add(x, un * nx, out=ends[1::2])
            if v[0] is not None:
                vt = _joined(v, axis=1)
                ends[0::2] -= vt * nx
                ends[1::2] += vt * ny
            np.rint(ends, out=ends)
            valid = ((ends >= 0) & (ends < limit)).all(0)
            valid &= (ends[:2] != ends[2:]).any(0)
        if any(mask is not None for mask in usable):
            valid &= _joined([np.ones(n, dtype=bool) if m is None else m for m, n in zip(usable, sizes)])

        # Per sample, in its own generator's order: caps, subset, balance.
        picked, swaps = [], []
        for f, generator, start, stop in zip(fields, generators, starts, starts[1:]):
            index = np.flatnonzero(valid[start:stop])
            if cfg.per_segment_cap is not None:
                keep = _cap_per_segment(f["segment"][index], cfg.per_segment_cap, generator)
                index = index if keep is None else index[keep]
            keep = _random_subset(index.size, cfg.max_pairs, generator)
            index = index if keep is None else index[keep]
            picked.append(index + start if start else index)
            if cfg.balance:
                swap = _swaps(index.size, True, generator)
                swaps.append(np.zeros(0, dtype=bool) if swap is None else swap)  # None: no pair to swap
        index = _joined(picked)
        # A = front (closer), B = back (farther): ordinal -1 before balancing.
        chosen, ordinal = _swapped(ends[:, index], np.full(index.size, -1, dtype=np.int64),
                                   _joined(swaps) if cfg.balance else None)
        bounds = list(itertools.accumulate((i.size for i in picked), initial=0))
        return [_tensors(chosen[:, a:b], ordinal[a:b]) for a, b in zip(bounds, bounds[1:])]


class BoundarySampler(_SideSampler):
    """One point each side at a fixed offset along the normal, at every boundary point.

    Args:
        config: the options; default :class:`BoundaryConfig()` (offset 4 px).
    """

    config: BoundaryConfig

    def __init__(self, config: BoundaryConfig | None = None) -> None:
        """Keep the config (defaults: offset 4 px)."""
        super().__init__(config or BoundaryConfig())

    def _offsets(self, n: int, generator: torch.Generator) -> tuple[float, None]:
        """The same fixed offset on both sides."""
        return float(self.config.offset), None


class MultiscaleSampler(_SideSampler):
    """One point each side at an offset drawn uniformly from a range, independently per side.

    Args:
        config: the options; default :class:`MultiscaleConfig()` (offsets in (2, 12) px).
    """

    config: MultiscaleConfig

    def __init__(self, config: MultiscaleConfig | None = None) -> None:
        """Keep the config (defaults: offsets in (2, 12) px)."""
        super().__init__(config or MultiscaleConfig())

    def _offsets(self, n: int, generator: torch.Generator) -> tuple[np.ndarray, None]:
        """Independent uniform offsets for the front and the back point."""
        low, high = self.config.offset_range
        return low + (high - low) * _rand((2, n), generator), None


class BandSampler(_SideSampler):
    """One point each side anywhere in a band: normal offset from a range plus tangential jitter.

    Args:
        config: the options; default :class:`BandConfig()` (depth (2, 12) px, jitter ±2 px).
    """

    config: BandConfig

    def __init__(self, config: BandConfig | None = None) -> None:
        """Keep the config (defaults: depth (2, 12) px, jitter ±2 px)."""
        super().__init__(config or BandConfig())

    def _offsets(self, n: int, generator: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Independent normal and tangential offsets for the front and the back point."""
        low, high = self.config.depth_range
        jitter = float(self.config.jitter)
        draws = _rand((4, n), generator)
        return low + (high - low) * draws[:2], jitter * (2 * draws[2:] - 1)


class UniformSampler(_SideSampler):
    """Boundary points evenly spaced along each segment's arc length, then one point each side at a fixed offset.

    Args:
        config: the options; default :class:`UniformConfig()` (spacing 8 px, offset 4 px).
    """

    config: UniformConfig

    def __init__(self, config: UniformConfig | None = None) -> None:
        """Keep the config (defaults: spacing 8 px, offset 4 px)."""
        super().__init__(config or UniformConfig())

    def _anchors(
        self, fields: dict[str, np.ndarray], usable: np.ndarray | None, generator: torch.Generator
    ) -> np.ndarray:
        """Systematic arc-length sampling among the usable points, see :func:`_arc_length_thin`."""
        y, x, ny, nx, segment = (fields[name] for name in _REQUIRED_FIELDS)
        with np.errstate(invalid="ignore"):
            finite = np.isfinite(y + x + ny + nx)  # NaN/inf would poison the running arc length
        index = np.flatnonzero(finite if usable is None else finite & usable)
        thinned = _arc_length_thin(y[index], x[index], ny[index], nx[index], segment[index],
                                   float(self.config.spacing), generator)
        return _mask_of(finite.size, index[thinned])

    def _offsets(self, n: int, generator: torch.Generator) -> tuple[float, None]:
        """The same fixed offset on both sides."""
        return float(self.config.offset), None


# ------------------------------------------------------------------------------------- registry / factory

_STRATEGIES: dict[str, type[SamplerConfig]] = {}


def register_strategy(config_class: type[SamplerConfig]) -> type[SamplerConfig]:
    """Register a config class under its ``name`` (usable as a class decorator for custom strategies).

    Args:
        config_class: a :class:`SamplerConfig` subclass with a non-empty class attribute ``name``.

    Returns:
        ``config_class``.

    Raises:
        ValueError: when ``name`` is empty.
    """
    _require(bool(config_class.name), f"{config_class.__name__} needs a non-empty class attribute 'name'")
    _STRATEGIES[config_class.name] = config_class
    return config_class


for _config_class in (StoredConfig, BoundaryConfig, MultiscaleConfig, BandConfig, UniformConfig):
    register_strategy(_config_class)


def available_strategies() -> list[str]:
    """The strategy names :func:`create_sampler` accepts.

    Returns:
        The registered names, sorted.
    """
    return sorted(_STRATEGIES)


def _config_from_name(name: str, options: Mapping[str, Any]) -> SamplerConfig:
    """Build the config registered under ``name`` with ``options``, with one-line errors for bad names/options."""
    config_class = _STRATEGIES.get(name.strip().lower())
    if config_class is None:
        raise ValueError(
            f"unknown pair-sampling strategy {name!r}; choose one of {', '.join(available_strategies())} "
            "(or pass a SamplerConfig or a callable)"
        )
    _check_options(config_class, options)
    return config_class(**options)


def _check_options(config_class: type[SamplerConfig], options: Mapping[str, Any]) -> None:
    """Raise when ``options`` names a field the strategy does not have."""
    known = [f.name for f in dataclasses.fields(config_class)]
    unknown = sorted(set(options) - set(known))
    _require(
        not unknown,
        f"unknown option(s) {', '.join(unknown)} for strategy {config_class.name!r}; valid: {', '.join(known)}",
    )


def create_sampler(
    strategy: str | SamplerConfig | Mapping[str, Any] | Callable[..., PairsAndOrdinal] = "stored",
    **overrides: Any,
) -> PairSampler:
    """Return a sampler from a strategy name, a config, a ``{"strategy": name, ...}`` dict or a callable.

    Args:
        strategy: a name of :func:`available_strategies`, a :class:`SamplerConfig`, a
            ``{"strategy": name, **options}`` dict, a built-in sampler, or a user callable with the
            :class:`PairSampler` signature (returned as is).
        **overrides: config fields to set (``create_sampler("band", jitter=1.0, max_pairs=500)``); an error with a
            user callable.

    Returns:
        The sampler.

    Raises:
        ValueError: for an unknown strategy or option, an option out of its range, overrides for a callable, or
            a ``strategy`` of another type.
    """
    if isinstance(strategy, str):
        config = _config_from_name(strategy, overrides)
    elif isinstance(strategy, SamplerConfig):
        _check_options(type(strategy), overrides)
        config = dataclasses.replace(strategy, **overrides)
    elif isinstance(strategy, Mapping):
        options = dict(strategy)
        name = options.pop("strategy", None)
        _require(isinstance(name, str), f"a sampler dict needs a 'strategy' name, got {dict(strategy)!r}")
        config = _config_from_name(name, {**options, **overrides})
    elif isinstance(strategy, (StoredSampler, _SideSampler)):
        return create_sampler(strategy.config, **overrides) if overrides else strategy
    elif callable(strategy):
        _require(not overrides, f"options {sorted(overrides)} cannot be applied to a custom callable sampler")
        return strategy
    else:
        raise ValueError(
            f"strategy must be a name ({', '.join(available_strategies())}), a SamplerConfig, a dict or a "
            f"callable, got {type(strategy).__name__}"
        )
    sampler = config.build()
    logger.debug("pair sampler: %r", sampler)
    return sampler


def sample_generator(seed: int, epoch: int, key: str) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from a stable hash of ``(seed, epoch, key)``.

    Args:
        seed: the run's seed.
        epoch: the epoch.
        key: the sample's key.

    Returns:
        The generator; the same on every run and process for the same arguments.
    """
    message = json.dumps([int(seed), int(epoch), str(key)]).encode()
    digest = hashlib.blake2b(message, digest_size=8).digest()
    generator = torch.Generator()
    generator.manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))
    return generator


# ----------------------------------------------------------------------------------------------------------------
# Ordinal pairs from a dense depth map
# ----------------------------------------------------------------------------------------------------------------


def sample_dense_pairs(depth: torch.Tensor, valid: torch.Tensor | None, generator: torch.Generator, *,
                       num_pairs: int = 3000, ratio: float = 1.02, depth_kind: str = "depth") -> PairsAndOrdinal:
    """Random point pairs of a dense map with their depth order, as YouTube3D's ReDWeb loader draws them.

    Both ends are drawn uniformly among the valid pixels with non-negative values (with replacement; a pair of one
    pixel twice is dropped). The order compares the two values by ratio: ``v_A > ratio * v_B`` is one side,
    ``v_B > ratio * v_A`` the other, anything between a tie (``0``); for disparity kinds (larger = closer) the sign
    is turned so that ``+1`` still means A is farther (docs/FORMAT.md).

    Args:
        depth: ``[H,W]`` or ``[1,H,W]`` values of ``depth_kind``.
        valid: ``bool`` of the same shape (``None``: every finite value is valid).
        generator: the random source (e.g. :func:`sample_generator` for draws reproducible per key and epoch).
        num_pairs: pairs drawn (before dropping one-pixel pairs).
        ratio: the tie threshold, ``> 1`` (YouTube3D uses 1.02).
        depth_kind: one of ``dynocc_data.format.dense.DEPTH_KINDS``.

    Returns:
        ``pairs`` ``int64 [N,4]`` ``(yA, xA, yB, xB)`` and ``ordinal`` ``int64 [N]``.

    Raises:
        ValueError: bad ``num_pairs``, ``ratio``, ``depth_kind`` or shapes.
    """
    sign = farther_sign(depth_kind)
    _require(num_pairs >= 0, f"num_pairs must be >= 0, got {num_pairs}")
    _require(ratio > 1.0, f"ratio must be > 1, got {ratio}")
    values = depth.reshape(depth.shape[-2:])
    width = values.shape[-1]
    usable = torch.isfinite(values) & (values >= 0)
    if valid is not None:
        _require(tuple(valid.shape[-2:]) == tuple(values.shape), "valid must have the shape of depth")
        usable &= valid.reshape(values.shape).to(torch.bool)
    where = usable.reshape(-1).nonzero().squeeze(1)
    if len(where) < 2 or num_pairs == 0:
        return torch.zeros((0, 4), dtype=torch.int64), torch.zeros(0, dtype=torch.int64)
    ends = where[torch.randint(len(where), (2, num_pairs), generator=generator)]
    ends = ends[:, ends[0] != ends[1]]
    flat = values.reshape(-1).to(torch.float64)
    a, b = flat[ends[0]], flat[ends[1]]
    ordinal = ((a > ratio * b).to(torch.int64) - (b > ratio * a).to(torch.int64)) * sign
    pairs = torch.stack([ends[0] // width, ends[0] % width, ends[1] // width, ends[1] % width], 1)
    return pairs, ordinal


@dataclass(frozen=True)
class DensePairSampler:
    """The ``"dense"`` strategy: :func:`sample_dense_pairs` on an item's ``depth`` / ``valid_mask``.

    Args:
        num_pairs: pairs per image (YouTube3D's ReDWeb loader: 3000).
        ratio: depth-ratio tie threshold (YouTube3D: 1.02).
    """

    num_pairs: int = 3000
    ratio: float = 1.02

    def __post_init__(self) -> None:
        """Reject impossible values with one line."""
        _require(self.num_pairs >= 0, f"num_pairs must be >= 0, got {self.num_pairs}")
        _require(self.ratio > 1.0, f"ratio must be > 1, got {self.ratio}")

    def __call__(self, item: Mapping[str, Any], generator: torch.Generator) -> PairsAndOrdinal:
        """Draw the pairs of one item.

        Args:
            item: an item with ``depth``, ``valid_mask`` and ``meta["depth_kind"]``.
            generator: the random source.

        Returns:
            ``pairs`` ``int64 [N,4]`` and ``ordinal`` ``int64 [N]``.
        """
        return sample_dense_pairs(item["depth"], item.get("valid_mask"), generator, num_pairs=self.num_pairs,
                                  ratio=self.ratio, depth_kind=item["meta"]["depth_kind"])
