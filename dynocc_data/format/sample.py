"""The sample format of docs/FORMAT.md: encoding one shard sample and decoding it into an item.

Every ``.npy`` member is written with ``allow_pickle=False`` and read back the same way: nothing in a
shard is ever unpickled. This module and :mod:`dynocc_data.format.index` are the only code that knows the
member names and the index layout; the writer (:mod:`dynocc_data.generation.writer`) and the readers
(:mod:`dynocc_data.datasets`) both go through them.
"""

from __future__ import annotations

import io
import json
import math
import re
from typing import Any, Mapping

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg

from ..errors import ShardFormatError
from .dense import DEPTH_MEMBER, check_depth_kind, decode_depth_member, encode_depth_member

__all__ = [
    "BOUNDARY_DTYPE",
    "BOUNDARY_FIELDS",
    "MAX_IMAGE_PIXELS",
    "REQUIRED_FIELDS",
    "MissingFieldError",
    "boundary_from_array",
    "boundary_to_array",
    "check_image_size",
    "decode_image_member",
    "decode_sample",
    "encode_sample",
    "jpeg_size",
]

BOUNDARY_DTYPE = np.dtype([("y", "<f4"), ("x", "<f4"), ("ny", "<f4"), ("nx", "<f4"),
                           ("confidence", "<f4"), ("segment", "<i4"), ("jump", "<f4")])
BOUNDARY_FIELDS = BOUNDARY_DTYPE.names
REQUIRED_FIELDS = ("jpg", "json", "pairs.npy", "ordinal.npy", "boundary.npy")
META_FIELDS = ("video", "frame", "orig_size", "size")  # required keys of the .json member
DEFAULT_SOURCE = "dynocc"  # meta["source"] when the .json member has none
MAX_IMAGE_PIXELS = 8192 * 8192  # larger images are refused before decoding (a 20000^2 JPEG is 1.2 GB decoded)
MAX_JSON_BYTES = 1 << 20  # a sample's .json is a few hundred bytes
_FLOAT_BOUNDARY_FIELDS = tuple(n for n in BOUNDARY_FIELDS if BOUNDARY_DTYPE[n].kind == "f")


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def boundary_to_array(boundary: Mapping[str, torch.Tensor | np.ndarray]) -> np.ndarray:
    """The ``boundary`` dict of tensors as a structured array.

    Args:
        boundary: equal-length 1-D tensors or arrays for every field of :data:`BOUNDARY_FIELDS` (y, x, ny, nx,
            confidence, segment, jump); other keys are ignored.

    Returns:
        A ``[N]`` array of :data:`BOUNDARY_DTYPE`.
    """
    n = len(boundary["y"])
    out = np.zeros(n, dtype=BOUNDARY_DTYPE)
    for name in BOUNDARY_FIELDS:
        v = boundary[name]
        out[name] = v.cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
    return out


def boundary_from_array(array: np.ndarray) -> dict[str, torch.Tensor]:
    """Inverse of :func:`boundary_to_array`.

    Args:
        array: a 1-D structured array with the :data:`BOUNDARY_FIELDS`.

    Returns:
        One tensor per field: float32, ``segment`` as int64.
    """
    out = {}
    for name in BOUNDARY_FIELDS:
        v = np.ascontiguousarray(array[name])
        out[name] = torch.from_numpy(v.astype(np.int64 if name == "segment" else np.float32))
    return out


