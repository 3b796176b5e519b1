"""Builders of small DynOcc shards on disk, in the exact format of docs/FORMAT.md (webdataset.TarWriter).

Every sample's content is a known function of its key, so tests can check decoded items value by value:
the image is a flat colour ``frame * 10`` (plus the video index in the green channel), ``pairs``/``ordinal``/
``boundary`` are small arrays derived from ``(video, frame)``.
"""

from __future__ import annotations

import io
import json
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from torchvision.io import decode_jpeg, encode_jpeg

BOUNDARY_DTYPE = np.dtype([("y", "<f4"), ("x", "<f4"), ("ny", "<f4"), ("nx", "<f4"),
                           ("confidence", "<f4"), ("segment", "<i4"), ("jump", "<f4")])
SIZE = (12, 16)  # H, W of every fixture image


@dataclass
class FakeSample:
    """The members of one sample and what a reader must decode them to."""

    key: str
    video: str
    video_id: str
    frame: int
    image: torch.Tensor  # what decode_jpeg gives for the stored JPEG
    jpeg: bytes
    pairs: np.ndarray  # int32 [N,4]
    ordinal: np.ndarray  # int8 [N]
    boundary: np.ndarray  # structured [M]
    meta: dict[str, Any]

    def members(self) -> dict[str, Any]:
        """The sample as TarWriter writes it: ``__key__`` plus the bytes of each member."""
        return {
            "__key__": self.key,
            "jpg": self.jpeg,
            "json": json.dumps(self.meta).encode("utf-8"),
            "pairs.npy": npy_bytes(self.pairs),
            "ordinal.npy": npy_bytes(self.ordinal),
            "boundary.npy": npy_bytes(self.boundary),
        }


@dataclass
class ShardSet:
    """Shards written by :func:`write_shards`."""

    root: Path
    paths: list[Path]
    counts: list[int]
    samples: dict[str, FakeSample] = field(default_factory=dict)
    keys_by_shard: list[list[str]] = field(default_factory=list)

    @property
    def pattern(self) -> str:
        """A brace pattern naming every shard."""
        stem = self.paths[0].name.rsplit("-", 1)[0]
        return str(self.root / f"{stem}-{{{0:06d}..{len(self.paths) - 1:06d}}}.tar")

    @property
    def keys(self) -> list[str]:
        """All keys in shard order."""
        return [k for keys in self.keys_by_shard for k in keys]


def npy_bytes(array: np.ndarray, *, allow_pickle: bool = False) -> bytes:
    """``numpy.save`` to bytes."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=allow_pickle)
    return buf.getvalue()


def make_sample(video: int, frame: int, *, size: tuple[int, int] = SIZE) -> FakeSample:
    """A sample whose every value follows from ``(video, frame)``."""
    height, width = size
    video_id = f"clip{video}-{video * 2654435761 % 16**8:08x}"
    key = f"{video_id}_{frame:06d}"
    rgb = torch.tensor([frame * 10 % 250, 40 + video * 20, 200], dtype=torch.uint8)
    jpeg = encode_jpeg(rgb.view(3, 1, 1).expand(3, height, width).contiguous(), quality=95).numpy().tobytes()
    n = 2 + (video + frame) % 4
    i = np.arange(n)
    pairs = np.stack([i % height, (i + frame) % width, (i + 3) % height, (2 * i + video) % width], axis=1)
    pairs = pairs.astype(np.int32)
    ordinal = np.array([(-1, 0, 1)[(k + frame) % 3] for k in range(n)], dtype=np.int8)
    m = 3 + frame % 3
    boundary = np.zeros(m, dtype=BOUNDARY_DTYPE)
    j = np.arange(m, dtype=np.float32)
    boundary["y"], boundary["x"] = 2.0 + j, 3.5 + j
    boundary["ny"], boundary["nx"] = 0.6, -0.8
    boundary["confidence"] = 0.5 + 0.1 * j
    boundary["segment"] = j.astype(np.int32) // 2 + video
    boundary["jump"] = 1.25 * (j + 1)
    meta = {
        "key": key, "video": f"videos/clip{video}.mp4", "video_id": video_id, "frame": frame,
        "orig_size": [height * 2, width * 2], "size": [height, width], "scale": 0.5, "fps": 25.0,
        "num_pairs": n, "num_boundary": m, "flow": {"backend": "dis", "preset": "medium"},
        "params": {"gap": 2, "seed": 0}, "version": "0.1.0",
    }
    image = decode_jpeg(torch.frombuffer(bytearray(jpeg), dtype=torch.uint8))
    return FakeSample(key, meta["video"], video_id, frame, image, jpeg, pairs, ordinal, boundary, meta)


def write_tar(path: Path, samples: list[dict[str, Any]]) -> None:
    """Write member dicts to a tar shard with webdataset's TarWriter (raw bytes, no encoding)."""
    with open(path, "wb") as stream, wds.TarWriter(stream, encoder=False, mtime=0.0) as writer:
        for members in samples:
            writer.write(members)


def write_index(root: Path, paths: list[Path], counts: list[int]) -> Path:
    """``index.json`` as the generator writes it."""
    shards = [{"url": p.name, "count": c, "bytes": p.stat().st_size} for p, c in zip(paths, counts)]
    index = {"format": "dynocc-shards/1", "num_samples": sum(counts), "shards": shards}
    (root / "index.json").write_text(json.dumps(index))
    return root / "index.json"


def write_shards(root: str | os.PathLike, counts: list[int], *, prefix: str = "dynocc-r000",
                 index: bool = True, edit: dict[str, dict[str, Any]] | None = None) -> ShardSet:
    """Shards ``<prefix>-000000.tar ...`` holding ``counts[i]`` samples each (video = shard index, frames counted
    up), plus ``index.json``. ``edit[key]`` replaces members of a sample (value ``None`` removes the member)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    out = ShardSet(root, [], list(counts))
    for shard, count in enumerate(counts):
        path = root / f"{prefix}-{shard:06d}.tar"
        samples = [make_sample(shard, frame) for frame in range(count)]
        members = []
        for s in samples:
            m = s.members()
            for name, value in (edit or {}).get(s.key, {}).items():
                if value is None:
                    m.pop(name, None)
                else:
                    m[name] = value
            members.append(m)
        write_tar(path, members)
        out.paths.append(path)
        out.samples.update({s.key: s for s in samples})
        out.keys_by_shard.append([s.key for s in samples])
    if index:
        write_index(root, out.paths, out.counts)
    return out


class _Touch:
    """Pickles into a call that creates ``path``: proof of unpickling if the file ever appears."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def evil_pickle(marker: str | os.PathLike) -> bytes:
    """Pickle bytes whose unpickling creates the folder ``marker``."""
    return pickle.dumps(_Touch(os.fspath(marker)))


def evil_npy(marker: str | os.PathLike) -> bytes:
    """A ``.npy`` object array whose loading with ``allow_pickle=True`` creates the folder ``marker``."""
    array = np.empty(1, dtype=object)
    array[0] = _Touch(os.fspath(marker))
    return npy_bytes(array, allow_pickle=True)


def truncate(path: Path, size: int) -> None:
    """Cut a file to ``size`` bytes."""
    with open(path, "r+b") as stream:
        stream.truncate(size)


def member_offsets(path: Path) -> list[tuple[str, int, int]]:
    """``(name, header offset, data offset)`` of each member of a tar, to cut it at a chosen place."""
    import tarfile

    with tarfile.open(path) as tf:
        return [(m.name, m.offset, m.offset_data) for m in tf.getmembers()]
