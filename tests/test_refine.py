"""Placement and verification of ordered boundary points (dynocc_data.generation.refine) on hand-made frames.

The frames: a textured square (rows TOP..TOP+SIDE-1, columns LEFT..LEFT+SIDE-1 in the processed frame)
over an unrelated static textured background; in the next frame the square has moved by (DX, 0), in the
previous one by (-DX, 0). The flows are the exact ones. Boundary points sit on the square's left edge,
whose true outline is the line x = LEFT - 0.5.
"""

import dataclasses

import cv2
import numpy as np
import pytest
import torch

from dynocc_data.generation.ordering import OrderedBoundaries
from dynocc_data.errors import ConfigError
from dynocc_data.generation.refine import (
    RefineConfig,
    brightness_ratios,
    colour_angles,
    colour_edge_offsets,
    edge_margins,
    motion_contrasts,
    refine_boundaries,
    side_margins,
)

H, W = 64, 96
TOP, LEFT, SIDE = 12, 36, 40
DX = 4


def texture(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth random RGB texture, float32 [H,W,3] in 0..1 with strong grey-level contrast."""
    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 1.5)
    base = (base - base.mean()) / base.std()
    return np.clip(0.5 + 0.25 * base, 0, 1)[..., None] * rng.uniform(0.7, 1.0, 3).astype(np.float32)


BACKGROUND = texture(H, W, seed=1)
SQUARE = texture(SIDE, SIDE, seed=2)


def frame(shift: int) -> torch.Tensor:
    """The frame with the square moved by ``shift`` pixels to the right, float RGB [1,3,H,W]."""
    img = BACKGROUND.copy()
    img[TOP:TOP + SIDE, LEFT + shift:LEFT + shift + SIDE] = SQUARE
    return torch.from_numpy(img).permute(2, 0, 1)[None].contiguous()


def true_flow(dx: float) -> torch.Tensor:
    """Exact flow [1,2,H,W] (dx, dy) of the middle frame to the frame whose square moved by ``dx``."""
    flow = torch.zeros(1, 2, H, W)
    flow[0, 0, TOP:TOP + SIDE, LEFT:LEFT + SIDE] = dx
    return flow


IMAGE = frame(0)
FLOWS = [true_flow(DX), true_flow(-DX)]
TARGETS = [frame(DX), frame(-DX)]


def left_edge(x: float, normal_x: float = 1.0, rows=range(TOP + 6, TOP + SIDE - 6), segment: int = 0,
              b: int = 0) -> OrderedBoundaries:
    """Ordered points at column ``x`` on the rows ``rows``, normals (0, normal_x)."""
    n = len(rows)
    return OrderedBoundaries(
        b=torch.full((n,), b, dtype=torch.long), y=torch.tensor(list(rows), dtype=torch.long),
        x=torch.full((n,), x, dtype=torch.float32), normal=torch.tensor([[0.0, normal_x]] * n),
        confidence=torch.ones(n), segment=torch.full((n,), segment, dtype=torch.long), jump=torch.full((n,), 4.0))


def cat(*sets: OrderedBoundaries) -> OrderedBoundaries:
    """Concatenate point sets."""
    return OrderedBoundaries(*(torch.cat([getattr(s, f) for s in sets]) for f in OrderedBoundaries.POINT_FIELDS))


def margins(points: OrderedBoundaries, image=IMAGE, flows=FLOWS, targets=TARGETS) -> torch.Tensor:
    """side_margins with the default geometry: pair pixels 6 px off, motions 10 px off, 3x3 patch 2 px apart."""
    return side_margins(points, image, flows, targets, offset=6.0, motion_offset=10.0, patch=1, step=2.0)


def test_margins_positive_on_the_true_outline():
    # x = LEFT: pair pixels at LEFT + 6 (square) and LEFT - 6 (background), each explained by its own motion
    m = margins(left_edge(LEFT))
    assert m.shape == (SIDE - 12,)
    assert (m > 0.05).all()


def test_margins_do_not_depend_on_the_sign_of_the_normal():
    # side_margins judges where the pair pixels land, not which side is in front: flipping the normal swaps
    # both the pixels and the motions they are compared with (the order is ordering.py's job)
    assert torch.allclose(margins(left_edge(LEFT, normal_x=-1.0)), margins(left_edge(LEFT)))


def test_margins_negative_when_pair_pixels_sit_on_the_other_surface():
    # a point 8 px inside the square whose normal points out of it: its "front" pixel (LEFT + 2) is on the
    # square but the front motion is sampled on the background (LEFT - 2), so the background motion explains it
    # worse than the square's does
    inside = margins(left_edge(LEFT + 8, normal_x=-1.0))
    assert (inside < -0.05).all()
    # a point 9 px out on the background, normal towards the square: its front pixel (LEFT - 3) is background
    # but the front motion is sampled on the square (LEFT + 1). Judged on the next frame only: in the previous
    # one the square covers that pixel, so neither motion explains it there
    wrong = margins(left_edge(LEFT - 9, normal_x=1.0), flows=FLOWS[:1], targets=TARGETS[:1])
    assert (wrong < -0.05).all()


def test_margins_vanish_on_a_textureless_image():
    flat = torch.full((1, 3, H, W), 0.5)
    m = side_margins(left_edge(LEFT), flat, FLOWS, [flat, flat], offset=6.0, motion_offset=10.0, patch=1,
                     step=2.0)
    assert torch.allclose(m, torch.zeros_like(m), atol=1e-6)
    # plain pixels are not evidence against a pair: the margin check lets them through...
    assert (m >= RefineConfig().min_margin).all()
    # ...and the edge test, which finds no evidence that the outline moves with the front side, drops them
    e = edge_margins(left_edge(LEFT), flat, FLOWS, [flat, flat], motion_offset=10.0, patch=1, step=2.0)
    assert torch.allclose(e, torch.zeros_like(e), atol=1e-6)
    assert (e < RefineConfig().min_edge_margin).all()


def test_margins_of_no_points():
    assert margins(left_edge(LEFT, rows=range(0))).shape == (0,)


def test_refine_shifts_along_the_normal_and_drops_short_segments():
    long = left_edge(LEFT - 2, rows=range(TOP, TOP + 30), segment=3)
    short = left_edge(LEFT - 2, rows=range(TOP + 32, TOP + 37), segment=7)  # 5 points
    cfg = RefineConfig(snap_behind=None, shift=2.0, min_margin=None, min_mover_margin=None, min_edge_margin=None, min_segment=20,
                       min_colour_angle=None)
    out = refine_boundaries(cat(long, short), IMAGE, FLOWS, TARGETS, cfg)
    assert len(out) == 30
    assert out.segment.unique().tolist() == [3]
    assert torch.equal(out.y, torch.arange(TOP, TOP + 30, dtype=torch.float32))
    assert torch.allclose(out.x, torch.full((30,), float(LEFT)))
    # normals pointing left move points left; diagonal normals move both coordinates
    diag = OrderedBoundaries(torch.zeros(1, dtype=torch.long), torch.tensor([30]), torch.tensor([40]),
                             torch.tensor([[0.6, -0.8]]), torch.ones(1), torch.zeros(1, dtype=torch.long),
                             torch.ones(1))
    moved = refine_boundaries(diag, IMAGE, FLOWS, TARGETS, dataclasses.replace(cfg, shift=5.0, min_segment=1))
    assert torch.allclose(torch.stack([moved.y, moved.x], 1), torch.tensor([[33.0, 36.0]]))


def test_refine_keeps_verified_points_and_drops_misplaced_ones():
    # like a flow edge, 2 px on the back side of the outline: shifted onto it and verified
    good = left_edge(LEFT - 2, rows=range(TOP + 4, TOP + 34), segment=0)
    # 10 px inside the square with the normal pointing out: after the shift (to LEFT + 8) the "front" pair
    # pixel is on the square while the front motion is the background's -> dropped
    bad = left_edge(LEFT + 10, normal_x=-1.0, rows=range(TOP + 4, TOP + 34), segment=1)
    cfg = RefineConfig(snap_behind=None, shift=2.0, pair_offset=6.0, motion_offset=10.0, min_segment=20,
                       min_colour_angle=None)  # grey test images: the shadow test is tested below
    out = refine_boundaries(cat(good, bad), IMAGE, FLOWS, TARGETS, cfg)
    assert out.segment.unique().tolist() == [0]
    assert len(out) == 30
    assert torch.allclose(out.x, torch.full((30,), float(LEFT)))
    # the same points on a textureless frame cannot be verified: nothing is kept
    flat = torch.full((1, 3, H, W), 0.5)
    assert len(refine_boundaries(good, flat, FLOWS, [flat, flat], cfg)) == 0


def test_refine_works_per_batch_item():
    # two frames of a batch: the second is textureless, its points go, the first frame's stay
    image = torch.cat([IMAGE, torch.full_like(IMAGE, 0.5)])
    flows = [torch.cat([f, f]) for f in FLOWS]
    targets = [torch.cat([t, torch.full_like(t, 0.5)]) for t in TARGETS]
    pts = cat(left_edge(LEFT - 2, rows=range(TOP + 4, TOP + 34), b=0),
              left_edge(LEFT - 2, rows=range(TOP + 4, TOP + 34), segment=1, b=1))
    out = refine_boundaries(pts, image, flows, targets, RefineConfig(snap_behind=None, min_segment=20,
                                                                     min_colour_angle=None))
    assert out.b.unique().tolist() == [0] and len(out) == 30


# ------------------------------------------------------------------ shadow test (colour direction of the two sides)


def _two_colour_image(left_rgb, right_rgb, size=(32, 32)):
    img = torch.empty(1, 3, *size)
    img[..., : size[1] // 2] = torch.tensor(left_rgb).view(1, 3, 1, 1)
    img[..., size[1] // 2:] = torch.tensor(right_rgb).view(1, 3, 1, 1)
    return img


def _vertical_point(y=16.0, x=15.5):
    one = torch.ones(1)
    return OrderedBoundaries(torch.zeros(1, dtype=torch.long), one * y, one * x, torch.tensor([[0.0, 1.0]]), one,
                             torch.zeros(1, dtype=torch.long), one)


def test_colour_angles_known_values():
    """A shadow (same colour, darker) is 0 degrees; orthogonal primaries are 90; (1,1,0) vs (1,0,0) is 45."""
    pt = _vertical_point()
    shadow = _two_colour_image((0.6, 0.4, 0.2), (0.3, 0.2, 0.1))
    assert colour_angles(pt, shadow, offset=6.0, patch=1, step=2.0).item() == pytest.approx(0.0, abs=0.1)
    assert colour_angles(pt, _two_colour_image((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)), offset=6.0).item() == \
        pytest.approx(90.0, abs=1e-3)
    assert colour_angles(pt, _two_colour_image((1.0, 1.0, 0.0), (1.0, 0.0, 0.0)), offset=6.0).item() == \
        pytest.approx(45.0, abs=1e-3)


def test_refine_drops_points_between_a_shadow_and_its_ground():
    """The shadow test keeps an edge between two hues and drops one between a colour and its darker self."""
    cfg = RefineConfig(snap_behind=None, shift=0.0, min_margin=None, min_mover_margin=None, min_edge_margin=None, min_colour_angle=8.0,
                       min_motion_contrast=None, min_segment=1)
    pt = _vertical_point()
    flows, targets = [torch.zeros(1, 2, 32, 32)], [torch.zeros(1, 3, 32, 32)]
    shadow = _two_colour_image((0.6, 0.4, 0.2), (0.3, 0.2, 0.1))
    surfaces = _two_colour_image((0.6, 0.4, 0.2), (0.2, 0.3, 0.6))
    assert len(refine_boundaries(pt, shadow, flows, [shadow], cfg)) == 0
    assert len(refine_boundaries(pt, surfaces, flows, [surfaces], cfg)) == 1


def test_brightness_ratios_known_values():
    """Front (the +x side here) over back brightness: 0.5 for a front half as bright, 2 for twice as bright."""
    pt = _vertical_point()
    assert brightness_ratios(pt, _two_colour_image((0.6, 0.4, 0.2), (0.3, 0.2, 0.1)), offset=6.0).item() == \
        pytest.approx(0.5, rel=1e-4)
    assert brightness_ratios(pt, _two_colour_image((0.2, 0.2, 0.2), (0.4, 0.4, 0.4)), offset=6.0).item() == \
        pytest.approx(2.0, rel=1e-4)


def test_shadow_test_spares_a_front_side_much_brighter_than_the_back():
    """Grey on grey: a shadow only darkens, so a front twice as bright as the back is kept whatever the hue; a
    darker front of the same hue (a shadow) and a front barely brighter are still dropped."""
    cfg = RefineConfig(snap_behind=None, shift=0.0, min_margin=None, min_mover_margin=None, min_edge_margin=None, min_colour_angle=8.0,
                       shadow_exempt_ratio=1.5, min_motion_contrast=None, min_segment=1)
    pt = _vertical_point()
    flows = [torch.zeros(1, 2, 32, 32)]
    for back, front, kept in (((0.2, 0.2, 0.2), (0.4, 0.4, 0.4), 1), ((0.4, 0.4, 0.4), (0.2, 0.2, 0.2), 0),
                              ((0.3, 0.3, 0.3), (0.36, 0.36, 0.36), 0)):
        image = _two_colour_image(back, front)
        assert len(refine_boundaries(pt, image, flows, [image], cfg)) == kept, (back, front)
    image = _two_colour_image((0.2, 0.2, 0.2), (0.4, 0.4, 0.4))
    for ratio in (2.5, None):  # the default (None) applies the colour test everywhere
        kept = refine_boundaries(pt, image, flows, [image], dataclasses.replace(cfg, shadow_exempt_ratio=ratio))
        assert len(kept) == 0, ratio


def test_one_motion_test_drops_a_flow_edge_inside_a_rigid_object_and_keeps_its_outline():
    # the square moves fast (12 px a gap) as one rigid object, but its flow is 1 px short on its right half, as
    # patch flow is on a plain car roof beside a windscreen: a flow edge at its middle column, inside one surface
    dx = 12
    image, targets = frame(0), [frame(dx), frame(-dx)]
    flows = []
    for d in (dx, -dx):
        flow = true_flow(d)
        flow[0, 0, TOP:TOP + SIDE, LEFT + SIDE // 2:LEFT + SIDE] = d - np.sign(d)
        flows.append(flow)
    outline = left_edge(LEFT - 2, segment=0)  # the true outline, found 2 px on the back side, normal to the front
    internal = left_edge(LEFT + SIDE // 2 - 2, segment=1)  # the fake edge
    contrast = motion_contrasts(cat(outline, internal), flows, motion_offset=10.0)
    n = len(outline)
    torch.testing.assert_close(contrast[:n], torch.ones(n))  # one side still: the whole motion is relative
    torch.testing.assert_close(contrast[n:], torch.full((n,), 1 / 12))  # 1 px of 12
    # the one-motion test alone (no pixel check: on this textured square it sees the 1 px error too, on a plain
    # roof it cannot; grey test images: no shadow test)
    alone = RefineConfig(snap_behind=None, min_segment=20, min_colour_angle=None, min_margin=None,
                         min_mover_margin=None, min_edge_margin=None)
    assert alone.min_motion_contrast == 0.2
    out = refine_boundaries(cat(outline, internal), image, flows, targets, alone)
    assert out.segment.tolist() == [0] * n  # every outline point, no point of the fake edge
    torch.testing.assert_close(out.x, torch.full((n,), float(LEFT)))
    without = refine_boundaries(cat(outline, internal), image, flows, targets,
                                dataclasses.replace(alone, min_motion_contrast=None))
    assert (without.segment == 1).sum() == n
    # with every check on, the outline keeps all its points
    full = RefineConfig(snap_behind=None, min_segment=20, min_colour_angle=None)
    assert len(refine_boundaries(outline, image, flows, targets, full)) == n


def test_one_motion_test_keeps_moving_objects_over_a_moving_background():
    # a panning camera: background 10 px a gap, the object 14 px; and opposite motions; and a slow object
    def contrast(front: float, back: float) -> float:
        flow = torch.full((1, 2, H, W), back)
        flow[0, :, :, LEFT:] = front
        return float(motion_contrasts(left_edge(LEFT), [flow], motion_offset=10.0)[0])

    assert contrast(14.0, 10.0) == pytest.approx(4 / 14) and contrast(14.0, 10.0) >= RefineConfig().min_motion_contrast
    assert contrast(3.0, -3.0) == pytest.approx(2.0)
    assert contrast(1.0, 0.0) == pytest.approx(1.0)
    assert contrast(10.0, 9.5) < RefineConfig().min_motion_contrast
    assert motion_contrasts(left_edge(LEFT, rows=range(0)), FLOWS, motion_offset=10.0).shape == (0,)


# ------------------------------------------------------------------ snapping to the outline, the back motion, the edge test


def test_colour_edge_offsets_find_the_strongest_edge_along_the_normal():
    # a step from one colour to another between columns 15 and 16 (the outline at x = 15.5), and a weaker step at
    # x = 23.5; points on the row 16 with normals along +x
    img = _two_colour_image((0.2, 0.3, 0.6), (0.6, 0.4, 0.2))
    img[..., 24:] += 0.1
    pts = cat(*(_vertical_point(x=x) for x in (10.5, 17.5, 20.5)))
    offsets = colour_edge_offsets(pts, img, behind=3.0, ahead=14.0)
    # from 5 px behind the outline, from 2 px ahead of it (the flow edge on the front side): onto x = 15.5;
    # from x = 20.5 the outline is 5 px behind, out of reach: the weaker edge ahead is the strongest in range
    torch.testing.assert_close(offsets, torch.tensor([5.0, -2.0, 3.0]))
    assert colour_edge_offsets(pts.select(torch.zeros(3, dtype=torch.bool)), img, behind=3.0, ahead=14.0).shape == (0,)


def _plain_scene(smear: int):
    """A red textured square moving 4 px a gap over a static, nearly plain blue ground, and flows that spread
    the square's motion ``smear`` px onto the ground on its left (as patch flow does)."""
    rng = np.random.default_rng(5)
    ground = np.empty((H, W, 3), np.float32)
    ground[:] = (0.25, 0.3, 0.55)
    ground += rng.normal(0, 0.01, (H, W, 1)).astype(np.float32)
    square = np.clip(np.array([0.75, 0.35, 0.2], np.float32) * (0.8 + 0.4 * texture(SIDE, SIDE, seed=6)), 0, 1)

    def at(shift):
        img = ground.copy()
        img[TOP:TOP + SIDE, LEFT + shift:LEFT + shift + SIDE] = square
        return torch.from_numpy(img).permute(2, 0, 1)[None].contiguous()

    flows = []
    for d in (DX, -DX):
        flow = true_flow(d)
        flow[0, 0, TOP:TOP + SIDE, LEFT - smear:LEFT] = d
        flows.append(flow)
    return at(0), flows, [at(DX), at(-DX)]


def test_refine_snaps_a_smeared_flow_edge_onto_the_outline():
    image, flows, targets = _plain_scene(smear=12)
    found = left_edge(LEFT - 12, segment=0)  # the flow edge: 12 px out on the ground, normal towards the square
    cfg = RefineConfig(min_segment=20)  # every default check on
    out = refine_boundaries(found, image, flows, targets, cfg)
    assert len(out) == len(found)
    # on the outline (x = LEFT - 0.5; in whole steps from a whole pixel: one of the two pixels beside it), so that
    # the pair points 6 px either side are on the two surfaces
    assert ((out.x == LEFT - 1) | (out.x == LEFT)).all()
    # the old fixed shift leaves them 10 px out on the ground, where both pair points are ground: the margin check
    # and the one-motion test drop them all
    assert len(refine_boundaries(found, image, flows, targets, dataclasses.replace(cfg, snap_behind=None))) == 0


def test_back_motion_is_read_beyond_the_smeared_band():
    image, flows, targets = _plain_scene(smear=12)
    on_outline = left_edge(LEFT - 0.5)
    # 10 px behind the outline is still inside the smear: both sides seem to move alike
    same = motion_contrasts(on_outline, flows, motion_offset=10.0)
    torch.testing.assert_close(same, torch.zeros(len(on_outline)))
    # beyond the flow edge (11.5 px behind the outline + 10) the ground's own motion (none) is read
    reach = torch.full((len(on_outline),), 21.5)
    torch.testing.assert_close(motion_contrasts(on_outline, flows, motion_offset=10.0, back_reach=reach),
                               torch.ones(len(on_outline)))
    # and the pair pixels can be told apart: each side's own motion explains them better (a little on the plain
    # ground, whose noise is all the texture it has); read inside the smear, the two motions are one and tell nothing
    kw = dict(offset=6.0, motion_offset=10.0, patch=1, step=2.0)
    assert (side_margins(on_outline, image, flows, targets, back_reach=reach, **kw) > 0.003).all()
    torch.testing.assert_close(side_margins(on_outline, image, flows, targets, **kw), torch.zeros(len(on_outline)))


def test_edge_margins_tell_which_side_the_outline_moves_with():
    on_outline = left_edge(LEFT - 0.5)
    kw = dict(motion_offset=10.0, patch=1, step=2.0)
    right = edge_margins(on_outline, IMAGE, FLOWS, TARGETS, **kw)
    # the square is in front: its outline moves with it (clearly on most rows, a little where the two textures
    # happen to match across the outline)
    assert (right > 0).all() and right.median() > 0.05
    assert (right >= RefineConfig().min_edge_margin).float().mean() > 0.9
    # the same outline with the order the wrong way round (the ground said to be in front): the exact opposite
    wrong = edge_margins(left_edge(LEFT - 0.5, normal_x=-1.0), IMAGE, FLOWS, TARGETS, **kw)
    torch.testing.assert_close(wrong, -right)
    # a painted edge on static ground, next to which the flow is wrong (the right side said to move 4 px): the
    # edge stays with the ground, so the test says no
    painted = _two_colour_image((0.2, 0.3, 0.6), (0.6, 0.4, 0.2))
    flow = torch.zeros(1, 2, 32, 32)
    flow[0, 0, :, 16:] = 4.0
    margin = edge_margins(_vertical_point(), painted, [flow], [painted], **kw)
    assert margin.item() < -0.05


def test_refine_config_rejects_a_negative_distance():
    with pytest.raises(ConfigError, match="refine.snap_ahead"):
        RefineConfig(snap_ahead=-1.0)
    with pytest.raises(ConfigError, match="refine.motion_offset"):
        RefineConfig(motion_offset=None)
    assert RefineConfig(snap_behind=None).snap_behind is None


def test_a_motion_that_no_texture_shows_is_no_occlusion():
    # a static scene: a plain wall (rows 0-31) above a textured floor (rows 32-63), a crease between them. Nothing
    # moves, but the flow to the previous frame says the wall moves 4 px (filled in over a plain surface, as DIS
    # does beside a skirting board); the order test made the floor the front side (the crease stays with it)
    rng = np.random.default_rng(7)
    img = np.empty((H, W, 3), np.float32)
    img[:32] = (0.85, 0.85, 0.82) + rng.normal(0, 0.002, (32, W, 1)).astype(np.float32)
    img[32:] = texture(H - 32, W, seed=8) * np.array([1.0, 0.7, 0.45], np.float32)
    image = torch.from_numpy(img).permute(2, 0, 1)[None].contiguous()
    wrong = torch.zeros(1, 2, H, W)
    wrong[0, 0, :32] = 4.0
    flows, targets = [torch.zeros(1, 2, H, W), wrong], [image, image]
    n = 40
    crease = OrderedBoundaries(torch.zeros(n, dtype=torch.long), torch.full((n,), 31.5), torch.arange(20.0, 60.0),
                               torch.tensor([[1.0, 0.0]] * n), torch.ones(n), torch.zeros(n, dtype=torch.long),
                               torch.full((n,), 4.0))
    kw = dict(offset=6.0, motion_offset=10.0, patch=1, step=2.0)
    margins = side_margins(crease, image, flows, targets, per_side=True, **kw)
    assert (margins[:, 0] > 0.02).all()  # the floor's pixels say it does not move 4 px...
    assert (margins[:, 1].abs() < 0.005).all()  # ...the wall's pixels say nothing either way
    cfg = RefineConfig(snap_behind=None, shift=0.0, min_segment=1)
    without = refine_boundaries(crease, image, flows, targets, dataclasses.replace(cfg, min_mover_margin=None))
    assert len(without) == n  # every other test passes: the crease stays with the floor, the colours differ
    # the side that moves more is the wall, and nothing in its pixels shows that motion: dropped
    assert len(refine_boundaries(crease, image, flows, targets, cfg)) == 0
