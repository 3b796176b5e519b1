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
