"""Scale-out generation (dynocc_data.generation.launch): partition, worker processes, torchrun/srun ranks and their
merge, a dead worker, uploads through a shell command, URL inputs and the out-of-memory retry.

Small synthetic videos (96x128, 16 frames, a textured square moving over a textured background: 6 samples
each with stride 2, gap 2) make every run take about a second of processing; spawned workers add their start.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import signal
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_runs import RUN_CONFIG as CONFIG
from fixtures_runs import write_run_videos

from dynocc_data.errors import DynOccError
from dynocc_data.format.index import read_index
from dynocc_data.format.sample import REQUIRED_FIELDS, encode_sample
from dynocc_data.generation import generate
from dynocc_data.generation.launch import (
    Plan,
    WorkerFailure,
    merge_run,
    partition,
    rank_from_env,
    read_markers,
    threads_per_worker,
    video_weight,
)
from dynocc_data.generation.pipeline import FrameProcessor
from dynocc_data.generation.video import VideoSource, discover_videos
from dynocc_data.generation.writer import ShardWriter, read_run_state
from dynocc_data.tools.cli import main
from dynocc_data.tools.synthetic import moving_square_scene, write_scene

CLI_ARGS = ["--stride", "2", "--gap", "2", "--shard-size", "3", "--no-progress"]


def read_samples(out: Path, index_dir: Path | None = None) -> dict[str, tuple[bytes, bytes]]:
    """Key -> (pairs.npy, ordinal.npy) bytes of every sample of the shards listed in ``index.json``; checks that
    every sample is complete, no key appears twice and no shard exists outside the index.
    """
    index = read_index(index_dir or out)
    samples: dict[str, tuple[bytes, bytes]] = {}
    for shard in index["shards"]:
        members: dict[str, dict[str, bytes]] = {}
        with tarfile.open(shard["url"]) as tf:
            for m in tf.getmembers():
                key, ext = m.name.split(".", 1)
                members.setdefault(key, {})[ext] = tf.extractfile(m).read()
        assert len(members) == shard["count"], shard
        for key, fields in members.items():
            assert set(fields) == set(REQUIRED_FIELDS), (key, sorted(fields))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = (fields["pairs.npy"], fields["ordinal.npy"])
    assert index["num_samples"] == len(samples)
    listed = {Path(s["url"]).name for s in index["shards"]}
    assert {p.name for p in (index_dir or out).glob("*.tar")} == listed
    assert not list(out.glob("*.partial")) and not list(out.glob("*/*.partial"))
    return samples


def by_video(samples: dict, *names: str) -> dict:
    return {k: v for k, v in samples.items() if any(k.startswith(n + "-") for n in names)}


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    return write_run_videos(tmp_path_factory.mktemp("videos"))


@pytest.fixture(scope="module")
def reference(videos, tmp_path_factory) -> dict[str, tuple[bytes, bytes]]:
    """The samples of an uninterrupted single-process run."""
    out = tmp_path_factory.mktemp("reference")
    summary = generate([videos], out, CONFIG, progress=False, shard_size=3)
    assert summary.videos_done == 4 and summary.frames_written == 24
    samples = read_samples(out)
    assert len(samples) == 24
    return samples


# ------------------------------------------------------------------------------------------ partition


def fake_sources(n: int) -> list[VideoSource]:
    return [VideoSource(f"/data/clip{i:02d}.mp4", "file", f"clip{i:02d}.mp4") for i in range(n)]


def test_partition_is_greedy_by_size_and_deterministic():
    sources = fake_sources(6)
    weights = [50, 40, 30, 20, 10, 10]
    parts = partition(sources, 2, weights)
    # largest first to the least loaded: 50->0, 40->1, 30->1, 20->0, then ties broken by fewer videos, rank
    assert [[s.rel for s in p] for p in parts] == [["clip00.mp4", "clip03.mp4", "clip04.mp4"],
                                                   ["clip01.mp4", "clip02.mp4", "clip05.mp4"]]
    loads = [sum(weights[sources.index(s)] for s in p) for p in parts]
    assert loads == [80, 80]
    # the same videos given in another order: the same parts (each keeps the input order)
    order = [3, 5, 0, 2, 4, 1]
    again = partition([sources[i] for i in order], 2, [weights[i] for i in order])
    assert [{s.rel for s in p} for p in again] == [{s.rel for s in p} for p in parts]


def test_partition_balance_unknown_sizes_and_more_ranks_than_videos():
    rng = np.random.default_rng(0)
    sources = fake_sources(40)
    weights = rng.integers(1_000, 100_000, size=40).tolist()
    parts = partition(sources, 4, weights)
    assert sorted(s.rel for p in parts for s in p) == sorted(s.rel for s in sources)  # each video exactly once
    loads = [sum(weights[sources.index(s)] for s in p) for p in parts]
    assert max(loads) - min(loads) <= max(weights)  # greedy bound: off by at most one video
    assert max(loads) / min(loads) < 1.05
    # URLs (unknown size) count as the mean of the known sizes
    assert [len(p) for p in partition(fake_sources(4), 2, [None, 10, None, 10])] == [2, 2]
    assert [len(p) for p in partition(fake_sources(2), 3, [5, 5])] == [1, 1, 0]
    with pytest.raises(ValueError):
        partition(sources, 0)


def test_video_weight_is_the_file_size(videos, tmp_path):
    sources, _ = discover_videos([videos])
    assert [video_weight(s) for s in sources] == [os.path.getsize(s.path) for s in sources]
    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / "00000.jpg").write_bytes(b"x" * 10)
    (frames / "00001.jpg").write_bytes(b"x" * 20)
    (frames / "notes.txt").write_bytes(b"x" * 999)
    assert video_weight(VideoSource(str(frames), "frames", "frames")) == 30
    assert video_weight(VideoSource("http://host/v.mp4", "url", "http://host/v.mp4")) is None


def test_rank_from_env():
    info = rank_from_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4",
                          "TORCHELASTIC_RUN_ID": "job7"})
    assert (info.rank, info.world_size, info.local_rank, info.local_world_size) == (3, 8, 1, 4)
    assert info.launcher == "torchrun" and info.run_id == "job7" and info.distributed
    assert rank_from_env({"RANK": "0", "WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "none"}).run_id is None
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "6", "SLURM_LOCALID": "1", "SLURM_STEP_ID": "0",
             "SLURM_JOB_ID": "42", "SLURM_STEP_TASKS_PER_NODE": "2(x3)"}
    info = rank_from_env(slurm)
    assert (info.rank, info.world_size, info.local_rank, info.local_world_size) == (5, 6, 1, 2)
    assert info.launcher == "slurm" and info.run_id == "slurm-42.0"
    # the batch script of an sbatch job has SLURM_NTASKS but is one process: no job step, no ranks
    assert not rank_from_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_JOB_ID": "42"}).distributed
    assert rank_from_env({}).world_size == 1
    assert rank_from_env({**slurm, "RANK": "1", "WORLD_SIZE": "2"}).launcher == "torchrun"  # srun torchrun
    with pytest.raises(DynOccError, match="RANK/WORLD_SIZE = 2/2"):
        rank_from_env({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(DynOccError, match="WORLD_SIZE='two'"):
        rank_from_env({"RANK": "0", "WORLD_SIZE": "two"})


def test_threads_per_worker():
    assert threads_per_worker(4, cores=16) == 4
    assert threads_per_worker(3, cores=2) == 1
    assert threads_per_worker(1, cores=8) == 8


# ------------------------------------------------------------------------------------------ local workers


@pytest.mark.slow
def test_two_workers_give_the_samples_of_one(videos, reference, tmp_path):
    out = tmp_path / "out"
    summary = generate([videos], out, CONFIG, progress=False, shard_size=3, workers=2)
    assert read_samples(out) == reference  # same keys, same pairs and ordinals
    assert summary.videos_done == 4 and summary.frames_written == 24 and summary.failed == []
    ranks = {p.name.split("-")[1] for p in out.glob("*.tar")}
    assert ranks == {"r000", "r001"}
    stats = json.loads((out / "stats.json").read_text())
    assert stats["world_size"] == 2 and stats["workers_failed"] == [] and stats["num_samples"] == 24
    assert [(w["rank"], w["status"], w["exitcode"], w["videos"]) for w in stats["workers"]] == \
        [(0, "done", 0, 2), (1, "done", 0, 2)]
    assert stats["frames_written"] == 24 and stats["videos_total"] == 4
    assert json.loads((out / "index.json").read_text())["digest"] == CONFIG.digest()


def _kill_when_stuck(out: Path, rank: int, video_id: str, deadline: float, killed: list) -> None:
    """Kill worker ``rank`` once its ledger says ``video_id`` is done (it then hangs on the next input)."""
    ledger = out / f"ledger-r{rank:03d}.jsonl"
    while time.monotonic() < deadline:
        marker = read_markers(out).get(rank) if out.exists() else None
        if marker and ledger.exists() and f'"video_id": "{video_id}"' in ledger.read_text():
            time.sleep(0.3)  # let it reach the blocking input
            os.kill(marker["pid"], signal.SIGKILL)
            killed.append(marker["pid"])
            return
        time.sleep(0.05)
    for marker in read_markers(out).values():  # never leave a hung worker behind
        try:
            os.kill(marker["pid"], signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.slow
def test_killed_worker_is_reported_and_the_others_finish(videos, reference, tmp_path, capsys):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name in ("v0.mp4", "v1.mp4"):
        shutil.copy(videos / name, inputs / name)
    stuck = inputs / "zz_stuck"  # a frame folder whose image is a FIFO: the worker blocks opening it
    stuck.mkdir()
    os.mkfifo(stuck / "00000.jpg")
    sources, _ = discover_videos([inputs])
    parts = partition(sources, 2)
    rank = next(r for r, p in enumerate(parts) if any(s.rel == "zz_stuck" for s in p))
    normal = [s for s in parts[rank] if s.rel != "zz_stuck"]
    assert normal, "the stuck input should share its worker with a normal video"
    out = tmp_path / "out"
    killed: list[int] = []
    killer = threading.Thread(target=_kill_when_stuck, args=(out, rank, normal[0].video_id,
                                                             time.monotonic() + 90, killed))
    killer.start()
    try:
        rc = main(["generate", str(inputs), "--out", str(out), "--workers", "2", *CLI_ARGS])
    finally:
        killer.join()
    assert killed and rc == 1
    err = capsys.readouterr().err
    assert f"worker rank {rank} died (killed by SIGKILL) leaving 1 video(s) unfinished: zz_stuck" in err
    stats = json.loads((out / "stats.json").read_text())
    assert stats["workers_failed"] == [{"rank": rank, "status": "died", "exitcode": -9, "reason": "killed by SIGKILL",
                                        "unfinished": ["zz_stuck"]}]
    assert {w["rank"]: w["status"] for w in stats["workers"]} == {rank: "died", 1 - rank: "done"}
    assert {"video": "zz_stuck", "reason": f"not finished: worker rank {rank} killed by SIGKILL"} in stats["failed"]
    assert read_samples(out) == by_video(reference, "v0", "v1")  # the other worker and the finished video
    # the stuck input removed, a resume with one worker completes the run
    shutil.rmtree(stuck)
    summary = generate([inputs], out, CONFIG, progress=False, shard_size=3, resume=True, workers=1)
    assert summary.videos_skipped == 2 and summary.failed == []
    assert read_samples(out) == by_video(reference, "v0", "v1")


# ------------------------------------------------------------------------------------------ torchrun / srun


def test_torchrun_ranks_write_disjoint_shards_whose_merge_is_the_single_run(videos, reference, tmp_path,
                                                                              monkeypatch, capsys):
    out = tmp_path / "out"
    monkeypatch.setenv("WORLD_SIZE", "2")
    # rank 0 first, not waiting: it merges what is there and reports rank 1 as missing
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(WorkerFailure, match="worker rank 1 missing") as failure:
        generate([videos], out, CONFIG, progress=False, shard_size=3, merge_timeout=0)
    plan = Plan.make(discover_videos([videos])[0], 2, CONFIG.digest())
    assert failure.value.result.failures[0]["unfinished"] == [s.rel for s in plan.parts[1]]
    # then rank 1: its own part only, no merge
    monkeypatch.setenv("RANK", "1")
    summary = generate([videos], out, CONFIG, progress=False, shard_size=3)
    assert summary.videos_done == len(plan.parts[1])
    markers = read_markers(out)
    assert {r: m["status"] for r, m in markers.items()} == {0: "done", 1: "done"}
    assert [v["video"] for v in markers[1]["videos"]] == [s.rel for s in plan.parts[1]]
    # the shards of the two ranks are disjoint and together the single-process run
    per_rank = {}
    for shard in out.glob("*.tar"):
        with tarfile.open(shard) as tf:
            per_rank.setdefault(shard.name.split("-")[1], set()).update(m.name.split(".")[0] for m in tf)
    assert per_rank["r000"].isdisjoint(per_rank["r001"])
    assert per_rank["r000"] | per_rank["r001"] == set(reference)
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert main(["merge", str(out)]) == 0
    assert "24 samples" in capsys.readouterr().out
    assert read_samples(out) == reference
    stats = json.loads((out / "stats.json").read_text())
    assert stats["world_size"] == 2 and stats["workers_failed"] == [] and stats["frames_written"] == 24


def test_rank_zero_waits_for_the_other_ranks_markers(videos, reference, tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    generate([videos], out, CONFIG, progress=False, shard_size=3)
    monkeypatch.setenv("RANK", "0")
    summary = generate([videos], out, CONFIG, progress=False, shard_size=3, merge_timeout=30)
    assert summary.videos_done == 4 and summary.frames_written == 24
    assert read_samples(out) == reference
    # a relaunch without --resume into the used folder is refused by every rank before any work
    with pytest.raises(DynOccError, match="already holds shards"):
        generate([videos], out, CONFIG, progress=False, shard_size=3)


def test_merge_of_an_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DynOccError, match="no generate output here"):
        merge_run(tmp_path)


# ------------------------------------------------------------------------------------------ uploads


def test_upload_to_a_pipe_command(videos, reference, tmp_path):
    remote = tmp_path / "remote"
    remote.mkdir()
    out = tmp_path / "staging"
    upload = f"pipe:cat > {remote}/{{name}}.part && mv {remote}/{{name}}.part {remote}/{{name}}"
    generate([videos], out, CONFIG, progress=False, shard_size=3, upload=upload)
    assert not list(out.glob("*.tar*"))  # nothing staged is left
    assert (remote / "stats.json").exists() and not list(remote.glob("*.part"))
    assert read_samples(out, index_dir=remote) == reference
    assert all(s.get("remote") for s in read_run_state(out).shards)
    # a resume finds everything done (uploaded shards are not expected on the local disk)
    summary = generate([videos], out, CONFIG, progress=False, shard_size=3, upload=upload, resume=True)
    assert summary.videos_skipped == 4 and read_samples(out, index_dir=remote) == reference


def _sample(i: int) -> dict:
    image = torch.zeros(3, 8, 8, dtype=torch.uint8)
    from torchvision.io import encode_jpeg

    bnd = {k: torch.zeros(1) for k in ("y", "x", "ny", "nx", "confidence", "jump")}
    bnd["segment"] = torch.zeros(1, dtype=torch.int64)
    return encode_sample(f"v-00000000_{i:06d}", encode_jpeg(image).numpy().tobytes(), {"frame": i},
                         torch.zeros(1, 4, dtype=torch.int64), torch.ones(1, dtype=torch.int64), bnd)


def test_failing_upload_command_is_a_clear_error_and_commits_nothing(tmp_path):
    out = tmp_path / "out"
    writer = ShardWriter(out, max_count=2, upload=f"cat > {tmp_path}/missing-dir/{{name}}")
    writer.write(_sample(0), video_id="v-00000000", frame=0)
    with pytest.raises(DynOccError, match=r"dynocc-r000-000000\.tar: upload command failed \(exit \d+: .*"
                                          r"missing-dir.*\); not committed"):
        writer.write(_sample(1), video_id="v-00000000", frame=1)
    assert read_run_state(out).shards == [] and not list(out.glob("*.tar*"))
    with pytest.raises(DynOccError, match=r"must contain \{name\}"):
        ShardWriter(out, upload="aws s3 cp - s3://bucket/dir/")
    # a command that exits non-zero without reading its input, through generate: the run stops with the reason
    with pytest.raises(DynOccError, match=r"upload command failed \(exit 3: no output\)"):
        generate([_one_video(tmp_path)], tmp_path / "out2", CONFIG, progress=False, upload="exit 3 # {name}")
    assert read_run_state(tmp_path / "out2").shards == []
    assert read_markers(tmp_path / "out2")[0]["status"] == "failed"


def _one_video(tmp_path: Path) -> Path:
    return write_scene(moving_square_scene(size=(96, 128), num_frames=10, velocity=(0.0, 2.0)), tmp_path / "one",
                       "clip")[0]


def test_shard_numbers_continue_after_committed_uploads(tmp_path):
    remote = tmp_path / "remote"
    remote.mkdir()
    with ShardWriter(tmp_path / "out", max_count=1, upload=f"cat > {remote}/{{name}}") as w:
        w.write(_sample(0), video_id="v-00000000", frame=0)
    with ShardWriter(tmp_path / "out", max_count=1, upload=f"cat > {remote}/{{name}}") as w:
        w.write(_sample(1), video_id="v-00000000", frame=1)
    assert sorted(p.name for p in remote.iterdir()) == ["dynocc-r000-000000.tar", "dynocc-r000-000001.tar"]


# ------------------------------------------------------------------------------------------ URL inputs


def test_videos_read_from_http_urls(videos, reference, tmp_path):
    handler = functools.partial(_QuietHandler, directory=str(videos))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1.mp4"
        summary = generate([url], tmp_path / "out", CONFIG, progress=False)
    finally:
        server.shutdown()
        server.server_close()
    assert summary.videos_done == 1 and summary.frames_written == len(by_video(reference, "v1"))
    samples = read_samples(tmp_path / "out")
    assert {k.rsplit("_", 1)[1] for k in samples} == {k.rsplit("_", 1)[1] for k in by_video(reference, "v1")}


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


# ------------------------------------------------------------------------------------------ memory


def test_out_of_memory_batches_are_retried_smaller(videos, reference, tmp_path, monkeypatch, caplog):
    calls = []
    order = FrameProcessor._order

    def order_or_oom(self, chunk):
        calls.append(len(chunk))
        if len(chunk) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return order(self, chunk)

    monkeypatch.setattr(FrameProcessor, "_order", order_or_oom)
    generate([videos / "v2.mp4"], tmp_path / "out", CONFIG, progress=False, batch_size=4)
    assert calls[:3] == [4, 2, 1] and set(calls[3:]) == {1}  # halved until it fits, then kept small
    assert "out of memory on a batch of 4 frames, retrying in batches of 2" in caplog.text
    assert read_samples(tmp_path / "out") == by_video(reference, "v2")  # same samples as without the retry
