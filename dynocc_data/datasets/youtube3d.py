"""The YouTube3D release (Chen, Qian, Deng, CVPR 2019) as a map-style dataset, read without trusting pickles.

Release layout (princeton-vl/YouTube3D, src/YoutubeDataset.py): a CSV without header whose lines look like
``./laundry_room_0001/shot_001/0001.jpg, ./laundry_room_0001/shot_001/colmap/0/0001_0.6_6000_col_reldepth.pkl``,
paths relative to the folder holding the CSV (the code prefixes both with ``../data/``, where the CSV lives).
Each ``.pkl`` was written by Python 2 (``pickle.dump(obj, f, pickle.HIGHEST_PROTOCOL)``, i.e. protocol 2) and
holds a ``5 x N`` numpy array: rows ``y_A, x_A, y_B, x_B`` as fractions of the image height/width and the
ordinal relation (``+1``: A farther, the convention of docs/FORMAT.md).

The 5xN helpers live here rather than in :mod:`dynocc_data.losses` because the normalised layout is this
release's storage format; the losses work on pixel pairs, which is what every dataset yields.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import InputError
from ._common import read_image_rgb, relative_key, resolve_path
from .reference import Collapsed, check_collapsed, check_size, handle_collapsed, resize_like_reference

logger = logging.getLogger(__name__)

__all__ = [
    "YouTube3DDataset",
    "load_youtube3d_pkl",
    "parse_youtube3d_csv",
    "to_youtube3d_target",
    "from_youtube3d_target",
]

Item = dict[str, Any]


MAX_TARGET_BYTES = 64 << 20  # a release target is a few KB (5 x N float64, N ~ a few thousand pairs)


class _ArrayClass:
    """What the unpickler hands out for the global ``numpy.ndarray``: a token only :func:`_reconstruct` accepts.

    The real class is never given to a pickle, so a pickle cannot call ``numpy.ndarray(shape, dtype,
    buffer, offset, strides)`` itself (zero strides make a tiny pickle into gigabytes of array).
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Refuse: a pickle calling ``numpy.ndarray`` directly is not a pickled array but a crafted one."""
        raise _RefusedGlobal("refusing a direct numpy.ndarray call (numpy pickles arrays through _reconstruct)")

    def __repr__(self) -> str:
        return "numpy.ndarray (only as the class argument of _reconstruct)"


_NDARRAY = _ArrayClass()


def _reconstruct(cls: Any, shape: Any, dtype_code: Any) -> np.ndarray:
    """``numpy.core.multiarray._reconstruct`` as numpy's own pickles call it; any other call is refused.

    numpy makes an empty array whose ``BUILD`` state then supplies the shape, the dtype and exactly the bytes
    they need.
    """
    if cls is not _NDARRAY or shape != (0,) or not isinstance(dtype_code, (bytes, str)):
        raise _RefusedGlobal(f"refusing _reconstruct({cls!r}, {shape!r}, ...): not how numpy pickles an array")
    return _multiarray()._reconstruct(np.ndarray, (0,), dtype_code)


def _multiarray() -> Any:
    """The ``multiarray`` module of numpy 1.x or 2.x."""
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray
    return multiarray


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The only globals a pickled plain ndarray refers to, under the module names of numpy 1.x and 2.x."""
    return {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,  # Python 2 / numpy 1 pickles
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # numpy 2 pickles
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy", "dtype"): np.dtype,
    }


class _RefusedGlobal(pickle.UnpicklingError):
    """Raised by the restricted unpickler when a pickle names a global outside the allow-list."""


