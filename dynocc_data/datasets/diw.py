"""Depth in the Wild (Chen, Fu, Yang, Deng, NIPS 2016) as a map-style dataset.

Two CSV layouts are read, told apart line by line:

* the release (DIW_train.csv / DIW_val.csv / DIW_test.csv, no header; read as in princeton-vl/relative_depth
  src/experiment/DataLoader_DIW.lua and test_model_on_DIW.lua): two lines per sample,

      ./DIW_test/0a1b2c.thumb
      y_A,x_A,y_B,x_B,rel,width,height

* the layout of the YouTube3D code (princeton-vl/YouTube3D src/DIWDataset.py ``parse_csv_meta_data``): a header
  line, then per sample ``path,idx,n_point`` and ``n_point`` coordinate lines (``n_point`` is 1 in DIW; the
  reference asserts it, and so do we);

with 1-based pixel coordinates in an image of ``width x height`` and ``rel`` ``'>'`` or ``'<'``. ``'>'`` means
depth_A > depth_B, i.e. A is farther: the reference maps ``'>'`` to +1 and trains the network output ``z`` (later
compared with metric depth) so that ``z_A > z_B``; its DIW test counts ``(z_A - z_B) * r > 0`` as correct on depth
predictions. So ``'>'`` is our ``+1`` unchanged and ``'<'`` is ``-1``. Images are JPEGs named ``*.thumb``.

Paths: the YouTube3D code reads the CSV from ``src/`` and opens the paths as written, relative to where it runs
(the CSV lists ``../data/...``); give ``root`` the folder those relative paths start from (by default the CSV's
folder).
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import InputError
from ._common import read_csv_lines, read_image_rgb, relative_key, resolve_path
from .reference import Collapsed, check_collapsed, check_size, diw_pairs_at, handle_collapsed, resize_like_reference

logger = logging.getLogger(__name__)

__all__ = ["DIWDataset", "DIWAnnotations", "DIWRow", "iter_diw_rows", "parse_diw_csv", "scale_diw_coordinates"]

Item = dict[str, Any]

_RELATIONS = {">": 1, "<": -1, "=": 0}


@dataclass(frozen=True)
class DIWAnnotations:
    """The parsed content of a DIW CSV, held in compact arrays (DIW_train has ~420k samples).

    Attributes:
        paths: image paths as written in the CSV.
        coords: float64 ``[N,4]``: y_A, x_A, y_B, x_B, 1-based, in the annotated image.
        ordinal: int8 ``[N]``: +1 A farther, -1 A closer (0 equal, never in DIW itself).
        sizes: int64 ``[N,2]``: (height, width) of the annotated image.
        lines: int64 ``[N]``: line number of each sample's image path.
    """

    paths: list[str]
    coords: np.ndarray
    ordinal: np.ndarray
    sizes: np.ndarray
    lines: np.ndarray

    def __len__(self) -> int:
        """Number of samples."""
        return len(self.paths)


def _parse_coordinate_line(csv_path: os.PathLike | str, line_no: int, text: str) -> tuple[list[float], int, int, int]:
    """Parse ``y_A,x_A,y_B,x_B,rel,width,height`` into coordinates, ordinal and ``(height, width)``."""
    fields = [f.strip() for f in text.split(",")]
    if len(fields) != 7:
        raise InputError(csv_path, f"line {line_no}: expected 'y_A,x_A,y_B,x_B,rel,width,height', got {text!r}")
    try:
        coords = [float(f) for f in fields[:4]]
        width_f, height_f = float(fields[5]), float(fields[6])
    except ValueError:
        raise InputError(csv_path, f"line {line_no}: non-numeric coordinate or size in {text!r}") from None
    if not all(math.isfinite(c) for c in coords):
        raise InputError(csv_path, f"line {line_no}: non-finite coordinate in {text!r}")
    if not (width_f >= 1 and height_f >= 1 and width_f.is_integer() and height_f.is_integer()):
        raise InputError(csv_path, f"line {line_no}: image size must be positive integers, got {fields[5]}x{fields[6]}")
    width, height = int(width_f), int(height_f)
    relation = fields[4][:1]  # the Lua reader also looks at the first character only
    if relation not in _RELATIONS:
        raise InputError(csv_path, f"line {line_no}: relation must be '>' or '<', got {fields[4]!r}")
    return coords, _RELATIONS[relation], height, width


@dataclass(frozen=True)
class DIWRow:
    """One sample of a DIW CSV: its image path as written, one annotated pair, and where it was read.

    Args:
        line: line number of the image path.
        image: the image path as written.
        coord_line: the annotation line as written.
        coords: ``y_A, x_A, y_B, x_B``, 1-based.
        ordinal: +1 A farther, -1 A closer (0 equal).
        size: ``(height, width)`` of the annotated image.
    """

    line: int
    image: str
    coord_line: str
    coords: list[float]
    ordinal: int
    size: tuple[int, int]


def _path_line(text: str) -> tuple[str, int | None]:
    """The image path of a path line and, in the YouTube3D code's layout (``path,idx,n_point``), ``n_point``."""
    fields = [f.strip() for f in next(csv.reader([text]), [""])]
    if len(fields) == 3 and fields[2].lstrip("+-").isdigit():
        return fields[0], int(fields[2])
    return fields[0], None


