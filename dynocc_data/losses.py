"""Ordinal-depth training loss and evaluation metric for point pairs.

Longer than 500 lines because the loss, the metric and the reference threshold sweep share one input
normalisation and one gather, and keeping them together keeps their conventions in one place.

Conventions (docs/FORMAT.md): ``pairs`` are integer pixel indices ``(yA, xA, yB, xB)`` into the prediction and
``ordinal`` is ``+1`` when A is farther (depth_A > depth_B), ``-1`` when A is closer and ``0`` when equal.

Both functions take either padded batches (``pairs`` ``[B,N,4]``, ``ordinal`` ``[B,N]``, optional boolean
``mask`` ``[B,N]`` marking the real pairs) or lists of per-image tensors (``[N_i,4]`` / ``[N_i]``), which are
padded internally; padded entries may hold any value, they are never read.

``pairs`` index the prediction itself: bring it to the image's size first (e.g. ``F.interpolate``), as the
DIW / YouTube3D evaluations do. Which prediction to pass: anything that grows with distance (depth, log depth, any
monotone function of depth) as is; anything that grows as things get *closer* (inverse depth, disparity,
MiDaS-style outputs) with ``inverse=True``. The ranking loss only compares values, so log depth is handled by
passing it directly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["NYU_THRESHOLDS", "YOUTUBE3D_THRESHOLDS", "RankingLoss", "SweepRow", "WHDRResult", "WHDRSweep",
           "ranking_loss", "scale_and_shift", "ssi_loss", "whdr"]

PairsLike = torch.Tensor | Sequence[torch.Tensor]
Reduction = Literal["mean", "sum", "none"]


@dataclass(frozen=True)
class _Gathered:
    """Predicted values at both ends of every (padded) pair, plus the ground truth and validity."""

    z_a: torch.Tensor  # [B,N], prediction dtype
    z_b: torch.Tensor  # [B,N]
    ordinal: torch.Tensor  # [B,N] int64
    valid: torch.Tensor  # [B,N] bool


def _pad(items: Sequence[torch.Tensor], value: float | int | bool, name: str) -> torch.Tensor:
    """Stack per-image tensors of different lengths into one padded batch (first dimension = pairs)."""
    if not all(isinstance(t, torch.Tensor) for t in items):
        raise TypeError(f"{name}: a list input must hold tensors only")
    return nn.utils.rnn.pad_sequence(list(items), batch_first=True, padding_value=value)


def _as_batch(
    depth: torch.Tensor,
    pairs: PairsLike,
    ordinal: PairsLike,
    mask: PairsLike | None,
    weights: PairsLike | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Normalise every accepted input form to ``depth [B,H,W]``, ``pairs [B,N,4]``, ``ordinal``/``mask`` ``[B,N]``."""
    if depth.ndim == 4:
        if depth.shape[1] != 1:
            raise ValueError(f"depth must be [B,H,W] or [B,1,H,W], got {tuple(depth.shape)}")
        depth = depth[:, 0]
    if depth.ndim != 3 or not depth.is_floating_point():
        raise ValueError(f"depth must be a float tensor [B,H,W] or [B,1,H,W], got {tuple(depth.shape)} {depth.dtype}")
    device = depth.device

    if isinstance(pairs, torch.Tensor):
        if not isinstance(ordinal, torch.Tensor):
            raise TypeError("pairs is a tensor, so ordinal must be a tensor too")
        if mask is not None and not isinstance(mask, torch.Tensor):
            raise TypeError("pairs is a tensor, so mask must be a tensor (or None)")
        if weights is not None and not isinstance(weights, torch.Tensor):
            raise TypeError("pairs is a tensor, so weights must be a tensor (or None)")
        if pairs.ndim == 2 and depth.shape[0] == 1:  # one image given without its batch dimension
            pairs, ordinal = pairs[None], ordinal.reshape(1, -1)
            mask = None if mask is None else mask.reshape(1, -1)
            weights = None if weights is None else weights.reshape(1, -1)
        valid = torch.ones(pairs.shape[:-1], dtype=torch.bool, device=device) if mask is None else mask
    else:
        lengths = [len(p) for p in pairs]
        if isinstance(ordinal, torch.Tensor) or len(ordinal) != len(lengths):
            raise TypeError("pairs is a list, so ordinal must be a list of the same length")
        if [len(o) for o in ordinal] != lengths:
            raise ValueError("each ordinal tensor must have one entry per pair of the same image")
        if len(lengths) == 0:
            raise ValueError("pairs is an empty list (one entry per image expected)")
        pairs = _pad([p.reshape(-1, 4) for p in pairs], 0, "pairs")
        ordinal = _pad(list(ordinal), 0, "ordinal")
        ramp = torch.arange(pairs.shape[1], device=pairs.device)
        valid = ramp[None, :] < torch.tensor(lengths, device=pairs.device)[:, None]
        for name, extra in (("mask", mask), ("weights", weights)):
            if extra is not None and (isinstance(extra, torch.Tensor) or [len(e) for e in extra] != lengths):
                raise ValueError(f"pairs is a list, so {name} must be a list with one entry per pair of each image")
        if mask is not None:
            valid = valid & _pad([m.to(torch.bool) for m in mask], False, "mask").to(valid.device)
        if weights is not None:
            weights = _pad(list(weights), 0.0, "weights")

    if pairs.ndim != 3 or pairs.shape[-1] != 4:
        raise ValueError(f"pairs must be [B,N,4] (yA, xA, yB, xB), got {tuple(pairs.shape)}")
    if pairs.is_floating_point():
        raise ValueError(f"pairs must hold integer pixel indices, got {pairs.dtype}")
    batch, num = pairs.shape[:2]
    if batch != depth.shape[0]:
        raise ValueError(f"pairs has {batch} images but depth has {depth.shape[0]}")
    for name, t in (("ordinal", ordinal), ("mask", valid), ("weights", weights)):
        if t is not None and tuple(t.shape) != (batch, num):
            raise ValueError(f"{name} must be [B,N] = {(batch, num)}, got {tuple(t.shape)}")
    if valid.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got {valid.dtype}")
    return (
        depth,
        pairs.to(device=device, dtype=torch.int64),
        ordinal.to(device=device, dtype=torch.int64),
        valid.to(device),
        None if weights is None else weights.to(device),
    )