class _NumpyArrayUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild plain numpy arrays and nothing else.

    ``find_class`` is the only way a pickle reaches callables (GLOBAL, STACK_GLOBAL, INST, OBJ, EXT*), so
    answering it from a fixed table means no other code can run; objects are returned from the table, never
    imported by name. ``copy_reg._reconstructor`` is not admitted: numpy reduces arrays and dtypes itself.
    ``numpy.ndarray`` is admitted only as the class argument of ``_reconstruct``, whose empty array gets its
    data from the pickle's own bytes (numpy's ``__setstate__`` checks that they match the shape), so an array
    can never be larger than the file (at most :data:`MAX_TARGET_BYTES`).
    """

    _ALLOWED = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        """Return an allow-listed global or refuse (e.g. ``os.system``, ``builtins.eval``)."""
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise _RefusedGlobal(f"refusing to unpickle global {module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        """Refuse persistent ids: an array pickle never has any."""
        raise _RefusedGlobal("refusing to unpickle a persistent id")


def _describe(obj: Any) -> str:
    """Short description of an unexpected payload for error messages."""
    if isinstance(obj, np.ndarray):
        return f"array of shape {obj.shape} and dtype {obj.dtype}"
    return f"object of type {type(obj).__name__}"


def load_youtube3d_pkl(path: str | os.PathLike) -> np.ndarray:
    """Read a YouTube3D target (``5 x N`` array pickled by Python 2) with a restricted unpickler.

    Only numpy's array reconstruction is admitted (``_reconstruct`` as numpy calls it, ``dtype``; never a direct
    ``numpy.ndarray`` call), the file may hold at most :data:`MAX_TARGET_BYTES`, and Python 2 strings are decoded
    as latin-1 (what numpy expects for py2 array data).

    Args:
        path: the ``.pkl`` file.

    Returns:
        A writable native-endian copy of the ``(5, N)`` array (integer arrays as float64).

    Raises:
        InputError: naming the file, when it cannot be read or is too large, names any other global, is not a
            readable pickle, or holds a non-numeric array, a shape other than ``(5, N)``, non-finite values or
            ordinals outside {-1, 0, 1}.
    """
    try:
        with open(path, "rb") as stream:
            raw = stream.read(MAX_TARGET_BYTES + 1)
    except OSError as err:
        raise InputError(path, f"cannot read target: {err.strerror or err}") from None
    if len(raw) > MAX_TARGET_BYTES:
        raise InputError(path, f"target larger than {MAX_TARGET_BYTES} bytes: not a YouTube3D target")
    try:
        obj = _NumpyArrayUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except _RefusedGlobal as err:
        raise InputError(path, str(err)) from None
    except Exception as err:  # malformed pickles fail in many ways (EOFError, ValueError, struct.error, ...)
        raise InputError(path, f"not a readable pickle ({type(err).__name__}: {err})") from None
    if type(obj) is not np.ndarray or obj.dtype.kind not in "biuf" or obj.ndim != 2 or obj.shape[0] != 5:
        raise InputError(path, f"expected a numeric array of shape (5, N), got {_describe(obj)}")
    if not np.isfinite(obj).all():
        raise InputError(path, "target holds non-finite values")
    if not np.isin(obj[4], (-1, 0, 1)).all():
        raise InputError(path, "ordinal row (the 5th) must hold only -1, 0 or +1")
    # A writable native-endian copy (unpickled arrays may be read-only views of the pickle's bytes).
    return obj.astype(obj.dtype.newbyteorder("=") if obj.dtype.kind == "f" else np.float64, copy=True)


def to_youtube3d_target(
    pairs: torch.Tensor, ordinal: torch.Tensor, size: tuple[int, int] | Sequence[int]
) -> torch.Tensor:
    """Pixel pairs ``[N,4]`` and ordinals ``[N]`` to the release's normalised ``float32 [5,N]`` layout.

    Coordinates are written as pixel centres, ``(p + 0.5) / H`` and ``(p + 0.5) / W``: the release's reader
    (see :func:`from_youtube3d_target`) multiplies by the size and truncates, which maps a centre back to its
    pixel exactly, with a half-pixel margin against rounding.

    Args:
        pairs: ``[N,4]`` integer ``(yA, xA, yB, xB)`` inside the image.
        ordinal: ``[N]`` values -1, 0 or +1.
        size: ``(H, W)`` of the image.

    Returns:
        The ``float32 [5,N]`` target: four coordinate rows, then the ordinal row.

    Raises:
        ValueError: when the counts differ, a pair lies outside the image, or an ordinal is not -1, 0 or +1.
    """
    height, width = (int(s) for s in size)
    pairs = torch.as_tensor(pairs).reshape(-1, 4).to(torch.int64)
    ordinal = torch.as_tensor(ordinal).reshape(-1).to(torch.int64)
    if len(ordinal) != len(pairs):
        raise ValueError(f"{len(pairs)} pairs but {len(ordinal)} ordinals")
    limits = torch.tensor([height, width, height, width])
    if bool(((pairs < 0) | (pairs >= limits)).any()):
        raise ValueError(f"pairs must lie inside the {height}x{width} image")
    if bool((ordinal.abs() > 1).any()):
        raise ValueError("ordinal values must be -1, 0 or +1")
    coords = (pairs.to(torch.float64) + 0.5) / limits.to(torch.float64)
    return torch.cat([coords.T, ordinal[None].to(torch.float64)]).to(torch.float32)


def from_youtube3d_target(
    target: torch.Tensor | np.ndarray, size: tuple[int, int] | Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The release's normalised ``[5,N]`` target to pixel pairs ``int64 [N,4]`` and ordinals ``int64 [N]``.

    Mirrors ``YoutubeDatasetVal.__getitem__`` of princeton-vl/YouTube3D exactly: each coordinate row is
    multiplied by the image height (``y``) or width (``x``) in the array's own float type, values ``>= size``
    become ``size - 1``, negatives become 0, and ``astype(np.int64)`` truncates (no rounding, no ``-1``).

    Args:
        target: the ``[5,N]`` target (integer arrays are read as float64).
        size: ``(H, W)`` of the image.

    Returns:
        ``(pairs, ordinal)``: ``int64 [N,4]`` inside the image and ``int64 [N]``.

    Raises:
        ValueError: when the target is not ``[5,N]``, holds non-finite values, or its ordinal row values other
            than -1, 0, +1.
    """
    height, width = (int(s) for s in size)
    target = torch.as_tensor(target)
    if target.ndim != 2 or target.shape[0] != 5:
        raise ValueError(f"target must be [5,N], got {tuple(target.shape)}")
    if not target.is_floating_point():
        target = target.to(torch.float64)
    if not bool(torch.isfinite(target).all()):
        raise ValueError("target holds non-finite values")
    scale = torch.tensor([height, width, height, width], dtype=target.dtype)[:, None]
    upper = torch.tensor([height - 1, width - 1, height - 1, width - 1], dtype=target.dtype)[:, None]
    coords = torch.minimum(target[:4] * scale, upper).clamp(min=0)
    ordinal = target[4].to(torch.int64)
    if bool((ordinal.abs() > 1).any()):
        raise ValueError("ordinal row must hold only -1, 0 or +1")
    return coords.to(torch.int64).T.contiguous(), ordinal


