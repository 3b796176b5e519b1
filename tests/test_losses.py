"""Ranking loss and WHDR on hand-made predictions with hand-computed answers."""

from __future__ import annotations

import math

import pytest
import torch

from dynocc_data.losses import RankingLoss, WHDRResult, ranking_loss, whdr


def _softplus(v: float) -> float:
    return math.log1p(math.exp(v))


def _sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


@pytest.fixture
def depth() -> torch.Tensor:
    """One 2x4 prediction; z[0,0] - z[0,1] = 0.5 and z[1,0] - z[1,1] = -1.0."""
    return torch.tensor([[[2.0, 1.5, 3.0, 3.25], [1.0, 2.0, 0.5, 4.0]]], dtype=torch.float64)


# Each pair uses its own pixels so that the expected gradients do not overlap.
PAIRS = torch.tensor([[[0, 0, 0, 1], [1, 0, 1, 1], [0, 2, 0, 3], [1, 2, 1, 3]]])
# d = z_A - z_B:        0.5          -1.0        -0.25       -3.5


def test_hand_values_for_each_relation(depth: torch.Tensor) -> None:
    ordinal = torch.tensor([[1, -1, 0, 1]])
    per_pair = ranking_loss(depth, PAIRS, ordinal, reduction="none")
    expected = torch.tensor([[_softplus(-0.5), _softplus(-1.0), 0.0625, _softplus(3.5)]], dtype=torch.float64)
    torch.testing.assert_close(per_pair, expected)
    assert per_pair[0, 0].item() == pytest.approx(math.log(1 + math.exp(-0.5)))
    torch.testing.assert_close(ranking_loss(depth, PAIRS, ordinal, reduction="sum"), expected.sum())
    torch.testing.assert_close(ranking_loss(depth, PAIRS, ordinal), expected.mean())
    # r = 0 on z_A - z_B = 0.5 gives 0.25
    assert ranking_loss(depth, PAIRS[:, :1], torch.tensor([[0]])).item() == pytest.approx(0.25)


def test_agreeing_prediction_costs_less_than_disagreeing(depth: torch.Tensor) -> None:
    # pair 0 has z_A > z_B: "A farther" (+1) must be cheaper than "A closer" (-1)
    farther = ranking_loss(depth, PAIRS[:, :1], torch.tensor([[1]]))
    closer = ranking_loss(depth, PAIRS[:, :1], torch.tensor([[-1]]))
    assert farther.item() < math.log(2) < closer.item()


def test_gradients_match_analytic(depth: torch.Tensor) -> None:
    depth = depth.clone().requires_grad_(True)
    ordinal = torch.tensor([[1, -1, 0, 1]])
    ranking_loss(depth, PAIRS, ordinal, reduction="sum").backward()
    expected = torch.zeros_like(depth)
    for (ya, xa, yb, xb), r, d in zip(PAIRS[0].tolist(), [1, -1, 0, 1], [0.5, -1.0, -0.25, -3.5]):
        # d/dd log(1 + exp(-r d)) = -r * sigmoid(-r d); d/dd d^2 = 2d
        g = 2 * d if r == 0 else -r * _sigmoid(-r * d)
        expected[0, ya, xa] += g
        expected[0, yb, xb] -= g
    torch.testing.assert_close(depth.grad, expected)
    assert torch.autograd.gradcheck(lambda z: ranking_loss(z, PAIRS, ordinal), (depth.detach().requires_grad_(),))


def test_inverse_flips_the_order(depth: torch.Tensor) -> None:
    ordinal = torch.tensor([[1, -1, 0, 1]])
    torch.testing.assert_close(
        ranking_loss(depth, PAIRS, ordinal, inverse=True), ranking_loss(-depth, PAIRS, ordinal)
    )
    inv = ranking_loss(depth, PAIRS[:, :1], torch.tensor([[1]]), inverse=True)
    assert inv.item() == pytest.approx(_softplus(0.5))


def test_four_dim_input_and_module(depth: torch.Tensor) -> None:
    ordinal = torch.tensor([[1, -1, 0, 1]])
    expected = ranking_loss(depth, PAIRS, ordinal)
    torch.testing.assert_close(ranking_loss(depth[:, None], PAIRS, ordinal), expected)
    torch.testing.assert_close(RankingLoss()(depth[:, None], PAIRS, ordinal), expected)
    assert "inverse=False" in repr(RankingLoss())


