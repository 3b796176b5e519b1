"""Input discovery and streaming frame decoding for ``dynocc-data generate``.

``discover_videos`` turns command-line inputs (video files, folders, frame folders, ``.txt`` lists, URLs) into
:class:`VideoSource` records plus a list of :class:`~dynocc_data.errors.InputError` for the run summary.
``open_video`` returns a :class:`VideoReader` that yields requested frames as RGB ``uint8`` arrays without ever
holding the whole video in memory.

Backends:

* ``decord`` -- the maintained **decord2** fork, which installs the same ``import decord`` API with FFmpeg 7
  bundled. The original ``decord`` wheel is unmaintained since 2021 and has known leaks, inaccurate seeks and
  ``get_batch`` hanging when the reported frame count is too high, so it is not what we depend on. Even decord2
  reports a container's frame count that may not decode, and (3.4) returns ``HxWx4``-shaped arrays that
  ``get_batch`` cannot copy for some frame widths: both are checked on open, and ``auto`` then falls back to PyAV.
* ``pyav`` -- fallback when decord is missing or fails on a file; decodes sequentially (seeking to the nearest
  keyframe when the requested frames are far ahead) and keeps only the requested frames.
* ``frames`` -- frame folders (YouTube-VOS style ``JPEGImages/<video>/00000.jpg``) read with OpenCV.
* ``torchcodec`` -- used only when importable and asked for explicitly.

Every reader validates ``num_frames`` (frames that actually decode), because containers often report a count that
does not decode (decord's ``len`` can be too high after truncation, PyAV's ``stream.frames`` can be 0).

Longer than 500 lines because input discovery and the four decoder backends (decord, PyAV, frame folders,
torchcodec) share one frame-selection and frame-count contract; each backend is one small class.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path, PurePosixPath
from types import ModuleType, TracebackType
from typing import Any, Literal
from urllib.parse import urlparse

import av
import cv2
import numpy as np

from ..errors import DynOccError, InputError, InputNotFoundError

__all__ = ["IMAGE_EXTENSIONS", "VIDEO_EXTENSIONS", "VideoReader", "VideoSource", "as_source", "discover_videos",
           "frames_needed", "make_video_id", "open_video", "require_frames", "select_frames", "target_size"]

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mkv", ".webm", ".mov"})
MAX_FRAME_PIXELS = 8192 * 8192  # default limit on a video's frame size (DYNOCC_MAX_FRAME_PIXELS changes it)
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png"})
LIST_EXTENSIONS = frozenset({".txt"})
BACKENDS = ("auto", "decord", "pyav", "frames", "torchcodec")
CHUNK_SIZE = 32  # frames per decord get_batch call: bounds memory to one chunk
DEFAULT_FRAMES_FPS = 30.0  # frame folders carry no timing; YouTube-VOS sources are 30 fps
_MAX_COUNT_PROBES = 24  # decode attempts when searching the last decodable frame

SourceKind = Literal["file", "frames", "url"]


# --------------------------------------------------------------------------------------------------- sources


def _sanitise_stem(stem: str) -> str:
    """Keep only ``[A-Za-z0-9_-]`` (runs of anything else become one ``_``); never empty, at most 64 chars."""
    clean = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_-")[:64]
    return clean or "video"


def make_video_id(rel: str) -> str:
    """The id of a video in sample keys: stable for a given ``rel``, no dots or slashes.

    Args:
        rel: the video's path under its input root (POSIX style), or its URL.

    Returns:
        ``<sanitised stem>-<first 8 hex digits of sha1(rel)>``; a frame folder's stem is its whole name.
    """
    if _is_url(rel):
        parsed = urlparse(rel)
        stem = PurePosixPath(parsed.path).stem or parsed.netloc
    else:
        name = PurePosixPath(rel)
        stem = name.stem if name.suffix.lower() in VIDEO_EXTENSIONS else name.name  # frame folders keep their name
    digest = hashlib.sha1(rel.encode("utf-8")).hexdigest()[:8]
    return f"{_sanitise_stem(stem)}-{digest}"


@dataclass(frozen=True)
class VideoSource:
    """One video to process, with its derived ``video_id`` (:func:`make_video_id` of ``rel``).

    Args:
        path: what to open (a file, a frame folder or a URL).
        kind: the kind of input: ``"file"``, ``"frames"`` or ``"url"``.
        rel: the path under its input root (POSIX style), or the URL.
    """

    path: str
    kind: SourceKind
    rel: str
    video_id: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "video_id", make_video_id(self.rel))


def _is_url(item: str) -> bool:
    return item.lower().startswith(("http://", "https://"))


def _natural_key(name: str) -> list[Any]:
    """Sort key that orders ``frame2`` before ``frame10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _rel(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def _scan_folder(folder: Path, root: Path, *, recursive: bool) -> list[VideoSource]:
    """Video files and frame folders under ``folder`` (a frame folder holds images and no videos).

    Without ``recursive`` only ``folder`` itself and its direct sub-folders that are frame folders are looked at.
    """
    found: list[VideoSource] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        depth = len(here.relative_to(folder).parts)
        dirnames[:] = sorted((d for d in dirnames if not _is_hidden(d)), key=_natural_key)
        if not recursive and depth >= 1:
            dirnames[:] = []
        files = [f for f in filenames if not _is_hidden(f)]
        videos = sorted(f for f in files if Path(f).suffix.lower() in VIDEO_EXTENSIONS)
        has_images = any(Path(f).suffix.lower() in IMAGE_EXTENSIONS for f in files)
        if depth == 0 or recursive:
            found += [VideoSource(os.path.abspath(here / v), "file", _rel(here / v, root)) for v in videos]
        if has_images and not videos:
            # a frame folder given directly is named after itself rather than "."
            rel = _rel(here, root) if here != root else here.resolve().name
            found.append(VideoSource(os.path.abspath(here), "frames", rel))
    return found


class _Discovery:
    """Accumulates sources and errors while walking the inputs (list files may nest)."""

    def __init__(self, *, recursive: bool):
        self.recursive = recursive
        self.sources: list[VideoSource] = []
        self.errors: list[InputError] = []

    def add(self, item: str, *, root: Path | None = None, origin: str = "",
            lists: frozenset[str] = frozenset()) -> None:
        """Classify one input; ``root`` is the list file's folder for list entries, ``origin`` names that line."""
        if _is_url(item):
            self.sources.append(VideoSource(item, "url", item))
            return
        path = Path(item).expanduser()
        where = f" (listed in {origin})" if origin else ""
        if not path.exists():
            self.errors.append(InputNotFoundError(item, f"no such file or directory{where}"))
            return
        inside = root is not None and not os.path.relpath(path.resolve(), root.resolve()).startswith("..")
        if path.is_dir():
            base = root if inside and root is not None else path
            found = _scan_folder(path, base, recursive=self.recursive)
            if not found:
                self.errors.append(InputError(item, f"no videos or frame folders found{where}"))
            self.sources += found
            return
        suffix = path.suffix.lower()
        if suffix in VIDEO_EXTENSIONS:
            rel = _rel(path, root) if inside and root is not None else path.name
            self.sources.append(VideoSource(os.path.abspath(path), "file", rel))
        elif suffix in LIST_EXTENSIONS:
            self._read_list(path, lists)
        else:
            kinds = "/".join(sorted(e.lstrip(".") for e in VIDEO_EXTENSIONS))
            self.errors.append(InputError(item, f"unsupported file type '{suffix or path.name}' "
                                                f"(expected a video {kinds}, a folder or a .txt list){where}"))

    def _read_list(self, path: Path, lists: frozenset[str]) -> None:
        """Add every entry of a list file: one input a line, ``#`` comments and blank lines ignored."""
        key = str(path.resolve())
        if key in lists:
            self.errors.append(InputError(path, "list file includes itself"))
            return
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            self.errors.append(InputError(path, f"cannot read list file ({exc.__class__.__name__})"))
            return
        for lineno, line in enumerate(lines, start=1):
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            if not _is_url(entry) and not os.path.isabs(os.path.expanduser(entry)):
                entry = os.path.normpath(path.parent / entry)
            self.add(entry, root=path.parent, origin=f"{path}:{lineno}", lists=lists | {key})

    def result(self) -> tuple[list[VideoSource], list[InputError]]:
        """Sources without duplicates (one per real path or URL) with unique ``rel``; both lists sorted."""
        by_target: dict[str, VideoSource] = {}
        for src in self.sources:
            target = src.path if src.kind == "url" else os.path.realpath(src.path)
            best = by_target.get(target)
            if best is None or (src.rel, src.path) < (best.rel, best.path):
                by_target[target] = src
        by_rel: dict[str, list[VideoSource]] = {}
        for src in by_target.values():
            by_rel.setdefault(src.rel, []).append(src)
        unique: list[VideoSource] = []
        for rel, group in by_rel.items():
            if len(group) == 1:
                unique += group
                continue
            # same relative path under different roots: the absolute path keeps the ids distinct
            logger.warning("%d inputs share the relative path %r; using their absolute paths as ids", len(group), rel)
            unique += [VideoSource(s.path, s.kind, Path(s.path).as_posix()) for s in group]
        unique.sort(key=lambda s: (s.rel, s.path))
        errors = {(e.path, e.reason): e for e in self.errors}
        return unique, [errors[k] for k in sorted(errors)]


def discover_videos(inputs: Sequence[str | os.PathLike[str]], *, recursive: bool = True
                    ) -> tuple[list[VideoSource], list[InputError]]:
    """Find every video behind ``inputs`` (files, folders, frame folders, ``.txt`` lists, http(s) URLs).

    Problems (missing paths, unsupported files, folders without videos) are returned, not raised, so a run can go
    on and list them in its summary.

    Args:
        inputs: the command-line inputs.
        recursive: look in sub-folders of folders; without it only a folder itself and its direct sub-folders that
            are frame folders are looked at.

    Returns:
        ``(sources, errors)``: the sources, deduplicated and sorted by ``rel``, and one :class:`InputError` per
        problem, sorted.
    """
    discovery = _Discovery(recursive=recursive)
    for item in inputs:
        discovery.add(os.fspath(item))
    return discovery.result()


# --------------------------------------------------------------------------------------------------- frame selection


def select_frames(num_frames: int, *, stride: int, gap: int, start: int = 0, max_frames: int | None = None
                  ) -> list[int]:
    """The frames to make samples from: every ``stride`` from ``max(start, gap)``, with both flow partners in range.

    Args:
        num_frames: frames that decode.
        stride: step between selected frames (>= 1).
        gap: frame distance to the flow partners ``t - gap`` and ``t + gap`` (>= 1).
        start: first frame that may be selected (>= 0).
        max_frames: keep at most this many (>= 0); ``None`` for all.

    Returns:
        Frames ``t`` from ``max(start, gap)`` every ``stride`` with ``t - gap >= 0`` and ``t + gap < num_frames``.

    Raises:
        ValueError: when an argument is out of its range.
    """
    if stride < 1 or gap < 1 or start < 0 or (max_frames is not None and max_frames < 0):
        raise ValueError(f"need stride >= 1, gap >= 1, start >= 0, max_frames >= 0 "
                         f"(got stride={stride}, gap={gap}, start={start}, max_frames={max_frames})")
    selected = list(range(max(start, gap), num_frames - gap, stride))
    return selected if max_frames is None else selected[:max_frames]


def frames_needed(selected: Sequence[int], gap: int, *, num_frames: int | None = None) -> list[int]:
    """The frames to decode for ``selected``.

    Args:
        selected: the selected frames (:func:`select_frames`).
        gap: the flow gap ``g``.
        num_frames: frames that decode; ``None`` for no upper bound.

    Returns:
        The sorted union of ``t-2g, t-g, t, t+g, t+2g`` over ``selected``, kept within ``[0, num_frames)``.
    """
    upper = num_frames if num_frames is not None else float("inf")
    needed = {t + k * gap for t in selected for k in (-2, -1, 0, 1, 2)}
    return sorted(i for i in needed if 0 <= i < upper)


def target_size(orig_size: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """The frame size after shrinking so that the longer side is ``max_side``.

    Args:
        orig_size: ``(H, W)`` of the source frames.
        max_side: the longest side wanted; ``None`` to keep the size.

    Returns:
        ``(H, W)``: aspect kept, even sizes (at least 2), never upscaled.
    """
    h, w = orig_size
    if max_side is None or max(h, w) <= max_side:
        return h, w
    factor = max_side / max(h, w)

    def even(side: int) -> int:
        value = max(2, 2 * round(side * factor / 2))
        return value - 2 if value > max_side and value > 2 else value

    return even(h), even(w)


# --------------------------------------------------------------------------------------------------- readers


def _short_reason(exc: BaseException) -> str:
    """One readable line from a decord/PyAV exception (drops decord's ``[time] file.cc:line:`` prefixes)."""
    text = getattr(exc, "strerror", None) or str(exc) or exc.__class__.__name__
    text = re.sub(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ", "", str(text))
    line = next((part.strip() for part in text.splitlines() if part.strip()), exc.__class__.__name__)
    line = line[:160]
    # "Invalid data ..." -> "invalid data ..." to read well after "cannot decode (", but keep acronyms ("GPU ...")
    return line[0].lower() + line[1:] if line[:2] != line[:2].upper() else line


def max_frame_pixels() -> int:
    """The largest frame (in pixels) a video may have: ``DYNOCC_MAX_FRAME_PIXELS`` or :data:`MAX_FRAME_PIXELS`.

    Returns:
        The limit.

    Raises:
        DynOccError: when the environment variable is not a positive integer.
    """
    text = os.environ.get("DYNOCC_MAX_FRAME_PIXELS")
    if text is None:
        return MAX_FRAME_PIXELS
    if not text.strip().isdigit() or int(text) < 1:
        raise DynOccError(f"DYNOCC_MAX_FRAME_PIXELS={text!r}: must be a positive integer (pixels per frame)")
    return int(text)


def check_frame_size(path: str, height: int, width: int) -> None:
    """Refuse a video whose frames are larger than :func:`max_frame_pixels` (a 16000x16000 video needs gigabytes).

    Args:
        path: the video, for the message.
        height: frame height in pixels.
        width: frame width in pixels.

    Raises:
        InputError: naming the video, its frame size and the limit.
    """
    limit = max_frame_pixels()
    if height * width > limit:
        raise InputError(path, f"{height}x{width} frames ({height * width} pixels) are above the limit of {limit} "
                               f"(set DYNOCC_MAX_FRAME_PIXELS to allow them)")


def _resize(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``frame`` at ``size`` (H, W); INTER_AREA because we only ever shrink."""
    if frame.shape[:2] == size:
        return frame
    return cv2.resize(frame, (size[1], size[0]), interpolation=cv2.INTER_AREA)


class VideoReader(ABC):
    """Streaming access to the frames of one video.

    ``scale`` is the ratio of ``size`` to ``orig_size`` along the longer side. Use it as a context manager, or
    call :meth:`close`.

    Args:
        path: the file or folder.
        num_frames: frames that really decode.
        reported_frames: what the container claims (0 if unknown).
        fps: frames per second.
        orig_size: ``(H, W)`` of the decoded frames before ``max_side`` resizing.
        size: ``(H, W)`` of the frames it yields.
    """

    backend: str = ""

    def __init__(self, path: str, *, num_frames: int, reported_frames: int, fps: float,
                 orig_size: tuple[int, int], size: tuple[int, int]):
        check_frame_size(path, *orig_size)
        self.path = path
        self.num_frames = num_frames
        self.reported_frames = reported_frames
        self.fps = fps
        self.orig_size = orig_size
        self.size = size
        self._closed = False

    @property
    def scale(self) -> float:
        """``size / orig_size`` along the longer side (1.0 when not resized)."""
        return max(self.size) / max(self.orig_size)

    def iter_frames(self, indices: Sequence[int]) -> Iterator[tuple[int, np.ndarray]]:
        """Decode the frames at ``indices`` lazily, one bounded step at a time.

        Args:
            indices: frame indices; sorted and deduplicated here.

        Returns:
            An iterator of ``(index, uint8 HxWx3 RGB at size)`` in increasing index order.

        Raises:
            ValueError: when the reader is closed or an index is out of range.
        """
        if self._closed:
            raise ValueError(f"{self.path}: reader is closed")
        wanted = sorted({int(i) for i in indices})
        if wanted and (wanted[0] < 0 or wanted[-1] >= self.num_frames):
            bad = wanted[0] if wanted[0] < 0 else wanted[-1]
            raise ValueError(f"{self.path}: frame index {bad} out of range ({self.num_frames} frames decode)")
        return self._iter(wanted)

    @abstractmethod
    def _iter(self, wanted: list[int]) -> Iterator[tuple[int, np.ndarray]]:
        """Decode ``wanted`` (sorted, in range) one bounded step at a time."""

    def close(self) -> None:
        """Release the decoder (idempotent); iterating afterwards is an error."""
        self._closed = True
        self._release()

    def _release(self) -> None:
        """Free backend resources."""

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.path!r}, num_frames={self.num_frames}, fps={self.fps:.3f}, "
                f"orig_size={self.orig_size}, size={self.size})")


def require_frames(reader: VideoReader, n: int) -> None:
    """Check that at least ``n`` frames of ``reader`` decode.

    Args:
        reader: an open reader.
        n: the frames needed.

    Raises:
        InputError: "truncated" when the container reports more frames than decode, else "too short", when fewer
            than ``n`` frames decode.
    """
    if reader.num_frames >= n:
        return
    if reader.reported_frames > reader.num_frames:
        raise InputError(reader.path, f"truncated: only {reader.num_frames} frames decode "
                                      f"(container reports {reader.reported_frames}), need {n}")
    raise InputError(reader.path, f"too short: {reader.num_frames} frames, need {n}")


def _last_decodable(reported: int, decodes: Any) -> int:
    """Number of frames that decode: ``reported`` if the last one does, else search back (bounded) for the last."""
    if reported <= 0:
        return 0
    if decodes(reported - 1):
        return reported
    bad, good, step = reported - 1, -1, 1
    for _ in range(_MAX_COUNT_PROBES):  # walk back with doubling steps, then bisect
        candidate = max(bad - step, 0)
        if decodes(candidate):
            good = candidate
            break
        bad, step = candidate, step * 2
        if candidate == 0:
            return 0
    if good < 0:
        return 0
    probes = 0
    while bad - good > 1 and probes < _MAX_COUNT_PROBES:
        mid, probes = (good + bad) // 2, probes + 1
        if decodes(mid):
            good = mid
        else:
            bad = mid
    return good + 1


def _import_decord() -> ModuleType:
    import decord  # noqa: PLC0415 - optional dependency

    decord.logging.set_level(decord.logging.QUIET)  # silence its bundled FFmpeg's stderr noise
    return decord


_MISSHAPED = "decord returns mis-shaped frames at this frame width (a decord2 bug); use the PyAV backend"


def _decord_reason(exc: BaseException) -> str:
    """Plain words for decord's C++ check failures."""
    text = str(exc)
    if text.startswith("Error reading"):
        return "decord cannot open it"
    if "cannot find video stream" in text:
        return "no video stream"
    if "DECORDArrayCopyFromTo" in text:  # decord2 3.4 gives some widths (e.g. 96 px) HxWx4 frames it cannot copy
        return _MISSHAPED
    return _short_reason(exc)


def _is_cuda(device: Any) -> bool:
    return str(device).startswith("cuda")


class DecordReader(VideoReader):
    """decord2 ``VideoReader`` decoded in chunks of :data:`CHUNK_SIZE` indices with ``get_batch``.

    ``device`` is ``"cuda"`` when decord decodes on the GPU (asked for, and decord built with CUDA), else ``"cpu"``.
    """

    backend = "decord"

    def __init__(self, path: str, *, max_side: int | None = None, device: Any = "cpu"):
        self.path = path
        self._decord = _import_decord()
        self._want_cuda, self.device, self._decode_size = _is_cuda(device), "cpu", None
        self._device_index = _device_index(device)
        self._vr = self._open()
        orig = self._batch([0]).shape[1:3]
        size = target_size(orig, max_side)
        if size != orig:
            self._try_native_resize(size)
        reported = len(self._vr)
        num = _last_decodable(reported, self._decodes)
        if num == 0:
            raise InputError(path, "cannot decode (no frame decodes)")
        if num < reported:
            logger.warning("%s: container reports %d frames, only %d decode", path, reported, num)
            self._vr = self._open()  # failed probes can leave decord's read-ahead in an error state
        super().__init__(path, num_frames=num, reported_frames=reported, fps=float(self._vr.get_avg_fps()),
                         orig_size=(int(orig[0]), int(orig[1])), size=size)

    def _open(self) -> Any:
        """A decord reader (at ``_decode_size`` if set) on the GPU when asked for and available, else the CPU."""
        decord = self._decord
        height, width = self._decode_size or (-1, -1)
        if self._want_cuda:
            try:
                reader = decord.VideoReader(self.path, ctx=decord.gpu(self._device_index), width=width, height=height)
                self.device = "cuda"
                return reader
            except Exception as exc:  # decord raises bare DECORDError/RuntimeError; only the CPU remains to try
                logger.info("%s: decord GPU decoding unavailable (%s), using the CPU", self.path, _short_reason(exc))
                self._want_cuda = False
        try:
            return decord.VideoReader(self.path, ctx=decord.cpu(0), width=width, height=height)
        except Exception as exc:
            raise InputError(self.path, f"cannot decode ({_decord_reason(exc)})") from None

    def _try_native_resize(self, size: tuple[int, int]) -> None:
        """Let decord's scaler produce ``size`` when it returns well-formed frames at that size."""
        native, self._decode_size = self._vr, size
        try:
            self._vr = self._open()
            if self._batch([0]).shape[1:3] == size:
                return
        except InputError:
            pass
        logger.debug("%s: decord cannot decode at %s, resizing with OpenCV", self.path, size)
        self._vr, self._decode_size = native, None

    def _batch(self, indices: list[int]) -> np.ndarray:
        """``get_batch`` as a numpy ``NxHxWx3`` array, with decord failures as :class:`InputError`."""
        try:
            batch = self._vr.get_batch(indices).asnumpy()
        except Exception as exc:
            raise InputError(self.path, f"cannot decode frame {indices[0]} ({_decord_reason(exc)})") from None
        if batch.ndim != 4 or batch.shape[0] != len(indices) or batch.shape[3] != 3:
            raise InputError(self.path, f"cannot decode frame {indices[0]} ({_MISSHAPED})")
        return batch

    def _decodes(self, index: int) -> bool:
        try:
            self._batch([index])
            return True
        except InputError:
            return False

    def _decode_chunk(self, chunk: list[int]) -> np.ndarray:
        """One ``get_batch``, retried once on a fresh reader.

        Near a damaged tail decord's read-ahead can fail a batch that decodes fine after reopening.
        """
        try:
            return self._batch(chunk)
        except InputError as exc:
            logger.debug("%s: reopening to retry frames %d-%d (%s)", self.path, chunk[0], chunk[-1], exc.reason)
        self._vr = self._open()
        return self._batch(chunk)

    def _iter(self, wanted: list[int]) -> Iterator[tuple[int, np.ndarray]]:
        for lo in range(0, len(wanted), CHUNK_SIZE):
            chunk = wanted[lo:lo + CHUNK_SIZE]
            for index, frame in zip(chunk, self._decode_chunk(chunk)):
                yield index, _resize(frame, self.size)

    def _release(self) -> None:
        self._vr = None


def _device_index(device: Any) -> int:
    text = str(device)
    return int(text.split(":", 1)[1]) if ":" in text else 0


class PyAVReader(VideoReader):
    """PyAV decoder: frames are identified by their timestamps, decoded in order, kept only when requested."""

    backend = "pyav"

    def __init__(self, path: str, *, max_side: int | None = None, device: Any = "cpu"):
        self._av = av
        try:
            self._container = av.open(path, timeout=30.0 if _is_url(path) else None)
        except Exception as exc:  # av.FFmpegError, OSError, ...
            raise InputError(path, f"cannot decode ({_short_reason(exc)})") from None
        try:
            self._setup(path, max_side)
        except BaseException:
            self._container.close()
            raise

    def _setup(self, path: str, max_side: int | None) -> None:
        """Scan packets (timestamps, keyframes), then validate the count by decoding the first and last frames."""
        if not self._container.streams.video:
            raise InputError(path, "cannot decode (no video stream)")
        self._stream = stream = self._container.streams.video[0]
        check_frame_size(path, int(stream.codec_context.height or 0), int(stream.codec_context.width or 0))
        stream.thread_type = "AUTO"
        packets = self._scan(path)
        pts = [p for p, _ in packets]
        # timestamps identify frames across seeks; without usable ones we count frames from the start
        self._pts: list[int] | None = sorted(pts) if pts and None not in pts and len(set(pts)) == len(pts) else None
        self._index = {p: i for i, p in enumerate(self._pts or [])}
        self._keys = (sorted(self._index[p] for p, key in packets if key) if self._pts else []) or [0]
        self.path = path
        first = next(self._frames_from(0), None)
        if first is None and self._pts is not None:  # decoded frames do not carry the packets' timestamps
            self._pts, self._index, self._keys = None, {}, [0]
            first = next(self._frames_from(0), None)
        if first is None:
            raise InputError(path, "cannot decode (no frame decodes)")
        # a phone video's display matrix says how to turn the coded frames upright; PyAV reports it, we apply it
        self._quarter_turns = round(float(getattr(first[1], "rotation", 0) or 0) / 90) % 4
        if self._quarter_turns * 90 != round(float(getattr(first[1], "rotation", 0) or 0)) % 360:
            logger.warning("%s: display rotation of %s degrees is not a multiple of 90; rotating by %d",
                           path, first[1].rotation, self._quarter_turns * 90)
        orig = (first[1].height, first[1].width)[::-1] if self._quarter_turns % 2 else \
            (first[1].height, first[1].width)
        num = self._count_decodable(len(packets))
        reported = max(int(stream.frames or 0), len(packets))  # stream.frames is 0 when the container omits it
        if num < reported:
            logger.warning("%s: container reports %d frames, only %d decode", path, reported, num)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        super().__init__(path, num_frames=num, reported_frames=reported,
                         fps=float(Fraction(rate)) if rate else 0.0, orig_size=orig, size=target_size(orig, max_side))

    def _scan(self, path: str) -> list[tuple[int | None, bool]]:
        """``(pts, is_keyframe)`` of every video packet that carries data (demuxing only, no decoding)."""
        packets: list[tuple[int | None, bool]] = []
        try:
            for packet in self._container.demux(self._stream):
                if packet.size and not packet.is_discard:
                    packets.append((packet.pts, bool(packet.is_keyframe)))
        except self._av.FFmpegError as exc:  # a truncated file ends the scan early
            logger.debug("%s: demuxing stopped after %d packets (%s)", path, len(packets), _short_reason(exc))
        return packets

    def _count_decodable(self, num_packets: int) -> int:
        """Frames that decode: decode from the last keyframe to the end.

        Decodes from the start when that whole group is lost (or there are no timestamps to seek by).
        """
        for start in dict.fromkeys((self._keys[-1], 0)):
            last = max((index for index, _ in self._frames_from(start)), default=-1)
            if last >= 0:
                return min(last + 1, num_packets)
        return 0

    def _seek(self, index: int) -> None:
        """Position the decoder on the keyframe at or before frame ``index``."""
        if self._pts is None or index == 0:
            self._container.seek(0)
            return
        key = self._keys[bisect.bisect_right(self._keys, index) - 1]
        self._container.seek(self._pts[key], stream=self._stream, backward=True, any_frame=False)

    def _frames_from(self, index: int) -> Iterator[tuple[int, Any]]:
        """``(index, av.VideoFrame)`` from the keyframe before ``index`` on; undecodable packets are skipped."""
        self._seek(index)
        counter = 0
        demuxer = self._container.demux(self._stream)
        while True:
            try:
                packet = next(demuxer)
            except StopIteration:
                return
            except self._av.FFmpegError as exc:  # unreadable rest of the file: flush what the decoder holds
                logger.debug("%s: demuxing stopped (%s)", self.path, _short_reason(exc))
                packet = None
            try:
                frames = packet.decode() if packet is not None else self._stream.codec_context.decode(None)
            except self._av.FFmpegError as exc:
                logger.debug("%s: skipping an undecodable packet (%s)", self.path, _short_reason(exc))
                frames = []
            for frame in frames:
                if self._pts is None:
                    yield counter, frame
                    counter += 1
                elif frame.pts in self._index:
                    yield self._index[frame.pts], frame
            if packet is None:
                return

    def _iter(self, wanted: list[int]) -> Iterator[tuple[int, np.ndarray]]:
        pos = 0
        while pos < len(wanted):
            reseek = False
            for index, frame in self._frames_from(wanted[pos]):
                if index < wanted[pos]:
                    continue
                if index > wanted[pos]:
                    break  # the wanted frame was skipped as undecodable
                rgb = frame.to_ndarray(format="rgb24")
                if self._quarter_turns:  # counterclockwise, as the display matrix means it
                    rgb = np.ascontiguousarray(np.rot90(rgb, self._quarter_turns))
                yield index, _resize(rgb, self.size)
                pos += 1
                if pos == len(wanted):
                    return
                if self._pts is not None and self._should_seek(index, wanted[pos]):
                    reseek = True
                    break
            if not reseek:
                raise InputError(self.path, f"frame {wanted[pos]} does not decode")

    def _should_seek(self, current: int, nxt: int) -> bool:
        """Seek when the next wanted frame lies past a later keyframe than the one we decode from."""
        return self._keys[bisect.bisect_right(self._keys, nxt) - 1] > current + 1

    def _release(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None


def _frame_files(folder: str) -> list[str]:
    """Image files of a frame folder in natural order (``2.jpg`` before ``10.jpg``)."""
    names = [n for n in os.listdir(folder) if Path(n).suffix.lower() in IMAGE_EXTENSIONS and not _is_hidden(n)]
    return [os.path.join(folder, n) for n in sorted(names, key=_natural_key)]


def _read_image(path: str) -> np.ndarray:
    """RGB ``uint8`` HxWx3 image, or :class:`InputError` naming the file."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise InputError(path, f"cannot decode image (cannot read it: {err.strerror or err})") from None
    if data.startswith(b"\xff\xd8") and data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):
        # OpenCV decodes a cut JPEG silently (grey below the cut), which flow would then blame on a shot cut
        raise InputError(path, "truncated JPEG (no end-of-image marker after its image data)")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise InputError(path, "cannot decode image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class FramesReader(VideoReader):
    """A frame folder read image by image with OpenCV."""

    backend = "frames"

    def __init__(self, path: str, *, max_side: int | None = None, fps: float = DEFAULT_FRAMES_FPS):
        if not os.path.isdir(path):
            raise InputError(path, "no such frame folder")
        self._files = _frame_files(path)
        if not self._files:
            raise InputError(path, "no images (.jpg/.jpeg/.png) in frame folder")
        for file in self._files:  # reads only each file's signature: catches empty and non-image files early
            if not cv2.haveImageReader(file):
                raise InputError(file, "not a readable image")
        orig = _read_image(self._files[0]).shape[:2]
        super().__init__(path, num_frames=len(self._files), reported_frames=len(self._files), fps=fps,
                         orig_size=(int(orig[0]), int(orig[1])), size=target_size(orig, max_side))
        self._load(len(self._files) - 1)

    def _load(self, index: int) -> np.ndarray:
        image = _read_image(self._files[index])
        if image.shape[:2] != self.orig_size:
            raise InputError(self._files[index], f"size {image.shape[0]}x{image.shape[1]} differs from the first "
                                                 f"frame's {self.orig_size[0]}x{self.orig_size[1]}")
        return _resize(image, self.size)

    def _iter(self, wanted: list[int]) -> Iterator[tuple[int, np.ndarray]]:
        for index in wanted:
            yield index, self._load(index)


class TorchCodecReader(VideoReader):
    """torchcodec ``VideoDecoder`` (optional: only when the package is installed)."""

    backend = "torchcodec"

    def __init__(self, path: str, *, max_side: int | None = None, device: Any = "cpu"):
        from torchcodec.decoders import VideoDecoder  # noqa: PLC0415 - optional dependency

        try:
            self._decoder = VideoDecoder(path, dimension_order="NHWC", device=str(device))
            first = self._decoder.get_frames_at(indices=[0]).data
        except Exception as exc:
            raise InputError(path, f"cannot decode ({_short_reason(exc)})") from None
        reported = len(self._decoder)
        self.path = path
        num = _last_decodable(reported, self._decodes)
        orig = (int(first.shape[1]), int(first.shape[2]))
        fps = float(self._decoder.metadata.average_fps or 0.0)
        super().__init__(path, num_frames=num, reported_frames=reported, fps=fps, orig_size=orig,
                         size=target_size(orig, max_side))

    def _decodes(self, index: int) -> bool:
        try:
            self._decoder.get_frames_at(indices=[index])
            return True
        except Exception:  # torchcodec raises RuntimeError/IndexError for frames it cannot produce
            return False

    def _iter(self, wanted: list[int]) -> Iterator[tuple[int, np.ndarray]]:
        for lo in range(0, len(wanted), CHUNK_SIZE):
            chunk = wanted[lo:lo + CHUNK_SIZE]
            try:
                batch = self._decoder.get_frames_at(indices=chunk).data.cpu().numpy()
            except Exception as exc:
                raise InputError(self.path, f"cannot decode frame {chunk[0]} ({_short_reason(exc)})") from None
            for index, frame in zip(chunk, batch):
                yield index, _resize(frame, self.size)

    def _release(self) -> None:
        self._decoder = None


def as_source(source: VideoSource | str | os.PathLike[str]) -> VideoSource:
    """A :class:`VideoSource` for a path or URL.

    Args:
        source: a source (returned as it is), a path (a folder is read as a frame folder) or an http(s) URL.

    Returns:
        The source; a path's ``rel`` is its last component, made absolute in ``path``.
    """
    if isinstance(source, VideoSource):
        return source
    item = os.fspath(source)
    if _is_url(item):
        return VideoSource(item, "url", item)
    kind: SourceKind = "frames" if os.path.isdir(item) else "file"
    return VideoSource(os.path.abspath(item), kind, Path(item).name)


def open_video(source: VideoSource | str | os.PathLike[str], *, backend: str = "auto", max_side: int | None = None,
               device: Any = "cpu", frames_fps: float = DEFAULT_FRAMES_FPS) -> VideoReader:
    """Open ``source`` for streaming decoding; bad input raises a one-line :class:`InputError`.

    Frame folders are always read with OpenCV (``frames``), whatever ``backend`` says.

    Args:
        source: a :class:`VideoSource`, a path or a URL (as for :func:`as_source`).
        backend: the video decoder: ``'auto'``, ``'decord'``, ``'pyav'``, ``'frames'`` or ``'torchcodec'``.
            ``'auto'`` means decord on CUDA devices and PyAV on the CPU, each falling back to the other (with a
            warning naming the file) when it is missing or fails to open or decode the file.
        max_side: shrink the longer side to this (never upscales); ``None`` to keep the size.
        device: ``'cuda'`` lets decord decode on the GPU when it was built with CUDA.
        frames_fps: the frame rate reported for frame folders, which carry no timing.

    Returns:
        An open :class:`VideoReader`.

    Raises:
        ValueError: for an unknown ``backend`` or a ``max_side`` below 2.
        InputNotFoundError: when a video file does not exist.
        InputError: when the file is empty, no decoder tried can open or decode it, no decoder is installed, or
            ``backend='frames'`` is asked of a video.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown video backend {backend!r} (choose from {', '.join(BACKENDS)})")
    if max_side is not None and max_side < 2:
        raise ValueError(f"max_side must be >= 2, got {max_side}")
    src = as_source(source)
    if src.kind == "frames":  # the video backend choice does not apply: a run may mix videos and frame folders
        return FramesReader(src.path, max_side=max_side, fps=frames_fps)
    if backend == "frames":
        raise InputError(src.path, "the 'frames' backend reads frame folders only")
    if src.kind == "file":
        if not os.path.isfile(src.path):
            raise InputNotFoundError(src.path, "no such file")
        if os.path.getsize(src.path) == 0:
            raise InputError(src.path, "zero-length file")
    if backend == "decord":
        return DecordReader(src.path, max_side=max_side, device=device)
    if backend == "pyav":
        return PyAVReader(src.path, max_side=max_side, device=device)
    if backend == "torchcodec":
        return TorchCodecReader(src.path, max_side=max_side, device=device)
    # auto: decord where it can decode on the GPU; PyAV on the CPU, where it holds ~45 MB instead of decord's
    # ~1 GB (decord2 loads CUDA libraries and buffers decoded frames, growing past 2 GB on a 10-minute 720p
    # video) and was as fast end to end. Each falls back to the other when it fails on a file.
    readers = [DecordReader, PyAVReader] if _is_cuda(device) else [PyAVReader, DecordReader]
    for i, reader in enumerate(readers):
        try:
            return reader(src.path, max_side=max_side, device=device)
        except ImportError:
            if i == len(readers) - 1:
                raise InputError(src.path, "no video decoder: install av (PyAV) or decord2") from None
            logger.warning("%s: decord is not installed, decoding with PyAV", src.path)
        except InputError as exc:
            if i == len(readers) - 1:
                raise
            logger.warning("%s: %s failed (%s), trying the other decoder", src.path, reader.__name__, exc.reason)
    raise AssertionError("unreachable")
