"""Transforms for ordinal-pair items that keep every pair (and the boundary annotation) on the same image content.

An item (docs/FORMAT.md) is a dict with ``image`` ``uint8 [3,H,W]``, ``pairs`` ``int64 [N,4]`` ``(yA, xA, yB, xB)``,
``ordinal`` ``int64 [N]``, ``meta`` and, for DynOcc, ``boundary`` (``y, x, ny, nx, confidence, segment, jump``).
:class:`PairTransform` runs any ``torchvision.transforms.v2`` transform on the image and on all the points at once
(one ``tv_tensors.KeyPoints``), so the same random parameters apply to both, then turns the points back into pixel
indices:

* a pair is dropped **as a whole** (its ordinal with it) when either point leaves the image or both points land
  on the same pixel; the ordinal of the survivors is unchanged (depth order does not depend on the geometry);
* boundary points that leave the image are dropped (every field with them); each normal is recomputed as the
  perpendicular of the transformed tangent, oriented to the transformed front side, so it stays a unit normal
  from the back to the front side under any affine map, flips and anisotropic resizes included; ``jump`` is
  scaled by the local linear scale ``sqrt(|det J|)`` (exact for similarity transforms);
* the optional dense fields ``depth`` ``float [1,H,W]`` and ``valid_mask`` ``bool [1,H,W]`` go through the same
  call as one ``tv_tensors.Mask`` (so the same parameters move them with the image) and are resampled by
  **nearest neighbour** (``nearest-exact`` for resizes, v2's nearest grid sampling for rotations and affine
  maps): a bilinear depth would blend the two sides of every occlusion edge into depths that lie on neither
  surface ("flying pixels", exactly where DynOcc's pairs are) and blend invalid pixels into valid ones; MiDaS
  resizes its targets with nearest neighbour for the same reason.  Pixels that come from outside the input
  (pads, rotated-in corners, any ``fill``) become invalid (``valid_mask`` False, ``depth`` 0);
* ``meta`` and any other field pass through unchanged.

Coordinates: the points travel through v2 as continuous coordinates with ``(0, 0)`` the top-left *corner* of the
image (pixel index ``i`` covers ``[i, i+1)``), the convention in which v2 resamples images and maps key points
for resize, crop, pad, rotate, affine and perspective; a point's pixel afterwards is ``floor`` of its coordinate.
v2's flip kernels instead assume pixel *centres* (``x -> W-1-x``) and its elastic kernel returns centre
coordinates, so a private ``KeyPoints`` subclass re-registers those three with v2's own kernels behind the
half-pixel shift (otherwise every flipped point would land one pixel off).  When every step moves pixels by
whole pixels (crops, pads, flips, colour and dtype steps), the points travel in v2's own pixel-centre convention
instead, as integer pixel indices: the same result without the shift.  For image interpolation use
``bilinear``/``bicubic`` or ``nearest-exact``: legacy ``nearest`` samples half a pixel off from every
coordinate convention.

Geometric ops keep the image ``uint8``; :class:`ToFloatImage` (last) converts to ``float32`` in ``[0, 1]`` and
optionally normalises.  :func:`create_transform` builds ready train / eval pipelines.

Longer than 500 lines because the torchvision v2 path and the lean pixel-exact path stand side by side on purpose:
the tests check one against the other, and a change to one must be seen next to the other.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from .errors import InputError

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PairTransform",
    "PhotometricAugment",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "RandomRotation",
    "Resize",
    "ToFloatImage",
    "TransformConfig",
    "CROPS",
    "create_transform",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Size = int | tuple[int, int]
Interpolation = str | v2.InterpolationMode

# Step (in input pixels) to the auxiliary points that carry each boundary normal and tangent through the transform.
_NORMAL_STEP = 1.0
_BOUNDARY_GEOMETRY = ("y", "x", "ny", "nx")
_YX_TO_XY = [1, 0, 3, 2]  # column order (yA, xA, yB, xB) <-> (xA, yA, xB, yB)


# --------------------------------------------------------------------------------------------------------------
# Corner-convention key points
# --------------------------------------------------------------------------------------------------------------


class _CornerKeyPoints(tv_tensors.KeyPoints):
    """``KeyPoints`` in continuous coordinates with ``(0, 0)`` the top-left image corner (see the module doc)."""

    @classmethod
    def _wrap_output(cls, output: Any, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None) -> Any:
        """Wrap the result of ``clone()``, ``to()``, ``detach()`` ... as this class."""
        # KeyPoints._wrap_output rewraps clone()/to()/detach() results as plain KeyPoints; keep the subclass so a
        # later flip still reaches the kernels registered below.
        output = super()._wrap_output(output, args, kwargs)
        if isinstance(output, (tuple, list)):
            return type(output)(cls._as_corner(part) for part in output)
        return cls._as_corner(output)

    @classmethod
    def _as_corner(cls, tensor: Any) -> Any:
        """Re-type a plain ``KeyPoints`` as this class (anything else is returned as is)."""
        if isinstance(tensor, tv_tensors.KeyPoints) and not isinstance(tensor, cls):
            return cls._wrap(tensor.as_subclass(torch.Tensor), canvas_size=tensor.canvas_size, check_dims=False)
        return tensor


def _through_centres(points: _CornerKeyPoints, kernel: Callable[[torch.Tensor], torch.Tensor], shift_back: float):
    """Run a v2 pixel-centre kernel on corner points: shift by -0.5, apply, shift by ``shift_back``."""
    out = kernel(points.as_subclass(torch.Tensor) - 0.5) + shift_back
    return tv_tensors.wrap(out, like=points)


@F.register_kernel(F.horizontal_flip, _CornerKeyPoints)
def _horizontal_flip_corner(points: _CornerKeyPoints, **kwargs: Any) -> _CornerKeyPoints:
    """Horizontal flip ``x -> W - x`` through v2's centre-convention kernel."""
    return _through_centres(points, lambda p: F.horizontal_flip_keypoints(p, canvas_size=points.canvas_size), 0.5)


