"""ssi_loss (MiDaS scale-and-shift-invariant loss + gradient matching): values and gradients by hand."""

from __future__ import annotations

import pytest
import torch

from dynocc_data.losses import scale_and_shift, ssi_loss


def test_perfect_up_to_scale_and_shift_is_zero():
    torch.manual_seed(0)
    prediction = torch.rand(2, 1, 9, 11, dtype=torch.float64, requires_grad=True)
    target = 2.5 * prediction.detach() + 3.0
    mask = torch.rand(2, 1, 9, 11) > 0.2
    assert float(ssi_loss(prediction, target, mask).detach()) == pytest.approx(0.0, abs=1e-12)
    # the data term is smooth there: zero gradient (the L1 gradient term's is a subgradient at residuals ~1e-16)
    ssi_loss(prediction, target, mask, alpha=0.0).backward()
    assert float(prediction.grad.abs().max()) < 1e-9


def test_hand_computed_1x3_case():
    # p = [0, 1, 2], g = [0, 0, 3]: s = cov/var = 3/2, t = 1 - 1.5 = -0.5; aligned [-0.5, 1, 2.5];
    # r = [-0.5, 1, -0.5]: data = (0.25 + 1 + 0.25) / (2 * 3) = 0.25;
    # gradient term: scale 1: (|1.5| + |-1.5|) / 3 = 1; step 2: r = [-0.5, -0.5] -> 0; steps 4, 8: one pixel -> 0
    p = torch.tensor([[[0.0, 1.0, 2.0]]], dtype=torch.float64, requires_grad=True)
    g = torch.tensor([[[0.0, 0.0, 3.0]]], dtype=torch.float64)
    mask = torch.ones(1, 1, 3, dtype=torch.bool)
    scale, shift = scale_and_shift(p.detach(), g, mask)
    assert scale.tolist() == [1.5] and shift.tolist() == [-0.5]
    assert float(ssi_loss(p, g, mask, alpha=0.0)) == pytest.approx(0.25)
    assert float(ssi_loss(p, g, mask)) == pytest.approx(0.25 + 0.5 * 1.0)
    assert float(ssi_loss(p, g, mask, alpha=1.0, scales=1)) == pytest.approx(1.25)
    # gradient of the data term (envelope theorem, s and t at their optimum): d/dp = 2 s r / (2 M) = s r / 3
    ssi_loss(p, g, mask, alpha=0.0).backward()
    assert torch.allclose(p.grad, torch.tensor([[[-0.25, 0.5, -0.25]]], dtype=torch.float64))


def test_gradients_match_finite_differences():
    torch.manual_seed(1)
    p = torch.rand(2, 6, 7, dtype=torch.float64, requires_grad=True)
    g = torch.rand(2, 6, 7, dtype=torch.float64)
    mask = torch.rand(2, 6, 7) > 0.3
    # the |.| of the gradient term has kinks only where two residual differences are equal: not at random points
    assert torch.autograd.gradcheck(lambda x: ssi_loss(x, g, mask), (p,), eps=1e-6, atol=1e-5)


def test_mask_and_weights():
    torch.manual_seed(2)
    p = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    g = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    mask = torch.rand(2, 1, 8, 8) > 0.4
    base = ssi_loss(p, g, mask)
    # what lies outside the mask is never read (NaN included)
    assert torch.equal(ssi_loss(p, torch.where(mask, g, torch.full_like(g, float("nan"))), mask), base)
    assert float(ssi_loss(p, g, mask, weights=torch.tensor([2.0, 2.0]))) == pytest.approx(2 * float(base))
    # weight 0 on image 1 = image 0's summed terms over the batch's pixel counts
    only0 = ssi_loss(p, g, mask & torch.tensor([True, False]).view(2, 1, 1, 1), alpha=0.0)
    m0, m = float(mask[0].sum()), float(mask.sum())
    assert float(ssi_loss(p, g, mask, alpha=0.0, weights=torch.tensor([1.0, 0.0]))) == pytest.approx(
        float(only0) * m0 / m)
    # an image with nothing in its mask contributes nothing and no NaN
    empty = torch.zeros_like(mask)
    x = p.clone().requires_grad_(True)
    loss = ssi_loss(x, g, empty)
    loss.backward()
    assert float(loss) == 0.0 and torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match="one shape"):
        ssi_loss(p, g[:, :, :4], mask)
