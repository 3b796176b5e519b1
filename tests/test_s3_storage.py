"""Generation to, and loading from, a real S3-compatible server (moto's server mode) on localhost.

Shards, ledgers, markers, ``index.json`` and ``stats.json`` go through :mod:`dynocc_data.storage` to
``s3://<bucket>/run``; the loader reads them back, optionally through the bounded local shard cache. A run killed
with SIGKILL and resumed there must end with exactly the output of an uninterrupted local run.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from fixtures_runs import RUN_CONFIG as CONFIG
from fixtures_runs import VELOCITIES, write_run_videos
from fixtures_shards import write_shards
from torch.utils.data import DataLoader

from dynocc_data import storage
from dynocc_data.datasets.dynocc import DynOccDataset
from dynocc_data.errors import DynOccError, InputError
from dynocc_data.format.index import load_index, read_index
from dynocc_data.generation import generate
from dynocc_data.generation.launch import merge_run, read_markers
from dynocc_data.generation.lock import FOLDER_LOCK, OutputBusyError, hold_output
from dynocc_data.generation.writer import LEDGER_FOLDER, read_run_state
from dynocc_data.storage import ShardCache, parse_size
from dynocc_data.tools.cli import main
from dynocc_data.tools.stats import shard_stats

pytest_plugins = ["s3_server"]

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    return write_run_videos(tmp_path_factory.mktemp("videos"))


@pytest.fixture(scope="module")
def local_run(videos, tmp_path_factory) -> Path:
    """The output folder of an uninterrupted local run of the same inputs."""
    out = tmp_path_factory.mktemp("local")
    generate([videos], out, CONFIG, progress=False, shard_size=2)
    return out


def shard_members(url: str) -> dict[str, dict[str, bytes]]:
    """Key -> ext -> bytes of one shard, read through storage."""
    members: dict[str, dict[str, bytes]] = {}
    with tarfile.open(fileobj=io.BytesIO(storage.read_bytes(url))) as tf:
        for m in tf.getmembers():
            key, ext = m.name.split(".", 1)
            members.setdefault(key, {})[ext] = tf.extractfile(m).read()
    return members


def run_output(out: str) -> tuple[list[tuple[str, int, int]], dict[str, dict[str, bytes]]]:
    """The index's (shard name, count, bytes) and every sample's members, of a local folder or a URL."""
    index = read_index(out)
    entries = [(s["url"].rsplit("/", 1)[-1], s["count"], s["bytes"]) for s in index["shards"]]
    samples: dict[str, dict[str, bytes]] = {}
    for shard in index["shards"]:
        members = shard_members(shard["url"])
        assert len(members) == shard["count"]
        assert not set(members) & set(samples), "a sample in two shards"
        samples.update(members)
    return entries, samples


def items_by_key(ds: DynOccDataset) -> dict[str, tuple[list, list]]:
    return {item["meta"]["key"]: (item["pairs"].tolist(), item["ordinal"].tolist()) for item in ds}


def test_generate_to_s3_and_load_it_back_like_a_local_run(videos, local_run, s3_bucket):
    url = f"{s3_bucket}/run"
    summary = generate([videos], url, CONFIG, progress=False, shard_size=2)
    assert summary.videos_done == len(VELOCITIES) and summary.out == url

    names = storage.list_names(url)
    assert {"index.json", "stats.json", "rank-r000.json"} <= set(names)
    assert FOLDER_LOCK not in names  # released at the end
    assert not [n for n in names if n.endswith(".partial")]
    records = storage.list_names(storage.join(url, LEDGER_FOLDER))
    assert records and all(n.startswith("ledger-r000-") and n.endswith(".json") for n in records)

    # the same shards, byte for byte, the same index and stats as the local run
    assert run_output(url) == run_output(str(local_run))
    remote_stats = json.loads(storage.read_text(storage.join(url, "stats.json")))
    local_stats = json.loads((local_run / "stats.json").read_text())
    for key in ("num_samples", "videos_done", "pairs", "frames_written", "workers_failed"):
        assert remote_stats[key] == local_stats[key], key

    # the loader reads the folder URL (index.json included: len() is known) and yields the same items
    remote = DynOccDataset(url)
    assert len(remote) == len(DynOccDataset(str(local_run))) == remote_stats["num_samples"]
    assert items_by_key(remote) == items_by_key(DynOccDataset(str(local_run)))
    assert [s.count for s in load_index(url)] == [c for _, c, _ in run_output(url)[0]]

    # dynocc-data merge rebuilds the same index from the ledger objects
    assert merge_run(url).index == json.loads(storage.read_text(storage.join(url, "index.json")))
    assert merge_run(url).index["num_samples"] == remote_stats["num_samples"]

    # dynocc-data stats reads URLs too
    assert shard_stats(url) == shard_stats(str(local_run))


def test_resume_refuses_a_used_url_without_resume(videos, local_run, s3_bucket):
    url = f"{s3_bucket}/run"
    generate([videos], url, CONFIG, progress=False, shard_size=2)
    with pytest.raises(Exception, match="already holds shards; pass --resume"):
        generate([videos], url, CONFIG, progress=False, shard_size=2)
    summary = generate([videos], url, CONFIG, progress=False, shard_size=2, resume=True)
    assert summary.videos_skipped == len(VELOCITIES)
    assert run_output(url) == run_output(str(local_run))


def test_a_left_lock_object_blocks_until_resume_takes_it_over(videos, local_run, s3_bucket):
    url = f"{s3_bucket}/run"
    lock = storage.join(url, FOLDER_LOCK)
    assert storage.create_exclusive(lock, json.dumps({"pid": 4242, "host": "deadhost", "started": 0}))
    with pytest.raises(OutputBusyError, match=r"pid 4242 on deadhost.*--resume"):
        generate([videos], url, CONFIG, progress=False, shard_size=2)
    assert storage.exists(lock) and not storage.exists(storage.join(url, "index.json"))
    generate([videos], url, CONFIG, progress=False, shard_size=2, resume=True)  # takes the lock over
    assert not storage.exists(lock)
    assert run_output(url) == run_output(str(local_run))


def test_rank_lock_objects_exclude_a_whole_run(s3_bucket):
    url = f"{s3_bucket}/run"
    with hold_output(url, rank=1):
        assert storage.exists(storage.join(url, f"{FOLDER_LOCK}-r001"))
        with pytest.raises(OutputBusyError, match="rank 1 of this folder"):
            with hold_output(url, rank=1):
                pass
        with pytest.raises(OutputBusyError, match=f"lock {FOLDER_LOCK}-r001"):
            with hold_output(url):
                pass
        assert not storage.exists(storage.join(url, FOLDER_LOCK))  # the refused run released its own lock
    assert storage.list_names(url) == []


@pytest.mark.slow
def test_kill9_then_resume_on_s3_gives_the_uninterrupted_output(videos, local_run, s3_bucket, tmp_path):
    url = f"{s3_bucket}/run"
    log = tmp_path / "log.txt"
    cmd = [sys.executable, "-m", "dynocc_data.tools.cli", "generate", str(videos), "--out", url, "--stride", "2",
           "--gap", "2", "--shard-size", "2", "--no-progress", "--staging", str(tmp_path / "staging")]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=open(log, "wb"),
                            start_new_session=True, env=os.environ.copy())
    try:
        deadline = time.monotonic() + 180
        while not read_run_state(url).shards:
            assert proc.poll() is None, f"the run ended before it could be killed:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"no shard committed in time:\n{log.read_text()}"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not storage.exists(storage.join(url, "index.json"))  # killed before the merge
    assert storage.exists(storage.join(url, FOLDER_LOCK))  # kill -9 leaves the lock object
    committed = len(read_run_state(url).shards)
    assert committed >= 1

    assert main(["generate", str(videos), "--out", url, "--stride", "2", "--gap", "2", "--shard-size", "2",
                 "--no-progress", "--resume"]) == 0
    assert run_output(url) == run_output(str(local_run))
    names = storage.list_names(url)
    assert FOLDER_LOCK not in names and not [n for n in names if n.endswith(".partial")]
    shards = [n for n in names if n.endswith(".tar")]
    assert shards == [name for name, _, _ in run_output(url)[0]]  # no orphan upload left beside the index
    stats = json.loads(storage.read_text(storage.join(url, "stats.json")))
    assert stats["workers_failed"] == [] and stats["num_samples"] == len(run_output(str(local_run))[1])


@pytest.mark.slow
def test_two_worker_processes_write_one_s3_run(videos, local_run, s3_bucket):
    url = f"{s3_bucket}/run"
    generate([videos], url, CONFIG, progress=False, shard_size=2, workers=2)
    entries, samples = run_output(url)
    assert samples == run_output(str(local_run))[1]  # the same samples, byte for byte, in other shards
    assert {name.split("-")[1] for name, _, _ in entries} == {"r000", "r001"}
    assert sorted(read_markers(url)) == [0, 1] and FOLDER_LOCK not in storage.list_names(url)


def test_upload_and_a_url_out_do_not_go_together(videos, s3_bucket):
    with pytest.raises(DynOccError, match="--upload with --out s3://"):
        generate([videos], f"{s3_bucket}/run", CONFIG, progress=False, upload="cat > /dev/null {name}")


def test_a_missing_bucket_is_one_line(videos, s3_endpoint, capsys):
    with pytest.raises(DynOccError, match=r"^s3://no-such-bucket-here/run: cannot write output \(") as err:
        generate([videos], "s3://no-such-bucket-here/run", CONFIG, progress=False)
    assert "\n" not in str(err.value)
    assert not storage.exists("s3://no-such-bucket-here")  # not created on the way


def test_cli_names_the_option_for_a_bad_output_url(capsys):
    for bad, why in (("nosuchscheme://bucket/run", "nosuchscheme"), ("pipe:cat", "not a folder")):
        with pytest.raises(SystemExit) as exit_info:
            main(["generate", "x.mp4", "--out", bad])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "argument --out" in err and why in err


# ------------------------------------------------------------------------------------------------ the shard cache


@pytest.fixture()
def remote_shards(s3_bucket, tmp_path) -> tuple[str, list[int]]:
    """Four synthetic shards of 3 samples and their index.json, uploaded to the bucket; (folder URL, sizes)."""
    local = write_shards(tmp_path / "src", [3, 3, 3, 3])
    url = f"{s3_bucket}/shards"
    for path in [*local.paths, local.root / "index.json"]:
        storage.put_file(path, storage.join(url, path.name))
    return url, [p.stat().st_size for p in local.paths]


def test_cache_second_epoch_reads_local_copies(remote_shards, tmp_path):
    url, sizes = remote_shards
    ds = DynOccDataset(url, cache_dir=tmp_path / "cache", cache_limit="1GB")
    first = items_by_key(ds)
    assert len(first) == 12 and (ds.cache.misses, ds.cache.hits) == (4, 0)
    for name in storage.list_names(url):  # the store is gone: only the cache can serve the second epoch
        if name.endswith(".tar"):
            storage.remove(storage.join(url, name))
    ds.set_epoch(1)
    assert items_by_key(ds) == first
    assert (ds.cache.misses, ds.cache.hits) == (4, 4)
    assert ds.cache.total_bytes() == sum(sizes)


def test_dataloader_workers_share_the_cache(remote_shards, tmp_path):
    url, sizes = remote_shards
    ds = DynOccDataset(url, cache_dir=tmp_path / "cache", cache_limit=sum(sizes))
    expected = items_by_key(DynOccDataset(url))
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        loader = DataLoader(ds, batch_size=None, num_workers=2)
        got = {item["meta"]["key"]: (item["pairs"].tolist(), item["ordinal"].tolist()) for item in loader}
        assert got == expected
        assert sorted(os.path.getsize(p) for p in ds.cache.entries()) == sorted(sizes)
    assert not [n for n in os.listdir(tmp_path / "cache") if n.endswith(".partial")]


def test_cache_stays_within_its_limit_and_evicts_the_least_recently_used(remote_shards, tmp_path):
    url, sizes = remote_shards
    limit = sizes[0] * 2 + sizes[0] // 2  # room for two shards
    ds = DynOccDataset(url, cache_dir=tmp_path / "cache", cache_limit=limit)
    assert len(items_by_key(ds)) == 12
    assert ds.cache.total_bytes() <= limit and len(ds.cache.entries()) == 2
    assert [Path(p).name.endswith(f"-{i:06d}.tar") for p, i in zip(ds.cache.entries(), (2, 3))] == [True, True]

    cache = ShardCache(tmp_path / "lru", limit)
    urls = [s.url for s in load_index(url)]
    for u in (urls[0], urls[1], urls[0], urls[2]):  # urls[1] is the least recently used when urls[2] comes
        cache.open(u).close()
        time.sleep(0.02)  # distinct modification times
        assert cache.total_bytes() <= limit
    kept = sorted(Path(p).name.rsplit("-", 1)[-1] for p in cache.entries())
    assert kept == ["000000.tar", "000002.tar"] and (cache.hits, cache.misses) == (1, 3)


def test_a_damaged_cached_shard_is_downloaded_again(remote_shards, tmp_path):
    url, sizes = remote_shards
    ds = DynOccDataset(url, cache_dir=tmp_path / "cache")
    first = items_by_key(ds)
    victim = ds.cache.entries()[0]
    with open(victim, "r+b") as f:
        f.truncate(sizes[0] // 2)  # cut short on disk
    assert items_by_key(ds) == first
    assert (ds.cache.misses, ds.cache.hits) == (5, 3)
    assert os.path.getsize(ds.cache.entries()[-1]) in sizes


def test_cache_limit_and_sizes_are_checked():
    assert parse_size("10GB") == 10 * 10**9 and parse_size("512MiB") == 512 << 20 and parse_size(7) == 7
    for bad in ("ten", "-1GB", -5, "1 XB"):
        with pytest.raises(ValueError):
            parse_size(bad)
    with pytest.raises(ValueError, match="cache_limit"):
        DynOccDataset("s3://bucket/x.tar", cache_limit="lots")


def test_an_index_on_the_store_may_not_leave_its_prefix(s3_bucket):
    url = f"{s3_bucket}/run"
    for entry in ("../other/x.tar", "s3://elsewhere/x.tar", "pipe:cat /etc/passwd"):
        index = {"format": "dynocc-shards/1", "num_samples": 1, "shards": [{"url": entry, "count": 1, "bytes": 10}]}
        storage.write_atomic(storage.join(url, "index.json"), json.dumps(index))
        with pytest.raises(InputError, match="refusing shard entry"):
            DynOccDataset(url)
