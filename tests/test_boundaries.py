import math

import pytest
import torch

from dynocc_data.generation import boundaries
from dynocc_data.generation.boundaries import (
    Boundaries,
    BoundaryConfig,
    EdgePoints,
    connected_components,
    detect_boundaries,
    flow_derivatives,
    flow_edges,
    hysteresis,
    measure_jumps,
    non_max_suppression,
    sample_bilinear,
    truncated_distance,
)


def square_flow(H=64, W=80, top=20, left=30, size=20, motion=(3.0, 0.0), blur=True):
    """Flow of a square moving by ``motion`` (dx, dy) over a static background, softened like real flow."""
    f = torch.zeros(1, 2, H, W)
    f[0, 0, top:top + size, left:left + size] = motion[0]
    f[0, 1, top:top + size, left:left + size] = motion[1]
    if blur:
        k = torch.tensor([0.25, 0.5, 0.25])
        k2 = (k[:, None] * k[None, :])[None, None].repeat(2, 1, 1, 1)
        f = torch.nn.functional.conv2d(torch.nn.functional.pad(f, (1, 1, 1, 1), mode="replicate"), k2, groups=2)
    return f


def test_flow_edges_sign_and_normal():
    # square moving right: its left edge diverges (background revealed), its right edge converges
    f = square_flow(motion=(3.0, 0.0), blur=False)
    e = flow_edges(f, sigma=1.0)
    row = 30
    s = e.dense_strength()[0, row]
    left_peak = int(torch.argmax(s[20:40])) + 20
    assert left_peak in (29, 30)
    assert s[45:55].max() == 0  # converging right edge (x≈50) has no diverging strength
    i = int(torch.nonzero((e.y == row) & (e.x == left_peak))[0])
    n = e.normal()[i]
    assert abs(float(n[1]) - 1) < 1e-3 and abs(float(n[0])) < 1e-3  # normal along x
    assert int(e.direction_bins()[i]) == 0


def test_flow_edges_orientation_of_oblique_edges():
    # a diagonal half-plane moving along its normal (1, 1)/√2: normal found at 45 degrees
    yy, xx = torch.meshgrid(torch.arange(40.0), torch.arange(40.0), indexing="ij")
    inside = (yy + xx) > 40
    f = torch.stack([inside * 2.0, inside * 2.0])[None]
    e = flow_edges(f, min_strength=0.05)
    n = e.normal()[torch.argmax(e.strength)]
    assert torch.allclose(n.abs(), torch.full((2,), 2 ** -0.5), atol=1e-3)
    interior = (e.y > 5) & (e.y < 35) & (e.x > 5) & (e.x < 35)  # away from the image borders
    assert set(e.direction_bins()[interior].tolist()) == {1}


def test_shear_is_not_an_edge():
    # a horizontal band sliding sideways: a pure shear discontinuity, neither diverging nor converging
    f = torch.zeros(1, 2, 40, 60)
    f[0, 0, 20:] = 4.0
    e = flow_edges(f, min_strength=1e-4)
    assert len(e) == 0


def test_non_max_suppression_gives_one_pixel_wide_edges():
    f = square_flow(motion=(3.0, 0.0))
    e = flow_edges(f, sigma=1.5, min_strength=0.05)
    thin = e.select(non_max_suppression(e)).dense_strength() > 0
    rows = thin[0, 24:36, 20:40].sum(1)  # the left edge, away from the corners
    assert torch.all(rows == 1)


def test_merge_keeps_the_stronger_per_pixel():
    a = flow_edges(square_flow(motion=(3.0, 0.0)), min_strength=0.05, source=0)
    b = flow_edges(square_flow(motion=(-1.0, 0.0)) * 1.0, min_strength=0.05, source=1)
    m = EdgePoints.merge(a, b)
    dense = m.dense_strength()
    assert torch.equal(dense, torch.maximum(a.dense_strength(), b.dense_strength()))
    assert len(set(zip(m.b.tolist(), m.y.tolist(), m.x.tolist()))) == len(m)  # one entry per pixel


