"""Builders of small on-disk copies of external datasets (YouTube3D, DIW, dense depth) in their exact release formats.

YouTube3D targets are Python 2 protocol-2 pickles of numpy arrays. Python 2 is not available, so
:func:`py2_ndarray_pickle` emits, opcode by opcode, what Python 2's ``pickle.dump(arr, f, 2)`` (the pure-Python
pickler that princeton-vl/YouTube3D's ``save_obj`` uses) writes for a numpy 1.x array: ``GLOBAL
numpy.core.multiarray _reconstruct``, ``str`` objects as ``SHORT_BINSTRING``/``BINSTRING`` (Python 2 ``str``
is bytes), memo ``BINPUT`` after every global, string and tuple, starting at index 0.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torchvision.io import encode_jpeg, encode_png


class Py2PickleWriter:
    """Appends Python 2 protocol-2 opcodes, numbering memo entries the way Python 2's ``pickle.Pickler`` does."""

    def __init__(self) -> None:
        self.out = bytearray(b"\x80\x02")  # PROTO 2
        self.next_memo = 0

    def _put(self) -> None:
        """Memoise the object on top of the stack (BINPUT / LONG_BINPUT)."""
        if self.next_memo < 256:
            self.out += b"q" + bytes([self.next_memo])
        else:
            self.out += b"r" + struct.pack("<I", self.next_memo)
        self.next_memo += 1

    def global_(self, module: str, name: str) -> None:
        """GLOBAL ``module name`` (memoised).

        Args:
            module: the module name.
            name: the global's name in it.
        """
        self.out += b"c" + module.encode("ascii") + b"\n" + name.encode("ascii") + b"\n"
        self._put()

    def int_(self, value: int) -> None:
        """A Python 2 ``int``: BININT1, BININT2 or BININT (not memoised).

        Args:
            value: a 32-bit signed integer.
        """
        if 0 <= value <= 0xFF:
            self.out += b"K" + bytes([value])
        elif 0 <= value <= 0xFFFF:
            self.out += b"M" + struct.pack("<H", value)
        else:
            self.out += b"J" + struct.pack("<i", value)

    def str_(self, data: bytes) -> None:
        """A Python 2 ``str`` (bytes): SHORT_BINSTRING below 256 bytes, else BINSTRING (memoised).

        Args:
            data: the string's bytes.
        """
        if len(data) < 256:
            self.out += b"U" + bytes([len(data)]) + data
        else:
            self.out += b"T" + struct.pack("<i", len(data)) + data
        self._put()

    def none(self) -> None:
        """NONE."""
        self.out += b"N"

    def bool_(self, value: bool) -> None:
        """NEWTRUE / NEWFALSE.

        Args:
            value: the boolean.
        """
        self.out += b"\x88" if value else b"\x89"

    def small_tuple(self, size: int) -> None:
        """TUPLE1/2/3 of the last objects (memoised).

        Args:
            size: 1, 2 or 3.
        """
        self.out += {1: b"\x85", 2: b"\x86", 3: b"\x87"}[size]
        self._put()

    def mark(self) -> None:
        """MARK, opening a tuple of more than three items."""
        self.out += b"("

    def tuple_(self) -> None:
        """TUPLE from the last MARK (memoised)."""
        self.out += b"t"
        self._put()

    def reduce(self) -> None:
        """REDUCE: call the callable with the argument tuple (result memoised)."""
        self.out += b"R"
        self._put()

    def build(self) -> None:
        """BUILD: ``__setstate__`` with the state on top of the stack."""
        self.out += b"b"

    def stop(self) -> bytes:
        """STOP and return the pickle.

        Returns:
            The pickle's bytes.
        """
        self.out += b"."
        return bytes(self.out)


