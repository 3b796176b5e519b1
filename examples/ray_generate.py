"""Generate DynOcc shards with Ray Data on a cluster without Slurm: CPU tasks decode, GPU actors run the pipeline.

::

    python examples/ray_generate.py runs/demo/scenes --out shards-ray/ --num-cpus 2      # local Ray, CPU actors
    python examples/ray_generate.py videos/ --out /data/shards --address auto --device cuda --actors 8 --flow raft

Steps (one Ray Data pipeline, streamed):

1. **List**: the driver finds the videos (``dynocc_data.generation.video.discover_videos``, the same inputs as
   ``dynocc-data generate``); one dataset block per video.
2. **Decode** (``flat_map`` CPU tasks, ``--decode-cpus`` each): a task opens one video (``open_video`` on the CPU,
   i.e. PyAV), selects its frames (``select_frames``) and emits them in windows of ``--window`` selected frames,
   each with every frame the pipeline needs for them (``frames_needed``: t-2g, t-g, t, t+g, t+2g).
3. **Pipeline** (``map_batches`` with an actor pool of ``--actors``, ``num_gpus=1`` each with ``--device cuda``):
   every actor holds one ``dynocc_data.FrameProcessor`` (flow, boundaries, order, refinement, pairs) and turns a
   window into encoded samples (JPEG, npy, JSON: ``FrameResult.encode``) or the reason a frame was rejected.
4. **Write** (the driver): samples arrive in (video, frame) order (``preserve_order``) and go into the package's
   ``ShardWriter`` (ledger, crash-safe commits, ``--upload``) and ``write_index``; ``stats.json`` summarises the
   run. ``DynOccDataset(out)`` reads the folder as it reads one made by ``dynocc-data generate``.

**Same output as** ``dynocc-data generate --workers 1`` with the same options: the same shard names, keys, pairs
and member bytes (``tests/test_ray_recipe.py`` checks it on CPU). A frame's result does not depend on the frames
processed with it (pairs are drawn from a generator seeded by (seed, key), the same property ``--resume``
relies on), so windows change nothing but work: flows of the frames where two windows meet are computed twice
(about ``2 * gap / (window * stride)`` more flow). With ``--device cuda``, ``generate`` decodes with decord on the
GPU and RAFT runs in other batch sizes, so frames and flows, hence pairs, can differ in the last bits there.

Not covered (use ``dynocc-data generate`` for these): ``--resume`` (a killed run is restarted into an empty
``--out``) and the rank/merge files of multi-process runs. The machines need ``dynocc_data`` installed (Ray ships
this script's functions to them by value); only the driver writes, so no shared file system is needed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from dynocc_data import __version__
from dynocc_data.errors import DynOccError, InputError
from dynocc_data.generation import FrameProcessor, GenerateConfig, GenerateSummary
from dynocc_data.generation.lock import hold_output
from dynocc_data.generation.pipeline import no_pairs_reason, resolve_device, video_meta
from dynocc_data.generation.video import (
    VideoSource,
    discover_videos,
    frames_needed,
    open_video,
    require_frames,
    select_frames,
)
from dynocc_data.generation.writer import ShardWriter, run_upload, write_index
from dynocc_data.storage import atomic_write_text
from dynocc_data.tools.cli import add_generation_options, generation_config_from_args, int_at_least, positive_float

log = logging.getLogger("ray_generate")

_EMPTY_FRAMES = np.zeros((0, 1, 1, 3), np.uint8)  # the frames column of a row that carries none


# ------------------------------------------------------------------------------------------ stage 2: decode (CPU)


def _window_row(src: VideoSource, **fields: Any) -> dict[str, Any]:
    """One row of the decode stage; every row has every column (Arrow blocks need one schema)."""
    row = {"video_id": src.video_id, "rel": src.rel, "error": "", "meta": "{}", "num_frames": 0, "last": True,
           "selected": np.zeros(0, np.int64), "indices": np.zeros(0, np.int64), "frames": _EMPTY_FRAMES}
    row.update(fields)
    return row


def decode_windows(row: dict[str, Any], *, config: GenerateConfig, window: int) -> Iterator[dict[str, Any]]:
    """Decode one video into windows of selected frames (a ``flat_map`` function).

    Args:
        row: the video (``path``, ``kind``, ``rel`` of its :class:`VideoSource`).
        config: the generation config (decoder, max side, stride, gap, max frames).
        window: selected frames per window.

    Yields:
        One row per window: ``video_id``, ``rel``, ``meta`` (the video-level metadata as JSON), ``num_frames``,
        ``selected`` (the window's selected frames), ``indices`` and ``frames`` (uint8 ``[N,H,W,3]``: the frames
        they need), ``last`` (the video's last window) and ``error`` (empty); a video that cannot be read gives
        one row whose ``error`` says why.
    """
    src = VideoSource(row["path"], row["kind"], row["rel"])
    try:
        with open_video(src, backend=config.decoder, max_side=config.max_side, device="cpu") as reader:
            stride, gap = config.frame_steps(reader.fps)  # the gap counts frames at config.reference_fps
            require_frames(reader, 2 * gap + 1)
            selected = select_frames(reader.num_frames, stride=stride, gap=gap, max_frames=config.max_frames)
            meta = json.dumps(video_meta(src, reader, stride=stride, gap=gap))
            if not selected:
                yield _window_row(src, meta=meta, num_frames=reader.num_frames)
            for start in range(0, len(selected), window):
                chunk = selected[start:start + window]
                needed = frames_needed(chunk, gap, num_frames=reader.num_frames)
                decoded = list(reader.iter_frames(needed))
                yield _window_row(src, meta=meta, num_frames=reader.num_frames,
                                  last=start + window >= len(selected), selected=np.asarray(chunk, np.int64),
                                  indices=np.asarray([i for i, _ in decoded], np.int64),
                                  frames=np.stack([f for _, f in decoded]))
    except InputError as e:
        yield _window_row(src, error=e.reason)


# ------------------------------------------------------------------------------------------ stage 3: pipeline (actors)


class PipelineActor:
    """Holds one :class:`FrameProcessor` and runs it on windows of decoded frames (a ``map_batches`` class).

    Args:
        config: what is generated.
        device: where flow and post-processing run (inside a Ray GPU actor ``"cuda"`` is the actor's GPU).
        batch_size: selected frames the processor handles together.
    """

    def __init__(self, config: GenerateConfig, device: str, batch_size: int):
        self.config = config
        self.processor = FrameProcessor(config, device=device, batch_size=batch_size)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        """Process every window of ``batch``.

        Args:
            batch: rows of :func:`decode_windows`, as columns.

        Returns:
            Columns of one row per selected frame (``kind`` ``"sample"`` with ``sample``: the encoded members, or
            ``"rejected"`` with ``reason``), plus a ``"failed"`` row for a video that could not be read and an
            ``"end"`` row after a video's last window.
        """
        out: dict[str, list] = {k: [] for k in ("video_id", "rel", "kind", "frame", "reason", "num_pairs",
                                                "num_boundary", "sample")}

        def emit(i: int, kind: str, frame: int = -1, reason: str = "", num_pairs: int = 0, num_boundary: int = 0,
                 sample: dict[str, Any] | None = None) -> None:
            for name, value in (("video_id", str(batch["video_id"][i])), ("rel", str(batch["rel"][i])),
                                ("kind", kind), ("frame", frame), ("reason", reason), ("num_pairs", num_pairs),
                                ("num_boundary", num_boundary), ("sample", sample)):
                out[name].append(value)

        for i in range(len(batch["video_id"])):
            if batch["error"][i]:
                emit(i, "failed", reason=str(batch["error"][i]))
                continue
            frames = zip(batch["indices"][i].tolist(), batch["frames"][i])
            tensors = ((int(j), torch.from_numpy(np.ascontiguousarray(f)).permute(2, 0, 1).contiguous())
                       for j, f in frames)
            selected = batch["selected"][i].tolist()
            meta = json.loads(batch["meta"][i])
            for res in self.processor.process(tensors, selected, int(batch["num_frames"][i]),
                                              video_id=str(batch["video_id"][i]), meta=meta, gap=meta["gap"]):
                if res.rejected is not None:
                    emit(i, "rejected", res.frame, res.rejected, num_boundary=res.num_boundary)
                else:
                    emit(i, "sample", res.frame, num_pairs=res.num_pairs, num_boundary=res.num_boundary,
                         sample=res.encode(self.config.jpeg_quality))
            if batch["last"][i]:
                emit(i, "end")
        return out


# ------------------------------------------------------------------------------------------ stage 4: write (driver)


def write_results(rows: Iterator[dict[str, Any]], writer: ShardWriter, summary: GenerateSummary) -> None:
    """Write the pipeline's rows (in order) into ``writer`` and count them into ``summary``.

    Args:
        rows: rows of :class:`PipelineActor`, in (video, frame) order.
        writer: the open shard writer.
        summary: the summary to add to.
    """
    written: Counter[str] = Counter()
    rejected: dict[str, Counter[str]] = {}
    processed: Counter[str] = Counter()
    for row in rows:
        vid, kind = row["video_id"], row["kind"]
        if kind == "sample":
            sample = {k: v for k, v in row["sample"].items() if v is not None}
            writer.write(sample, video_id=vid, frame=int(row["frame"]))
            written[vid] += 1
            processed[vid] += 1
            summary.pairs += int(row["num_pairs"])
            summary.boundary_points += int(row["num_boundary"])
        elif kind == "rejected":
            rejected.setdefault(vid, Counter())[row["reason"]] += 1
            summary.frames_rejected[row["reason"]] = summary.frames_rejected.get(row["reason"], 0) + 1
            processed[vid] += 1
        elif kind == "failed":
            log.warning("%s: %s", row["rel"], row["reason"])
            summary.videos_total += 1
            summary.failed.append({"video": row["rel"], "reason": row["reason"]})
            writer.video_done({"video_id": vid, "video": row["rel"], "status": "failed", "reason": row["reason"],
                               "samples": 0})
        else:  # "end"
            summary.videos_total += 1
            summary.videos_done += 1
            if written[vid] == 0:
                reason = no_pairs_reason(rejected.get(vid, Counter()), range(processed[vid]))
                log.warning("%s: no pairs (%s)", row["rel"], reason)
                summary.no_pairs.append({"video": row["rel"], "reason": reason})
            writer.video_done({"video_id": vid, "video": row["rel"], "status": "done", "samples": written[vid]})
    summary.frames_processed += sum(processed.values())
    summary.frames_written += sum(written.values())


# ------------------------------------------------------------------------------------------ the run


def build_dataset(sources: Sequence[VideoSource], config: GenerateConfig, *, window: int, actors: int, device: str,
                  batch_size: int, decode_cpus: float):
    """The Ray dataset of the pipeline's rows (lazy: nothing runs before it is iterated).

    Args:
        sources: the videos.
        config: what is generated.
        window: selected frames per decode window.
        actors: pipeline actors.
        device: ``"cpu"`` or ``"cuda"`` (one GPU per actor).
        batch_size: selected frames a processor handles together.
        decode_cpus: CPUs reserved by each decode task.

    Returns:
        The dataset, its rows those of :class:`PipelineActor`, in (video, frame) order.
    """
    import ray  # optional dependency: the ``ray`` extra

    ray.data.DataContext.get_current().execution_options.preserve_order = True  # shards in (video, frame) order
    videos = ray.data.from_items([{"path": s.path, "kind": s.kind, "rel": s.rel} for s in sources],
                                 override_num_blocks=len(sources))
    windows = videos.flat_map(decode_windows, fn_kwargs={"config": config, "window": window}, num_cpus=decode_cpus)
    # one GPU per actor on CUDA; a CPU each as well (JPEG encoding, DIS flow and the sampling run there)
    return windows.map_batches(PipelineActor, fn_constructor_kwargs={"config": config, "device": device,
                                                                     "batch_size": batch_size},
                               batch_size=1, compute=ray.data.ActorPoolStrategy(size=actors),
                               num_gpus=1 if device == "cuda" else 0, num_cpus=1)


def run(inputs: Sequence[str], out: str | Path, config: GenerateConfig, *, window: int = 16, actors: int = 1,
        device: str = "cpu", batch_size: int = 4, decode_cpus: float = 1.0, prefix: str = "dynocc",
        shard_size: int = 1000, upload: str | None = None) -> GenerateSummary:
    """Generate shards into ``out`` through Ray Data (Ray must be initialised).

    Args:
        inputs: video files, folders, frame folders, ``.txt`` lists, URLs (as for ``dynocc-data generate``).
        out: the output folder, empty or new.
        config: what is generated.
        window: selected frames per decode window.
        actors: pipeline actors.
        device: ``"cpu"`` or ``"cuda"``.
        batch_size: selected frames a processor handles together.
        decode_cpus: CPUs reserved by each decode task.
        prefix: the shard names' prefix.
        shard_size: samples per shard at most.
        upload: a shell command template receiving each committed shard (as ``--upload`` of ``generate``).

    Returns:
        The run's summary (also written as ``stats.json``).

    Raises:
        DynOccError: when ``out`` already holds a run, or no video was found.
    """
    import ray  # optional dependency: the ``ray`` extra

    # Ray ships functions of an imported module by reference; the cluster's machines need not have this script
    if __name__ != "__main__":
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    t0 = time.perf_counter()
    out = Path(out)
    sources, errors = discover_videos(inputs)
    summary = GenerateSummary(out=str(out), failed=[{"video": e.path, "reason": e.reason} for e in errors],
                              videos_total=len(errors))
    for e in errors:
        log.warning("%s", e)
    if not sources:
        raise DynOccError(f"{', '.join(map(str, inputs))}: no video found")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DynOccError(f"{out}: cannot write output ({e.strerror or e})") from None
    header = {"digest": config.digest(), "params": config.to_dict(), "version": __version__, "rank": 0}
    with hold_output(out):  # one writer per folder, as for generate
        if any(out.glob("ledger-r*.jsonl")):
            raise DynOccError(f"{out}: already holds shards; use an empty --out (this recipe does not resume)")
        rows = build_dataset(sources, config, window=window, actors=actors, device=device, batch_size=batch_size,
                             decode_cpus=decode_cpus).iter_rows()
        with ShardWriter(out, prefix=prefix, rank=0, max_count=shard_size, header=header, upload=upload) as writer:
            write_results(rows, writer, summary)
        summary.shards = len(writer.shards_written)
        index = write_index(out, extra={"digest": config.digest()})
    summary.seconds = time.perf_counter() - t0
    stats = {**summary.to_dict(), "num_samples": index.get("num_samples", 0), "launcher": "ray"}
    atomic_write_text(out / "stats.json", json.dumps(stats, indent=1, sort_keys=True) + "\n")
    for name in ("index.json", "stats.json") if upload else ():  # the remote folder then reads like a local one
        run_upload(upload, out / name, name)
    return summary


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (the generation options are those of ``dynocc-data generate``).

    Args:
        argv: the arguments (default ``sys.argv[1:]``).

    Returns:
        The parsed options.
    """
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", help="video files, folders (recursive), frame folders, .txt lists, URLs")
    p.add_argument("--out", required=True, help="output folder (empty or new)")
    r = p.add_argument_group("ray")
    r.add_argument("--address", default=None,
                   help="Ray cluster to join ('auto': the one this machine belongs to); default: start Ray here")
    r.add_argument("--num-cpus", type=int_at_least(1), default=None,
                   help="CPUs of a Ray started here (default: all)")
    r.add_argument("--actors", type=int_at_least(1), default=1, help="pipeline actors (one GPU each on CUDA)")
    r.add_argument("--window", type=int_at_least(1), default=16, help="selected frames per decode task output")
    r.add_argument("--decode-cpus", type=positive_float, default=1.0, help="CPUs reserved per decode task")
    r.add_argument("--upload", default=None, metavar="CMD",
                   help="shell command receiving each finished shard on stdin, {name} its file name")
    add_generation_options(p)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> GenerateSummary:
    """Run the recipe from the command line (joins or starts Ray unless it is already initialised).

    Args:
        argv: the arguments (default ``sys.argv[1:]``).

    Returns:
        The run's summary.
    """
    import ray  # optional dependency: the ``ray`` extra

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = generation_config_from_args(args)
    # "cuda" is the actors' GPUs (the driver may have none); "auto" is decided by the driver's machine
    device = "cuda" if args.device == "cuda" else resolve_device(args.device).type
    if not ray.is_initialized():
        ray.init(address=args.address, num_cpus=args.num_cpus if args.address is None else None,
                 include_dashboard=False)
    summary = run(args.inputs, args.out, config, window=args.window, actors=args.actors, device=device,
                  batch_size=args.batch_size, decode_cpus=args.decode_cpus, prefix=args.prefix,
                  shard_size=args.shard_size, upload=args.upload)
    d = summary.to_dict()
    print(f"videos: {d['videos_done']} done, {len(d['failed'])} failed; frames: {d['frames_processed']} processed, "
          f"{d['frames_written']} written; pairs: {d['pairs']} in {d['shards']} shard(s); {d['seconds']:.1f} s")
    print(f"wrote {args.out}/index.json and {args.out}/stats.json")
    return summary


if __name__ == "__main__":
    try:
        main()
    except DynOccError as e:
        sys.exit(f"error: {e}")
