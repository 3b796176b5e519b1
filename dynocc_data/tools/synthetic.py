"""Synthetic layered dynamic scenes with exact ground truth (depth, visible layer, motion, occlusion boundaries).

A scene is a stack of 2.5D layers composited far to near (painter's algorithm): a textured ground plane, static
occluders (posts, bars, blobs) and moving objects with smooth irregular outlines, under a camera that translates
sideways so that every layer moves by an amount proportional to its inverse depth (parallax). Each layer carries
a texture with premultiplied alpha in its own *texture coordinates* and, per frame, a 2x3 affine transform from
texture to image coordinates; depth is an inverse-depth plane in texture coordinates. From these, depth, labels,
displacements, dense flow and moving occlusion boundaries are recomputed exactly.

Pixel coordinates follow docs/FORMAT.md: ``(y, x)`` with ``(0, 0)`` the centre of the top-left pixel (the same
convention as ``cv2.warpAffine``). Affine transforms act on ``(x, y, 1)`` like OpenCV's.

Written scenes are ``<name>.mp4`` (H.264, yuv420p) plus ``<name>.gt.npz`` (``numpy.load(..., allow_pickle=False)``):

========================  ==========================  =====================================================
member                    dtype / shape               meaning
========================  ==========================  =====================================================
``format``                str                         ``"dynocc-synthetic/1"``
``depth``                 float32 (or 16) [T,H,W]     depth of the visible surface (+ = farther)
``labels``                int16 [T,H,W]               visible layer id (0 = background)
``transforms``            float64 [T,L,2,3]           texture -> image affine of every layer and frame
``layer_depth``           float32 [L]                 depth of each layer (background: mean in frame 0)
``layer_kind``            int8 [L]                    :class:`LayerKind`
``layer_plane``           float64 [L,3]               ``1/depth = a + b*u + c*v`` in texture coords (u, v)
``fps``, ``seed``         float64, int64              frame rate, generator seed
``config``                str                         :class:`SceneConfig` as JSON
========================  ==========================  =====================================================

Longer than 500 lines because scene layout, rendering, ground truth and the video writer share one scene
description, and the tests and ``evaluate`` rely on them agreeing exactly.
"""

from __future__ import annotations

import colorsys
import dataclasses
import json
import logging
import os
import secrets
import zipfile
from dataclasses import dataclass
from enum import IntEnum
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from ..errors import InputError

log = logging.getLogger(__name__)

__all__ = [
    "GT_FORMAT",
    "GT_SUFFIX",
    "LayerKind",
    "Scene",
    "SceneConfig",
    "SceneGT",
    "demo_scenes",
    "intensity_edges_scene",
    "load_scene_gt",
    "make_scene",
    "make_scenes",
    "moving_square_scene",
    "scene_gt_path",
    "static_scene",
    "write_scene",
]

GT_FORMAT = "dynocc-synthetic/1"
GT_SUFFIX = ".gt.npz"
_REF_WIDTH = 640.0  # speeds and pans in the config are pixels per frame at this width
_GLYPHS = list("ABCDEFGHJKLMNPRSTUVWXYZ0123456789")
_FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_TRIPLEX)


class LayerKind(IntEnum):
    """What a layer is: the ground plane, an occluder fixed in the world, or an independently moving object."""

    BACKGROUND = 0
    STATIC = 1
    MOVING = 2
    FOOTAGE = 3  #: real video as the background of a semi-real scene: its depth is unknown (farther than all else)


# --------------------------------------------------------------------------------------------------- config


@dataclass
class SceneConfig:
    """Parameters of a random scene. ``(low, high)`` ranges are sampled uniformly per scene or per layer.

    Pixel speeds are for a 640-pixel-wide frame and scale with ``width``; sizes and texture scales are in world
    units and reach the image through ``focal * width / depth``, so apparent size falls off as 1/depth.

    Attributes:
        height: frame height in pixels (even if the scene is to be written as yuv420p video)
        width: frame width in pixels (even for video)
        num_frames: frames per clip
        fps: frame rate written to the video
        num_objects: number of independently moving objects
        num_static_occluders: posts, bars and blobs fixed in the world
        speed: own image speed of a moving object, px/frame at 640 px width
        rotation: largest rotation rate of a moving object, degrees/frame
        scale_change: largest rate of apparent scale change of a moving object, log-scale/frame
        camera_pan: camera pan, px/frame of the nearest ground row at 640 px
        static_camera_prob: chance that the camera does not move at all
        pan_tilt: largest angle of the pan direction away from horizontal, degrees
        background_depth: ground-plane depth at the bottom and top rows
        object_depth: depth of moving objects (nearer than the ground)
        occluder_depth: depth of static occluders
        object_size: world radius of moving objects and blob occluders
        occluder_width: world width of posts and bars
        focal: focal length as a fraction of the frame width
        texture_scale: world size of the coarsest texture features
        texture_detail: amplitude ratio between successive texture octaves
        texture_contrast: texture standard deviation, grey levels (pre-haze)
        low_texture_prob: chance that a layer is nearly uniform (hard for optical flow)
        low_texture_contrast: texture standard deviation of such layers, grey levels
        intensity_edges: paint stripes, rectangles and text (edges that are not depth edges)
        edge_prob: chance that an object or occluder gets painted marks (the ground always does)
        haze_distance: depth at which 63% of a surface's colour is replaced by the haze colour
        noise_sigma: Gaussian sensor noise, grey levels
        cast_shadows: moving objects cast soft shadows on the ground (not depth edges)
        shadow_strength: share of the light a shadow's core takes away
        shadow_offset: shadow displacement from its object, in object radii
        shadow_softness: Gaussian blur of a shadow's outline, px at 640 width
        crf: H.264 constant rate factor used by :func:`write_scene` (0 = lossless, 51 = worst)
        preset: x264 speed preset used by :func:`write_scene`

    Raises:
        ValueError: with a one-line message, when a value is out of range or inconsistent.
    """

    height: int = 360
    width: int = 640
    num_frames: int = 40
    fps: float = 25.0
    num_objects: tuple[int, int] = (2, 4)
    num_static_occluders: tuple[int, int] = (0, 2)
    speed: tuple[float, float] = (0.5, 4.0)
    rotation: float = 0.4
    scale_change: float = 0.002
    camera_pan: tuple[float, float] = (0.0, 1.5)
    static_camera_prob: float = 0.25
    pan_tilt: float = 20.0
    background_depth: tuple[float, float] = (20.0, 60.0)
    object_depth: tuple[float, float] = (5.0, 18.0)
    occluder_depth: tuple[float, float] = (7.0, 16.0)
    object_size: tuple[float, float] = (0.4, 1.0)
    occluder_width: tuple[float, float] = (0.15, 0.5)
    focal: float = 1.0
    texture_scale: tuple[float, float] = (0.3, 1.5)
    texture_detail: tuple[float, float] = (0.5, 0.75)
    texture_contrast: tuple[float, float] = (20.0, 55.0)
    low_texture_prob: float = 0.2
    low_texture_contrast: float = 3.0
    intensity_edges: bool = True
    edge_prob: float = 0.5
    haze_distance: float = 80.0
    noise_sigma: float = 2.0
    cast_shadows: bool = False
    shadow_strength: tuple[float, float] = (0.3, 0.6)
    shadow_offset: tuple[float, float] = (0.3, 0.9)
    shadow_softness: tuple[float, float] = (1.5, 5.0)
    crf: int = 23
    preset: str = "medium"

    def __post_init__(self) -> None:
        """Turn JSON lists back into tuples and reject inconsistent values with a one-line message."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                setattr(self, f.name, tuple(value))
        if self.height < 16 or self.width < 16:
            raise ValueError(f"SceneConfig: frame size {self.height}x{self.width} is below 16x16")
        if self.num_frames < 2:
            raise ValueError(f"SceneConfig: num_frames must be at least 2, got {self.num_frames}")
        if self.fps <= 0:
            raise ValueError(f"SceneConfig: fps must be positive, got {self.fps}")
        for name in ("num_objects", "num_static_occluders", "speed", "camera_pan", "background_depth",
                     "object_depth", "occluder_depth", "object_size", "occluder_width", "texture_scale",
                     "texture_detail", "texture_contrast", "shadow_strength", "shadow_offset", "shadow_softness"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"SceneConfig: {name} must be a range 0 <= low <= high, got {(lo, hi)}")
        for name in ("object_depth", "occluder_depth", "object_size", "occluder_width", "texture_scale"):
            if getattr(self, name)[0] <= 0:
                raise ValueError(f"SceneConfig: {name} must be positive, got {getattr(self, name)}")
        near, far = self.background_depth
        if not near < far:
            raise ValueError(f"SceneConfig: background_depth must grow towards the top, got {(near, far)}")
        for name in ("object_depth", "occluder_depth"):
            if getattr(self, name)[1] >= near:
                raise ValueError(f"SceneConfig: {name} {getattr(self, name)} must be nearer than the ground ({near})")
        for name in ("static_camera_prob", "low_texture_prob", "edge_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"SceneConfig: {name} must be a probability, got {getattr(self, name)}")
        if self.shadow_strength[1] > 1.0:
            raise ValueError(f"SceneConfig: shadow_strength must be at most 1, got {self.shadow_strength}")
        if self.noise_sigma < 0 or self.haze_distance <= 0 or self.focal <= 0:
            raise ValueError("SceneConfig: noise_sigma must be >= 0, haze_distance and focal > 0")
        if not 0 <= self.crf <= 51:
            raise ValueError(f"SceneConfig: crf must be in 0..51, got {self.crf}")

    def to_json(self) -> str:
        """The config as JSON.

        Returns:
            A JSON object string, keys sorted.
        """
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SceneConfig:
        """Rebuild a config from :meth:`to_json` output.

        Args:
            text: the JSON object; unknown keys (newer versions) are ignored with a warning.

        Returns:
            The config.

        Raises:
            ValueError: when ``text`` is not a JSON object, or a value is out of range.
        """
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("scene config is not a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            log.warning("ignoring unknown scene config keys %s", unknown)
        return cls(**{k: v for k, v in data.items() if k in known})


# ------------------------------------------------------------------------------------------- ground truth


def _to3x3(affine: np.ndarray) -> np.ndarray:
    """Append the ``[0, 0, 1]`` row to a stack of 2x3 affine matrices."""
    out = np.zeros(affine.shape[:-2] + (3, 3), np.float64)
    out[..., :2, :] = affine
    out[..., 2, 2] = 1.0
    return out


def _apply(matrix: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply (stacks of) 2x3 or 3x3 affine matrices to points ``(x, y)``."""
    return (matrix[..., 0, 0] * x + matrix[..., 0, 1] * y + matrix[..., 0, 2],
            matrix[..., 1, 0] * x + matrix[..., 1, 1] * y + matrix[..., 1, 2])