def test_measure_jumps_is_relative_motion_in_pixels():
    f = square_flow(motion=(3.0, -1.0))
    b = torch.tensor([0])
    y, x = torch.tensor([30]), torch.tensor([30])
    j = measure_jumps(f, b, y, x, torch.tensor([[0.0, 1.0]]), radius=3.0)
    assert torch.allclose(j[0], torch.tensor([3.0, -1.0]), atol=1e-5)


def test_sample_bilinear_known_values():
    field = torch.arange(12.0).reshape(1, 1, 3, 4)
    v = sample_bilinear(field, torch.tensor([0, 0, 0]), torch.tensor([0.5, 2.0, -5.0]), torch.tensor([1.5, 3.0, 0.0]))
    assert v[:, 0].tolist() == [pytest.approx(3.5), pytest.approx(11.0), pytest.approx(0.0)]


def test_connected_components_known_labels():
    # three pieces: a diagonal run (8-connected), a separate dot, and a pixel of another batch item
    pts = [(0, 1, 1), (0, 2, 2), (0, 3, 3), (0, 3, 4), (0, 8, 8), (1, 1, 1)]
    b, y, x = (torch.tensor(v) for v in zip(*pts))
    lab = connected_components(b, y, x, (2, 10, 10))
    assert lab.tolist() == [0, 0, 0, 0, 4, 5]


