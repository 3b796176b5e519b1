"""Real kills: ``dynocc-data generate`` is SIGKILLed (after its first committed shard, or in the middle of the
final merge), then resumed with ``--resume`` — with the same or another number of workers — and must end with
exactly the samples of an uninterrupted run: the same keys, the same pairs and ordinals, each sample complete,
none twice, no ``.partial`` file left, ``index.json`` listing every shard.

Small synthetic videos (96x128, 16 frames, 6 samples each) and shards of 2 samples, so the first commit comes
early and the run is still busy when it is killed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest
from fixtures_runs import RUN_CONFIG as CONFIG
from fixtures_runs import VELOCITIES, write_run_videos

from dynocc_data.format.index import read_index
from dynocc_data.format.sample import REQUIRED_FIELDS
from dynocc_data.generation import generate
from dynocc_data.generation.launch import read_markers
from dynocc_data.generation.writer import Ledger

REPO = Path(__file__).resolve().parents[1]
ARGS = ["--stride", "2", "--gap", "2", "--shard-size", "2", "--no-progress"]


def read_samples(out: Path) -> dict[str, tuple[bytes, bytes]]:
    """Key -> (pairs.npy, ordinal.npy) of the shards in ``index.json``; every sample complete, no key twice, no
    shard outside the index and no ``.partial`` file.
    """
    index = read_index(out)
    samples: dict[str, tuple[bytes, bytes]] = {}
    for shard in index["shards"]:
        members: dict[str, dict[str, bytes]] = {}
        with tarfile.open(shard["url"]) as tf:
            for m in tf.getmembers():
                key, ext = m.name.split(".", 1)
                members.setdefault(key, {})[ext] = tf.extractfile(m).read()
        assert len(members) == shard["count"]
        for key, fields in members.items():
            assert set(fields) == set(REQUIRED_FIELDS), (key, sorted(fields))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = (fields["pairs.npy"], fields["ordinal.npy"])
    assert index["num_samples"] == len(samples)
    assert {p.name for p in out.glob("*.tar")} == {Path(s["url"]).name for s in index["shards"]}
    assert not list(out.glob("*.partial")), sorted(p.name for p in out.glob("*.partial"))
    return samples


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    return write_run_videos(tmp_path_factory.mktemp("videos"))


@pytest.fixture(scope="module")
def finished(videos, tmp_path_factory) -> Path:
    """The output folder of an uninterrupted run."""
    out = tmp_path_factory.mktemp("reference")
    generate([videos], out, CONFIG, progress=False, shard_size=2)
    return out


@pytest.fixture(scope="module")
def reference(finished) -> dict[str, tuple[bytes, bytes]]:
    """The samples of an uninterrupted run."""
    samples = read_samples(finished)
    assert len(samples) == 6 * len(VELOCITIES)
    return samples


def start(videos: Path, out: Path, *extra: str, log: Path) -> subprocess.Popen:
    """``dynocc-data generate`` in its own process group (so that the whole run can be killed at once)."""
    cmd = [sys.executable, "-m", "dynocc_data.tools.cli", "generate", str(videos), "--out", str(out), *ARGS, *extra]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=open(log, "wb"),
                            start_new_session=True)


def wait_for_first_commit(out: Path, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    """Poll the ledgers until one records a committed shard; the run must still be going then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the run ended before it could be killed:\n{log.read_text()}"
        for ledger in out.glob("ledger-r*.jsonl"):
            if any(rec.get("type") == "shard" for rec in Ledger(ledger).records()):
                return
        time.sleep(0.01)
    raise AssertionError(f"no shard committed within {timeout} s:\n{log.read_text()}")


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_kill9_after_the_first_shard_then_resume_with_two_workers(videos, reference, tmp_path):
    out, log = tmp_path / "out", tmp_path / "log.txt"
    proc = start(videos, out, "--workers", "1", log=log)
    try:
        wait_for_first_commit(out, proc, log)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "index.json").exists()  # killed mid-run, before the merge
    done_before = sum(1 for rec in Ledger(out / "ledger-r000.jsonl").records() if rec["type"] == "shard")
    assert done_before >= 1
    summary = generate([videos], out, CONFIG, progress=False, shard_size=2, resume=True, workers=2)
    assert read_samples(out) == reference
    assert summary.frames_written == len(reference) - 2 * done_before  # committed samples were not redone
    stats = json.loads((out / "stats.json").read_text())
    assert stats["workers_failed"] == [] and stats["num_samples"] == len(reference)


