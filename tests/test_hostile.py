"""Hostile input (issue 16): a dataset folder from a stranger can do nothing but be read.

Each test builds one crafted file or folder and checks what the package does with it: refused with one line
naming the file and the reason, or read with the damage counted, never a command run, a pickle loaded, a path
outside the folder opened or a silent loss. docs/SECURITY.md lists every case with its test.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_shards import (SIZE, evil_npy, evil_pickle, make_sample, npy_bytes, truncate, write_index,
                             write_shards, write_tar)

from dynocc_data.datasets.dynocc import DynOccDataset
from dynocc_data.errors import InputError, ShardFormatError
from dynocc_data.format.index import load_index, read_index

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def cli(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``python -m dynocc_data.tools.cli ARGS`` in a fresh process with this checkout first on the path."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "dynocc_data.tools.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=timeout)


def edit_index(root: Path, fn) -> Path:
    """Rewrite ``root/index.json`` through ``fn(index) -> None``."""
    path = root / "index.json"
    index = json.loads(path.read_text())
    fn(index)
    path.write_text(json.dumps(index))
    return path


def keys(ds) -> list[str]:
    """The keys of one epoch of ``ds``, in order."""
    return [item["meta"]["key"] for item in ds]


# ---------------------------------------------------------------------------------------------- 1. index confinement


@pytest.mark.parametrize("entry", [
    "pipe:touch {marker} #://",
    "pipe:touch {marker}",
    "PIPE:touch {marker}",
])
def test_index_pipe_entry_is_refused_and_runs_nothing(tmp_path, entry):
    shards = write_shards(tmp_path / "data", [2])
    marker = tmp_path / "PWNED"
    edit_index(shards.root, lambda ix: ix["shards"].append({"url": entry.format(marker=marker), "count": 0}))
    with pytest.raises(InputError) as err:
        DynOccDataset(shards.root)
    assert "index.json" in str(err.value) and "pipe:" in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()
    with pytest.raises(InputError):
        load_index(shards.root, allow_outside=True)  # commands from an index: never, whatever the option
    done = cli("stats", str(shards.root), cwd=tmp_path)
    assert done.returncode == 1 and not marker.exists()
    assert done.stderr.strip().count("\n") == 0 and "refusing shard entry" in done.stderr


@pytest.mark.parametrize("entry, reason", [
    ("../outside/dynocc-r000-000000.tar", "not a plain relative"),
    ("sub/../../outside/dynocc-r000-000000.tar", "not a plain relative"),
    ("{outside}/dynocc-r000-000000.tar", "absolute path"),
    ("file://{outside}/dynocc-r000-000000.tar", "URLs are refused"),
    ("http://127.0.0.1:9/x.tar", "URLs are refused"),
    ("x.tar' ; touch PWNED ; '", "not a plain relative"),
    ("x.tar$(touch PWNED)", "not a plain relative"),
])
def test_index_entry_outside_its_folder_is_refused(tmp_path, entry, reason):
    outside = write_shards(tmp_path / "outside", [2])
    shards = write_shards(tmp_path / "data", [2])
    url = entry.format(outside=outside.root)
    edit_index(shards.root, lambda ix: ix["shards"].append({"url": url, "count": 2}))
    with pytest.raises(InputError, match=reason) as err:
        load_index(shards.root)
    assert str(shards.root / "index.json") in str(err.value) and repr(url) in str(err.value)
    with pytest.raises(InputError):
        DynOccDataset(shards.root)


def test_index_symlink_out_of_its_folder_is_refused(tmp_path):
    outside = write_shards(tmp_path / "outside", [2])
    shards = write_shards(tmp_path / "data", [2])
    (shards.root / "linked.tar").symlink_to(outside.paths[0])
    edit_index(shards.root, lambda ix: ix["shards"].append({"url": "linked.tar", "count": 2}))
    with pytest.raises(InputError, match="symbolic link"):
        load_index(shards.root)


def test_index_outside_entries_need_the_explicit_option(tmp_path):
    outside = write_shards(tmp_path / "outside", [3])
    shards = write_shards(tmp_path / "data", [2])
    edit_index(shards.root, lambda ix: ix["shards"].append({"url": "../outside/dynocc-r000-000000.tar", "count": 3}))
    entries = load_index(shards.root, allow_outside=True)
    assert [e.count for e in entries] == [2, 3]
    assert os.path.samefile(entries[1].url, outside.paths[0])
    assert read_index(shards.root, allow_outside=True)["shards"][1]["count"] == 3


def test_index_bad_counts_are_refused(tmp_path):
    shards = write_shards(tmp_path / "data", [2])
    edit_index(shards.root, lambda ix: ix["shards"][0].update(count=True))
    with pytest.raises(InputError, match="bad shard entry"):
        load_index(shards.root)
    edit_index(shards.root, lambda ix: ix["shards"][0].update(count=2, bytes=-5))
    with pytest.raises(InputError, match="bad shard entry"):
        load_index(shards.root)


# ---------------------------------------------------------------------------------------------- 5. YouTube3D pickles


class _Reduce:
    """Pickles into ``fn(*args)``."""

    def __init__(self, fn, *args) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def test_youtube3d_zero_stride_ndarray_bomb_is_refused(tmp_path):
    from dynocc_data.datasets.youtube3d import load_youtube3d_pkl

    path = tmp_path / "bomb.pkl"
    path.write_bytes(pickle.dumps(_Reduce(np.ndarray, (5, 10**12), "f8", b"\0" * 8, 0, (0, 0)), protocol=4))
    assert path.stat().st_size < 120
    with pytest.raises(InputError, match="refusing") as err:
        load_youtube3d_pkl(path)
    assert str(path) in str(err.value)


def test_youtube3d_direct_ndarray_allocation_is_refused(tmp_path):
    from dynocc_data.datasets.youtube3d import load_youtube3d_pkl

    path = tmp_path / "big.pkl"
    path.write_bytes(pickle.dumps(_Reduce(np.ndarray, (5, 2_000_000), "f8"), protocol=4))
    assert path.stat().st_size < 100  # 100 bytes asking for 80 MB of zeros
    with pytest.raises(InputError, match="refusing"):
        load_youtube3d_pkl(path)


def test_youtube3d_reconstruct_with_a_huge_shape_is_refused(tmp_path):
    from numpy._core import multiarray

    from dynocc_data.datasets.youtube3d import load_youtube3d_pkl

    path = tmp_path / "recon.pkl"
    path.write_bytes(pickle.dumps(_Reduce(multiarray._reconstruct, np.ndarray, (5, 10**7), b"b"), protocol=4))
    with pytest.raises(InputError, match="refusing _reconstruct"):
        load_youtube3d_pkl(path)


def test_youtube3d_reduce_payload_is_refused_without_running(tmp_path):
    from dynocc_data.datasets.youtube3d import load_youtube3d_pkl

    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pkl"
    path.write_bytes(evil_pickle(marker))
    with pytest.raises(InputError, match="refusing to unpickle global"):
        load_youtube3d_pkl(path)
    assert not marker.exists()


def test_youtube3d_numpy_pickle_still_loads_and_oversized_file_is_refused(tmp_path, monkeypatch):
    from dynocc_data.datasets import youtube3d

    target = np.array([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6], [0.7, 0.8], [1, -1]], dtype=np.float64)
    path = tmp_path / "ok.pkl"
    path.write_bytes(pickle.dumps(target, protocol=4))
    np.testing.assert_array_equal(youtube3d.load_youtube3d_pkl(path), target)
    monkeypatch.setattr(youtube3d, "MAX_TARGET_BYTES", 100)
    with pytest.raises(InputError, match="larger than 100 bytes"):
        youtube3d.load_youtube3d_pkl(path)


# ---------------------------------------------------------------------------------------------- shard contents


def raw_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    """A tar written member by member with ``tarfile`` (any name, any type)."""
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def sample_members(key: str, sample=None) -> list[tuple[tarfile.TarInfo, bytes]]:
    """The five members of a fixture sample under ``key``."""
    members = (sample or make_sample(0, 0)).members()
    return [(tarfile.TarInfo(f"{key}.{name}"), data) for name, data in members.items() if name != "__key__"]


def read_with_warnings(ds, caplog) -> tuple[list[str], list[str]]:
    """Keys read from ``ds`` and the warnings logged meanwhile."""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dynocc_data"):
        got = keys(ds)
    return got, [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def one_sample_shard(tmp_path: Path, **members: bytes | None) -> Path:
    """A one-sample shard in ``tmp_path/data`` (with index) whose members are replaced by ``members``."""
    sample = make_sample(0, 0)
    shards = write_shards(tmp_path / "data", [1], edit={sample.key: {k.replace("_", "."): v
                                                                     for k, v in members.items()}})
    return shards.root


@pytest.mark.parametrize("name", ["../../x", "/abs/x", "sub/../../../x"])
def test_member_names_leaving_the_shard_are_only_keys(tmp_path, name, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = raw_tar(tmp_path / "names.tar", sample_members(name))
    items = list(DynOccDataset(str(path), index=None))
    assert [i["meta"]["key"] for i in items] == [name]  # read, never extracted
    assert sorted(p.name for p in tmp_path.iterdir()) == ["names.tar"]
    assert not Path("/abs/x.jpg").exists()


def test_symlink_members_are_not_followed(tmp_path):
    target = tmp_path / "secret.jpg"
    target.write_bytes(make_sample(1, 1).jpeg)
    members = [m for m in sample_members("k") if not m[0].name.endswith(".jpg")]
    link = tarfile.TarInfo("k.jpg")
    link.type, link.linkname = tarfile.SYMTYPE, str(target)
    path = raw_tar(tmp_path / "links.tar", [(link, None), *members])
    with pytest.raises(ShardFormatError, match="no jpg member"):  # the link is no member: a clear error
        list(DynOccDataset(str(path), index=None))


def test_npy_object_dtype_is_never_unpickled(tmp_path):
    marker = tmp_path / "PWNED"
    root = one_sample_shard(tmp_path, pairs_npy=evil_npy(marker))
    ds = DynOccDataset(root, handler="ignore")
    assert keys(ds) == [] and ds.stats.skipped_samples == 1
    assert not marker.exists()


def test_npy_header_claiming_a_huge_shape_allocates_nothing(tmp_path):
    header = "{'descr': '<i4', 'fortran_order': False, 'shape': (100000000000, 4), }"
    data = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header) + 1) + header.encode() + b"\n" + b"\0" * 32
    root = one_sample_shard(tmp_path, pairs_npy=data)
    with pytest.raises(ShardFormatError, match="header claims shape"):
        list(DynOccDataset(root, handler="raise"))


def _patched_jpeg(height: int, width: int) -> bytes:
    """A fixture JPEG whose frame header claims ``height x width``."""
    jpeg = bytearray(make_sample(0, 0).jpeg)
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(jpeg)


@pytest.fixture
def decode_spy(monkeypatch):
    """Replace the JPEG decoder of the shard reader with one that records its calls and fails."""
    from dynocc_data.format import sample

    calls = []

    def spy(data):
        calls.append(len(data))
        raise RuntimeError("decoded")

    monkeypatch.setattr(sample, "_decode_jpeg_rgb", spy)
    return calls


@pytest.mark.parametrize("height, width", [(4000, 3000), (60000, 60000)])
def test_jpeg_size_is_checked_against_the_json_before_decoding(tmp_path, decode_spy, height, width):
    root = one_sample_shard(tmp_path, jpg=_patched_jpeg(height, width))
    with pytest.raises(ShardFormatError, match=f"image is {height}x{width} but json size says"):
        list(DynOccDataset(root, handler="raise"))
    assert decode_spy == []


def test_jpeg_and_json_both_claiming_a_huge_image_are_refused_by_the_limit(tmp_path, decode_spy):
    sample = make_sample(0, 0)
    meta = {**sample.meta, "size": [20000, 20000], "orig_size": [20000, 20000]}
    root = one_sample_shard(tmp_path, jpg=_patched_jpeg(20000, 20000), json=json.dumps(meta).encode())
    with pytest.raises(ShardFormatError, match="above the limit"):
        list(DynOccDataset(root, handler="raise"))
    assert decode_spy == []


def test_still_image_readers_check_the_header_before_decoding(tmp_path, monkeypatch):
    from dynocc_data.datasets import _common

    monkeypatch.setattr(_common, "decode_jpeg", lambda *a, **k: pytest.fail("decoded"))
    monkeypatch.setattr(_common, "decode_image", lambda *a, **k: pytest.fail("decoded"))
    jpeg = tmp_path / "bomb.thumb"
    jpeg.write_bytes(_patched_jpeg(60000, 60000))
    with pytest.raises(InputError, match="above the limit"):
        _common.read_image_rgb(jpeg)
    png = tmp_path / "bomb.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I4sII", 13, b"IHDR", 100000, 100000) + b"\x08\x02\0\0\0")
    with pytest.raises(InputError, match="100000x100000 image is above the limit"):
        _common.read_image_rgb(png)


@pytest.mark.parametrize("member, value, reason", [
    ("pairs.npy", np.array([[0, 0, SIZE[0], 0]], np.int32), "outside the"),
    ("pairs.npy", np.array([[-1, 0, 0, 0]], np.int32), "outside the"),
    ("ordinal.npy", np.array([2, 0, 0, 0, 0], np.int8), "other than -1, 0, \\+1"),
])
def test_pairs_outside_the_image_and_bad_ordinals_are_refused(tmp_path, member, value, reason):
    sample = make_sample(0, 3)  # 5 pairs
    if member == "ordinal.npy":
        value = value[:len(sample.pairs)]
    else:
        value = np.concatenate([sample.pairs[:-1], value])
    shards = write_shards(tmp_path / "data", [4], edit={sample.key: {member: npy_bytes(value)}})
    ds = DynOccDataset(shards.root, handler="ignore")
    assert keys(ds) == [k for k in shards.keys if k != sample.key] and ds.stats.skipped_samples == 1
    with pytest.raises(ShardFormatError, match=reason):
        list(DynOccDataset(shards.root, handler="raise"))


@pytest.mark.parametrize("field, value", [("y", np.nan), ("jump", np.inf), ("confidence", -np.inf)])
def test_non_finite_boundary_values_are_counted(tmp_path, caplog, field, value):
    sample = make_sample(0, 1)
    boundary = sample.boundary.copy()
    boundary[field][1] = value
    shards = write_shards(tmp_path / "data", [3], edit={sample.key: {"boundary.npy": npy_bytes(boundary)}})
    for strategy in ("stored", "band"):
        ds = DynOccDataset(shards.root, strategy=strategy)
        got, warnings = read_with_warnings(ds, caplog)
        assert got == [k for k in shards.keys if k != sample.key] and ds.stats.skipped_samples == 1
        assert any(f"non-finite values (1 in {field})" in w and sample.key in w for w in warnings)


def test_huge_and_deeply_nested_json_are_refused(tmp_path):
    big = b'{"a": "' + b"x" * (101 << 20) + b'"}'
    root = one_sample_shard(tmp_path, json=big)
    with pytest.raises(ShardFormatError, match="more than the"):
        list(DynOccDataset(root, handler="raise"))
    nested = b"[" * 100000 + b"]" * 100000
    root2 = one_sample_shard(tmp_path / "n", json=nested)
    with pytest.raises(ShardFormatError, match="json: "):
        list(DynOccDataset(root2, handler="raise"))


def test_gzip_shard_named_tar_is_read_not_flagged(tmp_path):
    import gzip

    shards = write_shards(tmp_path / "data", [3, 2])
    shards.paths[1].write_bytes(gzip.compress(shards.paths[1].read_bytes()))
    write_index(shards.root, shards.paths, shards.counts)
    ds = DynOccDataset(shards.root, handler="raise")
    assert keys(ds) == shards.keys and ds.stats.shard_errors == 0


def test_empty_tar_and_empty_file_are_counted_shard_errors(tmp_path):
    shards = write_shards(tmp_path / "data", [2, 0, 2])  # a tar with no member
    extra = shards.root / "dynocc-r000-000003.tar"
    extra.write_bytes(b"")
    write_index(shards.root, [*shards.paths, extra], [*shards.counts, 0])
    ds = DynOccDataset(shards.root)
    assert keys(ds) == shards.keys and ds.stats.shard_errors == 1


def test_shard_truncated_mid_member_keeps_its_complete_samples(tmp_path):
    from fixtures_shards import member_offsets

    shards = write_shards(tmp_path / "data", [4])
    name, header, data = member_offsets(shards.paths[0])[12]  # the third member of the third sample
    truncate(shards.paths[0], data + 7)
    ds = DynOccDataset(shards.root)
    assert keys(ds) == shards.keys[:2] and ds.stats.shard_errors == 1


def test_member_claiming_a_huge_size_is_refused_before_reading(tmp_path):
    from dynocc_data.format.tar import tar_members

    info = tarfile.TarInfo("k.jpg")
    info.size = 5
    header = bytearray(info.tobuf(format=tarfile.GNU_FORMAT))
    header[124:136] = b"\x80" + (1 << 60).to_bytes(11, "big")  # base-256 size: an exabyte
    header[148:156] = b" " * 8
    header[148:155] = f"{sum(header):06o}\0".encode()
    with pytest.raises(tarfile.ReadError, match="claims 1152921504606846976 bytes"):
        list(tar_members(io.BytesIO(bytes(header) + b"\0" * 1024)))


# ---------------------------------------------------------------------------------------------- 6. failing streams


@pytest.mark.parametrize("bad", ["pipe:exit 3", "pipe:cat {root}/missing.tar", "pipe:head -c 700 {shard}",
                                 "http://127.0.0.1:9/dynocc-r000-000009.tar"])
def test_failing_pipe_or_http_shard_is_warned_and_counted(tmp_path, caplog, bad):
    if bad.startswith("http") and not __import__("shutil").which("curl"):
        pytest.skip("curl is not installed (webdataset reads http shards through it)")
    shards = write_shards(tmp_path / "data", [3, 2])
    urls = [str(shards.paths[0]), bad.format(root=shards.root, shard=shards.paths[1]), str(shards.paths[1])]
    ds = DynOccDataset(urls, index=None)
    got, warnings = read_with_warnings(ds, caplog)
    assert got == shards.keys and ds.stats.shard_errors == 1
    assert any("bad shard" in w for w in warnings)


# ---------------------------------------------------------------------------------------------- 3. duplicate keys


def test_duplicate_keys_across_shards_keep_the_first(tmp_path, caplog):
    shards = write_shards(tmp_path / "data", [4])
    copy = shards.root / "dynocc-r000-000001.tar"
    samples = [make_sample(0, f).members() for f in (1, 3)]  # two of shard 0's samples again, in another shard
    write_tar(copy, samples)
    write_index(shards.root, [shards.paths[0], copy], [4, 2])
    ds = DynOccDataset(shards.root)
    got, warnings = read_with_warnings(ds, caplog)
    assert got == shards.keys and ds.stats.duplicates == 2 and ds.stats.samples == 4
    assert sum("duplicate sample key" in w for w in warnings) == 2


@pytest.mark.parametrize("order", [[0, 1, 1, 2], [0, 1, 2, 1], [1, 0, 2, 1, 1]])
def test_duplicate_keys_within_a_shard_adjacent_or_not(tmp_path, order):
    path = tmp_path / "dups.tar"
    write_tar(path, [make_sample(0, f).members() for f in order])
    ds = DynOccDataset(str(path), index=None, handler="raise")
    got = keys(ds)
    assert got == [make_sample(0, f).key for f in dict.fromkeys(order)]
    assert ds.stats.duplicates == len(order) - len(set(order)) and ds.stats.shard_errors == 0


# ---------------------------------------------------------------------------------------------- 2. index counts


def test_index_counting_zero_samples_is_loud(tmp_path, caplog):
    shards = write_shards(tmp_path / "data", [3, 3])
    edit_index(shards.root, lambda ix: [e.update(count=0) for e in ix["shards"]])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dynocc_data"):
        ds = DynOccDataset(shards.root, rank=0, world_size=2)
    assert any("do not match index.json" in r.getMessage() and "0 samples" in r.getMessage() for r in caplog.records)
    assert len(ds) == 0
    got, warnings = read_with_warnings(ds, caplog)
    assert got == []
    assert any("index.json says 0 samples but the shard holds 3" in w for w in warnings)


def test_index_counting_fewer_samples_warns_with_the_figures(tmp_path, caplog):
    shards = write_shards(tmp_path / "data", [5, 5, 5, 5])
    edit_index(shards.root, lambda ix: ix["shards"][0].update(count=2))
    ds = DynOccDataset(shards.root, rank=0, world_size=2)
    got, warnings = read_with_warnings(ds, caplog)
    assert len(got) == len(ds)
    assert any("index.json says 2 samples but the shard holds 5" in w for w in warnings)


def test_index_counting_more_samples_keeps_ranks_equal(tmp_path, caplog):
    shards = write_shards(tmp_path / "data", [4, 4, 4, 4])
    edit_index(shards.root, lambda ix: [e.update(count=6) for e in ix["shards"]])
    for rank in (0, 1):
        ds = DynOccDataset(shards.root, rank=rank, world_size=2)
        got, warnings = read_with_warnings(ds, caplog)
        assert len(got) == len(ds) == 12 and len(set(got)) == 8 and ds.stats.repeated == 4
        assert any("ended after 4 of 6 samples" in w for w in warnings)
        assert any("yielded 8 of its 12 samples" in w and "repeating 4" in w for w in warnings)
    with pytest.raises(ShardFormatError, match="yielded 8 of its 12 samples"):
        list(DynOccDataset(shards.root, rank=0, world_size=2, short_reader="raise"))


def test_short_reader_repeats_its_samples_to_keep_the_quota(tmp_path, caplog):
    shards = write_shards(tmp_path / "data", [4, 4, 4, 4])
    truncate(shards.paths[0], shards.paths[0].stat().st_size // 2)  # rank 0's first shard loses its end
    ds = DynOccDataset(shards.root, rank=0, world_size=2)
    got, warnings = read_with_warnings(ds, caplog)
    assert len(got) == len(ds) == 8 and ds.stats.repeated == 8 - len(set(got)) > 0
    assert any("repeating" in w and "same number of batches" in w for w in warnings)
    with pytest.raises(ShardFormatError, match="other ranks would wait"):
        list(DynOccDataset(shards.root, rank=0, world_size=2, short_reader="raise"))


def test_torchrun_two_ranks_two_workers_with_a_truncated_shard_keep_equal_batches(tmp_path):
    shards = write_shards(tmp_path / "data", [4] * 8)  # 8 samples per reader
    truncate(shards.paths[0], shards.paths[0].stat().st_size // 2)  # rank 0 worker 0 loses about 2 of them
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(HERE)]), "OMP_NUM_THREADS": "1"}
    cmd = ["torchrun", "--standalone", "--nproc_per_node", "2", str(HERE / "ddp_loader_check.py"),
           "--urls", str(shards.root), "--out", str(out), "--num-workers", "2", "--batch-size", "3", "--epochs", "1"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    epoch = [records[0]["sets"][0][0], records[1]["sets"][0][0]]
    assert epoch[0]["all_batches"] == epoch[1]["all_batches"]
    assert epoch[0]["all_batches"][0] == epoch[0]["all_batches"][1]
    assert len(epoch[0]["keys"]) == len(epoch[1]["keys"]) == epoch[0]["len"] == 16
    assert epoch[0]["all_batches"] == [6, 6]
