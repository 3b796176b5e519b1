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