def parse_youtube3d_csv(csv_path: str | os.PathLike) -> list[tuple[str, str]]:
    """Read the ``image_path,pkl_path`` lines of a YouTube3D CSV (spaces after the comma are allowed).

    The release has no header; a first line whose second field does not end in ``.pkl`` is taken as one and
    skipped.

    Args:
        csv_path: the CSV file.

    Returns:
        ``(image_path, pkl_path)`` per sample, as written in the CSV.

    Raises:
        InputError: naming the file, when it cannot be read or lists no samples, and with the line number for any
            malformed line.
    """
    try:
        with open(csv_path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle, skipinitialspace=True))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise InputError(csv_path, f"cannot read CSV: {err}") from None
    entries: list[tuple[str, str]] = []
    for line_no, row in enumerate(rows, start=1):
        fields = [f.strip() for f in row]
        while fields and not fields[-1]:
            fields.pop()
        if not fields:
            continue
        if not entries and len(fields) == 2 and not fields[1].lower().endswith(".pkl"):
            logger.debug("%s: line %d taken as a header: %s", csv_path, line_no, fields)
            continue
        if len(fields) != 2 or not all(fields):
            raise InputError(csv_path, f"line {line_no}: expected 'image_path,pkl_path', got {','.join(row)!r}")
        entries.append((fields[0], fields[1]))
    if not entries:
        raise InputError(csv_path, "no samples listed")
    return entries


