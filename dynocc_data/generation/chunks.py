"""Running a manifest of chunks: one chunk (``--chunk I``, Slurm job arrays), dynamic claiming, the merge.

**A chunk run** (:func:`run_chunk`) processes the videos of one chunk of a :class:`Manifest` into the manifest's
folder. It writes shards ``<prefix>-c<I:05d>-r<I:03d>-<n>.tar``, the ledger ``ledger-r<I:03d>.jsonl`` (the
writer's names with the chunk index in the place of the rank) and, once finished, the marker
``chunk-c<I:05d>.json``. It is idempotent: a chunk with a marker is not run again; a killed one resumes from its
ledger (finished videos skipped, the others continued after their last committed frame), so a chunk run twice,
one after the other, ends with the samples of one run.

**The videos run in a child process** (spawned), watched by the calling process: it knows which video the child is
on, so with ``video_timeout`` a video that takes longer (a decoder hung with the GIL held cannot be interrupted
by a thread) is abandoned by killing the child, recorded as failed in the ledger (and so in ``stats.json``), and a
new child goes on with the rest. A child that dies during a video (a decoder crashing the process) likewise fails
that video only. The caller also holds the chunk's lease, whose heartbeat thread therefore keeps
beating however stuck the decoder is.

**Claiming** (:func:`claim_chunks`): under ``torchrun``/``srun`` ranks, or with ``--workers N`` (N claimer threads,
each with its own child), every claimer walks the chunks, claims one through an exclusive lease
(:mod:`dynocc_data.storage.lease`, objects under ``<out>/leases/``), runs it, and claims the next. The static plan
gives claimer *s* of *S* the chunks ``i % S == s``; it takes those first, in order, then steals the others from
the end, so a slow claimer's unstarted chunks go to the fast ones and nobody coordinates. A claimer whose process
died stops renewing its lease; after ``lease_ttl`` seconds another claimer takes the chunk over and resumes it.
A claimer that finds its lease taken over (it was silent too long, e.g. a network partition) kills its child at
its next heartbeat. Claimers wait until every chunk is done (to take over a dead claimer's chunk); rank 0 (or the
single process) then merges.

**Merging** (:func:`merge_chunks`, ``dynocc-data merge``) writes ``index.json`` from every ledger and
``stats.json`` from the chunk markers: counts summed, ``failed`` listing failed and abandoned videos and the
videos of unfinished chunks, ``chunks_unfinished`` those chunks. ``frames_written`` and ``shards`` are recounted
from the ledgers; ``frames_processed``, ``pairs`` and the stage times count the attempts that completed (an
attempt killed by the time limit or a crash leaves its committed shards but not its counts).

Test hooks (environment variables, read in the child): ``DYNOCC_TEST_HANG_VIDEO=REL`` makes the video ``REL``
hang forever as a stuck decoder would, ``DYNOCC_TEST_CRASH_VIDEO=REL`` makes it crash the process (SIGSEGV);
``DYNOCC_TEST_CHUNK_GATE=PATH`` makes a chunk wait until ``PATH`` exists
before it starts (an artificially slow rank).

Longer than 500 lines because the chunk run, its watched child process, the claiming loop and the merge share the
chunk's files (ledger, marker, lease), which have to be read together to see that every chunk ends done exactly
once whoever runs it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from .. import storage
from ..errors import DynOccError
from ..storage.lease import Lease, acquire, lease_info
from .config import GenerateConfig, GenerateSummary, RunOptions
from .launch import exit_reason, prepare_state, rank_from_env, start_child, threads_per_worker
from .ledger import rank_ledger
from .manifest import Chunk, Manifest, read_manifest
from .pipeline import resolve_device, run_videos
from .video import VideoSource
from .writer import RunState, write_index

__all__ = ["CHUNK_FORMAT", "ChunkMerge", "chunk_from_env", "claim_chunks", "done_chunks", "generate_manifest",
           "merge_chunks", "run_chunk"]

log = logging.getLogger(__name__)

CHUNK_FORMAT = "dynocc-chunk/1"
HANG_ENV = "DYNOCC_TEST_HANG_VIDEO"
CRASH_ENV = "DYNOCC_TEST_CRASH_VIDEO"
GATE_ENV = "DYNOCC_TEST_CHUNK_GATE"


def _marker_name(index: int) -> str:
    return f"chunk-c{index:05d}.json"


def done_chunks(out: str) -> set[int]:
    """The chunks of a manifest run that are finished (have a marker).

    Args:
        out: the run's folder.

    Returns:
        Their indices (one listing of the folder).
    """
    done = set()
    for name in storage.list_names(out):
        if name.startswith("chunk-c") and name.endswith(".json") and name[7:-5].isdigit():
            done.add(int(name[7:-5]))
    return done


def _read_marker(out: str, index: int) -> dict[str, Any] | None:
    try:
        data = json.loads(storage.read_text(storage.join(out, _marker_name(index)), max_bytes=1 << 26))
    except FileNotFoundError:
        return None
    except (ValueError, OSError) as err:
        log.warning("%s: ignoring an unreadable chunk marker (%s)", storage.join(out, _marker_name(index)), err)
        return None
    return data if isinstance(data, dict) and data.get("format") == CHUNK_FORMAT else None


def chunk_from_env(env: Mapping[str, str] | None = None) -> int | None:
    """The chunk of a Slurm job array task (``SLURM_ARRAY_TASK_ID``).

    Args:
        env: the environment; ``None`` for ``os.environ``.

    Returns:
        The task id; ``None`` outside a job array.

    Raises:
        DynOccError: when the variable is not a non-negative integer.
    """
    env = os.environ if env is None else env
    text = env.get("SLURM_ARRAY_TASK_ID")
    if text is None or text == "":
        return None
    if not text.strip().isdigit():
        raise DynOccError(f"environment variable SLURM_ARRAY_TASK_ID={text!r} is not a chunk index (an integer >= 0)")
    return int(text)


def _check_index(manifest: Manifest, index: int, origin: str) -> Chunk:
    if not 0 <= index < len(manifest.chunks):
        raise DynOccError(f"{origin} {index}: {manifest.url} has {len(manifest.chunks)} chunk(s), "
                          f"0 to {len(manifest.chunks) - 1}")
    return manifest.chunks[index]


def _check_digest(manifest: Manifest, config: GenerateConfig) -> None:
    if config.digest() != manifest.digest:
        raise DynOccError(f"{manifest.url}: planned with other generation parameters (digest {manifest.digest}, "
                          f"these give {config.digest()}); pass the options given to dynocc-data plan")


def _own_records(out: str, index: int) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """The chunk's final video records (video_id -> record) and shard records, from its own ledger."""
    videos, shards = {}, []
    for rec in rank_ledger(out, index).records():
        if rec.get("type") == "video":
            videos[rec["video_id"]] = rec
        elif rec.get("type") == "shard":
            shards.append(rec)
    return videos, shards