@F.register_kernel(F.vertical_flip, _CornerKeyPoints)
def _vertical_flip_corner(points: _CornerKeyPoints, **kwargs: Any) -> _CornerKeyPoints:
    """Vertical flip ``y -> H - y`` through v2's centre-convention kernel."""
    return _through_centres(points, lambda p: F.vertical_flip_keypoints(p, canvas_size=points.canvas_size), 0.5)


@F.register_kernel(F.elastic, _CornerKeyPoints)
def _elastic_corner(points: _CornerKeyPoints, displacement: torch.Tensor, **kwargs: Any) -> _CornerKeyPoints:
    """Elastic warp of corner-convention points: only the shift back.

    v2 looks the displacement up at the point's pixel (``int()`` of corner coordinates) and returns pixel-centre
    coordinates.
    """
    out = F.elastic_keypoints(points.as_subclass(torch.Tensor), canvas_size=points.canvas_size,
                              displacement=displacement)
    return tv_tensors.wrap(out + 0.5, like=points)


# --------------------------------------------------------------------------------------------------------------
# Dense targets
# --------------------------------------------------------------------------------------------------------------


class _DenseTargets(tv_tensors.Mask):
    """``depth``, ``valid_mask`` and two coverage channels (all 1 and all 2) stacked as one ``float32 [4,H,W]`` mask.

    Every v2 mask kernel moves them by nearest neighbour, and a pixel whose coverage channels are not ``(1, 2)``
    afterwards came from a fill (one fill value cannot be both), whatever ``fill`` was.
    """


_COVERAGE = (1.0, 2.0)


@F.register_kernel(F.resize, _DenseTargets)
def _resize_dense(mask: _DenseTargets, size: Any, max_size: int | None = None, **kwargs: Any) -> _DenseTargets:
    """Resize by ``nearest-exact`` (v2's mask kernel falls back to legacy ``nearest``, half a pixel off)."""
    out = F.resize_mask(mask.as_subclass(torch.Tensor), size, interpolation=v2.InterpolationMode.NEAREST_EXACT,
                        max_size=max_size)
    return tv_tensors.wrap(out, like=mask)


@F.register_kernel(F.resized_crop, _DenseTargets)
def _resized_crop_dense(mask: _DenseTargets, top: int, left: int, height: int, width: int, size: Any,
                        **kwargs: Any) -> _DenseTargets:
    """Crop, then resize by ``nearest-exact`` (see :func:`_resize_dense`)."""
    out = F.crop_mask(mask.as_subclass(torch.Tensor), top, left, height, width)
    out = F.resize_mask(out, size, interpolation=v2.InterpolationMode.NEAREST_EXACT)
    return tv_tensors.wrap(out, like=mask)


def _dense_in(item: Mapping[str, Any], size: tuple[int, int]) -> _DenseTargets | None:
    """The item's ``depth`` / ``valid_mask`` (either may be absent) packed for the transform, or ``None``."""
    depth, valid = item.get("depth"), item.get("valid_mask")
    if depth is None and valid is None:
        return None
    for name, value in (("depth", depth), ("valid_mask", valid)):
        if value is not None and (not isinstance(value, torch.Tensor) or tuple(value.shape) != (1, *size)):
            raise InputError(_where(item), f"{name} must be a tensor [1,{size[0]},{size[1]}] (the image size), got "
                                           f"{tuple(value.shape) if isinstance(value, torch.Tensor) else type(value)}")
    if valid is not None and valid.dtype != torch.bool:
        raise InputError(_where(item), f"valid_mask must be bool, got {valid.dtype}")
    ones = torch.ones((1, *size), dtype=torch.float32, device=(depth if depth is not None else valid).device)
    stack = [depth.to(torch.float32) if depth is not None else torch.zeros_like(ones),
             valid.to(torch.float32) if valid is not None else ones, ones * _COVERAGE[0], ones * _COVERAGE[1]]
    return _DenseTargets(torch.cat(stack))