def py2_ndarray_pickle(array: np.ndarray) -> bytes:
    """The bytes Python 2 + numpy 1.x write for ``pickle.dump(array, f, 2)``.

    Args:
        array: a little-endian numeric array (written C-contiguous).

    Returns:
        The pickle's bytes.

    Raises:
        ValueError: for a big-endian or non-numeric array.
    """
    array = np.ascontiguousarray(array)
    if array.dtype.byteorder == ">" or array.dtype.kind not in "biuf":
        raise ValueError("this builder covers little-endian numeric arrays only")
    w = Py2PickleWriter()
    # ndarray.__reduce__: (_reconstruct, (ndarray, (0,), 'b'), state)
    w.global_("numpy.core.multiarray", "_reconstruct")
    w.global_("numpy", "ndarray")
    w.int_(0)
    w.small_tuple(1)
    w.str_(b"b")
    w.small_tuple(3)
    w.reduce()
    # state = (1, shape, dtype, is_fortran, data)
    w.mark()
    w.int_(1)
    for dim in array.shape:
        w.int_(dim)
    w.small_tuple(array.ndim)
    # dtype.__reduce__: (dtype, ('f8', 0, 1), (3, '<', None, None, None, -1, -1, 0))
    w.global_("numpy", "dtype")
    w.str_(f"{array.dtype.kind}{array.dtype.itemsize}".encode("ascii"))
    w.int_(0)
    w.int_(1)
    w.small_tuple(3)
    w.reduce()
    w.mark()
    w.int_(3)
    w.str_(b"|" if array.dtype.itemsize == 1 else b"<")
    w.none()
    w.none()
    w.none()
    w.int_(-1)
    w.int_(-1)
    w.int_(0)
    w.tuple_()
    w.build()
    w.bool_(False)
    w.str_(array.astype(array.dtype.newbyteorder("<")).tobytes())
    w.tuple_()
    w.build()
    return w.stop()


def py2_call_pickle(module: str, name: str, argument: bytes) -> bytes:
    """A Python 2 pickle that calls ``module.name(argument)`` when loaded (e.g. ``posix.system``): must be refused.

    Args:
        module: the callable's module.
        name: the callable's name.
        argument: its one (bytes) argument.

    Returns:
        The pickle's bytes.
    """
    w = Py2PickleWriter()
    w.global_(module, name)
    w.str_(argument)
    w.small_tuple(1)
    w.reduce()
    return w.stop()


def py2_list_pickle(values: list[float]) -> bytes:
    """A Python 2 protocol-2 pickle of a list of floats (no globals): a payload that is not an array.

    Args:
        values: the floats.

    Returns:
        The pickle's bytes.
    """
    out = bytearray(b"\x80\x02]q\x00(")  # EMPTY_LIST, BINPUT 0, MARK
    for v in values:
        out += b"G" + struct.pack(">d", v)  # BINFLOAT
    out += b"e."  # APPENDS, STOP
    return bytes(out)


