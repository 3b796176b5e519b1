"""Pair-preserving transforms: every surviving point must sit on the same image content as before.

The test images encode each pixel's own coordinates (red = row, green = column, blue = 255), so reading the
transformed image at a transformed point says exactly which source pixel it shows.  In the geometric tests the
``ordinal`` carries each pair's index, which makes the alignment of labels with surviving pairs checkable.
"""

from __future__ import annotations

import math

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from dynocc_data.errors import InputError
from dynocc_data.transforms import (
    PairTransform,
    PhotometricAugment,
    RandomHorizontalFlip,
    RandomResizedCrop,
    RandomRotation,
    Resize,
    ToFloatImage,
    TransformConfig,
    create_transform,
)

NEAREST_EXACT = "nearest-exact"


def coord_image(height: int, width: int) -> torch.Tensor:
    """uint8 [3,H,W]: red = row, green = column, blue = 255 (fill areas of rotations read blue = 0)."""
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack([yy, xx, torch.full_like(yy, 255)]).to(torch.uint8)


def random_pairs(height: int, width: int, n: int, seed: int = 0, margin: int = 0) -> torch.Tensor:
    """int64 [n,4] pairs of distinct pixels at least ``margin`` px from the border."""
    g = torch.Generator().manual_seed(seed)
    pairs = torch.stack([torch.randint(margin, height - margin, (n,), generator=g),
                         torch.randint(margin, width - margin, (n,), generator=g),
                         torch.randint(margin, height - margin, (n,), generator=g),
                         torch.randint(margin, width - margin, (n,), generator=g)], 1)
    return pairs[(pairs[:, :2] != pairs[:, 2:]).any(1)]


def make_item(image: torch.Tensor, pairs: torch.Tensor, ordinal: torch.Tensor | None = None, **extra) -> dict:
    """An item per docs/FORMAT.md; ordinal defaults to the pair index."""
    ordinal = torch.arange(len(pairs)) if ordinal is None else ordinal
    meta = {"source": "dynocc", "key": "clip-0000_000003", "video": "clip.mp4", "frame": 3,
            "orig_size": tuple(image.shape[-2:])}
    return {"image": image, "pairs": pairs, "ordinal": ordinal, "meta": meta, **extra}


def shown(image: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """The source (y, x) encoded at the [K,2] (y, x) pixels of a coordinate image."""
    return image[:2, points[:, 0], points[:, 1]].T.to(torch.int64)


def assert_same_content(out: dict, pairs: torch.Tensor, tolerance: int = 0) -> None:
    """Each surviving pair shows (within ``tolerance`` px) the pixels of the original pair its ordinal names."""
    src = pairs[out["ordinal"]]
    for ends in (slice(0, 2), slice(2, 4)):
        error = (shown(out["image"], out["pairs"][:, ends]) - src[:, ends]).abs().amax(1)
        assert error.numel() == 0 or int(error.max()) <= tolerance


def test_hflip_mirrors_points_and_keeps_labels():
    image, pairs = coord_image(20, 30), random_pairs(20, 30, 200)
    ordinal = torch.randint(-1, 2, (len(pairs),), generator=torch.Generator().manual_seed(1))
    out = RandomHorizontalFlip(p=1.0)(make_item(image, pairs, ordinal))
    expected = pairs.clone()
    expected[:, [1, 3]] = 29 - pairs[:, [1, 3]]
    assert torch.equal(out["pairs"], expected)
    assert torch.equal(out["ordinal"], ordinal)  # depth order does not care about mirroring
    assert out["pairs"].dtype == torch.int64 and out["image"].dtype == torch.uint8
    assert torch.equal(shown(out["image"], out["pairs"][:, :2]), pairs[:, :2])


def test_vflip_through_plain_v2_transform_is_exact():
    image, pairs = coord_image(17, 23), random_pairs(17, 23, 100)
    out = PairTransform(v2.RandomVerticalFlip(p=1.0))(make_item(image, pairs))
    expected = pairs.clone()
    expected[:, [0, 2]] = 16 - pairs[:, [0, 2]]
    assert torch.equal(out["pairs"], expected)


def test_input_item_is_not_modified_and_other_fields_pass_through():
    image, pairs = coord_image(10, 12), random_pairs(10, 12, 20)
    item = make_item(image, pairs, extra_field="kept")
    before = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in item.items()}
    out = RandomHorizontalFlip(p=1.0)(item)
    assert all(torch.equal(item[k], before[k]) for k in ("image", "pairs", "ordinal"))
    assert out["meta"] == item["meta"] and out["extra_field"] == "kept"


