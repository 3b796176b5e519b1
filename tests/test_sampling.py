"""Pair-sampling strategies on hand-made boundary annotations with known answers."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
import torch

from dynocc_data.sampling import (
    BandConfig,
    BandSampler,
    BoundaryConfig,
    BoundarySampler,
    MultiscaleSampler,
    PairSampler,
    StoredConfig,
    StoredSampler,
    UniformConfig,
    UniformSampler,
    available_strategies,
    create_sampler,
    sample_generator,
)

# boundary.npy rows, as docs/FORMAT.md specifies them.
BOUNDARY_DTYPE = np.dtype(
    [("y", "<f4"), ("x", "<f4"), ("ny", "<f4"), ("nx", "<f4"),
     ("confidence", "<f4"), ("segment", "<i4"), ("jump", "<f4")]
)


def make_boundary(y, x, ny, nx, segment=0, confidence=1.0) -> dict[str, torch.Tensor]:
    """A boundary annotation dict (docs/FORMAT.md) from per-point arrays, scalars broadcast to them."""
    y, x = np.broadcast_arrays(np.asarray(y, np.float32), np.asarray(x, np.float32))

    def column(value, dtype) -> torch.Tensor:
        return torch.as_tensor(np.broadcast_to(np.asarray(value, dtype), y.shape).copy())

    return {
        "y": column(y, np.float32),
        "x": column(x, np.float32),
        "ny": column(ny, np.float32),
        "nx": column(nx, np.float32),
        "confidence": column(confidence, np.float32),
        "segment": column(segment, np.int64),
        "jump": column(1.0, np.float32),
    }


def concat(*boundaries: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Several annotations as one."""
    return {k: torch.cat([b[k] for b in boundaries]) for k in boundaries[0]}


def vertical_line(x: float = 20, y0: int = 10, y1: int = 50, **kw) -> dict[str, torch.Tensor]:
    """Boundary x = const for y in [y0, y1), normal (0, +1): the front (closer) side is to the right."""
    return make_boundary(np.arange(y0, y1), x, 0.0, 1.0, **kw)


def gen(seed: int = 0) -> torch.Generator:
    """A seeded CPU generator."""
    return torch.Generator().manual_seed(seed)


def selected_y(pairs: torch.Tensor) -> np.ndarray:
    """Rows of the boundary points behind pairs of a fixed-offset strategy (midpoint of A and B)."""
    return np.sort(((pairs[:, 0] + pairs[:, 2]) / 2).numpy())


# ----------------------------------------------------------------------------------------- known answers


def test_boundary_vertical_line_known_answer():
    pairs, ordinal = create_sampler("boundary", offset=4, balance=False)(vertical_line(), (64, 64), gen())
    ys = torch.arange(10, 50)
    expected = torch.stack([ys, torch.full_like(ys, 24), ys, torch.full_like(ys, 16)], 1)
    assert pairs.dtype == ordinal.dtype == torch.int64
    assert torch.equal(pairs, expected)  # A = front at x=24, B = back at x=16, in boundary order
    assert torch.equal(ordinal, torch.full((40,), -1))  # A is closer


def test_balanced_pairs_keep_the_geometry():
    pairs, ordinal = create_sampler("boundary", offset=4)(vertical_line(y0=0, y1=60), (64, 64), gen(3))
    front_first = pairs[:, 1] == 24
    assert torch.equal(front_first, pairs[:, 3] == 16)
    assert torch.equal(~front_first, (pairs[:, 1] == 16) & (pairs[:, 3] == 24))
    assert torch.equal(ordinal, torch.where(front_first, -1, 1))  # +1 exactly when A is the farther (back) point
    assert 0 < int((ordinal == 1).sum()) < 60


