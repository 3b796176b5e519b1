"""Dense targets (depth, valid_mask) stay aligned with the image through every transform, on both paths.

The known pattern: the image's red channel is ``5 x`` and green ``6 y`` of each pixel's own position, and depth is
``1000 y + x + 1``; invalid pixels are those with ``(x + y) % 7 == 0``. After any geometric transform, at every
valid output pixel the position decoded from the image must be the one decoded from the depth (exactly when the
image is resampled by nearest neighbour too, within a pixel when bilinear), and validity must be that pixel's.
"""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms import v2

from dynocc_data.collate import collate_pairs
from dynocc_data.transforms import PairTransform, create_transform

H, W = 40, 48
NEAREST = v2.InterpolationMode.NEAREST_EXACT


def pattern_item(height: int = H, width: int = W) -> dict:
    y, x = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    image = torch.stack([5 * x, 6 * y, torch.full_like(x, 200)]).to(torch.uint8)
    depth = (1000 * y + x + 1).to(torch.float32)[None]
    valid = ((x + y) % 7 != 0)[None]
    pairs = torch.tensor([[1, 2, 30, 40], [10, 10, 20, 20]])
    return {"image": image, "pairs": pairs, "ordinal": torch.tensor([1, -1]), "depth": depth * valid,
            "valid_mask": valid, "meta": {"key": "pattern", "depth_kind": "depth"}}


