"""Scoring on real static-camera footage without ground-truth depth: a background model as the reference.

For a clip whose camera does not move, the per-pixel temporal median of the whole clip is the static background
(every pixel shows the background more than half of the time, when objects keep moving). A pixel of a frame is
*moving* when it differs from that background, except where the difference looks like a shadow (darker, same
chromaticity: the test of Cucchiara et al. 2003, also used by OpenCV's MOG2). The mask is cleaned by a morphological
opening and closing and rid of specks. A moving object is in front of the background it passes over, so a pair is:

* ``right``: its closer point on a moving object, its farther point on the static background;
* ``wrong_order``: the other way round (or the two sides said to be equal);
* ``both_background``: both points on the static background: a false boundary (texture, shadow, static crease);
* ``both_moving``: both points on moving things (one object in front of another, or a pair inside one object);
  reported apart, neither right nor wrong;
* ``outside``: a point outside the image.

Caveats (also in the README): a moving object that stands still for most of the clip becomes background; a
moving object behind a static occluder is put in front of it by this reference; the mask's outline is only good
to a few pixels (motion blur, compression, colours close to the background's), which matters because pair points
lie a few pixels from the boundary; shadows darker than the shadow test allows count as moving; a panning or
shaking camera makes the reference meaningless.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from .scoring import _fmt, _ratio

__all__ = [
    "MASK_CATEGORIES",
    "MaskEvalResult",
    "MovingMaskConfig",
    "background_median",
    "classify_pairs_by_mask",
    "draw_reference_overlay",
    "format_mask_result",
    "moving_mask",
    "reference_mask",
]

MASK_CATEGORIES = ("right", "wrong_order", "both_background", "both_moving", "outside")
"""The categories of :func:`classify_pairs_by_mask`, in the order of its codes (0..4)."""
MASK_CATEGORY_TEXT = {
    "right": "right (closer point moving, farther on background)",
    "wrong_order": "wrong order (closer point on background)",
    "both_background": "both on the static background (false boundary)",
    "both_moving": "both on moving things (reported apart)",
    "outside": "a point outside the image",
}
RIGHT, WRONG_ORDER, BOTH_BACKGROUND, BOTH_MOVING, OUTSIDE = range(len(MASK_CATEGORIES))


@dataclass(frozen=True)
class MovingMaskConfig:
    """Parameters of the moving-object mask.

    Args:
        threshold: least colour difference from the background (largest channel, grey levels) of a moving pixel.
        shadow_low: a pixel at least this share of the background's brightness ...
        shadow_high: ... and at most this share, with its chromaticity within ``shadow_chroma``, is a shadow.
        shadow_chroma: largest change of normalised colour ``rgb / (r + g + b)`` in a shadow.
        open_px: size of the opening that removes thin noise.
        close_px: size of the closing that fills small gaps inside objects.
        min_area: connected parts smaller than this share of the frame are dropped.
        max_median_frames: at most this many frames, evenly spread, make each median.
        margin: frames nearer than this to the frame being judged are left out of its two medians.
        min_side_frames: a median of fewer frames than this (near the clip's ends) is not used.

    Raises:
        ValueError: when a threshold or size is out of range.
    """

    threshold: float = 30.0
    shadow_low: float = 0.6
    shadow_high: float = 0.95
    shadow_chroma: float = 0.04
    open_px: int = 3
    close_px: int = 7
    min_area: float = 0.0005
    max_median_frames: int = 49
    margin: int = 6
    min_side_frames: int = 8

    def __post_init__(self) -> None:
        """Reject values that make no mask, with a one-line message."""
        if self.threshold <= 0 or not 0 < self.shadow_low < self.shadow_high <= 1 or self.shadow_chroma < 0:
            raise ValueError("MovingMaskConfig: need threshold > 0, 0 < shadow_low < shadow_high <= 1, "
                             "shadow_chroma >= 0")
        if (self.open_px < 1 or self.close_px < 1 or not 0 <= self.min_area < 1 or self.max_median_frames < 1
                or self.margin < 0 or self.min_side_frames < 1):
            raise ValueError("MovingMaskConfig: need open_px, close_px, max_median_frames, min_side_frames >= 1, "
                             "margin >= 0, 0 <= min_area < 1")


def background_median(frames: np.ndarray, max_frames: int = 99) -> np.ndarray:
    """Per-pixel temporal median uint8 [H,W,3] of at most ``max_frames`` frames evenly spread over ``frames``.

    Args:
        frames: uint8 [T,H,W,3] frames of a static-camera clip.
        max_frames: the most frames used.

    Returns:
        The background image.

    Raises:
        ValueError: no frames.
    """
    if len(frames) == 0:
        raise ValueError("background_median needs at least one frame")
    pick = np.unique(np.linspace(0, len(frames) - 1, min(max_frames, len(frames))).round().astype(int))
    return np.median(frames[pick], axis=0).astype(np.uint8)


def moving_mask(frame: np.ndarray, background: np.ndarray, config: MovingMaskConfig | None = None) -> np.ndarray:
    """Mask bool [H,W] of the pixels of ``frame`` on moving objects, given the static ``background`` (both uint8 RGB).

    Args:
        frame: uint8 [H,W,3] the frame.
        background: uint8 [H,W,3] the static background (:func:`background_median`).
        config: thresholds and clean-up (:class:`MovingMaskConfig` defaults).

    Returns:
        The mask; shadows (darker, same chromaticity) are not moving.
    """
    cfg = config or MovingMaskConfig()
    f, b = frame.astype(np.float32), background.astype(np.float32)
    f *= np.float32(np.median(b.sum(-1) + 1) / np.median(f.sum(-1) + 1))  # exposure and light changes
    changed = np.abs(f - b).max(axis=-1) > cfg.threshold
    ratio = (f.sum(-1) + 1) / (b.sum(-1) + 1)
    chroma = np.abs(f / (f.sum(-1, keepdims=True) + 1) - b / (b.sum(-1, keepdims=True) + 1)).max(axis=-1)
    shadow = (ratio >= cfg.shadow_low) & (ratio <= cfg.shadow_high) & (chroma <= cfg.shadow_chroma)
    mask = (changed & ~shadow).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (cfg.open_px,) * 2))
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (cfg.close_px,) * 2))
    n, parts, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    keep = np.zeros(n, bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= cfg.min_area * mask.size
    return keep[parts]


def _gradient(image: np.ndarray) -> np.ndarray:
    """Colour gradient magnitude float32 [H,W] (largest channel), lightly smoothed."""
    g = cv2.GaussianBlur(image.astype(np.float32), (0, 0), 1.0)
    gx, gy = cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1)
    return np.sqrt(gx * gx + gy * gy).max(axis=-1)


def _drop_ghosts(mask: np.ndarray, frame_grad: np.ndarray, background_grad: np.ndarray) -> np.ndarray:
    """The parts of ``mask`` whose outline is an edge of the frame rather than of the background.

    A *ghost* is where the background image shows an object that is not in the frame (it stood there in the
    frames that made the background): its outline is an edge of the background, not of the frame.
    """
    n, parts = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return mask
    outline = mask & ~cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    ids = parts[outline]
    in_frame = np.bincount(ids, weights=frame_grad[outline], minlength=n)
    in_background = np.bincount(ids, weights=background_grad[outline], minlength=n)
    keep = in_frame >= in_background
    keep[0] = False
    return keep[parts]


def reference_mask(frames: np.ndarray, t: int, config: MovingMaskConfig | None = None) -> np.ndarray:
    """Mask bool [H,W] of the moving objects of frame ``t`` of a static-camera clip, by two background models.

    One median is taken over the frames before ``t - margin``, one over those after ``t + margin``, so that
    someone who stands still for half the clip is background in neither when he is elsewhere. A pixel that
    differs from both is moving. Where it differs from only one (an object that arrives and stays, or leaves),
    each connected part is kept when its outline is an edge of the frame, and dropped as a *ghost* when its
    outline is an edge of that background instead (:func:`_drop_ghosts`).

    Args:
        frames: uint8 [T,H,W,3] the whole clip.
        t: the frame.
        config: the mask's parameters.

    Returns:
        The mask.

    Raises:
        IndexError: ``t`` is not a frame of the clip.
    """
    cfg = config or MovingMaskConfig()
    if not 0 <= t < len(frames):
        raise IndexError(f"frame {t} is outside the {len(frames)}-frame clip")
    sides = [frames[: max(t - cfg.margin, 0)], frames[t + cfg.margin + 1:]]
    backgrounds = [background_median(s, cfg.max_median_frames) for s in sides if len(s) >= cfg.min_side_frames]
    if not backgrounds:
        backgrounds = [background_median(frames, cfg.max_median_frames)]
    frame_grad = _gradient(frames[t])
    masks = [moving_mask(frames[t], b, cfg) for b in backgrounds]
    if len(masks) == 1:
        return _drop_ghosts(masks[0], frame_grad, _gradient(backgrounds[0]))
    both = masks[0] & masks[1]
    out = both.copy()
    for background, mask in zip(backgrounds, masks):
        out |= _drop_ghosts(mask & ~both, frame_grad, _gradient(background))
    return out


def classify_pairs_by_mask(points: np.ndarray, ordinal: np.ndarray, mask: np.ndarray, *,
                           outside: np.ndarray | None = None) -> np.ndarray:
    """The category code (index into :data:`MASK_CATEGORIES`) of every pair, int8 [N].

    Args:
        points: float [N,4] ``(yA, xA, yB, xB)`` in the mask's pixels.
        ordinal: int [N], +1 when A is said to be farther, -1 closer, 0 equal.
        mask: bool [H,W], moving pixels (:func:`moving_mask`).
        outside: bool [N], pairs with a point outside the image.

    Returns:
        int8 [N] codes: 0 right, 1 wrong order, 2 both background, 3 both moving, 4 outside.

    Raises:
        ValueError: ``points`` and ``ordinal`` differ in length.
    """
    p = np.asarray(points, np.float64).reshape(-1, 4)
    ordinal = np.asarray(ordinal).reshape(-1)
    if len(ordinal) != len(p):
        raise ValueError(f"{len(p)} pairs but {len(ordinal)} ordinal labels")
    h, w = mask.shape
    iy = np.clip(np.floor(p + 0.5).astype(np.int64)[:, [0, 2]], 0, h - 1)
    ix = np.clip(np.floor(p + 0.5).astype(np.int64)[:, [1, 3]], 0, w - 1)
    on = mask[iy, ix]  # [N,2]: A moving, B moving
    codes = np.full(len(p), WRONG_ORDER, np.int8)
    codes[on[:, 0] & on[:, 1]] = BOTH_MOVING
    codes[~on[:, 0] & ~on[:, 1]] = BOTH_BACKGROUND
    codes[(ordinal == 1) & ~on[:, 0] & on[:, 1]] = RIGHT  # A farther on the background, B closer and moving
    codes[(ordinal == -1) & on[:, 0] & ~on[:, 1]] = RIGHT
    if outside is not None:
        codes[np.asarray(outside, bool)] = OUTSIDE
    return codes


@dataclass
class MaskEvalResult:
    """Pairs of a static-camera clip (or several) scored against the background model.

    Args:
        counts: pairs per category of :data:`MASK_CATEGORIES`.
        frames_selected: frames the generator selected.
        frames_written: frames that made a sample.
        per_video: the same for each clip.
    """

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MASK_CATEGORIES, 0))
    frames_selected: int = 0
    frames_written: int = 0
    per_video: dict[str, MaskEvalResult] = field(default_factory=dict)

    @property
    def pairs(self) -> int:
        """All pairs."""
        return sum(self.counts.values())

    def share(self, category: str) -> float:
        """Share of all pairs in ``category``.

        Args:
            category: one of :data:`MASK_CATEGORIES`.

        Returns:
            The category's count over all pairs (NaN when there are none).
        """
        return _ratio(self.counts[category], self.pairs)

    @property
    def right(self) -> float:
        """Share of all pairs that are right by the background model."""
        return self.share("right")

    @property
    def pairs_per_frame(self) -> float:
        """Pairs per written frame."""
        return self.pairs / self.frames_written if self.frames_written else 0.0

    @property
    def frames_written_share(self) -> float:
        """Share of the selected frames that were written."""
        return _ratio(self.frames_written, self.frames_selected)

    def add(self, other: MaskEvalResult) -> None:
        """Add another result's counts and frames (``per_video`` is left alone).

        Args:
            other: the result to add.
        """
        for k in MASK_CATEGORIES:
            self.counts[k] += other.counts[k]
        self.frames_selected += other.frames_selected
        self.frames_written += other.frames_written

    def to_dict(self) -> dict[str, Any]:
        """Counts, shares and frame figures as JSON-able values.

        Returns:
            A dict, with ``per_video`` nested the same way.
        """
        d: dict[str, Any] = {"pairs": self.pairs, "counts": dict(self.counts),
                             "shares": {k: self.share(k) for k in MASK_CATEGORIES}, "right": self.right,
                             "frames_selected": self.frames_selected, "frames_written": self.frames_written,
                             "frames_written_share": self.frames_written_share,
                             "pairs_per_frame": self.pairs_per_frame}
        if self.per_video:
            d["per_video"] = {k: v.to_dict() for k, v in sorted(self.per_video.items())}
        return d


def format_mask_result(res: MaskEvalResult) -> list[str]:
    """The human summary of a static-camera result, one line each.

    Args:
        res: the result.

    Returns:
        The lines.
    """
    lines = [f"pairs: {res.pairs} ({res.pairs_per_frame:.1f} per written frame; {res.frames_written} of "
             f"{res.frames_selected} selected frames written, {_fmt(res.frames_written_share)})"]
    for k in MASK_CATEGORIES:
        lines.append(f"  {MASK_CATEGORY_TEXT[k]:<52} {res.counts[k]:>8}  {_fmt(res.share(k))}")
    for name, v in sorted(res.per_video.items()):
        lines.append(f"  {name}: {v.pairs} pairs, {v.pairs_per_frame:.1f} per written frame, right {_fmt(v.right)}, "
                     f"both background {_fmt(v.share('both_background'))}, both moving "
                     f"{_fmt(v.share('both_moving'))}, wrong order {_fmt(v.share('wrong_order'))}")
    return lines


MASK_COLOURS = {RIGHT: (0, 230, 0), WRONG_ORDER: (255, 0, 0), BOTH_BACKGROUND: (255, 0, 255),
                BOTH_MOVING: (255, 200, 0), OUTSIDE: (0, 0, 0)}
"""RGB colour of each category in :func:`draw_reference_overlay`."""


def draw_reference_overlay(frame: np.ndarray, mask: np.ndarray, points: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """The frame with the moving mask tinted and outlined and every pair drawn in its category's colour.

    Args:
        frame: uint8 [H,W,3] RGB.
        mask: bool [H,W] moving pixels.
        points: float [N,4] pairs in the frame's pixels.
        codes: int [N] categories (:func:`classify_pairs_by_mask`).

    Returns:
        uint8 [H,W,3] RGB: right green, wrong order red, both background magenta, both moving orange.
    """
    out = frame.copy()
    out[mask] = (0.6 * out[mask] + np.array([0, 0, 100])).clip(0, 255).astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, (255, 255, 255), 1)
    for p, c in zip(np.rint(points).astype(int), codes):
        cv2.line(out, (int(p[1]), int(p[0])), (int(p[3]), int(p[2])), MASK_COLOURS[int(c)], 1, cv2.LINE_AA)
    return out
