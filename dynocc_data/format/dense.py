"""Dense depth targets: the one list of depth kinds, depth files as users have them, and the shard member.

The optional dense fields of the item contract (docs/FORMAT.md) are ``depth`` ``float32 [1,H,W]``, ``valid_mask``
``bool [1,H,W]`` and ``meta["depth_kind"]``, one of :data:`DEPTH_KINDS`. What a kind says is what a loss may
assume: ``"depth"`` is metric (larger = farther); ``"depth_scale"`` is depth up to an unknown scale (SfM, e.g.
MegaDepth); ``"depth_affine"`` depth up to scale and shift; ``"disparity"`` inverse depth up to scale (stereo
disparity: larger = closer); ``"disparity_affine"`` inverse depth up to scale and shift (ReDWeb, MiDaS outputs).

Depth files (:func:`read_depth_file`): ``.npy`` (read with ``allow_pickle=False``, never unpickled), PNG (8- or
16-bit, one channel, times a scale, e.g. 1/1000 for millimetres or 1/256 for KITTI), TIFF (float32) and EXR when
the installed OpenCV can decode it (the ``opencv-python-headless`` wheels are built without OpenEXR: EXR then
fails with a one-line error saying so). Shards hold the target as the optional ``depth.npy`` member
(:func:`encode_depth_member` / :func:`decode_depth_member`): ``float32 [H,W]``, NaN where the depth is invalid.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import cv2
import numpy as np
import torch

from ..errors import InputError

__all__ = [
    "DEPTH_FILE_SUFFIXES",
    "DEPTH_KINDS",
    "DEPTH_MEMBER",
    "check_depth_kind",
    "decode_depth_member",
    "encode_depth_member",
    "farther_sign",
    "read_depth_file",
]

DEPTH_KINDS = ("depth", "depth_scale", "depth_affine", "disparity", "disparity_affine")
DEPTH_MEMBER = "depth.npy"
DEPTH_FILE_SUFFIXES = (".npy", ".png", ".tif", ".tiff", ".exr")


def check_depth_kind(kind: str) -> str:
    """Check a depth kind.

    Args:
        kind: the value to check.

    Returns:
        ``kind``, when it is one of :data:`DEPTH_KINDS`.

    Raises:
        ValueError: naming the allowed values, when it is not.
    """
    if kind not in DEPTH_KINDS:
        raise ValueError(f"depth_kind must be one of {', '.join(DEPTH_KINDS)}, got {kind!r}")
    return kind


def farther_sign(kind: str) -> int:
    """Which way a kind's values grow.

    Args:
        kind: one of :data:`DEPTH_KINDS`.

    Returns:
        ``+1`` when larger values are farther (depth kinds), ``-1`` when closer (disparity kinds).

    Raises:
        ValueError: an unknown kind.
    """
    return -1 if check_depth_kind(kind).startswith("disparity") else 1


def _decode_with_opencv(path: Path, raw: bytes) -> np.ndarray:
    """PNG / TIFF / EXR bytes to one channel, as stored (uint8, uint16 or float)."""
    try:
        array = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as err:
        array, reason = None, str(err).strip().splitlines()[-1]
    else:
        reason = "OpenCV cannot decode it"
    if array is None:
        if path.suffix.lower() == ".exr":
            reason = "this OpenCV build cannot read EXR (opencv-python-headless ships without OpenEXR); save as .npy"
        raise InputError(path, f"cannot decode depth: {reason}")
    if array.ndim == 3:
        if array.shape[2] != 1 and not np.array_equal(array[..., 0], array[..., -1]):
            raise InputError(path, f"depth must have one channel, got {array.shape[2]} that differ")
        array = array[..., 0]
    return array


def read_depth_file(path: str | os.PathLike, *, scale: float = 1.0, invalid: float | None = 0.0) -> torch.Tensor:
    """Read a depth (or disparity) map as ``float32 [H,W]`` with NaN where it is invalid.

    Args:
        path: a ``.npy`` (2-D, or ``[1,H,W]``; numeric), PNG, TIFF or EXR file (see the module docstring).
        scale: multiplies the stored values (e.g. ``1/1000`` for a 16-bit PNG in millimetres).
        invalid: the stored value that marks a pixel without depth (``0`` by default; ``None``: none);
            non-finite values are always invalid.

    Returns:
        ``float32 [H,W]``, invalid pixels NaN.

    Raises:
        InputError: the file is missing, unreadable, not a numeric 2-D map, or (EXR) unsupported here.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise InputError(path, f"cannot read depth: {err.strerror or err}") from None
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            array = np.load(io.BytesIO(raw), allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise InputError(path, f"not a readable .npy array (pickled arrays are refused): {err}") from None
    elif suffix in DEPTH_FILE_SUFFIXES:
        array = _decode_with_opencv(path, raw)
    else:
        raise InputError(path, f"unknown depth file type {suffix!r} (one of {', '.join(DEPTH_FILE_SUFFIXES)})")
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2 or array.dtype.kind not in "biuf" or 0 in array.shape:
        raise InputError(path, f"depth must be a numeric [H,W] map, got {array.dtype} {array.shape}")
    stored = array.astype(np.float64)
    bad = ~np.isfinite(stored)
    if invalid is not None:
        bad |= stored == invalid
    depth = (stored * scale).astype(np.float32)
    depth[bad] = np.nan
    return torch.from_numpy(depth)


def encode_depth_member(depth: torch.Tensor | np.ndarray, valid: torch.Tensor | np.ndarray | None = None) -> bytes:
    """Encode the ``depth.npy`` member.

    Args:
        depth: ``[H,W]`` or ``[1,H,W]`` values.
        valid: optional bool mask of the same size; pixels outside it are stored as NaN.

    Returns:
        The ``.npy`` bytes of a ``float32 [H,W]`` array (``allow_pickle=False``).
    """
    array = np.array(depth.detach().cpu().numpy() if isinstance(depth, torch.Tensor) else depth, dtype=np.float32)
    array = array.reshape(array.shape[-2:])
    if valid is not None:
        mask = np.asarray(valid.cpu().numpy() if isinstance(valid, torch.Tensor) else valid, dtype=bool)
        array[~mask.reshape(array.shape)] = np.nan
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def decode_depth_member(array: np.ndarray, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a loaded ``depth.npy`` array into the item's dense fields.

    Args:
        array: the member as loaded (``allow_pickle=False``).
        size: ``(H, W)`` of the sample's image.

    Returns:
        ``depth`` ``float32 [1,H,W]`` (0 where invalid) and ``valid_mask`` ``bool [1,H,W]`` (finite values).

    Raises:
        ValueError: unless it is a float ``[H,W]`` map of the image ``size``.
    """
    if array.dtype.kind != "f" or array.shape != tuple(size):
        raise ValueError(f"must be float [{size[0]},{size[1]}] (the image size), got {array.dtype} {array.shape}")
    depth = np.array(array, dtype=np.float32)
    valid = np.isfinite(depth)
    depth[~valid] = 0.0
    return torch.from_numpy(depth)[None], torch.from_numpy(valid)[None]