def encode_sample(key: str, jpeg: bytes, meta: Mapping[str, Any], pairs: torch.Tensor | np.ndarray,
                  ordinal: torch.Tensor | np.ndarray, boundary: Mapping[str, Any], *,
                  depth: torch.Tensor | np.ndarray | None = None,
                  valid_mask: torch.Tensor | np.ndarray | None = None) -> dict[str, Any]:
    """One shard sample as webdataset expects it (``__key__`` plus bytes per member).

    Args:
        key: the sample's key (``__key__``).
        jpeg: the encoded image (``jpg``).
        meta: the JSON-ready metadata (``json``, keys sorted); with ``depth`` it must say its ``depth_kind``
            (one of :data:`.dense.DEPTH_KINDS`).
        pairs: ``[N,4]`` point pairs ``(yA, xA, yB, xB)``, stored as int32 (``pairs.npy``).
        ordinal: ``[N]`` orders -1/0/+1, stored as int8 (``ordinal.npy``).
        boundary: the boundary points, as for :func:`boundary_to_array` (``boundary.npy``).
        depth: optional dense target ``[H,W]`` or ``[1,H,W]`` (NaN where invalid): the ``depth.npy`` member.
        valid_mask: optional ``bool`` of ``depth``'s shape; pixels outside it are stored as NaN.

    Returns:
        The dict of ``__key__`` and the bytes of every member of :data:`REQUIRED_FIELDS` (plus ``depth.npy``).
    """
    pairs = np.asarray(pairs.cpu() if isinstance(pairs, torch.Tensor) else pairs, dtype=np.int32).reshape(-1, 4)
    ordinal = np.asarray(ordinal.cpu() if isinstance(ordinal, torch.Tensor) else ordinal, dtype=np.int8)
    extra = {}
    if depth is not None:
        check_depth_kind(meta.get("depth_kind"))
        extra[DEPTH_MEMBER] = encode_depth_member(depth, valid_mask)
    return {
        "__key__": key,
        "jpg": bytes(jpeg),
        "json": json.dumps(dict(meta), sort_keys=True).encode("utf-8"),
        "pairs.npy": _npy_bytes(pairs),
        "ordinal.npy": _npy_bytes(ordinal),
        "boundary.npy": _npy_bytes(boundary_to_array(boundary)),
        **extra,
    }


class MissingFieldError(ShardFormatError):
    """A sample lacks one of the members every sample has (:data:`REQUIRED_FIELDS`)."""


_NPY_MAGIC = b"\x93NUMPY"
_NPY_HEADER = re.compile(r"\{'descr': (?P<descr>'[^'\n]+'|\[[^{}\n]+\]), 'fortran_order': (?P<fortran>True|False), "
                         r"'shape': \((?P<shape>[0-9, ]*)\), \}[ ]*\n?\Z")
_NPY_DTYPES: dict[str, np.dtype] = {}  # header descr -> dtype, filled from numpy's own (safe) header parsing
_NPY_DTYPES_MAX = 256
_NPY_MAX_HEADER = 10000  # numpy's own default bound on the header numpy.lib.format parses with literal_eval


def _npy_header(view: memoryview) -> tuple[re.Match[str] | None, int]:
    """The header of a ``.npy`` buffer matched against numpy's layout (``None`` otherwise), and the data offset."""
    if len(view) < 10 or bytes(view[:6]) != _NPY_MAGIC or view[6] not in (1, 2, 3):
        return None, 0
    start = 10 if view[6] == 1 else 12
    end = start + int.from_bytes(view[8:start], "little")
    return _NPY_HEADER.match(bytes(view[start:end]).decode("latin1")), end


def _npy_parse_header(data: bytes) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """``(shape, fortran_order, dtype, data offset)`` of a ``.npy`` buffer, from numpy's own header parser.

    The header is bounded in size; nothing is unpickled.
    """
    stream = io.BytesIO(data)
    version = np.lib.format.read_magic(stream)
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if version not in readers:
        raise ValueError(f"unsupported .npy version {version[0]}.{version[1]}")
    shape, fortran, dtype = readers[version](stream, max_header_size=_NPY_MAX_HEADER)
    return shape, fortran, dtype, stream.tell()


