"""Semi-real scenes: real footage behind composited moving objects, with exact ground truth at every object.

The footage (any video) is layer 0, of kind :attr:`~dynocc_data.tools.synthetic.LayerKind.FOOTAGE`: its depth
is unknown, only known to be farther than every composited object, so the ground truth stores it at
``SceneConfig.background_depth[1]`` and the scoring (:mod:`dynocc_data.tools.scoring`) reports pairs with both
points on it as *unscored*. In front of it move 2-4 objects (``SceneConfig.num_objects``) made to look like
photographed things rather than synthetic layers:

* **photo textures**: each object's texture is a patch cut from the footage itself (another frame and place,
  maybe mirrored, with a colour and brightness change), so it has the statistics of real images;
* **irregular outlines**: smooth blobs with sharper high-frequency wiggles and dents, and rounded boxes;
* **alpha-matted edges**: the silhouette's alpha is blurred over about a pixel, as a matte cut-out is;
* **motion blur**: each frame averages the object over a half-frame shutter (5 sub-frame positions);
* **cast shadows** (``SceneConfig.cast_shadows``): a soft darkened copy of the silhouette, offset from it, moving
  over the footage with the object. A shadow is not a depth edge.

The camera of the footage may move; the composited objects move in image coordinates, and the ground-truth motion
of the footage layer is taken as zero (so coverage on semi-real scenes counts the objects' own motion only).

The objects move the same distance over ``generate``'s flow gap whatever the footage's rate: the config's rates
(``speed``, ``rotation``, ``scale_change``, per frame) are per frame of a video at :data:`SPEED_FPS` (``generate``'s
reference rate, which its flow gap counts frames at). Over slower footage they scale by ``SPEED_FPS / fps`` (at
12.5 fps an object moves twice as far between frames, and ``generate`` halves the gap there); over faster footage
they stay per frame, as ``generate`` keeps its gap in frames there. Without it, slow footage gave objects too slow
to order, whatever the method did.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import cv2
import numpy as np

from ..errors import InputError
from ..generation.config import GenerateConfig
from ..generation.video import open_video
from .synthetic import (
    _REF_WIDTH,
    LayerKind,
    Scene,
    SceneConfig,
    _depth_maps,
    _fixed,
    _rounded_rect,
    _similarity,
    _smooth_path,
    write_scene,
)

__all__ = ["SEMIREAL_CONFIG", "SPEED_FPS", "make_semireal_scene", "make_semireal_scenes", "read_video_frames"]

log = logging.getLogger(__name__)

SEMIREAL_CONFIG = SceneConfig(cast_shadows=True, num_objects=(2, 4), noise_sigma=0.0)
"""Defaults of semi-real scenes (the footage brings its own noise; frame size comes from the footage)."""

SPEED_FPS = float(GenerateConfig.reference_fps)  # type: ignore[arg-type]  # a number by default, never None
"""Frame rate that the scene config's per-frame rates are counted at: ``GenerateConfig``'s default reference rate."""

_SHUTTER = 0.5  # exposure as a share of the frame interval
_SUBFRAMES = 5  # positions averaged for motion blur
_MATTE_SIGMA = 0.8  # px of blur on the silhouette's alpha: a matte's soft edge


def read_video_frames(video: str | os.PathLike, *, max_side: int | None = 640) -> tuple[np.ndarray, float]:
    """Decode every frame of ``video``, resized as ``generate`` resizes them (longer side at most ``max_side``).

    Args:
        video: the clip.
        max_side: longer side at most this (``None``: keep the size).

    Returns:
        ``(frames, fps)``: uint8 [T,H,W,3] RGB and the frame rate (25 when the video does not say).

    Raises:
        InputError: the file cannot be opened or decoded.
    """
    with open_video(str(video), max_side=max_side) as reader:
        frames = [f for _, f in reader.iter_frames(range(reader.num_frames))]
        fps = float(reader.fps) if reader.fps and reader.fps > 0 else 25.0
    if not frames:
        raise InputError(video, "no decodable frame")
    return np.stack(frames), fps


def _irregular_outline(rng: np.random.Generator, radius: float, n: int = 360) -> np.ndarray:
    """A closed irregular outline [n,2] (x, y), sometimes a rounded box.

    A blob with low harmonics for the shape and weaker high ones (k up to 14) for the wiggles and dents of a
    real object's silhouette.
    """
    if rng.random() < 0.3:
        aspect = rng.uniform(0.5, 2.0)
        return _rounded_rect(radius * np.sqrt(aspect), radius / np.sqrt(aspect), rng.uniform(3, 8), n)
    theta = np.linspace(0, 2 * np.pi, n, endpoint=False)
    k = np.arange(2, 15)
    amp = np.where(k <= 5, rng.uniform(0, 0.3, size=k.size) / (k - 1), rng.uniform(0, 0.06, size=k.size) * 4 / k)
    phase = rng.uniform(0, 2 * np.pi, size=k.size)
    r = radius * (1 + (amp[:, None] * np.cos(k[:, None] * theta + phase[:, None])).sum(0))
    return np.stack([np.maximum(r, 0.3 * radius) * np.cos(theta), np.maximum(r, 0.3 * radius) * np.sin(theta)], 1)


def _photo_patch(rng: np.random.Generator, footage: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A texture float32 [h,w,3] cut from a random frame and place of the footage.

    Scaled up when the footage is too small, maybe mirrored, with a random colour balance and brightness.
    """
    h, w = shape
    frame = footage[int(rng.integers(len(footage)))].astype(np.float32)
    fh, fw = frame.shape[:2]
    zoom = max(h / fh, w / fw, rng.uniform(0.8, 1.5))
    if zoom != 1.0:
        frame = cv2.resize(frame, (int(np.ceil(fw * zoom)) + 1, int(np.ceil(fh * zoom)) + 1),
                           interpolation=cv2.INTER_LINEAR)
    y = int(rng.integers(0, frame.shape[0] - h + 1))
    x = int(rng.integers(0, frame.shape[1] - w + 1))
    patch = frame[y:y + h, x:x + w].copy()
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    if rng.random() < 0.5:
        patch = patch[::-1]
    gain = rng.uniform(0.75, 1.3) * rng.uniform(0.8, 1.2, size=3)  # brightness and colour cast
    return np.clip(patch * gain.astype(np.float32) + rng.uniform(-25, 25), 0, 255)