def _gather(depth: torch.Tensor, pairs: torch.Tensor, ordinal: torch.Tensor, valid: torch.Tensor) -> _Gathered:
    """Read the prediction at both ends of every pair with one vectorised gather (invalid pairs read pixel 0)."""
    _, height, width = depth.shape
    ya, xa, yb, xb = pairs.unbind(-1)
    inside = (ya >= 0) & (ya < height) & (xa >= 0) & (xa < width) & (yb >= 0) & (yb < height) & (xb >= 0) & (xb < width)
    if bool((valid & ~inside).any()):
        bad = pairs[valid & ~inside][0].tolist()
        raise ValueError(f"pair (yA, xA, yB, xB) = {tuple(bad)} is outside the {height}x{width} prediction")
    if bool((valid & (ordinal.abs() > 1)).any()):
        raise ValueError("ordinal values must be -1, 0 or +1")
    flat = depth.reshape(depth.shape[0], height * width)
    zero = torch.zeros_like(ya)
    idx_a = torch.where(valid, ya * width + xa, zero)  # padding may hold anything: never index with it
    idx_b = torch.where(valid, yb * width + xb, zero)
    return _Gathered(flat.gather(1, idx_a), flat.gather(1, idx_b), torch.where(valid, ordinal, zero), valid)


