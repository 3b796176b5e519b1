"""The coordinate conventions of the YouTube3D and DIW reference loaders, for training code ported from them.

The reference loaders resize the image to the network size (``cv2.resize``, bilinear) and map the labels
straight to that size, without going through pixel centres as :class:`~dynocc_data.transforms.PairTransform`'s
resize does; the two differ by a pixel in many pairs. ``YouTube3DDataset(size=...)`` and ``DIWDataset(size=...)``
use these functions so that a ported training script sees the very pairs it saw before:

* YouTube3D (princeton-vl/YouTube3D src/YT_DIWDataset.py, the YouTube3D branch of ``__getitem__``): the
  normalised target times the network height/width in the target's float type, ``>= size`` clamped to
  ``size - 1``, negatives to 0, truncated: :func:`~dynocc_data.datasets.youtube3d.from_youtube3d_target` with the
  network size;
* DIW (src/DIWDataset.py ``__getitem__`` without augmentation, and relative_depth's DataLoader_DIW.lua
  ``parse_one_coordinate_line``): the 1-based coordinate divided by the source size, times the network size,
  clamped to ``[1, size]`` and truncated, then ``- 1`` for 0-based indices (:func:`diw_pairs_at`).

The networks of the YouTube3D release take the image as ``cv2.imread`` reads it, BGR, as ``float32 / 255``,
and the ResNet model (``b_resnet_prep``) subtracts ImageNet's RGB mean and divides by its std channel by channel
on those BGR channels (src/ReDWebNet.py ``resNet_data_preprocess``): :func:`reference_input` does the same from
our RGB ``uint8`` images, so the released checkpoints see what they were trained on.

Pairs whose two points land on one pixel ("collapsed") are kept by the Python loaders; the Lua DIW loader moves
point A up a row (down when it is on the first row). :func:`handle_collapsed` does either, or drops them.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np
import torch

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Collapsed", "diw_pairs_at", "handle_collapsed", "reference_input",
           "resize_like_reference"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Collapsed = Literal["keep", "nudge", "drop"]
COLLAPSED = ("keep", "nudge", "drop")


def check_size(size: tuple[int, int] | None) -> tuple[int, int] | None:
    """``size`` as ``(height, width)`` of positive ints, or ``None``; :class:`ValueError` otherwise."""
    if size is None:
        return None
    try:
        height, width = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be (height, width), got {size!r}") from None
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive (height, width), got {size!r}")
    return height, width


def check_collapsed(collapsed: str) -> Collapsed:
    """``collapsed`` if it is one of ``"keep"``, ``"nudge"``, ``"drop"``; :class:`ValueError` otherwise."""
    if collapsed not in COLLAPSED:
        raise ValueError(f"collapsed must be one of {', '.join(map(repr, COLLAPSED))}, got {collapsed!r}")
    return collapsed  # type: ignore[return-value]


def resize_like_reference(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``uint8 [3,H,W]`` resized to ``size`` with ``cv2.resize`` (bilinear), as the reference loaders do.

    Args:
        image: ``uint8 [3,H,W]``.
        size: ``(H, W)`` wanted.

    Returns:
        The resized image (``image`` itself when it has that size already).
    """
    height, width = size
    if tuple(image.shape[-2:]) == (height, width):
        return image
    hwc = np.ascontiguousarray(image.permute(1, 2, 0).numpy())
    resized = cv2.resize(hwc, (width, height), interpolation=cv2.INTER_LINEAR)
    return torch.from_numpy(resized).permute(2, 0, 1).contiguous()


def diw_pairs_at(coords: np.ndarray, source_size: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """1-based DIW ``(y_A, x_A, y_B, x_B)`` of an image of ``source_size`` as 0-based pixels of ``size``.

    ``c / S_source * S`` in float64 (division first, as both references), clamped to ``[1, S]``, truncated,
    minus one.

    Args:
        coords: ``[N,4]`` 1-based coordinates as in the CSV.
        source_size: ``(H, W)`` the coordinates refer to.
        size: ``(H, W)`` of the image the pairs are for.

    Returns:
        ``int64 [N,4]`` 0-based pixels of ``size``.
    """
    c = np.asarray(coords, dtype=np.float64).reshape(-1, 4)
    (src_h, src_w), (height, width) = source_size, size
    source = np.array([src_h, src_w, src_h, src_w], dtype=np.float64)
    target = np.array([height, width, height, width], dtype=np.float64)
    scaled = np.minimum(np.maximum(c / source * target, 1.0), target)
    return torch.from_numpy(scaled.astype(np.int64) - 1)


def handle_collapsed(
    pairs: torch.Tensor, ordinal: torch.Tensor, collapsed: Collapsed
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep, nudge (the Lua DIW loader: A one row up, or down from row 0) or drop pairs whose points coincide.

    Args:
        pairs: ``int64 [N,4]``.
        ordinal: ``int64 [N]``.
        collapsed: ``"keep"``, ``"nudge"`` or ``"drop"``.

    Returns:
        ``(pairs, ordinal)`` after the rule.
    """
    same = (pairs[:, 0] == pairs[:, 2]) & (pairs[:, 1] == pairs[:, 3])
    if collapsed == "keep" or not bool(same.any()):
        return pairs, ordinal
    if collapsed == "drop":
        return pairs[~same], ordinal[~same]
    pairs = pairs.clone()
    ya = pairs[:, 0]
    pairs[:, 0] = torch.where(same, torch.where(ya > 0, ya - 1, ya + 1), ya)
    return pairs, ordinal


def reference_input(image: torch.Tensor, *, bgr: bool = True, imagenet: bool = False) -> torch.Tensor:
    """RGB ``uint8`` ``[3,H,W]`` or ``[B,3,H,W]`` to the input of the YouTube3D networks.

    ``float32 / 255`` in BGR order (``bgr``), and with ``imagenet`` (the ResNet model) ImageNet's mean and std
    applied in channel order to those BGR channels, as the reference does.

    Args:
        image: RGB ``uint8`` image(s).
        bgr: reverse the channels to BGR, as ``cv2.imread`` reads them.
        imagenet: apply ImageNet's mean and std (the released ResNet model).

    Returns:
        The ``float32`` network input.

    Raises:
        ValueError: when ``image`` is not ``uint8`` with 3 channels.
    """
    if image.dtype != torch.uint8 or image.shape[-3] != 3:
        raise ValueError(f"image must be uint8 [...,3,H,W], got {tuple(image.shape)} {image.dtype}")
    x = image.to(torch.float32) / 255.0
    if bgr:
        x = x.flip(-3)
    if imagenet:
        mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device)[:, None, None]
        std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device)[:, None, None]
        x = (x - mean) / std
    return x