def test_balance_gives_about_half_each_label():
    boundary = make_boundary(np.arange(2000) % 100 + 10, np.arange(2000) // 100 * 10 + 10, 0.0, 1.0)
    _, ordinal = create_sampler("boundary")(boundary, (128, 256), gen(1))
    assert ordinal.numel() == 2000
    assert set(ordinal.tolist()) == {-1, 1}
    assert abs(float((ordinal == 1).float().mean()) - 0.5) < 0.05


def test_multiscale_offsets_within_range_and_independent_per_side():
    sampler = create_sampler("multiscale", offset_range=(2, 12), balance=False)
    pairs, ordinal = sampler(vertical_line(x=30, y0=0, y1=64), (64, 64), gen())
    front, back = pairs[:, 1] - 30, 30 - pairs[:, 3]
    assert pairs.shape == (64, 4) and torch.equal(ordinal, torch.full((64,), -1))
    assert torch.equal(pairs[:, 0], pairs[:, 2])  # purely along the normal
    assert front.min() >= 2 and front.max() <= 12 and back.min() >= 2 and back.max() <= 12
    assert len(set(front.tolist())) > 5 and len(set(back.tolist())) > 5  # drawn, not fixed
    assert not torch.equal(front, back)  # each side draws its own offset


def test_band_points_stay_in_the_band_on_their_side():
    sampler = create_sampler("band", depth_range=(2, 8), jitter=2, balance=False)
    pairs, _ = sampler(vertical_line(), (64, 64), gen())
    ys = torch.arange(10, 50)
    assert pairs.shape == (40, 4)
    assert ((pairs[:, 1] >= 22) & (pairs[:, 1] <= 28)).all()  # front: right of x=20
    assert ((pairs[:, 3] >= 12) & (pairs[:, 3] <= 18)).all()  # back: left of x=20
    jitter_a, jitter_b = pairs[:, 0] - ys, pairs[:, 2] - ys
    assert jitter_a.abs().max() <= 2 and jitter_b.abs().max() <= 2
    assert (jitter_a != 0).any() and not torch.equal(jitter_a, jitter_b)  # an area sample, not a line sample


def test_band_on_a_diagonal_boundary_uses_normal_and_tangent():
    s = 1 / math.sqrt(2)
    t = np.arange(40, dtype=np.float32)
    boundary = make_boundary(10 + t, 50 - t, s, s)  # line y + x = 60, front side towards +y +x
    pairs, _ = create_sampler("band", depth_range=(3, 6), jitter=1.5, balance=False)(boundary, (80, 80), gen(2))
    p = torch.stack([boundary["y"], boundary["x"]], 1)
    normal, tangent = torch.tensor([s, s]), torch.tensor([-s, s])
    da, db = pairs[:, :2].float() - p, pairs[:, 2:].float() - p
    slack = math.sqrt(0.5)  # rounding to the pixel grid
    assert (da @ normal >= 3 - slack).all() and (da @ normal <= 6 + slack).all()
    assert (db @ normal <= -3 + slack).all() and (db @ normal >= -6 - slack).all()
    assert (da @ tangent).abs().max() <= 1.5 + slack and (db @ tangent).abs().max() <= 1.5 + slack


# ---------------------------------------------------------------------------------------------- uniform


def test_uniform_spacing_along_a_straight_segment_in_any_order():
    boundary = vertical_line(x=20, y0=0, y1=200)
    shuffled = {k: v[torch.randperm(200, generator=gen(5))] for k, v in boundary.items()}
    sampler = create_sampler("uniform", spacing=10, balance=False)
    for b in (boundary, shuffled):
        pairs, _ = sampler(b, (256, 64), gen(4))
        ys = selected_y(pairs)
        assert len(ys) == 20
        assert set(np.diff(ys).tolist()) == {10.0}


def test_uniform_spacing_along_a_diagonal():
    i = np.arange(142)
    s = 1 / math.sqrt(2)
    boundary = make_boundary(i + 5, i + 5, s, -s)
    pairs, _ = create_sampler("uniform", spacing=10, balance=False)(boundary, (160, 160), gen(6))
    ys = selected_y(pairs)
    arc_gaps = np.diff(ys) * math.sqrt(2)  # a diagonal pixel step is sqrt(2) px of arc
    assert len(ys) in (19, 20, 21)  # 142 * sqrt(2) / 10 = 20.1
    assert arc_gaps.min() > 9 and arc_gaps.max() < 12
    assert abs(arc_gaps.mean() - 10) < 0.5


def test_uniform_density_on_a_circle():
    canvas = np.zeros((128, 128), np.uint8)
    cv2.circle(canvas, (64, 64), 40, 255, thickness=1)  # a thin 8-connected digital circle
    ys, xs = np.nonzero(canvas)
    angle = np.arctan2(ys - 64, xs - 64)
    boundary = make_boundary(ys, xs, np.sin(angle), np.cos(angle))
    sampler = create_sampler("uniform", spacing=8)
    counts = [sampler(boundary, (128, 128), gen(seed))[0].shape[0] for seed in range(10)]
    assert abs(np.mean(counts) - 2 * math.pi * 40 / 8) < 3  # one point per `spacing` px of arc


def test_uniform_keeps_segments_apart():
    a = vertical_line(x=10, y0=0, y1=100, segment=0)
    b = vertical_line(x=40, y0=0, y1=100, segment=7)
    pairs, _ = create_sampler("uniform", spacing=10, balance=False)(concat(a, b), (128, 64), gen(8))
    for x in (10, 40):
        ys = selected_y(pairs[pairs[:, 1] == x + 4])
        assert len(ys) == 10 and set(np.diff(ys).tolist()) == {10.0}


# ------------------------------------------------------------------------------------------ common options


def test_per_segment_cap():
    boundary = concat(
        vertical_line(x=10, y0=0, y1=50, segment=3),
        vertical_line(x=30, y0=0, y1=20, segment=1),
        vertical_line(x=50, y0=0, y1=3, segment=9),
    )
    sampler = create_sampler("boundary", per_segment_cap=5, balance=False)
    pairs, _ = sampler(boundary, (64, 64), gen())
    counts = {x - 4: int((pairs[:, 1] == x).sum()) for x in (14, 34, 54)}
    assert counts == {10: 5, 30: 5, 50: 3}
    other, _ = sampler(boundary, (64, 64), gen(1))
    assert not torch.equal(pairs, other)  # chosen at random within each segment


def test_max_pairs_is_a_random_subset_in_boundary_order():
    sampler = create_sampler("boundary", max_pairs=10, balance=False)
    full, _ = create_sampler("boundary", balance=False)(vertical_line(), (64, 64), gen())
    pairs, ordinal = sampler(vertical_line(), (64, 64), gen())
    assert pairs.shape == (10, 4) and ordinal.shape == (10,)
    assert set(map(tuple, pairs.tolist())) <= set(map(tuple, full.tolist()))
    assert torch.equal(pairs[:, 0], pairs[:, 0].sort().values)
    assert not torch.equal(pairs, sampler(vertical_line(), (64, 64), gen(1))[0])
    assert sampler(vertical_line(y0=0, y1=4), (64, 64), gen())[0].shape == (4, 4)  # fewer: all kept


def test_min_confidence_drops_points_before_sampling():
    confidence = np.where(np.arange(40) % 2 == 0, 0.9, 0.2)
    boundary = vertical_line(confidence=confidence)
    pairs, _ = create_sampler("boundary", min_confidence=0.5, balance=False)(boundary, (64, 64), gen())
    assert pairs[:, 0].tolist() == list(range(10, 50, 2))
    no_confidence = {k: v for k, v in boundary.items() if k != "confidence"}
    with pytest.raises(ValueError, match="confidence"):
        create_sampler("boundary", min_confidence=0.5)(no_confidence, (64, 64), gen())


def test_points_outside_the_image_or_on_one_pixel_are_dropped():
    boundary = concat(
        vertical_line(x=2, y0=0, y1=10),  # back point at x=-2
        vertical_line(x=10, y0=0, y1=10),  # both inside
        vertical_line(x=30, y0=0, y1=10),  # front point at x=34 >= W
        make_boundary([-3.0, 14.0, 20.0], 10, 0.0, 1.0),  # rows -3 and 20 are outside H=16
        make_boundary([5.0, 6.0], 10, float("nan"), float("nan")),  # broken normals
    )
    pairs, _ = create_sampler("boundary", offset=4, balance=False)(boundary, (16, 32), gen())
    assert pairs[:, 0].tolist() == list(range(10)) + [14]
    assert ((pairs[:, [1, 3]] >= 0) & (pairs[:, [1, 3]] < 32)).all()
    for name in ("band", "multiscale", "uniform"):
        p, _ = create_sampler(name)(boundary, (16, 32), gen())
        assert ((p[:, [0, 2]] >= 0) & (p[:, [0, 2]] < 16) & (p[:, [1, 3]] >= 0) & (p[:, [1, 3]] < 32)).all()
    same_pixel, ordinal = create_sampler("boundary", offset=0.2)(vertical_line(), (64, 64), gen())
    assert same_pixel.shape == (0, 4) and ordinal.shape == (0,)


@pytest.mark.parametrize("name", ["boundary", "multiscale", "band", "uniform"])
def test_empty_annotation(name):
    empty = make_boundary(np.zeros(0), np.zeros(0), 0.0, 1.0)
    pairs, ordinal = create_sampler(name, per_segment_cap=2, max_pairs=3)(empty, (8, 8), gen())
    assert pairs.shape == (0, 4) and ordinal.shape == (0,)
    assert pairs.dtype == ordinal.dtype == torch.int64


def test_structured_array_from_boundary_npy(tmp_path):
    boundary = concat(vertical_line(segment=2), vertical_line(x=40, segment=5))
    table = np.zeros(80, BOUNDARY_DTYPE)
    for name in BOUNDARY_DTYPE.names:
        table[name] = boundary[name].numpy()
    np.save(tmp_path / "boundary.npy", table, allow_pickle=False)
    loaded = np.load(tmp_path / "boundary.npy", allow_pickle=False)
    for name in ("boundary", "multiscale", "band", "uniform"):
        sampler = create_sampler(name, per_segment_cap=30)
        a, b = sampler(loaded, (64, 64), gen(9)), sampler(boundary, (64, 64), gen(9))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_malformed_annotation_errors_are_one_line():
    with pytest.raises(ValueError, match=r"lacks field\(s\) ny, nx") as err:
        create_sampler("boundary")({"y": torch.zeros(3), "x": torch.zeros(3), "segment": torch.zeros(3)}, (8, 8), gen())
    assert "\n" not in str(err.value)
    bad = vertical_line()
    bad["nx"] = bad["nx"][:5]
    with pytest.raises(ValueError, match="equal length.*nx"):
        create_sampler("band")(bad, (64, 64), gen())
    with pytest.raises(ValueError, match="image_size"):
        create_sampler("band")(vertical_line(), (0, 64), gen())


# ------------------------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("name", ["boundary", "multiscale", "band", "uniform"])
def test_same_generator_same_output_other_epoch_other_output(name):
    boundary = concat(vertical_line(segment=0), vertical_line(x=40, y0=0, y1=60, segment=1))
    sampler = create_sampler(name, per_segment_cap=25, max_pairs=30)
    first = sampler(boundary, (64, 64), sample_generator(7, 0, "clip-1234abcd_000012"))
    again = sampler(boundary, (64, 64), sample_generator(7, 0, "clip-1234abcd_000012"))
    later = sampler(boundary, (64, 64), sample_generator(7, 1, "clip-1234abcd_000012"))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not (torch.equal(first[0], later[0]) and torch.equal(first[1], later[1]))


def test_sample_generator_is_stable_across_processes():
    # A golden value: Python's salted hash() would change it from one interpreter run to the next.
    assert sample_generator(0, 0, "a").initial_seed() == 8962838626512031172
    seeds = {sample_generator(s, e, k).initial_seed() for s in (0, 1) for e in (0, 1) for k in ("a", "b")}
    assert len(seeds) == 8
    assert sample_generator(1, 23, "x").initial_seed() != sample_generator(12, 3, "x").initial_seed()


# ----------------------------------------------------------------------------------- factory and stored


def test_create_sampler_names_configs_overrides_and_dicts():
    assert available_strategies() == ["band", "boundary", "multiscale", "stored", "uniform"]
    expected = {"stored": StoredSampler, "boundary": BoundarySampler, "multiscale": MultiscaleSampler,
                "band": BandSampler, "uniform": UniformSampler}
    for name, cls in expected.items():
        assert type(create_sampler(name)) is cls and isinstance(create_sampler(name), PairSampler)
    assert type(create_sampler()) is StoredSampler
    assert create_sampler(" Band ").config == BandConfig()

    config = BandConfig(jitter=1.0, max_pairs=50)
    sampler = create_sampler(config, max_pairs=7)
    assert sampler.config == BandConfig(jitter=1.0, max_pairs=7) and config.max_pairs == 50
    assert create_sampler("uniform", spacing=5).config == UniformConfig(spacing=5)
    assert create_sampler(sampler, jitter=0.5).config.jitter == 0.5
    assert create_sampler(sampler) is sampler

    description = json.loads(json.dumps(create_sampler("multiscale", offset_range=(3, 5)).config.as_dict()))
    assert description["strategy"] == "multiscale" and description["offset_range"] == [3.0, 5.0]
    assert create_sampler(description).config == create_sampler("multiscale", offset_range=(3, 5)).config


def test_create_sampler_accepts_a_callable():
    def constant(boundary, image_size, generator, stored=None):
        return torch.tensor([[0, 0, 1, 1]]), torch.tensor([1])

    assert create_sampler(constant) is constant
    with pytest.raises(ValueError, match="custom callable"):
        create_sampler(constant, max_pairs=3)


def test_create_sampler_errors():
    names = "band, boundary, multiscale, stored, uniform"
    with pytest.raises(ValueError, match=f"unknown pair-sampling strategy 'edges'; choose one of {names}"):
        create_sampler("edges")
    with pytest.raises(ValueError, match="unknown option.*spacing.*'band'.*jitter"):
        create_sampler("band", spacing=3)
    with pytest.raises(ValueError, match="offset must be > 0"):
        create_sampler("boundary", offset=-1)
    with pytest.raises(ValueError, match="offset_range"):
        create_sampler("multiscale", offset_range=(8, 2))
    with pytest.raises(ValueError, match="max_pairs"):
        BoundaryConfig(max_pairs=-1)
    with pytest.raises(ValueError, match="per_segment_cap does not apply"):
        StoredConfig(per_segment_cap=3)
    with pytest.raises(ValueError, match="strategy must be"):
        create_sampler(42)


def test_stored_passthrough():
    pairs = np.array([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]], np.int32)
    ordinal = np.array([1, -1, 0], np.int8)
    stored = (torch.from_numpy(pairs), torch.from_numpy(ordinal))
    out_pairs, out_ordinal = create_sampler("stored")(vertical_line(), (64, 64), gen(), stored)
    assert out_pairs.dtype == out_ordinal.dtype == torch.int64
    assert out_pairs.tolist() == pairs.tolist() and out_ordinal.tolist() == [1, -1, 0]

    capped, capped_ordinal = create_sampler("stored", max_pairs=2)(vertical_line(), (64, 64), gen(), stored)
    assert capped.shape == (2, 4)
    assert all(row in pairs.tolist() for row in capped.tolist())

    swapped, swapped_ordinal = create_sampler("stored", balance=True)({}, (64, 64), gen(3), stored)
    for row, o, orig, orig_o in zip(swapped.tolist(), swapped_ordinal.tolist(), pairs.tolist(), ordinal.tolist()):
        assert (row, o) in ((orig, orig_o), (orig[2:] + orig[:2], -orig_o))
    with pytest.raises(ValueError, match="needs the stored pairs"):
        create_sampler("stored")(vertical_line(), (64, 64), gen())