def _dense_back(out: dict[str, Any], dense: torch.Tensor, item: Mapping[str, Any]) -> None:
    """Unpack transformed dense targets into ``out``: fill pixels invalid, depth 0 where invalid."""
    dense = dense.as_subclass(torch.Tensor)
    covered = (dense[2:3] == _COVERAGE[0]) & (dense[3:4] == _COVERAGE[1])
    valid = covered & (dense[1:2] == 1.0)
    if "valid_mask" in item or "depth" in item:
        out["valid_mask"] = valid
    if "depth" in item:
        out["depth"] = torch.where(valid, dense[0:1], torch.zeros((), dtype=dense.dtype))


# --------------------------------------------------------------------------------------------------------------
# Item <-> points
# --------------------------------------------------------------------------------------------------------------


def _where(item: Mapping[str, Any]) -> str:
    """The sample's name for error messages."""
    meta = item.get("meta") or {}
    return str(meta.get("key") or meta.get("video") or "<item>")


def _check_item(item: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate ``image``, ``pairs`` and ``ordinal`` of one item (one-line :class:`InputError` otherwise)."""
    image, pairs, ordinal = item.get("image"), item.get("pairs"), item.get("ordinal")
    for field, value in (("image", image), ("pairs", pairs), ("ordinal", ordinal)):
        if not isinstance(value, torch.Tensor):
            raise InputError(_where(item), f"item has no tensor '{field}' (see docs/FORMAT.md)")
    if image.ndim != 3:
        raise InputError(_where(item), f"image must be [C,H,W], got shape {tuple(image.shape)}")
    if pairs.ndim != 2 or pairs.shape[1] != 4 or pairs.is_floating_point():
        raise InputError(_where(item), f"pairs must be an integer tensor [N,4], got {tuple(pairs.shape)} "
                                       f"{pairs.dtype}")
    if ordinal.shape != (pairs.shape[0],):
        raise InputError(_where(item), f"ordinal must be [{pairs.shape[0]}] (one per pair), got "
                                       f"{tuple(ordinal.shape)}")
    height, width = image.shape[-2:]
    if pairs.numel() and not _pairs_inside(pairs, height, width):
        raise InputError(_where(item), f"pairs lie outside the {height}x{width} image")
    return image, pairs, ordinal


def _pairs_inside(pairs: torch.Tensor, height: int, width: int) -> bool:
    """Whether every ``(yA, xA, yB, xB)`` row of a non-empty ``pairs`` lies inside a ``height x width`` image."""
    p = pairs.detach().cpu().numpy()  # three whole-array reductions: cheaper than one per column in torch
    return bool(p.min() >= 0 and p[:, 0::2].max() < height and p[:, 1::2].max() < width)


def _check_boundary(boundary: Any, where: str) -> dict[str, torch.Tensor]:
    """Validate the boundary dict: 1-D tensors of one length with at least ``y, x, ny, nx``."""
    if not isinstance(boundary, Mapping) or not all(isinstance(v, torch.Tensor) for v in boundary.values()):
        raise InputError(where, "boundary must be a dict of tensors (see docs/FORMAT.md)")
    missing = [name for name in _BOUNDARY_GEOMETRY if name not in boundary]
    if missing:
        raise InputError(where, f"boundary lacks field(s) {', '.join(missing)}")
    lengths = {name: tuple(t.shape) for name, t in boundary.items()}
    if len(set(lengths.values())) != 1 or len(next(iter(lengths.values()))) != 1:
        raise InputError(where, f"boundary fields must be 1-D tensors of one length, got shapes {lengths}")
    return dict(boundary)


def _pair_points(pairs: torch.Tensor, shift: float) -> torch.Tensor:
    """``[N,4]`` (yA, xA, yB, xB) pixel indices -> ``[2N,2]`` (x, y) coordinates of those pixels' centres.

    In the convention where pixel ``i``'s centre is ``i + shift`` (0.5: corner convention, 0: v2's pixel centres).
    """
    # numpy: on a few hundred rows the cost is per operation, and a numpy operation costs a fraction of a torch one
    xy = pairs.detach().cpu().numpy()[:, _YX_TO_XY].reshape(-1, 2).astype(np.float32)
    return torch.from_numpy(xy + np.float32(shift) if shift else xy).to(pairs.device)


def _boundary_points(boundary: Mapping[str, torch.Tensor], shift: float) -> torch.Tensor:
    """``[3M,2]`` (x, y) coordinates (pixel centres at ``i + shift``) of the boundary.

    Every point p, then p + step*normal, then p + step*tangent.
    """
    point = torch.stack([boundary["x"], boundary["y"]], 1).to(torch.float32) + shift
    normal = torch.stack([boundary["nx"], boundary["ny"]], 1).to(torch.float32)
    tangent = torch.stack([-normal[:, 1], normal[:, 0]], 1)  # normal turned by +90 degrees
    return torch.cat([point, point + _NORMAL_STEP * normal, point + _NORMAL_STEP * tangent])


def _inside(points: torch.Tensor, canvas: tuple[int, int]) -> torch.Tensor:
    """Which ``[...,2]`` (x, y) corner coordinates lie in the image (NaN never does)."""
    height, width = canvas
    x, y = points[..., 0], points[..., 1]
    return (x >= 0) & (x < width) & (y >= 0) & (y < height)


def _pairs_back(points: torch.Tensor, ordinal: torch.Tensor, canvas: tuple[int, int], shift: float):
    """Transformed ``[2N,2]`` points (pixel centres at ``i + shift``) -> surviving ``pairs [N',4]``, ``ordinal``."""
    height, width = canvas
    # (xA, yA, xB, yB) pixels; NaN stays NaN and fails every comparison below (silently, comparisons never warn)
    corner = points.detach().cpu().numpy().reshape(-1, 4)
    pixels = np.floor(corner + np.float32(0.5 - shift) if shift != 0.5 else corner)
    inside = (pixels >= 0) & (pixels < np.array((width, height, width, height), dtype=pixels.dtype))
    moved = pixels[:, :2] != pixels[:, 2:]
    # "all four inside" and "either coordinate moved" per row, read as one 4-byte and one 2-byte word per row of
    # these fresh C-ordered bool arrays (True is the byte 1): numpy's row-wise all/any on 4 or 2 columns costs
    # several times more
    keep = (inside.view(np.uint32)[:, 0] == 0x01010101) & (moved.view(np.uint16)[:, 0] != 0)
    kept = pixels[keep].astype(np.int64)[:, _YX_TO_XY]  # only finite, in-image values are converted to integers
    return (torch.from_numpy(kept).to(points.device),
            torch.from_numpy(ordinal.detach().cpu().numpy()[keep]).to(ordinal.device))


def _boundary_back(points: torch.Tensor, boundary: Mapping[str, torch.Tensor], canvas: tuple[int, int],
                   shift: float):
    """Transformed ``[3M,2]`` points (pixel centres at ``i + shift``) -> the boundary dict in output pixels.

    Rows outside the output image are dropped.
    """
    point, front, along = points.reshape(3, len(boundary["x"]), 2).unbind(0)
    push_normal, tangent = front - point, along - point
    if shift != 0.5:
        point = point + (0.5 - shift)  # to corner coordinates
    # The perpendicular of the pushed tangent is the inverse-transpose image of the normal; orient it to the front.
    normal = torch.stack([tangent[:, 1], -tangent[:, 0]], 1)
    normal = torch.where(((normal * push_normal).sum(1) < 0).unsqueeze(1), -normal, normal)
    length = normal.norm(dim=1)
    area = (tangent[:, 0] * push_normal[:, 1] - tangent[:, 1] * push_normal[:, 0]).abs() / _NORMAL_STEP**2
    keep = _inside(point, canvas) & (length > 1e-6)
    out = {name: values[keep] for name, values in boundary.items()}
    normal = normal[keep] / length[keep].unsqueeze(1)
    center = point[keep] - 0.5
    dtype = boundary["x"].dtype
    out.update(x=center[:, 0].to(dtype), y=center[:, 1].to(dtype), nx=normal[:, 0].to(dtype), ny=normal[:, 1].to(dtype))
    if "jump" in out:
        out["jump"] = out["jump"] * area[keep].sqrt().to(out["jump"].dtype)
    return out


# --------------------------------------------------------------------------------------------------------------
# Public transforms
# --------------------------------------------------------------------------------------------------------------


# Stock v2 transforms that move pixels by whole pixels or not at all: with only these, pixel indices map to pixel
# indices exactly in v2's own pixel-centre convention, so the points need no corner shift (nor its flip kernels).
_PIXEL_EXACT_TYPES = frozenset({
    v2.RandomCrop, v2.CenterCrop, v2.Pad, v2.RandomHorizontalFlip, v2.RandomVerticalFlip, v2.ColorJitter,
    v2.RandomGrayscale, v2.Normalize, v2.ToDtype,
})

# v2 transforms whose ``transform`` treats a plain tensor exactly as a ``tv_tensors.Image`` (kernels registered for
# both), that declare no input checks a pure tensor could fail and that use v2's own ``forward``: PairTransform
# runs these itself (see ``_LeanSteps``).  Subclasses are not included: they may override anything.
_LEAN_TYPES = frozenset({
    v2.Resize, v2.RandomResizedCrop, v2.RandomCrop, v2.CenterCrop, v2.Pad, v2.RandomHorizontalFlip,
    v2.RandomVerticalFlip, v2.RandomRotation, v2.RandomAffine, v2.ColorJitter, v2.RandomGrayscale, v2.Normalize,
    v2.ToDtype,
})
_RANDOM_APPLY = (v2.RandomHorizontalFlip, v2.RandomVerticalFlip, v2.RandomGrayscale)  # draw torch.rand(1) first


def _lean_steps(transform: Callable[..., Any]) -> tuple[v2.Transform, ...] | None:
    """The v2 transforms ``transform`` is made of (``Compose`` flattened), or ``None``.

    ``None`` unless :class:`PairTransform` can run all of them itself.
    """
    if type(transform) is v2.Compose:
        parts = [_lean_steps(t) for t in transform.transforms]
        return None if any(p is None for p in parts) else tuple(t for p in parts for t in p)
    if type(transform) not in _LEAN_TYPES:
        return None
    if type(transform) is v2.ToDtype and not isinstance(transform.dtype, torch.dtype):
        return None  # a per-type dtype dict looks at tv_tensor classes
    return (transform,)


def _run_lean(steps: Sequence[v2.Transform], image: torch.Tensor, points: tv_tensors.KeyPoints,
              dense: _DenseTargets | None = None):
    """What ``v2.Compose(steps)(tv_tensors.Image(image), points)`` does, without its per-call machinery.

    Each step draws its parameters exactly as its ``forward`` would (``torch.rand(1) >= p`` first for random-apply
    transforms, then ``make_params``), so results and the global random stream are identical; the image stays a
    plain tensor (v2 treats the first plain tensor as the image) and keeps its memory layout.  ``dense`` (the
    packed dense targets) goes through each step with the same parameters (v2's mask kernels; colour and dtype
    steps pass masks through).
    """
    for step in steps:
        if isinstance(step, _RANDOM_APPLY) and torch.rand(1) >= step.p:
            continue
        params = step.make_params([image])  # the points share the image's canvas; no stock part looks at them
        image, points = step.transform(image, params), step.transform(points, params)
        if dense is not None:
            dense = step.transform(dense, params)
    return image, points, dense


class PairTransform:
    """Apply a ``torchvision.transforms.v2`` transform (or a sequence of them) to an item dict.

    The image (as ``tv_tensors.Image``) and every pair / boundary point (one ``KeyPoints``) go through one call,
    so random parameters are shared; pairs leaving the image or collapsing onto one pixel are dropped whole.
    A sequence is composed with ``v2.Compose``; :class:`PairTransform` members of it contribute their v2
    transform, so points are rounded to pixels once, at the end.  Returns a new dict (the input is not modified).

    When every part is one of v2's stock geometric, colour or dtype transforms (``Resize``, ``RandomResizedCrop``,
    ``RandomCrop``, ``CenterCrop``, ``Pad``, flips, ``RandomRotation``, ``RandomAffine``, ``ColorJitter``,
    ``RandomGrayscale``, ``Normalize``, ``ToDtype``), the parts are run one by one with their own ``make_params``
    and ``transform`` (no ``Compose``/pytree/tv_tensor wrapping per call): same kernels, same random draws,
    same output, several times less overhead.

    Args:
        transform: a v2 transform, a :class:`PairTransform`, or a sequence of either.
        fast: run stock parts one by one (above); ``False`` always goes through ``v2.Compose``.

    Raises:
        TypeError: when ``transform`` is not callable.
    """

    def __init__(self, transform: Callable[..., Any] | Sequence[Callable[..., Any]], *, fast: bool = True) -> None:
        """Wrap ``transform``: a v2 transform, a :class:`PairTransform`, or a sequence of either."""
        if isinstance(transform, Sequence):
            parts = [t.transform if isinstance(t, PairTransform) else t for t in transform]
            transform = v2.Compose(parts)
        elif isinstance(transform, PairTransform):
            transform = transform.transform
        if not callable(transform):
            raise TypeError(f"PairTransform needs a callable v2 transform, got {type(transform).__name__}")
        self.transform: Callable[..., Any] = transform
        self._steps = _lean_steps(transform) if fast else None
        # Points in v2's pixel-centre convention when every step is pixel-exact, else in the corner convention.
        exact = self._steps is not None and all(type(step) in _PIXEL_EXACT_TYPES for step in self._steps)
        self._shift, self._points_type = (0.0, tv_tensors.KeyPoints) if exact else (0.5, _CornerKeyPoints)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.transform!r})"

    def __call__(self, item: Mapping[str, Any]) -> dict[str, Any]:
        """Transform one item; see the class and module docstrings for what happens to each field.

        Args:
            item: an item of the contract (``image``, ``pairs``, ``ordinal``, optionally ``boundary``).

        Returns:
            A new item: the image, the surviving pairs with their ordinals, and the boundary transformed; other
            fields as they were.

        Raises:
            InputError: naming the item, when it is malformed or the transform changes the image but not the
                points (no KeyPoints support).
        """
        image, pairs, ordinal = _check_item(item)
        boundary = item.get("boundary")
        if boundary is not None:
            boundary = _check_boundary(boundary, _where(item))
        num_pair_points = 2 * pairs.shape[0]
        coords = _pair_points(pairs, self._shift)
        if boundary is not None:
            coords = torch.cat([coords, _boundary_points(boundary, self._shift)])
        points = self._points_type._wrap(coords, canvas_size=tuple(image.shape[-2:]), check_dims=False)
        dense = _dense_in(item, tuple(image.shape[-2:]))

        if self._steps is not None:
            out_image, out_points, out_dense = _run_lean(self._steps, image, points, dense)
        elif dense is None:
            out_image, out_points = self.transform(tv_tensors.Image(image), points)
        else:
            out_image, out_points, out_dense = self.transform(tv_tensors.Image(image), points, dense)

        canvas = tuple(out_image.shape[-2:])
        if not isinstance(out_points, tv_tensors.KeyPoints) or tuple(out_points.canvas_size) != canvas:
            raise InputError(_where(item), f"{self.transform!r} changed the image to {canvas[0]}x{canvas[1]} but "
                                           "not the key points: it has no KeyPoints support and cannot be used with "
                                           "pairs")
        out_points = out_points.as_subclass(torch.Tensor)
        out = dict(item)
        out["image"] = out_image.as_subclass(torch.Tensor)
        out["pairs"], out["ordinal"] = _pairs_back(out_points[:num_pair_points], ordinal, canvas, self._shift)
        if boundary is not None:
            out["boundary"] = _boundary_back(out_points[num_pair_points:], boundary, canvas, self._shift)
        if dense is not None:
            if tuple(out_dense.shape[-2:]) != canvas:
                raise InputError(_where(item), f"{self.transform!r} changed the image to {canvas[0]}x{canvas[1]} "
                                               "but not the dense targets: it cannot be used with depth")
            _dense_back(out, out_dense, item)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s: %d of %d pairs kept", _where(item), out["pairs"].shape[0], pairs.shape[0])
        return out


