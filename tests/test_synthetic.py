"""Tests of dynocc_data.tools.synthetic: determinism, exact ground truth, known-answer scenes and written files."""

from __future__ import annotations

import dataclasses
import os

import av
import cv2
import numpy as np
import pytest

from dynocc_data.tools import synthetic
from dynocc_data.errors import InputError
from dynocc_data.tools.synthetic import (
    LayerKind,
    SceneConfig,
    demo_scenes,
    intensity_edges_scene,
    load_scene_gt,
    make_scene,
    make_scenes,
    moving_square_scene,
    scene_gt_path,
    static_scene,
    write_scene,
)

SMALL = SceneConfig(height=72, width=96, num_frames=6, num_objects=(3, 3), num_static_occluders=(1, 2),
                    noise_sigma=0.0)
PANNING = dataclasses.replace(SMALL, height=120, width=160, static_camera_prob=0.0, camera_pan=(1.0, 1.5),
                              num_static_occluders=(2, 2), low_texture_prob=0.0)


def _decode(path: os.PathLike) -> np.ndarray:
    """All frames of a video as RGB uint8 [T,H,W,3], decoded with PyAV."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _inner_outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with at least one 4-neighbour outside it (image borders do not count)."""
    out = np.zeros_like(mask)
    out[:-1] |= mask[:-1] & ~mask[1:]
    out[1:] |= mask[1:] & ~mask[:-1]
    out[:, :-1] |= mask[:, :-1] & ~mask[:, 1:]
    out[:, 1:] |= mask[:, 1:] & ~mask[:, :-1]
    return out


# ------------------------------------------------------------------------------------------- generation


