"""Scale-out generation: worker processes on one machine, ranks across machines, fault reports, the merge.

:func:`dynocc_data.generate` runs through :func:`generate_parallel`, in one of three ways that all end
with the same output folder (shards, ``index.json``, ``stats.json``):

* **one process** (``workers=1``): the videos are processed in the calling process;
* **worker processes** (``workers=N``, ``--workers N``; ``None``/``auto`` is one per GPU when the device is CUDA,
  else 1): the caller partitions the videos, starts N processes with the ``spawn`` start method (worker i uses
  GPU ``i % num_gpus`` on CUDA; on the CPU each worker gets ``cores // N`` torch and OpenCV threads), waits,
  reports any that died (rank, exit code, unfinished videos) while the others finish, then merges. Workers die
  with their parent (``PR_SET_PDEATHSIG`` on Linux, and a watchdog thread), so a killed run leaves no orphan
  writing into the folder;
* **ranks** started by ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``LOCAL_WORLD_SIZE``) or by Slurm's
  ``srun`` (``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID``, only inside a job *step*: the batch script
  itself also carries ``SLURM_NTASKS`` but is one process), on any number of machines sharing the output
  folder. Every rank discovers the same inputs and takes its part of the same partition; rank 0 then waits for
  the others' markers (polling the folder, ``merge_timeout`` seconds at most) and merges. Nothing talks over
  the network: ``dynocc-data merge OUT`` merges explicitly (e.g. after a timeout).

**Partition.** Videos go to ranks by size, greedily (largest first, to the least loaded rank, ties by name),
so ranks finish together; the same inputs always give the same partition. Sizes: the file's bytes, the sum of a
frame folder's images, the mean of the known sizes for URLs.

**Folder.** Each rank writes its own shards ``<prefix>-r<rank>-<seq>.tar`` and ledger ``ledger-r<rank>.jsonl``
(:mod:`dynocc_data.generation.writer`), and a marker ``rank-r<rank>.json``: the videos assigned to it, its pid and host,
``status`` (``running``, ``done`` or ``failed``) and, when finished, its summary. The merge turns the ledgers into
one ``index.json`` and the markers into one ``stats.json`` (counts summed; ``workers`` lists every rank,
``workers_failed`` those that died or failed, with the videos they left unfinished).

**Resume.** ``resume=True`` continues any interrupted run, with any number of workers or ranks: the ledgers of
every rank say which videos are finished and up to which frame the others got, so a run killed at any moment
(``kill -9``) ends with exactly the samples of an uninterrupted one, each with the same pairs (pairs are drawn
from a generator seeded by ``(seed, key)``). Before starting, unfinished ``.partial`` shards are deleted and
committed ones completed (:func:`repair_run`; a rank repairs only its own shards, so ranks can start at
different times).

**Remote storage.** ``upload='CMD {name}'`` (``--upload``, optionally written ``pipe:CMD {name}``) sends every
committed shard to a shell command that reads it on stdin, e.g. ``aws s3 cp - s3://bucket/run/{name}``: the shard
is staged in the output folder as ``.partial``, fed to the command, and committed in the ledger only when the
command exits 0 (otherwise the run stops with the command's exit status and last output; the shard is not
committed). The local folder keeps ledgers and markers; after the merge, ``index.json`` and ``stats.json`` are
uploaded the same way, so the remote folder reads like a local one. Use a command that creates its object
atomically (object stores do; for a file system: ``cat > D/{name}.part && mv D/{name}.part D/{name}``).
Inputs may be http(s) URLs: the decoders read them directly.

**Output URLs.** ``out`` may also be an fsspec URL (``s3://bucket/run``, ``gs://...``, ``memory://...``): shards are
staged locally (``staging``, default a temporary folder) and uploaded whole before their commit, the ledgers are one
object per record, and markers, ``index.json`` and ``stats.json`` are objects, all through
:mod:`dynocc_data.storage`; the locks are objects too (:mod:`dynocc_data.generation.lock`: a ``kill -9`` leaves
its lock, which ``--resume`` takes over). No shared file system is needed.

Longer than 500 lines because the three ways a run is launched (one process, local worker processes, torchrun/srun
ranks) share the folder state, the rank markers and the merge, which have to be read together to see that all three
end in the same shards.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import re
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import cv2
import torch
from tqdm.auto import tqdm

from .. import storage
from ..errors import DynOccError
from ..format.files import PARTIAL, atomic_write_text
from .config import GenerateConfig, GenerateSummary, RunOptions
from .lock import hold_output
from .pipeline import progress_bars, resolve_device, run_videos
from .video import IMAGE_EXTENSIONS, VideoSource, discover_videos
from .writer import (
    RunState,
    has_ledgers,
    open_ledgers,
    read_run_state,
    repair_store,
    run_upload,
    upload_command,
    write_index,
)

__all__ = [
    "RankInfo",
    "generate",
    "Plan",
    "MergeResult",
    "WorkerFailure",
    "rank_from_env",
    "video_weight",
    "partition",
    "available_cores",
    "threads_per_worker",
    "limit_threads",
    "die_with_parent",
    "start_child",
    "resolve_workers",
    "repair_run",
    "read_markers",
    "wait_for_ranks",
    "merge_run",
    "generate_parallel",
]

log = logging.getLogger(__name__)

MARKER_FORMAT = "dynocc-rank/1"
_MARKER_RE = re.compile(r"^rank-r(\d+)\.json$")
_SHARD_RE = re.compile(r"^.+-r(\d+)-\d+\.tar$")
_FINISHED = ("done", "failed")


class WorkerFailure(DynOccError, RuntimeError):
    """Some workers or ranks died or failed; the others finished and the merge was written (see ``result``).

    Args:
        message: the one-line message naming the ranks, why they failed and their unfinished videos.
        result: what the merge wrote (kept as ``result``).
    """

    def __init__(self, message: str, result: "MergeResult"):
        super().__init__(message)
        self.result = result


# ------------------------------------------------------------------------------------------------ ranks


@dataclass(frozen=True)
class RankInfo:
    """Where this process stands in a multi-process run (from the launcher's environment variables).

    Attributes:
        rank: this process's rank, ``0 <= rank < world_size``.
        world_size: the number of ranks.
        local_rank: the rank among the processes of this machine.
        local_world_size: the number of ranks on this machine.
        launcher: ``torchrun`` (or any launcher setting ``RANK``/``WORLD_SIZE``), ``slurm`` (``srun``) or ``none``.
        run_id: identifies one launch (``DYNOCC_RUN_ID``, torchrun's rendezvous id, or the Slurm job and step).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    launcher: str = "none"
    run_id: str | None = None

    @property
    def distributed(self) -> bool:
        """Whether there is more than one rank."""
        return self.world_size > 1

    def owns(self, rank: int) -> bool:
        """Whether this rank repairs the shards of ``rank``.

        Args:
            rank: the rank that wrote the shards.

        Returns:
            True for its own rank; on rank 0 also for ranks that no longer exist, left by an earlier launch with
            more ranks.
        """
        return rank == self.rank or (self.rank == 0 and rank >= self.world_size)


def _env_int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise DynOccError(f"environment variable {name}={env[name]!r} is not an integer") from None


def _leading_int(text: str | None, default: int) -> int:
    match = re.match(r"\s*(\d+)", text or "")
    return int(match.group(1)) if match else default


def rank_from_env(env: Mapping[str, str] | None = None) -> RankInfo:
    """Rank and world size from the launcher's environment variables.

    Reads ``torchrun``'s (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``) or an ``srun`` job
    step's (``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS``/``SLURM_NTASKS``, ``SLURM_LOCALID``); torchrun's win
    (``srun torchrun ...``).

    Args:
        env: the environment to read; ``None`` for ``os.environ``.

    Returns:
        The rank information; a single process (rank 0 of 1) when neither launcher's variables are set.

    Raises:
        DynOccError: when a variable is not an integer or the rank is not inside the world.
    """
    env = os.environ if env is None else env
    run_id = env.get("DYNOCC_RUN_ID") or None
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world = _env_int(env, "RANK"), _env_int(env, "WORLD_SIZE")
        local = _env_int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0
        local_world = _env_int(env, "LOCAL_WORLD_SIZE") if "LOCAL_WORLD_SIZE" in env else 1
        elastic = env.get("TORCHELASTIC_RUN_ID", "")
        run_id = run_id or (elastic if elastic not in ("", "none") else None)
        launcher, names = "torchrun", "RANK/WORLD_SIZE"
    elif "SLURM_PROCID" in env and ("SLURM_STEP_ID" in env or "SLURM_STEPID" in env):
        rank = _env_int(env, "SLURM_PROCID")
        world = _env_int(env, "SLURM_STEP_NUM_TASKS" if "SLURM_STEP_NUM_TASKS" in env else "SLURM_NTASKS")
        local = _env_int(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0
        local_world = _leading_int(env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE"), 1)
        step = env.get("SLURM_STEP_ID", env.get("SLURM_STEPID", ""))
        run_id = run_id or f"slurm-{env.get('SLURM_JOB_ID', '?')}.{step}"
        launcher, names = "slurm", "SLURM_PROCID/SLURM_NTASKS"
    else:
        return RankInfo(run_id=run_id)
    if world < 1 or not 0 <= rank < world:
        raise DynOccError(f"environment: {names} = {rank}/{world} is not a rank of the world")
    local_world = max(1, local_world)
    return RankInfo(rank, world, max(0, local), local_world, launcher, run_id)


# ------------------------------------------------------------------------------------------------ partition


def video_weight(source: VideoSource) -> int | None:
    """The work a video stands for, in bytes.

    Args:
        source: the video.

    Returns:
        The file's size, or the sum of a frame folder's image sizes; ``None`` when unknown (URLs, unreadable
        paths).
    """
    try:
        if source.kind == "file":
            return os.path.getsize(source.path)
        if source.kind == "frames":
            with os.scandir(source.path) as entries:
                return sum(e.stat().st_size for e in entries
                           if os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS and e.is_file())
    except OSError:
        return None
    return None


def partition(sources: Sequence[VideoSource], world_size: int,
              weights: Sequence[int | None] | None = None) -> list[list[VideoSource]]:
    """Split ``sources`` into ``world_size`` parts of about equal total weight.

    Greedy: heaviest first, each to the least loaded part; ties by fewer videos, then lower rank. Deterministic:
    same sources and weights, same parts.

    Args:
        sources: the videos.
        world_size: the number of parts (>= 1).
        weights: one weight per source; default :func:`video_weight`. Unknown (``None``) weights count as the
            mean of the known ones.

    Returns:
        ``world_size`` lists of sources, each in the order of ``sources``.

    Raises:
        ValueError: when ``world_size < 1`` or there are not as many weights as sources.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    ws = list(weights) if weights is not None else [video_weight(s) for s in sources]
    if len(ws) != len(sources):
        raise ValueError(f"{len(ws)} weights for {len(sources)} sources")
    known = [int(w) for w in ws if w is not None]
    fill = round(sum(known) / len(known)) if known else 1
    ws = [max(0, int(w)) if w is not None else fill for w in ws]
    order = sorted(range(len(sources)), key=lambda i: (-ws[i], sources[i].rel, sources[i].path))
    loads, counts = [0] * world_size, [0] * world_size
    parts: list[list[int]] = [[] for _ in range(world_size)]
    for i in order:
        r = min(range(world_size), key=lambda k: (loads[k], counts[k], k))
        loads[r] += ws[i]
        counts[r] += 1
        parts[r].append(i)
    return [[sources[i] for i in sorted(p)] for p in parts]


@dataclass
class Plan:
    """The partition of one launch: which rank processes which videos, under which parameters.

    Attributes:
        world_size: the number of ranks.
        digest: :meth:`GenerateConfig.digest` of the run.
        parts: the videos of each rank.
        run_id: identifies the launch (see :class:`RankInfo`).
    """

    world_size: int
    digest: str
    parts: list[list[VideoSource]]
    run_id: str | None = None

    @classmethod
    def make(cls, sources: Sequence[VideoSource], world_size: int, digest: str,
             run_id: str | None = None) -> "Plan":
        """The plan that splits ``sources`` with :func:`partition`.

        Args:
            sources: the videos of the run.
            world_size: the number of ranks.
            digest: :meth:`GenerateConfig.digest` of the run.
            run_id: identifies the launch.

        Returns:
            The plan.
        """
        return cls(world_size, digest, partition(sources, world_size), run_id)

    def rank_digest(self, rank: int) -> str:
        """Fingerprint of one rank's assignment: a marker with another one belongs to another launch.

        Args:
            rank: the rank.

        Returns:
            16 hex digits of the SHA-1 of the world size, the rank, the digest and the rank's video ids.
        """
        ids = [s.video_id for s in self.parts[rank]]
        text = json.dumps([self.world_size, rank, self.digest, ids])
        return hashlib.sha1(text.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ threads


def available_cores() -> int:
    """CPU cores this process may run on.

    Returns:
        The size of its affinity mask (e.g. a Slurm allocation); ``os.cpu_count()`` where there is none.
    """
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """CPU threads for each of ``workers`` processes sharing ``cores``.

    Args:
        workers: the number of processes.
        cores: the cores to share; default :func:`available_cores`.

    Returns:
        ``cores // workers``, at least 1.
    """
    return max(1, (cores or available_cores()) // max(1, workers))


def limit_threads(n: int) -> None:
    """Cap torch's and OpenCV's thread pools (call before heavy work starts).

    Args:
        n: the number of threads of each.
    """
    torch.set_num_threads(n)
    cv2.setNumThreads(n)


def resolve_workers(workers: int | None, device: str = "auto") -> int:
    """The number of local worker processes.

    Args:
        workers: the number asked for; ``None`` (``--workers auto``) for one per GPU when the device is CUDA,
            else 1.
        device: the run's device (``"auto"``: CUDA when available).

    Returns:
        The number of workers.

    Raises:
        DynOccError: when ``workers`` is below 1.
    """
    if workers is None:
        return max(1, torch.cuda.device_count()) if resolve_device(device).type == "cuda" else 1
    if int(workers) < 1:
        raise DynOccError(f"--workers must be at least 1 (got {workers})")
    return int(workers)


def _rank_device(device: str, local_rank: int, world: int) -> str:
    """The device of one rank: on CUDA with several processes, GPU ``local_rank % num_gpus``."""
    dev = resolve_device(device)
    if dev.type != "cuda" or world <= 1 or dev.index is not None:
        return str(dev)
    return f"cuda:{local_rank % max(1, torch.cuda.device_count())}"


# ------------------------------------------------------------------------------------------------ folder state


def _partial_json_files(out: Path | str, names: Sequence[str]) -> list[str]:
    """Temporaries of :func:`atomic_write_text` for ``names`` (``<name>.<pid>.partial``) left by a killed run."""
    return [storage.join(out, n) for n in storage.list_names(out) for name in names
            if n.startswith(f"{name}.") and n.endswith(PARTIAL)]


def repair_run(out: str | os.PathLike, ranks: Callable[[int], bool] | None = None) -> RunState:
    """Make ``out`` consistent after an interruption and return what its ledgers say is done.

    ``.partial`` shards committed in a ledger are completed (renamed; deleted when the committed copy was
    uploaded), uncommitted ones deleted, and committed local shards must exist.

    Args:
        out: the output folder.
        ranks: accepts the ranks whose shards may be touched (other ranks may be writing theirs right now);
            ``None`` for all.

    Returns:
        The state of all ledgers.

    Raises:
        DynOccError: when a committed local shard of an accepted rank is missing on disk.
    """
    if storage.is_store(out):
        return repair_store(os.fspath(out), ranks)
    out = Path(out)
    state = read_run_state(out)
    committed = {s["url"]: s for s in state.shards}

    def mine(name: str) -> bool:
        match = _SHARD_RE.match(name)
        return ranks is None or (match is not None and ranks(int(match.group(1))))

    for partial in sorted(out.glob(f"*.tar{PARTIAL}")):
        name = partial.name[: -len(PARTIAL)]
        if not mine(name):
            continue
        rec = committed.get(name)
        if rec is None:
            log.info("%s: removing a shard left unfinished by an interrupted run", partial)
            partial.unlink(missing_ok=True)
        elif rec.get("remote"):
            log.info("%s: uploaded and committed before the interruption, removing the local copy", partial)
            partial.unlink(missing_ok=True)
        else:
            log.info("%s: committed before the interruption, completing the rename", out / name)
            os.replace(partial, out / name)
    for s in state.shards:
        if not s.get("remote") and mine(s["url"]) and not (out / s["url"]).exists():
            raise DynOccError(f"{out / s['url']}: committed in the ledger but missing on disk")
    return state


def prepare_state(out: Path, resume: bool, digest: str, ranks: Callable[[int], bool] | None = None) -> RunState:
    """What is already done in ``out`` before a rank starts.

    With ``resume``, the repaired ledgers (see :func:`repair_run`; same parameters required); without, nothing,
    and ``out`` must hold no ledger of the ranks accepted by ``ranks`` (a new run into a used folder would
    duplicate its samples).
    """
    if not resume:
        ledgers = {rank: ledger for rank, ledger in open_ledgers(out).items() if ranks is None or ranks(rank)}
        if ledgers and not read_run_state(out).shards and not any(".tar" in n for n in storage.list_names(out)):
            # a run that failed before committing any shard (every input bad, killed early): nothing to keep
            for rank, ledger in ledgers.items():
                log.info("%s: left by a run that wrote no shard; starting afresh", ledger.path)
                ledger.delete()
                storage.remove(marker_path(out, rank))
            return RunState()
        if ledgers:
            raise DynOccError(f"{out}: already holds shards; pass --resume to continue that run, or use an "
                              f"empty --out")
        return RunState()
    state = repair_run(out, ranks)
    digests = {h.get("digest") for h in state.headers}
    if digests and digests != {digest}:
        raise DynOccError(f"{out}: made with different generation parameters; --resume needs the same ones "
                          f"(or use a new --out)")
    return state


def marker_path(out: str | os.PathLike, rank: int) -> str:
    return storage.join(out, f"rank-r{rank:03d}.json")


def _write_marker(out: Path | str, marker: Mapping[str, Any]) -> None:
    path = marker_path(out, marker["rank"])
    try:
        atomic_write_text(path, json.dumps(dict(marker), indent=1, sort_keys=True) + "\n")
    except OSError as e:  # a read-only or full output folder
        raise DynOccError(f"{path}: cannot write the rank marker ({e.strerror or e})") from None


def read_markers(out: str | os.PathLike) -> dict[int, dict[str, Any]]:
    """Read the rank markers (``rank-r<rank>.json``) of a run.

    Args:
        out: the output folder.

    Returns:
        rank -> marker, for the markers of this format; unreadable ones are skipped with a warning.
    """
    markers = {}
    for name in storage.list_names(out):
        match = _MARKER_RE.match(name)
        if not match:
            continue
        path = storage.join(out, name)
        try:
            data = json.loads(storage.read_text(path))
        except FileNotFoundError:  # replaced between listing and reading
            continue
        except (OSError, ValueError) as e:
            log.warning("%s: ignoring an unreadable rank marker (%s)", path, e)
            continue
        if isinstance(data, dict) and data.get("format") == MARKER_FORMAT:
            markers[int(match.group(1))] = data
    return markers


def _clear_run_files(out: Path | str, ranks: Callable[[int], bool] | None = None) -> None:
    """Delete markers (of the ranks accepted by ``ranks``; all without) and temporaries of killed writers."""
    for rank in read_markers(out):
        if ranks is None or ranks(rank):
            storage.remove(marker_path(out, rank))
    for name in storage.list_names(out):
        match = re.match(r"^rank-r(\d+)\.json\..*" + re.escape(PARTIAL) + "$", name)
        if match and (ranks is None or ranks(int(match.group(1)))):
            storage.remove(storage.join(out, name))


def _finished_videos(state: RunState) -> set[str]:
    return {vid for vid, rec in state.videos.items() if rec.get("status") in ("done", "failed")}


class LedgerTail:
    """Follows the ledgers of a folder as they grow (for progress bars): finished video ids so far."""

    def __init__(self, out: Path):
        self.out = out
        self._offsets: dict[Path, int] = {}
        self.videos: set[str] = set()

    def poll(self) -> set[str]:
        if storage.is_store(self.out):  # records are objects: read them whole
            self.videos |= set(read_run_state(self.out).videos)
            return self.videos
        for path in sorted(self.out.glob("ledger-r*.jsonl")):
            start = self._offsets.get(path, 0)
            try:
                with open(path, "rb") as f:
                    f.seek(start)
                    data = f.read()
            except OSError:
                continue
            end = data.rfind(b"\n") + 1  # complete lines only
            self._offsets[path] = start + end
            for line in data[:end].splitlines():
                if b'"type": "video"' in line:
                    try:
                        self.videos.add(json.loads(line)["video_id"])
                    except (ValueError, KeyError):
                        pass
        return self.videos


# ------------------------------------------------------------------------------------------------ options


# ------------------------------------------------------------------------------------------------ one rank


@dataclass
class RankJob:
    """Everything one rank (in-process or a spawned worker) needs; picklable."""

    out: str
    config: GenerateConfig
    options: RunOptions
    rank: int
    world_size: int
    sources: list[VideoSource]
    plan_digest: str
    device: str
    run_id: str | None = None
    input_errors: list[dict[str, str]] = field(default_factory=list)
    threads: int | None = None
    parent_pid: int | None = None
    log_level: int = logging.INFO


def _run_rank(job: RankJob, state: RunState, progress: bool) -> GenerateSummary:
    """Process one rank's videos (``state``: what is already done), keeping its marker up to date.

    The marker says ``running``, then ``done`` or ``failed``.
    """
    out = job.out
    marker = {"format": MARKER_FORMAT, "rank": job.rank, "world_size": job.world_size, "run_id": job.run_id,
              "plan": job.plan_digest, "digest": job.config.digest(), "status": "running", "pid": os.getpid(),
              "host": socket.gethostname(), "device": job.device, "started": time.time(), "finished": None,
              "upload": job.options.upload, "input_errors": job.input_errors,
              "videos": [{"video_id": s.video_id, "video": s.rel} for s in job.sources],
              "summary": None, "error": None}
    _write_marker(out, marker)
    options = dataclasses.replace(job.options, resume=True, progress=progress)  # the state is read already
    try:
        summary = run_videos(job.sources, out, job.config, options, rank=job.rank, device=job.device, state=state)
    except BaseException as e:
        marker.update(status="failed", error=" ".join(str(e).split()) or type(e).__name__, finished=time.time())
        try:
            _write_marker(out, marker)
        except DynOccError as marker_error:  # the folder that failed the run may refuse the marker too
            log.warning("%s", marker_error)
        raise
    marker.update(status="done", summary=summary.to_dict(), finished=time.time())
    _write_marker(out, marker)
    return summary


def die_with_parent(parent_pid: int) -> None:
    """Make this worker die when the process that started it dies (so no orphan keeps writing shards).

    Args:
        parent_pid: the pid of the starting process.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the watchdog below does it, within a second
        pass

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGKILL)

    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGKILL)
    threading.Thread(target=watch, name="dynocc-parent-watch", daemon=True).start()


def start_child(parent_pid: int | None, *, label: str, log_level: int, threads: int, device: str) -> None:
    """Set up a spawned worker or chunk process: die with the parent, log with a label, share threads, pick a GPU.

    Args:
        parent_pid: the starting process (``None``: not tied to one).
        label: what the log lines of this process say it is (``rank 3``, ``chunk 12``).
        log_level: the logging level of the parent.
        threads: torch/OpenCV threads for this process (0 leaves the default).
        device: the torch device; a CUDA device becomes the current one.
    """
    if parent_pid is not None:
        die_with_parent(parent_pid)
    logging.basicConfig(level=log_level, format=f"%(levelname)s %(name)s [{label}]: %(message)s")
    if threads:
        limit_threads(threads)
    if device.startswith("cuda"):
        torch.cuda.set_device(device)


def _worker_main(job: RankJob) -> None:
    """Entry point of a spawned worker process: exit code 0 when all its videos were processed, 1 on error."""
    start_child(job.parent_pid, label=f"rank {job.rank}", log_level=job.log_level, threads=job.threads,
                device=job.device)
    try:
        state = read_run_state(job.out) if job.options.resume else RunState()  # the parent repaired and checked
        _run_rank(job, state, progress=False)
    except DynOccError as e:
        log.error("%s", e)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except BaseException:
        log.exception("worker rank %d failed", job.rank)
        sys.exit(1)


# ------------------------------------------------------------------------------------------------ waiting, merge


def _accepted(marker: Mapping[str, Any] | None, rank: int, world_size: int, plan: Plan | None) -> bool:
    """Whether ``marker`` is the finished marker of ``rank`` in this launch.

    Stale ones from other launches are recognised by their world size, assignment fingerprint and run id.
    """
    if marker is None or marker.get("status") not in _FINISHED or marker.get("world_size") != world_size:
        return False
    if plan is None:
        return True
    if marker.get("plan") != plan.rank_digest(rank):
        return False
    return plan.run_id is None or marker.get("run_id") == plan.run_id


def wait_for_ranks(out: str | os.PathLike, plan: Plan, ranks: Sequence[int], *, timeout: float,
                   poll: float = 1.0) -> dict[int, dict[str, Any]]:
    """Poll ``out`` until every rank of ``ranks`` has a finished marker of this launch, or time is up.

    Args:
        out: the output folder.
        plan: the launch's plan (tells its markers from stale ones).
        ranks: the ranks to wait for.
        timeout: the most seconds to wait.
        poll: seconds between looks.

    Returns:
        rank -> finished marker, for the ranks that finished (the others are missing).
    """
    deadline = time.monotonic() + max(0.0, timeout)
    told = False
    while True:
        markers = read_markers(out)
        done = {r: markers[r] for r in ranks if _accepted(markers.get(r), r, plan.world_size, plan)}
        missing = [r for r in ranks if r not in done]
        if not missing or time.monotonic() >= deadline:
            return done
        if not told:
            log.info("waiting for rank(s) %s to finish (at most %.0f s)", ", ".join(map(str, missing)), timeout)
            told = True
        time.sleep(max(0.01, min(poll, deadline - time.monotonic())))


@dataclass
class MergeResult:
    """What :func:`merge_run` wrote: the merged summary, the index and the ranks that did not finish.

    Attributes:
        summary: the merged summary of all ranks.
        index: the ``index.json`` object as written.
        world_size: the number of ranks merged.
        failures: one entry per rank that died, failed or left no marker: rank, status, exitcode, reason,
            unfinished.
        ranks: one entry per rank: rank, status, host, pid, videos (and exitcode for local workers).
    """

    summary: GenerateSummary
    index: dict[str, Any]
    world_size: int
    failures: list[dict[str, Any]] = field(default_factory=list)
    ranks: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The content of ``stats.json``.

        Returns:
            The summary's fields plus ``world_size``, ``workers``, ``workers_failed`` and ``num_samples``.
        """
        return {**self.summary.to_dict(), "world_size": self.world_size, "workers": self.ranks,
                "workers_failed": self.failures, "num_samples": self.index.get("num_samples", 0)}


def exit_reason(code: int | None) -> str:
    """``killed by SIGKILL`` / ``exit code 1`` / ``no exit code`` for a process's exit status."""
    if code is None:
        return "no exit code (still running or never started)"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _summary_from_dict(d: Mapping[str, Any] | None, out: str) -> GenerateSummary:
    names = {f.name for f in dataclasses.fields(GenerateSummary)}
    return GenerateSummary(**{**{k: v for k, v in dict(d or {}).items() if k in names}, "out": out})


def merge_run(out: str | os.PathLike, plan: Plan | None = None, *, world_size: int | None = None,
              exits: Mapping[int, int | None] | None = None, upload: str | None = None,
              seconds: float | None = None) -> MergeResult:
    """Merge the per-rank ledgers of ``out`` into ``index.json`` and the rank markers into ``stats.json``.

    Args:
        out: the output folder.
        plan: known to a running launch: tells which markers belong to it and which videos each rank had.
        world_size: without ``plan`` (``dynocc-data merge``), the world size; default that of the most recent
            marker.
        exits: the exit codes of local workers, by rank.
        upload: an upload template; both files are also uploaded (default: the one the ranks used).
        seconds: the wall time of the run (default: the longest rank's).

    Returns:
        What was written.

    Raises:
        DynOccError: when ``out`` holds no generate output, or an upload fails.
    """
    out = out if storage.is_store(out) else Path(out)
    if not has_ledgers(out) and not any(_MARKER_RE.match(n) for n in storage.list_names(out)):
        raise DynOccError(f"{out}: no generate output here (no ledger-r*.jsonl or rank-r*.json)")
    markers = read_markers(out)
    if plan is not None:
        world = plan.world_size
    elif world_size is not None:
        world = world_size
    elif markers:
        world = int(max(markers.values(), key=lambda m: m.get("started") or 0)["world_size"])
    else:
        log.warning("%s: no rank markers (an older run?): indexing the ledgers only", out)
        world = 0
    state = read_run_state(out)
    finished = _finished_videos(state)
    summary = _summary_from_dict(None, str(out))
    failures, ranks = [], []
    for rank in range(world):
        marker = markers.get(rank)
        ok = _accepted(marker, rank, world, plan)
        if ok and rank == 0:
            summary.failed += list(marker.get("input_errors") or [])
            summary.videos_total += len(marker.get("input_errors") or [])
        if ok and marker.get("summary"):
            summary.merge(_summary_from_dict(marker["summary"], str(out)))
        status = marker.get("status") if ok else ("missing" if marker is None else "stale")
        code = (exits or {}).get(rank)
        entry = {"rank": rank, "status": status, "host": (marker or {}).get("host"), "pid": (marker or {}).get("pid"),
                 "videos": len((marker or {}).get("videos") or (plan.parts[rank] if plan else []))}
        if exits is not None:
            entry["exitcode"] = code
        ranks.append(entry)
        if ok and status == "done" and (exits is None or code == 0):
            continue
        same_world = marker is not None and marker.get("world_size") == world
        failure = _rank_failure(rank, marker if same_world else None, plan, code if exits is not None else None,
                                finished)
        if exits is not None and code is not None and code != 0 and ok and status == "done":
            failure["reason"] = f"{exit_reason(code)} after finishing its videos"
        entry["status"] = failure["status"]
        failures.append(failure)
        for video in failure["unfinished"]:
            summary.failed.append({"video": video, "reason": f"not finished: worker rank {rank} {failure['reason']}"})
    digests = {m.get("digest") for m in markers.values() if m.get("world_size") == world} - {None}
    digest = plan.digest if plan is not None else (digests.pop() if len(digests) == 1 else None)
    index = write_index(out, extra={"digest": digest} if digest else None)
    if seconds is not None:
        summary.seconds = seconds
    summary.stage_seconds = {k: round(v, 4) for k, v in summary.stage_seconds.items()}
    result = MergeResult(summary, index, world, failures, ranks)
    for path in _partial_json_files(out, ("index.json", "stats.json")):
        storage.remove(path)
    atomic_write_text(storage.join(out, "stats.json"), json.dumps(result.to_dict(), indent=1, sort_keys=True) + "\n")
    upload = upload or next((m.get("upload") for m in markers.values() if m.get("upload")), None)
    if upload:
        for name in ("index.json", "stats.json"):
            run_upload(upload, storage.join(out, name), name)
    return result


def _rank_failure(rank: int, marker: Mapping[str, Any] | None, plan: Plan | None, code: int | None,
                  finished: set[str]) -> dict[str, Any]:
    """The ``workers_failed`` entry of a rank that did not finish: why, and which of its videos are not done.

    ``marker`` is the rank's marker of this world size, if any.
    """
    if marker is not None and marker.get("status") == "failed":
        status, reason = "failed", marker.get("error") or "failed"
        if code is not None and code != 0:
            reason = f"{reason} ({exit_reason(code)})"
    elif code is not None and code != 0:
        status, reason = "died", exit_reason(code)
    elif marker is not None and marker.get("status") == "running":
        status = "unfinished"
        reason = (f"did not finish (its marker says running, pid {marker.get('pid')} on {marker.get('host')}: "
                  f"killed, or still running)")
    else:
        status, reason = "missing", "left no finished marker (still running, killed, or never started)"
    if marker is not None and marker.get("videos") is not None:
        videos = [(v["video_id"], v["video"]) for v in marker.get("videos") or []]
    elif plan is not None:
        videos = [(s.video_id, s.rel) for s in plan.parts[rank]]
    else:  # neither its marker nor a plan says which videos it had
        videos = []
    unfinished = [rel for vid, rel in videos if vid not in finished]
    return {"rank": rank, "status": status, "exitcode": code, "reason": reason, "unfinished": unfinished}


def _raise_for(result: MergeResult, out: Path, strict: bool) -> None:
    """The run's verdict: dead or failed ranks, nothing processed, or (``strict``) any failed input."""
    summary = result.summary
    if result.failures:
        parts = []
        for f in result.failures:
            names = ", ".join(f["unfinished"][:5]) + (", ..." if len(f["unfinished"]) > 5 else "")
            parts.append(f"worker rank {f['rank']} {f['status']} ({f['reason']}) leaving "
                         f"{len(f['unfinished'])} video(s) unfinished{': ' + names if names else ''}")
        raise WorkerFailure(f"{out}: {'; '.join(parts)}; the other workers finished and stats.json lists it; "
                            f"run again with --resume to complete", result)
    if summary.videos_done == 0 and summary.videos_skipped == 0:
        raise DynOccError(f"{out}: no video could be processed ({len(summary.failed)} failed)")
    if strict and summary.failed:
        raise DynOccError(f"{out}: {len(summary.failed)} input(s) failed (--strict)")


# ------------------------------------------------------------------------------------------------ launches


def generate_parallel(inputs: Sequence[str | os.PathLike], out: str | os.PathLike, config: GenerateConfig,
                      options: RunOptions | None = None) -> GenerateSummary:
    """Run :func:`~dynocc_data.generate` in one process, in local worker processes, or as one rank of a launch.

    Which one follows from ``options.workers`` and the ``torchrun``/``srun`` environment (see the module
    docstring).

    Args:
        inputs: video files, folders, frame folders, ``.txt`` lists, URLs.
        out: the output folder (created when missing).
        config: what is generated.
        options: how the run is carried out (default :class:`RunOptions()`).

    Returns:
        The merged summary; a rank other than 0 returns its own summary without merging.

    Raises:
        WorkerFailure: when a worker or rank died or failed (after the others finished and the merge was written).
        DynOccError: when nothing could be processed or, with ``strict``, anything failed; for a bad upload
            template, ``--workers`` under a launcher, or an output folder that cannot be written.
    """
    options = options or RunOptions()
    try:
        out = storage.check_url(out)  # a file: URL becomes its path; an fsspec URL stays a URL
    except storage.StorageError as e:
        raise DynOccError(f"--out {e}") from None
    out = out if storage.is_store(out) else Path(out)
    t0 = time.perf_counter()
    if options.upload is not None:
        upload_command(options.upload)  # a bad template fails before any work
        if storage.is_store(out):
            raise DynOccError(f"--upload with --out {out}: the shards already go to --out; use one of them")
    info = rank_from_env()
    if info.distributed and options.workers not in (None, 1):
        raise DynOccError(f"--workers {options.workers} with {info.launcher} ranks: start one rank per worker "
                          f"instead (torchrun --nproc-per-node N, srun --ntasks-per-node N)")
    try:
        if storage.is_store(out):  # no folders to make: a missing bucket or credentials fail here, in one line
            probe = storage.join(out, ".write-test")
            storage.write_atomic(probe, b"")
            storage.remove(probe)
        else:
            storage.makedirs(out)
    except Exception as e:  # noqa: BLE001 - a back end's own error types (botocore's, ...) become one line
        reason = e.strerror if isinstance(e, OSError) and e.strerror else " ".join(str(e).split()) or type(e).__name__
        raise DynOccError(f"{out}: cannot write output ({reason})") from None
    sources, errors = discover_videos(inputs)
    for e in errors if info.rank == 0 else []:
        log.warning("%s", e)
    input_errors = [{"video": e.path, "reason": e.reason} for e in errors] if info.rank == 0 else []
    with hold_output(out, rank=info.rank if info.distributed else None,  # one writer per folder and rank
                     takeover=options.resume):
        if info.distributed:
            return _run_distributed(sources, input_errors, out, config, options, info, t0)
        workers = min(resolve_workers(options.workers, options.device), max(1, len(sources)))
        if workers == 1:
            return _run_single(sources, input_errors, out, config, options, info, t0)
        return _run_workers(sources, input_errors, out, config, options, workers, t0)


def _run_single(sources, input_errors, out: Path, config, options: RunOptions, info: RankInfo,
                t0: float) -> GenerateSummary:
    """All videos in this process (rank 0 of 1)."""
    plan = Plan.make(sources, 1, config.digest(), info.run_id)
    _clear_run_files(out)
    state = prepare_state(out, options.resume, config.digest())
    job = RankJob(str(out), config, options, 0, 1, plan.parts[0], plan.rank_digest(0),
                  _rank_device(options.device, 0, 1), info.run_id, input_errors)
    _run_rank(job, state, options.progress)
    result = merge_run(out, plan, upload=options.upload, seconds=time.perf_counter() - t0)
    _raise_for(result, out, options.strict)
    return result.summary


def _run_distributed(sources, input_errors, out: Path, config, options: RunOptions, info: RankInfo,
                     t0: float) -> GenerateSummary:
    """This process is one rank of a torchrun/srun launch: its part, then (rank 0) wait and merge."""
    plan = Plan.make(sources, info.world_size, config.digest(), info.run_id)
    _clear_run_files(out, info.owns)
    state = prepare_state(out, options.resume, config.digest(), info.owns)
    device = _rank_device(options.device, info.local_rank, info.local_world_size)
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
    if info.local_world_size > 1:
        limit_threads(threads_per_worker(info.local_world_size))
    log.info("rank %d of %d (%s): %d of %d videos", info.rank, info.world_size, info.launcher,
             len(plan.parts[info.rank]), len(sources))
    job = RankJob(str(out), config, options, info.rank, info.world_size, plan.parts[info.rank],
                  plan.rank_digest(info.rank), device, info.run_id, input_errors)
    summary = _run_rank(job, state, options.progress)
    if info.rank != 0:
        return summary
    wait_for_ranks(out, plan, range(1, info.world_size), timeout=options.merge_timeout, poll=options.poll)
    result = merge_run(out, plan, upload=options.upload)
    _raise_for(result, out, options.strict)
    return result.summary


def _run_workers(sources, input_errors, out: Path, config, options: RunOptions, workers: int,
                 t0: float) -> GenerateSummary:
    """Spawn ``workers`` processes on this machine, wait for all of them, report the dead, merge."""
    plan = Plan.make(sources, workers, config.digest(), f"local-{os.getpid()}-{time.time_ns()}")
    _clear_run_files(out)
    prepare_state(out, options.resume, config.digest())
    cuda = resolve_device(options.device).type == "cuda"
    threads = threads_per_worker(workers)  # on CUDA too: DIS flow, decoding and encoding run on the CPU
    level = logging.getLogger("dynocc_data").getEffectiveLevel()
    jobs = [RankJob(str(out), config, options, r, workers, plan.parts[r], plan.rank_digest(r),
                    f"cuda:{r % max(1, torch.cuda.device_count())}" if cuda else "cpu", plan.run_id,
                    input_errors if r == 0 else [], threads, os.getpid(), level) for r in range(workers)]
    where = f"worker i on cuda:(i % {torch.cuda.device_count()}), " if cuda else ""
    log.info("%d worker processes (%s%d CPU thread(s) each), videos per worker: %s", workers, where, threads,
             ", ".join(str(len(p)) for p in plan.parts))
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker_main, args=(job,), name=f"dynocc-r{job.rank:03d}", daemon=True)
             for job in jobs]
    try:
        for p in procs:
            p.start()
        _wait_for_processes(procs, out, sources, options.progress)
    except BaseException:
        _stop(procs)
        raise
    exits = {r: p.exitcode for r, p in enumerate(procs)}
    for r, code in exits.items():
        if code != 0:
            log.error("worker rank %d (pid %s) ended with %s", r, procs[r].pid, exit_reason(code))
    result = merge_run(out, plan, exits=exits, upload=options.upload, seconds=time.perf_counter() - t0)
    _raise_for(result, out, options.strict)
    return result.summary


