"""The background-model reference for static-camera footage (dynocc_data.tools.reference), with exact answers."""

from __future__ import annotations

import numpy as np
import pytest

from dynocc_data.tools.reference import (
    MASK_CATEGORIES,
    MaskEvalResult,
    MovingMaskConfig,
    background_median,
    classify_pairs_by_mask,
    format_mask_result,
    moving_mask,
    reference_mask,
)
from dynocc_data.tools.semireal import read_video_frames

H, W = 60, 80


def _background() -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.clip(120 + rng.normal(0, 4, (H, W, 3)), 0, 255).astype(np.uint8)


def _square(y: int, x: int, side: int = 12) -> np.ndarray:
    """The mask of a square as the clean-up leaves it: the 3x3 opening takes off its four corner pixels."""
    out = np.zeros((H, W), bool)
    out[y:y + side, x:x + side] = True
    for cy, cx in ((y, x), (y, x + side - 1), (y + side - 1, x), (y + side - 1, x + side - 1)):
        out[cy, cx] = False
    return out


def _clip(num_frames: int = 30) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """A red 12x12 square crossing a static background 2 px a frame; returns frames and its top-left corners."""
    bg = _background()
    frames, corners = [], []
    for t in range(num_frames):
        f = bg.copy()
        y, x = 20, 4 + 2 * t
        f[y:y + 12, x:x + 12] = (200, 40, 40)
        frames.append(f)
        corners.append((y, x))
    return np.stack(frames), corners


def test_moving_mask_finds_the_object_and_not_its_shadow():
    bg = _background()
    frame = bg.copy()
    frame[10:22, 10:22] = (200, 40, 40)  # an object
    frame[30:45, 40:60] = (frame[30:45, 40:60] * 0.75).astype(np.uint8)  # a shadow: darker, same colour
    np.testing.assert_array_equal(moving_mask(frame, bg), _square(10, 10))
    # a darker grey is a shadow only within the configured brightness ratio
    frame[30:45, 40:60] = (bg[30:45, 40:60] * 0.4).astype(np.uint8)
    assert moving_mask(frame, bg)[31:44, 41:59].all()
    # a brighter frame overall (exposure) is not motion
    assert not moving_mask(np.clip(bg.astype(int) + 30, 0, 255).astype(np.uint8), bg).any()


def test_median_background_and_reference_mask_of_a_crossing_square():
    frames, corners = _clip()
    np.testing.assert_array_equal(background_median(frames), _background())
    for t in (0, 15, 29):  # the first and last frames use one side's median only
        np.testing.assert_array_equal(reference_mask(frames, t), _square(*corners[t]), err_msg=f"frame {t}")
    with pytest.raises(IndexError):
        reference_mask(frames, 30)


def test_an_object_that_stays_is_moving_while_there_and_leaves_no_ghost():
    # a square arrives at frame 10 and stays to the end (two thirds of the clip): the whole-clip median shows it
    bg = _background()
    frames = np.stack([bg] * 30)
    frames[10:, 20:32, 30:42] = (200, 40, 40)
    assert (background_median(frames)[25, 35] == (200, 40, 40)).all()
    # while there it is moving (it differs from the past)
    np.testing.assert_array_equal(reference_mask(frames, 20), _square(20, 30))
    assert not reference_mask(frames, 3).any()  # before it came: no ghost where it will stand


def test_pairs_by_mask_have_known_categories():
    mask = np.zeros((20, 20), bool)
    mask[5:15, 5:15] = True
    bgp, obj = (2.0, 2.0), (10.0, 10.0)
    points = np.array([bgp + obj, bgp + obj, obj + bgp, obj + bgp, bgp + (2.0, 18.0), obj + (8.0, 8.0), bgp + obj])
    ordinal = np.array([1, -1, -1, 1, 1, -1, 1])
    outside = np.array([False] * 6 + [True])
    codes = classify_pairs_by_mask(points, ordinal, mask, outside=outside)
    assert [MASK_CATEGORIES[c] for c in codes] == ["right", "wrong_order", "right", "wrong_order", "both_background",
                                                   "both_moving", "outside"]
    res = MaskEvalResult(frames_selected=4, frames_written=2)
    for c in codes:
        res.counts[MASK_CATEGORIES[c]] += 1
    assert res.pairs == 7 and res.right == pytest.approx(2 / 7) and res.pairs_per_frame == 3.5
    assert res.frames_written_share == 0.5 and res.to_dict()["counts"]["both_moving"] == 1
    assert "both on the static background (false boundary)" in "\n".join(format_mask_result(res))
    with pytest.raises(ValueError):
        classify_pairs_by_mask(points, ordinal[:3], mask)
    with pytest.raises(ValueError, match="shadow_low"):
        MovingMaskConfig(shadow_low=0.99)


@pytest.mark.realdata
def test_reference_mask_on_the_parking_lot_holds_one_car(shared_videos):
    clip, _ = read_video_frames(shared_videos / "cars_topdown.mp4")
    mask = reference_mask(clip, 20)  # one car driving through the frame (looked at)
    assert 0.03 < mask.mean() < 0.2
    assert mask[250:, 270:350].mean() > 0.8  # the car's body
    assert not mask[50:150, :200].any()  # empty asphalt on the left
