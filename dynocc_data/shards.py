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
import os
import re
import tarfile
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
    "boundary_to_array",
    "boundary_from_array",
    "ShardWriter",
    "Ledger",
    "RunState",
    "read_run_state",
    "write_index",
    "read_index",
    "atomic_write_text",
]

log = logging.getLogger(__name__)

INDEX_NAME = "index.json"
FORMAT = "dynocc-shards/1"
BOUNDARY_DTYPE = np.dtype([("y", "<f4"), ("x", "<f4"), ("ny", "<f4"), ("nx", "<f4"),
                           ("confidence", "<f4"), ("segment", "<i4"), ("jump", "<f4")])
BOUNDARY_FIELDS = BOUNDARY_DTYPE.names
REQUIRED_FIELDS = ("jpg", "json", "pairs.npy", "ordinal.npy", "boundary.npy")
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


def decode_sample(sample: Mapping[str, Any], *, decode_image: bool = True) -> dict[str, Any]:
    """A raw webdataset sample (``__key__``, ``__url__`` and member bytes) to an item of the contract.

    Raises :class:`ShardFormatError` naming the shard, the key and the field when a member is missing or
    malformed. The image is decoded with ``torchvision.io.decode_jpeg`` (libjpeg-turbo) to uint8 [3,H,W].
    """
    url = str(sample.get("__url__", "?"))
    key = str(sample.get("__key__", "?"))
    for name in REQUIRED_FIELDS:
        if name not in sample:
            raise ShardFormatError(url, key, f"missing field {name!r}")

    def parse(name, fn):
        try:
            return fn(sample[name])
        except Exception as e:  # noqa: BLE001 - any decoding failure is a format error of this field
            raise ShardFormatError(url, key, f"cannot decode field {name!r}: {e}") from None

    meta = parse("json", lambda b: json.loads(b.decode("utf-8") if isinstance(b, bytes) else b))
    pairs = parse("pairs.npy", _npy_load)
    ordinal = parse("ordinal.npy", _npy_load)
    bnd = parse("boundary.npy", _npy_load)
    if pairs.ndim != 2 or pairs.shape[1] != 4 or ordinal.shape != (pairs.shape[0],):
        raise ShardFormatError(url, key, f"pairs {pairs.shape} and ordinal {ordinal.shape} do not match")
    if bnd.dtype.names is None or not set(BOUNDARY_FIELDS) <= set(bnd.dtype.names):
        raise ShardFormatError(url, key, f"boundary.npy has fields {bnd.dtype.names}, need {BOUNDARY_FIELDS}")
    if decode_image:
        from torchvision.io import decode_jpeg

        image = parse("jpg", lambda b: decode_jpeg(torch.frombuffer(bytearray(b), dtype=torch.uint8)))
        if image.shape[0] == 1:
            image = image.expand(3, -1, -1).contiguous()
    else:
        image = sample["jpg"]
    return {
        "image": image,
        "pairs": torch.from_numpy(pairs.astype(np.int64)),
        "ordinal": torch.from_numpy(ordinal.astype(np.int64)),
        "meta": {
            "source": "dynocc", "key": key, "video": meta.get("video"), "frame": int(meta.get("frame", 0)),
            "orig_size": tuple(meta.get("orig_size", ())), "size": tuple(meta.get("size", ())), "url": url,
            **{k: meta[k] for k in ("video_id", "scale", "fps") if k in meta},
        },
        "boundary": boundary_from_array(bnd),
    }


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
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def records(self) -> list[dict[str, Any]]:
        """All complete records (a torn last line from a crash is ignored)."""
        if not self.path.exists():
            return []
        out = []
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                if not line.endswith("\n"):
                    log.warning("%s: ignoring a torn last line (interrupted write)", self.path)
                    break
                out.append(json.loads(line))
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
            if not (out / s["url"]).exists():
                raise DynOccError(f"{out / s['url']}: committed in the ledger but missing on disk")
    return state


class ShardWriter:
    """Writes samples into shards ``<prefix>-r<rank:03d>-<seq:06d>.tar`` of at most ``max_count`` samples
    and about ``max_bytes`` bytes, with the commit protocol of this module.

    Video-level records given to :meth:`video_done` are held back until every sample of that video is in
    a committed shard, so a "done" video in the ledger is really done.
    """

    def __init__(self, out: str | os.PathLike, *, prefix: str = "dynocc", rank: int = 0,
                 max_count: int = 1000, max_bytes: int = 1 << 30, header: Mapping[str, Any] | None = None):
        import webdataset as wds

        self._wds = wds
        self.out = Path(out)
        self.prefix, self.rank = prefix, rank
        self.max_count, self.max_bytes = max_count, max_bytes
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
        self._tar = self._wds.TarWriter(self._stream, encoder=False, mtime=0.0)
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
            self.ledger.append(rec)
            os.replace(str(path) + PARTIAL, path)
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