def positions(out: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, y) decoded from the image, (x, y) decoded from the depth (both float [h,w])."""
    image = out["image"].to(torch.float32)
    code = out["depth"][0].to(torch.int64) - 1
    return image[0] / 5, image[1] / 6, (code % 1000).float(), (code // 1000).float()


def check_aligned(out: dict, *, tolerance: float = 0.0, margin: int = 0) -> int:
    """Assert the image and the dense targets agree at every valid pixel; returns the number of valid pixels."""
    assert out["depth"].shape == out["valid_mask"].shape == (1, *out["image"].shape[-2:])
    assert out["depth"].dtype == torch.float32 and out["valid_mask"].dtype == torch.bool
    xi, yi, xd, yd = positions(out)
    valid = out["valid_mask"][0].clone()
    if margin:
        valid[:margin], valid[-margin:], valid[:, :margin], valid[:, -margin:] = False, False, False, False
    assert int(valid.sum()) > 0
    assert float((xi - xd)[valid].abs().max()) <= tolerance
    assert float((yi - yd)[valid].abs().max()) <= tolerance
    # validity is the source pixel's: the invalid diagonals never come back as valid pixels
    assert not bool((((xd + yd) % 7 == 0) & out["valid_mask"][0]).any())
    assert bool((out["depth"][~out["valid_mask"]] == 0).all())
    return int(valid.sum())


PIXEL_EXACT = [
    v2.RandomCrop((24, 30)),
    v2.CenterCrop((20, 20)),
    v2.Pad([3, 5, 7, 2]),
    v2.RandomCrop((50, 60), pad_if_needed=True),
    v2.RandomHorizontalFlip(1.0),
    v2.RandomVerticalFlip(1.0),
    [v2.RandomCrop((30, 36)), v2.RandomHorizontalFlip(1.0), v2.ColorJitter(0.0, 0.0, 0.0)],
]
RESAMPLING = [
    v2.Resize((80, 96), interpolation=NEAREST),
    v2.Resize((17, 23), interpolation=NEAREST),
    v2.Resize(25, interpolation=NEAREST),
    v2.RandomResizedCrop((32, 32), scale=(0.3, 0.6), interpolation=NEAREST),
    v2.RandomRotation(20, interpolation=v2.InterpolationMode.NEAREST),
    v2.RandomAffine(10, translate=(0.1, 0.1), scale=(0.8, 1.2), interpolation=v2.InterpolationMode.NEAREST),
    [v2.RandomRotation(10, interpolation=v2.InterpolationMode.NEAREST),
     v2.RandomResizedCrop((36, 44), scale=(0.4, 0.8), interpolation=NEAREST), v2.RandomHorizontalFlip(1.0)],
]


@pytest.mark.parametrize("fast", [True, False], ids=["lean", "v2"])
@pytest.mark.parametrize("transform", PIXEL_EXACT + RESAMPLING, ids=repr)
def test_dense_targets_follow_the_image_exactly(transform, fast):
    torch.manual_seed(0)
    for _ in range(3):
        check_aligned(PairTransform(transform, fast=fast)(pattern_item()))


@pytest.mark.parametrize("transform", PIXEL_EXACT + RESAMPLING, ids=repr)
def test_lean_and_v2_paths_give_the_same_dense_targets(transform):
    torch.manual_seed(1)
    lean = PairTransform(transform)(pattern_item())
    torch.manual_seed(1)
    full = PairTransform(transform, fast=False)(pattern_item())
    for name in ("image", "depth", "valid_mask", "pairs"):
        assert torch.equal(lean[name], full[name]), name


def test_crop_and_flip_move_depth_to_known_pixels():
    out = PairTransform([v2.CenterCrop((20, 20)), v2.RandomHorizontalFlip(1.0)])(pattern_item())
    # centre crop of 40x48 to 20x20 starts at (10, 14); the flip maps output column j to crop column 19 - j
    y, x = 3, 5
    src_y, src_x = 10 + y, 14 + (19 - x)
    assert float(out["depth"][0, y, x]) == (1000 * src_y + src_x + 1) * ((src_x + src_y) % 7 != 0)


def test_resize_upscale_picks_the_source_pixel_under_each_centre():
    out = PairTransform(v2.Resize((80, 96), interpolation="bilinear"))(pattern_item())
    # nearest-exact: output pixel i covers source pixel floor((i + 0.5) / 2) = i // 2
    code = out["depth"][0].to(torch.int64) - 1
    valid = out["valid_mask"][0]
    xs = torch.arange(96).expand(80, 96) // 2
    ys = torch.arange(80)[:, None].expand(80, 96) // 2
    assert torch.equal((code % 1000)[valid], xs[valid]) and torch.equal((code // 1000)[valid], ys[valid])


@pytest.mark.parametrize("transform", [
    v2.Resize((80, 96)), v2.Resize((20, 24)), v2.RandomResizedCrop((32, 32), scale=(0.3, 0.6)),
    v2.RandomRotation(15), v2.RandomAffine(8, translate=(0.1, 0.1), scale=(0.9, 1.1)),
], ids=repr)
def test_bilinear_image_stays_within_a_pixel_of_the_nearest_depth(transform):
    torch.manual_seed(2)
    for _ in range(3):
        # interior pixels whose neighbourhood is inside the image: there the bilinear image blends two source
        # pixels around the point whose pixel the depth takes
        item = pattern_item()
        out = PairTransform(transform)(item)
        xi, yi, xd, yd = positions(out)
        valid = out["valid_mask"][0] & (xd > 0) & (xd < W - 1) & (yd > 0) & (yd < H - 1)
        valid[:2], valid[-2:], valid[:, :2], valid[:, -2:] = False, False, False, False
        # bilinear pixels next to the rotated-in fill blend in the fill colour: keep those whose 3x3 window
        # is all covered
        covered = torch.nn.functional.max_pool2d((~out["valid_mask"] & (out["image"][2:3] != 200)).float()[None],
                                                 3, 1, 1)[0, 0] == 0
        valid &= covered
        assert int(valid.sum()) > 50
        assert float((xi - xd)[valid].abs().max()) <= 1.0 and float((yi - yd)[valid].abs().max()) <= 1.0


@pytest.mark.parametrize("fill", [0, 1, 2, 255])
def test_filled_pixels_are_invalid_whatever_the_fill(fill):
    item = pattern_item()
    item["valid_mask"] = torch.ones_like(item["valid_mask"])
    item["depth"] = (item["depth"] > 0) * 1.0 + 1.0
    out = PairTransform(v2.RandomRotation((30, 30), fill=fill))(item)
    covered = out["valid_mask"][0]
    # the rotated-in corners are filled: invalid, depth 0; the middle is covered
    assert not covered[0, 0] and not covered[-1, -1] and covered[H // 2, W // 2]
    assert bool((out["depth"][0][~covered] == 0).all()) and bool((out["depth"][0][covered] >= 1).all())
    padded = PairTransform(v2.Pad(4, fill=fill))(item)
    assert int(padded["valid_mask"].sum()) == H * W and not padded["valid_mask"][0, :4].any()


def test_colour_and_float_steps_leave_depth_alone():
    item = pattern_item()
    out = create_transform(train=False, size=(H, W), normalize=True)(item)
    assert out["image"].dtype == torch.float32
    assert torch.equal(out["depth"], item["depth"]) and torch.equal(out["valid_mask"], item["valid_mask"])
    out = PairTransform([v2.ColorJitter(0.5, 0.5, 0.5, 0.1), v2.RandomGrayscale(1.0)])(item)
    assert torch.equal(out["depth"], item["depth"])


def test_create_transform_carries_depth_for_training():
    torch.manual_seed(3)
    transform = create_transform(train=True, size=(24, 32), scale=(0.2, 0.5), interpolation="nearest-exact",
                                 color_jitter=0.0, to_float=False)
    for _ in range(5):
        check_aligned(transform(pattern_item()))


def test_depth_alone_or_mask_alone():
    item = pattern_item()
    only_depth = {k: v for k, v in item.items() if k != "valid_mask"}
    out = PairTransform(v2.Pad(2))(only_depth)
    assert out["valid_mask"].sum() == H * W and torch.equal(out["depth"][:, 2:-2, 2:-2], item["depth"])
    only_mask = {k: v for k, v in item.items() if k != "depth"}
    out = PairTransform(v2.RandomHorizontalFlip(1.0))(only_mask)
    assert "depth" not in out and torch.equal(out["valid_mask"], item["valid_mask"].flip(-1))


def test_bad_dense_fields_are_rejected():
    item = pattern_item()
    with pytest.raises(ValueError, match="depth must be a tensor"):
        PairTransform(v2.Pad(1))({**item, "depth": item["depth"][:, :10]})
    with pytest.raises(ValueError, match="valid_mask must be bool"):
        PairTransform(v2.Pad(1))({**item, "valid_mask": item["valid_mask"].float()})


def test_collate_stacks_dense_fields():
    torch.manual_seed(4)
    transform = create_transform(train=True, size=(24, 32))
    items = [transform(pattern_item()) for _ in range(3)]
    batch = collate_pairs(items)
    assert batch["depth"].shape == (3, 1, 24, 32) and batch["depth"].dtype == torch.float32
    assert batch["valid_mask"].shape == (3, 1, 24, 32) and batch["valid_mask"].dtype == torch.bool
    assert torch.equal(batch["depth"][1], items[1]["depth"])
    assert [m["depth_kind"] for m in batch["meta"]] == ["depth"] * 3
    # items without depth in a batch with depth: zeros and an all-False mask (no supervision there)
    bare = {k: v for k, v in items[2].items() if k not in ("depth", "valid_mask")}
    mixed = collate_pairs([items[0], bare])
    assert torch.equal(mixed["depth"][1], torch.zeros(1, 24, 32)) and not mixed["valid_mask"][1].any()
    assert "depth" not in collate_pairs([bare, bare])