def test_large_differences_stay_finite() -> None:
    depth = torch.tensor([[[1e4, 0.0]]], requires_grad=True)
    pairs = torch.tensor([[[0, 0, 0, 1]]])
    agree = ranking_loss(depth, pairs, torch.tensor([[1]]))
    disagree = ranking_loss(depth, pairs, torch.tensor([[-1]]))
    assert agree.item() == 0.0
    assert disagree.item() == pytest.approx(1e4)
    disagree.backward()
    assert torch.isfinite(depth.grad).all()


def _batch() -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    depth = torch.randn(2, 5, 6, generator=gen, dtype=torch.float64)
    pairs = [
        torch.tensor([[0, 0, 4, 5], [2, 3, 1, 1], [4, 0, 0, 5]]),
        torch.tensor([[1, 1, 3, 3]]),
    ]
    ordinal = [torch.tensor([1, 0, -1]), torch.tensor([-1])]
    return depth, pairs, ordinal


def test_padding_and_mask_are_ignored() -> None:
    depth, pairs, ordinal = _batch()
    padded = torch.full((2, 4, 4), -7, dtype=torch.int64)  # garbage outside the image on purpose
    padded[0, :3], padded[1, :1] = pairs
    padded_ord = torch.tensor([[1, 0, -1, 5], [-1, 9, 9, 9]])  # invalid ordinals are never looked at either
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    expected_sum = sum(
        ranking_loss(depth[i : i + 1], pairs[i][None], ordinal[i][None], reduction="sum") for i in range(2)
    )
    total = ranking_loss(depth, padded, padded_ord, mask, reduction="sum")
    torch.testing.assert_close(total, expected_sum)
    torch.testing.assert_close(ranking_loss(depth, padded, padded_ord, mask), expected_sum / 4)
    none = ranking_loss(depth, padded, padded_ord, mask, reduction="none")
    assert none.shape == (2, 4) and none[~mask].eq(0).all()


def test_list_input_equals_padded_input() -> None:
    depth, pairs, ordinal = _batch()
    padded = torch.zeros(2, 3, 4, dtype=torch.int64)
    padded[0], padded[1, :1] = pairs
    padded_ord = torch.zeros(2, 3, dtype=torch.int64)
    padded_ord[0], padded_ord[1, :1] = ordinal
    mask = torch.tensor([[True, True, True], [True, False, False]])
    d1 = depth.clone().requires_grad_(True)
    d2 = depth.clone().requires_grad_(True)
    from_list = ranking_loss(d1, pairs, ordinal)
    from_padded = ranking_loss(d2, padded, padded_ord, mask)
    torch.testing.assert_close(from_list, from_padded)
    from_list.backward()
    from_padded.backward()
    torch.testing.assert_close(d1.grad, d2.grad)
    # a list mask removes pairs too
    list_mask = [torch.tensor([True, False, True]), torch.tensor([True])]
    masked = ranking_loss(depth, pairs, ordinal, list_mask, reduction="sum")
    torch.testing.assert_close(
        masked, ranking_loss(depth, [pairs[0][[0, 2]], pairs[1]], [ordinal[0][[0, 2]], ordinal[1]], reduction="sum")
    )


def test_no_valid_pairs_gives_differentiable_zero() -> None:
    depth = torch.zeros(1, 3, 3, requires_grad=True)
    loss = ranking_loss(depth, torch.zeros(1, 2, 4, dtype=torch.int64), torch.zeros(1, 2, dtype=torch.int64),
                        torch.zeros(1, 2, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert depth.grad is not None and depth.grad.eq(0).all()


def test_bad_inputs_raise_one_line_errors() -> None:
    depth = torch.zeros(1, 3, 3)
    with pytest.raises(ValueError, match="outside the 3x3 prediction"):
        ranking_loss(depth, torch.tensor([[[0, 0, 3, 0]]]), torch.tensor([[1]]))
    with pytest.raises(ValueError, match="-1, 0 or \\+1"):
        ranking_loss(depth, torch.tensor([[[0, 0, 1, 0]]]), torch.tensor([[2]]))
    with pytest.raises(ValueError, match="reduction"):
        ranking_loss(depth, torch.tensor([[[0, 0, 1, 0]]]), torch.tensor([[1]]), reduction="max")  # type: ignore
    with pytest.raises(ValueError, match="integer pixel indices"):
        ranking_loss(depth, torch.tensor([[[0.0, 0, 1, 0]]]), torch.tensor([[1]]))


# ----------------------------------------------------------------------------- WHDR

def _pairs_with_differences(diffs: list[float], base: float = 10.0) -> tuple[torch.Tensor, torch.Tensor]:
    """A 2xN prediction whose pair i (column i, top = A, bottom = B) has z_A - z_B = diffs[i]."""
    n = len(diffs)
    depth = torch.full((1, 2, n), base, dtype=torch.float64)
    depth[0, 0] += torch.tensor(diffs, dtype=torch.float64)
    pairs = torch.tensor([[[0, i, 1, i] for i in range(n)]])
    return depth, pairs


def test_whdr_difference_rule() -> None:
    depth, pairs = _pairs_with_differences([0.5, -0.5, 0.0, 0.05, 2.0])
    ordinal = torch.tensor([[1, 1, -1, 0, 0]])
    # threshold 0: predicted [+1, -1, 0, +1, +1] -> wrong [no, yes, yes, yes, yes]
    assert whdr(depth, pairs, ordinal) == WHDRResult(4 / 5, 2 / 2, 2 / 3, 5, 2, 3)
    # threshold 0.1: predicted [+1, -1, 0, 0, +1] -> wrong [no, yes, yes, no, yes]
    r = whdr(depth, pairs, ordinal, threshold=0.1)
    assert (r.whdr, r.whdr_equal, r.whdr_unequal) == pytest.approx((3 / 5, 1 / 2, 2 / 3))
    # weights 1..5 with threshold 0.1: wrong weight 2 + 3 + 5 of 15; unequal (2 + 3) / 6; equal 5 / 9
    w = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]])
    r = whdr(depth, pairs, ordinal, weights=w, threshold=0.1)
    assert (r.whdr, r.whdr_equal, r.whdr_unequal) == pytest.approx((10 / 15, 5 / 9, 5 / 6))
    assert (r.num_pairs, r.num_equal, r.num_unequal) == (5, 2, 3)


