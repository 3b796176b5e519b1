"""WebDataset shards: sample encoding and decoding, crash-safe writing, the ledger and the index.

Writing protocol (so that a run killed at any moment leaves no half-written shard under a final name,
and ``--resume`` ends with exactly the samples of an uninterrupted run):

1. a shard is written to ``<name>.tar.partial`` with webdataset's ``TarWriter``, flushed and fsynced;
2. a ``shard`` record (its name, sample count and the frames of each video it holds) is appended to the
   rank's ledger ``ledger-r<rank>.jsonl`` and fsynced: this is the commit point;
3. the file is renamed to ``<name>.tar``.

On resume, committed ``.partial`` files are renamed (roll forward), uncommitted ones are deleted, and
the ledgers tell which videos are finished and up to which frame each unfinished one got.

Every ``.npy`` member is written with ``allow_pickle=False`` and read back the same way: nothing in a
shard is ever unpickled. Formats: ``docs/FORMAT.md``.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import math
import os
import re
import shlex
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch

from .errors import DynOccError, ShardFormatError

__all__ = [
    "BOUNDARY_DTYPE",
    "INDEX_NAME",
    "REQUIRED_FIELDS",
    "encode_sample",
    "decode_sample",
    "MissingFieldError",
    "boundary_to_array",
    "boundary_from_array",
    "ShardWriter",
    "Ledger",
    "RunState",
    "read_run_state",
    "write_index",
    "read_index",
    "atomic_write_text",
    "upload_command",
    "run_upload",
]

log = logging.getLogger(__name__)

INDEX_NAME = "index.json"
FORMAT = "dynocc-shards/1"
BOUNDARY_DTYPE = np.dtype([("y", "<f4"), ("x", "<f4"), ("ny", "<f4"), ("nx", "<f4"),
                           ("confidence", "<f4"), ("segment", "<i4"), ("jump", "<f4")])
BOUNDARY_FIELDS = BOUNDARY_DTYPE.names
REQUIRED_FIELDS = ("jpg", "json", "pairs.npy", "ordinal.npy", "boundary.npy")
META_FIELDS = ("video", "frame", "orig_size", "size")  # required keys of the .json member
DEFAULT_SOURCE = "dynocc"  # meta["source"] when the .json member has none
PARTIAL = ".partial"


# ----------------------------------------------------------------------------------------- samples


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def _npy_load(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def boundary_to_array(boundary: Mapping[str, torch.Tensor | np.ndarray]) -> np.ndarray:
    """The ``boundary`` dict of tensors (y, x, ny, nx, confidence, segment, jump) as a structured array."""
    n = len(boundary["y"])
    out = np.zeros(n, dtype=BOUNDARY_DTYPE)
    for name in BOUNDARY_FIELDS:
        v = boundary[name]
        out[name] = v.cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
    return out


def boundary_from_array(array: np.ndarray) -> dict[str, torch.Tensor]:
    """Inverse of :func:`boundary_to_array`: float32 tensors, ``segment`` as int64."""
    out = {}
    for name in BOUNDARY_FIELDS:
        v = np.ascontiguousarray(array[name])
        out[name] = torch.from_numpy(v.astype(np.int64 if name == "segment" else np.float32))
    return out


def encode_sample(key: str, jpeg: bytes, meta: Mapping[str, Any], pairs: torch.Tensor | np.ndarray,
                  ordinal: torch.Tensor | np.ndarray, boundary: Mapping[str, Any]) -> dict[str, Any]:
    """One shard sample as webdataset expects it (``__key__`` plus bytes per member)."""
    pairs = np.asarray(pairs.cpu() if isinstance(pairs, torch.Tensor) else pairs, dtype=np.int32).reshape(-1, 4)
    ordinal = np.asarray(ordinal.cpu() if isinstance(ordinal, torch.Tensor) else ordinal, dtype=np.int8)
    return {
        "__key__": key,
        "jpg": bytes(jpeg),
        "json": json.dumps(dict(meta), sort_keys=True).encode("utf-8"),
        "pairs.npy": _npy_bytes(pairs),
        "ordinal.npy": _npy_bytes(ordinal),
        "boundary.npy": _npy_bytes(boundary_to_array(boundary)),
    }


class MissingFieldError(ShardFormatError):
    """A sample lacks one of the members every sample has (:data:`REQUIRED_FIELDS`)."""


_NPY_MAGIC = b"\x93NUMPY"
_NPY_HEADER = re.compile(r"\{'descr': (?P<descr>'[^'\n]+'|\[[^{}\n]+\]), 'fortran_order': (?P<fortran>True|False), "
                         r"'shape': \((?P<shape>[0-9, ]*)\), \}[ ]*\n?\Z")
_NPY_DTYPES: dict[str, np.dtype] = {}  # header descr -> dtype, filled from numpy.load's own (safe) parsing
_NPY_DTYPES_MAX = 256


def _npy_header(view: memoryview) -> tuple[re.Match[str] | None, int]:
    """The header of a ``.npy`` buffer matched against numpy's own layout (``None`` otherwise) and the offset
    of the data."""
    if len(view) < 10 or bytes(view[:6]) != _NPY_MAGIC or view[6] not in (1, 2, 3):
        return None, 0
    start = 10 if view[6] == 1 else 12
    end = start + int.from_bytes(view[8:start], "little")
    return _NPY_HEADER.match(bytes(view[start:end]).decode("latin1")), end


def _npy_array(data: bytes) -> np.ndarray:
    """A ``.npy`` member as one array (read-only, sharing ``data``); nothing is ever unpickled.

    A header in numpy's own layout whose ``descr`` was seen before takes a fast path (``numpy.frombuffer`` with
    the cached dtype, skipping numpy's ``literal_eval`` of the header); anything else goes through
    ``numpy.load(allow_pickle=False)``, which refuses pickled (object) arrays, and caches the dtype it found.
    """
    view = memoryview(data)
    match, offset = _npy_header(view)
    dtype = _NPY_DTYPES.get(match["descr"]) if match else None
    if dtype is not None:
        shape = tuple(int(s) for s in match["shape"].split(",") if s.strip())
        count = math.prod(shape)
        if len(view) - offset >= count * dtype.itemsize:
            array = np.frombuffer(view, dtype=dtype, count=count, offset=offset)
            return array.reshape(shape, order="F" if match["fortran"] == "True" else "C")
    array = _npy_load(data)
    if not isinstance(array, np.ndarray):
        raise ValueError("not a single .npy array")
    if match and not array.dtype.hasobject and len(_NPY_DTYPES) < _NPY_DTYPES_MAX:
        _NPY_DTYPES[match["descr"]] = array.dtype
    return array


def _decode_jpeg_rgb(data: bytes) -> torch.Tensor:
    """JPEG bytes to RGB ``uint8 [3,H,W]`` with libjpeg-turbo (grey and CMYK JPEGs are converted to RGB)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)