@pytest.mark.parametrize("size", [(41, 53), (60, 30), 48])
def test_resize_upscale_keeps_content_exactly(size):
    image, pairs = coord_image(24, 30), random_pairs(24, 30, 300)
    out = Resize(size, interpolation=NEAREST_EXACT)(make_item(image, pairs))
    expected_size = (size, size * 30 // 24) if isinstance(size, int) else size  # int: shorter side
    assert tuple(out["image"].shape) == (3, *expected_size)
    assert torch.equal(out["ordinal"], torch.arange(len(pairs)))  # upscaling never drops or merges
    assert_same_content(out, pairs)


def test_resize_downscale_maps_blocks_and_drops_collapsed_pairs():
    # 4x4 blocks of one colour each: a 4x downscale must put every point on its own block's pixel.
    block = coord_image(8, 10)
    image = block.repeat_interleave(4, 1).repeat_interleave(4, 2)  # 32x40, block (i, j) shows (i, j)
    pairs = random_pairs(32, 40, 400, seed=3)
    out = Resize((8, 10), interpolation=NEAREST_EXACT)(make_item(image, pairs))
    blocks = pairs // 4
    distinct = (blocks[:, :2] != blocks[:, 2:]).any(1)
    assert torch.equal(out["ordinal"], torch.nonzero(distinct).flatten())  # same-pixel pairs dropped whole
    assert torch.equal(out["pairs"], blocks[distinct])
    assert 0 < len(out["pairs"]) < len(pairs)


@pytest.mark.parametrize("seed", range(4))
def test_random_resized_crop_keeps_content_and_drops_pairs_outside_whole(seed):
    image, pairs = coord_image(32, 32), random_pairs(32, 32, 400, seed=seed)
    torch.manual_seed(seed)
    out = RandomResizedCrop((40, 48), scale=(0.2, 0.6), interpolation=NEAREST_EXACT)(make_item(image, pairs))
    assert tuple(out["image"].shape) == (3, 40, 48)
    assert_same_content(out, pairs)  # crops of <= 32 px blown up to >= 40 px: exact
    # The crop box is what the output shows; a pair survives exactly when both ends lie in it.
    rows, cols = out["image"][0].long(), out["image"][1].long()
    y0, y1, x0, x1 = rows.min(), rows.max(), cols.min(), cols.max()
    inside = ((pairs[:, [0, 2]] >= y0) & (pairs[:, [0, 2]] <= y1) & (pairs[:, [1, 3]] >= x0)
              & (pairs[:, [1, 3]] <= x1)).all(1)
    assert torch.equal(out["ordinal"], torch.nonzero(inside).flatten())
    assert len(out["ordinal"]) < len(pairs)


def test_center_crop_drops_a_pair_when_either_point_leaves():
    image = coord_image(20, 20)
    pairs = torch.tensor([[5, 5, 14, 14], [1, 10, 10, 10], [10, 10, 10, 18], [8, 9, 11, 12]])
    ordinal = torch.tensor([1, -1, 1, -1])
    out = PairTransform(v2.CenterCrop(10))(make_item(image, pairs, ordinal))  # keeps rows/cols 5..14
    assert torch.equal(out["pairs"], torch.tensor([[0, 0, 9, 9], [3, 4, 6, 7]]))
    assert torch.equal(out["ordinal"], torch.tensor([1, -1]))


def test_rotation_by_90_degrees_is_exact_and_drops_pairs_rotated_out():
    image, pairs = coord_image(20, 28), random_pairs(20, 28, 400, seed=5)
    out = RandomRotation((90, 90), interpolation="nearest")(make_item(image, pairs))
    assert tuple(out["image"].shape) == (3, 20, 28)
    assert_same_content(out, pairs)
    # Source pixels still visible (blue = 255; the fill is 0): survivors are the pairs with both ends visible.
    visible = torch.zeros(20, 28, dtype=torch.bool)
    seen = out["image"][2] == 255
    visible[out["image"][0][seen].long(), out["image"][1][seen].long()] = True
    both = visible[pairs[:, 0], pairs[:, 1]] & visible[pairs[:, 2], pairs[:, 3]]
    assert torch.equal(out["ordinal"], torch.nonzero(both).flatten())
    assert 0 < len(out["ordinal"]) < len(pairs)


def test_small_rotation_keeps_points_within_a_pixel_of_their_content():
    image, pairs = coord_image(40, 48), random_pairs(40, 48, 500, seed=6, margin=1)
    torch.manual_seed(0)
    out = RandomRotation(8.0, interpolation="nearest")(make_item(image, pairs))
    assert len(out["pairs"]) > 0.8 * len(pairs)
    assert (out["image"][2, out["pairs"][:, 0], out["pairs"][:, 1]] == 255).all()  # never on the fill
    assert_same_content(out, pairs, tolerance=1)  # nearest resampling of a rotated grid: +-1 px at most


def test_composed_geometry_rounds_once_and_stays_exact():
    image, pairs = coord_image(16, 16), random_pairs(16, 16, 200, seed=7)
    steps = [RandomHorizontalFlip(p=1.0), v2.RandomRotation((90, 90)), Resize(40, interpolation=NEAREST_EXACT)]
    out = PairTransform(steps)(make_item(image, pairs))
    assert tuple(out["image"].shape) == (3, 40, 40)
    assert torch.equal(out["ordinal"], torch.arange(len(pairs)))
    assert_same_content(out, pairs)


def boundary_dict(y, x, ny, nx) -> dict[str, torch.Tensor]:
    """A boundary annotation with the FORMAT.md fields (confidence, segment, jump filled in)."""
    m = len(y)
    return {"y": torch.tensor(y, dtype=torch.float32), "x": torch.tensor(x, dtype=torch.float32),
            "ny": torch.tensor(ny, dtype=torch.float32), "nx": torch.tensor(nx, dtype=torch.float32),
            "confidence": torch.linspace(0.5, 1.0, m), "segment": torch.arange(m, dtype=torch.int64),
            "jump": torch.full((m,), 2.0)}


def test_boundary_normals_point_the_mirrored_way_after_hflip():
    s = 1 / math.sqrt(2)
    boundary = boundary_dict([3.0, 10.5, 7.25], [2.0, 20.0, 15.5], [0.0, s, -1.0], [1.0, s, 0.0])
    out = RandomHorizontalFlip(p=1.0)(make_item(coord_image(16, 24), torch.zeros(0, 4, dtype=torch.int64),
                                                boundary=boundary))
    b = out["boundary"]
    torch.testing.assert_close(b["x"], 23 - boundary["x"])
    torch.testing.assert_close(b["y"], boundary["y"])
    torch.testing.assert_close(b["nx"], -boundary["nx"])
    torch.testing.assert_close(b["ny"], boundary["ny"])
    assert torch.equal(b["confidence"], boundary["confidence"]) and torch.equal(b["segment"], boundary["segment"])
    torch.testing.assert_close(b["jump"], boundary["jump"])  # a mirror keeps lengths
    assert out["pairs"].shape == (0, 4) and out["ordinal"].shape == (0,)


def test_boundary_normal_stays_perpendicular_under_anisotropic_resize():
    # Boundary along the diagonal y = x with normal (ny, nx) = (-1, 1)/sqrt(2).  Doubling the width turns it into
    # y = x/2 (tangent (x, y) ~ (2, 1)), whose normal towards the same side is (ny, nx) = (-2, 1)/sqrt(5).
    t = [2.0, 5.0, 9.0]
    s = 1 / math.sqrt(2)
    boundary = boundary_dict(t, t, [-s] * 3, [s] * 3)
    out = Resize((12, 24))(make_item(coord_image(12, 12), torch.zeros(0, 4, dtype=torch.int64), boundary=boundary))
    b = out["boundary"]
    torch.testing.assert_close(b["x"], 2 * torch.tensor(t) + 0.5)  # pixel centres: (x + 0.5) * 2 - 0.5
    torch.testing.assert_close(b["y"], torch.tensor(t))
    torch.testing.assert_close(b["nx"], torch.full((3,), 1 / math.sqrt(5)))
    torch.testing.assert_close(b["ny"], torch.full((3,), -2 / math.sqrt(5)))
    torch.testing.assert_close(b["jump"], torch.full((3,), 2.0 * math.sqrt(2)))  # sqrt(det) = sqrt(2)


def test_boundary_rows_outside_the_crop_are_dropped_with_all_fields():
    boundary = boundary_dict([1.0, 8.0, 12.0], [8.0, 8.0, 18.5], [1.0, 0.0, 0.0], [0.0, 1.0, -1.0])
    out = PairTransform(v2.CenterCrop(10))(make_item(coord_image(20, 20), torch.zeros(0, 4, dtype=torch.int64),
                                                     boundary=boundary))
    b = out["boundary"]  # crop keeps rows/cols 5..14 (pixel centres 4.5 .. 14.5 are the edges)
    assert torch.equal(b["segment"], torch.tensor([1]))
    torch.testing.assert_close(b["y"], torch.tensor([3.0]))
    torch.testing.assert_close(b["x"], torch.tensor([3.0]))
    torch.testing.assert_close(torch.stack([b["ny"], b["nx"]], 1), torch.tensor([[0.0, 1.0]]))


def test_photometric_changes_only_the_image():
    image, pairs = coord_image(12, 14), random_pairs(12, 14, 30)
    torch.manual_seed(0)
    out = PhotometricAugment(0.5, 0.5, 0.5, 0.1, grayscale=0.0)(make_item(image, pairs))
    assert out["image"].dtype == torch.uint8 and out["image"].shape == image.shape
    assert not torch.equal(out["image"], image)
    assert torch.equal(out["pairs"], pairs) and torch.equal(out["ordinal"], torch.arange(len(pairs)))


def test_to_float_image_scales_and_normalises():
    image = coord_image(4, 5)
    plain = ToFloatImage()(make_item(image, torch.zeros(0, 4, dtype=torch.int64)))["image"]
    torch.testing.assert_close(plain, image.float() / 255)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    normed = ToFloatImage(mean, std)(make_item(image, torch.zeros(0, 4, dtype=torch.int64)))["image"]
    torch.testing.assert_close(normed, (plain - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None])
    with pytest.raises(ValueError, match="both mean and std"):
        ToFloatImage(mean=mean)


def test_create_transform_train_output_contract():
    image, pairs = coord_image(60, 80), random_pairs(60, 80, 300)
    outputs = {}
    for normalize in (False, True):
        torch.manual_seed(3)  # same seed: same crop, flip and jitter
        outputs[normalize] = create_transform(train=True, size=(32, 48), rotation=5.0,
                                              normalize=normalize)(make_item(image, pairs))
    for out in outputs.values():
        assert out["image"].dtype == torch.float32 and tuple(out["image"].shape) == (3, 32, 48)
        assert out["pairs"].dtype == torch.int64 and out["ordinal"].dtype == torch.int64
        assert len(out["pairs"]) == len(out["ordinal"]) > 0
        assert ((out["pairs"] >= 0) & (out["pairs"] < torch.tensor([32, 48, 32, 48]))).all()
    raw = outputs[False]["image"]
    assert 0.0 <= float(raw.min()) and float(raw.max()) <= 1.0
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    torch.testing.assert_close(outputs[True]["image"], (raw - mean) / std)
    assert torch.equal(outputs[True]["pairs"], outputs[False]["pairs"])
    assert tuple(create_transform(train=True, size=24)(make_item(image, pairs))["image"].shape) == (3, 24, 24)


def test_create_transform_eval_resizes_without_dropping():
    image, pairs = coord_image(30, 40), random_pairs(30, 40, 100)
    out = create_transform(train=False, size=(60, 80), interpolation=NEAREST_EXACT)(make_item(image, pairs))
    assert out["image"].dtype == torch.float32 and tuple(out["image"].shape) == (3, 60, 80)
    assert torch.equal(out["pairs"] // 2, pairs)  # exact 2x: pixel p becomes pixels 2p and 2p+1
    assert torch.equal(out["ordinal"], torch.arange(len(pairs)))
    shorter = create_transform(train=False, size=15)(make_item(image, pairs))
    assert tuple(shorter["image"].shape) == (3, 15, 20)
    square = create_transform(train=False, size=15, center_crop=True)(make_item(image, pairs))
    assert tuple(square["image"].shape) == (3, 15, 15)


def test_create_transform_accepts_a_config_with_overrides_and_rejects_bad_options():
    config = TransformConfig(train=True, size=16, hflip=1.0, color_jitter=0.0, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    image, pairs = coord_image(16, 16), random_pairs(16, 16, 50)
    flipped = create_transform(config)(make_item(image, pairs))
    kept = create_transform(config, hflip=0.0)(make_item(image, pairs))
    assert torch.equal(kept["pairs"], pairs)  # full-size crop, no flip: identity geometry
    assert torch.equal(flipped["pairs"][:, [1, 3]], 15 - pairs[:, [1, 3]])
    with pytest.raises(ValueError, match="scale"):
        create_transform(train=True, size=16, scale=(0.5, 1.5))
    with pytest.raises(ValueError, match="interpolation"):
        create_transform(train=False, size=16, interpolation="cubic-ish")


def test_same_seed_gives_same_output():
    image, pairs = coord_image(40, 40), random_pairs(40, 40, 200)
    transform = create_transform(train=True, size=24, rotation=10.0)
    results = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        results.append(transform(make_item(image, pairs)))
    assert torch.equal(results[0]["image"], results[1]["image"])
    assert torch.equal(results[0]["pairs"], results[1]["pairs"])
    assert not torch.equal(results[0]["image"], results[2]["image"])


def test_bad_items_raise_one_line_errors_naming_the_sample():
    image = coord_image(10, 10)
    with pytest.raises(InputError, match=r"clip-0000_000003: pairs lie outside the 10x10 image"):
        RandomHorizontalFlip()(make_item(image, torch.tensor([[0, 0, 10, 3]])))
    with pytest.raises(InputError, match="ordinal must be"):
        RandomHorizontalFlip()(make_item(image, torch.tensor([[0, 0, 1, 3]]), torch.tensor([1, 1])))
    with pytest.raises(InputError, match="no tensor 'pairs'"):
        RandomHorizontalFlip()({"image": image, "ordinal": torch.zeros(0), "meta": {"key": "k"}})
    image_only = v2.Lambda(lambda img: F.resize(img, [5, 5]), tv_tensors.Image)
    with pytest.raises(InputError, match="no KeyPoints support") as err:
        PairTransform(image_only)(make_item(image, torch.tensor([[0, 0, 1, 3]])))
    assert "\n" not in str(err.value)


def test_real_frame_flip_and_upscale_keep_pixel_values(shared_videos):
    av = pytest.importorskip("av")
    with av.open(str(shared_videos / "carphone.mp4")) as container:
        frame = next(container.decode(video=0)).to_ndarray(format="rgb24")
    image = torch.from_numpy(frame).permute(2, 0, 1).contiguous()
    height, width = image.shape[-2:]
    pairs = random_pairs(height, width, 500, seed=9)
    out = PairTransform([v2.RandomHorizontalFlip(1.0), Resize((2 * height + 3, 2 * width - 5),
                                                              interpolation=NEAREST_EXACT)])(make_item(image, pairs))
    assert torch.equal(out["ordinal"], torch.arange(len(pairs)))
    for ends in (slice(0, 2), slice(2, 4)):
        before = image[:, pairs[:, ends][:, 0], pairs[:, ends][:, 1]]
        after = out["image"][:, out["pairs"][:, ends][:, 0], out["pairs"][:, ends][:, 1]]
        assert torch.equal(before, after)


@pytest.mark.parametrize("options", [
    dict(rotation=10.0, color_jitter=0.4, grayscale=0.2, normalize=True),
    dict(crop="random", hflip=0.5, color_jitter=0.0),  # pixel-exact parts: points in v2's pixel-centre convention
    dict(crop="random", hflip=0.5, color_jitter=0.4, to_float=True, normalize=True),
])
def test_lean_path_matches_v2_compose_exactly(options):
    # PairTransform runs stock v2 parts itself; it must draw the same parameters and give the same output as
    # v2.Compose on corner-convention key points (the boundary up to float rounding of the half-pixel shift)
    image, pairs = coord_image(48, 64), random_pairs(48, 64, 200)
    g = torch.Generator().manual_seed(1)
    angle = torch.rand(300, generator=g) * 2 * math.pi
    boundary = boundary_dict((torch.rand(300, generator=g) * 48).tolist(), (torch.rand(300, generator=g) * 64).tolist(),
                             angle.sin().tolist(), angle.cos().tolist())
    fast = create_transform(train=True, size=(32, 40), **options)
    slow = PairTransform(fast.transform, fast=False)
    assert fast._steps is not None and slow._steps is None
    for seed in range(6):
        torch.manual_seed(seed)
        a = fast(make_item(image, pairs, boundary=boundary))
        torch.manual_seed(seed)
        b = slow(make_item(image, pairs, boundary=boundary))
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["pairs"], b["pairs"])
        assert torch.equal(a["ordinal"], b["ordinal"])
        assert torch.equal(a["boundary"]["segment"], b["boundary"]["segment"])
        for name in ("x", "y", "nx", "ny", "jump"):
            torch.testing.assert_close(a["boundary"][name], b["boundary"][name], atol=1e-4, rtol=0)


def test_random_crop_keeps_pixels_exactly_and_uint8_without_to_float():
    image, pairs = coord_image(40, 60), random_pairs(40, 60, 400)
    transform = create_transform(train=True, size=(24, 30), crop="random", hflip=0.5, color_jitter=0.0,
                                 to_float=False)
    flipped = 0
    for seed in range(8):
        torch.manual_seed(seed)
        out = transform(make_item(image, pairs))
        assert out["image"].dtype == torch.uint8 and tuple(out["image"].shape) == (3, 24, 30)
        assert 0 < len(out["pairs"]) < len(pairs)  # pairs leaving the crop are dropped whole
        assert_same_content(out, pairs)  # no resampling: every kept point on exactly its own pixel
        flipped += int(out["image"][1, 0, 0] > out["image"][1, 0, -1])  # green = source column
    assert 0 < flipped < 8
    small = create_transform(train=True, size=(50, 70), crop="random", color_jitter=0.0, to_float=False)
    out = small(make_item(image, pairs))
    assert tuple(out["image"].shape) == (3, 50, 70) and len(out["pairs"]) == len(pairs)  # padded, nothing lost
    assert_same_content(out, pairs)
    with pytest.raises(ValueError, match="normalize=True needs to_float"):
        create_transform(train=True, size=16, normalize=True, to_float=False)
    with pytest.raises(ValueError, match="crop must be one of"):
        create_transform(train=True, size=16, crop="center")