def _interpolation(mode: Interpolation) -> v2.InterpolationMode:
    """``"bilinear"``, ``"bicubic"``, ``"nearest-exact"``, ... or an ``InterpolationMode`` -> ``InterpolationMode``."""
    if isinstance(mode, v2.InterpolationMode):
        return mode
    try:
        return v2.InterpolationMode(mode)
    except ValueError:
        names = ", ".join(m.value for m in v2.InterpolationMode)
        raise ValueError(f"unknown interpolation {mode!r} (one of {names})") from None


class Resize(PairTransform):
    """Resize to ``(h, w)``, or the shorter side to ``size`` (int, aspect kept, longer side capped by ``max_size``).

    Args:
        size: ``(h, w)``, or the shorter side.
        max_size: the longest the longer side may be, with an int ``size``.
        interpolation: ``"bilinear"``, ``"bicubic"``, ``"nearest-exact"``, ... or an ``InterpolationMode``.
        antialias: low-pass filter when downscaling.
    """

    def __init__(self, size: Size, *, max_size: int | None = None, interpolation: Interpolation = "bilinear",
                 antialias: bool = True) -> None:
        """See ``torchvision.transforms.v2.Resize``."""
        super().__init__(v2.Resize(size, interpolation=_interpolation(interpolation), max_size=max_size,
                                   antialias=antialias))