def _summary_from_dict(d: Mapping[str, Any] | None, out: str) -> GenerateSummary:
    names = {f.name for f in dataclasses.fields(GenerateSummary)}
    return GenerateSummary(**{**{k: v for k, v in dict(d or {}).items() if k in names}, "out": out})


# ------------------------------------------------------------------------------------------------ the child


@dataclass
class _ChunkJob:
    """What the child process of a chunk needs; picklable."""

    out: str
    config: GenerateConfig
    options: RunOptions
    index: int
    sources: list[VideoSource]
    device: str
    state: RunState
    threads: int | None
    parent_pid: int
    log_level: int = logging.INFO


def _chunk_child(job: _ChunkJob, conn: Any) -> None:
    """Entry point of a chunk's child process: announces each video on ``conn``, then sends the summary."""
    start_child(job.parent_pid, label=f"chunk {job.index}", log_level=job.log_level, threads=job.threads,
                device=job.device)
    gate, hang, crash = os.environ.get(GATE_ENV), os.environ.get(HANG_ENV), os.environ.get(CRASH_ENV)
    while gate and not os.path.exists(gate):
        time.sleep(0.1)

    def on_video(src: VideoSource) -> None:
        conn.send(("video", src.video_id, src.rel))
        while hang and src.rel == hang:  # test hook: a decoder stuck for good
            time.sleep(3600)
        if crash and src.rel == crash:  # test hook: a decoder that crashes the process
            os.kill(os.getpid(), signal.SIGSEGV)

    try:
        summary = run_videos(job.sources, job.out, job.config, job.options, rank=job.index, device=job.device,
                             state=job.state, on_video=on_video)
    except DynOccError as e:
        conn.send(("error", str(e)))
        sys.exit(1)
    conn.send(("done", summary.to_dict()))