def test_connected_components_long_spiral_converges():
    # a long winding 1-px path (worst case for naive label propagation): one component
    H = W = 41
    pts, y, x, d = [], 20, 20, 0
    steps, dirs = 1, [(0, 1), (1, 0), (0, -1), (-1, 0)]
    while len(pts) < 400:
        for _ in range(2):
            for _ in range(steps):
                pts.append((y, x))
                y, x = y + 2 * dirs[d][0], x + 2 * dirs[d][1]
            d = (d + 1) % 4
        steps += 1
    # connect consecutive points of the coarse spiral with the pixel between them
    full = set()
    for (y0, x0), (y1, x1) in zip(pts, pts[1:]):
        if 0 <= y1 < H and 0 <= x1 < W and 0 <= y0 < H and 0 <= x0 < W:
            full |= {(y0, x0), ((y0 + y1) // 2, (x0 + x1) // 2), (y1, x1)}
    ys, xs = zip(*sorted(full))
    lab = connected_components(torch.zeros(len(ys), dtype=torch.long), torch.tensor(ys), torch.tensor(xs), (1, H, W))
    assert lab.unique().numel() == 1


def test_hysteresis_keeps_weak_connected_to_strong_and_drops_short():
    # segment A: 15 px, one strong pixel; segment B: 15 px all weak; segment C: 3 px strong (too short)
    ys = list(range(15)) + list(range(15)) + [0, 1, 2]
    xs = [0] * 15 + [10] * 15 + [20] * 3
    val = [0.7] * 15 + [0.7] * 15 + [2.0] * 3
    val[7] = 2.0
    b = torch.zeros(len(ys), dtype=torch.long)
    keep, lab = hysteresis(b, torch.tensor(ys), torch.tensor(xs), torch.tensor(val), (1, 20, 30),
                           low=0.5, high=1.0, min_length=10)
    assert keep[:15].all() and not keep[15:].any()


def test_detect_boundaries_square_trailing_and_leading_edges():
    # flow to the next frame: square moves right; flow to the previous frame: it moves left
    fn = square_flow(motion=(3.0, 0.0))
    fp = square_flow(motion=(-3.0, 0.0))
    bnd = detect_boundaries(fn, fp, BoundaryConfig(min_length=8))
    assert isinstance(bnd, Boundaries) and len(bnd) > 0
    xs = bnd.x.tolist()
    # left edge (x≈29.5) from the flow to the next frame, right edge (x≈49.5) from the flow to the previous
    left = [(x, s) for x, s in zip(xs, bnd.source.tolist()) if x < 40]
    right = [(x, s) for x, s in zip(xs, bnd.source.tolist()) if x >= 40]
    assert left and right
    assert all(x in (29, 30) and s == 0 for x, s in left)
    assert all(x in (49, 50) and s == 1 for x, s in right)
    # only the sides moving apart, not the top and bottom (shear)
    assert set(bnd.y.tolist()) <= set(range(19, 41))


def test_detect_boundaries_static_and_uniform_flow_give_nothing():
    assert len(detect_boundaries(torch.zeros(1, 2, 40, 50), torch.zeros(1, 2, 40, 50))) == 0
    uniform = torch.ones(1, 2, 40, 50) * torch.tensor([2.0, -1.0]).view(1, 2, 1, 1)
    assert len(detect_boundaries(uniform, -uniform)) == 0


def test_detect_boundaries_batch_equals_single():
    fa, fb = square_flow(motion=(3.0, 0.0)), square_flow(left=10, motion=(0.0, 4.0))
    both = detect_boundaries(torch.cat([fa, fb]), torch.cat([-fa, -fb]))
    one = detect_boundaries(fb, -fb)
    sel = both.b == 1
    assert torch.equal(both.y[sel], one.y) and torch.equal(both.x[sel], one.x)


@pytest.fixture(params=["opencv", "torch"])
def kernels(request, monkeypatch):
    """Run a test with the OpenCV CPU kernels and with the device-agnostic torch ones."""
    monkeypatch.setattr(boundaries, "USE_OPENCV_ON_CPU", request.param == "opencv")
    return request.param


def test_truncated_distance_exact_within_radius(kernels):
    m = torch.zeros(1, 15, 15, dtype=torch.bool)
    m[0, 7, 7] = True
    d = truncated_distance(m, 4)
    assert d[0, 7, 7] == 0
    assert d[0, 7, 10] == pytest.approx(3.0)
    assert d[0, 9, 9] == pytest.approx(math.sqrt(8), abs=1e-5)
    assert d[0, 0, 0] == pytest.approx(4.0)  # clipped


def test_opencv_and_torch_kernels_agree(monkeypatch):
    g = torch.Generator().manual_seed(0)
    flow = torch.randn(2, 2, 30, 41, generator=g).cumsum(-1) * 0.3
    mask = torch.rand(2, 30, 41, generator=g) > 0.97
    monkeypatch.setattr(boundaries, "USE_OPENCV_ON_CPU", True)
    d_cv, t_cv = flow_derivatives(flow, 1.0), truncated_distance(mask, 5)
    monkeypatch.setattr(boundaries, "USE_OPENCV_ON_CPU", False)
    d_t, t_t = flow_derivatives(flow, 1.0), truncated_distance(mask, 5)
    assert torch.allclose(d_cv, d_t, atol=1e-5)
    assert torch.allclose(t_cv, t_t, atol=1e-5)


def test_sample_bilinear_batched_points_in_any_order():
    # each point reads its own item: field value = 100 * item + 10 * channel + y + x/10 (bilinear is exact on it)
    B, C, H, W = 3, 2, 6, 8
    yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    field = torch.stack([torch.stack([100 * i + 10 * c + yy + xx / 10 for c in range(C)]) for i in range(B)])
    b = torch.tensor([0, 0, 1, 2, 2, 2])
    y = torch.tensor([0.5, 4.0, 1.25, 5.0, 0.0, 2.5])
    x = torch.tensor([1.5, 7.0, 3.0, 0.5, 6.0, 2.0])
    expected = torch.stack([100 * b + 10 * c + y + x / 10 for c in range(C)], 1)
    torch.testing.assert_close(sample_bilinear(field, b, y, x), expected)  # grouped by item
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    torch.testing.assert_close(sample_bilinear(field, b[perm], y[perm], x[perm]), expected[perm])  # mixed order
    empty = torch.empty(0)
    assert sample_bilinear(field, empty.long(), empty, empty).shape == (0, C)
    torch.testing.assert_close(sample_bilinear(field, torch.tensor([2, 2]), y[:2], x[:2]),
                               expected[:2] + 200 - 100 * b[:2, None])  # an item with no points before it
