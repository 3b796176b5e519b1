"""Checkpointable loading: state_dict/load_state_dict on DynOccDataset, mix and as_iterable.

Through a plain loop, and through torchdata's StatefulDataLoader with 2 workers resumed in a new process.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fixtures_shards import make_sample, truncate, write_index, write_shards, write_tar
from torch.utils.data import DataLoader, Dataset
from torchdata.stateful_dataloader import StatefulDataLoader

import dynocc_data.datasets.dynocc as dynocc_module
from dynocc_data import DynOccDataset, as_iterable, create_loader, mix

HERE = Path(__file__).resolve().parent
COUNTS = [5, 7, 3, 6, 4, 8]


def describe(item: dict) -> tuple:
    """What a restored stream must reproduce: key, pairs, ordinal, the decoded image, the repeat flag."""
    digest = hashlib.sha1(item["image"].numpy().tobytes()).hexdigest()
    return (item["meta"]["key"], item["pairs"].tolist(), item["ordinal"].tolist(), digest,
            item["meta"].get("repeated", False))


def stopped_and_resumed(make, k: int, epoch: int = 1) -> tuple[list, list, dict]:
    """Read k items of ``make()``'s epoch, save the state as JSON, load it into a new dataset: (read, rest, state)."""
    first = make()
    first.set_epoch(epoch)
    read = [describe(x) for x in itertools.islice(iter(first), k)]
    state = json.loads(json.dumps(first.state_dict()))  # plain data: survives JSON unchanged
    second = make()
    second.load_state_dict(state)
    return read, [describe(x) for x in second], state


