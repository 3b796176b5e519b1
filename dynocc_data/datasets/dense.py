"""Dense-depth sources as users have them on disk (ReDWeb, MegaDepth-style lists), as a map-style dataset.

Two layouts (``layout``):

* ``"csv"``: a CSV of ``image_path,depth_path`` lines (an optional header whose second field is not a depth file),
  paths relative to ``root`` (default: the CSV's folder); depth files are ``.npy``, PNG (8/16-bit, times
  ``depth_scale``), TIFF or EXR (:func:`dynocc_data.format.dense.read_depth_file`);
* ``"redweb"``: ReDWeb's folder, ``Imgs/<name>.jpg`` with ``RDs/<name>.png`` (8-bit relative depth; ReDWeb's maps
  are disparity-like, larger = closer, up to scale and shift: ``depth_kind="disparity_affine"`` and no invalid
  value by default).

Each item is an item of the contract (docs/FORMAT.md) with the dense fields ``depth`` ``float32 [1,H,W]`` (0 where
invalid), ``valid_mask`` ``bool [1,H,W]`` and ``meta["depth_kind"]``, and ordinal ``pairs`` drawn on the fly from
the depth after ``transform``, so crops keep them all (:class:`dynocc_data.sampling.DensePairSampler`: 3000 random
pairs, tie ratio 1.02, as YouTube3D's ReDWeb loader): reproducible per ``(seed, epoch, key)``, new each epoch
(:meth:`DenseDepthDataset.set_epoch`); ``seed=None`` draws from torch's global generator instead (seeded per
DataLoader worker by ``create_loader``).
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..errors import InputError, InputNotFoundError
from ..format.dense import DEPTH_FILE_SUFFIXES, check_depth_kind, read_depth_file
from ..sampling import DensePairSampler, sample_generator
from ._common import read_image_rgb, relative_key, resolve_path
from ._distributed import SharedEpoch

logger = logging.getLogger(__name__)

__all__ = ["DENSE_LAYOUTS", "DenseDepthDataset", "list_dense_samples"]

Item = dict[str, Any]
DENSE_LAYOUTS = ("csv", "redweb")
_REDWEB = ("Imgs", "RDs")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _csv_samples(csv_path: Path) -> list[tuple[str, str]]:
    """``(image, depth)`` as written in a CSV of ``image_path,depth_path`` lines."""
    try:
        with open(csv_path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle, skipinitialspace=True))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise InputError(csv_path, f"cannot read CSV: {err}") from None
    samples: list[tuple[str, str]] = []
    first = True
    for line_no, row in enumerate(rows, start=1):
        fields = [f.strip() for f in row if f.strip()]
        if not fields:
            continue
        header, first = first and len(fields) == 2 and not fields[1].lower().endswith(DEPTH_FILE_SUFFIXES), False
        if header:
            continue
        if len(fields) != 2 or not fields[1].lower().endswith(DEPTH_FILE_SUFFIXES):
            raise InputError(csv_path, f"line {line_no}: expected 'image_path,depth_path' with a depth file of "
                                       f"{', '.join(DEPTH_FILE_SUFFIXES)}, got {','.join(row)!r}")
        samples.append((fields[0], fields[1]))
    return samples


def _redweb_samples(root: Path) -> list[tuple[str, str]]:
    """``(Imgs/<name>.jpg, RDs/<name>.png)`` for every image that has its depth map (sorted by name)."""
    images, depths = root / _REDWEB[0], root / _REDWEB[1]
    for folder in (images, depths):
        if not folder.is_dir():
            raise InputNotFoundError(folder, "no such folder (the ReDWeb layout is Imgs/*.jpg + RDs/*.png)")
    found = {p.stem: p.name for p in depths.iterdir() if p.suffix.lower() == ".png"}
    samples, missing = [], 0
    for image in sorted(p for p in images.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES):
        if image.stem in found:
            samples.append((f"{_REDWEB[0]}/{image.name}", f"{_REDWEB[1]}/{found[image.stem]}"))
        else:
            missing += 1
    if missing:
        logger.warning("%s: %d images without a depth map in RDs/ left out", root, missing)
    return samples


def list_dense_samples(source: str | os.PathLike, layout: str = "auto") -> tuple[Path, list[tuple[str, str]], str]:
    """The ``(image, depth)`` paths of a dense source, the folder they are relative to, and the layout.

    Args:
        source: a CSV file (``layout="csv"``) or a ReDWeb folder (``layout="redweb"``).
        layout: ``"csv"``, ``"redweb"`` or ``"auto"`` (a folder is ReDWeb, a file a CSV).

    Returns:
        ``(root, samples, layout)``: the folder the paths are relative to, ``(image, depth)`` as written, the layout.

    Raises:
        InputNotFoundError: the source does not exist.
        InputError: it cannot be read or lists nothing.
        ValueError: an unknown ``layout``.
    """
    path = Path(source)
    if not path.exists():
        raise InputNotFoundError(path, "no such file or folder")
    if layout == "auto":
        layout = "redweb" if path.is_dir() else "csv"
    if layout not in DENSE_LAYOUTS:
        raise ValueError(f"layout must be one of auto, {', '.join(DENSE_LAYOUTS)}, got {layout!r}")
    samples = _csv_samples(path) if layout == "csv" else _redweb_samples(path)
    if not samples:
        raise InputError(path, "no samples listed")
    return (path.parent if layout == "csv" else path), samples, layout


class DenseDepthDataset(Dataset[Item]):
    """Map-style dataset over a dense-depth source yielding contract items with dense fields (module docstring).

    Args:
        source: a CSV of ``image_path,depth_path`` lines or a ReDWeb folder (``Imgs/``, ``RDs/``).
        layout: ``"auto"``, ``"csv"`` or ``"redweb"``.
        root: the folder the CSV's paths start from (default: the CSV's folder).
        depth_kind: what the maps hold (``dynocc_data.format.dense.DEPTH_KINDS``); default ``"depth"`` for CSVs,
            ``"disparity_affine"`` for ReDWeb.
        depth_scale: multiplies the stored values (e.g. ``1/1000`` for 16-bit PNGs in millimetres).
        invalid: the stored value marking missing depth (default ``0`` for CSVs, none for ReDWeb).
        num_pairs: ordinal pairs drawn from the depth per item (0: none).
        ratio: depth-ratio tie threshold of the drawn pairs.
        seed: seed of the drawn pairs (with the epoch and the key); ``None``: torch's global generator.
        source_name: ``meta["source"]`` (default ``"redweb"`` or ``"dense"``).
        transform: maps an item to an item (e.g. ``create_transform(train=True, size=...)``, which carries the
            dense fields).
        loader: decodes an image path to ``uint8 [3,H,W]`` RGB.

    Raises:
        InputError: the source cannot be read or lists nothing (files are opened only in ``__getitem__``, where a
            missing or bad image or depth file, or one of another size than its image, raises naming the file).
        ValueError: a bad ``layout``, ``depth_kind``, ``depth_scale``, ``num_pairs`` or ``ratio``.
    """

    def __init__(self, source: str | os.PathLike, *, layout: str = "auto", root: str | os.PathLike | None = None,
                 depth_kind: str | None = None, depth_scale: float = 1.0, invalid: float | None | str = "default",
                 num_pairs: int = 3000, ratio: float = 1.02, seed: int | None = 0, source_name: str | None = None,
                 transform: Callable[[Item], Item] | None = None,
                 loader: Callable[[Path], torch.Tensor] = read_image_rgb) -> None:
        """List the samples and check the options; nothing else is read yet."""
        self.source = Path(source)
        base, self.samples, self.layout = list_dense_samples(source, layout)
        self.root = Path(root) if root is not None else base
        redweb = self.layout == "redweb"
        self.depth_kind = check_depth_kind(depth_kind or ("disparity_affine" if redweb else "depth"))
        if not (depth_scale > 0):
            raise ValueError(f"depth_scale must be > 0, got {depth_scale}")
        self.depth_scale = float(depth_scale)
        self.invalid = (None if redweb else 0.0) if invalid == "default" else invalid
        self.sampler = DensePairSampler(num_pairs=num_pairs, ratio=ratio)
        self.seed = seed
        self.source_name = source_name or ("redweb" if redweb else "dense")
        self.transform, self.loader = transform, loader
        self._epoch = SharedEpoch(0)
        logger.info("%s: %d dense-depth samples (%s, %s)", self.source, len(self.samples), self.layout,
                    self.depth_kind)

    def set_epoch(self, epoch: int) -> None:
        """Draw new pairs for an epoch (visible to persistent DataLoader workers).

        Args:
            epoch: the epoch number (>= 0), seeding the draws with ``seed`` and each key.
        """
        self._epoch.set(epoch)

    def __len__(self) -> int:
        """Number of samples."""
        return len(self.samples)

    def __getitem__(self, index: int) -> Item:
        """Image ``index``, its depth map and pairs drawn from it."""
        image_name, depth_name = self.samples[index]
        image_path, depth_path = resolve_path(self.root, image_name), resolve_path(self.root, depth_name)
        image = self.loader(image_path)
        depth = read_depth_file(depth_path, scale=self.depth_scale, invalid=self.invalid)
        size = (int(image.shape[-2]), int(image.shape[-1]))
        if tuple(depth.shape) != size:
            raise InputError(depth_path, f"depth is {depth.shape[0]}x{depth.shape[1]} but its image {image_path} "
                                         f"is {size[0]}x{size[1]}")
        valid = torch.isfinite(depth)[None]
        key = relative_key(image_name)
        item: Item = {
            "image": image,
            "depth": torch.nan_to_num(depth, nan=0.0)[None],
            "valid_mask": valid,
            "meta": {"source": self.source_name, "key": key, "video": str(image_path), "frame": 0,
                     "orig_size": size, "depth_kind": self.depth_kind, "depth_path": str(depth_path)},
        }
        item["pairs"], item["ordinal"] = torch.zeros((0, 4), dtype=torch.int64), torch.zeros(0, dtype=torch.int64)
        if self.transform is not None:
            item = self.transform(item)
        # Drawn from the transformed depth: a crop keeps every pair (drawn before it, most would leave it).
        generator = sample_generator(self.seed, self._epoch.get(), key) if self.seed is not None else \
            torch.Generator().manual_seed(int(torch.randint(2**62, ())))
        item["pairs"], item["ordinal"] = self.sampler(item, generator)
        return item

    def __repr__(self) -> str:
        """Short description."""
        return f"{type(self).__name__}({str(self.source)!r}, layout={self.layout!r}, depth_kind={self.depth_kind!r})"
