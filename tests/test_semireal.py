"""Semi-real scenes (dynocc_data.tools.semireal): footage as layer 0, composited objects with exact ground truth."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from dynocc_data.tools.scoring import score_items
from dynocc_data.tools.semireal import SEMIREAL_CONFIG, make_semireal_scene, make_semireal_scenes, read_video_frames
from dynocc_data.tools.synthetic import LayerKind, load_scene_gt, moving_square_scene, write_scene

CFG = dataclasses.replace(SEMIREAL_CONFIG, num_objects=(2, 2), speed=(2.0, 3.0))


def _footage(num_frames: int = 8, size: tuple[int, int] = (96, 128)) -> np.ndarray:
    """Plain textured footage: a square sliding over a background (any content will do)."""
    return moving_square_scene(size, num_frames, velocity=(0.0, 1.0), seed=3).frames


def test_footage_is_layer_zero_of_unknown_depth_and_objects_are_exact():
    footage = _footage()
    s = make_semireal_scene(footage, CFG, seed=5)
    assert s.frames.shape == footage.shape and s.labels.shape == footage.shape[:3]
    assert s.layer_kind.tolist() == [LayerKind.FOOTAGE, LayerKind.MOVING, LayerKind.MOVING]
    far = CFG.background_depth[1]
    np.testing.assert_array_equal(s.depth[s.labels == 0], np.float32(far))
    for lid in (1, 2):
        assert (s.labels == lid).any()
        assert (s.depth[s.labels == lid] == np.float32(s.layer_depth[lid])).all() and s.layer_depth[lid] < far
    # the footage shows through, untouched, away from objects and their shadows and blur
    away = np.ones(s.labels.shape, bool)
    for t in range(len(footage)):
        near = np.zeros(s.labels.shape[1:], bool)
        ys, xs = np.nonzero(s.labels[t] > 0)
        near[max(ys.min() - 40, 0):ys.max() + 40, max(xs.min() - 40, 0):xs.max() + 40] = True
        away[t] = ~near
    assert away.any()
    np.testing.assert_array_equal(s.frames[away], footage[away])
    # the objects move (a moving boundary exists) and the same seed gives the same scene
    assert s.moving_boundary(3, 2).sum() > 20
    np.testing.assert_array_equal(make_semireal_scene(footage, CFG, seed=5).frames, s.frames)


def test_edges_are_matted_and_shadows_darken_the_footage():
    footage = _footage()
    still = dataclasses.replace(CFG, num_objects=(1, 1), speed=(0.0, 0.0), rotation=0.0, scale_change=0.0)
    plain = make_semireal_scene(footage, dataclasses.replace(still, cast_shadows=False), seed=2)
    shaded = make_semireal_scene(footage, dataclasses.replace(still, cast_shadows=True), seed=2)
    np.testing.assert_array_equal(plain.labels, shaded.labels)
    ground = plain.labels == 0
    dark = (plain.frames.astype(int) - shaded.frames).mean(-1)
    assert (dark[ground] > 5).sum() > 50 and (dark > -1).all()  # a shadow on the footage, nothing brighter
    # a matte, not a hard cut: pixels just outside the object mix its colour with the footage's
    t = 3
    inside = plain.labels[t] == 1
    ring = np.zeros_like(inside)
    touching = inside[:-2, 1:-1] | inside[2:, 1:-1] | inside[1:-1, :-2] | inside[1:-1, 2:]
    ring[1:-1, 1:-1] = ~inside[1:-1, 1:-1] & touching
    mixed = np.abs(plain.frames[t].astype(int) - footage[t]).max(-1)[ring]
    assert (mixed > 3).mean() > 0.5


def test_motion_blur_smears_a_moving_object_along_its_motion():
    footage = np.full((6, 64, 96, 3), 128, np.uint8)
    fast = dataclasses.replace(CFG, num_objects=(1, 1), speed=(6.0, 6.0), cast_shadows=False, rotation=0.0)
    still = dataclasses.replace(fast, speed=(0.0, 0.0))
    # the still object has a crisper outline: a larger mean gradient across its edge
    crisp = np.abs(np.diff(make_semireal_scene(footage, still, seed=1).frames[2].astype(float), axis=1)).max()
    smeared = np.abs(np.diff(make_semireal_scene(footage, fast, seed=1).frames[2].astype(float), axis=1)).max()
    assert smeared < crisp


def test_object_speeds_are_per_second_so_half_the_frame_rate_moves_twice_as_far_per_frame():
    # the same scene (seed, textures) over a 25 fps clip and over the same clip at 12.5 fps (every other frame); with
    # an odd length at 25 fps both clips have their middle frame (where objects are placed) at the same instant
    fast = moving_square_scene((96, 128), 17, velocity=(0.0, 1.0), seed=3).frames
    slow = fast[::2]
    cfg = dataclasses.replace(CFG, speed=(10.0, 10.0), cast_shadows=False)
    for seed in (0, 3):
        a = make_semireal_scene(fast, dataclasses.replace(cfg, fps=25.0), seed=seed, textures=fast)
        b = make_semireal_scene(slow, dataclasses.replace(cfg, fps=12.5), seed=seed, textures=fast)
        assert b.fps == 12.5 and len(b.frames) == 9
        np.testing.assert_array_equal(b.layer_depth, a.layer_depth)
        step_a = np.linalg.norm(np.diff(a.transforms[:, 1:, :, 2], axis=0), axis=-1)  # [16, objects] px per frame
        step_b = np.linalg.norm(np.diff(b.transforms[:, 1:, :, 2], axis=0), axis=-1)
        assert step_a.mean() > 1.0  # the objects do move (about 2 px a frame at 25 fps)
        # between frames t and t+1 at 12.5 fps an object moves twice as far as between 2t and 2t+1 at 25 fps, and
        # as far as between 2t and 2t+2: frame t at 12.5 fps shows the objects where frame 2t at 25 fps does
        np.testing.assert_allclose(step_b, 2 * step_a[0::2], rtol=0.01)
        np.testing.assert_allclose(step_b, step_a[0::2] + step_a[1::2], rtol=0.06)
        np.testing.assert_allclose(b.transforms[:, 1:, :, :2], a.transforms[0::2, 1:, :, :2], atol=1e-9)
        np.testing.assert_allclose(b.transforms[:, 1:, :, 2], a.transforms[0::2, 1:, :, 2], atol=0.5)
        # the ground truth follows: the same labels and depths at the same instants
        assert (b.labels == a.labels[0::2]).mean() > 0.995
        for lid in (1, 2):
            assert (b.labels == lid).any() and (b.depth[b.labels == lid] == np.float32(b.layer_depth[lid])).all()
        # faster footage keeps the per-frame rates, as generate keeps its gap in frames above 25 fps
        c = make_semireal_scene(fast, dataclasses.replace(cfg, fps=30.0), seed=seed, textures=fast)
        np.testing.assert_array_equal(c.transforms, a.transforms)


def test_written_scenes_score_pairs_touching_objects_and_leave_footage_pairs_unscored(tmp_path):
    src = write_scene(moving_square_scene((96, 128), 12, velocity=(0.0, 1.0), seed=4), tmp_path / "src", "clip")[0]
    videos = make_semireal_scenes(src, tmp_path / "scenes", 2, seed=10, config=dataclasses.replace(CFG, num_frames=8))
    assert [v.name for v in videos] == ["clip_00010.mp4", "clip_00011.mp4"]
    gt = load_scene_gt(tmp_path / "scenes" / "clip_00010.gt.npz")
    assert gt.layer_kind[0] == LayerKind.FOOTAGE and gt.num_frames == 8 and gt.size == (96, 128)
    # one pair across an object's outline (right order), one wholly on the footage
    t = 4
    ys, xs = np.nonzero(gt.labels[t] == 1)
    y, x = int(ys[len(ys) // 2]), int(xs[len(xs) // 2])
    row = gt.labels[t, y]
    x_out = int(np.flatnonzero(row == 0)[np.argmin(np.abs(np.flatnonzero(row == 0) - x))])
    fy, fx = np.argwhere(gt.labels[t] == 0)[0]
    pairs = [(y, x_out, y, x), (fy, fx, fy, fx + 0)]
    item = {"image": torch.zeros(3, 96, 128, dtype=torch.uint8), "pairs": torch.tensor(pairs),
            "ordinal": torch.tensor([1, 1]), "meta": {"key": "k", "video": "v.mp4", "frame": t, "orig_size": (96, 128)}}
    res = score_items([item], {"v.mp4": gt})
    assert res.counts["correct"] == 1 and res.counts["unscored"] == 1 and res.correct_of_scored == 1.0
    assert res.share("unscored") == 0.5


@pytest.mark.realdata
def test_semireal_scene_over_a_real_clip(shared_videos, tmp_path):
    clip, fps = read_video_frames(shared_videos / "people_walking.mp4")
    assert clip.shape == (150, 360, 640, 3) and fps == pytest.approx(10.0)
    s = make_semireal_scene(clip[:6], CFG, seed=1, textures=clip)
    assert s.frames.shape == (6, 360, 640, 3) and set(np.unique(s.labels)) == {0, 1, 2}


def test_bad_footage_is_refused():
    with pytest.raises(ValueError, match="footage"):
        make_semireal_scene(np.zeros((1, 16, 16, 3), np.uint8))