def test_same_seed_same_scene_and_different_seeds_differ():
    a, b, c = make_scene(SMALL, 5), make_scene(SMALL, 5), make_scene(SMALL, 6)
    for name in ("frames", "depth", "labels", "transforms", "layer_depth", "layer_kind", "layer_plane"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert np.abs(a.frames.astype(int) - c.frames).mean() > 10
    assert a.seed == 5 and c.seed == 6


def test_scene_arrays_have_the_documented_types():
    s = make_scene(SMALL, 1)
    t, h, w, layers = 6, 72, 96, s.num_layers
    assert s.frames.shape == (t, h, w, 3) and s.frames.dtype == np.uint8
    assert s.depth.shape == (t, h, w) and s.depth.dtype == np.float32
    assert s.labels.shape == (t, h, w) and s.labels.dtype == np.int16
    assert s.transforms.shape == (t, layers, 2, 3) and s.transforms.dtype == np.float64
    assert s.layer_depth.shape == (layers,) and s.layer_kind.shape == (layers,)
    assert s.fps == 25.0 and s.config is SMALL
    assert s.layer_kind[0] == LayerKind.BACKGROUND
    assert 1 <= np.sum(s.layer_kind == LayerKind.STATIC) <= 2 and np.sum(s.layer_kind == LayerKind.MOVING) == 3
    gt = s.ground_truth()
    assert not hasattr(gt, "frames") and gt.labels is s.labels


def test_depth_is_that_of_the_nearest_visible_layer():
    s = make_scene(dataclasses.replace(SMALL, num_objects=(4, 4), num_static_occluders=(2, 2)), 3)
    near, far = SMALL.background_depth
    # layers are ordered far to near and all nearer than the ground, so painting in id order is correct
    assert np.all(np.diff(s.layer_depth[1:]) <= 0) and s.layer_depth[1:].max() < near
    assert len(np.unique(s.labels)) >= 3  # several layers actually visible
    for lid in range(1, s.num_layers):
        np.testing.assert_allclose(s.depth[s.labels == lid], s.layer_depth[lid], rtol=1e-6)
    ground = s.depth[s.labels == 0]
    assert ground.min() >= near * 0.99 and ground.max() <= far * 1.5
    # ground plane at frame 0 (camera not moved yet): inverse depth linear from 1/far (top) to 1/near (bottom)
    ys, xs = np.nonzero(s.labels[0] == 0)
    expected = 1 / (1 / far + (1 / near - 1 / far) * ys / (s.size[0] - 1))
    np.testing.assert_allclose(s.depth[0][ys, xs], expected, rtol=1e-5)


def test_moving_square_labels_are_an_exact_translating_block():
    s = moving_square_scene(size=(96, 128), num_frames=6, velocity=(1.0, 3.0))
    side = round(0.35 * 96)
    ys, xs = np.nonzero(s.labels[0] == 1)
    top, left = ys.min(), xs.min()
    for t in range(6):
        mask = s.labels[t] == 1
        assert mask.sum() == side * side
        assert mask[top + t:top + t + side, left + 3 * t:left + 3 * t + side].all()
    np.testing.assert_array_equal(np.unique(s.depth), [10.0, 20.0])


def test_sensor_noise_has_the_configured_sigma():
    clean = make_scene(SMALL, 2)
    noisy = make_scene(dataclasses.replace(SMALL, noise_sigma=4.0), 2)
    np.testing.assert_array_equal(clean.labels, noisy.labels)
    diff = noisy.frames.astype(np.float64) - clean.frames
    assert abs(diff.mean()) < 0.2 and 3.5 < diff.std() < 4.5


def _mean_abs_laplacian(scene, lid: int) -> float | None:
    """Mean |Laplacian| of frame 0 well inside layer ``lid`` (None when too little of it is visible)."""
    inner = cv2.erode((scene.labels[0] == lid).astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    lap = cv2.Laplacian(scene.frames[0].astype(np.float32), cv2.CV_32F)
    return float(np.abs(lap[inner]).mean()) if inner.sum() > 10 else None


def test_low_texture_layers_are_nearly_uniform():
    cfg = dataclasses.replace(SMALL, intensity_edges=False, num_static_occluders=(0, 0))
    textured = make_scene(dataclasses.replace(cfg, low_texture_prob=0.0), 4)
    flat = make_scene(dataclasses.replace(cfg, low_texture_prob=1.0), 4)
    rough = [v for v in (_mean_abs_laplacian(textured, lid) for lid in range(textured.num_layers)) if v]
    smooth = [v for v in (_mean_abs_laplacian(flat, lid) for lid in range(flat.num_layers)) if v]
    assert len(rough) >= 3 and len(smooth) >= 3
    assert min(rough) > 10.0 and max(smooth) < 4.0  # noise-free: only shading, haze and 3-level noise remain


def test_intensity_edges_are_painted():
    base = dataclasses.replace(SMALL, low_texture_prob=1.0, edge_prob=1.0)

    def strong_edges(scene) -> int:
        """Strong gradients away from layer edges (only painted marks make those on flat layers)."""
        lab, kernel = scene.labels[0], np.ones((5, 5), np.uint8)
        inside = cv2.erode(lab, kernel) == cv2.dilate(lab, kernel)
        grey = cv2.cvtColor(scene.frames[0], cv2.COLOR_RGB2GRAY)
        gradient = np.abs(cv2.Sobel(grey, cv2.CV_32F, 1, 0)) + np.abs(cv2.Sobel(grey, cv2.CV_32F, 0, 1))
        return int((gradient[inside] > 200).sum())

    assert strong_edges(make_scene(dataclasses.replace(base, intensity_edges=False), 9)) < 5
    assert strong_edges(make_scene(base, 9)) > 20


# ------------------------------------------------------------------------------------------------ motion


def test_displacement_of_the_moving_square_matches_template_matching():
    s = moving_square_scene(size=(96, 128), num_frames=6, velocity=(1.0, 3.0), seed=1)
    ys, xs = np.nonzero(s.labels[1] == 1)
    cy, cx = int(ys.mean()), int(xs.mean())
    patch = s.frames[1][cy - 6:cy + 7, cx - 6:cx + 7]
    for t1 in (2, 4):
        dy, dx = s.displacement(1, 1, t1, [cy, cx])
        np.testing.assert_allclose([dy, dx], [1.0 * (t1 - 1), 3.0 * (t1 - 1)], atol=1e-9)
        score = cv2.matchTemplate(s.frames[t1], patch, cv2.TM_SQDIFF)
        my, mx = np.unravel_index(np.argmin(score), score.shape)
        assert (my + 6 - cy, mx + 6 - cx) == (round(dy), round(dx))
    np.testing.assert_allclose(s.displacement(0, 1, 4, [[10, 10], [50, 90]]), 0.0)


def test_ground_truth_flow_warps_each_frame_onto_the_next():
    s = make_scene(PANNING, 7)
    assert np.abs(s.flow(0, 1)).max() > 1.0  # the camera pans: something moves
    errors, shifted_errors = [], []
    for t0, t1 in ((1, 2), (3, 2)):
        flow = s.flow(t0, t1)
        h, w = s.size
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        map_x, map_y = xs + flow[..., 1], ys + flow[..., 0]
        warped = cv2.remap(s.frames[t1], map_x, map_y, cv2.INTER_LINEAR)
        shifted = cv2.remap(s.frames[t1], map_x + 1.5, map_y, cv2.INTER_LINEAR)
        # compare where the same layer is visible at both ends, away from its edges and the image border
        same = cv2.remap(s.labels[t1].astype(np.float32), map_x, map_y, cv2.INTER_NEAREST) == s.labels[t0]
        inside = (map_x > 2) & (map_x < w - 3) & (map_y > 2) & (map_y < h - 3)
        valid = cv2.erode((same & inside).astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        assert valid.mean() > 0.5
        ref = s.frames[t0].astype(np.float32)
        errors.append(np.abs(warped.astype(np.float32) - ref)[valid].mean())
        shifted_errors.append(np.abs(shifted.astype(np.float32) - ref)[valid].mean())
    assert max(errors) < 4.0
    assert max(errors) < 0.5 * min(shifted_errors)


def test_static_layers_move_by_parallax_inversely_proportional_to_depth():
    s = make_scene(PANNING, 11)
    static = np.flatnonzero(s.layer_kind == LayerKind.STATIC)
    assert len(static) == 2
    h, w = s.size
    bottom = s.displacement(0, 0, 5, [h - 1, w / 2])  # the nearest ground row is at depth 20
    assert np.hypot(*bottom) > 0.5  # 1..1.5 px/frame at 640 px is a quarter of that at 160 px
    for lid in static:
        d = s.displacement(lid, 0, 5, [[10.0, 20.0], [60.0, 100.0]])
        np.testing.assert_allclose(d[0], d[1], atol=1e-9)  # fronto-parallel: a pure translation
        np.testing.assert_allclose(d[0] * s.layer_depth[lid], bottom * 20.0, rtol=1e-5, atol=1e-6)


def test_moving_boundary_is_the_outline_of_the_moving_square():
    s = moving_square_scene(size=(96, 128), num_frames=6, velocity=(0.0, 3.0))
    for t, gap in ((0, 1), (2, 2), (5, 1)):
        boundary = s.moving_boundary(t, gap)
        square = s.labels[t] == 1
        np.testing.assert_array_equal(boundary, _inner_outline(square))
        xs = np.nonzero(square.any(axis=0))[0]
        assert boundary[:, xs.min()].sum() > 10 and boundary[:, xs.max()].sum() > 10  # trailing and leading
    assert not s.moving_boundary(2, 1, min_motion=3.5).any()  # relative motion is exactly 3 px per frame
    assert s.moving_boundary(2, 2, min_motion=5.9).any()
    with pytest.raises(ValueError, match="gap"):
        s.moving_boundary(2, 6)
    with pytest.raises(IndexError):
        s.moving_boundary(6, 1)


def test_moving_boundary_across_keeps_the_leading_and_trailing_sides_only():
    # the square slides 3 px/frame to the right: its top and bottom sides only slide along themselves
    s = moving_square_scene(size=(96, 128), num_frames=6, velocity=(0.0, 3.0))
    across, full = s.moving_boundary(2, 1, motion="across"), s.moving_boundary(2, 1)
    assert (across & ~full).sum() == 0
    ys, xs = np.nonzero(s.labels[2] == 1)
    top, bottom, left, right = ys.min(), ys.max(), xs.min(), xs.max()
    inner = slice(top + 3, bottom - 2)  # away from the corners, where the smoothed normal turns
    assert across[inner, left].all() and across[inner, right].all()
    assert not across[top, left + 3:right - 2].any() and not across[bottom, left + 3:right - 2].any()
    assert full[top, left + 3:right - 2].all()
    with pytest.raises(ValueError, match="motion"):
        s.moving_boundary(2, 1, motion="sideways")


def test_nothing_moves_in_the_static_scene():
    s = static_scene()
    assert s.num_layers >= 3
    for t in range(s.num_frames):
        assert not s.moving_boundary(t, 1).any()
        assert s.moving_boundary(t, 1, min_motion=0.0).any()  # occlusion edges exist, they just do not move
    np.testing.assert_array_equal(s.frames[0], s.frames[-1])
    assert np.abs(s.flow(0, 5)).max() < 1e-9


def test_intensity_edges_scene_moves_rigidly_with_no_depth_edge():
    s = intensity_edges_scene(size=(96, 128), num_frames=6, velocity=(0.0, 2.0))
    grey = cv2.cvtColor(s.frames[0], cv2.COLOR_RGB2GRAY)
    assert (np.abs(cv2.Sobel(grey, cv2.CV_32F, 1, 0)) > 300).sum() > 100  # strong painted edges
    for t in range(s.num_frames):
        assert not s.moving_boundary(t, 1).any()
    np.testing.assert_allclose(s.flow(0, 3), np.broadcast_to([0.0, 6.0], (96, 128, 2)), atol=1e-9)
    np.testing.assert_array_equal(s.frames[3][:, 6:], s.frames[0][:, :-6])  # integer shift: exact copy


def test_moving_boundary_marks_the_nearer_side_of_a_layer_change():
    s = make_scene(PANNING, 7)
    boundary, lab, dep = s.moving_boundary(2, 2), s.labels[2], s.depth[2]
    ys, xs = np.nonzero(boundary)
    assert len(ys) > 20
    padded_lab = np.pad(lab, 1, constant_values=-1)
    padded_dep = np.pad(dep, 1, constant_values=-np.inf)
    for y, x in zip(ys, xs):
        around = [(y, x + 1), (y + 2, x + 1), (y + 1, x), (y + 1, x + 2)]
        farther = [padded_dep[p] > dep[y, x] and padded_lab[p] != lab[y, x] for p in around]
        assert any(farther)


# ------------------------------------------------------------------------------------------------- files


def test_write_scene_round_trips_video_and_ground_truth(tmp_path):
    s = make_scene(dataclasses.replace(SMALL, num_frames=8, height=64, width=96), 8)
    video, gt_file = write_scene(s, tmp_path / "out", "clip")
    assert sorted(os.listdir(tmp_path / "out")) == ["clip.gt.npz", "clip.mp4"]
    assert gt_file == scene_gt_path(video)
    frames = _decode(video)
    assert frames.shape == (8, 64, 96, 3)
    assert np.abs(frames.astype(np.float32) - s.frames).mean() < 8.0
    with np.load(gt_file, allow_pickle=False) as data:
        assert all(data[k].dtype != object for k in data.files)
        np.testing.assert_array_equal(data["depth"], s.depth)
    gt = load_scene_gt(gt_file)
    np.testing.assert_array_equal(gt.depth, s.depth)
    np.testing.assert_array_equal(gt.labels, s.labels)
    np.testing.assert_array_equal(gt.transforms, s.transforms)
    assert gt.config == s.config and gt.seed == 8 and gt.fps == 25.0
    np.testing.assert_array_equal(gt.moving_boundary(3, 2), s.moving_boundary(3, 2))
    np.testing.assert_array_equal(gt.displacement(1, 0, 7, [5.0, 6.0]), s.displacement(1, 0, 7, [5.0, 6.0]))


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    s = make_scene(dataclasses.replace(SMALL, height=64), 1)
    write_scene(s, tmp_path, "clip")
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(synthetic.np, "savez_compressed", boom)
    with pytest.raises(OSError, match="disk full"):
        write_scene(make_scene(dataclasses.replace(SMALL, height=64), 2), tmp_path, "clip")
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == before  # old pair intact, no temporaries
    with pytest.raises(ValueError, match="even"):
        write_scene(make_scene(dataclasses.replace(SMALL, height=65), 1), tmp_path, "odd")
    assert not list(tmp_path.glob("odd*"))


def test_load_scene_gt_rejects_bad_files_with_one_line_errors(tmp_path):
    with pytest.raises(InputError, match="no such"):
        load_scene_gt(tmp_path / "missing.gt.npz")
    junk = tmp_path / "junk.gt.npz"
    junk.write_bytes(b"not a zip file")
    with pytest.raises(InputError) as err:
        load_scene_gt(junk)
    assert str(err.value).startswith(str(junk)) and "\n" not in str(err.value)
    pickled = tmp_path / "pickled.gt.npz"
    np.savez(pickled, format=np.array(synthetic.GT_FORMAT), config=np.array([{"evil": 1}], dtype=object))
    with pytest.raises(InputError, match="pickled.gt.npz"):
        load_scene_gt(pickled)
    partial = tmp_path / "partial.gt.npz"
    np.savez(partial, depth=np.zeros((2, 4, 4), np.float32))
    with pytest.raises(InputError, match="missing"):
        load_scene_gt(partial)


def test_make_scenes_writes_one_seeded_scene_each(tmp_path):
    cfg = dataclasses.replace(SMALL, height=48, width=64, num_objects=(2, 2))
    videos = make_scenes(tmp_path, 2, seed=10, config=cfg)
    assert [v.name for v in videos] == ["scene_00010.mp4", "scene_00011.mp4"]
    for i, video in enumerate(videos):
        gt = load_scene_gt(scene_gt_path(video))
        assert gt.seed == 10 + i and gt.config == cfg
        np.testing.assert_array_equal(gt.labels, make_scene(cfg, 10 + i).labels)
        assert _decode(video).shape == (6, 48, 64, 3)


def test_demo_scenes_are_small_decodable_videos(tmp_path):
    videos = demo_scenes(tmp_path)
    assert len(videos) == 2
    for video in videos:
        assert _decode(video).shape == (24, 240, 320, 3)
        gt = load_scene_gt(scene_gt_path(video))
        assert (gt.layer_kind == LayerKind.MOVING).sum() >= 2
        assert gt.moving_boundary(12, 2).sum() > 50


def test_config_validation_and_json_round_trip():
    cfg = SceneConfig(height=120, width=160, speed=(1.0, 2.0))
    assert SceneConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="speed"):
        SceneConfig(speed=(3.0, 1.0))
    with pytest.raises(ValueError, match="nearer than the ground"):
        SceneConfig(object_depth=(5.0, 25.0))
    with pytest.raises(ValueError, match="crf"):
        SceneConfig(crf=60)


# ----------------------------------------------------------------------------------------------- shadows


def test_square_shadow_is_its_silhouette_shifted_and_darkened_exactly():
    plain = moving_square_scene((96, 128), 6, velocity=(0.0, 3.0), seed=2, side=30)
    shaded = moving_square_scene((96, 128), 6, velocity=(0.0, 3.0), seed=2, side=30, shadow=(5, 7, 0.5, 0.0))
    for name in ("depth", "labels", "transforms", "layer_kind"):
        np.testing.assert_array_equal(getattr(plain, name), getattr(shaded, name), err_msg=name)
    assert shaded.config.cast_shadows and not plain.config.cast_shadows
    for t in range(6):
        square = plain.labels[t] == 1
        ys, xs = np.nonzero(square)
        shadow = np.zeros_like(square)
        shadow[ys + 5, xs + 7] = True  # the silhouette moved 5 down and 7 right, in every frame
        lit, dark = plain.frames[t].astype(int), shaded.frames[t].astype(int)
        on_ground = shadow & ~square
        assert on_ground.sum() > 200
        assert np.abs(dark[on_ground] - np.floor(lit[on_ground] * 0.5 + 0.5)).max() <= 1  # half the light
        np.testing.assert_array_equal(dark[~shadow], lit[~shadow])  # nothing else changes, the square included
    # the shadow moves with the square (3 px a frame), not a depth edge: the ground truth is the shadowless one
    np.testing.assert_array_equal(plain.moving_boundary(2, 1), shaded.moving_boundary(2, 1))


def test_random_scene_shadows_only_darken_the_ground_and_keep_the_seed():
    cfg = dataclasses.replace(SMALL, height=120, width=160, num_objects=(2, 2))
    plain, shaded = make_scene(cfg, 4), make_scene(dataclasses.replace(cfg, cast_shadows=True), 4)
    for name in ("depth", "labels", "transforms", "layer_depth", "layer_kind", "layer_plane"):
        np.testing.assert_array_equal(getattr(plain, name), getattr(shaded, name), err_msg=name)
    lit, dark = plain.frames.astype(int), shaded.frames.astype(int)
    assert (dark <= lit + 1).all()  # shadows never brighten
    ground = plain.labels == 0
    darker = (lit - dark).mean(axis=-1) > 8
    assert darker[ground].mean() > 0.005  # visible shadows on the ground (about 1 % of it here)...
    inner = np.stack([cv2.erode((lab > 0).astype(np.uint8), np.ones((3, 3), np.uint8)) for lab in plain.labels]) > 0
    assert not darker[inner].any()  # ...and none on the objects and occluders in front of it
    with pytest.raises(ValueError, match="shadow_strength"):
        SceneConfig(shadow_strength=(0.5, 1.5))
