"""Scoring against ground truth (dynocc_data.tools.scoring) on hand-made items with exact answers.

Ground truth: 40x50 frames, background (layer 0) at depth 20 and a front square (layer 1) at depth 10 on rows
10..19 and columns 10..19; the moving boundary is the square's left and right columns (20 pixels), and with
sliding sides counted its top row too (28 pixels). Items are stored at half resolution (20x25, orig_size
40x50): a stored coordinate p maps to (p + 0.5) * 2 - 0.5 = 2p + 0.5 in ground-truth pixels, looked up at 2p + 1.
"""

import math

import numpy as np
import pytest
import torch

from dynocc_data.tools.scoring import (
    CATEGORIES,
    EvalResult,
    classify_pairs,
    format_result,
    layer_edge_distance,
    pairs_to_gt,
    pooled,
    score_items,
)
from dynocc_data.tools.synthetic import LayerKind

GT_H, GT_W = 40, 50


class FakeGT:
    """What score_items needs of a SceneGT: depth, labels, layer_kind [T,H,W] and ``moving_boundary``."""

    def __init__(self, num_frames: int = 3, footage: bool = False):
        self.labels = np.zeros((num_frames, GT_H, GT_W), np.int16)
        self.labels[:, 10:20, 10:20] = 1
        self.depth = np.where(self.labels == 1, 10.0, 20.0).astype(np.float32)
        self.layer_kind = np.array([LayerKind.FOOTAGE if footage else LayerKind.BACKGROUND, LayerKind.MOVING])
        self.calls: list[tuple] = []

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


# stored coordinates -> ground truth (2p + 1): BG (2, 2) -> (5, 5) on the background, SQ (7, 7) -> (15, 15) on
# the square
BG, SQ = (2, 2), (7, 7)
CORRECT = (BG + SQ, 1)  # A (background) farther: right
WRONG = (BG + SQ, -1)
LOCAL = ((7, 3, 7, 4), 1)  # (15, 7) and (15, 9): both background, midpoint 1 px from the square's edge
FALSE = ((2, 22, 4, 22), -1)  # (5, 45) and (9, 45): both background, midpoint 25 px from any edge
OUTSIDE = ((2, 2, 7, 25), 1)  # x = 25 is outside the 25-pixel-wide image
EQUAL = ((2, 20, 3, 20), 0)  # one surface, said to be equal: right


def _score(cases, **kwargs):
    return score_items([item([c[0] for c in cases], [c[1] for c in cases])], {"a.mp4": FakeGT()}, **kwargs)


def test_pairs_map_to_ground_truth_pixels_through_pixel_centres():
    pts = pairs_to_gt(np.array([[0, 0, 19, 24]]), (20, 25), (40, 50))
    np.testing.assert_allclose(pts, [[0.5, 0.5, 38.5, 48.5]])
    np.testing.assert_allclose(pairs_to_gt(np.array([[3, 4, 5, 6]]), (40, 50), (40, 50)), [[3, 4, 5, 6]])


def test_each_category_counts_its_known_pairs():
    cases = [CORRECT, CORRECT, EQUAL, WRONG, LOCAL, LOCAL, LOCAL, FALSE, FALSE, OUTSIDE]
    res = _score(cases)
    assert isinstance(res, EvalResult)
    assert res.counts == {"correct": 3, "wrong_order": 1, "localisation": 3, "false_boundary": 2, "outside": 1,
                          "unscored": 0}
    assert res.pairs == 10 and res.scored == 10
    assert res.correct == pytest.approx(0.3) and res.share("localisation") == pytest.approx(0.3)
    assert res.same_surface == pytest.approx(0.5)
    assert res.per_video["a.mp4"].counts == res.counts
    d = res.to_dict()
    assert d["shares"]["false_boundary"] == pytest.approx(0.2) and d["counts"]["outside"] == 1
    # the old scoring: sign agreement only; LOCAL's background points (15, 7), (15, 9) have equal depth, so
    # their ordinal +1 disagrees, FALSE's -1 disagrees, EQUAL agrees; OUTSIDE's B is clipped to (15, 49), on the
    # background like its A: disagrees
    assert res.old_sign_agree == 2 + 1 and res.old_precision == pytest.approx(0.3)


def test_near_edge_distance_splits_localisation_from_false_boundary():
    # the FALSE pair's midpoint (7, 45) is sqrt(3² + 25²) = 25.2 px from the nearest edge pixel (10, 20)
    assert _score([FALSE], near_edge=26.0).counts["localisation"] == 1
    assert _score([FALSE], near_edge=24.0).counts["false_boundary"] == 1
    dist = layer_edge_distance(FakeGT().labels[0])
    assert dist[9, 19] == 0 and dist[10, 20] == 0 and dist[10, 10] == 0 and dist[9, 20] == 1
    assert dist[15, 15] == 4 and dist[7, 45] == pytest.approx(np.hypot(3, 25))
    assert np.isinf(layer_edge_distance(np.zeros((4, 4), np.int16))).all()


def test_one_layer_is_one_surface_even_when_its_depth_slants():
    # a ground plane whose depth grows 2.5 % a row: two background points 4 rows apart differ by ~10 %
    depth = (20.0 + 0.5 * np.arange(GT_H, dtype=np.float32))[:, None].repeat(GT_W, 1)
    labels = np.zeros((GT_H, GT_W), np.int16)
    pts = np.array([[30.0, 40.0, 34.0, 40.0]])
    assert classify_pairs(pts, np.array([-1]), depth).tolist() == [0]  # depth alone: "right order"
    assert classify_pairs(pts, np.array([-1]), depth, labels=labels).tolist() == [3]  # one layer: false boundary