def _decode_meta(data: bytes | str) -> dict[str, Any]:
    """The ``.json`` member: an object with at least ``video``, ``frame``, ``orig_size`` and ``size``."""
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
    return array


def _decode_boundary(array: np.ndarray) -> dict[str, torch.Tensor]:
    """``boundary.npy`` (1-D structured, :data:`BOUNDARY_DTYPE` fields) as float32 tensors, ``segment`` int64."""
    array = _check_boundary_array(array)
    return {name: torch.from_numpy(np.array(array[name], dtype=np.int64 if name == "segment" else np.float32))
            for name in BOUNDARY_FIELDS}  # one contiguous copy per field


def decode_sample(sample: Mapping[str, Any], *, decode_image: bool = True, with_boundary: bool = True,
                  with_pairs: bool = True, boundary_array: bool = False) -> dict[str, Any]:
    """A raw webdataset sample (``__key__``, ``__url__`` and member bytes) to an item of the contract.

    The one decoder of the package (``DynOccDataset`` uses it). Nothing is unpickled: ``.npy`` members are
    read with ``allow_pickle=False`` and members other than :data:`REQUIRED_FIELDS` are ignored. The JPEG is
    decoded to RGB ``uint8 [3,H,W]`` (libjpeg-turbo) and must have the JSON ``size``; pairs must lie inside
    it and ordinals be -1, 0 or +1. ``meta["source"]`` is the JSON ``source`` (default ``"dynocc"``), so
    converted YouTube3D/DIW shards say so. ``decode_image=False`` leaves the JPEG bytes in ``image`` for
    :func:`decode_image_member` to decode later; ``with_boundary=False`` skips ``boundary.npy`` (no ``boundary``
    key); ``with_pairs=False`` skips ``pairs.npy`` and ``ordinal.npy`` (no ``pairs``/``ordinal`` keys: for a
    loader that draws its own pairs); ``boundary_array=True`` leaves ``boundary`` as the checked structured
    array of ``boundary.npy`` (a zero-copy view, for the built-in samplers) instead of a dict of tensors.

    Raises :class:`MissingFieldError` when a member is absent and :class:`ShardFormatError` (naming the shard,
    the key and the member) when one does not decode or breaks the format.
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
    return decode_image_member(item) if decode_image else item


def decode_image_member(item: dict[str, Any]) -> dict[str, Any]:
    """Decode the JPEG bytes that ``decode_sample(..., decode_image=False)`` left in ``item["image"]`` (in place;
    returns ``item``). Raises :class:`ShardFormatError` when they do not decode or the image is not the JSON
    ``size``."""
    meta = item["meta"]
    try:
        image = _decode_jpeg_rgb(item["image"])
    except Exception as e:  # noqa: BLE001 - any failure to decode is a format error of the member
        raise ShardFormatError(meta["url"], meta["key"], f"jpg: {e}") from None
    if tuple(image.shape[1:]) != meta["size"]:
        raise ShardFormatError(meta["url"], meta["key"], f"jpg: image is {image.shape[1]}x{image.shape[2]} but "
                                                         f"json size says {list(meta['size'])}")
    item["image"] = image
    return item


# ----------------------------------------------------------------------------------------- files


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (never half-written)."""
    path = Path(path)
    tmp = path.with_name(path.name + f".{os.getpid()}{PARTIAL}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class Ledger:
    """Append-only JSON-lines journal of one rank: run header, committed shards, finished videos."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def append(self, record: Mapping[str, Any]) -> None:
        line = json.dumps(dict(record), sort_keys=True) + "\n"
        with open(self.path, "a+b") as f:
            if f.tell() > 0:  # a torn last line (crash mid-write) gets its own line, not glued to this record
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    line = "\n" + line
            f.write(line.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())

    def records(self) -> list[dict[str, Any]]:
        """All complete records (a torn last line from a crash is ignored)."""
        if not self.path.exists():
            return []
        out = []
        with open(self.path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.endswith("\n"):
                    log.warning("%s: ignoring a torn last line (interrupted write)", self.path)
                    break
                try:
                    out.append(json.loads(line))
                except ValueError:
                    log.warning("%s:%d: ignoring a torn line (interrupted write)", self.path, lineno)
        return out


@dataclass
class RunState:
    """What the ledgers of an output folder say has been done."""

    shards: list[dict[str, Any]] = field(default_factory=list)
    videos: dict[str, dict[str, Any]] = field(default_factory=dict)  # video_id -> final record
    last_frame: dict[str, int] = field(default_factory=dict)  # video_id -> last committed frame
    headers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def num_samples(self) -> int:
        return sum(s["count"] for s in self.shards)


def _ledger_paths(out: Path) -> list[Path]:
    return sorted(Path(p) for p in glob.glob(str(out / "ledger-r*.jsonl")))


def read_run_state(out: str | os.PathLike, *, repair: bool = False) -> RunState:
    """Read every ledger in ``out``; with ``repair``, roll committed ``.partial`` shards forward and
    delete uncommitted ones."""
    out = Path(out)
    state = RunState()
    for path in _ledger_paths(out):
        for rec in Ledger(path).records():
            kind = rec.get("type")
            if kind == "header":
                state.headers.append(rec)
            elif kind == "shard":
                state.shards.append(rec)
                for vid, frames in rec["frames"].items():
                    if frames:
                        state.last_frame[vid] = max(state.last_frame.get(vid, -1), max(frames))
            elif kind == "video":
                state.videos[rec["video_id"]] = rec
    if repair:
        committed = {s["url"] for s in state.shards}
        for partial in sorted(out.glob(f"*.tar{PARTIAL}")):
            final = partial.with_name(partial.name[: -len(PARTIAL)])
            if final.name in committed:
                log.info("%s: committed before the interruption, completing the rename", final)
                os.replace(partial, final)
            else:
                log.info("%s: removing a shard left unfinished by an interrupted run", partial)
                partial.unlink()
        for s in state.shards:
            if not s.get("remote") and not (out / s["url"]).exists():  # uploaded shards live elsewhere
                raise DynOccError(f"{out / s['url']}: committed in the ledger but missing on disk")
    return state


def upload_command(upload: str) -> str:
    """Validate an upload template (``CMD {name}`` or ``pipe:CMD {name}``) and return the shell command."""
    cmd = upload[len("pipe:"):] if upload.startswith("pipe:") else upload
    if "{name}" not in cmd or not cmd.strip():
        raise DynOccError(f"upload command {upload!r}: must contain {{name}} (replaced by each file's name), "
                          f"e.g. 'aws s3 cp - s3://bucket/dir/{{name}}'")
    return cmd.strip()


def run_upload(upload: str, path: str | os.PathLike, name: str) -> None:
    """Run the upload command ``upload`` (``{name}`` replaced by ``name``) with the file ``path`` on its stdin;
    a non-zero exit raises :class:`DynOccError` with the exit status and the end of the command's output."""
    cmd = upload_command(upload).replace("{name}", shlex.quote(name))
    with open(path, "rb") as src, tempfile.TemporaryFile() as output:
        try:
            proc = subprocess.run(cmd, shell=True, stdin=src, stdout=output, stderr=subprocess.STDOUT, check=False)
        except OSError as e:
            raise DynOccError(f"{name}: cannot run the upload command ({e.strerror or e})") from None
        if proc.returncode != 0:
            output.seek(0)
            tail = " ".join(output.read()[-600:].decode("utf-8", "replace").split()) or "no output"
            status = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
            raise DynOccError(f"{name}: upload command failed ({status}: {tail}); not committed")


class ShardWriter:
    """Writes samples into shards ``<prefix>-r<rank:03d>-<seq:06d>.tar`` of at most ``max_count`` samples
    and about ``max_bytes`` bytes, with the commit protocol of this module.

    Video-level records given to :meth:`video_done` are held back until every sample of that video is in
    a committed shard, so a "done" video in the ledger is really done.

    With ``upload`` (a shell command template such as ``aws s3 cp - s3://bucket/dir/{name}``, optionally
    prefixed ``pipe:``), a finished shard is fed to the command on stdin and committed (ledger record with
    ``remote: true``) only once the command exits 0; the local ``.partial`` copy is then deleted. A failing
    command raises :class:`DynOccError` and the shard is not committed. Shard numbers continue after those
    committed in this rank's ledger, so a resumed run overwrites an uncommitted upload of the same name.
    """

    def __init__(self, out: str | os.PathLike, *, prefix: str = "dynocc", rank: int = 0,
                 max_count: int = 1000, max_bytes: int = 1 << 30, header: Mapping[str, Any] | None = None,
                 upload: str | None = None):
        import webdataset as wds

        self._wds = wds
        self.out = Path(out)
        self.prefix, self.rank = prefix, rank
        self.max_count, self.max_bytes = max_count, max_bytes
        self.upload = upload_command(upload) if upload is not None else None
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            probe = self.out / f".write-test-r{rank:03d}{PARTIAL}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise DynOccError(f"{self.out}: cannot write output ({e.strerror or e})") from None
        self.ledger = Ledger(self.out / f"ledger-r{rank:03d}.jsonl")
        if header is not None:
            self.ledger.append({"type": "header", **header})
        pattern = re.compile(rf"^{re.escape(prefix)}-r{rank:03d}-(\d+)\.tar$")
        taken = [int(m.group(1)) for p in self.out.iterdir() if (m := pattern.match(p.name))]
        taken += [int(m.group(1)) for rec in self.ledger.records()
                  if rec.get("type") == "shard" and (m := pattern.match(str(rec.get("url", ""))))]
        self._seq = max(taken, default=-1) + 1
        self._stream = None
        self._tar = None
        self._name = ""
        self._count = 0
        self._frames: dict[str, list[int]] = {}
        self._pending_videos: list[dict[str, Any]] = []
        self.shards_written: list[dict[str, Any]] = []

    # -- writing
    def _open(self) -> None:
        self._name = f"{self.prefix}-r{self.rank:03d}-{self._seq:06d}.tar"
        self._seq += 1
        self._stream = open(self.out / (self._name + PARTIAL), "wb")
        self._tar = self._wds.TarWriter(self._stream, encoder=False, mtime=0)
        self._count = 0
        self._frames = {}

    def write(self, sample: Mapping[str, Any], *, video_id: str, frame: int) -> None:
        """Add one encoded sample (see :func:`encode_sample`)."""
        if self._tar is None:
            self._open()
        try:
            self._tar.write(dict(sample))
        except OSError as e:
            self.abort()
            raise DynOccError(f"{self.out / self._name}: write failed ({e.strerror or e})") from None
        self._count += 1
        self._frames.setdefault(video_id, []).append(int(frame))
        if self._count >= self.max_count or self._stream.tell() >= self.max_bytes:
            self.commit()

    def video_done(self, record: Mapping[str, Any]) -> None:
        """Record a finished (or failed) video once all of its samples are committed."""
        rec = {"type": "video", **record}
        if self._tar is not None and record["video_id"] in self._frames:
            self._pending_videos.append(rec)
        else:
            self.ledger.append(rec)

    def commit(self) -> None:
        """Close the current shard and commit it (no-op when none is open)."""
        if self._tar is None:
            return
        path = self.out / self._name
        try:
            self._tar.close()  # closes the tar stream, not our file
            self._stream.flush()
            os.fsync(self._stream.fileno())
            size = self._stream.tell()
            self._stream.close()
            rec = {"type": "shard", "url": self._name, "count": self._count, "bytes": size,
                   "frames": self._frames}
            if self.upload is not None:
                try:
                    run_upload(self.upload, str(path) + PARTIAL, self._name)
                except DynOccError:
                    self.abort()
                    raise
                rec["remote"] = True
            self.ledger.append(rec)
            if self.upload is None:
                os.replace(str(path) + PARTIAL, path)
            else:
                Path(str(path) + PARTIAL).unlink()
            _fsync_dir(self.out)
        except OSError as e:
            self.abort()
            raise DynOccError(f"{path}: cannot finish shard ({e.strerror or e})") from None
        self.shards_written.append(rec)
        log.debug("committed %s (%d samples)", self._name, self._count)
        self._tar = self._stream = None
        for rec in self._pending_videos:
            self.ledger.append(rec)
        self._pending_videos = []

    def abort(self) -> None:
        """Drop the shard being written (its ``.partial`` file is removed)."""
        if self._stream is not None:
            try:
                self._tar.tarstream.close()  # so that garbage collection does not flush into a closed file
            except Exception:  # noqa: BLE001 - the shard is being thrown away
                pass
            try:
                self._stream.close()
            except OSError:
                pass
            Path(str(self.out / self._name) + PARTIAL).unlink(missing_ok=True)
        self._tar = self._stream = None
        self._pending_videos = []

    def close(self) -> None:
        self.commit()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# ----------------------------------------------------------------------------------------- index


def write_index(out: str | os.PathLike, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write ``index.json`` (shards and their sample counts) from the ledgers of ``out``."""
    out = Path(out)
    state = read_run_state(out)
    shards = sorted(({"url": s["url"], "count": s["count"], "bytes": s["bytes"]} for s in state.shards),
                    key=lambda s: s["url"])
    index = {"format": FORMAT, "num_samples": sum(s["count"] for s in shards), "shards": shards,
             **dict(extra or {})}
    atomic_write_text(out / INDEX_NAME, json.dumps(index, indent=1, sort_keys=True) + "\n")
    return index


def read_index(path: str | os.PathLike) -> dict[str, Any]:
    """Read an ``index.json`` (or the one inside a folder); shard URLs are made absolute."""
    path = Path(path)
    if path.is_dir():
        path = path / INDEX_NAME
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
        shards = [{**s, "url": str(path.parent / s["url"])} for s in index["shards"]]
    except FileNotFoundError:
        raise DynOccError(f"{path}: no shard index here (run dynocc-data generate first)") from None
    except (ValueError, KeyError, TypeError) as e:
        raise DynOccError(f"{path}: not a valid shard index ({e})") from None
    return {**index, "shards": shards}


def iter_tar_members(path: str | os.PathLike) -> Iterable[tarfile.TarInfo]:
    """Member names of a tar (used by tests and tools to check shard contents without decoding)."""
    with tarfile.open(path) as tf:
        yield from tf.getmembers()