def whole_epoch(make, epoch: int = 1) -> list:
    """Every item of one uninterrupted epoch."""
    dataset = make()
    dataset.set_epoch(epoch)
    return [describe(x) for x in dataset]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Six shards of known samples, with index.json."""
    return write_shards(tmp_path_factory.mktemp("stateful") / "a", COUNTS)


# ---------------------------------------------------------------------------------------------- plain loop


@pytest.mark.parametrize("options", [
    {},
    {"shuffle": 6},
    {"shuffle": 40, "strategy": "band"},  # a buffer larger than the epoch, pairs drawn at load time
    {"shuffle": 5, "rank": 1, "world_size": 2},  # equalized: this rank stops before its shards end
    {"shuffle": 3, "rank": 1, "world_size": 8},  # fewer shards than readers: split by sample
], ids=["plain", "shuffle", "band", "ranks", "split-by-sample"])
def test_plain_loop_restore_yields_exactly_the_rest(shards, options):
    def make():
        return DynOccDataset(shards.root, seed=3, **options)

    full = whole_epoch(make)
    assert len(full) >= 4
    for k in sorted({0, 1, len(full) // 2, len(full) - 1, len(full)}):
        read, rest, _ = stopped_and_resumed(make, k)
        assert read + rest == full, f"k={k}"


def test_restore_at_epoch_boundaries(shards):
    def make():
        return DynOccDataset(shards.root, seed=3, shuffle=4)

    full, next_epoch = whole_epoch(make), whole_epoch(make, epoch=2)
    fresh = make()  # a state taken before iterating: the whole epoch
    fresh.set_epoch(1)
    state = fresh.state_dict()
    assert state["position"] is None and state["epoch"] == 1
    again = make()
    again.load_state_dict(state)
    assert [describe(x) for x in again] == full

    read, rest, state = stopped_and_resumed(make, len(full))  # after the last item: nothing left
    assert read == full and rest == []
    ended = make()  # a state taken after the iteration ended says so
    ended.set_epoch(1)
    assert len(list(ended)) == len(full) and ended.state_dict()["position"] == {"phase": "done"}
    resumed = make()
    resumed.load_state_dict(ended.state_dict())
    assert list(resumed) == []
    resumed.set_epoch(2)  # the next epoch starts afresh
    assert resumed.state_dict()["position"] is None  # set, not started: nothing of epoch 2 read yet
    assert [describe(x) for x in resumed] == next_epoch
    later = make()  # a position loaded, then another epoch set: that epoch is read whole
    later.load_state_dict(state)
    later.set_epoch(2)
    assert [describe(x) for x in later] == next_epoch


def test_restore_skips_read_shards_unopened_and_decodes_only_what_is_yielded(shards, tmp_path, monkeypatch):
    data = write_shards(tmp_path / "data", COUNTS)

    def make():
        return DynOccDataset(data.root, seed=3, handler="raise")

    full = whole_epoch(make)
    k = COUNTS[0] + COUNTS[1] + 2  # two shards read, and two samples of the third
    first = make()
    first.set_epoch(1)
    read = [describe(x) for x in itertools.islice(iter(first), k)]
    state = json.loads(json.dumps(first.state_dict()))
    for path in data.paths[:2]:  # opening these now would fail (handler="raise"): they must be skipped
        path.write_bytes(b"\xff" * path.stat().st_size)
    calls = {"parse": 0, "jpeg": 0}

    def counting(name, fn):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(dynocc_module, "decode_sample", counting("parse", dynocc_module.decode_sample))
    monkeypatch.setattr(dynocc_module, "decode_image_member", counting("jpeg", dynocc_module.decode_image_member))
    second = make()
    second.load_state_dict(state)
    rest = [describe(x) for x in second]
    assert read + rest == full
    assert calls == {"parse": len(rest), "jpeg": len(rest)}  # the third shard's first two: skipped at tar level
    assert second.stats.shard_errors == 0 and second.stats.samples == len(rest)


def test_restore_with_a_shuffle_buffer_decodes_only_what_is_yielded(shards, monkeypatch):
    def make():
        return DynOccDataset(shards.root, seed=3, shuffle=8)

    full = whole_epoch(make)
    first = make()
    first.set_epoch(1)
    read = [describe(x) for x in itertools.islice(iter(first), 20)]
    state = first.state_dict()
    decoded = []
    original = dynocc_module.decode_image_member
    monkeypatch.setattr(dynocc_module, "decode_image_member", lambda item: decoded.append(1) or original(item))
    second = make()
    second.load_state_dict(state)
    rest = [describe(x) for x in second]
    assert read + rest == full and len(decoded) == len(rest)


def test_restore_with_a_broken_shard_and_the_repeated_tail(shards, tmp_path):
    data = write_shards(tmp_path / "data", COUNTS)
    truncate(data.paths[1], data.paths[1].stat().st_size // 2)  # fewer samples than index.json says

    def make():
        return DynOccDataset(data.root, seed=3, shuffle=5, rank=0, world_size=2, handler="ignore")

    full = whole_epoch(make)
    assert any(item[-1] for item in full)  # this reader makes up its quota by repeating samples
    for k in range(len(full) + 1):
        read, rest, _ = stopped_and_resumed(make, k)
        assert read + rest == full, f"k={k}"


@pytest.mark.parametrize("options", [{"shuffle": 3}, {"rank": 3, "world_size": 4, "equalize": False}],
                         ids=["one-reader", "split-by-sample"])
def test_restore_with_duplicate_keys(tmp_path, options):
    """Duplicates met before the stop: the shards are read again up to it (nothing decoded); met after it: dropped
    as without a stop, and the split by sample keeps counting after them (decode_chunk=1: nothing read ahead)."""
    data = write_shards(tmp_path / "data", [4, 3])
    copy = data.root / "dynocc-r000-000002.tar"
    write_tar(copy, [make_sample(0, f).members() for f in (1, 3)] + [make_sample(9, f).members() for f in (0, 1)])
    write_index(data.root, [*data.paths, copy], [4, 3, 4])

    def make():
        return DynOccDataset(data.root, seed=3, handler="ignore", decode_chunk=1, **options)

    full = whole_epoch(make)
    assert len(full) == (9 if "shuffle" in options else 2)  # the two duplicates skipped (then every 4th sample)
    for k in range(len(full) + 1):
        read, rest, state = stopped_and_resumed(make, k)
        assert read + rest == full, f"k={k}"


def test_restore_in_resampled_mode(shards):
    def make():
        return DynOccDataset(shards.root, seed=3, shuffle=4, resampled=True, epoch_length=17)

    full = whole_epoch(make)
    assert len(full) == 17
    for k in (0, 5, 16, 17):
        read, rest, _ = stopped_and_resumed(make, k)
        assert read + rest == full, f"k={k}"


class Numbers(Dataset):
    """A map-style dataset of small items known by index."""

    def __len__(self) -> int:
        return 9

    def __getitem__(self, index: int) -> dict:
        return {"image": torch.full((3, 2, 2), index, dtype=torch.uint8), "pairs": torch.zeros(1, 4),
                "ordinal": torch.tensor([index % 3 - 1]), "meta": {"key": f"number{index}"}}


@pytest.mark.parametrize("options", [
    {"stop": "all"}, {"stop": "first"}, {"stop": "never", "epoch_length": 40},
    {"stop": "all", "per_batch": True, "batch_size": 3},
], ids=["all", "first", "never", "per-batch"])
def test_mix_restore_in_a_plain_loop(shards, tmp_path, options):
    other = write_shards(tmp_path / "b", [4, 2], prefix="other")

    def make():
        return mix([DynOccDataset(shards.root, seed=1, shuffle=4), DynOccDataset(other.root, seed=2), Numbers()],
                   [2, 1, 1], seed=5, **options)

    full = whole_epoch(make)
    for k in sorted({0, 1, 7, len(full) - 2, len(full)}):
        read, rest, _ = stopped_and_resumed(make, k)
        assert read + rest == full, f"k={k}"


def test_as_iterable_restore():
    def make():
        return as_iterable(Numbers(), seed=2)

    full = whole_epoch(make)
    for k in range(len(full) + 1):
        read, rest, state = stopped_and_resumed(make, k)
        assert read + rest == full and state["position"] == (None if k == 0 else {"yielded": k})


# ---------------------------------------------------------------------------------------------- bad states


def test_a_state_of_another_dataset_is_refused_in_one_line(shards, tmp_path):
    other = write_shards(tmp_path / "other", [2, 2])
    source = DynOccDataset(shards.root, seed=3, shuffle=4)
    source.set_epoch(1)
    next(iter(source))
    state = source.state_dict()
    cases = [
        (DynOccDataset(shards.root, seed=4, shuffle=4), r"another dataset: seed 3 \(state\) != 4 \(here\)"),
        (DynOccDataset(shards.root, seed=3, shuffle=0), r"another dataset: shuffle 4 \(state\) != 0"),
        (DynOccDataset(other.root, seed=3, shuffle=4), r"another dataset: shards 6 \(state\) != 2"),
        (DynOccDataset(shards.root, seed=3, shuffle=4, rank=1, world_size=2), r"another reader: rank 0 \(state\)"),
        (as_iterable(Numbers()), r"the state is from a DynOccDataset"),
    ]
    for dataset, message in cases:
        with pytest.raises(ValueError, match=message) as caught:
            dataset.load_state_dict(state)
        assert "\n" not in str(caught.value)
    loaded_here = DynOccDataset(shards.root, seed=3, shuffle=4)  # loaded in the main process, read by workers
    loaded_here.load_state_dict(state)
    with pytest.raises(ValueError, match=r"another reader's: num_workers 1 \(state\) != 2"):
        next(iter(DataLoader(loaded_here, num_workers=2, collate_fn=list)))
    with pytest.raises(ValueError, match="not a state of this package"):
        source.load_state_dict({"epoch": 1})
    with pytest.raises(ValueError, match="another dataset: weights"):
        mix([source], [1]).load_state_dict(mix([source], [2]).state_dict())


# ---------------------------------------------------------------------------------------------- StatefulDataLoader


def test_create_loader_stateful_returns_a_stateful_dataloader(shards):
    assert isinstance(create_loader(shards.root, batch_size=2, num_workers=0, stateful=True), StatefulDataLoader)
    plain = create_loader(shards.root, batch_size=2, num_workers=0)
    assert type(plain) is DataLoader


def test_stateful_loader_in_the_main_process_resumes(shards):
    def loader():
        return create_loader(shards.root, batch_size=4, num_workers=0, shuffle=5, seed=2, stateful=True,
                             collate_fn=list)

    full = [describe(x) for batch in loader() for x in batch]
    first = loader()
    batches = iter(first)
    read = [describe(x) for batch in itertools.islice(batches, 3) for x in batch]
    state = json.loads(json.dumps(first.state_dict()))
    second = loader()
    second.load_state_dict(state)
    assert read + [describe(x) for batch in second for x in batch] == full


def run_check(data: Path, *args: str) -> list[list]:
    """Run tests/stateful_loader_check.py in a new process; the batches it printed."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE.parent),
                                                                     os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, str(HERE / "stateful_loader_check.py"), "--data", str(data), *args],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("[")]


@pytest.mark.parametrize("mixed", [False, True], ids=["shards", "mix"])
def test_training_loop_stopped_after_k_batches_resumes_in_a_new_process(tmp_path, mixed):
    """The issue's "done means": 2 workers, state saved as JSON, resumed in a new process, also through mix."""
    write_shards(tmp_path / "a", COUNTS)
    write_shards(tmp_path / "b", [4, 3, 2], prefix="other")
    flag = ["--mix"] if mixed else []
    full = run_check(tmp_path, "--mode", "full", *flag)
    assert sum(map(len, full)) == sum(COUNTS) + (4 + 3 + 2 + 11 if mixed else 0)
    for k in ([0, 4, len(full)] if not mixed else [5]):
        state = tmp_path / f"state{k}.json"
        read = run_check(tmp_path, "--mode", "save", "--batches", str(k), "--state", str(state), *flag)
        rest = run_check(tmp_path, "--mode", "resume", "--state", str(state), *flag)
        assert read == full[:k] and read + rest == full, f"k={k}"