def iter_diw_rows(csv_path: str | os.PathLike) -> Iterator[DIWRow | InputError]:
    """The samples of a DIW CSV in either layout (see the module docstring), reading on after a malformed one.

    Blank lines are ignored; a first line that is followed by a ``path,idx,n_point`` line is taken as the
    YouTube3D code's header.

    Args:
        csv_path: the CSV file.

    Yields:
        A :class:`DIWRow` per sample, or for a malformed sample its :class:`InputError` (with the line number).

    Raises:
        InputError: naming the file, when it cannot be read or lists nothing.
    """
    lines = read_csv_lines(csv_path)
    i = 0
    if len(lines) > 1 and not _looks_like_annotation(lines[0][1]) and _path_line(lines[1][1])[1] is not None:
        logger.debug("%s: line %d taken as a header: %s", csv_path, lines[0][0], lines[0][1])
        i = 1
    while i < len(lines):
        path_no, path_text = lines[i]
        i += 1
        if _looks_like_annotation(path_text):
            yield InputError(csv_path, f"line {path_no}: expected an image path, got an annotation line {path_text!r}")
            continue
        image, n_point = _path_line(path_text)
        annotations = []
        while i < len(lines) and _looks_like_annotation(lines[i][1]) or (
                i < len(lines) and lines[i][1].count(",") >= 4 and not annotations):
            annotations.append(lines[i])
            i += 1
            if n_point is None:
                break  # the release layout: one annotation line per path
        if not image:
            yield InputError(csv_path, f"line {path_no}: expected an image path, got {path_text!r}")
            continue
        if not annotations:
            yield InputError(csv_path, f"line {path_no}: image path without an annotation line after it")
            continue
        if n_point is not None and n_point != len(annotations):
            yield InputError(csv_path, f"line {path_no}: says n_point {n_point} but {len(annotations)} annotation "
                                       "line(s) follow")
            continue
        if len(annotations) != 1:
            yield InputError(csv_path, f"line {path_no}: {len(annotations)} pairs for one image; DIW has one")
            continue
        coord_no, coord_text = annotations[0]
        try:
            coords, ordinal, height, width = _parse_coordinate_line(csv_path, coord_no, coord_text)
        except InputError as err:
            yield err
            continue
        yield DIWRow(path_no, image, coord_text, coords, ordinal, (height, width))


def parse_diw_csv(csv_path: str | os.PathLike) -> DIWAnnotations:
    """Read a DIW CSV in either layout (see the module docstring) into compact arrays.

    ``'='`` is accepted as ordinal 0 for CSVs in the same layout from other sources (DIW itself has none).

    Args:
        csv_path: the CSV file.

    Returns:
        The annotations, in the CSV's order.

    Raises:
        InputError: naming the file, when it cannot be read or lists no samples, and with the line number for any
            malformed line.
    """
    rows = []
    for row in iter_diw_rows(csv_path):
        if isinstance(row, InputError):
            raise row
        rows.append(row)
    if not rows:
        raise InputError(csv_path, "no samples listed")
    return DIWAnnotations(
        [r.image for r in rows],
        np.asarray([r.coords for r in rows], dtype=np.float64).reshape(-1, 4),
        np.asarray([r.ordinal for r in rows], dtype=np.int8),
        np.asarray([r.size for r in rows], dtype=np.int64).reshape(-1, 2),
        np.asarray([r.line for r in rows], dtype=np.int64),
    )


def _looks_like_annotation(line: str) -> bool:
    """True for a ``y,x,y,x,rel,w,h`` line (a sign the two-line pattern is out of step)."""
    fields = [f.strip() for f in line.split(",")]
    return len(fields) == 7 and fields[4][:1] in _RELATIONS