def _matte(outline: np.ndarray, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Soft alpha float32 [h,w] of a centred outline (anti-aliased, then blurred like a matte) and its centre."""
    half = np.ceil(np.abs(outline).max(axis=0)).astype(int) + pad
    w, h = 2 * half + 1
    centre = half.astype(np.float64)
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [_fixed(outline + centre)], 255, cv2.LINE_AA, 4)
    alpha = cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), _MATTE_SIGMA)
    return alpha, centre


@dataclasses.dataclass
class _Object:
    """One composited object: premultiplied RGBA texture, per-frame transforms, depth and shadow."""

    rgba: np.ndarray
    transforms: np.ndarray  # [T,2,3] texture -> image
    depth: float
    shadow_offset: tuple[float, float] | None
    shadow_strength: float
    shadow_sigma: float


def _make_object(rng: np.random.Generator, cfg: SceneConfig, footage: np.ndarray, light: float) -> _Object:
    """An object with a photo texture and an irregular matte, moving smoothly with some rotation.

    Its rates are the config's per frame at :data:`SPEED_FPS`, scaled up for slower footage (``cfg.fps``).
    """
    # one footage frame, in frames at SPEED_FPS; faster footage keeps the per-frame rates, as generate keeps its gap
    frame_time = max(1.0, SPEED_FPS / cfg.fps)
    focal = cfg.focal * cfg.width
    depth = rng.uniform(*cfg.object_depth)
    radius = focal * rng.uniform(*cfg.object_size) / depth
    speed = rng.uniform(*cfg.speed) * cfg.width / _REF_WIDTH
    pad = int(np.ceil(3 * _MATTE_SIGMA)) + 2
    alpha, centre = _matte(_irregular_outline(rng, radius), pad)
    rgb = _photo_patch(rng, footage, alpha.shape)
    # a soft shading gradient: a weak hint of a 3-D shape
    yy, xx = np.mgrid[0:alpha.shape[0], 0:alpha.shape[1]].astype(np.float32)
    gy, gx = rng.normal(0, 0.15, size=2)
    rgb *= (1 + gx * (xx / alpha.shape[1] - 0.5) * 2 + gy * (yy / alpha.shape[0] - 0.5) * 2)[..., None]
    rgba = np.concatenate([np.clip(rgb, 0, 255) * alpha[..., None], alpha[..., None]], axis=-1).astype(np.float32)
    heading = rng.uniform(0, 2 * np.pi)
    own = _smooth_path(rng, cfg.num_frames, speed * np.array([np.cos(heading), np.sin(heading)]),
                       frame_time=frame_time)
    mid = (cfg.num_frames - 1) // 2
    placed = np.array([rng.uniform(0.15, 0.85) * cfg.width, rng.uniform(0.2, 0.8) * cfg.height])
    steps = (np.arange(cfg.num_frames) - mid) * frame_time
    angle = rng.uniform(0, 2 * np.pi) + np.deg2rad(rng.uniform(-cfg.rotation, cfg.rotation)) * steps
    scale = np.exp(rng.uniform(-cfg.scale_change, cfg.scale_change) * steps)
    transforms = _similarity(centre, placed + own - own[mid], angle, scale)
    reach = rng.uniform(*cfg.shadow_offset) * radius
    direction = light + rng.uniform(-0.2, 0.2)
    return _Object(rgba=rgba, transforms=transforms, depth=depth,
                   shadow_offset=(reach * np.cos(direction), reach * np.sin(direction)) if cfg.cast_shadows else None,
                   shadow_strength=float(rng.uniform(*cfg.shadow_strength)),
                   shadow_sigma=float(rng.uniform(*cfg.shadow_softness) * cfg.width / _REF_WIDTH))


def _at(transforms: np.ndarray, time: float) -> np.ndarray:
    """The 2x3 transform at a fractional frame time (linear between frames, clamped at the ends)."""
    t0 = int(np.clip(np.floor(time), 0, len(transforms) - 1))
    t1 = min(t0 + 1, len(transforms) - 1)
    f = float(np.clip(time - t0, 0.0, 1.0))
    return (1 - f) * transforms[t0] + f * transforms[t1]


def _warp(texture: np.ndarray, affine: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A texture warped into an ``(H, W)`` frame (zero outside)."""
    return cv2.warpAffine(texture, affine, (size[1], size[0]), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _composite(footage: np.ndarray, objects: list[_Object], noise_sigma: float,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Frames uint8 [T,H,W,3] (shadows, then motion-blurred objects far to near) and labels int16 [T,H,W]."""
    num_frames, h, w = footage.shape[:3]
    frames = np.empty_like(footage)
    labels = np.zeros((num_frames, h, w), np.int16)
    offsets = (np.arange(_SUBFRAMES) / (_SUBFRAMES - 1) - 0.5) * _SHUTTER
    for t in range(num_frames):
        canvas = footage[t].astype(np.float32)
        for obj in objects:
            if obj.shadow_offset is None:
                continue
            affine = obj.transforms[t].copy()
            affine[:, 2] += obj.shadow_offset
            silhouette = cv2.GaussianBlur(_warp(np.ascontiguousarray(obj.rgba[..., 3]), affine, (h, w)), (0, 0),
                                          obj.shadow_sigma)
            canvas *= (1.0 - np.float32(obj.shadow_strength) * silhouette)[..., None]
        for lid, obj in enumerate(objects, start=1):
            blurred = sum(_warp(obj.rgba, _at(obj.transforms, t + dt), (h, w)) for dt in offsets) / _SUBFRAMES
            canvas *= 1.0 - blurred[..., 3:4]
            canvas += blurred[..., :3]
            sharp = _warp(np.ascontiguousarray(obj.rgba[..., 3]), obj.transforms[t], (h, w))
            labels[t][sharp >= 0.5] = lid
        if noise_sigma > 0:
            canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * np.float32(noise_sigma)
        frames[t] = np.clip(canvas + 0.5, 0, 255).astype(np.uint8)
    return frames, labels


def make_semireal_scene(footage: np.ndarray, config: SceneConfig | None = None, seed: int = 0,
                        textures: np.ndarray | None = None) -> Scene:
    """Composite random moving objects over real footage; the same inputs and seed give the same scene.

    Args:
        footage: uint8 [T,H,W,3] RGB frames of the background (T >= 2, H and W even to be written as video).
        config: objects, speeds, depths and shadows (:data:`SEMIREAL_CONFIG` by default); its frame size and
            count are replaced by the footage's; its ``fps`` is the footage's rate (speeds are per frame at
            :data:`SPEED_FPS` and scale by ``SPEED_FPS / fps`` below that rate).
        seed: seed of every random choice.
        textures: frames to cut object textures from (default: ``footage``).

    Returns:
        A :class:`~dynocc_data.tools.synthetic.Scene` whose layer 0 is the footage (``LayerKind.FOOTAGE``).

    Raises:
        ValueError: the footage is not a [T,H,W,3] uint8 array of at least 2 frames of 16x16.
    """
    footage = np.asarray(footage)
    if footage.ndim != 4 or footage.shape[-1] != 3 or footage.dtype != np.uint8 or len(footage) < 2:
        raise ValueError(f"footage must be uint8 [T>=2,H,W,3], got {footage.dtype} {footage.shape}")
    num_frames, h, w = footage.shape[:3]
    cfg = dataclasses.replace(config if config is not None else SEMIREAL_CONFIG, height=h, width=w,
                              num_frames=num_frames)
    rng = np.random.default_rng([int(seed), 0x5E31])
    light = rng.uniform(0, 2 * np.pi)
    count = int(rng.integers(cfg.num_objects[0], cfg.num_objects[1] + 1))
    objects = [_make_object(rng, cfg, footage if textures is None else textures, light) for _ in range(count)]
    objects.sort(key=lambda o: -o.depth)  # painter's order: far to near
    frames, labels = _composite(footage, objects, cfg.noise_sigma, rng)
    far = float(cfg.background_depth[1])
    identity = np.broadcast_to(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), (num_frames, 2, 3))
    transforms = np.stack([identity] + [o.transforms for o in objects], axis=1)
    planes = np.array([[1 / far, 0.0, 0.0]] + [[1 / o.depth, 0.0, 0.0] for o in objects])
    return Scene(depth=_depth_maps(labels, transforms, planes), labels=labels, transforms=transforms,
                 layer_depth=np.array([far] + [o.depth for o in objects], np.float32),
                 layer_kind=np.array([LayerKind.FOOTAGE] + [LayerKind.MOVING] * count, np.int8),
                 layer_plane=planes, fps=float(cfg.fps), config=cfg, seed=int(seed), frames=frames)


def make_semireal_scenes(video: str | os.PathLike, out_dir: str | os.PathLike, n: int, *, seed: int = 0,
                         config: SceneConfig | None = None, max_side: int | None = 640) -> list[Path]:
    """Write ``n`` semi-real scenes over ``video`` into ``out_dir`` as ``<stem>_<seed+i>.mp4`` + ``.gt.npz``.

    Scene i takes ``config.num_frames`` consecutive frames (all the clip when it is shorter) from a start drawn
    with seed ``seed + i``; frames are resized as ``generate`` would (``max_side``) and cropped to even sizes.

    Args:
        video: the real clip used as the background layer.
        out_dir: where the scenes are written.
        n: number of scenes.
        seed: seed of the first scene (scene i uses ``seed + i``).
        config: the scene parameters (default: the semi-real preset).
        max_side: longer side of the frames at most this.

    Returns:
        The paths of the written videos.

    Raises:
        InputError: the video cannot be read or has fewer than 2 frames.
    """
    cfg = config if config is not None else SEMIREAL_CONFIG
    clip, fps = read_video_frames(video, max_side=max_side)
    clip = clip[:, : clip.shape[1] // 2 * 2, : clip.shape[2] // 2 * 2]
    total = len(clip)
    if total < 2:
        raise InputError(video, f"has {total} decodable frame(s); a semi-real scene needs at least 2")
    length = min(cfg.num_frames, total)
    videos = []
    for i in range(n):
        start = int(np.random.default_rng([seed + i, 0x57A7]).integers(0, total - length + 1))
        scene = make_semireal_scene(clip[start:start + length], dataclasses.replace(cfg, fps=fps), seed + i,
                                    textures=clip)
        videos.append(write_scene(scene, out_dir, f"{Path(video).stem}_{seed + i:05d}")[0])
        log.info("semi-real scene %s: frames %d..%d of %s", videos[-1].name, start, start + length - 1, video)
    return videos