def _depth_maps(labels: np.ndarray, transforms: np.ndarray, planes: np.ndarray) -> np.ndarray:
    """Depth of the visible surface from labels, texture->image transforms and inverse-depth planes."""
    num_frames, height, width = labels.shape
    xs, ys = np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64)
    depth = np.empty(labels.shape, np.float32)
    for t in range(num_frames):
        inv = np.linalg.inv(_to3x3(transforms[t]))[:, :2, :]  # image -> texture, [L,2,3]
        # 1/z = a + b*u + c*v with (u, v) affine in (x, y): fold into image-space coefficients [L,3]
        coef = planes[:, 1, None] * inv[:, 0] + planes[:, 2, None] * inv[:, 1]
        coef[:, 2] += planes[:, 0]
        inv_depth = coef[:, 2][labels[t]]  # exact for fronto-parallel layers, the usual case
        for lid in np.flatnonzero(np.any(coef[:, :2] != 0, axis=1)):
            mask = labels[t] == lid
            plane = np.add.outer(coef[lid, 1] * ys, coef[lid, 0] * xs + coef[lid, 2])
            inv_depth[mask] = plane[mask]
        depth[t] = 1.0 / inv_depth
    return depth


@dataclass(eq=False, repr=False, kw_only=True)
class SceneGT:
    """Ground truth of a layered scene: everything except the frames, with exact motion queries.

    ``transforms[t, l]`` maps layer ``l``'s texture coordinates ``(u, v, 1)`` to image ``(x, y)`` in frame ``t``;
    layer ids are ordered far to near (0 is the ground), so a larger id always occludes a smaller one.

    Attributes:
        depth: float32 [T,H,W], depth of the visible surface (+ = farther)
        labels: int16 [T,H,W], visible layer id (0 = background)
        transforms: float64 [T,L,2,3], texture -> image affine per frame and layer
        layer_depth: float32 [L], depth of each layer (background: mean visible depth in frame 0)
        layer_kind: int8 [L], :class:`LayerKind`
        layer_plane: float64 [L,3], inverse depth ``a + b*u + c*v`` in texture coordinates
        fps: the frame rate.
        config: the config the scene was made from.
        seed: the seed it was made with.
    """

    depth: np.ndarray
    labels: np.ndarray
    transforms: np.ndarray
    layer_depth: np.ndarray
    layer_kind: np.ndarray
    layer_plane: np.ndarray
    fps: float
    config: SceneConfig
    seed: int

    @property
    def num_frames(self) -> int:
        """Number of frames T."""
        return int(self.labels.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """Frame size ``(H, W)``."""
        return int(self.labels.shape[1]), int(self.labels.shape[2])

    @property
    def num_layers(self) -> int:
        """Number of layers L, background included."""
        return int(self.transforms.shape[1])

    def __repr__(self) -> str:
        """Short summary instead of dumping arrays."""
        t, (h, w) = self.num_frames, self.size
        return f"{type(self).__name__}(seed={self.seed}, frames={t}, size={h}x{w}, layers={self.num_layers})"

    def _check_frame(self, t: int) -> int:
        """Return ``t`` as an int or raise IndexError when it is not a frame of this scene."""
        if not 0 <= int(t) < self.num_frames:
            raise IndexError(f"frame {t} is outside this {self.num_frames}-frame scene")
        return int(t)

    def _motion(self, t0: int, t1: int) -> np.ndarray:
        """Per-layer 3x3 maps from image positions in frame t0 to image positions in frame t1, [L,3,3]."""
        t0, t1 = self._check_frame(t0), self._check_frame(t1)
        return _to3x3(self.transforms[t1]) @ np.linalg.inv(_to3x3(self.transforms[t0]))

    def displacement(self, layer: int | np.ndarray, t0: int, t1: int, yx: Any) -> np.ndarray:
        """Exact image displacement ``(dy, dx)`` from frame t0 to t1 of the points of ``layer`` at ``yx`` in t0.

        The layer need not be visible there (its motion extends over the whole plane).

        Args:
            layer: a layer id, or an integer array broadcastable to ``yx.shape[:-1]``.
            t0: the frame the points are in.
            t1: the frame they move to.
            yx: ``[..., 2]`` (y, x) pixel coordinates.

        Returns:
            float64 ``[..., 2]`` displacements ``(dy, dx)``.

        Raises:
            ValueError: when ``yx`` is not ``[..., 2]``.
            IndexError: for a layer or frame outside the scene.
        """
        yx = np.asarray(yx, np.float64)
        if yx.shape[-1:] != (2,):
            raise ValueError(f"yx must have shape [..., 2], got {yx.shape}")
        layer = np.asarray(layer)
        if layer.size and (layer.min() < 0 or layer.max() >= self.num_layers):
            raise IndexError(f"layer {layer} is outside 0..{self.num_layers - 1}")
        m = self._motion(t0, t1)[layer]
        x, y = yx[..., 1], yx[..., 0]
        nx, ny = _apply(m, x, y)
        return np.stack(np.broadcast_arrays(ny - y, nx - x), axis=-1)

    def flow(self, t0: int, t1: int) -> np.ndarray:
        """Dense ground-truth motion of the surface visible in frame t0 to frame t1.

        Args:
            t0: the source frame.
            t1: the target frame.

        Returns:
            ``(dy, dx)`` float32 [H,W,2].
        """
        m = self._motion(t0, t1) - np.eye(3)
        h, w = self.size
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
        d = m[self.labels[int(t0)]]
        dx, dy = _apply(d, xs, ys)
        return np.stack([dy, dx], axis=-1).astype(np.float32)

    def moving_boundary(self, t: int, gap: int = 1, min_motion: float = 1.0, *,
                        motion: str = "any") -> np.ndarray:
        """Ground-truth moving occlusion boundary of frame t, bool [H,W], marked on the front (nearer) side.

        A pixel is marked when its visible layer differs from a 4-neighbour's, it is the nearer of the two, and
        the two layers' relative displacement at that place, from t to t+gap or from t to t-gap (whichever
        frames exist), is at least ``min_motion`` pixels: in any direction with ``motion="any"``, or across
        the outline with ``motion="across"`` (the component along the outline's normal, i.e. where the front
        layer covers or uncovers the back one; an outline whose sides only slide along it is left out).

        Args:
            t: the frame.
            gap: the frame distance over which motion is measured (>= 1).
            min_motion: the least relative displacement, in pixels.
            motion: ``"any"`` or ``"across"``.

        Returns:
            bool [H,W].

        Raises:
            ValueError: for a bad ``gap`` or ``motion``, or when no frame is ``gap`` away from ``t``.
            IndexError: when ``t`` is not a frame of the scene.
        """
        t = self._check_frame(t)
        if gap < 1:
            raise ValueError(f"gap must be a positive number of frames, got {gap}")
        if motion not in ("any", "across"):
            raise ValueError(f"motion must be 'any' or 'across', got {motion!r}")
        others = [u for u in (t + gap, t - gap) if 0 <= u < self.num_frames]
        if not others:
            raise ValueError(f"gap {gap} leaves no frame on either side of frame {t} ({self.num_frames} frames)")
        motions = [self._motion(t, u) - np.eye(3) for u in others]
        lab, dep = self.labels[t], self.depth[t]
        out = np.zeros(lab.shape, bool)
        normals: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for dy, dx in ((1, 0), (0, 1)):
            h, w = lab.shape[0] - dy, lab.shape[1] - dx
            ya, xa = np.nonzero(lab[:h, :w] != lab[dy:, dx:])
            yb, xb = ya + dy, xa + dx
            la, lb = lab[ya, xa], lab[yb, xb]
            a_front = dep[ya, xa] < dep[yb, xb]
            my, mx = ya + dy / 2, xa + dx / 2  # judge both layers' motion midway between the two pixels
            moving = np.zeros(ya.shape, bool)
            if motion == "across":
                ny, nx = _outline_normals(lab, np.where(a_front, la, lb), ya, xa, yb, xb, normals)
            for m in motions:
                ax, ay = _apply(m[la], mx, my)
                bx, by = _apply(m[lb], mx, my)
                rel = np.hypot(ax - bx, ay - by) if motion == "any" else np.abs((ay - by) * ny + (ax - bx) * nx)
                moving |= rel >= min_motion
            fy = np.where(a_front, ya, yb)[moving]
            fx = np.where(a_front, xa, xb)[moving]
            out[fy, fx] = True
        return out


def _outline_normals(labels: np.ndarray, front: np.ndarray, ya: np.ndarray, xa: np.ndarray, yb: np.ndarray,
                     xb: np.ndarray, cache: dict[int, tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Unit normals ``(ny, nx)`` of the outline of layer ``front`` between 4-neighbours a and b.

    The gradient of the layer's mask smoothed over a few pixels (so that a staircase outline gets its true
    direction).
    """
    gy = np.zeros(ya.shape, np.float64)
    gx = np.zeros(ya.shape, np.float64)
    for layer in np.unique(front):
        if int(layer) not in cache:
            smooth = cv2.GaussianBlur((labels == layer).astype(np.float32), (0, 0), 2.0)
            cache[int(layer)] = (cv2.Sobel(smooth, cv2.CV_32F, 0, 1), cv2.Sobel(smooth, cv2.CV_32F, 1, 0))
        sy, sx = cache[int(layer)]
        sel = front == layer
        gy[sel] = sy[ya[sel], xa[sel]] + sy[yb[sel], xb[sel]]
        gx[sel] = sx[ya[sel], xa[sel]] + sx[yb[sel], xb[sel]]
    norm = np.maximum(np.hypot(gy, gx), 1e-12)
    return gy / norm, gx / norm


@dataclass(eq=False, repr=False, kw_only=True)
class Scene(SceneGT):
    """A rendered scene: :class:`SceneGT` plus the frames (uint8 [T,H,W,3] RGB, sensor noise included).

    Attributes:
        frames: uint8 [T,H,W,3] RGB
    """

    frames: np.ndarray

    def ground_truth(self) -> SceneGT:
        """The same scene without its frames.

        Returns:
            The ground truth (arrays shared, not copied).
        """
        return SceneGT(**{f.name: getattr(self, f.name) for f in dataclasses.fields(SceneGT)})


# ---------------------------------------------------------------------------------------------- rendering


@dataclass
class _Layer:
    """One layer to render: premultiplied RGBA texture, inverse-depth plane, kind and per-frame transforms."""

    rgba: np.ndarray  # float32 [h,w,4], rgb premultiplied by alpha, 0..255
    plane: np.ndarray  # float64 [3]
    kind: LayerKind
    transforms: np.ndarray  # float64 [T,2,3]
    depth: float  # representative depth used for the painter's order
    border: int = cv2.BORDER_CONSTANT  # backgrounds reflect so they never show a hole
    shadow: _Shadow | None = None  # the soft shadow this layer casts on the background, if any


@dataclass
class _Shadow:
    """A cast shadow: the layer's silhouette shifted by ``offset`` (x, y) px, blurred, darkening the background."""

    offset: tuple[float, float]
    strength: float  # share of the light taken away where the (blurred) silhouette is solid
    sigma: float  # Gaussian blur of the outline, px


def _shadow_light(layers: list[_Layer], t: int, size: tuple[int, int]) -> np.ndarray | None:
    """Light factor float32 [H,W,1] (1 = unshadowed) of the shadows cast in frame t, or None without any."""
    h, w = size
    light = None
    for layer in layers:
        if layer.shadow is None:
            continue
        affine = layer.transforms[t].copy()
        affine[:, 2] += layer.shadow.offset
        silhouette = cv2.warpAffine(np.ascontiguousarray(layer.rgba[..., 3]), affine, (w, h),
                                    flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        if layer.shadow.sigma > 0:
            silhouette = cv2.GaussianBlur(silhouette, (0, 0), layer.shadow.sigma)
        factor = 1.0 - np.float32(layer.shadow.strength) * silhouette
        light = factor if light is None else light * factor
    return None if light is None else light[..., None]


def _footprint(affine: np.ndarray, tex_size: tuple[int, int], size: tuple[int, int]) -> tuple[int, ...] | None:
    """Image bounding box ``(x0, y0, x1, y1)`` covered by a warped texture, clipped to the frame; None if off."""
    h, w = tex_size
    cx = np.array([-1.0, w, -1.0, w])
    cy = np.array([-1.0, -1.0, h, h])
    x, y = _apply(affine, cx, cy)
    x0, y0 = max(int(np.floor(x.min())) - 1, 0), max(int(np.floor(y.min())) - 1, 0)
    x1, y1 = min(int(np.ceil(x.max())) + 2, size[1]), min(int(np.ceil(y.max())) + 2, size[0])
    return (x0, y0, x1, y1) if x0 < x1 and y0 < y1 else None


def _render(layers: list[_Layer], size: tuple[int, int], noise_sigma: float,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Composite layers far to near in every frame; returns frames uint8 [T,H,W,3] and labels int16 [T,H,W]."""
    h, w = size
    num_frames = layers[0].transforms.shape[0]
    frames = np.empty((num_frames, h, w, 3), np.uint8)
    labels = np.zeros((num_frames, h, w), np.int16)
    for t in range(num_frames):
        canvas = np.zeros((h, w, 3), np.float32)
        for lid, layer in enumerate(layers):
            if layer.border == cv2.BORDER_CONSTANT:
                box = _footprint(layer.transforms[t], layer.rgba.shape[:2], size)
            else:
                box = (0, 0, w, h)  # a reflecting (background) layer always covers the whole frame
            if box is None:
                continue
            x0, y0, x1, y1 = box
            affine = layer.transforms[t].copy()
            affine[:, 2] -= (x0, y0)  # warp only the layer's bounding box
            warped = cv2.warpAffine(layer.rgba, affine, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
                                    borderMode=layer.border, borderValue=(0, 0, 0, 0))
            alpha = warped[..., 3:4]
            region = canvas[y0:y1, x0:x1]
            if lid == 0:  # the background is opaque: nothing behind it to blend
                region[...] = warped[..., :3]
                light = _shadow_light(layers, t, size)  # shadows fall on the ground, under everything else
                if light is not None:
                    canvas *= light
                continue
            region *= 1.0 - alpha
            region += warped[..., :3]
            labels[t, y0:y1, x0:x1][alpha[..., 0] >= 0.5] = lid
        if noise_sigma > 0:
            canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * np.float32(noise_sigma)
        canvas += 0.5  # round to nearest when truncating below
        np.clip(canvas, 0, 255, out=canvas)
        frames[t] = canvas.astype(np.uint8)
    return frames, labels


def _assemble(layers: list[_Layer], config: SceneConfig, seed: int, rng: np.random.Generator) -> Scene:
    """Render layers (ordered far to near, layer 0 opaque) into a :class:`Scene` with its ground truth."""
    frames, labels = _render(layers, (config.height, config.width), config.noise_sigma, rng)
    transforms = np.stack([layer.transforms for layer in layers], axis=1)
    planes = np.stack([layer.plane for layer in layers]).astype(np.float64)
    depth = _depth_maps(labels, transforms, planes)
    layer_depth = np.array([layer.depth for layer in layers], np.float32)
    background = labels[0] == 0
    if background.any():
        layer_depth[0] = float(depth[0][background].mean())
    return Scene(depth=depth, labels=labels, transforms=transforms, layer_depth=layer_depth,
                 layer_kind=np.array([layer.kind for layer in layers], np.int8), layer_plane=planes,
                 fps=float(config.fps), config=config, seed=int(seed), frames=frames)


# ----------------------------------------------------------------------------------------------- textures


def _fractal_noise(rng: np.random.Generator, shape: tuple[int, int], coarse: float, persistence: float,
                   channels: int) -> np.ndarray:
    """Unit-variance multi-scale noise float32 [h,w,c]: bicubic Gaussian octaves from ``coarse`` px down to 1 px."""
    h, w = shape
    out = np.zeros((h, w, channels), np.float32)
    cell, amp = max(float(coarse), 1.0), 1.0
    while True:
        gh, gw = int(h / cell) + 4, int(w / cell) + 4
        grid = rng.standard_normal((gh, gw, channels), dtype=np.float32)
        up = cv2.resize(grid, (int(np.ceil(gw * cell)), int(np.ceil(gh * cell))), interpolation=cv2.INTER_CUBIC)
        oy, ox = rng.integers(0, int(cell) + 1, size=2)
        out += amp * up.reshape(up.shape[0], up.shape[1], channels)[oy:oy + h, ox:ox + w]
        if cell <= 1.0:
            break
        cell, amp = max(cell / 2.0, 1.0), amp * persistence
    return out / (out.std() + 1e-6)


def _random_colour(rng: np.random.Generator, earthy: bool = False) -> np.ndarray:
    """A random RGB colour (0..255); ``earthy`` favours the browns, greens and greys of ground surfaces."""
    if earthy and rng.random() < 0.75:
        hsv = rng.uniform(0.05, 0.35), rng.uniform(0.1, 0.55), rng.uniform(0.3, 0.75)
    else:
        hsv = rng.uniform(0, 1), rng.uniform(0.1, 0.9), rng.uniform(0.25, 0.9)
    return np.array(colorsys.hsv_to_rgb(*hsv), np.float32) * 255


def _mark_colour(rng: np.random.Generator) -> np.ndarray:
    """A high-contrast paint colour: near white, near black or a saturated hue."""
    choice = rng.integers(3)
    if choice == 0:
        return np.full(3, rng.uniform(215, 255), np.float32)
    if choice == 1:
        return np.full(3, rng.uniform(0, 40), np.float32)
    return np.array(colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.8, 1), rng.uniform(0.8, 1)),
                    np.float32) * 255


def _texture(rng: np.random.Generator, shape: tuple[int, int], coarse: float, persistence: float,
             contrast: float, base: np.ndarray) -> np.ndarray:
    """Coloured multi-scale noise texture float32 [h,w,3] around ``base`` with standard deviation ~``contrast``."""
    lum = _fractal_noise(rng, shape, coarse, persistence, 1)
    # colour varies mostly at coarse scales, as in natural surfaces; fine detail is mostly luminance
    chroma = _fractal_noise(rng, shape, coarse * rng.uniform(0.5, 2.0), 0.6 * persistence, 3)
    k = rng.uniform(0.15, 0.5)
    return base + (contrast / np.sqrt(1 + k * k)) * (lum + k * chroma)


def _fixed(points: np.ndarray) -> np.ndarray:
    """Points as int32 with 4 fractional bits, for OpenCV drawing with ``shift=4`` (sub-pixel, anti-aliased)."""
    return np.round(np.asarray(points, np.float64) * 16).astype(np.int32)


def _paint_marks(rng: np.random.Generator, img: np.ndarray, count: int, unit: float,
                 region: tuple[float, float, float, float]) -> None:
    """Paint high-contrast stripes, rectangles and text into ``img`` in place: intensity edges, not depth edges.

    ``unit`` is the typical mark size in pixels of ``img``; mark centres fall in ``region`` ``(x0, y0, x1, y1)``.
    """
    h, w = img.shape[:2]
    for _ in range(count):
        cover = np.zeros((h, w), np.uint8)  # cv2 draws text only into 8-bit images: draw coverage, then blend
        centre = np.array([rng.uniform(region[0], region[2]), rng.uniform(region[1], region[3])])
        size = unit * rng.uniform(0.6, 1.6)
        kind = rng.integers(3)
        if kind == 0:  # parallel stripes
            angle = rng.uniform(0, np.pi)
            along, across = np.array([np.cos(angle), np.sin(angle)]), np.array([-np.sin(angle), np.cos(angle)])
            thick = max(1, int(round(size * rng.uniform(0.1, 0.25))))
            count_stripes, length = int(rng.integers(2, 6)), size * rng.uniform(1.0, 3.0)
            for i in range(count_stripes):
                mid = centre + across * (i - (count_stripes - 1) / 2) * 2.2 * thick
                a, b = _fixed(mid - along * length / 2), _fixed(mid + along * length / 2)
                cv2.line(cover, tuple(int(v) for v in a), tuple(int(v) for v in b), 255, thick, cv2.LINE_AA, 4)
        elif kind == 1:  # rectangle, filled or outlined
            box = cv2.boxPoints(((float(centre[0]), float(centre[1])),
                                 (size * rng.uniform(0.5, 2.0), size * rng.uniform(0.3, 1.2)),
                                 float(rng.uniform(0, 180))))
            if rng.random() < 0.5:
                cv2.fillPoly(cover, [_fixed(box)], 255, cv2.LINE_AA, 4)
            else:
                thick = max(1, int(round(size * rng.uniform(0.05, 0.15))))
                cv2.polylines(cover, [_fixed(box)], True, 255, thick, cv2.LINE_AA, 4)
        else:  # text
            text = "".join(rng.choice(_GLYPHS, size=int(rng.integers(2, 6))))
            font = _FONTS[int(rng.integers(len(_FONTS)))]
            scale = max(size / 30.0, 0.3)
            thick = max(1, int(round(scale * rng.uniform(1.0, 2.5))))
            (tw, th), _ = cv2.getTextSize(text, font, scale, thick)
            org = (int(centre[0] - tw / 2), int(centre[1] + th / 2))
            cv2.putText(cover, text, org, font, scale, 255, thick, cv2.LINE_AA)
        x, y, bw, bh = cv2.boundingRect(cover)
        if bw == 0 or bh == 0:
            continue
        a = cover[y:y + bh, x:x + bw, None].astype(np.float32) / 255.0
        patch = img[y:y + bh, x:x + bw]
        patch *= 1.0 - a
        patch += a * _mark_colour(rng)


def _haze(rgb: np.ndarray, depth: np.ndarray | float, haze_rgb: np.ndarray, distance: float) -> np.ndarray:
    """Blend colours towards the haze colour with weight ``1 - exp(-depth / distance)`` (aerial perspective)."""
    k = 1.0 - np.exp(-np.asarray(depth, np.float32) / distance)
    if np.ndim(k) == 1:
        k = k[:, None, None]  # one weight per texture row
    return rgb * (1.0 - k) + haze_rgb * k


def _premultiply(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Clip colours to 0..255 and stack them premultiplied with alpha into float32 [h,w,4]."""
    rgb = np.clip(rgb, 0, 255) * alpha[..., None]
    return np.concatenate([rgb, alpha[..., None]], axis=-1).astype(np.float32)


# -------------------------------------------------------------------------------------------------- shapes


def _blob_outline(rng: np.random.Generator, radius: float, n: int = 240) -> np.ndarray:
    """Smooth irregular closed outline ``r(θ) = r0 (1 + Σ a_k cos(kθ + φ_k))``, k = 2..5, as [n,2] (x, y)."""
    theta = np.linspace(0, 2 * np.pi, n, endpoint=False)
    k = np.arange(2, 6)
    amp = rng.uniform(0, 0.28, size=4) / (k - 1)
    phase = rng.uniform(0, 2 * np.pi, size=4)
    r = radius * (1 + (amp[:, None] * np.cos(k[:, None] * theta + phase[:, None])).sum(0))
    r = np.maximum(r, 0.35 * radius)
    return np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)


def _rounded_rect(half_w: float, half_h: float, exponent: float, n: int = 240) -> np.ndarray:
    """Superellipse ``|x/a|^p + |y/b|^p = 1`` (a rounded rectangle for large p) as [n,2] (x, y)."""
    theta = np.linspace(0, 2 * np.pi, n, endpoint=False)
    c, s = np.cos(theta), np.sin(theta)
    return np.stack([half_w * np.sign(c) * np.abs(c) ** (2 / exponent),
                     half_h * np.sign(s) * np.abs(s) ** (2 / exponent)], axis=1)


def _shape_mask(outline: np.ndarray, pad: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Anti-aliased alpha float32 [h,w] of a centred outline and the texture position of its centre (x, y)."""
    half = np.ceil(np.abs(outline).max(axis=0)).astype(int) + pad
    w, h = 2 * half + 1
    centre = half.astype(np.float64)
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [_fixed(outline + centre)], 255, cv2.LINE_AA, 4)
    return mask.astype(np.float32) / 255.0, centre


def _smooth_path(rng: np.random.Generator, num_frames: int, velocity: np.ndarray, wobble: float = 0.3,
                 frame_time: float = 1.0) -> np.ndarray:
    """Cumulative image displacement [T,2] (x, y) of a smooth motion around ``velocity`` px/frame, zero at t=0.

    ``frame_time`` is the duration of one of the ``num_frames`` frames in the frames ``velocity`` and the wobble's
    periods count (2: a clip at half the rate, each frame moving twice as far); the random draws do not depend on it.
    """
    t = np.arange(num_frames - 1, dtype=np.float64) * frame_time
    period = rng.uniform(15, 60, size=2)
    phase = rng.uniform(0, 2 * np.pi, size=2)
    gain = 1 + wobble * np.sin(2 * np.pi * t / period[0] + phase[0])
    turn = 0.5 * wobble * np.sin(2 * np.pi * t / period[1] + phase[1])  # radians of slow heading change
    c, s = np.cos(turn), np.sin(turn)
    vel = frame_time * gain[:, None] * np.stack([c * velocity[0] - s * velocity[1], s * velocity[0] + c * velocity[1]],
                                                axis=1)
    return np.concatenate([np.zeros((1, 2)), np.cumsum(vel, axis=0)])


def _similarity(centre: np.ndarray, position: np.ndarray, angle: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Per-frame 2x3 transforms [T,2,3] putting texture point ``centre`` at ``position`` with rotation and scale."""
    c, s = np.cos(angle) * scale, np.sin(angle) * scale
    out = np.empty((len(position), 2, 3), np.float64)
    out[:, 0, 0], out[:, 0, 1], out[:, 1, 0], out[:, 1, 1] = c, -s, s, c
    out[:, 0, 2] = position[:, 0] - (c * centre[0] - s * centre[1])
    out[:, 1, 2] = position[:, 1] - (s * centre[0] + c * centre[1])
    return out


# --------------------------------------------------------------------------------------------- random scene


@dataclass
class _Context:
    """What every layer of one random scene shares while it is being built."""

    config: SceneConfig
    rng: np.random.Generator
    focal: float  # pixels
    scale: float  # width / 640
    camera: np.ndarray  # [T,2] (x, y) camera-induced displacement of the nearest ground row
    haze: np.ndarray  # RGB

    @property
    def ref_depth(self) -> float:
        """Depth whose image displacement equals ``camera`` (the nearest ground row)."""
        return self.config.background_depth[0]

    @property
    def mid(self) -> int:
        """The frame at which layers are placed in view."""
        return (self.config.num_frames - 1) // 2


def _camera_path(rng: np.random.Generator, cfg: SceneConfig) -> np.ndarray:
    """Camera-induced displacement [T,2] of the nearest ground row: a smooth sideways pan, or zero."""
    still = rng.random() < cfg.static_camera_prob
    speed = rng.uniform(*cfg.camera_pan) * cfg.width / _REF_WIDTH
    angle = np.deg2rad(rng.uniform(-cfg.pan_tilt, cfg.pan_tilt)) + np.pi * rng.integers(2)
    if still or speed == 0:
        return np.zeros((cfg.num_frames, 2))
    path = _smooth_path(rng, cfg.num_frames, speed * np.array([np.cos(angle), np.sin(angle)]))
    # a long vertical excursion would reveal the ground beyond its horizon: keep it well inside
    near, far = cfg.background_depth
    rows_to_horizon = (1 / far) / ((1 / near - 1 / far) / (cfg.height - 1))
    limit = 0.3 * rows_to_horizon
    peak = np.abs(path[:, 1]).max()
    if peak > limit:
        path[:, 1] *= limit / peak
    return path


def _layer_look(ctx: _Context, shape: tuple[int, int], depth: float, pixels_per_unit: float,
                earthy: bool = False) -> np.ndarray:
    """Un-hazed texture float32 [h,w,3] of a layer: feature size follows depth, sometimes nearly uniform."""
    rng, cfg = ctx.rng, ctx.config
    coarse = rng.uniform(*cfg.texture_scale) * pixels_per_unit
    persistence = rng.uniform(*cfg.texture_detail)
    low = rng.random() < cfg.low_texture_prob
    contrast = cfg.low_texture_contrast if low else rng.uniform(*cfg.texture_contrast)
    return _texture(rng, shape, coarse, persistence, contrast, _random_colour(rng, earthy))


def _background(ctx: _Context) -> _Layer:
    """Textured ground plane: inverse depth linear in image rows, shifted and sheared by the camera pan.

    With a sideways camera translation a ground plane's image motion is ``camera * ref_depth / depth`` and its
    inverse depth is affine in the row, so the exact motion is an affine shear. The texture is a ground-plane
    noise pattern seen in perspective (features shrink towards the horizon), rendered at 2x and area-averaged.
    """
    cfg, rng = ctx.config, ctx.rng
    h, w, zref = cfg.height, cfg.width, ctx.ref_depth
    near, far = cfg.background_depth
    slope = (1 / near - 1 / far) / max(h - 1, 1)  # d(1/z)/d(row)
    max_cx, max_cy = np.abs(ctx.camera).max(axis=0)
    my = int(np.ceil((max_cy * zref / near + 2) / (1 - max_cy * zref * slope))) + 2
    mx = int(np.ceil(max_cx * zref * (1 / near + slope * my))) + 4
    hc, wc = h + 2 * my, w + 2 * mx
    plane = np.array([1 / far - slope * my, 0.0, slope])  # 1/z at canvas row v = plane[0] + slope * v

    # perspective view of a ground texture: canvas pixel -> ground (X lateral, Z depth), sampled at 2x
    us = (np.arange(2 * wc) + 0.5) / 2 - 0.5
    vs = (np.arange(2 * hc) + 0.5) / 2 - 0.5
    z_rows = 1 / (plane[0] + slope * vs)
    ground_x = (us[None, :] - mx - (w - 1) / 2) * z_rows[:, None] / ctx.focal
    texels = min(2 * ctx.focal / far, 32.0)  # texels per world unit: ~1 per supersampled pixel at depth `far`
    x_lo, z_hi = ground_x.min(), z_rows.max()
    gh = int(np.ceil((z_hi - z_rows.min()) * texels)) + 2
    gw = int(np.ceil((ground_x.max() - x_lo) * texels)) + 2
    ground = _layer_look(ctx, (gh, gw), zref, texels, earthy=True)
    map_x = ((ground_x - x_lo) * texels).astype(np.float32)
    map_y = np.broadcast_to(((z_hi - z_rows) * texels).astype(np.float32)[:, None], map_x.shape)  # far = row 0
    if cfg.intensity_edges:
        for _ in range(int(rng.integers(1, 5))):
            # spread marks evenly over the image, not over ground area (most of which lies near the horizon)
            iy = 2 * (my + int(rng.uniform(0.1, 1.0) * h))
            ix = 2 * (mx + int(rng.uniform(0.0, 1.0) * w))
            spot = (float(map_x[iy, ix]), float(map_y[iy, ix])) * 2
            _paint_marks(rng, ground, 1, texels * rng.uniform(1.0, 3.0), spot)
    rgb = cv2.remap(ground, map_x, np.ascontiguousarray(map_y), cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_REFLECT_101)
    rgb = cv2.resize(rgb, (wc, hc), interpolation=cv2.INTER_AREA)
    rgb = _haze(rgb, 1 / (plane[0] + slope * np.arange(hc)), ctx.haze, cfg.haze_distance)

    cx, cy = ctx.camera[:, 0], ctx.camera[:, 1]
    tr = np.zeros((cfg.num_frames, 2, 3))
    tr[:, 0, 0] = 1.0
    tr[:, 0, 1] = cx * zref * slope
    tr[:, 0, 2] = -mx + cx * zref * plane[0]
    tr[:, 1, 1] = 1.0 + cy * zref * slope
    tr[:, 1, 2] = -my + cy * zref * plane[0]
    return _Layer(rgba=_premultiply(rgb, np.ones((hc, wc), np.float32)), plane=plane,
                  kind=LayerKind.BACKGROUND, transforms=tr, depth=float(np.mean(1 / (plane[0] + slope * vs))),
                  border=cv2.BORDER_REFLECT_101)


def _dress(ctx: _Context, alpha: np.ndarray, depth: float, unit: float) -> np.ndarray:
    """Texture, light, paint and haze a shape's alpha into a premultiplied RGBA texture."""
    rng, cfg = ctx.rng, ctx.config
    h, w = alpha.shape
    rgb = _layer_look(ctx, (h, w), depth, ctx.focal / depth)
    # a soft shading gradient across the object: a weak 3-D shape cue
    gy, gx = rng.normal(0, 0.12, size=2)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    rgb *= (1 + gx * (xx - w / 2) / max(w, 1) * 2 + gy * (yy - h / 2) / max(h, 1) * 2)[..., None]
    if cfg.intensity_edges and rng.random() < cfg.edge_prob:
        region = (0.3 * w, 0.3 * h, 0.7 * w, 0.7 * h)
        _paint_marks(rng, rgb, int(rng.integers(1, 3)), unit, region)
    return _premultiply(_haze(rgb, depth, ctx.haze, cfg.haze_distance), alpha)


def _parallax(ctx: _Context, depth: float) -> np.ndarray:
    """Camera-induced displacement [T,2] of a fronto-parallel layer at ``depth``, relative to the middle frame."""
    shift = ctx.camera * (ctx.ref_depth / depth)
    return shift - shift[ctx.mid]


def _moving_object(ctx: _Context) -> _Layer:
    """An object with a smooth irregular outline (or a rounded rectangle) and its own smooth motion."""
    cfg, rng = ctx.config, ctx.rng
    depth = rng.uniform(*cfg.object_depth)
    radius = ctx.focal * rng.uniform(*cfg.object_size) / depth
    if rng.random() < 0.65:
        outline = _blob_outline(rng, radius)
    else:
        aspect = rng.uniform(0.5, 2.0)
        outline = _rounded_rect(radius * np.sqrt(aspect), radius / np.sqrt(aspect), rng.uniform(3, 10))
    alpha, centre = _shape_mask(outline)
    rgba = _dress(ctx, alpha, depth, radius * 0.6)
    speed = rng.uniform(*cfg.speed) * ctx.scale
    heading = rng.uniform(0, 2 * np.pi)
    own = _smooth_path(rng, cfg.num_frames, speed * np.array([np.cos(heading), np.sin(heading)]))
    placed = np.array([rng.uniform(0.1, 0.9) * cfg.width, rng.uniform(0.15, 0.85) * cfg.height])
    position = placed + own - own[ctx.mid] + _parallax(ctx, depth)
    steps = np.arange(cfg.num_frames) - ctx.mid
    angle = rng.uniform(0, 2 * np.pi) + np.deg2rad(rng.uniform(-cfg.rotation, cfg.rotation)) * steps
    scale = np.exp(rng.uniform(-cfg.scale_change, cfg.scale_change) * steps)
    return _Layer(rgba=rgba, plane=np.array([1 / depth, 0.0, 0.0]), kind=LayerKind.MOVING,
                  transforms=_similarity(centre, position, angle, scale), depth=depth)


def _static_occluder(ctx: _Context) -> _Layer:
    """A post, bar or blob fixed in the world: it moves only by camera parallax."""
    cfg, rng = ctx.config, ctx.rng
    h, w = cfg.height, cfg.width
    depth = rng.uniform(*cfg.occluder_depth)
    parallax = _parallax(ctx, depth)
    reach = np.abs(parallax).max(axis=0) + 8  # how far beyond the frame an edge must extend to stay hidden
    kind = rng.choice(3, p=[0.45, 0.25, 0.3])
    if kind == 2:  # blob
        radius = ctx.focal * rng.uniform(*cfg.object_size) / depth
        outline, unit = _blob_outline(rng, radius), radius * 0.6
        placed = np.array([rng.uniform(0.1, 0.9) * w, rng.uniform(0.15, 0.85) * h])
        angle = rng.uniform(0, 2 * np.pi)
    else:
        thickness = ctx.focal * rng.uniform(*cfg.occluder_width) / depth
        unit = thickness * 0.8
        if kind == 0:  # post standing up from below the frame
            length = rng.uniform(0.5, 1.0) * h + 2 * reach[1]
            outline = _rounded_rect(thickness / 2, length / 2, 8)
            placed = np.array([rng.uniform(0.1, 0.9) * w, h + reach[1] - length / 2])
        else:  # bar reaching in from the left or right edge
            length = rng.uniform(0.5, 1.2) * w + 2 * reach[0]
            outline = _rounded_rect(length / 2, thickness / 2, 8)
            side = rng.integers(2)
            placed = np.array([(w + reach[0] - length / 2) if side else (length / 2 - reach[0]),
                               rng.uniform(0.15, 0.85) * h])
        angle = np.deg2rad(rng.uniform(-8, 8))
    alpha, centre = _shape_mask(outline)
    rgba = _dress(ctx, alpha, depth, unit)
    transforms = _similarity(centre, placed + parallax, np.full(cfg.num_frames, angle), np.ones(cfg.num_frames))
    return _Layer(rgba=rgba, plane=np.array([1 / depth, 0.0, 0.0]), kind=LayerKind.STATIC,
                  transforms=transforms, depth=depth)


def _add_shadows(layers: list[_Layer], cfg: SceneConfig, seed: int) -> None:
    """Give every moving layer a cast shadow, all lit from one random direction.

    The shadows' random numbers come from their own generator (seeded by the scene seed), so a scene with
    shadows has exactly the layers, textures, motions and noise of the same seed without them.
    """
    rng = np.random.default_rng([int(seed), 0x5AD0])
    direction = rng.uniform(0, 2 * np.pi)
    for layer in layers:
        if layer.kind != LayerKind.MOVING:
            continue
        radius = float(np.sqrt(layer.rgba[..., 3].sum() / np.pi))  # texture px ~ image px (scale near 1)
        reach = rng.uniform(*cfg.shadow_offset) * radius
        angle = direction + rng.uniform(-0.2, 0.2)
        layer.shadow = _Shadow(offset=(reach * np.cos(angle), reach * np.sin(angle)),
                               strength=float(rng.uniform(*cfg.shadow_strength)),
                               sigma=float(rng.uniform(*cfg.shadow_softness) * cfg.width / _REF_WIDTH))


def make_scene(config: SceneConfig | None = None, seed: int = 0) -> Scene:
    """Render a random layered dynamic scene; the same ``(config, seed)`` always gives the same scene.

    Args:
        config: the scene parameters; default :class:`SceneConfig()`.
        seed: the random seed.

    Returns:
        The scene.
    """
    cfg = config if config is not None else SceneConfig()
    rng = np.random.default_rng(seed)
    haze = np.array([rng.uniform(170, 215), rng.uniform(180, 225), rng.uniform(195, 240)], np.float32)
    ctx = _Context(config=cfg, rng=rng, focal=cfg.focal * cfg.width, scale=cfg.width / _REF_WIDTH,
                   camera=_camera_path(rng, cfg), haze=haze)
    background = _background(ctx)
    n_static = int(rng.integers(cfg.num_static_occluders[0], cfg.num_static_occluders[1] + 1))
    n_moving = int(rng.integers(cfg.num_objects[0], cfg.num_objects[1] + 1))
    others = [_static_occluder(ctx) for _ in range(n_static)] + [_moving_object(ctx) for _ in range(n_moving)]
    if cfg.cast_shadows:
        _add_shadows(others, cfg, seed)
    others.sort(key=lambda layer: -layer.depth)  # painter's order: far to near
    scene = _assemble([background] + others, cfg, seed, rng)
    log.debug("scene seed=%d: %d static, %d moving, camera %.1f px", seed, n_static, n_moving,
              float(np.abs(ctx.camera[-1]).max()))
    return scene


# ------------------------------------------------------------------------------------- known-answer scenes


def _plain_config(size: tuple[int, int], num_frames: int, noise_sigma: float, **overrides: Any) -> SceneConfig:
    """A config describing a hand-built scene (size, length, noise; nothing random in it moves)."""
    return SceneConfig(height=size[0], width=size[1], num_frames=num_frames, noise_sigma=noise_sigma,
                       static_camera_prob=1.0, camera_pan=(0.0, 0.0), **overrides)


def _frontal_plane(rng: np.random.Generator, shape: tuple[int, int], depth: float, transforms: np.ndarray,
                   coarse: float, marks: int = 0) -> _Layer:
    """A fronto-parallel textured background plane covering ``shape`` texels, optionally with painted marks."""
    rgb = _texture(rng, shape, coarse, 0.7, 45.0, _random_colour(rng, earthy=True))
    if marks:
        h, w = shape
        _paint_marks(rng, rgb, marks, 0.25 * min(h, w), (0.1 * w, 0.1 * h, 0.9 * w, 0.9 * h))
    return _Layer(rgba=_premultiply(rgb, np.ones(shape, np.float32)), plane=np.array([1 / depth, 0.0, 0.0]),
                  kind=LayerKind.BACKGROUND, transforms=transforms, depth=depth, border=cv2.BORDER_REFLECT_101)


def _translations(offset: tuple[float, float], velocity: tuple[float, float], num_frames: int) -> np.ndarray:
    """Transforms [T,2,3] of a pure translation: texture (0, 0) at ``offset + t * velocity`` (both (y, x))."""
    tr = np.zeros((num_frames, 2, 3))
    tr[:, 0, 0] = tr[:, 1, 1] = 1.0
    t = np.arange(num_frames)
    tr[:, 0, 2] = offset[1] + velocity[1] * t
    tr[:, 1, 2] = offset[0] + velocity[0] * t
    return tr


def moving_square_scene(size: tuple[int, int] = (96, 128), num_frames: int = 6,
                        velocity: tuple[float, float] = (0.0, 3.0), seed: int = 0, side: int | None = None,
                        noise_sigma: float = 0.0, shadow: tuple[float, float, float, float] | None = None) -> Scene:
    """A textured square (depth 10, layer 1) moving over a static textured background (depth 20, layer 0).

    The square is centred in the middle frame; with integer velocities its labels form an exact ``side`` x
    ``side`` block.

    Args:
        size: ``(H, W)``.
        num_frames: the number of frames.
        velocity: ``(dy, dx)`` px/frame.
        seed: the seed of the textures.
        side: the square's side in pixels; default 35% of the shorter frame side (at least 8).
        noise_sigma: Gaussian sensor noise, grey levels.
        shadow: ``(dy, dx, strength, sigma)`` makes the square cast a shadow: its silhouette shifted by (dy, dx),
            blurred by ``sigma`` px, taking ``strength`` of the light.

    Returns:
        The scene.
    """
    h, w = size
    rng = np.random.default_rng(seed)
    side = side if side is not None else max(8, int(round(0.35 * min(h, w))))
    mid = (num_frames - 1) // 2
    background = _frontal_plane(rng, (h, w), 20.0, _translations((0, 0), (0, 0), num_frames), 12.0)
    pad = 2
    alpha = np.zeros((side + 2 * pad, side + 2 * pad), np.float32)
    alpha[pad:pad + side, pad:pad + side] = 1.0
    rgb = _texture(rng, alpha.shape, 6.0, 0.7, 50.0, _random_colour(rng))
    top = round((h - side) / 2 - velocity[0] * mid) - pad
    left = round((w - side) / 2 - velocity[1] * mid) - pad
    square = _Layer(rgba=_premultiply(rgb, alpha), plane=np.array([0.1, 0.0, 0.0]), kind=LayerKind.MOVING,
                    transforms=_translations((top, left), velocity, num_frames), depth=10.0,
                    shadow=None if shadow is None else _Shadow(offset=(shadow[1], shadow[0]), strength=shadow[2],
                                                               sigma=shadow[3]))
    config = _plain_config(size, num_frames, noise_sigma, num_objects=(1, 1), num_static_occluders=(0, 0),
                           cast_shadows=shadow is not None)
    return _assemble([background, square], config, seed, rng)


def static_scene(size: tuple[int, int] = (96, 128), num_frames: int = 6, seed: int = 0,
                 noise_sigma: float = 0.0) -> Scene:
    """A random layered scene (ground, one occluder, two or three objects) in which nothing moves at all.

    Args:
        size: ``(H, W)``.
        num_frames: the number of frames.
        seed: the random seed.
        noise_sigma: Gaussian sensor noise, grey levels.

    Returns:
        The scene.
    """
    config = _plain_config(size, num_frames, noise_sigma, num_objects=(2, 3), num_static_occluders=(1, 1),
                           speed=(0.0, 0.0), rotation=0.0, scale_change=0.0)
    return make_scene(config, seed)


def intensity_edges_scene(size: tuple[int, int] = (96, 128), num_frames: int = 6,
                          velocity: tuple[float, float] = (0.0, 2.0), seed: int = 0,
                          noise_sigma: float = 0.0) -> Scene:
    """One flat textured plane with strong painted stripes, boxes and text, translating rigidly.

    Plenty of intensity edges, no depth edge at all.

    Args:
        size: ``(H, W)``.
        num_frames: the number of frames.
        velocity: ``(dy, dx)`` px/frame.
        seed: the seed of the texture and marks.
        noise_sigma: Gaussian sensor noise, grey levels.

    Returns:
        The scene.
    """
    h, w = size
    rng = np.random.default_rng(seed)
    my = int(np.ceil(abs(velocity[0]) * (num_frames - 1))) + 2
    mx = int(np.ceil(abs(velocity[1]) * (num_frames - 1))) + 2
    offset = (-my - velocity[0] * (num_frames - 1) / 2, -mx - velocity[1] * (num_frames - 1) / 2)
    plane = _frontal_plane(rng, (h + 2 * my, w + 2 * mx), 20.0, _translations(offset, velocity, num_frames),
                           10.0, marks=8)
    return _assemble([plane], _plain_config(size, num_frames, noise_sigma, num_objects=(0, 0),
                                            num_static_occluders=(0, 0)), seed, rng)


# ------------------------------------------------------------------------------------------------ files


def scene_gt_path(video: str | os.PathLike) -> Path:
    """The ground-truth file that :func:`write_scene` puts next to a video.

    Args:
        video: the video's path.

    Returns:
        ``<name>.gt.npz`` in the video's folder.
    """
    video = Path(video)
    return video.with_name(video.stem + GT_SUFFIX)


def _encode(frames: np.ndarray, fps: float, crf: int, preset: str, path: Path, *, lossless: bool = False) -> None:
    """Encode RGB frames as H.264 (yuv420p) MP4 at ``path`` with PyAV.

    x264's output is not reproducible from run to run here (measured: encodes of the same frames differ, even with
    one thread), so the lossy files, and the pairs made from them, vary a little between runs. ``lossless``
    (``qp 0`` on frames converted to YUV 4:2:0 by OpenCV, a fixed conversion) decodes to the very same frames
    every time, whatever bytes the encoder writes: what the demo uses.
    """
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {"qp": "0", "preset": preset} if lossless else {"crf": str(int(crf)), "preset": preset}
        for frame in frames:
            if lossless:
                yuv = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2YUV_I420)
                video_frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
            else:
                video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode(None))


def _gt_arrays(gt: SceneGT, depth_dtype: str) -> dict[str, np.ndarray]:
    """The members of a ``.gt.npz`` file (plain arrays and strings only: loadable without pickle)."""
    return {
        "format": np.array(GT_FORMAT),
        "depth": gt.depth.astype(depth_dtype),
        "labels": gt.labels.astype(np.int16),
        "transforms": gt.transforms.astype(np.float64),
        "layer_depth": gt.layer_depth.astype(np.float32),
        "layer_kind": gt.layer_kind.astype(np.int8),
        "layer_plane": gt.layer_plane.astype(np.float64),
        "fps": np.array(gt.fps, np.float64),
        "seed": np.array(gt.seed, np.int64),
        "config": np.array(gt.config.to_json()),
    }


def write_scene(scene: Scene, out_dir: str | os.PathLike, name: str,
                depth_dtype: str = "float32", *, lossless: bool = False) -> tuple[Path, Path]:
    """Write ``<name>.mp4`` (H.264 via PyAV, crf and preset from the scene's config) and ``<name>.gt.npz``.

    Both are written under temporary names in ``out_dir`` and renamed only once complete (ground truth first,
    so a video never exists without its ground truth); on failure nothing is left behind.

    Args:
        scene: the scene (even frame size).
        out_dir: the folder (created when missing).
        name: a plain file stem.
        depth_dtype: ``"float16"`` or ``"float32"``.
        lossless: ``qp 0`` encoding of OpenCV-converted YUV frames: decodes to the same frames on every run.

    Returns:
        ``(video_path, gt_path)``.

    Raises:
        ValueError: for a bad ``name`` or ``depth_dtype``, or an odd frame size.
    """
    if not name or Path(name).name != name or name.startswith("."):
        raise ValueError(f"scene name must be a plain file stem, got {name!r}")
    if depth_dtype not in ("float16", "float32"):
        raise ValueError(f"depth_dtype must be 'float16' or 'float32', got {depth_dtype!r}")
    t, h, w, _ = scene.frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"{name}: H.264 yuv420p needs an even frame size, got {h}x{w}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    video, gt_file = out / f"{name}.mp4", scene_gt_path(out / f"{name}.mp4")
    token = f"{os.getpid()}-{secrets.token_hex(4)}"  # unique hidden names, normal (umask) permissions
    temps = [out / f".{name}.{token}.mp4.part", out / f".{name}.{token}.npz.part"]
    try:
        _encode(scene.frames, scene.fps, scene.config.crf, scene.config.preset, temps[0], lossless=lossless)
        with open(temps[1], "wb") as fh:
            np.savez_compressed(fh, **_gt_arrays(scene, depth_dtype))
        os.replace(temps[1], gt_file)
        os.replace(temps[0], video)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
    log.info("wrote %s (%d frames, %dx%d) and %s", video, t, h, w, gt_file.name)
    return video, gt_file


_GT_FIELDS = ("format", "depth", "labels", "transforms", "layer_depth", "layer_kind", "layer_plane", "fps",
              "seed", "config")


def load_scene_gt(path: str | os.PathLike) -> SceneGT:
    """Read a ``.gt.npz`` written by :func:`write_scene` (never unpickles).

    Args:
        path: the ground-truth file.

    Returns:
        The ground truth.

    Raises:
        InputError: naming the file, when it is missing, unreadable, of another format, or inconsistent.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such ground-truth file")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in _GT_FIELDS if k not in data.files]
            if missing:
                raise InputError(path, f"not a synthetic-scene ground truth: missing {', '.join(missing)}")
            arrays = {k: data[k] for k in _GT_FIELDS}
    except InputError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise InputError(path, f"cannot read ground truth ({type(err).__name__}: {err})") from None
    if str(arrays["format"]) != GT_FORMAT:
        raise InputError(path, f"unsupported ground-truth format {str(arrays['format'])!r} (expected {GT_FORMAT})")
    try:
        config = SceneConfig.from_json(str(arrays["config"]))
    except (ValueError, TypeError) as err:
        raise InputError(path, f"bad scene config ({err})") from None
    depth, labels, transforms = arrays["depth"], arrays["labels"], arrays["transforms"]
    n_layers = transforms.shape[1] if transforms.ndim == 4 else -1
    if (depth.ndim != 3 or labels.shape != depth.shape or transforms.shape != (depth.shape[0], n_layers, 2, 3)
            or arrays["layer_depth"].shape != (n_layers,) or arrays["layer_kind"].shape != (n_layers,)
            or arrays["layer_plane"].shape != (n_layers, 3)):
        raise InputError(path, f"inconsistent shapes: depth {depth.shape}, labels {labels.shape}, "
                               f"transforms {transforms.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= n_layers):
        raise InputError(path, f"labels outside the {n_layers} layers")
    return SceneGT(depth=depth.astype(np.float32), labels=labels.astype(np.int16), transforms=transforms,
                   layer_depth=arrays["layer_depth"], layer_kind=arrays["layer_kind"],
                   layer_plane=arrays["layer_plane"], fps=float(arrays["fps"]), config=config,
                   seed=int(arrays["seed"]))


def make_scenes(out_dir: str | os.PathLike, n: int, seed: int = 0, config: SceneConfig | None = None) -> list[Path]:
    """Render and write ``n`` random scenes ``scene_<seed+i>`` (scene i uses seed ``seed + i``).

    Args:
        out_dir: the folder.
        n: the number of scenes.
        seed: the seed of the first scene.
        config: the scene parameters; default :class:`SceneConfig()`.

    Returns:
        The video paths.
    """
    videos = []
    for i in range(n):
        scene = make_scene(config, seed + i)
        videos.append(write_scene(scene, out_dir, f"scene_{seed + i:05d}")[0])
    return videos


_DEMO_CONFIG = SceneConfig(height=240, width=320, num_frames=24, num_objects=(3, 3), num_static_occluders=(1, 1),
                          low_texture_prob=0.1, static_camera_prob=0.0, camera_pan=(0.8, 1.5))
_DEMO_SEEDS = (7, 11)


def demo_scenes(out_dir: str | os.PathLike) -> list[Path]:
    """Write the two small built-in demo scenes (240x320, 24 frames), losslessly: every run gives the same pairs.

    Args:
        out_dir: the folder (created when missing).

    Returns:
        Their video paths.
    """
    return [write_scene(make_scene(_DEMO_CONFIG, s), out_dir, f"demo_{i}", lossless=True)[0]
            for i, s in enumerate(_DEMO_SEEDS)]
