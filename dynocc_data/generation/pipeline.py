"""Videos in, WebDataset shards of ordinal pairs out (the DynOcc pipeline end to end).

For every selected frame t of a video (every ``stride``-th frame with t-gap and t+gap inside the video):

1. decode frames t-2g .. t+2g (streamed; a bounded window is kept);
2. optical flow t->t+g and t->t-g (and the same for the neighbours t±g, shared when stride divides g);
3. diverging flow edges, thinned and thresholded (:mod:`dynocc_data.generation.boundaries`);
4. depth order by landing the boundary with each side's flow on the neighbours' boundaries
   (:mod:`dynocc_data.generation.ordering`);
5. point pairs across confident boundaries (:mod:`dynocc_data.sampling`);
6. the frame (JPEG), the pairs, the dense boundary annotation and metadata go into a shard
   (:mod:`dynocc_data.generation.writer`).

Frames whose flow cannot be trusted (shot cuts, flow failures: :mod:`dynocc_data.generation.cuts`) and blank
frames make no pairs. Everything after decoding runs as batched torch code on the chosen device.

Longer than 500 lines because the frame processor's window of decoded frames, flows and maps and the run loop
that feeds it share one chunking and eviction contract; a good part of the length is their Args documentation.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torchvision.io import encode_jpeg
from tqdm.auto import tqdm

from .. import _version, storage
from ..errors import DynOccError, InputError
from ..format.sample import encode_sample
from ..sampling import create_sampler, sample_generator
from .boundaries import Boundaries, detect_boundaries, truncated_distance
from .config import GenerateConfig, GenerateSummary, RunOptions
from .cuts import blank_frames, check_grey, photometric_error
from .flow import create_flow
from .ordering import order_boundaries
from .refine import refine_boundaries
from .video import VideoSource, frames_needed, open_video, require_frames, select_frames
from .writer import RunState, ShardWriter, has_ledgers, read_run_state

__all__ = ["FrameProcessor", "FrameResult", "no_pairs_reason", "resolve_device", "run_videos", "video_meta"]

log = logging.getLogger(__name__)

def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The device a run uses.

    Args:
        device: ``"auto"`` (CUDA when available, else CPU) or any device ``torch.device`` accepts.

    Returns:
        The device.

    Raises:
        DynOccError: when a CUDA device is asked for and none is available.
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DynOccError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return dev


class StageTimer:
    """Wall-clock seconds per pipeline stage (synchronising CUDA so the figures are honest)."""

    def __init__(self, device: torch.device):
        self.seconds: dict[str, float] = defaultdict(float)
        self._sync = device.type == "cuda"

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        if self._sync:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self._sync:
                torch.cuda.synchronize()
            self.seconds[stage] += time.perf_counter() - t0


@dataclass
class FrameResult:
    """The outcome of one selected frame: a sample to write (its pieces) or the reason it was rejected.

    Attributes:
        frame: the frame index.
        key: the sample key ``<video_id>_<frame:06d>`` (``None`` when rejected).
        image: uint8 [3,H,W] on the CPU.
        info: the sample's JSON metadata.
        pairs: int64 [N,4] pairs drawn by the config's sampler.
        ordinal: int64 [N] their ordinals.
        boundary: the dense boundary annotation (the ``boundary`` item field).
        num_boundary: the number of boundary points.
        rejected: why the frame was not written (``None`` when it is a sample).
    """

    frame: int
    key: str | None = None
    image: torch.Tensor | None = None
    info: dict[str, Any] | None = None
    pairs: torch.Tensor | None = None
    ordinal: torch.Tensor | None = None
    boundary: dict[str, torch.Tensor] | None = None
    num_boundary: int = 0
    rejected: str | None = None

    @property
    def num_pairs(self) -> int:
        """The number of pairs (0 without any)."""
        return 0 if self.pairs is None else len(self.pairs)

    def encode(self, jpeg_quality: int) -> dict[str, Any]:
        """The shard sample (JPEG-encoded frame, npy arrays, JSON metadata).

        Args:
            jpeg_quality: the JPEG quality, 1..100.

        Returns:
            The sample of :func:`~dynocc_data.format.sample.encode_sample`.
        """
        jpeg = encode_jpeg(self.image, quality=jpeg_quality).numpy().tobytes()
        return encode_sample(self.key, jpeg, self.info, self.pairs, self.ordinal, self.boundary)


class FrameProcessor:
    """Runs steps 2-6 on the frames of one video at a time, in chunks of ``batch_size`` selected frames.

    Holds the flow estimator and a bounded window of decoded frames, flows and boundary maps; frames,
    flows and maps that no later frame needs are dropped after each chunk. When the device runs out of memory a
    chunk is retried in halves, and later chunks use the smaller batch size.

    Args:
        config: what is generated.
        device: where flow (except DIS, always on the CPU) and post-processing run; ``"auto"``: CUDA when
            available.
        batch_size: selected frames processed together (at least 1).
        timer: collects the seconds per stage; default a new :class:`StageTimer`.

    Raises:
        DynOccError: when a CUDA device is asked for and none is available.
    """

    def __init__(self, config: GenerateConfig, *, device: str | torch.device = "auto", batch_size: int = 4,
                 timer: StageTimer | None = None):
        self.config = config
        self.device = resolve_device(device)
        self.batch_size = max(1, int(batch_size))
        flow_device = self.device if config.flow != "dis" else "cpu"
        self.flow = create_flow(config.flow, device=flow_device, **config.flow_options)
        self.sampler = create_sampler(config.sampler, max_pairs=config.max_pairs, **config.sampler_options)
        self.timer = timer or StageTimer(self.device)
        self.gap = config.gap  # the flow gap of the video being processed (see :meth:`process`)
        self._params = config.to_dict()
        self._flow_params = {"backend": config.flow, **getattr(self.flow, "params", {})}

    # ------------------------------------------------------------------ window state
    def _reset(self) -> None:
        self.frames: dict[int, torch.Tensor] = {}
        self.flows: dict[tuple[int, int], torch.Tensor] = {}
        self.bnds: dict[int, Boundaries] = {}
        self.dists: dict[int, torch.Tensor] = {}
        self.floats: dict[int, torch.Tensor] = {}  # frames as float RGB in 0..1, made once when first needed
        self.greys: dict[int, torch.Tensor] = {}  # reduced grey frames of the reliability check, made once

    def _evict(self, before: int) -> None:
        for cache in (self.frames, self.bnds, self.dists, self.floats, self.greys):
            for k in [k for k in cache if k < before]:
                del cache[k]
        for k in [k for k in self.flows if k[0] < before]:
            del self.flows[k]

    # ------------------------------------------------------------------ stages
    def _compute_flows(self, pairs: Sequence[tuple[int, int]]) -> None:
        todo = [p for p in dict.fromkeys(pairs) if p not in self.flows]
        if not todo:
            return
        with self.timer("flow"):
            src = torch.stack([self.frames[a] for a, _ in todo])
            dst = torch.stack([self.frames[b] for _, b in todo])
            flows = self.flow(src, dst).to(self.device, torch.float32)
        for p, f in zip(todo, flows):
            self.flows[p] = f

    def _compute_maps(self, frames: Sequence[int], num_frames: int) -> None:
        g = self.gap
        todo = [m for m in frames if m not in self.bnds]
        if not todo:
            return
        self._compute_flows([(m, m + s) for m in todo for s in (g, -g) if 0 <= m + s < num_frames])
        with self.timer("boundaries"):
            groups: dict[tuple[bool, bool], list[int]] = defaultdict(list)
            for m in todo:
                groups[(m + g < num_frames, m - g >= 0)].append(m)
            for (has_next, has_prev), ms in groups.items():
                fn = torch.stack([self.flows[(m, m + g)] for m in ms]) if has_next else None
                fp = torch.stack([self.flows[(m, m - g)] for m in ms]) if has_prev else None
                bnd = detect_boundaries(fn, fp, self.config.boundary)
                dist = truncated_distance(bnd.mask(), self.config.order.landing_radius)
                for i, m in enumerate(ms):
                    self.bnds[m] = bnd.select(bnd.b == i).rebatch(0, 1)
                    self.dists[m] = dist[i]

    def _order(self, chunk: Sequence[int]):
        g = self.gap
        with self.timer("order"):
            bnd = Boundaries.cat([self.bnds[t] for t in chunk])
            flows = [torch.stack([self.flows[(t, t + g)] for t in chunk]),
                     torch.stack([self.flows[(t, t - g)] for t in chunk])]
            dists = [torch.stack([self.dists[t + g] for t in chunk]), torch.stack([self.dists[t - g] for t in chunk])]
            needed = {t + s for t in chunk for s in (-g, 0, g)}
            new = sorted(needed - self.floats.keys())
            if new:  # each frame takes part in up to three chunks' checks: convert it once
                floats = torch.stack([self.frames[t] for t in new]).float().div_(255)
                greys = check_grey(floats)
                for i, t in enumerate(new):
                    self.floats[t], self.greys[t] = floats[i], greys[i]
            image = torch.stack([self.floats[t] for t in chunk])
            targets = [torch.stack([self.floats[t + s] for t in chunk]) for s in (g, -g)]
            ordered = order_boundaries(bnd, flows, dists, self.config.order, images=image, targets=targets)
            grey = torch.stack([self.greys[t] for t in chunk])
            errors = [photometric_error(grey, torch.stack([self.greys[t + s] for t in chunk]), f,
                                        pixel_threshold=self.config.reliability.pixel_threshold)
                      for s, f in zip((g, -g), flows)]
            unreliable = (torch.stack(errors).amax(0) > self.config.reliability.max_bad_fraction).tolist()
            blank = blank_frames(torch.stack([self.frames[t] for t in chunk]),
                                 min_contrast=self.config.reliability.min_contrast).tolist()
        with self.timer("refine"):
            ordered = refine_boundaries(ordered, image, flows, targets, self.config.refine)
        return ordered, unreliable, blank

    # ------------------------------------------------------------------ public
    def process(self, frames: Iterator[tuple[int, torch.Tensor]], selected: Sequence[int], num_frames: int,
                *, video_id: str, meta: dict[str, Any], gap: int | None = None) -> Iterator[FrameResult]:
        """Process the selected frames of one video.

        Args:
            frames: yields (index, uint8 RGB [3,H,W]) for every index the selected frames need
                (``video.frames_needed``), in increasing order.
            selected: the selected frames (``video.select_frames``), increasing.
            num_frames: the frames of the video that decode.
            video_id: the video's id, the prefix of the sample keys.
            meta: the video-level metadata (video, orig_size, size, scale, fps, stride, gap).
            gap: the flow gap of this video (:meth:`GenerateConfig.frame_steps`); None: the configured one.

        Yields:
            One :class:`FrameResult` per selected frame, in order.
        """
        self.gap = g = self.config.gap if gap is None else gap
        self._reset()
        frames = iter(frames)
        have = -1
        try:
            start = 0
            while start < len(selected):
                chunk = list(selected[start:start + self.batch_size])
                need = max(t + s for t in chunk for s in (0, g, 2 * g) if t + s < num_frames)
                with self.timer("decode"):
                    while have < need:
                        idx, img = next(frames)
                        self.frames[idx] = img.to(self.device, non_blocking=True)
                        have = idx
                yield from self._process_chunk(chunk, num_frames, video_id, meta, sample_generator)
                start += len(chunk)
                if start < len(selected):
                    self._evict(selected[start] - 2 * g)
        finally:
            self._reset()

    def _process_chunk(self, chunk: list[int], num_frames: int, video_id: str, meta: dict[str, Any],
                       sample_generator) -> list[FrameResult]:
        """Steps 2-5 for one chunk of selected frames (already decoded).

        When the device runs out of memory the chunk is retried in halves, and later chunks use the smaller batch
        size.
        """
        g = self.gap
        try:
            self._compute_maps(sorted({t + s for t in chunk for s in (-g, 0, g)}), num_frames)
            ordered, unreliable, blank = self._order(chunk)
            return [self._finish(t, i, ordered, unreliable[i], blank[i], video_id, meta, sample_generator)
                    for i, t in enumerate(chunk)]
        except torch.cuda.OutOfMemoryError:
            if len(chunk) == 1:
                raise
        # retried outside the except block, so that the failed attempt's tensors are freed first
        self.batch_size = min(self.batch_size, (len(chunk) + 1) // 2)
        log.warning("%s: out of memory on a batch of %d frames, retrying in batches of %d", video_id, len(chunk),
                    self.batch_size)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        results: list[FrameResult] = []
        while len(results) < len(chunk):  # the batch size may shrink again inside
            part = chunk[len(results):len(results) + self.batch_size]
            results += self._process_chunk(part, num_frames, video_id, meta, sample_generator)
        return results

    def _finish(self, t, i, ordered, unreliable, blank, video_id, meta, sample_generator) -> FrameResult:
        if blank:
            return FrameResult(t, rejected="blank frame")
        if unreliable:
            return FrameResult(t, rejected="unreliable flow (shot cut?)")
        key = f"{video_id}_{t:06d}"
        with self.timer("sampling"):
            ann = ordered.frame(i)
            size = tuple(self.frames[t].shape[-2:])
            pairs, ordinal = self.sampler(ann, size, sample_generator(self.config.seed, 0, key))
        if len(pairs) < max(1, self.config.min_pairs):
            return FrameResult(t, num_boundary=len(ann["y"]), rejected="no confident boundary")
        info = {**meta, "key": key, "video_id": video_id, "frame": int(t), "num_pairs": int(len(pairs)),
                "num_boundary": int(len(ann["y"])), "flow": self._flow_params, "params": self._params,
                "version": _version.__version__}
        return FrameResult(t, key, self.frames[t].cpu(), info, pairs, ordinal, ann, num_boundary=len(ann["y"]))


# ---------------------------------------------------------------------------------------------- run


def _frame_tensors(reader, indices: Sequence[int]) -> Iterator[tuple[int, torch.Tensor]]:
    for idx, arr in reader.iter_frames(indices):
        yield idx, torch.from_numpy(arr).permute(2, 0, 1).contiguous()


_DONE = object()


def prefetch(items: Iterator, depth: int = 8) -> Iterator:
    """Run ``items`` in a background thread, at most ``depth`` ahead.

    Decoding then overlaps the flow and post-processing of earlier frames (both release the GIL in their native
    code). Exceptions of the producer are re-raised in the consumer; closing the consumer stops the producer.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(_DONE)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            q.put(e)

    thread = threading.Thread(target=produce, name="dynocc-decode", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


class BackgroundWriter:
    """Encodes (JPEG, npy) and writes samples in a worker thread, in order.

    The main thread then goes on with the next frames (on a GPU, the CPU work then overlaps the GPU's). A failure
    in the thread is raised in the main thread at the next call; :meth:`close` waits for everything queued.
    """

    def __init__(self, writer: ShardWriter, jpeg_quality: int, depth: int = 16):
        self.writer, self.jpeg_quality = writer, jpeg_quality
        self.seconds = 0.0  # busy time of the thread
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="dynocc-write", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._q.get()
            if job is _DONE:
                return
            if self._error is not None:
                continue  # drain after a failure
            t0 = time.perf_counter()
            try:
                kind, payload = job
                if kind == "sample":
                    res, video_id = payload
                    self.writer.write(res.encode(self.jpeg_quality), video_id=video_id, frame=res.frame)
                else:
                    self.writer.video_done(payload)
            except BaseException as e:  # noqa: BLE001 - handed to the main thread
                self._error = e
            self.seconds += time.perf_counter() - t0

    def _put(self, job) -> None:
        if self._error is not None:
            raise self._error
        self._q.put(job)

    def write(self, res: FrameResult, video_id: str) -> None:
        self._put(("sample", (res, video_id)))

    def video_done(self, record: dict[str, Any]) -> None:
        self._put(("video", record))

    def close(self) -> None:
        self._q.put(_DONE)
        self._thread.join()
        if self._error is not None:
            raise self._error


def run_videos(sources, out: str | os.PathLike, config: GenerateConfig, options: RunOptions, *, rank: int = 0,
               device: str | torch.device | None = None, state: RunState | None = None,
               timer: StageTimer | None = None, summary: GenerateSummary | None = None,
               on_video: Callable[[VideoSource], None] | None = None) -> GenerateSummary:
    """Process ``sources`` into shards of one rank.

    Args:
        sources: the rank's videos (``video.VideoSource``).
        out: the output folder.
        config: what is generated.
        options: the run's :class:`RunOptions`, passed whole (batch size, resume, shard naming and size, upload,
            progress).
        rank: this rank, in shard and ledger names.
        device: overrides ``options.device`` (the launcher gives each rank its GPU).
        state: with ``options.resume``, what the ledgers say is done (default: read and repair ``out`` here,
            which only one process may do at a time).
        timer: collects the seconds per stage.
        summary: a summary to add to (default a new one).
        on_video: called with each video as its processing starts (the per-video time limit's watchdog).

    Returns:
        The rank's summary.

    Raises:
        DynOccError: when ``out`` already holds shards without ``resume``, or holds a run with other parameters
            with it; and as the shard writer raises (unwritable output, failed upload).
    """
    device = options.device if device is None else device
    resume, progress = options.resume, options.progress
    out = out if storage.is_store(out) else Path(out)
    summary = summary or GenerateSummary(out=str(out))
    t_start = time.perf_counter()
    processor = FrameProcessor(config, device=device, batch_size=options.batch_size, timer=timer)
    timer = processor.timer
    if not resume and has_ledgers(out):
        raise DynOccError(f"{out}: already holds shards; pass --resume to continue that run, or use an empty --out")
    if not resume:
        state = None
    elif state is None:
        state = read_run_state(out, repair=True)
    if state is not None:
        digests = {h.get("digest") for h in state.headers}
        if digests and digests != {config.digest()}:
            raise DynOccError(f"{out}: made with different generation parameters; --resume needs the same "
                              f"ones (or use a new --out)")
    header = {"digest": config.digest(), "params": config.to_dict(), "version": _version.__version__, "rank": rank}
    rejected: Counter[str] = Counter(summary.frames_rejected)
    bars = progress_bars(progress)
    bar_v = tqdm(total=len(sources), desc=f"videos r{rank}", unit="video", disable=not bars, position=0)
    bar_f = tqdm(desc="frames", unit="frame", disable=not bars, position=1, leave=False)
    with ShardWriter(out, prefix=options.prefix, rank=rank, max_count=options.shard_size,
                     max_bytes=options.shard_bytes, header=header, upload=options.upload,
                     staging=options.staging) as shard_writer:
        writer = BackgroundWriter(shard_writer, config.jpeg_quality)
        try:
            _run_sources(sources, writer, processor, config, state, summary, rejected, bar_v, bar_f, t_start,
                         log_videos=progress and not bars, on_video=on_video)
        finally:
            writer.close()
        timer.seconds["encode/write (background)"] += writer.seconds
    summary.shards += len(shard_writer.shards_written)
    bar_f.close()
    bar_v.close()
    summary.frames_rejected = dict(rejected)
    summary.seconds += time.perf_counter() - t_start
    summary.stage_seconds = {k: round(v, 4) for k, v in timer.seconds.items()}
    return summary


def _run_sources(sources, writer: BackgroundWriter, processor: FrameProcessor, config: GenerateConfig, state,
                 summary: GenerateSummary, rejected: Counter, bar_v, bar_f, t_start: float, *,
                 log_videos: bool = False, on_video: Callable[[VideoSource], None] | None = None) -> None:
    """The per-video loop of :func:`run_videos`; ``log_videos``: one plain log line per video (no terminal)."""
    timer = processor.timer
    for src in sources:
        summary.videos_total += 1
        bar_v.update(1)
        if state is not None and src.video_id in state.videos:
            summary.videos_skipped += 1
            continue
        if on_video is not None:
            on_video(src)
        last = state.last_frame.get(src.video_id, -1) if state is not None else -1
        written = pairs = 0
        video_rejected: Counter[str] = Counter()  # this video's rejections: the reason it made no pairs
        try:
            with contextlib.ExitStack() as stack:
                with timer("decode"):
                    reader = stack.enter_context(open_video(src, backend=config.decoder, max_side=config.max_side,
                                                            device=str(processor.device)))
                    stride, gap = config.frame_steps(reader.fps)
                    require_frames(reader, 2 * gap + 1)
                selected = select_frames(reader.num_frames, stride=stride, gap=gap, max_frames=config.max_frames)
                todo = [t for t in selected if t > last]
                meta = video_meta(src, reader, stride=stride, gap=gap)
                needed = frames_needed(todo, gap, num_frames=reader.num_frames)
                frames = prefetch(_frame_tensors(reader, needed))
                for res in processor.process(frames, todo, reader.num_frames, video_id=src.video_id, meta=meta,
                                                  gap=gap):
                    summary.frames_processed += 1
                    bar_f.update(1)
                    if res.rejected is not None:
                        rejected[res.rejected] += 1
                        video_rejected[res.rejected] += 1
                        continue
                    with timer("encode/write"):
                        writer.write(res, src.video_id)
                    written += 1
                    pairs += res.num_pairs
                    summary.boundary_points += res.num_boundary
                    elapsed = time.perf_counter() - t_start
                    bar_f.set_postfix(pairs_per_s=f"{(summary.pairs + pairs) / max(elapsed, 1e-9):.0f}")
        except InputError as e:
            log.warning("%s", e)
            summary.failed.append({"video": src.rel, "reason": e.reason})
            writer.video_done({"video_id": src.video_id, "video": src.rel, "status": "failed",
                               "reason": e.reason, "samples": written})
            summary.frames_written += written
            summary.pairs += pairs
            continue
        summary.videos_done += 1
        summary.frames_written += written
        summary.pairs += pairs
        if written == 0 and last < 0:
            reason = no_pairs_reason(video_rejected, selected)
            log.warning("%s: no pairs (%s)", src.rel, reason)
            summary.no_pairs.append({"video": src.rel, "reason": reason})
        writer.video_done({"video_id": src.video_id, "video": src.rel, "status": "done", "samples": written})
        if log_videos:
            log.info("video %d/%d %s: %d frames written, %d pairs (%.0f s)", summary.videos_total, len(sources),
                     src.rel, written, pairs, time.perf_counter() - t_start)


def progress_bars(progress: bool) -> bool:
    """Progress bars only when asked for and on a terminal (redirected logs get plain lines instead)."""
    return bool(progress) and sys.stderr.isatty()


def video_meta(src: VideoSource, reader: Any, *, stride: int, gap: int) -> dict[str, Any]:
    """The video-level metadata every sample of a video carries (``meta`` of :meth:`FrameProcessor.process`).

    Args:
        src: the video.
        reader: its open reader (``orig_size``, ``size``, ``scale``, ``fps``).
        stride: the frame stride used for this video (:meth:`GenerateConfig.frame_steps`).
        gap: the flow gap used for this video.

    Returns:
        ``video``, ``orig_size``, ``size``, ``scale``, ``fps``, ``stride`` and ``gap``, JSON-ready.
    """
    return {"video": src.rel, "orig_size": list(reader.orig_size), "size": list(reader.size),
            "scale": float(reader.scale), "fps": float(reader.fps), "stride": int(stride), "gap": int(gap)}


def no_pairs_reason(rejected: Counter, selected: Sequence[int]) -> str:
    """Why a video gave no sample, in words for the run summary.

    Args:
        rejected: rejection reason -> number of frames.
        selected: the frames selected for processing.

    Returns:
        One short reason.
    """
    if not selected:
        return "no frame has both flow neighbours"
    if rejected.get("blank frame"):
        return "single-colour frames"
    if rejected.get("unreliable flow (shot cut?)"):
        return "flow unreliable on every frame"
    return "no moving occlusion boundary found (still video?)"