class YouTube3DDataset(Dataset[Item]):
    """Map-style dataset over a YouTube3D CSV yielding items of the package's contract (docs/FORMAT.md).

    The CSV is parsed on construction; images and targets are opened only in ``__getitem__``, where a missing or
    bad file raises :class:`InputError` naming it.

    ``size=(240, 320)`` (or ``(384, 384)``) gives the items of the reference training loader
    (princeton-vl/YouTube3D src/YT_DIWDataset.py): the image resized with ``cv2.resize`` and the pairs mapped from
    the normalised target straight to that size (see :mod:`dynocc_data.datasets.reference`), pixel for pixel the
    same. Without ``size`` the pairs are in pixels of the decoded image (the reference's validation loader).

    Args:
        csv_path: the release's CSV (:func:`parse_youtube3d_csv`).
        root: the folder the CSV's relative paths start from (default: the CSV's folder); absolute paths in the
            CSV are used as they are.
        transform: maps an item to an item.
        loader: decodes an image path to ``uint8 [3,H,W]`` RGB.
        size: ``(height, width)`` of the network input, or ``None`` for the decoded image's own size.
        collapsed: pairs whose two points land on one pixel: ``"keep"`` (the reference, default), ``"nudge"``
            (move A by a row, as the Lua DIW loader) or ``"drop"``.

    Raises:
        InputError: when the CSV cannot be read or is malformed.
    """

    def __init__(
        self,
        csv_path: str | os.PathLike,
        root: str | os.PathLike | None = None,
        *,
        transform: Callable[[Item], Item] | None = None,
        loader: Callable[[Path], torch.Tensor] = read_image_rgb,
        size: tuple[int, int] | None = None,
        collapsed: Collapsed = "keep",
    ) -> None:
        self.size, self.collapsed = check_size(size), check_collapsed(collapsed)
        self.csv_path = Path(csv_path)
        self.root = Path(root) if root is not None else self.csv_path.parent
        self.transform = transform
        self.loader = loader
        self.entries = parse_youtube3d_csv(self.csv_path)
        logger.info("%s: %d YouTube3D samples", self.csv_path, len(self.entries))

    def __len__(self) -> int:
        """Number of samples listed in the CSV."""
        return len(self.entries)

    def __getitem__(self, index: int) -> Item:
        """Load image ``index`` and its pairs (pixels of that image)."""
        image_name, target_name = self.entries[index]
        image_path = resolve_path(self.root, image_name)
        target_path = resolve_path(self.root, target_name)
        image = self.loader(image_path)
        target = load_youtube3d_pkl(target_path)
        height, width = int(image.shape[-2]), int(image.shape[-1])
        pairs, ordinal = from_youtube3d_target(torch.from_numpy(target), self.size or (height, width))
        if self.size is not None:
            image = resize_like_reference(image, self.size)
        pairs, ordinal = handle_collapsed(pairs, ordinal, self.collapsed)
        item: Item = {
            "image": image,
            "pairs": pairs,
            "ordinal": ordinal,
            "meta": {
                "source": "youtube3d",
                "key": relative_key(image_name),
                "video": str(image_path),
                "frame": 0,
                "orig_size": (height, width),
                "target_path": str(target_path),
            },
        }
        return self.transform(item) if self.transform is not None else item