def test_whdr_tie_is_a_disagreement_on_ordinal_only_pairs() -> None:
    depth, pairs = _pairs_with_differences([0.0, 1e-9])
    r = whdr(depth, pairs, torch.tensor([[1, 1]]))
    assert r.whdr == 0.5 and r.num_equal == 0 and math.isnan(r.whdr_equal)


def test_whdr_ratio_rule() -> None:
    ratios = [1.5, 0.5, 1.05, 1.01, 0.95]
    depth = torch.ones(1, 2, 5, dtype=torch.float64)
    depth[0, 0] = torch.tensor(ratios, dtype=torch.float64)
    pairs = torch.tensor([[[0, i, 1, i] for i in range(5)]])
    ordinal = torch.tensor([[1, -1, 1, 0, 0]])
    # default 0.1 (MegaDepth's 1.1): predicted [+1, -1, 0, 0, 0] -> only pair 2 wrong
    r = whdr(depth, pairs, ordinal, rule="ratio")
    assert (r.whdr, r.whdr_equal, r.whdr_unequal) == pytest.approx((1 / 5, 0.0, 1 / 3))
    # 0.02: predicted [+1, -1, +1, 0, -1] -> only pair 4 wrong
    r = whdr(depth, pairs, ordinal, rule="ratio", threshold=0.02)
    assert (r.whdr, r.whdr_equal, r.whdr_unequal) == pytest.approx((1 / 5, 1 / 2, 0.0))
    # disparity = 1 / depth with inverse=True gives the same answers
    assert whdr(1 / depth, pairs, ordinal, rule="ratio", threshold=0.02, inverse=True) == r
    with pytest.raises(ValueError, match="strictly positive"):
        whdr(depth - 1.0, pairs, ordinal, rule="ratio")


def test_whdr_inverse_difference_and_batched_forms() -> None:
    depth, pairs_list, ordinal_list = _batch()
    expected = whdr(depth, pairs_list, ordinal_list)
    assert whdr(-depth, pairs_list, ordinal_list, inverse=True) == expected
    padded = torch.full((2, 3, 4), 99, dtype=torch.int64)
    padded[0], padded[1, :1] = pairs_list
    padded_ord = torch.full((2, 3), 7, dtype=torch.int64)
    padded_ord[0], padded_ord[1, :1] = ordinal_list
    mask = torch.tensor([[True, True, True], [True, False, False]])
    assert whdr(depth, padded, padded_ord, mask=mask) == expected
    assert expected.num_pairs == 4 and expected.num_equal == 1
    # pooled over the batch: the sum of per-image error counts over the total count
    per_image = [whdr(depth[i : i + 1], [pairs_list[i]], [ordinal_list[i]]) for i in range(2)]
    pooled = sum(p.whdr * p.num_pairs for p in per_image) / 4
    assert expected.whdr == pytest.approx(pooled)
    with pytest.raises(ValueError, match="non-negative"):
        whdr(depth, pairs_list, ordinal_list, weights=[torch.tensor([1.0, -1.0, 1.0]), torch.tensor([1.0])])