def _attempt(job: _ChunkJob, lease: Lease | None, timeout: float | None) -> tuple[str, Any]:
    """Run ``job`` in a spawned child and watch it.

    Returns ``("done", summary dict)``, ``("timeout", (video_id, rel))``, ``("lost", None)`` (the lease was taken
    over), ``("error", message)`` or ``("died", (reason, (video_id, rel) or None))``; the child is gone when this
    returns.
    """
    ctx = multiprocessing.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_chunk_child, args=(job, send), name=f"dynocc-c{job.index:05d}")
    proc.start()
    send.close()
    current, since = None, 0.0
    try:
        while True:
            if recv.poll(0.2):
                try:
                    message = recv.recv()
                except EOFError:  # the child exited without a last word
                    proc.join()
                    return "died", (exit_reason(proc.exitcode), current)
                if message[0] == "video":
                    current, since = (message[1], message[2]), time.monotonic()
                    continue
                proc.join()
                return message[0], message[1]
            if lease is not None and lease.lost.is_set():
                return "lost", None
            if timeout is not None and current is not None and time.monotonic() - since > timeout:
                return "timeout", current
            if not proc.is_alive() and not recv.poll():
                return "died", (exit_reason(proc.exitcode), current)
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join()
        recv.close()


# ------------------------------------------------------------------------------------------------ one chunk


