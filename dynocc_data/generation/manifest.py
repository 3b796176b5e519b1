"""The work of a generation run as a manifest of chunks (``dynocc-data plan``).

Planning discovers the inputs once, probes each video's frame count once (the container header through PyAV; a
frame folder's images), and deals the videos into chunks of about equal frames with a heap-based greedy
(longest-processing-time first): heaviest video first, each to the lightest chunk, ties by fewer videos then lower
chunk index. That is the rule of :func:`~dynocc_data.generation.launch.partition`, in O(n log k) instead of
O(n k). The manifest (``<out>/manifest.json``, written once) records the format, the digest of the generation
parameters, the inputs and, for each chunk, its videos with their frame counts. Chunks are then run by
:mod:`dynocc_data.generation.chunks`.
"""

from __future__ import annotations

import heapq
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import av

from .. import storage
from ..errors import DynOccError
from .config import GenerateConfig
from .video import IMAGE_EXTENSIONS, VideoSource, discover_videos

__all__ = ["MANIFEST_FORMAT", "MANIFEST_NAME", "Chunk", "Manifest", "balance", "plan_manifest", "probe_frames",
           "read_manifest", "write_manifest"]

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "dynocc-manifest/1"
MANIFEST_NAME = "manifest.json"
MAX_MANIFEST_BYTES = 1 << 30


def probe_frames(source: VideoSource) -> int | None:
    """The number of frames a video claims to have, read cheaply (no decoding).

    Args:
        source: the video.

    Returns:
        The frame count of the first video stream's header (or its duration times its frame rate), the number of
        images of a frame folder; ``None`` when unknown (URLs, unreadable files, containers without either).
    """
    try:
        if source.kind == "frames":
            with os.scandir(source.path) as entries:
                return sum(1 for e in entries if os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS)
        if source.kind != "file":
            return None
        with av.open(source.path) as container:
            stream = container.streams.video[0]
            if stream.frames:
                return int(stream.frames)
            if stream.duration and stream.time_base and stream.average_rate:
                return int(round(float(stream.duration * stream.time_base * stream.average_rate)))
    except (OSError, av.FFmpegError, IndexError, ValueError):
        return None
    return None


def balance(weights: Sequence[int | None], parts: int) -> list[list[int]]:
    """Deal items into ``parts`` groups of about equal total weight (greedy LPT with a heap, O(n log k)).

    Heaviest first, each to the lightest group; ties by fewer items, then lower group index; items of equal
    weight in their given order. Unknown (``None``) weights count as the mean of the known ones.

    Args:
        weights: one weight per item.
        parts: the number of groups (>= 1).

    Returns:
        ``parts`` lists of item indices, each ascending.

    Raises:
        ValueError: when ``parts < 1``.
    """
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    known = [int(w) for w in weights if w is not None]
    fill = round(sum(known) / len(known)) if known else 1
    ws = [max(0, int(w)) if w is not None else fill for w in weights]
    order = sorted(range(len(ws)), key=lambda i: (-ws[i], i))
    heap = [(0, 0, k) for k in range(parts)]  # (load, items, group): the lightest group is on top
    groups: list[list[int]] = [[] for _ in range(parts)]
    for i in order:
        load, count, k = heap[0]
        groups[k].append(i)
        heapq.heapreplace(heap, (load + ws[i], count + 1, k))
    return [sorted(g) for g in groups]


@dataclass(frozen=True)
class Chunk:
    """One unit of work: some videos, processed together by one process.

    Attributes:
        index: its position in the manifest (0-based).
        videos: its videos, in input order.
        frames: each video's frame count from planning (``None`` when unknown).
    """

    index: int
    videos: tuple[VideoSource, ...]
    frames: tuple[int | None, ...]

    @property
    def weight(self) -> int:
        """The chunk's known frames."""
        return sum(f for f in self.frames if f is not None)

    @property
    def name(self) -> str:
        """``c<index:05d>``: the chunk's tag in file names (shards, ledger, marker, lease)."""
        return f"c{self.index:05d}"


