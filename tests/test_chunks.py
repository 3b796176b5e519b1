"""Generation as a manifest of chunks (dynocc_data.generation.manifest, .chunks): plan, one chunk per process,
claiming with leases and work stealing, the per-video time limit, the merge.

Small synthetic videos (96x128, 16 frames, 6 samples each, as in ``test_resume_kill``). "Equal to a single-process
run" means: the same sample keys, each with byte-identical ``pairs.npy`` and ``ordinal.npy``, every sample
complete, none twice, every shard of the folder listed in ``index.json`` with its count, and the same
``num_samples``. Shard names and boundaries differ by design (each chunk writes its own shards).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from test_resume_kill import CONFIG, REPO, finished, read_samples, reference, videos  # noqa: F401

from dynocc_data import storage
from dynocc_data.format.index import read_index
from dynocc_data.generation.chunks import chunk_from_env, done_chunks
from dynocc_data.generation.launch import partition
from dynocc_data.generation.manifest import balance, read_manifest
from dynocc_data.generation.video import VideoSource
from dynocc_data.storage.lease import acquire, lease_info
from dynocc_data.tools.cli import main

pytest_plugins = ["s3_server"]

GEN = ["--stride", "2", "--gap", "2", "--shard-size", "2"]


def plan(videos: Path, out: Path, *extra: str) -> None:
    assert main(["plan", str(videos), "--out", str(out), *GEN, *extra]) == 0


def cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dynocc_data.tools.cli", *args], cwd=REPO, text=True,
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def wait_for(condition, what: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def marker(out: Path, i: int) -> dict:
    return json.loads((out / f"chunk-c{i:05d}.json").read_text())


def by_video(samples: dict, *stems: str) -> dict:
    return {k: v for k, v in samples.items() if not any(k.startswith(s + "-") for s in stems)}


# ------------------------------------------------------------------------------------------ plan


def test_balance_is_the_greedy_partition_in_n_log_k():
    # the known answer of test_parallel's partition test: 50->0, 40->1, 30->1, 20->0, ties by fewer items
    assert balance([50, 40, 30, 20, 10, 10], 2) == [[0, 3, 4], [1, 2, 5]]
    rng = np.random.default_rng(0)
    weights = rng.integers(1, 10_000, size=500).tolist()
    sources = [VideoSource(f"/d/v{i:04d}.mp4", "file", f"v{i:04d}.mp4") for i in range(500)]
    groups = balance(weights, 7)
    parts = partition(sources, 7, weights)
    assert groups == [[sources.index(s) for s in p] for p in parts]  # the same rule, so the same groups
    loads = [sum(weights[i] for i in g) for g in groups]
    assert sorted(i for g in groups for i in g) == list(range(500))
    assert max(loads) - min(loads) <= max(weights)
    assert balance([None, 10, None, 10], 2) == [[0, 2], [1, 3]]  # unknown counts as the mean
    with pytest.raises(ValueError):
        balance([1], 0)


def test_plan_writes_balanced_chunks_once(videos, tmp_path):
    out = tmp_path / "run"
    plan(videos, out, "--chunks", "2")
    manifest = read_manifest(out)
    assert [len(c.videos) for c in manifest.chunks] == [2, 2]
    assert [c.frames for c in manifest.chunks] == [(16, 16), (16, 16)]  # probed from the headers
    assert sorted(v.rel for c in manifest.chunks for v in c.videos) == ["v0.mp4", "v1.mp4", "v2.mp4", "v3.mp4"]
    assert manifest.digest == CONFIG.digest()
    first = (out / "manifest.json").read_text()
    plan(videos, out, "--chunks", "2")  # the same plan again: nothing changes
    assert (out / "manifest.json").read_text() == first
    assert main(["plan", str(videos), "--out", str(out), *GEN, "--chunks", "3"]) == 1  # another plan: refused
    assert (out / "manifest.json").read_text() == first
    plan(videos, tmp_path / "by-frames", "--chunk-frames", "40")  # 64 frames / 40 -> 2 chunks
    assert len(read_manifest(tmp_path / "by-frames").chunks) == 2
    plan(videos, tmp_path / "one-each")
    assert len(read_manifest(tmp_path / "one-each").chunks) == 4


# ------------------------------------------------------------------------------------------ one chunk


def test_chunk_is_idempotent_slurm_array_index_and_takeover_of_a_dead_claimers_lease(videos, reference, tmp_path,
                                                                                      monkeypatch, capsys):
    out = tmp_path / "run"
    plan(videos, out, "--chunks", "2")
    assert main(["generate", "--manifest", str(out), "--chunk", "0", *GEN]) == 0
    assert done_chunks(str(out)) == {0}
    assert not (out / "index.json").exists()  # chunk 1 is not done: nobody merges yet
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}
    assert main(["generate", "--manifest", str(out), "--chunk", "0", *GEN]) == 0  # finished: does nothing
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()} == before

    # chunk 1's lease is held by a claimer that died 1000 s ago: the array task takes it over
    leases = out / "leases"
    (leases / "lease-c00001-000000.json").write_text(json.dumps(
        {"format": "dynocc-lease/1", "owner": "dead-host:1:slot1", "renewed": time.time() - 1000, "ttl": 60}))
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    assert chunk_from_env() == 1
    capsys.readouterr()
    assert main(["generate", "--manifest", str(out / "manifest.json"), *GEN]) == 0  # the last finisher merges
    assert "2 of 2 chunks done" in capsys.readouterr().out
    info = lease_info(str(leases), "c00001")
    assert info.generation == 1 and info.owner.endswith(":chunk1") and marker(out, 1)["owner"] == info.owner
    assert read_samples(out) == reference
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["videos_done"], stats["frames_written"], stats["num_samples"], stats["failed"]) == (4, 24, 24, [])


def test_bad_chunk_index_live_lease_and_options_are_one_line_errors(videos, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    plan(videos, out, "--chunks", "2")
    capsys.readouterr()
    cases = [(["--chunk", "2", *GEN], "--chunk 2: "),
             (["--chunk", "0", "--stride", "3", "--gap", "2"], "planned with other generation parameters"),
             ([str(out), "--chunk", "0", *GEN], "the inputs and --out come from the manifest")]
    for extra, expected in cases:
        assert main(["generate", "--manifest", str(out), *extra]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("dynocc-data: error: ") and expected in err[0], err
    assert f"{out / 'manifest.json'} has 2 chunk(s), 0 to 1" in main_error(["generate", "--manifest", str(out),
                                                                           "--chunk", "7", *GEN], capsys)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "x1")
    assert "SLURM_ARRAY_TASK_ID='x1' is not a chunk index" in main_error(["generate", "--manifest", str(out), *GEN],
                                                                         capsys)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "5")
    assert "SLURM_ARRAY_TASK_ID 5: " in main_error(["generate", "--manifest", str(out), *GEN], capsys)
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
    (out / "leases").mkdir(exist_ok=True)
    busy = acquire(str(out / "leases"), "c00000", "busy-host:7:slot0", ttl=1.0)
    with busy:  # a live holder, renewing every 1/3 s: waited for one ttl, then refused
        assert "chunk 0: being processed by busy-host:7:slot0" in main_error(
            ["generate", "--manifest", str(out), "--chunk", "0", *GEN], capsys)
    assert "--chunk needs --manifest" in main_error(["generate", str(out), "--out", str(out), "--chunk", "0"], capsys)
    assert "--video-timeout needs --manifest" in main_error(["generate", str(out), "--out", str(out),
                                                            "--video-timeout", "5"], capsys)
    assert "no manifest here" in main_error(["generate", "--manifest", str(tmp_path / "none"), *GEN], capsys)
    assert not list(out.glob("*.tar")) and done_chunks(str(out)) == set()


def main_error(argv: list[str], capsys) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dynocc-data: error: "), err
    return err[0]


# ------------------------------------------------------------------------------------------ claiming


def test_fast_rank_steals_the_slow_ranks_chunks_and_the_merge_equals_one_process(videos, reference, tmp_path):
    out, gate = tmp_path / "run", tmp_path / "gate"
    plan(videos, out, "--chunks", "4")  # one video per chunk; static plan: rank 0 gets 0, 2 and rank 1 gets 1, 3
    ranks = {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "DYNOCC_RUN_ID": "steal"}
    args = ["generate", "--manifest", str(out), *GEN, "--workers", "1"]
    slow = cli(*args, env={**ranks, "RANK": "1", "LOCAL_RANK": "1", "DYNOCC_TEST_CHUNK_GATE": str(gate)})
    fast = None
    try:
        wait_for(lambda: (out / "leases" / "lease-c00001-000000.json").exists(), "the slow rank's first claim")
        fast = cli(*args, env={**ranks, "RANK": "0", "LOCAL_RANK": "0"})
        wait_for(lambda: done_chunks(str(out)) >= {0, 2, 3}, "the fast rank's chunks")
        assert done_chunks(str(out)) == {0, 2, 3}  # the slow rank is still held at its gate
        gate.touch()
        slow_log, _ = slow.communicate(timeout=300)
        fast_log, _ = fast.communicate(timeout=300)
    finally:
        for proc in (slow, fast):
            if proc is not None and proc.poll() is None:
                proc.kill()
    assert slow.returncode == 0, slow_log[-3000:]
    assert fast.returncode == 0, fast_log[-3000:]
    owners = {i: marker(out, i)["owner"].rsplit(":", 1)[1] for i in range(4)}
    assert owners == {0: "slot0", 1: "slot1", 2: "slot0", 3: "slot0"}  # chunk 3 was the slow rank's by the plan
    assert "wrote" in fast_log and "4 of 4 chunks done" in fast_log  # rank 0 merged after the last chunk
    assert read_samples(out) == reference
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["chunks_done"], stats["videos_done"], stats["num_samples"]) == (4, 4, 24)
    assert stats["chunk_owners"]["3"].endswith(":slot0")


def test_hung_decode_is_abandoned_after_the_time_limit_and_a_crash_fails_its_video_only(videos, reference,
                                                                                        tmp_path):
    out = tmp_path / "run"
    plan(videos, out, "--chunks", "1")
    proc = cli("generate", "--manifest", str(out), *GEN, "--video-timeout", "8",
               env={"DYNOCC_TEST_HANG_VIDEO": "v1.mp4", "DYNOCC_TEST_CRASH_VIDEO": "v3.mp4"})
    try:
        log, _ = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, log[-3000:]
    stats = json.loads((out / "stats.json").read_text())
    assert [f["video"] for f in stats["failed"]] == ["v1.mp4", "v3.mp4"]
    assert "abandoned: took longer than the time limit of 8 s" in stats["failed"][0]["reason"]
    assert "ended with killed by SIGSEGV while processing it" in stats["failed"][1]["reason"]
    assert (stats["videos_total"], stats["videos_done"], stats["num_samples"]) == (4, 2, 12)
    assert marker(out, 0)["abandoned"] == ["v1.mp4", "v3.mp4"] and marker(out, 0)["attempts"] == 3
    assert read_samples(out) == by_video(reference, "v1", "v3")  # the other videos finished, identically
    assert "failed: v1.mp4: abandoned" in log


def test_merge_lists_unfinished_chunks(videos, tmp_path, capsys):
    out = tmp_path / "run"
    plan(videos, out, "--chunks", "2")
    assert main(["generate", "--manifest", str(out), "--chunk", "1", *GEN]) == 0
    capsys.readouterr()
    assert main(["merge", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "chunk 0 not finished: 2 video(s)" in printed and "1 of 2 chunks done" in printed
    stats = json.loads((out / "stats.json").read_text())
    chunk0 = sorted(v.rel for v in read_manifest(out).chunks[0].videos)
    assert stats["chunks_unfinished"] == [{"chunk": 0, "unfinished": chunk0}]
    assert sorted(f["video"] for f in stats["failed"]) == chunk0
    assert stats["num_samples"] == 12


def test_a_killed_chunk_resumes_to_the_samples_of_one_run(videos, reference, tmp_path):
    out = tmp_path / "run"
    plan(videos, out, "--chunks", "1")
    args = ("generate", "--manifest", str(out), "--chunk", "0", *GEN)
    proc = cli(*args, "--lease-ttl", "3", env={"DYNOCC_TEST_HANG_VIDEO": "v2.mp4"})  # stuck on its third video
    try:
        ledger = out / "ledger-r000.jsonl"
        wait_for(lambda: ledger.exists() and ledger.read_text().count('"status": "done"') == 2, "two videos done")
    finally:
        proc.kill()  # kill -9 of the chunk's process; its child dies with it (PR_SET_PDEATHSIG)
        proc.communicate()
    assert done_chunks(str(out)) == set()
    again = cli(*args)  # the same command takes the dead task's lease after its ttl and resumes the chunk
    log, _ = again.communicate(timeout=400)
    assert again.returncode == 0, log[-3000:]
    assert read_samples(out) == reference
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["videos_skipped"], stats["videos_done"], stats["frames_written"], stats["failed"]) == (2, 2, 24, [])


def store_samples(url: str) -> dict[str, tuple[bytes, bytes]]:
    """key -> (pairs.npy, ordinal.npy) of the shards an index on a store lists, read through storage."""
    samples = {}
    for shard in read_index(url)["shards"]:
        with tarfile.open(fileobj=io.BytesIO(storage.read_bytes(shard["url"]))) as tf:
            members: dict[str, dict[str, bytes]] = {}
            for m in tf.getmembers():
                key, ext = m.name.split(".", 1)
                members.setdefault(key, {})[ext] = tf.extractfile(m).read()
        assert len(members) == shard["count"] and not set(members) & set(samples)
        samples.update({k: (f["pairs.npy"], f["ordinal.npy"]) for k, f in members.items()})
    return samples


def test_chunks_on_s3_one_array_task_then_a_claimer_merge_like_one_local_process(videos, reference, s3_bucket):
    url = f"{s3_bucket}/run"
    plan(videos, url, "--chunks", "3")  # the manifest, ledger objects, markers, leases, index and stats on S3
    assert main(["generate", "--manifest", url, "--chunk", "1", *GEN]) == 0
    assert main(["generate", "--manifest", url, *GEN, "--workers", "1"]) == 0  # claims 0 and 2, then merges
    assert done_chunks(url) == {0, 1, 2}
    assert {n for n in storage.list_names(storage.join(url, "leases"))} == \
        {"lease-c00000-000000.json", "lease-c00001-000000.json", "lease-c00002-000000.json"}
    assert store_samples(url) == reference
    stats = json.loads(storage.read_text(storage.join(url, "stats.json")))
    assert (stats["chunks_done"], stats["videos_done"], stats["num_samples"], stats["failed"]) == (3, 4, 24, [])
    assert not [n for n in storage.list_names(url) if n.endswith(".partial")]
