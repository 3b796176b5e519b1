"""Helpers shared by the still-image ordinal-depth datasets (YouTube3D, DIW)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

from ..errors import InputError
from ..format.sample import check_image_size, jpeg_size

logger = logging.getLogger(__name__)

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

__all__ = ["read_image_rgb", "resolve_path", "relative_key"]


def read_image_rgb(path: str | os.PathLike) -> torch.Tensor:
    """Decode an image file into an RGB ``uint8`` tensor ``[3,H,W]``, choosing the decoder by content.

    The format is detected from the bytes, not the extension, because DIW ships JPEGs named ``*.thumb``.

    Args:
        path: the image file (any format torchvision decodes).

    Returns:
        The image, grey or palette images converted to RGB.

    Raises:
        InputError: naming the file, when it cannot be read, is empty, does not decode, or its JPEG/PNG header
            claims more than :data:`~dynocc_data.format.sample.MAX_IMAGE_PIXELS` (checked before decoding).
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise InputError(path, f"cannot read image: {err.strerror or err}") from None
    if not raw:
        raise InputError(path, "image file is empty")
    try:  # the size from the header, before anything is decoded (a small file can claim gigabytes of pixels)
        if raw.startswith(_JPEG_MAGIC):
            check_image_size(*jpeg_size(raw))
        elif raw.startswith(_PNG_MAGIC) and len(raw) >= 24:
            check_image_size(int.from_bytes(raw[20:24], "big"), int.from_bytes(raw[16:20], "big"))
    except ValueError as err:
        raise InputError(path, f"cannot decode image: {err}") from None
    data = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    try:
        if raw.startswith(_JPEG_MAGIC):
            image = decode_jpeg(data, mode=ImageReadMode.RGB)
        else:
            image = decode_image(data, mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError) as err:
        raise InputError(path, f"cannot decode image: {err}") from None
    if image.ndim != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
        raise InputError(path, f"decoded to an unexpected tensor {tuple(image.shape)} {image.dtype}")
    return image


def resolve_path(root: Path, name: str) -> Path:
    """Join a path read from an annotation file onto ``root``.

    Args:
        root: the folder the annotation's paths are relative to.
        name: the path as written in the annotation file.

    Returns:
        The normalised path; an absolute ``name`` is kept as it is.
    """
    return Path(os.path.normpath(root / name))


def relative_key(name: str) -> str:
    """A stable sample key from a path as written in an annotation file.

    Args:
        name: the path as written.

    Returns:
        Its POSIX form without leading ``./``.
    """
    key = Path(name).as_posix()
    while key.startswith("./"):
        key = key[2:]
    return key


def read_csv_lines(csv_path: str | os.PathLike) -> list[tuple[int, str]]:
    """The numbered non-blank lines of an annotation CSV (the one reader of the YouTube3D/DIW/dense lists).

    Args:
        csv_path: the CSV file.

    Returns:
        ``(line number, stripped text)`` of every non-blank line.

    Raises:
        InputError: naming the file, when it cannot be read or lists nothing.
    """
    try:
        with open(csv_path, encoding="utf-8", newline="") as handle:
            lines = [(n, line.strip()) for n, line in enumerate(handle, start=1) if line.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(csv_path, f"cannot read CSV: {getattr(err, 'strerror', None) or err}") from None
    if not lines:
        raise InputError(csv_path, "no samples listed")
    return lines
