"""Scoring against ground truth (dynocc_data.tools.evaluate.score_items) on hand-made items with exact answers.

Ground truth: 40x50 frames, background at depth 20 and a front square at depth 10 on rows 10..19 and
columns 10..19; the moving boundary is the square's left and right columns (20 pixels). Items are stored at
half resolution (20x25, orig_size 40x50), so pair coordinates are doubled before they are looked up.
"""

import math

import numpy as np
import pytest
import torch

from dynocc_data.tools.evaluate import EvalResult, score_items

GT_H, GT_W = 40, 50


class FakeGT:
    """What score_items needs of a SceneGT: ``depth`` [T,H,W] and ``moving_boundary(t, gap, min_motion)``."""

    def __init__(self, num_frames: int = 3):
        self.depth = np.full((num_frames, GT_H, GT_W), 20.0, np.float32)
        self.depth[:, 10:20, 10:20] = 10.0
        self.calls: list[tuple[int, int, float]] = []

    def moving_boundary(self, t: int, gap: int = 1, min_motion: float = 1.0, *, motion: str = "any") -> np.ndarray:
        self.calls.append((t, gap, min_motion, motion))
        out = np.zeros((GT_H, GT_W), bool)
        out[10:20, 10] = out[10:20, 19] = True  # 20 pixels moving across the outline
        if motion == "any":
            out[10, 10:20] = True  # plus a sliding side: 28 pixels in all
        return out


def item(pairs, ordinal, *, video="a.mp4", frame=1, size=(20, 25)) -> dict:
    """An item of the contract with stored-image pair coordinates (half the ground-truth resolution)."""
    return {"image": torch.zeros(3, *size, dtype=torch.uint8),
            "pairs": torch.tensor(pairs, dtype=torch.int64).reshape(-1, 4),
            "ordinal": torch.tensor(ordinal, dtype=torch.int64),
            "meta": {"key": f"{video}_{frame:06d}", "video": video, "frame": frame, "orig_size": (GT_H, GT_W)}}


# stored (half-resolution) coordinates; x2 gives ground-truth pixels
BG, SQ = (2, 2), (7, 7)  # background (4,4) and square (14,14) in ground-truth pixels
PAIRS = [BG + SQ, SQ + BG, SQ + BG, BG + SQ]  # (yA, xA, yB, xB)
ORDINAL = [1, -1, -1, -1]  # A farther: right, right, right, wrong (the last says the background is closer)


def test_precision_three_of_four():
    res = score_items([item(PAIRS, ORDINAL)], {"a.mp4": FakeGT()})
    assert isinstance(res, EvalResult)
    assert (res.pairs, res.correct) == (4, 3)
    assert res.precision == 0.75
    assert res.per_video["a.mp4"]["precision"] == 0.75 and res.per_video["a.mp4"]["pairs"] == 4


def test_equal_depth_pairs_need_ordinal_zero():
    # both points on the background: only ordinal 0 agrees
    bg2 = (2, 20)
    res = score_items([item([BG + bg2, BG + bg2], [0, 1])], {"a.mp4": FakeGT()})
    assert (res.pairs, res.correct) == (2, 1)


def test_coverage_radius_rule():
    # one pair across the left edge: midpoint at stored (7, 5) -> ground truth (14, 10), on the left column.
    # Left column pixels (10..19, 10) are 0..5 px away (<= 6): all 10 covered; the right column is >= 9 px away.
    res = score_items([item([(7, 3, 7, 7)], [1])], {"a.mp4": FakeGT()}, coverage_radius=6.0)
    assert (res.boundary_pixels, res.covered_pixels) == (20, 10)
    assert res.coverage == 0.5
    # a smaller radius covers rows 14 +- 2 of the left column only: 5 pixels
    res = score_items([item([(7, 3, 7, 7)], [1])], {"a.mp4": FakeGT()}, coverage_radius=2.0)
    assert (res.boundary_pixels, res.covered_pixels) == (20, 5)
    # a pair far from both edges covers nothing
    res = score_items([item([(2, 2, 2, 20)], [0])], {"a.mp4": FakeGT()})
    assert res.covered_pixels == 0 and res.coverage == 0.0


def test_frames_without_samples_count_against_coverage():
    gt = FakeGT()
    res = score_items([item(PAIRS + [(7, 3, 7, 7)], ORDINAL + [1], frame=1)], {"a.mp4": gt},
                      selected={"a.mp4": [0, 1, 2]}, gap=2, min_motion=0.5)
    assert (res.frames_selected, res.frames_written) == (3, 1)
    assert res.boundary_pixels == 60  # 20 per selected frame
    assert res.covered_pixels == 10  # only frame 1 has pairs; its midpoint covers the left column
    assert res.coverage == pytest.approx(10 / 60)
    assert res.pairs_per_frame == 5.0  # 5 pairs over 1 written frame
    assert res.pairs_per_selected_frame == pytest.approx(5 / 3)
    # gap and min_motion reach the GT, asked for both kinds of motion
    assert sorted(gt.calls) == [(t, 2, 0.5, m) for t in (0, 1, 2) for m in ("across", "any")]
    # the sliding top row adds 8 pixels a frame; (10, 11..14) lie within 6 px of the midpoint (14, 10)
    assert res.boundary_pixels_any == 84 and res.covered_pixels_any == 14
    assert res.coverage_any == pytest.approx(14 / 84)
    d = res.to_dict()
    assert d["coverage"] == pytest.approx(10 / 60) and d["precision"] == pytest.approx(4 / 5)
    assert d["per_video"]["a.mp4"]["coverage"] == pytest.approx(10 / 60)


def test_items_of_several_videos_pool_and_split():
    scenes = {"a.mp4": FakeGT(), "b/c.mp4": FakeGT()}
    items = [item(PAIRS, ORDINAL, video="a.mp4"), item([SQ + BG], [1], video="b/c.mp4", frame=2)]
    res = score_items(items, scenes)
    assert (res.pairs, res.correct, res.frames_written, res.frames_selected) == (5, 3, 2, 2)
    assert res.per_video["b/c.mp4"]["precision"] == 0.0
    assert res.per_video["a.mp4"]["precision"] == 0.75


def test_no_items_and_unknown_video():
    res = score_items([], {"a.mp4": FakeGT()})
    assert res.pairs == 0 and math.isnan(res.precision) and math.isnan(res.coverage)
    assert res.pairs_per_frame == 0.0
    # selected frames without any item: nothing written, every boundary pixel uncovered
    res = score_items([], {"a.mp4": FakeGT()}, selected={"a.mp4": [1]})
    assert (res.frames_selected, res.boundary_pixels, res.coverage) == (1, 20, 0.0)
    with pytest.raises(KeyError, match="other.mp4"):
        score_items([item(PAIRS, ORDINAL, video="other.mp4")], {"a.mp4": FakeGT()})