def _wait_for_processes(procs: Sequence[multiprocessing.Process], out: Path, sources, progress: bool) -> None:
    """Block until every process has exited, showing finished videos (read from the ledgers)."""
    ids = {s.video_id for s in sources}
    tail = LedgerTail(out)
    with tqdm(total=len(sources), desc=f"videos ({len(procs)} workers)", unit="video",
              disable=not progress_bars(progress)) as bar:
        pending = list(procs)
        while pending:
            multiprocessing.connection.wait([p.sentinel for p in pending], timeout=1.0)
            pending = [p for p in pending if p.exitcode is None]
            if progress:
                bar.n = len(tail.poll() & ids)
                bar.refresh()
    for p in procs:
        p.join()


def _stop(procs: Sequence[multiprocessing.Process]) -> None:
    """Terminate workers (on an interruption of the parent) and reap them."""
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=10)
        if p.is_alive():
            p.kill()
            p.join()


def generate(inputs: Sequence[str | os.PathLike], out: str | os.PathLike, config: GenerateConfig | None = None,
             options: RunOptions | None = None, **run_options: Any) -> GenerateSummary:
    """Generate DynOcc shards from videos, folders of videos, frame folders, list files or URLs.

    Writes ``<out>/<prefix>-r<rank>-*.tar``, ``index.json`` and ``stats.json``. ``workers`` processes share the
    videos; under ``torchrun`` or ``srun`` this process is one rank of many; ``upload`` sends every committed shard
    to a shell command. Bad inputs are reported (one line each) and skipped.

    Args:
        inputs: video files, folders (searched recursively), frame folders, ``.txt`` lists, URLs.
        out: the output folder.
        config: what is generated (default :class:`GenerateConfig()`).
        options: how the run is carried out (default :class:`RunOptions()`).
        **run_options: fields of :class:`RunOptions` to set on top of ``options`` (``device``, ``batch_size``,
            ``resume``, ``strict``, ``prefix``, ``shard_size``, ``shard_bytes``, ``progress``, ``workers``,
            ``upload``, ``merge_timeout``).

    Returns:
        The run's summary (also written as ``stats.json``).

    Raises:
        DynOccError: when nothing could be processed, or with ``strict`` when anything failed.
        WorkerFailure: when a worker died (after the others finished).
        TypeError: for a keyword that is not a field of :class:`RunOptions`.
    """
    unknown = sorted(set(run_options) - {f.name for f in dataclasses.fields(RunOptions)})
    if unknown:
        raise TypeError(f"generate() got unexpected keyword arguments {unknown} (see RunOptions)")
    options = dataclasses.replace(options or RunOptions(), **run_options)
    return generate_parallel(inputs, out, config or GenerateConfig(), options)