def run_chunk(manifest: Manifest, index: int, config: GenerateConfig, options: RunOptions, *, owner: str,
              device: str = "cpu", lease: Lease | None = None, threads: int | None = None) -> GenerateSummary | None:
    """Process one chunk of ``manifest`` (idempotent: nothing happens for a finished one).

    Args:
        manifest: the manifest.
        index: the chunk.
        config: the generation parameters; their digest must be the manifest's.
        options: how the run is carried out (``prefix``, shard sizes, ``batch_size``, ``video_timeout``).
        owner: who runs it (recorded in the marker).
        device: the device of the child process.
        lease: the chunk's lease, when claimed through one: the run stops if it is taken over.
        threads: CPU threads of the child (torch and OpenCV); ``None`` leaves the defaults.

    Returns:
        The chunk's summary; ``None`` when it was already finished or its lease was lost.

    Raises:
        DynOccError: for a chunk index outside the manifest, other parameters than planned, a child that failed
            or died, or an output folder that cannot be written.
    """
    chunk = _check_index(manifest, index, "chunk")
    out = manifest.out
    _check_digest(manifest, config)
    if _read_marker(out, index) is not None:
        log.info("chunk %d: already finished", index)
        return None
    started = time.time()
    options = dataclasses.replace(options, resume=True, progress=False, prefix=f"{options.prefix}-{chunk.name}")
    state = prepare_state(out, True, manifest.digest, lambda rank: rank == index)  # repairs this chunk's shards
    before, _ = _own_records(out, index)
    summary = GenerateSummary(out=out)
    abandoned, attempts = [], 0
    while True:
        final, _ = _own_records(out, index)
        remaining = [s for s in chunk.videos if s.video_id not in final]
        if not remaining:
            break
        attempts += 1
        job = _ChunkJob(out, config, options, index, remaining, device, state, threads, os.getpid(),
                        logging.getLogger("dynocc_data").getEffectiveLevel())
        kind, value = _attempt(job, lease, options.video_timeout)
        if kind == "done":
            summary.merge(_summary_from_dict(value, out))
            break
        if kind == "lost":
            log.warning("chunk %d: lease taken over by another claimer; leaving the chunk to it", index)
            return None
        if kind == "error" or (kind == "died" and value[1] is None):
            why = f"its worker process ended with {value[0]} before any video" if kind == "died" else value
            raise DynOccError(f"chunk {index} ({manifest.url}): {why}")
        if kind == "timeout":
            (video_id, rel) = value
            reason = f"abandoned: took longer than the time limit of {options.video_timeout:g} s (--video-timeout)"
        else:  # a decoder that crashes the process (a segfault on a corrupt file): that video fails, not the chunk
            why, (video_id, rel) = value
            reason = f"its worker process ended with {why} while processing it"
        log.warning("%s: %s", rel, reason)
        rank_ledger(out, index).append({"type": "video", "video_id": video_id, "video": rel,
                                       "status": "failed", "reason": reason, "samples": None})
        abandoned.append(rel)
        state = prepare_state(out, True, manifest.digest, lambda rank: rank == index)
    final, shards = _own_records(out, index)
    summary.videos_total = len(chunk.videos)
    summary.videos_skipped = len(before)
    summary.videos_done = sum(1 for vid, rec in final.items() if vid not in before and rec.get("status") == "done")
    summary.failed = [{"video": rec["video"], "reason": rec.get("reason", "failed")} for rec in final.values()
                      if rec.get("status") == "failed"]
    summary.frames_written = sum(int(s["count"]) for s in shards)
    summary.shards = len(shards)
    summary.seconds = time.time() - started
    marker = {"format": CHUNK_FORMAT, "chunk": index, "status": "done", "digest": manifest.digest, "owner": owner,
              "host": socket.gethostname(), "pid": os.getpid(), "started": started, "finished": time.time(),
              "attempts": attempts, "abandoned": abandoned, "summary": summary.to_dict()}
    storage.write_atomic(storage.join(out, _marker_name(index)), json.dumps(marker, indent=1, sort_keys=True) + "\n")
    log.info("chunk %d: %d video(s) done, %d failed, %d skipped", index, summary.videos_done, len(summary.failed),
             summary.videos_skipped)
    return summary


# ------------------------------------------------------------------------------------------------ claiming


def claim_chunks(manifest: Manifest, config: GenerateConfig, options: RunOptions, *, slot: int, slots: int,
                 owner: str, device: str = "cpu", threads: int | None = None) -> list[int]:
    """Claim and run chunks until every chunk of ``manifest`` is finished (by anyone).

    Args:
        manifest: the manifest.
        config: the generation parameters.
        options: how the run is carried out (``lease_ttl``, ``poll``, ``video_timeout``, shard options).
        slot: this claimer's place among all claimers (its static share: chunks ``i % slots == slot``).
        slots: the number of claimers.
        owner: this claimer's name in leases and markers (unique among claimers).
        device: the device of its child processes.
        threads: CPU threads of each child.

    Returns:
        The chunks this claimer ran, in order.

    Raises:
        DynOccError: as :func:`run_chunk`.
    """
    n = len(manifest.chunks)
    order = [i for i in range(n) if i % slots == slot] + [i for i in reversed(range(n)) if i % slots != slot]
    leases = storage.join(manifest.out, "leases")
    storage.makedirs(leases)
    ran: list[int] = []
    while True:
        done = done_chunks(manifest.out)
        pending = [i for i in order if i not in done]
        if not pending:
            return ran
        for i in pending:
            lease = acquire(leases, manifest.chunks[i].name, owner, options.lease_ttl)
            if lease is None:
                continue
            with lease:
                if i in done_chunks(manifest.out):  # finished by its previous holder after our listing
                    break
                if run_chunk(manifest, i, config, options, owner=owner, device=device, lease=lease,
                             threads=threads) is not None:
                    ran.append(i)
            break
        else:  # every pending chunk is held by a live claimer: wait, to take over one whose claimer dies
            time.sleep(options.poll)