def _npy_array(data: bytes) -> np.ndarray:
    """A ``.npy`` member as one array (read-only, sharing ``data``); nothing is ever unpickled.

    The header is parsed (numpy's own parser, or a cached dtype for a header in numpy's layout seen before) and
    the array is a ``numpy.frombuffer`` view of the bytes after it: object dtypes (pickles) are refused, and so is
    a header claiming more elements than the member holds bytes for (nothing is allocated from the header's
    word: a 24-byte member cannot ask for terabytes).
    """
    view = memoryview(data)
    match, offset = _npy_header(view)
    dtype = _NPY_DTYPES.get(match["descr"]) if match else None
    if dtype is not None:
        shape = tuple(int(s) for s in match["shape"].split(",") if s.strip())
        fortran = match["fortran"] == "True"
    else:
        shape, fortran, dtype, offset = _npy_parse_header(data)
        if dtype.hasobject:
            raise ValueError("object arrays are refused: loading them would unpickle (read with allow_pickle=False)")
        if match and len(_NPY_DTYPES) < _NPY_DTYPES_MAX:
            _NPY_DTYPES[match["descr"]] = dtype
    count = math.prod(shape)
    if len(view) - offset < count * dtype.itemsize:
        raise ValueError(f"unexpected EOF: header claims shape {shape} ({count * dtype.itemsize} bytes) but the "
                         f"member holds {len(view) - offset}")
    array = np.frombuffer(view, dtype=dtype, count=count, offset=offset)
    return array.reshape(shape, order="F" if fortran else "C")


_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def jpeg_size(data: bytes | memoryview) -> tuple[int, int]:
    """``(height, width)`` from a JPEG's frame header (SOF), read without decoding anything.

    Args:
        data: the JPEG file's bytes.

    Returns:
        The image's height and width as the frame header states them.

    Raises:
        ValueError: when ``data`` is not a JPEG or has no frame header.
    """
    view = memoryview(data)
    if bytes(view[:2]) != b"\xff\xd8":
        raise ValueError("not a JPEG (no start-of-image marker)")
    pos = 2
    while pos + 4 <= len(view):
        if view[pos] != 0xFF:
            raise ValueError(f"corrupt JPEG marker at byte {pos}")
        marker = view[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        length = int.from_bytes(view[pos + 2:pos + 4], "big")
        if marker in _SOF_MARKERS and pos + 9 <= len(view):
            return int.from_bytes(view[pos + 5:pos + 7], "big"), int.from_bytes(view[pos + 7:pos + 9], "big")
        if marker in (0xD9, 0xDA) or length < 2:  # end of image or scan data before any frame header
            break
        pos += 2 + length
    raise ValueError("JPEG without a frame header")


def check_image_size(height: int, width: int, *, max_pixels: int | None = None) -> None:
    """Refuse an image too large to decode.

    Args:
        height: the image's height in pixels.
        width: the image's width in pixels.
        max_pixels: the limit (default :data:`MAX_IMAGE_PIXELS`).

    Raises:
        ValueError: when ``height * width`` is above the limit.
    """
    limit = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    if height * width > limit:
        raise ValueError(f"{height}x{width} image is above the limit of {limit} pixels")


def _decode_jpeg_rgb(data: bytes) -> torch.Tensor:
    """JPEG bytes to RGB ``uint8 [3,H,W]`` with libjpeg-turbo (grey and CMYK JPEGs are converted to RGB)."""
    return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)


def _decode_meta(data: bytes | str) -> dict[str, Any]:
    """The ``.json`` member: an object with at least ``video``, ``frame``, ``orig_size`` and ``size``."""
    if len(data) > MAX_JSON_BYTES:
        raise ValueError(f"{len(data)} bytes, more than the {MAX_JSON_BYTES} a sample's JSON may hold")
    meta = json.loads(bytes(data).decode("utf-8") if not isinstance(data, str) else data)
    if not isinstance(meta, dict):
        raise ValueError("not a JSON object")
    missing = [k for k in META_FIELDS if k not in meta]
    if missing:
        raise ValueError(f"no {', '.join(missing)}")
    for name in ("orig_size", "size"):
        v = meta[name]
        if not (isinstance(v, list) and len(v) == 2 and all(type(s) is int and s > 0 for s in v)):
            raise ValueError(f"{name} must be [H, W] (positive integers), got {v!r}")
    check_image_size(*meta["size"])
    if type(meta["frame"]) is not int or meta["frame"] < 0:
        raise ValueError(f"frame must be an integer >= 0, got {meta['frame']!r}")
    if not isinstance(meta.get("source", DEFAULT_SOURCE), str):
        raise ValueError(f"source must be a string, got {meta['source']!r}")
    return meta