def ranking_loss(
    depth: torch.Tensor,
    pairs: PairsLike,
    ordinal: PairsLike,
    mask: PairsLike | None = None,
    *,
    inverse: bool = False,
    reduction: Reduction = "mean",
    keep_largest: float | None = None,
) -> torch.Tensor:
    """Pairwise ranking loss of Chen et al. 2016 ("Single-Image Depth Perception in the Wild").

    With ``d = z_A - z_B`` (``-(z_A - z_B)`` when ``inverse``): ``softplus(-r * d) = log(1 + exp(-r d))`` for
    ``r = ±1``, which is small when the prediction orders the pair like ``r`` (A farther ⇒ ``z_A > z_B``), and
    ``d ** 2`` for ``r = 0``. This is ``RelativeLoss`` of the YouTube3D code (princeton-vl/YouTube3D,
    src/RelativeLoss.py), whose ``'mean'`` is likewise the sum over all pairs of the batch divided by their count.

    Args:
        depth: the prediction, ``[B,H,W]`` or ``[B,1,H,W]`` float.
        pairs: ``[B,N,4]`` integer ``(yA, xA, yB, xB)`` or a list of ``[N_i,4]`` (see the module docstring).
        ordinal: ``[B,N]`` or a list of ``[N_i]``: +1 A farther, -1 A closer, 0 equal.
        mask: ``[B,N]`` bool marking the real pairs of a padded batch; ``None``: all are real.
        inverse: the prediction grows as things get closer (inverse depth, disparity).
        reduction: ``'mean'`` over valid pairs (a differentiable 0 when there are none), ``'sum'``, or ``'none'``.
        keep_largest: the YouTube3D code's ``b_sort`` with ``0.75`` (src/RelativeLoss.py): per image only the
            ``int(keep_largest * n)`` largest pair losses count, and ``'mean'`` divides by the number kept.

    Returns:
        The loss: a scalar, or ``[B,N]`` in the padded layout with 0 at invalid pairs for ``'none'``.

    Raises:
        ValueError: for an unknown ``reduction``, mismatched shapes, non-integer pairs, a pair outside the
            prediction, or ordinals other than -1, 0, +1.
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if keep_largest is not None and not 0.0 < keep_largest <= 1.0:
        raise ValueError(f"keep_largest must be in (0, 1], got {keep_largest!r}")
    depth, pairs_t, ordinal_t, valid, _ = _as_batch(depth, pairs, ordinal, mask)
    g = _gather(depth, pairs_t, ordinal_t, valid)
    diff = g.z_a - g.z_b
    if inverse:
        diff = -diff
    r = g.ordinal.to(diff.dtype)
    # Both branches are finite everywhere, so torch.where keeps gradients clean.
    per_pair = torch.where(g.ordinal == 0, diff * diff, F.softplus(-r * diff))
    per_pair = torch.where(g.valid, per_pair, torch.zeros_like(per_pair))
    kept = g.valid
    if keep_largest is not None:  # the n_keep largest losses of each image (invalid pairs sort last)
        n_keep = (g.valid.sum(1) * keep_largest).floor().long()  # int() of the reference: floor of a positive
        ranked = torch.where(g.valid, per_pair.detach(), torch.full_like(per_pair, -math.inf))
        order = ranked.argsort(1, descending=True)
        positions = torch.arange(order.shape[1], device=order.device).expand_as(order)
        rank = torch.empty_like(order).scatter_(1, order, positions)
        kept = g.valid & (rank < n_keep[:, None])
        per_pair = torch.where(kept, per_pair, torch.zeros_like(per_pair))
    if reduction == "none":
        return per_pair
    total = per_pair.sum()
    if reduction == "sum":
        return total
    return total / kept.sum().clamp(min=1).to(total.dtype)


class RankingLoss(nn.Module):
    """:func:`ranking_loss` as a module, for training loops that expect a criterion object.

    Args:
        inverse: the prediction grows as things get closer (see :func:`ranking_loss`).
        reduction: ``'mean'``, ``'sum'`` or ``'none'`` (see :func:`ranking_loss`).
    """

    def __init__(self, *, inverse: bool = False, reduction: Reduction = "mean") -> None:
        super().__init__()
        self.inverse = inverse
        self.reduction: Reduction = reduction

    def forward(
        self, depth: torch.Tensor, pairs: PairsLike, ordinal: PairsLike, mask: PairsLike | None = None
    ) -> torch.Tensor:
        """Evaluate the loss on one batch.

        Args:
            depth: the prediction, ``[B,H,W]`` or ``[B,1,H,W]``.
            pairs: the pairs, padded or a list (see :func:`ranking_loss`).
            ordinal: their ordinal labels.
            mask: the real pairs of a padded batch.

        Returns:
            The loss, reduced as the module's ``reduction`` says.
        """
        return ranking_loss(depth, pairs, ordinal, mask, inverse=self.inverse, reduction=self.reduction)

    def extra_repr(self) -> str:
        """Show the options in ``print(module)``.

        Returns:
            ``inverse=..., reduction=...``.
        """
        return f"inverse={self.inverse}, reduction={self.reduction!r}"


@dataclass(frozen=True)
class WHDRResult:
    """Weighted Human Disagreement Rate, overall and split by ground truth (fractions in [0, 1]).

    A part without pairs (or with zero total weight) is ``nan``. The counts are numbers of valid pairs, not
    weights.

    Attributes:
        whdr: the rate over all valid pairs.
        whdr_equal: the rate over the ``r = 0`` pairs.
        whdr_unequal: the rate over the ``r = ±1`` pairs.
        num_pairs: the number of valid pairs.
        num_equal: the number of valid ``r = 0`` pairs.
        num_unequal: the number of valid ``r = ±1`` pairs.
    """

    whdr: float
    whdr_equal: float
    whdr_unequal: float
    num_pairs: int
    num_equal: int
    num_unequal: int


def _predicted_relation(
    z_a: torch.Tensor, z_b: torch.Tensor, *, inverse: bool, rule: str, threshold: float
) -> torch.Tensor:
    """Classify every pair as +1 (A farther), -1 (A closer) or 0 (equal) from the prediction."""
    if rule == "difference":
        diff = z_a - z_b
        if inverse:
            diff = -diff
        return (diff > threshold).long() - (diff < -threshold).long()
    if bool(((z_a <= 0) | (z_b <= 0)).any()):
        raise ValueError("rule='ratio' needs strictly positive predictions (depth, not log depth)")
    ratio = z_b / z_a if inverse else z_a / z_b  # inverse depth: zB/zA equals depth_A/depth_B
    return (ratio > 1.0 + threshold).long() - (ratio < 1.0 / (1.0 + threshold)).long()


def _rate(errors: torch.Tensor, weights: torch.Tensor, select: torch.Tensor) -> float:
    """Weighted error rate over the selected pairs (``nan`` when nothing is selected)."""
    denominator = float((weights * select).sum())
    if denominator <= 0.0:
        return math.nan
    return float((weights * errors * select).sum()) / denominator


@torch.no_grad()
def whdr(
    depth: torch.Tensor,
    pairs: PairsLike,
    ordinal: PairsLike,
    mask: PairsLike | None = None,
    *,
    weights: PairsLike | None = None,
    inverse: bool = False,
    rule: Literal["difference", "ratio"] = "difference",
    threshold: float | None = None,
) -> WHDRResult:
    """Weighted Human Disagreement Rate of a prediction on point pairs (the DIW / YouTube3D ordinal error).

    Each pair's predicted relation is compared with ``ordinal``; the rate is ``sum(w * wrong) / sum(w)`` over the
    valid pairs (``weights`` default to 1), reported overall and for ``r = 0`` / ``r ≠ 0`` pairs apart. The
    predicted relation follows one of two published rules:

    * ``rule="difference"`` (default threshold ``0.0``): ``+1`` if ``d > t``, ``-1`` if ``d < -t``, else ``0``,
      with ``d = z_A - z_B`` (negated when ``inverse``), i.e. '=' when ``|d| <= t``. This is the rule of the
      YouTube3D validation code (princeton-vl/YouTube3D src/valid.py ``evalute_correct_rate_one_img``: ``gt(d, t)``
      / ``lt(d, -t)``; training validates with ``in_thresh=0.0``, the test sweep uses ``t = 0.10 + 0.01 i``,
      ``i < 140``) and of the DIW code (princeton-vl/relative_depth test_model_on_NYU.lua, same rule, threshold
      picked on validation; test_model_on_DIW.lua counts a pair correct only when ``(z_A - z_B) r > 0``). With
      ``t = 0`` only exact ties are '=', so on DIW's ordinal-only pairs a tie counts as a disagreement, as there.
    * ``rule="ratio"`` (default threshold ``0.1``): ``+1`` if ``z_A / z_B > 1 + t``, ``-1`` if
      ``z_A / z_B < 1 / (1 + t)``, else ``0`` (i.e. '=' when ``max(z_A/z_B, z_B/z_A) <= 1 + t``). This is
      MegaDepth's ordinal evaluation (zhengqili/MegaDepth models/HG_model.py ``batch_classify``:
      ``threashold = 1.1`` on ``exp`` of the log-depth output). Needs positive depth; with ``inverse`` the
      values are disparities and the ratio is taken the other way round.

    The arguments come in the order of :func:`ranking_loss` (``mask`` fourth, ``weights`` keyword-only), so a
    copied loss call gives the metric of the same pairs. The comparison runs in the prediction's dtype, as in
    the references (float32 outputs compared with a float32 threshold): a float64 recomputation would move
    pairs whose difference sits on a quantised threshold. Rates are summed in float64.

    Runs without gradients.

    Args:
        depth: the prediction, ``[B,H,W]`` or ``[B,1,H,W]``.
        pairs: the pairs, padded or a list, as in :func:`ranking_loss`.
        ordinal: the ground-truth ordinal labels, as in :func:`ranking_loss`.
        mask: ``[B,N]`` bool marking the real pairs of a padded batch.
        weights: ``[B,N]`` (or a list) finite non-negative weight per pair; default 1 (keyword-only).
        inverse: the prediction grows as things get closer (inverse depth, disparity).
        rule: ``"difference"`` or ``"ratio"`` (above).
        threshold: the rule's ``t`` (>= 0); default 0.0 for ``"difference"``, 0.1 for ``"ratio"``.

    Returns:
        The rates and pair counts.

    Raises:
        ValueError: for an unknown rule, a negative threshold, bad weights, non-positive predictions with
            ``rule="ratio"``, and the input errors of :func:`ranking_loss`.
    """
    if rule not in ("difference", "ratio"):
        raise ValueError(f"rule must be 'difference' or 'ratio', got {rule!r}")
    t = (0.0 if rule == "difference" else 0.1) if threshold is None else float(threshold)
    if not t >= 0.0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    depth, pairs_t, ordinal_t, valid, weights_t = _as_batch(depth, pairs, ordinal, mask, weights)
    g = _gather(depth, pairs_t, ordinal_t, valid)
    w = torch.ones_like(g.z_a, dtype=torch.float64) if weights_t is None else weights_t.to(torch.float64)
    if bool((valid & ~(torch.isfinite(w) & (w >= 0))).any()):
        raise ValueError("weights must be finite and non-negative")
    z_a, z_b = g.z_a, g.z_b
    # Predictions at padded pairs are irrelevant; make them valid numbers for the ratio rule's check.
    z_a = torch.where(g.valid, z_a, torch.ones_like(z_a))
    z_b = torch.where(g.valid, z_b, torch.ones_like(z_b))
    predicted = _predicted_relation(z_a, z_b, inverse=inverse, rule=rule, threshold=t)
    wrong = (predicted != g.ordinal).to(torch.float64)
    w = torch.where(g.valid, w, torch.zeros_like(w))
    equal = (g.ordinal == 0) & g.valid
    unequal = (g.ordinal != 0) & g.valid
    return WHDRResult(
        whdr=_rate(wrong, w, g.valid),
        whdr_equal=_rate(wrong, w, equal),
        whdr_unequal=_rate(wrong, w, unequal),
        num_pairs=int(g.valid.sum()),
        num_equal=int(equal.sum()),
        num_unequal=int(unequal.sum()),
    )


# The two published threshold sweeps: YouTube3D's validation (src/valid.py: ``0.1 + 0.01 * i`` for ``i`` in
# 0..139) and the DIW code's NYU test (test_model_on_NYU.lua: ``0.1 + i * 0.01`` for ``i`` in 1..140).
YOUTUBE3D_THRESHOLDS = tuple(0.1 + 0.01 * i for i in range(140))
NYU_THRESHOLDS = tuple(0.1 + i * 0.01 for i in range(1, 141))


@dataclass(frozen=True)
class SweepRow:
    """WHDR at one threshold of a sweep (fractions in [0, 1]; ``nan`` for a part without pairs).

    Args:
        threshold: the difference threshold ``t``.
        whdr: the rate over all pairs.
        whdr_equal: the rate over the ``r = 0`` pairs.
        whdr_unequal: the rate over the ``r = ±1`` pairs.
    """

    threshold: float
    whdr: float
    whdr_equal: float
    whdr_unequal: float


class WHDRSweep:
    """WHDR over a range of difference thresholds, accumulated image by image (images may differ in size).

    Each :meth:`update` takes a batch (padded or lists, as :func:`whdr`) and keeps, per image and threshold, the
    counts of correct equal and unequal pairs, compared in the prediction's dtype as the references do.
    :meth:`table` gives the rates either ``"pooled"`` over all pairs (YouTube3D src/valid.py ``valid``) or
    averaged ``"per_image"`` (the DIW code's test_model_on_NYU.lua: a rate per image, then the mean);
    :meth:`best` picks the threshold by the references' max-min rule: the one whose worse part
    (equal or unequal) is best. Where there are no equal pairs at all, ``whdr_equal`` is ``nan`` and the
    threshold with the lowest ``whdr_unequal`` is picked; YouTube3D's ``valid`` reports its placeholder
    (threshold -1, WKDR 100 %) in that case, because its correct-equal rate is 0 there and never beats 0.
    Per image, an image without equal (or unequal) pairs is left out of that part's mean (the Lua code's
    ``0 / 0`` would make the whole mean ``nan``).

    Args:
        thresholds: the sweep (default :data:`YOUTUBE3D_THRESHOLDS`).
        inverse: the prediction grows as things get closer (disparity): the difference is negated.

    Raises:
        ValueError: for an empty sweep or a negative threshold.
    """

    def __init__(self, thresholds: Sequence[float] = YOUTUBE3D_THRESHOLDS, *, inverse: bool = False) -> None:
        self.thresholds = tuple(float(t) for t in thresholds)
        if not self.thresholds or not all(t >= 0.0 for t in self.thresholds):
            raise ValueError("thresholds must be a non-empty sequence of values >= 0")
        self.inverse = bool(inverse)
        self._eq_correct: list[torch.Tensor] = []  # one float64 [K] row per image
        self._neq_correct: list[torch.Tensor] = []
        self._eq_count: list[int] = []
        self._neq_count: list[int] = []

    def __len__(self) -> int:
        """Number of images seen."""
        return len(self._eq_count)

    @torch.no_grad()
    def update(
        self, depth: torch.Tensor, pairs: PairsLike, ordinal: PairsLike, mask: PairsLike | None = None
    ) -> None:
        """Add the images of one batch.

        Args:
            depth: the prediction, ``[B,H,W]`` or ``[B,1,H,W]``.
            pairs: the pairs, padded or a list, as in :func:`ranking_loss`.
            ordinal: the ground-truth labels, as in :func:`ranking_loss`.
            mask: ``[B,N]`` bool marking the real pairs of a padded batch.
        """
        depth, pairs_t, ordinal_t, valid, _ = _as_batch(depth, pairs, ordinal, mask)
        g = _gather(depth, pairs_t, ordinal_t, valid)
        diff = g.z_a - g.z_b
        if self.inverse:
            diff = -diff
        limits = torch.tensor(self.thresholds, dtype=diff.dtype, device=diff.device)[:, None]  # [K,1]
        for b in range(diff.shape[0]):
            keep = g.valid[b]
            d, r = diff[b][keep][None], g.ordinal[b][keep][None]  # [1,N]
            predicted = (d > limits).long() - (d < -limits).long()  # [K,N]
            equal = r == 0
            self._eq_correct.append(((predicted == 0) & equal).sum(1).to(torch.float64).cpu())
            self._neq_correct.append(((predicted == r) & ~equal).sum(1).to(torch.float64).cpu())
            self._eq_count.append(int(equal.sum()))
            self._neq_count.append(int((~equal).sum()))

    def table(self, *, average: Literal["pooled", "per_image"] = "pooled") -> list[SweepRow]:
        """The rates at every threshold.

        Args:
            average: ``"pooled"`` over all pairs, or the mean of the ``"per_image"`` rates.

        Returns:
            One :class:`SweepRow` per threshold, in the sweep's order.

        Raises:
            ValueError: for an unknown ``average``, or before any :meth:`update`.
        """
        if average not in ("pooled", "per_image"):
            raise ValueError(f"average must be 'pooled' or 'per_image', got {average!r}")
        if not self._eq_count:
            raise ValueError("WHDRSweep.table: no images were added (call update first)")
        eq_c, neq_c = torch.stack(self._eq_correct), torch.stack(self._neq_correct)  # [I,K]
        n_eq = torch.tensor(self._eq_count, dtype=torch.float64)[:, None]
        n_neq = torch.tensor(self._neq_count, dtype=torch.float64)[:, None]
        if average == "pooled":
            eq_c, neq_c, n_eq, n_neq = eq_c.sum(0, keepdim=True), neq_c.sum(0, keepdim=True), n_eq.sum(), n_neq.sum()

        def mean_error(correct: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
            rates = 1.0 - correct / count  # nan where an image has no pairs of this part
            return rates.nanmean(0) if bool((count > 0).any()) else torch.full(rates.shape[1:], math.nan)

        overall = mean_error(eq_c + neq_c, n_eq + n_neq)
        equal, unequal = mean_error(eq_c, n_eq), mean_error(neq_c, n_neq)
        return [SweepRow(t, float(a), float(e), float(u))
                for t, a, e, u in zip(self.thresholds, overall, equal, unequal, strict=True)]

    def best(self, *, average: Literal["pooled", "per_image"] = "pooled") -> SweepRow:
        """The row of the threshold the references would pick (max-min rule, first one on ties).

        Args:
            average: as in :meth:`table`.

        Returns:
            The chosen :class:`SweepRow`.
        """
        rows = self.table(average=average)

        def worse(row: SweepRow) -> float:
            return row.whdr_unequal if math.isnan(row.whdr_equal) else max(row.whdr_equal, row.whdr_unequal)

        return min(rows, key=worse)  # min() keeps the first of equal keys, as the references' strict compare


# ----------------------------------------------------------------------------------------------------------------
# Dense: scale-and-shift-invariant loss (MiDaS)
# ----------------------------------------------------------------------------------------------------------------


def _dense_batch(x: torch.Tensor, name: str) -> torch.Tensor:
    """``[B,H,W]`` from ``[B,H,W]`` or ``[B,1,H,W]``."""
    if x.ndim == 4 and x.shape[1] == 1:
        return x[:, 0]
    if x.ndim != 3:
        raise ValueError(f"{name} must be [B,H,W] or [B,1,H,W], got {tuple(x.shape)}")
    return x


def scale_and_shift(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor,
                                                                                                   torch.Tensor]:
    """Per-image least-squares ``(s, t)`` minimising ``sum_mask (s * prediction + t - target)^2`` (MiDaS).

    Args:
        prediction: ``[B,H,W]`` float.
        target: ``[B,H,W]`` float.
        mask: ``[B,H,W]`` bool or float.

    Returns:
        ``scale`` and ``shift``, ``[B]`` each; ``(0, 0)`` for an image whose system is singular (fewer than two
        distinct masked predictions).
    """
    m = mask.to(prediction.dtype)
    a_00, a_01, a_11 = (m * prediction * prediction).sum((1, 2)), (m * prediction).sum((1, 2)), m.sum((1, 2))
    b_0, b_1 = (m * prediction * target).sum((1, 2)), (m * target).sum((1, 2))
    det = a_00 * a_11 - a_01 * a_01
    ok = det.abs() > 1e-12 * (a_00 * a_11).abs().clamp(min=1e-30)
    safe = torch.where(ok, det, torch.ones_like(det))
    scale = torch.where(ok, (a_11 * b_0 - a_01 * b_1) / safe, torch.zeros_like(det))
    shift = torch.where(ok, (-a_01 * b_0 + a_00 * b_1) / safe, torch.zeros_like(det))
    return scale, shift


def ssi_loss(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, *, alpha: float = 0.5,
             scales: int = 4, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Scale-and-shift-invariant loss with the multi-scale gradient-matching term (Ranftl et al., MiDaS, TPAMI 2020).

    Each image's prediction is aligned to its target by the least-squares scale and shift over its mask
    (:func:`scale_and_shift`), then ``loss = sum_i w_i sum_mask r_i^2 / (2 sum_i M_i) + alpha * sum_k G_k`` with
    ``r = s p + t - target`` and, at scales ``k = 0 .. scales-1`` (every ``2^k``-th pixel), ``G_k = sum_i w_i
    sum (|dx r| + |dy r|) / sum_i M_i`` over neighbours both inside the mask: the reductions of MiDaS's
    ``ScaleAndShiftInvariantLoss`` (its "batch-based" mean). Prediction and target must be in one space (e.g.
    both disparity, or both log depth): the loss makes no choice of kind.

    Args:
        prediction: ``[B,H,W]`` or ``[B,1,H,W]`` float.
        target: same shape (values outside the mask are never read).
        mask: same shape, bool: pixels with a target (``valid_mask``).
        alpha: weight of the gradient-matching term (0: the data term alone).
        scales: number of scales of the gradient term.
        weights: optional ``[B]`` per-image weights (e.g. ``batch["loss_weight"]``).

    Returns:
        The scalar loss (a differentiable 0 when no pixel is masked in).

    Raises:
        ValueError: shapes that do not match, ``alpha < 0`` or ``scales < 1``.
    """
    prediction, target = _dense_batch(prediction, "prediction"), _dense_batch(target, "target")
    mask = _dense_batch(mask, "mask").to(torch.bool)
    if target.shape != prediction.shape or mask.shape != prediction.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)}, target {tuple(target.shape)} and mask "
                         f"{tuple(mask.shape)} must have one shape")
    if alpha < 0 or scales < 1:
        raise ValueError(f"alpha must be >= 0 and scales >= 1, got {alpha}, {scales}")
    target = torch.where(mask, target, torch.zeros_like(target)).to(prediction.dtype)  # NaN outside never leaks
    m = mask.to(prediction.dtype)
    w = torch.ones(prediction.shape[0], dtype=prediction.dtype, device=prediction.device) if weights is None \
        else weights.to(prediction.dtype).reshape(-1)
    scale, shift = scale_and_shift(prediction, target, mask)
    residual = (scale[:, None, None] * prediction + shift[:, None, None] - target) * m
    count = m.sum()
    divisor = count.clamp(min=1)
    total = (w * (residual * residual).sum((1, 2))).sum() / (2 * divisor)
    if alpha > 0:
        for k in range(scales):
            step = 2**k
            r, mk = residual[:, ::step, ::step], m[:, ::step, ::step]
            grad_x = (r[:, :, 1:] - r[:, :, :-1]).abs() * mk[:, :, 1:] * mk[:, :, :-1]
            grad_y = (r[:, 1:, :] - r[:, :-1, :]).abs() * mk[:, 1:, :] * mk[:, :-1, :]
            per_image = grad_x.sum((1, 2)) + grad_y.sum((1, 2))
            total = total + alpha * (w * per_image).sum() / mk.sum().clamp(min=1)
    return total