def _claimer_device(device: str, slot: int) -> str:
    dev = resolve_device(device)
    if dev.type != "cuda" or dev.index is not None:
        return str(dev)
    return f"cuda:{slot % max(1, torch.cuda.device_count())}"


@dataclass
class ChunkMerge:
    """What :func:`merge_chunks` wrote.

    Attributes:
        summary: the summed summary of the finished chunks.
        index: the ``index.json`` object.
        chunks: the number of chunks in the manifest.
        unfinished: ``{"chunk", "unfinished"}`` for each chunk without a marker (its videos not finished).
        owners: chunk -> the claimer that finished it.
    """

    summary: GenerateSummary
    index: dict[str, Any]
    chunks: int
    unfinished: list[dict[str, Any]] = field(default_factory=list)
    owners: dict[int, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The content of ``stats.json``.

        Returns:
            The summary's fields plus ``chunks``, ``chunks_done``, ``chunks_unfinished``, ``chunk_owners`` and
            ``num_samples``.
        """
        return {**self.summary.to_dict(), "chunks": self.chunks, "chunks_done": self.chunks - len(self.unfinished),
                "chunks_unfinished": self.unfinished, "chunk_owners": {str(k): v for k, v in self.owners.items()},
                "num_samples": self.index.get("num_samples", 0)}


def merge_chunks(url: str | os.PathLike) -> ChunkMerge:
    """Write ``index.json`` and ``stats.json`` of a manifest run from its ledgers and chunk markers.

    Args:
        url: the manifest, or the folder holding it.

    Returns:
        What was written (unfinished chunks are listed, not an error: merge again once they are done).

    Raises:
        DynOccError: when there is no manifest.
    """
    manifest = read_manifest(url)
    out = manifest.out
    summary = GenerateSummary(out=out)
    summary.failed += [dict(e) for e in manifest.input_errors]
    summary.videos_total += len(manifest.input_errors)
    result_unfinished, owners = [], {}
    done = done_chunks(out)
    for chunk in manifest.chunks:
        marker = _read_marker(out, chunk.index) if chunk.index in done else None
        if marker is not None and marker.get("digest") == manifest.digest:
            summary.merge(_summary_from_dict(marker.get("summary"), out))
            owners[chunk.index] = str(marker.get("owner"))
            continue
        final, _ = _own_records(out, chunk.index)
        unfinished = [v.rel for v in chunk.videos if v.video_id not in final]
        result_unfinished.append({"chunk": chunk.index, "unfinished": unfinished})
        summary.videos_total += len(chunk.videos)
        summary.failed += [{"video": rel, "reason": f"not finished: chunk {chunk.index} is not done"}
                           for rel in unfinished]
    index = write_index(out, extra={"digest": manifest.digest})
    summary.stage_seconds = {k: round(v, 4) for k, v in summary.stage_seconds.items()}
    result = ChunkMerge(summary, index, len(manifest.chunks), result_unfinished, owners)
    storage.write_atomic(storage.join(out, "stats.json"), json.dumps(result.to_dict(), indent=1, sort_keys=True) + "\n")
    return result


# ------------------------------------------------------------------------------------------------ entry point


def _wait_for_lease(manifest: Manifest, chunk: int, leases: str, owner: str, options: RunOptions) -> Lease | None:
    """The lease of one chunk (``--chunk``), waiting at most one ttl of its current holder.

    A killed task's lease goes stale in that time and is taken over (a requeued array task); a live holder's does
    not (an error). Returns ``None`` when the chunk turns out finished.
    """
    name = manifest.chunks[chunk].name
    deadline = None
    while (lease := acquire(leases, name, owner, options.lease_ttl)) is None:
        if _read_marker(manifest.out, chunk) is not None:
            return None
        info = lease_info(leases, name)
        if deadline is None:
            wait = (info.ttl if info else 0.0) + options.poll
            log.info("chunk %d: claimed by %s; waiting up to %.0f s for it to finish or go silent", chunk,
                     info.owner if info else "?", wait)
            deadline = time.monotonic() + wait
        elif time.monotonic() > deadline:
            raise DynOccError(f"chunk {chunk}: being processed by {info.owner if info else '?'} (its lease is renewed; "
                              f"it is taken over after {info.ttl if info else 0:g} s without a heartbeat)")
        time.sleep(options.poll)
    return lease


def generate_manifest(url: str | os.PathLike, config: GenerateConfig, options: RunOptions | None = None, *,
                      chunk: int | None = None) -> ChunkMerge | GenerateSummary | None:
    """``dynocc-data generate --manifest URL``: one chunk, or claim chunks until all are done.

    One chunk when ``chunk`` is given or ``SLURM_ARRAY_TASK_ID`` is set (a job array task); the task that finds
    every chunk finished after its own merges. Otherwise this process claims chunks with ``options.workers``
    claimer threads (each under ``torchrun``/``srun`` ranks too), and rank 0 merges once all are done.

    Args:
        url: the manifest or its folder.
        config: the generation parameters (those given to ``plan``).
        options: how the run is carried out.
        chunk: the chunk to run; ``None`` for ``SLURM_ARRAY_TASK_ID`` or claiming.

    Returns:
        The merge when this process merged; else the chunk's summary (``None`` if it was already finished or this
        rank claimed without merging).

    Raises:
        DynOccError: for a bad chunk index, a chunk held by a live claimer, other parameters than planned, and as
            :func:`run_chunk`.
    """
    options = options or RunOptions()
    manifest = read_manifest(url)
    _check_digest(manifest, config)
    origin = "--chunk"
    if chunk is None:
        chunk, origin = chunk_from_env(), "SLURM_ARRAY_TASK_ID"
    host = socket.gethostname()
    if chunk is not None:
        _check_index(manifest, chunk, origin)
        leases = storage.join(manifest.out, "leases")
        storage.makedirs(leases)
        owner = f"{host}:{os.getpid()}:chunk{chunk}"
        lease = _wait_for_lease(manifest, chunk, leases, owner, options)
        summary = None
        if lease is not None:
            with lease:
                summary = run_chunk(manifest, chunk, config, options, owner=owner,
                                    device=_claimer_device(options.device, 0))
        if done_chunks(manifest.out) >= set(range(len(manifest.chunks))):
            return merge_chunks(manifest.out)
        return summary
    info = rank_from_env()
    workers = options.workers or max(1, torch.cuda.device_count())
    slots = info.world_size * workers
    threads = threads_per_worker(info.local_world_size * workers)
    run = info.run_id or f"pid{os.getpid()}"  # a torchrun restart keeps its run id: it takes its chunks back at once
    errors: list[BaseException] = []

    def claimer(t: int) -> None:
        slot = info.rank * workers + t
        try:
            claim_chunks(manifest, config, options, slot=slot, slots=slots, owner=f"{host}:{run}:slot{slot}",
                         device=_claimer_device(options.device, info.local_rank * workers + t), threads=threads)
        except BaseException as e:  # noqa: BLE001 - re-raised in the calling thread
            errors.append(e)

    claimers = [threading.Thread(target=claimer, args=(t,), name=f"dynocc-claimer-{t}") for t in range(workers)]
    for c in claimers:
        c.start()
    for c in claimers:
        c.join()
    if errors:
        raise errors[0]
    return merge_chunks(manifest.out) if info.rank == 0 else None