@pytest.mark.parametrize("name", ["boundary", "multiscale", "band", "uniform"])
@pytest.mark.parametrize("options", [{}, {"per_segment_cap": 3, "max_pairs": 8, "min_confidence": 0.5},
                                     {"balance": False}])
def test_sample_many_gives_what_each_sample_gives_alone(name, options):
    # one call over several samples (what DynOccDataset does per chunk): every sample draws from its own
    # generator, so the result must not depend on its neighbours, whatever their sizes, images or emptiness
    rng = np.random.default_rng(0)
    boundaries = [concat(vertical_line(x=20, confidence=0.4), vertical_line(x=40, segment=1)),
                  make_boundary(np.zeros(0), np.zeros(0), 0.0, 1.0),
                  make_boundary(rng.uniform(0, 60, 50), rng.uniform(0, 80, 50), 0.6, -0.8,
                                segment=np.arange(50) % 4, confidence=rng.uniform(0, 1, 50)),
                  vertical_line(x=5, y0=0, y1=30)]
    sizes = [(64, 64), (32, 32), (60, 80), (30, 12)]
    sampler = create_sampler(name, **options)
    alone = [sampler(b, size, sample_generator(1, 0, f"k{i}")) for i, (b, size) in enumerate(zip(boundaries, sizes))]
    together = sampler.sample_many(boundaries, sizes, [sample_generator(1, 0, f"k{i}") for i in range(4)])
    assert len(together) == 4 and sum(len(p) for p, _ in alone) > 5
    for (pa, oa), (pt, ot) in zip(alone, together):
        assert torch.equal(pa, pt) and torch.equal(oa, ot)
    assert sampler.sample_many([], [], []) == []