class RandomResizedCrop(PairTransform):
    """Crop a random area fraction ``scale`` and aspect ratio ``ratio``, resized to ``size``; pairs outside drop.

    Args:
        size: the output ``(h, w)``, or one side of a square.
        scale: the range of the crop's area as a fraction of the image's.
        ratio: the range of the crop's aspect ratio (width / height).
        interpolation: the image resampling (as for :class:`Resize`).
        antialias: low-pass filter when downscaling.
    """

    def __init__(self, size: Size, *, scale: tuple[float, float] = (0.5, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), interpolation: Interpolation = "bilinear",
                 antialias: bool = True) -> None:
        """See ``torchvision.transforms.v2.RandomResizedCrop``."""
        super().__init__(v2.RandomResizedCrop(size, scale=scale, ratio=ratio,
                                              interpolation=_interpolation(interpolation), antialias=antialias))


class RandomHorizontalFlip(PairTransform):
    """Mirror left-right with probability ``p``: points move, ordinals stay (depth order is mirror-invariant).

    Args:
        p: the probability of flipping.
    """

    def __init__(self, p: float = 0.5) -> None:
        """See ``torchvision.transforms.v2.RandomHorizontalFlip``."""
        super().__init__(v2.RandomHorizontalFlip(p))


class RandomRotation(PairTransform):
    """Rotate by a random angle about the image centre, same size; pairs rotated out of the image are dropped.

    Meant for small angles (corners fill with ``fill``).

    Args:
        degrees: the angle is drawn from ``[-degrees, degrees]``, or from the given ``(min, max)`` range.
        interpolation: the image resampling (as for :class:`Resize`).
        fill: the value of the pixels rotated in from outside.
    """

    def __init__(self, degrees: float | tuple[float, float], *, interpolation: Interpolation = "bilinear",
                 fill: float = 0) -> None:
        """See ``torchvision.transforms.v2.RandomRotation`` (``expand=False``)."""
        super().__init__(v2.RandomRotation(degrees, interpolation=_interpolation(interpolation), fill=fill))