def two_colour_image(height: int, width: int) -> torch.Tensor:
    """An image whose left half is pure red, right half pure blue (survives JPEG well enough to test RGB order).

    Args:
        height: H.
        width: W.

    Returns:
        ``uint8 [3,H,W]``.
    """
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    image[0, :, : width // 2] = 255
    image[2, :, width // 2 :] = 255
    return image


def write_jpeg(path: Path, image: torch.Tensor) -> Path:
    """Write an RGB image as a JPEG file (whatever the file's extension; folders are created).

    Args:
        path: the file.
        image: ``uint8 [3,H,W]``.

    Returns:
        ``path``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_jpeg(image, quality=95).numpy().tobytes())
    return path


def write_png(path: Path, image: torch.Tensor) -> Path:
    """Write an image as a PNG file (folders are created).

    Args:
        path: the file.
        image: ``uint8 [C,H,W]``, C = 1 or 3.

    Returns:
        ``path``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png(image).numpy().tobytes())
    return path


@dataclass
class YouTube3DSample:
    """One release sample.

    Attributes:
        image_name: the image path as written in the CSV.
        target_name: the target path as written in the CSV.
        image: the image, ``uint8 [3,H,W]``.
        target_bytes: the target file's bytes (e.g. :func:`py2_ndarray_pickle`).
    """

    image_name: str
    target_name: str
    image: torch.Tensor
    target_bytes: bytes


def write_youtube3d_release(root: Path, samples: list[YouTube3DSample], *, header: str | None = None,
                            csv_name: str = "YT_train.csv") -> Path:
    """Write images, pickles and a CSV in the release layout (``img, pkl`` lines with ", " separators).

    Args:
        root: the release folder; the CSV's paths are relative to it.
        samples: the samples.
        header: a first line to write (the release has none).
        csv_name: the CSV's file name.

    Returns:
        The CSV's path.
    """
    lines = [] if header is None else [header]
    for s in samples:
        image_path = root / s.image_name
        write_jpeg(image_path, s.image)
        target_path = root / s.target_name
        target_path.parent.mkdir(parents=True, exist_ok=True)
        target_path.write_bytes(s.target_bytes)
        lines.append(f"{s.image_name}, {s.target_name}")
    csv_path = root / csv_name
    csv_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return csv_path


@dataclass
class DIWSample:
    """One DIW sample.

    Attributes:
        image_name: the image path as in the CSV.
        image: the image written there, ``uint8 [3,H,W]``.
        annotation: the annotation line ``"y_A,x_A,y_B,x_B,rel,width,height"``, 1-based coordinates.
    """

    image_name: str
    image: torch.Tensor
    annotation: str


def write_diw_release(root: Path, samples: list[DIWSample], *, csv_name: str = "DIW_test.csv") -> Path:
    """Write ``*.thumb`` JPEGs and a two-lines-per-sample DIW CSV.

    Args:
        root: the release folder; the CSV's paths are relative to it.
        samples: the samples.
        csv_name: the CSV's file name.

    Returns:
        The CSV's path.
    """
    lines: list[str] = []
    for s in samples:
        write_jpeg(root / s.image_name, s.image)
        lines += [s.image_name, s.annotation]
    csv_path = root / csv_name
    csv_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return csv_path


def write_depth_file(path: Path, depth: np.ndarray) -> Path:
    """Write a ``[H,W]`` map in the format its suffix names.

    Args:
        path: the file; ``.npy`` (``allow_pickle=False``), ``.png`` (the array's own ``uint8``/``uint16``, as 8- or
            16-bit grey) or ``.tif``/``.tiff`` (float32).
        depth: the ``[H,W]`` map.

    Returns:
        ``path``.

    Raises:
        ValueError: a PNG of another dtype, or a format OpenCV cannot write here.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        with open(path, "wb") as handle:
            np.save(handle, depth, allow_pickle=False)
        return path
    if suffix == ".png" and depth.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"a PNG depth map holds uint8 or uint16, got {depth.dtype}")
    ok, data = cv2.imencode(suffix, depth.astype(np.float32) if suffix in (".tif", ".tiff") else depth)
    if not ok:
        raise ValueError(f"OpenCV cannot write {suffix} here")
    path.write_bytes(data.tobytes())
    return path


@dataclass
class DenseSample:
    """One dense-depth sample.

    Args:
        image_path: the image's path relative to the root (written as a JPEG).
        depth_path: the depth file's path relative to the root (its suffix names its format).
        image: ``uint8 [3,H,W]`` RGB.
        depth: the stored ``[H,W]`` map.
    """

    image_path: str
    depth_path: str
    image: torch.Tensor
    depth: np.ndarray


def write_dense_release(root: Path, samples: list[DenseSample], *, csv_name: str | None = "dense.csv",
                        header: str | None = "image,depth") -> Path:
    """Write images (JPEG) and depth maps where the samples say.

    Args:
        root: the release folder.
        samples: what to write.
        csv_name: the CSV listing ``image,depth`` paths; ``None`` for none (ReDWeb's layout, ``Imgs/<name>.jpg`` +
            ``RDs/<name>.png``, needs no list).
        header: the CSV's first line (``None``: no header).

    Returns:
        The CSV's path, or ``root`` without one.
    """
    for sample in samples:
        write_jpeg(root / sample.image_path, sample.image)
        write_depth_file(root / sample.depth_path, sample.depth)
    if csv_name is None:
        return root
    lines = ([header] if header else []) + [f"{s.image_path},{s.depth_path}" for s in samples]
    (root / csv_name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root / csv_name
