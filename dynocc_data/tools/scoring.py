"""Scoring pairs against ground truth, as pure functions on arrays and items: what a depth model trained on them gets.

Every pair falls in exactly one category (:data:`CATEGORIES`), counted and reported as a share of *all* pairs:

* ``correct``: the two points lie on different surfaces and the pair's order (``ordinal``) is right;
* ``wrong_order``: different surfaces, order wrong (or said to be equal);
* ``localisation``: both points on the same surface, the pair's midpoint within ``near_edge`` (16) px of a true
  layer edge: the detected boundary sits beside the true one, so both points land on one side;
* ``false_boundary``: both points on the same surface farther from any layer edge (texture, text, stripes,
  shadows, flow artefacts);
* ``outside``: a point outside the image;
* ``unscored``: both points on footage whose depth is unknown (the real background of a semi-real scene,
  :func:`dynocc_data.tools.synthetic.make_semireal_scene`); reported as a share, never as right or wrong.

Two points lie on the *same surface* when they are on the same layer or their ground-truth depths differ by at
most ``rel_tol`` (1 %) of the nearer one. The layer rule matters on the slanted ground plane, where two points
a few pixels apart can differ by more than 1 % in depth: such a pair crosses no depth edge and teaches a step
that is not there. A same-surface pair with ``ordinal`` 0 (equal) is correct.

**Coverage** is the share of ground-truth moving occlusion-boundary pixels, over *every selected frame*
(frames that made no sample count as uncovered), with a pair midpoint within ``coverage_radius`` (4) px. The
main figure counts every outline whose two sides move apart by at least ``min_motion`` px in any direction,
sliding edges included (``Scene.moving_boundary(motion="any")``); ``coverage_across`` counts only outlines whose
sides move across them (where something gets covered or uncovered).

**Secondary figures of the old scoring**, kept so that old tables can be compared: ``old_sign_agreement``
(the former "pair precision": the sign of the depth difference matches ``ordinal``, whatever the surfaces) and
``old_coverage`` (the former "boundary coverage": across-motion boundary, 6 px radius), ``old_coverage_any``.

Scoring is pure (:func:`classify_pairs`, :func:`score_items` on items of the item contract);
:func:`dynocc_data.tools.evaluate.evaluate_shards` reads the items through
:class:`~dynocc_data.datasets.DynOccDataset`, exactly as training code would, so a held-out set of scenes is
scored the same way.

Longer than 500 lines because the pair categories, the result record with its summary, and the scorer share one
category contract; a good part of the length is their Args documentation.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from .synthetic import LayerKind

__all__ = [
    "CATEGORIES",
    "CATEGORY_TEXT",
    "LEGACY_RADIUS",
    "EvalResult",
    "classify_pairs",
    "format_result",
    "layer_edge_distance",
    "near_midpoints",
    "outside_image",
    "pairs_to_gt",
    "pooled",
    "score_items",
    "sign_agreement",
]

CATEGORIES = ("correct", "wrong_order", "localisation", "false_boundary", "outside", "unscored")
"""The pair categories, in the order of the codes :func:`classify_pairs` returns (0..5)."""
CATEGORY_TEXT = {
    "correct": "correct (different surfaces, right order)",
    "wrong_order": "wrong order (different surfaces)",
    "localisation": "same surface, near a true edge (localisation)",
    "false_boundary": "same surface, far from any edge (false boundary)",
    "outside": "a point outside the image",
    "unscored": "unscored (both points on real footage)",
}
CORRECT, WRONG_ORDER, LOCALISATION, FALSE_BOUNDARY, OUTSIDE, UNSCORED = range(len(CATEGORIES))

LEGACY_RADIUS = 6.0  # the old scoring's coverage radius, kept for its secondary figures


def _ratio(part: float, whole: float) -> float:
    """``part / whole``, NaN when there is nothing to score."""
    return part / whole if whole else float("nan")


# ------------------------------------------------------------------------------------------ pure scoring


def pairs_to_gt(pairs: np.ndarray, image_size: tuple[int, int], gt_size: tuple[int, int]) -> np.ndarray:
    """Map pair coordinates ``(yA, xA, yB, xB)`` from an item's image to the ground truth's pixel grid.

    Both grids have ``(0, 0)`` at the centre of the top-left pixel and cover the same frame, so a coordinate
    maps as ``(p + 0.5) * scale - 0.5`` (the same as ``cv2.resize``).

    Args:
        pairs: [N,4] in the item's image pixels.
        image_size: ``(H, W)`` of the item's image.
        gt_size: ``(H, W)`` of the ground truth.

    Returns:
        float64 [N,4] in ground-truth pixels.
    """
    (h, w), (gh, gw) = image_size, gt_size
    scale = np.array([gh / h, gw / w, gh / h, gw / w])
    return (np.asarray(pairs, np.float64) + 0.5) * scale - 0.5


def outside_image(pairs: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Which pairs have a point outside ``[0, H-1] x [0, W-1]`` (pixel centres of the image).

    Args:
        pairs: [N,4] ``(yA, xA, yB, xB)``.
        image_size: ``(H, W)``.

    Returns:
        bool [N].
    """
    p = np.asarray(pairs, np.float64).reshape(-1, 4)
    h, w = image_size
    ys, xs = p[:, [0, 2]], p[:, [1, 3]]
    return ((ys < 0) | (ys > h - 1) | (xs < 0) | (xs > w - 1)).any(axis=1)