def test_depth_within_one_percent_is_one_surface():
    depth = np.full((10, 10), 10.0, np.float32)
    depth[:, 5:] = 10.05  # 0.5 % farther
    pts = np.array([[2.0, 2.0, 2.0, 7.0]])
    assert classify_pairs(pts, np.array([-1]), depth).tolist() == [3]
    depth[:, 5:] = 10.2  # 2 % farther: two surfaces, A closer
    assert classify_pairs(pts, np.array([-1]), depth).tolist() == [0]
    assert classify_pairs(pts, np.array([1]), depth).tolist() == [1]
    assert classify_pairs(pts, np.array([-1]), depth, rel_tol=0.05).tolist() == [3]


def test_pairs_inside_footage_are_unscored():
    cases = [CORRECT, WRONG, LOCAL, FALSE, EQUAL, OUTSIDE]
    res = score_items([item([c[0] for c in cases], [c[1] for c in cases])], {"a.mp4": FakeGT(footage=True)})
    # LOCAL, FALSE and EQUAL have both points on the footage; pairs touching the square are scored
    assert res.counts == {"correct": 1, "wrong_order": 1, "localisation": 0, "false_boundary": 0, "outside": 1,
                          "unscored": 3}
    assert res.scored == 3 and res.share("unscored") == pytest.approx(0.5)
    assert res.correct_of_scored == pytest.approx(1 / 3) and res.correct == pytest.approx(1 / 6)
    assert "unscored (both points on real footage)" in "\n".join(format_result(res))


def test_coverage_radius_rule():
    # one pair across the left edge: (15, 7) and (15, 15), midpoint (15, 11). Left-column pixels (y, 10) are
    # within 4 px for |y - 15| <= 3.87: rows 12..18, 7 of 20; the right column is >= 8 px away. At the old 6 px
    # every left-column pixel is covered, and the sliding top row adds (10, 11..14).
    res = _score([((7, 3, 7, 7), 1)])
    assert res.coverage_radius == 4.0
    assert (res.boundary_across, res.covered_across) == (20, 7)
    assert (res.boundary_any, res.covered_any) == (28, 7)
    assert res.coverage == pytest.approx(7 / 28) and res.coverage_across == pytest.approx(7 / 20)
    assert res.old_covered_across == 10 and res.old_coverage == 0.5
    assert res.old_covered_any == 14 and res.old_coverage_any == pytest.approx(0.5)
    res = _score([((7, 3, 7, 7), 1)], coverage_radius=2.0)  # rows 14..16 only
    assert res.covered_across == 3
    res = _score([FALSE])  # far from both edges: nothing covered
    assert res.covered_any == 0 and res.coverage == 0.0


def test_frames_without_samples_count_against_coverage():
    gt = FakeGT()
    cases = [FALSE, FALSE, ((7, 3, 7, 7), 1)]
    res = score_items([item([c[0] for c in cases], [c[1] for c in cases], frame=1)], {"a.mp4": gt},
                      selected={"a.mp4": [0, 1, 2]}, gap=2, min_motion=0.5)
    assert (res.frames_selected, res.frames_written) == (3, 1)
    assert (res.boundary_any, res.covered_any) == (84, 7)  # 28 per selected frame; only frame 1 has pairs
    assert res.coverage == pytest.approx(7 / 84)
    assert res.pairs_per_frame == 3.0 and res.pairs_per_selected_frame == pytest.approx(1.0)
    assert sorted(gt.calls) == [(t, 2, 0.5, m) for t in (0, 1, 2) for m in ("across", "any")]


def test_items_of_several_videos_pool_and_split():
    scenes = {"a.mp4": FakeGT(), "b/c.mp4": FakeGT()}
    items = [item([CORRECT[0], WRONG[0]], [1, -1], video="a.mp4"), item([SQ + BG], [1], video="b/c.mp4", frame=2)]
    res = score_items(items, scenes)
    assert (res.pairs, res.counts["correct"], res.frames_written, res.frames_selected) == (3, 1, 2, 2)
    assert res.per_video["b/c.mp4"].counts["wrong_order"] == 1 and res.per_video["a.mp4"].correct == 0.5
    both = pooled([score_items(items[:1], scenes), score_items(items[1:], scenes)])
    assert both.counts == res.counts and set(both.per_video) == {"a.mp4", "b/c.mp4"}


def test_no_items_and_unknown_video():
    res = score_items([], {"a.mp4": FakeGT()})
    assert res.pairs == 0 and math.isnan(res.correct) and math.isnan(res.coverage)
    assert res.pairs_per_frame == 0.0
    res = score_items([], {"a.mp4": FakeGT()}, selected={"a.mp4": [1]})
    assert (res.frames_selected, res.boundary_any, res.coverage) == (1, 28, 0.0)
    with pytest.raises(KeyError, match="other.mp4"):
        score_items([item([CORRECT[0]], [1], video="other.mp4")], {"a.mp4": FakeGT()})


def test_summary_names_every_category_and_the_old_figures():
    text = "\n".join(format_result(_score([CORRECT, WRONG, LOCAL, FALSE, OUTSIDE])))
    for words in ("correct", "wrong order", "localisation", "false boundary", "outside the image",
                  "coverage (any motion, 4 px, every selected frame)", "old scoring (secondary)"):
        assert words in text, words
    assert len(CATEGORIES) == 6