@pytest.mark.slow
def test_kill9_of_a_two_worker_run_then_resume_with_one(videos, reference, tmp_path):
    out, log = tmp_path / "out", tmp_path / "log.txt"
    proc = start(videos, out, "--workers", "2", log=log)
    try:
        wait_for_first_commit(out, proc, log)
        while len(read_markers(out)) < 2 and proc.poll() is None:  # both workers have started
            time.sleep(0.01)
        pids = [m["pid"] for m in read_markers(out).values()]
        os.kill(proc.pid, signal.SIGKILL)  # the parent only: its workers must not outlive it
        proc.wait()
        deadline = time.monotonic() + 15
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        survivors = [p for p in pids if alive(p)]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the group
    assert len(pids) == 2 and not survivors, "workers outlived their killed parent"
    assert not (out / "index.json").exists()
    summary = generate([videos], out, CONFIG, progress=False, shard_size=2, resume=True, workers=1)
    assert read_samples(out) == reference
    assert summary.videos_total == len(VELOCITIES)


KILL_DURING_MERGE = textwrap.dedent("""
    import os, signal, sys
    import dynocc_data.generation.launch as parallel, dynocc_data.generation.writer as shards
    from dynocc_data.tools.cli import main

    target = sys.argv[1]
    real = shards.atomic_write_text

    def write_then_die(path, text):
        if os.path.basename(path) != target:
            return real(path, text)
        tmp = f"{path}.{os.getpid()}.partial"
        with open(tmp, "w") as f:  # half of the file is out, then the process is killed
            f.write(text[: len(text) // 2])
        os.kill(os.getpid(), signal.SIGKILL)

    shards.atomic_write_text = parallel.atomic_write_text = write_then_die
    sys.exit(main(sys.argv[2:]))
""")


@pytest.mark.slow
@pytest.mark.parametrize("target", ["index.json", "stats.json"])
def test_kill9_during_the_final_merge_then_resume(videos, finished, reference, tmp_path, target):
    out = tmp_path / "out"
    shutil.copytree(finished, out)  # a run whose videos are all done, killed before its merge ...
    (out / "index.json").unlink()
    (out / "stats.json").unlink()
    # ... is resumed, and killed again while the merge writes ``target``
    cmd = [sys.executable, "-c", KILL_DURING_MERGE, target, "generate", str(videos), "--out", str(out),
           "--workers", "1", "--resume", *ARGS]
    proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert list(out.glob(f"{target}.*.partial"))  # the half-written temporary is all there is of it
    assert not (out / "stats.json").exists()
    if target == "index.json":
        assert not (out / "index.json").exists()
    else:
        assert json.loads((out / "index.json").read_text())["num_samples"] == len(reference)
    summary = generate([videos], out, CONFIG, progress=False, shard_size=2, resume=True, workers=1)
    assert summary.videos_skipped == len(VELOCITIES) and summary.frames_processed == 0
    assert read_samples(out) == reference
    assert not list(out.glob("*.json.*.partial"))
    assert json.loads((out / "stats.json").read_text())["num_samples"] == len(reference)


def test_torn_ledger_record_survives_two_resumes(videos, reference, tmp_path):
    """A record cut by a crash (power loss mid-append) stays harmless when later runs append after it."""
    out = tmp_path / "out"
    generate([videos / "v0.mp4", videos / "v1.mp4"], out, CONFIG, progress=False, shard_size=2)
    ledger = out / "ledger-r000.jsonl"
    with open(ledger, "a") as f:
        f.write('{"count": 2, "frames": {"v2-')  # torn: never committed
    all_inputs = [videos / f"v{i}.mp4" for i in range(len(VELOCITIES))]
    generate(all_inputs[:3], out, CONFIG, progress=False, shard_size=2, resume=True)
    generate(all_inputs, out, CONFIG, progress=False, shard_size=2, resume=True)
    assert read_samples(out) == reference
    assert len(Ledger(ledger).records()) == sum(1 for line in ledger.read_text().splitlines()) - 1