def layer_edge_distance(labels: np.ndarray) -> np.ndarray:
    """Distance of every pixel to the nearest layer edge.

    Both pixels of a 4-neighbour label change are on the edge, distance 0.

    Args:
        labels: int [H,W] visible layer ids.

    Returns:
        float32 [H,W]; infinite everywhere when there is a single layer.
    """
    edge = np.zeros(labels.shape, bool)
    dy = labels[1:] != labels[:-1]
    dx = labels[:, 1:] != labels[:, :-1]
    edge[1:] |= dy
    edge[:-1] |= dy
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    if not edge.any():
        return np.full(labels.shape, np.inf, np.float32)
    return cv2.distanceTransform((~edge).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


def _lookup(grid: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Values of ``grid`` at the nearest pixels of float coordinates, clipped to the grid."""
    h, w = grid.shape[:2]
    yi = np.clip(np.floor(y + 0.5).astype(np.int64), 0, h - 1)
    xi = np.clip(np.floor(x + 0.5).astype(np.int64), 0, w - 1)
    return grid[yi, xi]


def classify_pairs(points: np.ndarray, ordinal: np.ndarray, depth: np.ndarray, *,
                   labels: np.ndarray | None = None, edge_distance: np.ndarray | None = None,
                   outside: np.ndarray | None = None, unknown: np.ndarray | None = None,
                   rel_tol: float = 0.01, near_edge: float = 16.0) -> np.ndarray:
    """The category code (index into :data:`CATEGORIES`) of every pair, int8 [N].

    Args:
        points: float [N,4] ``(yA, xA, yB, xB)`` in ground-truth pixels (see :func:`pairs_to_gt`).
        ordinal: int [N], +1 when A is said to be farther, -1 closer, 0 equal.
        depth: float [H,W] ground-truth depth.
        labels: int [H,W] visible layer ids; two points on one layer are on the same surface. None: depth only.
        edge_distance: float [H,W] distance to the nearest true layer edge (:func:`layer_edge_distance`);
            None computes it from ``labels`` (all same-surface pairs are false boundaries without either).
        outside: bool [N], pairs with a point outside the image (checked in the item's own pixels).
        unknown: bool [H,W], pixels of unknown depth; a pair with both points there is ``unscored``.
        rel_tol: relative depth difference (of the nearer depth) up to which two points are one surface.
        near_edge: a same-surface pair whose midpoint is at most this many pixels from a layer edge is a
            localisation error, farther a false boundary.

    Returns:
        int8 [N] codes: 0 correct, 1 wrong order, 2 localisation, 3 false boundary, 4 outside, 5 unscored.

    Raises:
        ValueError: when there are not as many ordinal labels as pairs.
    """
    p = np.asarray(points, np.float64).reshape(-1, 4)
    ordinal = np.asarray(ordinal).reshape(-1)
    if len(ordinal) != len(p):
        raise ValueError(f"{len(p)} pairs but {len(ordinal)} ordinal labels")
    da, db = _lookup(depth, p[:, 0], p[:, 1]).astype(np.float64), _lookup(depth, p[:, 2], p[:, 3]).astype(np.float64)
    same = np.abs(da - db) <= rel_tol * np.minimum(da, db)
    if labels is not None:
        same |= _lookup(labels, p[:, 0], p[:, 1]) == _lookup(labels, p[:, 2], p[:, 3])
        if edge_distance is None:
            edge_distance = layer_edge_distance(labels)
    if edge_distance is not None:
        near = _lookup(edge_distance, (p[:, 0] + p[:, 2]) / 2, (p[:, 1] + p[:, 3]) / 2) <= near_edge
    else:
        near = np.zeros(len(p), bool)
    codes = np.where(np.sign(da - db) == ordinal, CORRECT, WRONG_ORDER).astype(np.int8)
    codes[same] = np.where(ordinal[same] == 0, CORRECT, np.where(near[same], LOCALISATION, FALSE_BOUNDARY))
    if unknown is not None:
        codes[_lookup(unknown, p[:, 0], p[:, 1]) & _lookup(unknown, p[:, 2], p[:, 3])] = UNSCORED
    if outside is not None:
        codes[np.asarray(outside, bool)] = OUTSIDE
    return codes


def sign_agreement(points: np.ndarray, ordinal: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """The old scoring's test: the sign of the depth difference equals ``ordinal`` (any surfaces).

    Args:
        points: float [N,4] in ground-truth pixels.
        ordinal: int [N].
        depth: float [H,W] ground-truth depth.

    Returns:
        bool [N].
    """
    p = np.asarray(points, np.float64).reshape(-1, 4)
    da, db = _lookup(depth, p[:, 0], p[:, 1]), _lookup(depth, p[:, 2], p[:, 3])
    return np.sign(da.astype(np.float64) - db) == np.asarray(ordinal).reshape(-1)


def near_midpoints(midpoints: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Distance of every pixel to the nearest pair midpoint.

    Args:
        midpoints: ``[M,2]`` (y, x).
        shape: ``(H, W)``.

    Returns:
        float32 [H,W]; infinite everywhere without midpoints.
    """
    if len(midpoints) == 0:
        return np.full(shape, np.inf, np.float32)
    seed = np.ones(shape, np.uint8)
    seed[np.clip(np.floor(midpoints[:, 0] + 0.5).astype(int), 0, shape[0] - 1),
         np.clip(np.floor(midpoints[:, 1] + 0.5).astype(int), 0, shape[1] - 1)] = 0
    return cv2.distanceTransform(seed, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


# ---------------------------------------------------------------------------------------------- results


@dataclass
class EvalResult:
    """Scores of a set of items against ground truth, pooled over all frames, with ``per_video`` parts.

    Attributes:
        counts: category -> number of pairs, for every one of :data:`CATEGORIES`
        old_sign_agree: scored pairs whose depth sign matches ``ordinal`` (the old "precision")
        boundary_any: moving-boundary pixels, any motion, over every selected frame
        covered_any: ... of them within ``coverage_radius`` of a pair midpoint
        boundary_across: moving-boundary pixels whose sides move across the outline
        covered_across: ... of them within ``coverage_radius`` of a pair midpoint
        old_covered_across: across-motion pixels within 6 px (the old "boundary coverage")
        old_covered_any: any-motion pixels within 6 px
        frames_selected: the frames scored for coverage
        frames_written: the frames with a sample
        coverage_radius: the radius of ``covered_any`` and ``covered_across``, in ground-truth pixels
        per_video: video -> its own result
    """

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0))
    old_sign_agree: int = 0
    boundary_any: int = 0
    covered_any: int = 0
    boundary_across: int = 0
    covered_across: int = 0
    old_covered_across: int = 0
    old_covered_any: int = 0
    frames_selected: int = 0
    frames_written: int = 0
    coverage_radius: float = 4.0
    per_video: dict[str, EvalResult] = field(default_factory=dict)

    @property
    def pairs(self) -> int:
        """All pairs, every category."""
        return sum(self.counts.values())

    @property
    def scored(self) -> int:
        """Pairs with ground truth (all but ``unscored``)."""
        return self.pairs - self.counts["unscored"]

    def share(self, category: str) -> float:
        """Share of all pairs in one category.

        Args:
            category: one of :data:`CATEGORIES`.

        Returns:
            The share (NaN without pairs).
        """
        return _ratio(self.counts[category], self.pairs)

    @property
    def correct(self) -> float:
        """Share of all pairs that are correct."""
        return self.share("correct")

    @property
    def correct_of_scored(self) -> float:
        """Share of the scored pairs that are correct (equal to :attr:`correct` without footage)."""
        return _ratio(self.counts["correct"], self.scored)

    @property
    def same_surface(self) -> float:
        """Share of all pairs with both points on one surface (localisation + false boundary)."""
        return _ratio(self.counts["localisation"] + self.counts["false_boundary"], self.pairs)

    @property
    def coverage(self) -> float:
        """Moving-boundary coverage, any motion (sliding edges counted), at ``coverage_radius``."""
        return _ratio(self.covered_any, self.boundary_any)

    @property
    def coverage_across(self) -> float:
        """Coverage of the boundary whose sides move across it, at ``coverage_radius``."""
        return _ratio(self.covered_across, self.boundary_across)

    @property
    def old_precision(self) -> float:
        """Old scoring: share of scored pairs whose depth sign agrees with ``ordinal``, on any surfaces."""
        return _ratio(self.old_sign_agree, self.scored)

    @property
    def old_coverage(self) -> float:
        """Old scoring: across-motion boundary coverage at 6 px."""
        return _ratio(self.old_covered_across, self.boundary_across)

    @property
    def old_coverage_any(self) -> float:
        """Old scoring: any-motion boundary coverage at 6 px."""
        return _ratio(self.old_covered_any, self.boundary_any)

    @property
    def pairs_per_frame(self) -> float:
        """Pairs per written frame."""
        return self.pairs / self.frames_written if self.frames_written else 0.0

    @property
    def pairs_per_selected_frame(self) -> float:
        """Pairs per selected frame (frames without a sample included)."""
        return self.pairs / self.frames_selected if self.frames_selected else 0.0

    def add(self, other: EvalResult) -> None:
        """Add another result's counts to this one (``per_video`` is left alone).

        Args:
            other: the result to add.
        """
        for k in CATEGORIES:
            self.counts[k] += other.counts[k]
        for name in ("old_sign_agree", "boundary_any", "covered_any", "boundary_across", "covered_across",
                     "old_covered_across", "old_covered_any", "frames_selected", "frames_written"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def to_dict(self) -> dict[str, Any]:
        """Counts, shares and figures as plain JSON-able values.

        Returns:
            The dict (``per_video`` nested the same way).
        """
        d: dict[str, Any] = {
            "pairs": self.pairs, "scored": self.scored, "counts": dict(self.counts),
            "shares": {k: self.share(k) for k in CATEGORIES},
            "correct": self.correct, "correct_of_scored": self.correct_of_scored,
            "same_surface": self.same_surface, "unscored_share": self.share("unscored"),
            "coverage": self.coverage, "coverage_across": self.coverage_across,
            "coverage_radius": self.coverage_radius,
            "boundary_pixels_any": self.boundary_any, "covered_pixels_any": self.covered_any,
            "boundary_pixels_across": self.boundary_across, "covered_pixels_across": self.covered_across,
            "frames_selected": self.frames_selected, "frames_written": self.frames_written,
            "pairs_per_frame": self.pairs_per_frame, "pairs_per_selected_frame": self.pairs_per_selected_frame,
            "old": {"precision": self.old_precision, "coverage": self.old_coverage,
                    "coverage_any": self.old_coverage_any, "radius": LEGACY_RADIUS},
        }
        if self.per_video:
            d["per_video"] = {k: v.to_dict() for k, v in sorted(self.per_video.items())}
        return d


def _fmt(share: float) -> str:
    return "   n/a" if math.isnan(share) else f"{share:6.2%}"


def format_result(res: EvalResult, *, per_video: bool = True) -> list[str]:
    """The human summary of a result (what the command line prints).

    Args:
        res: the result.
        per_video: add one line per video.

    Returns:
        The lines.
    """
    lines = [(f"pairs: {res.pairs} ({res.pairs_per_frame:.1f} per written frame, "
              f"{res.pairs_per_selected_frame:.1f} per selected frame; {res.frames_written} of "
              f"{res.frames_selected} selected frames written)")]
    for k in CATEGORIES:
        if k == "unscored" and not res.counts[k]:
            continue
        lines.append(f"  {CATEGORY_TEXT[k]:<52} {res.counts[k]:>8}  {_fmt(res.share(k))}")
    if res.counts["unscored"]:
        lines.append(f"  correct of the scored pairs: {_fmt(res.correct_of_scored)} ({res.scored} scored)")
    lines.append(f"coverage (any motion, {res.coverage_radius:g} px, every selected frame): {_fmt(res.coverage)} "
                 f"({res.covered_any}/{res.boundary_any} boundary pixels); across motion only: "
                 f"{_fmt(res.coverage_across)}")
    lines.append(f"old scoring (secondary): sign agreement ('pair precision') {_fmt(res.old_precision)}, "
                 f"coverage across {LEGACY_RADIUS:g} px {_fmt(res.old_coverage)}, any motion "
                 f"{LEGACY_RADIUS:g} px {_fmt(res.old_coverage_any)}")
    if per_video:
        for name, v in sorted(res.per_video.items()):
            lines.append(f"  {name}: {v.pairs} pairs, correct {_fmt(v.correct)}, wrong order "
                         f"{_fmt(v.share('wrong_order'))}, same surface {_fmt(v.same_surface)}"
                         + (f", unscored {_fmt(v.share('unscored'))}" if v.counts["unscored"] else "")
                         + f", coverage {_fmt(v.coverage)}")
    return lines


# ---------------------------------------------------------------------------------------------- scoring


def _unknown_mask(gt: Any, t: int) -> np.ndarray | None:
    """Pixels of frame t on layers whose depth is unknown (footage), or None when there are none."""
    kinds = getattr(gt, "layer_kind", None)
    if kinds is None:
        return None
    footage = np.flatnonzero(np.asarray(kinds) == LayerKind.FOOTAGE)
    return np.isin(gt.labels[t], footage) if len(footage) else None


def score_items(items: Iterable[Mapping[str, Any]], scenes: Mapping[str, Any], *, coverage_radius: float = 4.0,
                selected: Mapping[str, Iterable[int]] | None = None, gap: int | Mapping[str, int] = 2,
                min_motion: float = 1.0,
                rel_tol: float = 0.01, near_edge: float = 16.0) -> EvalResult:
    """Score items of the item contract against scene ground truth.

    The items come e.g. from :class:`~dynocc_data.datasets.DynOccDataset`.

    Args:
        items: dicts with ``image`` [3,H,W], ``pairs`` [N,4], ``ordinal`` [N] and ``meta`` (``video``,
            ``frame``, ``orig_size``, ``key``). Pair points are mapped from the image to the ground truth's
            grid with ``orig_size`` (:func:`pairs_to_gt`).
        scenes: ``meta["video"]`` -> ground truth with ``depth`` and ``labels`` [T,H,W], ``layer_kind`` and
            ``moving_boundary(t, gap, min_motion, motion=...)`` (a :class:`~dynocc_data.tools.synthetic.SceneGT`).
        coverage_radius: a boundary pixel is covered when a pair midpoint lies within this many pixels.
        selected: video -> every frame the generator selected, so that frames without a sample count against
            coverage; by default only the items' frames.
        gap: the flow gap of the run (the moving boundary is judged over it), or video -> its gap (a run counts
            its gap at a reference frame rate, so slower videos use a shorter one).
        min_motion: least relative motion in pixels for a boundary pixel to count as moving.
        rel_tol: see :func:`classify_pairs`.
        near_edge: see :func:`classify_pairs`.

    Returns:
        The pooled :class:`EvalResult`, with one per video in ``per_video``.

    Raises:
        KeyError: an item's video has no ground truth.
    """
    per_video: dict[str, EvalResult] = defaultdict(lambda: EvalResult(coverage_radius=coverage_radius))
    mids: dict[tuple[str, int], list[np.ndarray]] = defaultdict(list)
    for item in items:
        meta = item["meta"]
        name = meta["video"]
        if name not in scenes:
            raise KeyError(f"{meta.get('url', '?')} [{meta['key']}]: no ground truth for video {name!r}")
        gt = scenes[name]
        t = int(meta["frame"])
        image_size = tuple(item["image"].shape[-2:])
        gt_size = tuple(gt.depth.shape[1:])
        pairs = np.asarray(item["pairs"].cpu().numpy() if hasattr(item["pairs"], "cpu") else item["pairs"],
                           np.float64).reshape(-1, 4)
        ordinal = np.asarray(item["ordinal"].cpu().numpy() if hasattr(item["ordinal"], "cpu")
                             else item["ordinal"]).reshape(-1)
        pts = pairs_to_gt(pairs, image_size, gt_size)
        codes = classify_pairs(pts, ordinal, gt.depth[t], labels=gt.labels[t], outside=outside_image(pairs, image_size),
                               unknown=_unknown_mask(gt, t), rel_tol=rel_tol, near_edge=near_edge)
        res = per_video[name]
        for code, n in zip(*np.unique(codes, return_counts=True)):
            res.counts[CATEGORIES[code]] += int(n)
        res.old_sign_agree += int((sign_agreement(pts, ordinal, gt.depth[t]) & (codes != UNSCORED)).sum())
        res.frames_written += 1
        mids[(name, t)].append(np.stack([(pts[:, 0] + pts[:, 2]) / 2, (pts[:, 1] + pts[:, 3]) / 2], 1))
    frames = {k: sorted({int(t) for t in v}) for k, v in (selected or {}).items()}
    for name, t in mids:
        if t not in frames.setdefault(name, []):
            frames[name].append(t)
    for name, ts in frames.items():
        gt, res = scenes[name], per_video[name]
        for t in ts:
            res.frames_selected += 1
            m = mids.get((name, t))
            dist = near_midpoints(np.concatenate(m) if m else np.zeros((0, 2)), tuple(gt.depth.shape[1:]))
            near, near_old = dist <= coverage_radius, dist <= LEGACY_RADIUS
            for motion in ("any", "across"):
                boundary = gt.moving_boundary(t, gap if isinstance(gap, int) else gap[name], min_motion=min_motion,
                                              motion=motion)
                n, c, c_old = int(boundary.sum()), int((boundary & near).sum()), int((boundary & near_old).sum())
                if motion == "any":
                    res.boundary_any += n
                    res.covered_any += c
                    res.old_covered_any += c_old
                else:
                    res.boundary_across += n
                    res.covered_across += c
                    res.old_covered_across += c_old
    total = EvalResult(coverage_radius=coverage_radius)
    for res in per_video.values():
        total.add(res)
    total.per_video = dict(per_video)
    return total


def pooled(results: Sequence[EvalResult]) -> EvalResult:
    """Several results added up.

    Args:
        results: the results.

    Returns:
        Their sum, their videos merged into one ``per_video``.
    """
    total = EvalResult(coverage_radius=results[0].coverage_radius if results else 4.0)
    for r in results:
        total.add(r)
        total.per_video.update(r.per_video)
    return total