def _decode_pairs(pairs: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """Stored pairs as ``int64 [N,4]``, checked to be integer ``(yA, xA, yB, xB)`` inside the ``size`` image."""
    if pairs.dtype.kind not in "iu" or pairs.ndim != 2 or pairs.shape[1] != 4:
        raise ValueError(f"must be integer [N,4], got {pairs.dtype} {pairs.shape}")
    height, width = size
    if len(pairs) and (pairs.min() < 0 or (pairs >= np.array([height, width, height, width])).any()):
        raise ValueError(f"points outside the {height}x{width} image")
    return torch.from_numpy(pairs.astype(np.int64))


def _decode_ordinal(ordinal: np.ndarray, n: int) -> torch.Tensor:
    """Stored ordinals as ``int64 [N]``, checked to be integer -1, 0 or +1, one per pair."""
    if ordinal.dtype.kind not in "iu" or ordinal.shape != (n,):
        raise ValueError(f"must be integer [{n}] (one per pair), got {ordinal.dtype} {ordinal.shape}")
    if n and (ordinal.min() < -1 or ordinal.max() > 1):
        raise ValueError("values other than -1, 0, +1")
    return torch.from_numpy(ordinal.astype(np.int64))


def _check_boundary_array(array: np.ndarray) -> np.ndarray:
    """``boundary.npy`` checked to be 1-D structured with the :data:`BOUNDARY_DTYPE` fields (returned as it is)."""
    names = array.dtype.names or ()
    if array.ndim != 1 or any(n not in names for n in BOUNDARY_FIELDS):
        raise ValueError(f"need a 1-D structured array with fields {', '.join(BOUNDARY_FIELDS)}, "
                         f"got {array.dtype} {array.shape}")
    bad = {name: int(np.count_nonzero(~np.isfinite(array[name]))) for name in _FLOAT_BOUNDARY_FIELDS
           if array.dtype[name].kind == "f"}
    if any(bad.values()):
        raise ValueError("non-finite values (" + ", ".join(f"{n} in {k}" for k, n in bad.items() if n) + ")")
    return array


def _decode_boundary(array: np.ndarray) -> dict[str, torch.Tensor]:
    """``boundary.npy`` (1-D structured, :data:`BOUNDARY_DTYPE` fields) as float32 tensors, ``segment`` int64."""
    array = _check_boundary_array(array)
    return {name: torch.from_numpy(np.array(array[name], dtype=np.int64 if name == "segment" else np.float32))
            for name in BOUNDARY_FIELDS}  # one contiguous copy per field


def decode_sample(sample: Mapping[str, Any], *, decode_image: bool = True, with_boundary: bool = True,
                  with_pairs: bool = True, boundary_array: bool = False) -> dict[str, Any]:
    """Decode a raw webdataset sample (``__key__``, ``__url__`` and member bytes) into an item of the contract.

    The one decoder of the package (``DynOccDataset`` uses it). Nothing is unpickled: ``.npy`` members are
    read with ``allow_pickle=False`` and members other than :data:`REQUIRED_FIELDS` and the optional ``depth.npy``
    (giving ``depth``, ``valid_mask`` and ``meta["depth_kind"]``, :mod:`.dense`) are ignored. The JPEG is
    decoded to RGB ``uint8 [3,H,W]`` (libjpeg-turbo) and must have the JSON ``size``; pairs must lie inside
    it and ordinals be -1, 0 or +1. ``meta["source"]`` is the JSON ``source`` (default ``"dynocc"``), so
    converted YouTube3D/DIW shards say so.

    Args:
        sample: the raw sample: ``__key__``, ``__url__`` and the bytes of the members.
        decode_image: ``False`` leaves the JPEG bytes in ``image`` for :func:`decode_image_member` to decode later.
        with_boundary: ``False`` skips ``boundary.npy`` (no ``boundary`` key).
        with_pairs: ``False`` skips ``pairs.npy`` and ``ordinal.npy`` (no ``pairs``/``ordinal`` keys: for a
            loader that draws its own pairs).
        boundary_array: ``True`` leaves ``boundary`` as the checked structured array of ``boundary.npy`` (a
            zero-copy view, for the built-in samplers) instead of a dict of tensors.

    Returns:
        The item: ``image``, ``pairs``, ``ordinal``, ``meta`` (``source``, ``key``, ``video``, ``video_id``,
        ``frame``, ``orig_size``, ``size``, ``url``) and ``boundary``, less the parts switched off; with a
        ``depth.npy`` member also ``depth``, ``valid_mask`` and ``meta["depth_kind"]``.

    Raises:
        MissingFieldError: when a member of :data:`REQUIRED_FIELDS` is absent.
        ShardFormatError: naming the shard, the key and the member, when one does not decode or breaks the format.
    """
    url, key = str(sample.get("__url__", "?")), str(sample.get("__key__", "?"))
    missing = [f for f in REQUIRED_FIELDS if f not in sample]
    if missing:
        raise MissingFieldError(
            url, key, f"sample has no {', '.join(missing)} member (every sample has {', '.join(REQUIRED_FIELDS)})"
        )

    def parse(name: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001 - any failure to parse a member is a format error of that member
            raise ShardFormatError(url, key, f"{name}: {e}") from None

    meta = parse("json", _decode_meta, sample["json"])
    size = (meta["size"][0], meta["size"][1])
    item: dict[str, Any] = {"image": sample["jpg"]}
    if with_pairs:
        item["pairs"] = parse("pairs.npy", lambda: _decode_pairs(_npy_array(sample["pairs.npy"]), size))
        item["ordinal"] = parse("ordinal.npy", lambda: _decode_ordinal(_npy_array(sample["ordinal.npy"]),
                                                                         len(item["pairs"])))
    boundary_from = _check_boundary_array if boundary_array else _decode_boundary
    boundary = parse("boundary.npy", lambda: boundary_from(_npy_array(sample["boundary.npy"]))) \
        if with_boundary else None
    item.update({
        "meta": {
            "source": meta.get("source", DEFAULT_SOURCE), "key": key, "video": meta["video"],
            "video_id": meta.get("video_id", key.rsplit("_", 1)[0]), "frame": meta["frame"],
            "orig_size": tuple(meta["orig_size"]), "size": size, "url": url,
        },
    })
    if boundary is not None:
        item["boundary"] = boundary
    if DEPTH_MEMBER in sample:  # optional dense target (docs/FORMAT.md)
        item["depth"], item["valid_mask"] = parse(DEPTH_MEMBER, lambda: decode_depth_member(
            _npy_array(sample[DEPTH_MEMBER]), size))
        item["meta"]["depth_kind"] = parse("json", check_depth_kind, meta.get("depth_kind"))
    return decode_image_member(item) if decode_image else item


def decode_image_member(item: dict[str, Any]) -> dict[str, Any]:
    """Decode the JPEG bytes that ``decode_sample(..., decode_image=False)`` left in ``item["image"]``, in place.

    Args:
        item: an item of :func:`decode_sample` with ``decode_image=False``.

    Returns:
        ``item``, its ``image`` now RGB ``uint8 [3,H,W]``.

    Raises:
        ShardFormatError: when the bytes do not decode or the image is not the JSON ``size``.
    """
    meta = item["meta"]
    try:
        height, width = jpeg_size(item["image"])  # from the header: nothing is decoded yet
    except ValueError as e:
        raise ShardFormatError(meta["url"], meta["key"], f"jpg: {e}") from None
    if (height, width) != meta["size"]:
        raise ShardFormatError(meta["url"], meta["key"], f"jpg: image is {height}x{width} but json size says "
                                                         f"{list(meta['size'])} (not decoded)")
    try:
        image = _decode_jpeg_rgb(item["image"])
    except Exception as e:  # noqa: BLE001 - any failure to decode is a format error of the member
        raise ShardFormatError(meta["url"], meta["key"], f"jpg: {e}") from None
    if tuple(image.shape[1:]) != meta["size"]:
        raise ShardFormatError(meta["url"], meta["key"], f"jpg: image is {image.shape[1]}x{image.shape[2]} but "
                                                         f"json size says {list(meta['size'])}")
    item["image"] = image
    return item
