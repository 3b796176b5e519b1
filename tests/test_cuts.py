"""Flow reliability (dynocc_data.generation.cuts): photometric error, blank frames and patch residuals with known answers."""

import cv2
import numpy as np
import pytest
import torch

from dynocc_data.generation.cuts import (
    blank_frames,
    patch_residuals,
    photometric_error,
    warp,
)


def texture(h: int, w: int, seed: int, sigma: float = 2.5) -> np.ndarray:
    """A smooth random RGB texture, float32 [H,W,3] in 0..1: blotches of high grey-level contrast, tinted."""
    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), sigma)
    base = (base - base.mean()) / base.std()
    grey = np.clip(0.5 + 0.25 * base, 0.0, 1.0)  # grey-level standard deviation about 0.25
    tint = rng.uniform(0.8, 1.0, 3).astype(np.float32)
    return grey[..., None] * tint


def as_batch(img: np.ndarray) -> torch.Tensor:
    """[H,W,3] float -> [1,3,H,W] tensor."""
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None]


def constant_flow(dx: float, dy: float, h: int, w: int) -> torch.Tensor:
    """[1,2,H,W] flow (dx, dy) everywhere."""
    return torch.tensor([dx, dy], dtype=torch.float32).view(1, 2, 1, 1).expand(1, 2, h, w).contiguous()


# a big texture; frames are crops of it, so that a "moved" frame shows real content everywhere
BIG = texture(200, 280, seed=0, sigma=4.0)
H, W = 160, 224
DX, DY = 5, -3  # content moves right by 5 and up by 3 between src and dst


def translated_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """src and dst (float RGB [1,3,H,W]) where dst(p) = src(p - d), d = (DX, DY): the true flow is d."""
    src = BIG[20:20 + H, 20:20 + W]
    dst = BIG[20 - DY:20 - DY + H, 20 - DX:20 - DX + W]
    return as_batch(src), as_batch(dst)


def test_warp_with_true_flow_reproduces_source():
    src, dst = translated_pair()
    back = warp(dst, constant_flow(DX, DY, H, W))
    inner = (slice(None), slice(None), slice(8, -8), slice(8, -8))  # away from the clamped border
    assert torch.allclose(back[inner], src[inner], atol=1e-5)


def test_photometric_error_true_flow_is_zero_wrong_flow_is_not():
    src, dst = translated_pair()
    good = photometric_error(src, dst, constant_flow(DX, DY, H, W))
    wrong = photometric_error(src, dst, constant_flow(0.0, 0.0, H, W))
    assert good.shape == (1,)
    assert good.item() < 0.01
    assert wrong.item() > 0.1  # the test has the contrast to tell a wrong flow


def test_photometric_error_uint8_frames_match_float_frames():
    src, dst = translated_pair()
    src8, dst8 = (src * 255).round().to(torch.uint8), (dst * 255).round().to(torch.uint8)
    flow = constant_flow(DX, DY, H, W)
    assert photometric_error(src8, dst8, flow).item() < 0.01
    flow0 = constant_flow(0.0, 0.0, H, W)
    assert photometric_error(src8, dst8, flow0).item() == pytest.approx(photometric_error(src, dst, flow0).item(),
                                                                        abs=0.02)


def test_photometric_error_across_a_shot_cut_is_large():
    # two unrelated scenes: no flow can map one onto the other
    a = as_batch(texture(H, W, seed=1))
    b = as_batch(texture(H, W, seed=2))
    err = photometric_error(a, b, constant_flow(0.0, 0.0, H, W))
    assert err.item() > 0.5
    # batched: a good pair and a cut pair are judged independently
    src, dst = translated_pair()
    both = photometric_error(torch.cat([src, a]), torch.cat([dst, b]),
                             torch.cat([constant_flow(DX, DY, H, W), constant_flow(0.0, 0.0, H, W)]))
    assert both[0].item() < 0.01 and both[1].item() > 0.5


def test_photometric_error_ignores_pixels_that_leave_the_frame():
    # a flow that sends every pixel outside the frame counts nothing (no division by zero)
    src, dst = translated_pair()
    err = photometric_error(src, dst, constant_flow(10.0 * W, 0.0, H, W))
    assert err.item() == 0.0


def test_blank_frames_single_colour_vs_textured():
    h, w = 96, 128
    frames = torch.zeros(4, 3, h, w, dtype=torch.uint8)
    frames[0] = 128  # grey
    frames[1, 0], frames[1, 1], frames[1, 2] = 200, 30, 90  # one non-grey colour
    frames[2] = torch.from_numpy((texture(h, w, seed=3) * 255).round().astype(np.uint8)).permute(2, 0, 1)
    noise = torch.from_numpy(np.random.default_rng(4).integers(-1, 2, (3, h, w))).to(torch.int16)
    frames[3] = (torch.tensor([40, 160, 90], dtype=torch.int16).view(3, 1, 1) + noise).to(torch.uint8)
    assert blank_frames(frames).tolist() == [True, True, False, True]  # sensor noise of ±1 is still blank
    assert blank_frames(frames, min_contrast=0.5).tolist() == [True, True, False, False]


def test_patch_residuals_known_values():
    h, w = 40, 60
    b = torch.zeros(3, dtype=torch.long)
    y = torch.tensor([10.0, 20.0, 25.5])
    x = torch.tensor([15.0, 30.0, 40.25])
    # a constant image: every motion explains it perfectly
    flat = torch.full((1, 3, h, w), 0.4)
    motions = [torch.zeros(3, 2), torch.tensor([[4.0, -2.0]] * 3)]
    for res in patch_residuals(flat, flat, b, y, x, motions, patch=1, step=2.0):
        assert torch.allclose(res, torch.zeros(3), atol=1e-7)
    # a horizontal ramp 0.01 * x: a motion of dx pixels costs exactly 0.01 * |dx| (bilinear sampling is exact)
    ramp = (torch.arange(w, dtype=torch.float32) * 0.01).view(1, 1, 1, w).expand(1, 3, h, w).contiguous()
    zero, right3, down5 = patch_residuals(ramp, ramp, b, y, x, [torch.zeros(3, 2), torch.tensor([[3.0, 0.0]] * 3),
                                                                torch.tensor([[0.0, 5.0]] * 3)], patch=1, step=1.0)
    assert torch.allclose(zero, torch.zeros(3), atol=1e-6)
    assert torch.allclose(right3, torch.full((3,), 0.03), atol=1e-6)
    assert torch.allclose(down5, torch.zeros(3), atol=1e-6)  # moving along the ramp's level lines costs nothing


def test_patch_residuals_true_motion_vs_wrong_motion():
    src, dst = translated_pair()
    n = 50
    gen = torch.Generator().manual_seed(0)
    y = 20 + torch.rand(n, generator=gen) * (H - 40)
    x = 20 + torch.rand(n, generator=gen) * (W - 40)
    b = torch.zeros(n, dtype=torch.long)
    true = torch.tensor([[float(DX), float(DY)]]).expand(n, 2)
    wrong = torch.tensor([[float(-DX), float(DY)]]).expand(n, 2)
    res_true, res_wrong, res_zero = patch_residuals(src, dst, b, y, x, [true, wrong, torch.zeros(n, 2)],
                                                    patch=1, step=2.0)
    assert res_true.max().item() < 1e-5
    assert res_wrong.min().item() > 0.0
    assert res_wrong.mean().item() > 0.05 and res_zero.mean().item() > 0.05