class PhotometricAugment(PairTransform):
    """Colour jitter (and optional random grayscale) of the image only; points and labels are untouched.

    Args:
        brightness: jitter factor, as in ``v2.ColorJitter``.
        contrast: jitter factor, as in ``v2.ColorJitter``.
        saturation: jitter factor, as in ``v2.ColorJitter``.
        hue: jitter factor, as in ``v2.ColorJitter``.
        grayscale: the probability of ``v2.RandomGrayscale`` (0: none).
    """

    def __init__(self, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4, hue: float = 0.0,
                 *, grayscale: float = 0.0) -> None:
        """Jitter factors as in ``v2.ColorJitter``; ``grayscale`` is the probability of ``v2.RandomGrayscale``."""
        parts: list[Callable[..., Any]] = [v2.ColorJitter(brightness, contrast, saturation, hue)]
        if grayscale > 0:
            parts.append(v2.RandomGrayscale(grayscale))
        super().__init__(parts)


class ToFloatImage(PairTransform):
    """``uint8`` image -> ``float32`` in ``[0, 1]``, then ``(x - mean) / std`` when ``mean`` and ``std`` are given.

    Args:
        mean: per channel, in ``[0, 1]`` units; give both ``mean`` and ``std`` to normalise, or neither.
        std: per channel, in ``[0, 1]`` units.

    Raises:
        ValueError: when only one of ``mean`` and ``std`` is given.
    """

    def __init__(self, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        """Give both ``mean`` and ``std`` (per channel, in ``[0, 1]`` units) to normalise, or neither."""
        if (mean is None) != (std is None):
            raise ValueError("ToFloatImage: give both mean and std, or neither")
        parts: list[Callable[..., Any]] = [v2.ToDtype(torch.float32, scale=True)]
        if mean is not None:
            parts.append(v2.Normalize(list(mean), list(std)))
        super().__init__(parts)


CROPS = ("resized", "random")


@dataclass(frozen=True)
class TransformConfig:
    """Options of :func:`create_transform`.

    Args:
        train: the training pipeline (random crop and augmentation) or the evaluation one (resize).
        size: int (square crop when training; shorter side when evaluating) or ``(h, w)``.
        crop: (training) ``"resized"``, a random resized crop (area fraction ``scale``, aspect ``ratio``,
            resampled to ``size``), or ``"random"``, a plain random crop of ``size`` pixels at full resolution (no
            resampling: the cheapest, pixels kept exactly; an image smaller than ``size`` is zero-padded first).
        hflip: flip probability.
        scale: the area-fraction range of the resized crop, ``0 < min <= max <= 1``.
        ratio: the aspect-ratio range of the resized crop, ``0 < min <= max``.
        rotation: max absolute angle in degrees, in ``[0, 180)`` (0: none).
        color_jitter: brightness = contrast = saturation factor, or a ``(brightness, contrast, saturation[, hue])``
            tuple (0: none).
        grayscale: random-grayscale probability.
        normalize: subtract ``mean`` / divide by ``std`` (needs ``to_float``).
        mean: per-channel mean, in ``[0, 1]`` units (ImageNet's by default).
        std: per-channel standard deviation, in ``[0, 1]`` units (ImageNet's by default).
        interpolation: image resampling.
        antialias: low-pass filter when downscaling (torchvision's antialiased resize; ``False`` samples like
            ``cv2.resize`` / ``INTER_LINEAR`` and is a little faster).
        center_crop: evaluation with an int ``size`` also centre-crops to ``size x size``.
        to_float: end with ``float32`` in ``[0, 1]`` (normalised with ``normalize``); ``False`` keeps the ``uint8``
            image, as timm's prefetching loader does: a quarter of the bytes between worker processes and to the
            GPU, converted there (``batch["image"].float().div_(255)``).

    Raises:
        ValueError: with a one-line message, when an option is out of its range.
    """

    train: bool
    size: Size
    crop: str = "resized"
    hflip: float = 0.5
    scale: tuple[float, float] = (0.5, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    rotation: float = 0.0
    color_jitter: float | tuple[float, ...] = 0.4
    grayscale: float = 0.0
    normalize: bool = False
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    antialias: bool = True
    center_crop: bool = False
    to_float: bool = True

    def __post_init__(self) -> None:
        """Reject out-of-range options with a one-line message."""
        sizes = (self.size,) if isinstance(self.size, int) else tuple(self.size)
        if len(sizes) not in (1, 2) or not all(isinstance(s, int) and s > 0 for s in sizes):
            raise ValueError(f"size must be a positive int or (h, w), got {self.size!r}")
        if self.crop not in CROPS:
            raise ValueError(f"crop must be one of {', '.join(CROPS)}, got {self.crop!r}")
        if not 0.0 <= self.hflip <= 1.0 or not 0.0 <= self.grayscale <= 1.0:
            raise ValueError(f"hflip and grayscale are probabilities in [0, 1], got {self.hflip}, {self.grayscale}")
        if not 0.0 < self.scale[0] <= self.scale[1] <= 1.0:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {self.scale}")
        if not 0.0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {self.ratio}")
        if not 0.0 <= self.rotation < 180.0:
            raise ValueError(f"rotation is a max angle in degrees in [0, 180), got {self.rotation}")
        jitter = tuple(self.color_jitter) if isinstance(self.color_jitter, (tuple, list)) else (self.color_jitter,)
        if len(jitter) not in (1, 3, 4) or any(j < 0 for j in jitter):
            raise ValueError(f"color_jitter must be >= 0 or a (b, c, s[, hue]) tuple, got {self.color_jitter!r}")
        if not isinstance(self.antialias, bool):
            raise ValueError(f"antialias must be a bool, got {self.antialias!r}")
        if self.normalize and not self.to_float:
            raise ValueError("normalize=True needs to_float=True (normalising makes a float image)")
        _interpolation(self.interpolation)

    def jitter(self) -> tuple[float, float, float, float]:
        """The colour-jitter factors.

        Returns:
            ``(brightness, contrast, saturation, hue)`` from ``color_jitter`` (hue 0 unless given).
        """
        jitter = tuple(self.color_jitter) if isinstance(self.color_jitter, (tuple, list)) else (self.color_jitter,) * 3
        return (*jitter[:3], jitter[3] if len(jitter) == 4 else 0.0)


def create_transform(config: TransformConfig | None = None, /, **options: Any) -> PairTransform:
    """A ready item transform in the style of timm's ``create_transform``.

    * ``train=True``: [rotation] -> random resized crop to ``size`` (``crop="resized"``) or random crop of
      ``size`` (``crop="random"``) -> [horizontal flip] -> [colour jitter, grayscale] -> [float (-> normalise)].
    * ``train=False``: resize to ``size`` (``(h, w)`` exactly; an int sets the shorter side, aspect kept, then
      [centre crop to ``size x size``]) -> [float (-> normalise)].

    Every part is a stock v2 transform, so :class:`PairTransform` runs them on its lean path.

    Args:
        config: a config to start from; call as ``create_transform(config, hflip=0.0)`` (overrides applied to it).
        **options: keywords of :class:`TransformConfig`, e.g. ``create_transform(train=True, size=(256, 320),
            rotation=5)``; without ``config``, ``train`` and ``size`` are needed.

    Returns:
        The item transform. Its output item: ``image`` ``float32 [3,h,w]`` in ``[0, 1]`` (or normalised; ``uint8``
        with ``to_float=False``), ``(h, w)`` = ``size`` (an int ``size`` gives ``size x size`` when training; when
        evaluating without ``center_crop`` the shorter side is ``size``, so batch such items only if the sources
        share an aspect ratio); ``pairs`` ``int64 [N',4]`` in that image's pixels (pairs leaving the crop dropped
        whole), ``ordinal`` ``int64 [N']`` aligned, ``boundary`` transformed likewise, ``meta`` unchanged. The
        image keeps the memory layout of the input (channels-last strides for JPEGs decoded by
        ``torchvision.io.decode_jpeg``, the layout torchvision resizes fastest); stacked by ``collate_pairs`` it
        gives a ``channels_last`` batch.

    Raises:
        ValueError: when an option is out of its range (see :class:`TransformConfig`).
        TypeError: for a keyword that is not a field of :class:`TransformConfig`.
    """
    cfg = dataclasses.replace(config, **options) if config is not None else TransformConfig(**options)
    mode = _interpolation(cfg.interpolation)
    parts: list[Callable[..., Any]] = []
    if cfg.train:
        if cfg.rotation > 0:
            parts.append(v2.RandomRotation(cfg.rotation, interpolation=mode))
        if cfg.crop == "random":
            parts.append(v2.RandomCrop(cfg.size, pad_if_needed=True))
        else:
            parts.append(v2.RandomResizedCrop(cfg.size, scale=cfg.scale, ratio=cfg.ratio, interpolation=mode,
                                              antialias=cfg.antialias))
        if cfg.hflip > 0:
            parts.append(v2.RandomHorizontalFlip(cfg.hflip))
        if any(j > 0 for j in cfg.jitter()):
            parts.append(v2.ColorJitter(*cfg.jitter()))
        if cfg.grayscale > 0:
            parts.append(v2.RandomGrayscale(cfg.grayscale))
    else:
        parts.append(v2.Resize(cfg.size, interpolation=mode, antialias=cfg.antialias))
        if cfg.center_crop and isinstance(cfg.size, int):
            parts.append(v2.CenterCrop(cfg.size))
    if cfg.to_float:
        parts.append(ToFloatImage(cfg.mean, cfg.std) if cfg.normalize else ToFloatImage())
    return PairTransform(parts)