def scale_diw_coordinates(
    coords: np.ndarray | torch.Tensor, annotated_size: tuple[int, int], image_size: tuple[int, int]
) -> torch.Tensor:
    """Map 1-based ``(y_A, x_A, y_B, x_B)`` in the annotated image to 0-based pixel indices in the decoded image.

    The rule of relative_depth's DataLoader_DIW.lua: ``min(S, max(1, floor(c / S_csv * S)))`` then ``- 1``,
    computed as ``floor(c * S / S_csv)`` so that equal sizes give exactly ``c - 1``.

    Args:
        coords: ``[4]`` or ``[N,4]`` 1-based coordinates.
        annotated_size: ``(height, width)`` of the image the CSV annotates.
        image_size: ``(height, width)`` of the decoded image.

    Returns:
        int64 ``[N,4]`` pixel indices inside the decoded image.
    """
    (csv_h, csv_w), (img_h, img_w) = annotated_size, image_size
    c = torch.as_tensor(coords, dtype=torch.float64).reshape(-1, 4)
    num = torch.tensor([img_h, img_w, img_h, img_w], dtype=torch.float64)
    den = torch.tensor([csv_h, csv_w, csv_h, csv_w], dtype=torch.float64)
    scaled = torch.floor(c * num / den)
    return torch.minimum(scaled.clamp(min=1), num).to(torch.int64) - 1


class DIWDataset(Dataset[Item]):
    """Map-style dataset over a DIW CSV yielding items of the package's contract (one pair per image).

    When the decoded image differs in size from the CSV's ``width,height`` the coordinates are rescaled
    (:func:`scale_diw_coordinates`) and a warning says so once: the reference code uses them as they are.
    ``meta`` also holds ``annotated_size`` and the CSV ``line``.

    ``size=(240, 320)`` gives the items of the reference training loader (princeton-vl/YouTube3D
    src/DIWDataset.py without augmentation, relative_depth DataLoader_DIW.lua): the image resized with
    ``cv2.resize``, the pairs mapped by :func:`~dynocc_data.datasets.reference.diw_pairs_at` from the decoded
    image's size.

    Args:
        csv_path: the DIW CSV, parsed on construction (:func:`parse_diw_csv`), in either layout.
        root: the folder the CSV's relative image paths start from (default: the CSV's folder); absolute paths
            are used as they are.
        transform: maps an item to an item.
        size: ``(height, width)`` of the network input, or ``None`` for the decoded image's own size.
        collapsed: pairs whose points land on one pixel: ``"nudge"`` (the Lua loader, default), ``"keep"`` (the
            Python loader) or ``"drop"``.

    Raises:
        InputError: when the CSV cannot be read or is malformed (see :func:`parse_diw_csv`).
    """

    def __init__(
        self,
        csv_path: str | os.PathLike,
        root: str | os.PathLike | None = None,
        *,
        transform: Callable[[Item], Item] | None = None,
        size: tuple[int, int] | None = None,
        collapsed: Collapsed = "nudge",
    ) -> None:
        self.size, self.collapsed = check_size(size), check_collapsed(collapsed)
        self._warned_size = False
        self.csv_path = Path(csv_path)
        self.root = Path(root) if root is not None else self.csv_path.parent
        self.transform = transform
        self.annotations = parse_diw_csv(self.csv_path)
        logger.info("%s: %d DIW samples", self.csv_path, len(self.annotations))

    def __len__(self) -> int:
        """Number of samples in the CSV."""
        return len(self.annotations)

    def __getitem__(self, index: int) -> Item:
        """Load sample ``index``: its image and its single annotated pair."""
        ann = self.annotations
        name = ann.paths[index]  # raises IndexError past the end, as iteration expects
        index = index % len(ann)
        image_path = resolve_path(self.root, name)
        image = read_image_rgb(image_path)
        height, width = int(image.shape[-2]), int(image.shape[-1])
        annotated = (int(ann.sizes[index, 0]), int(ann.sizes[index, 1]))
        if annotated != (height, width) and not self._warned_size:
            self._warned_size = True
            logger.warning("%s: decoded %dx%d but the CSV says %dx%d (line %d): coordinates rescaled to the "
                           "decoded image, where the reference code uses them as they are (said once)", image_path,
                           height, width, annotated[0], annotated[1], int(ann.lines[index]))
        if self.size is not None:
            pairs = diw_pairs_at(ann.coords[index], (height, width), self.size)
            image = resize_like_reference(image, self.size)
        else:
            pairs = scale_diw_coordinates(ann.coords[index], annotated, (height, width))
        ordinal = torch.tensor([int(ann.ordinal[index])], dtype=torch.int64)
        pairs, ordinal = handle_collapsed(pairs, ordinal, self.collapsed)
        item: Item = {
            "image": image,
            "pairs": pairs,
            "ordinal": ordinal,
            "meta": {
                "source": "diw",
                "key": relative_key(name),
                "video": str(image_path),
                "frame": 0,
                "orig_size": (height, width),
                "annotated_size": annotated,
                "line": int(ann.lines[index]),
            },
        }
        return self.transform(item) if self.transform is not None else item