@dataclass(frozen=True)
class Manifest:
    """A planned run: where it writes, with which parameters, and its chunks.

    Attributes:
        out: the output folder (path or URL) holding ``manifest.json``, shards, ledgers and chunk markers.
        digest: :meth:`GenerateConfig.digest` of the parameters the chunks must be generated with.
        params: those parameters (:meth:`GenerateConfig.to_dict`), for the record.
        inputs: the inputs given to ``plan``.
        chunks: the chunks.
        input_errors: ``{"video", "reason"}`` of each input that discovery rejected.
        created: when it was planned (seconds since the epoch).
    """

    out: str
    digest: str
    params: Mapping[str, Any]
    inputs: tuple[str, ...]
    chunks: tuple[Chunk, ...]
    input_errors: tuple[Mapping[str, str], ...] = ()
    created: float = 0.0

    @property
    def url(self) -> str:
        """The manifest file."""
        return storage.join(self.out, MANIFEST_NAME)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document.

        Returns:
            The manifest as written to ``manifest.json``.
        """
        return {"format": MANIFEST_FORMAT, "digest": self.digest, "params": dict(self.params),
                "inputs": list(self.inputs), "created": self.created,
                "input_errors": [dict(e) for e in self.input_errors],
                "chunks": [{"index": c.index, "frames": c.weight,
                            "videos": [{"path": v.path, "kind": v.kind, "rel": v.rel, "frames": f}
                                       for v, f in zip(c.videos, c.frames)]} for c in self.chunks]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], out: str) -> "Manifest":
        """Read a manifest document back.

        Args:
            data: the parsed JSON.
            out: the folder it was read from.

        Returns:
            The manifest.

        Raises:
            DynOccError: when it is not a manifest of this format.
        """
        where = storage.join(out, MANIFEST_NAME)
        if not isinstance(data, Mapping) or data.get("format") != MANIFEST_FORMAT:
            raise DynOccError(f"{where}: not a dynocc-data manifest (format {MANIFEST_FORMAT!r} expected)")
        try:
            chunks = tuple(Chunk(int(c["index"]),
                                 tuple(VideoSource(str(v["path"]), v["kind"], str(v["rel"])) for v in c["videos"]),
                                 tuple(v.get("frames") for v in c["videos"])) for c in data["chunks"])
            manifest = cls(out, str(data["digest"]), dict(data.get("params") or {}),
                           tuple(data.get("inputs") or ()), chunks, tuple(data.get("input_errors") or ()),
                           float(data.get("created") or 0.0))
        except (KeyError, TypeError, ValueError) as err:
            raise DynOccError(f"{where}: malformed manifest ({err})") from None
        if [c.index for c in chunks] != list(range(len(chunks))) or not chunks:
            raise DynOccError(f"{where}: malformed manifest (chunk indices are not 0 to n-1 in order)")
        return manifest


def plan_manifest(inputs: Sequence[str | os.PathLike], out: str | os.PathLike, config: GenerateConfig, *,
                  chunk_frames: int | None = None, chunks: int | None = None) -> Manifest:
    """Discover the videos, probe their sizes and deal them into balanced chunks (written by :func:`write_manifest`).

    Args:
        inputs: video files, folders, frame folders, ``.txt`` lists, URLs.
        out: the output folder of the run.
        config: the generation parameters (their digest is recorded).
        chunk_frames: about this many frames per chunk (the number of chunks is the total divided by it).
        chunks: exactly this many chunks (at most one per video). Give one of ``chunk_frames`` and ``chunks``;
            neither: one chunk per video.

    Returns:
        The manifest.

    Raises:
        DynOccError: when no video is found, or both or a non-positive ``chunk_frames``/``chunks`` are given.
    """
    if chunk_frames is not None and chunks is not None:
        raise DynOccError("--chunk-frames and --chunks: give one of them")
    for name, value in (("--chunk-frames", chunk_frames), ("--chunks", chunks)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise DynOccError(f"{name} must be an integer >= 1, got {value!r}")
    sources, errors = discover_videos(inputs)
    for e in errors:
        log.warning("%s", e)
    if not sources:
        raise DynOccError(f"{', '.join(map(str, inputs))}: no video found")
    frames = [probe_frames(s) for s in sources]
    if chunks is None and chunk_frames is not None:
        known = [f for f in frames if f is not None]
        total = sum(known) + (len(frames) - len(known)) * (round(sum(known) / len(known)) if known else 1)
        chunks = max(1, math.ceil(total / chunk_frames))
    count = min(len(sources), chunks if chunks is not None else len(sources))
    groups = balance(frames, count)
    out = os.fspath(out)
    return Manifest(out, config.digest(), config.to_dict(), tuple(os.fspath(i) for i in inputs),
                    tuple(Chunk(k, tuple(sources[i] for i in g), tuple(frames[i] for i in g))
                          for k, g in enumerate(groups)),
                    tuple({"video": e.path, "reason": e.reason} for e in errors), time.time())


def write_manifest(manifest: Manifest) -> None:
    """Write ``<out>/manifest.json``; planning again the same work into the same folder is a no-op.

    Args:
        manifest: the manifest.

    Raises:
        DynOccError: when the folder already holds a manifest with other chunks or parameters (chunks may be
            running from it: plan into a new folder).
    """
    storage.makedirs(manifest.out)
    if storage.exists(manifest.url):
        old = read_manifest(manifest.url)
        same = old.digest == manifest.digest and [[v.video_id for v in c.videos] for c in old.chunks] == \
            [[v.video_id for v in c.videos] for c in manifest.chunks]
        if not same:
            raise DynOccError(f"{manifest.url}: already holds another plan (other videos, chunks or parameters); "
                              f"plan into a new --out")
        return
    storage.write_atomic(manifest.url, json.dumps(manifest.to_dict(), indent=1) + "\n")


def read_manifest(url: str | os.PathLike) -> Manifest:
    """Read a manifest.

    Args:
        url: the manifest file (``.../manifest.json``) or the folder holding it.

    Returns:
        The manifest; its ``out`` is the folder holding the file.

    Raises:
        DynOccError: when it does not exist, is not JSON or not a manifest.
    """
    url = os.fspath(url).rstrip("/")
    if url.endswith(".json"):
        path = url
        out = path.rsplit("/", 1)[0] if "/" in path else "."
    else:
        out, path = url, storage.join(url, MANIFEST_NAME)
    try:
        data = json.loads(storage.read_text(path, max_bytes=MAX_MANIFEST_BYTES))
    except FileNotFoundError:
        raise DynOccError(f"{path}: no manifest here (make one with dynocc-data plan)") from None
    except (ValueError, OSError) as err:
        raise DynOccError(f"{path}: cannot read the manifest ({err})") from None
    return Manifest.from_dict(data, out)
