"""mix() and as_iterable(): proportions, end-of-source semantics, rank/worker splitting, epochs."""

from __future__ import annotations

from collections import Counter
from itertools import islice

import pytest
import torch
from fixtures_shards import write_shards
from torch.utils.data import DataLoader, Dataset

from dynocc_data.collate import collate_pairs
from dynocc_data.datasets.dynocc import DynOccDataset
from dynocc_data.datasets.mix import MapAsIterable, as_iterable, mix


class Numbers(Dataset):
    """Map-style dataset of ``(name, index)``."""

    def __init__(self, name: str, n: int) -> None:
        self.name, self.n = name, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[str, int]:
        if not 0 <= index < self.n:
            raise IndexError(index)
        return self.name, index


def as_list(batch):
    """collate_fn keeping the items as they are."""
    return batch


def read(dataset, num_workers: int) -> list:
    """One epoch through a DataLoader."""
    loader = DataLoader(dataset, batch_size=50, num_workers=num_workers, collate_fn=as_list)
    return [item for batch in loader for item in batch]


def share(items, name: str) -> float:
    """Fraction of items from source ``name``."""
    return sum(item[0] == name for item in items) / len(items)


def test_proportions_follow_the_weights_without_workers():
    items = list(islice(mix([Numbers("a", 5000), Numbers("b", 5000)], [3, 1], seed=0), 4000))
    assert len(items) == 4000 and abs(share(items, "a") - 0.75) <= 0.03
    cycled = list(mix([Numbers("a", 100), Numbers("b", 100)], [3, 1], stop="never", epoch_length=4000, seed=1))
    assert len(cycled) == 4000 and abs(share(cycled, "a") - 0.75) <= 0.03


def test_proportions_follow_the_weights_with_workers():
    mixed = mix([Numbers("a", 300), Numbers("b", 300)], [3, 1], stop="never", epoch_length=4000, seed=2)
    items = read(mixed, num_workers=2)
    assert len(items) == 4000 == len(mixed) and abs(share(items, "a") - 0.75) <= 0.03


def test_stop_first_ends_at_the_first_exhausted_source():
    items = list(mix([Numbers("a", 10), Numbers("b", 1000)], [1, 1], stop="first", seed=3))
    counts = Counter(name for name, _ in items)
    assert sorted(i for name, i in items if name == "a") == list(range(10))  # "a" ran out ...
    assert 0 < counts["b"] < 1000  # ... and "b" was left unfinished
    with pytest.raises(TypeError, match="not fixed"):
        len(mix([Numbers("a", 10)], stop="first"))


def test_stop_all_reads_every_item_once():
    mixed = mix([Numbers("a", 10), Numbers("b", 30), Numbers("c", 5)], [1, 5, 0], stop="all", seed=4)
    items = list(mixed)
    assert sorted(items) == sorted([("a", i) for i in range(10)] + [("b", i) for i in range(30)])
    assert len(mixed) == 40  # a zero-weight source is never drawn


def test_stop_never_restarts_exhausted_sources():
    items = list(mix([Numbers("a", 3), Numbers("b", 5)], stop="never", epoch_length=50, seed=5))
    counts = Counter(name for name, _ in items)
    assert len(items) == 50 and counts["a"] > 3 and counts["b"] > 5
    assert {i for name, i in items if name == "a"} == {0, 1, 2}
    with pytest.raises(ValueError, match="yields nothing"):
        list(mix([Numbers("a", 3), Numbers("empty", 0)], [1, 100], stop="never", epoch_length=10))


def test_bad_weights_are_rejected():
    for weights in ([1], [1, -1], [0, 0], [1, float("nan")]):
        with pytest.raises(ValueError):
            mix([Numbers("a", 3), Numbers("b", 3)], weights)
    with pytest.raises(ValueError, match="stop"):
        mix([Numbers("a", 3)], stop="sometimes")


def test_as_iterable_splits_indices_over_ranks_and_workers():
    data = Numbers("a", 11)
    parts = {(r, w): MapAsIterable(data, seed=1).indices(rank=r, world_size=2, worker=w, num_workers=2)
             for r in (0, 1) for w in (0, 1)}
    flat = [i for p in parts.values() for i in p]
    assert len(flat) == len(set(flat)) == 10  # 11 // 2 per rank: one index left out this epoch
    assert [len(p) for p in parts.values()] == [3, 2, 3, 2]
    ranks = [[i for _, i in read(as_iterable(data, seed=1, rank=r, world_size=2), 2)] for r in (0, 1)]
    for r in (0, 1):
        assert sorted(ranks[r]) == sorted(parts[r, 0] + parts[r, 1])
    assert [len(as_iterable(data, rank=r, world_size=2)) for r in (0, 1)] == [5, 5]
    whole = [as_iterable(data, equalize=False, rank=r, world_size=2) for r in (0, 1)]
    assert [len(w) for w in whole] == [6, 5]
    assert sorted(i for w in whole for _, i in w) == list(range(11))


def test_as_iterable_shuffles_per_epoch_reproducibly():
    stream = as_iterable(Numbers("a", 50), seed=7)
    first = list(stream)
    assert list(stream) == first and sorted(first) == [("a", i) for i in range(50)] and first != sorted(first)
    stream.set_epoch(1)
    assert list(stream) != first
    assert list(as_iterable(Numbers("a", 50), shuffle=False)) == [("a", i) for i in range(50)]


def test_mix_over_ranks_and_workers_reads_each_item_once(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    got = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        got += read(mix([Numbers("a", 40), Numbers("b", 20)], [1, 1], stop="all", seed=8), num_workers=2)
    assert sorted(got) == sorted([("a", i) for i in range(40)] + [("b", i) for i in range(20)])


def test_set_epoch_reaches_every_source(tmp_path):
    shards = write_shards(tmp_path / "s", [3, 4])
    dynocc = DynOccDataset(shards.root, shuffle=4)
    mixed = mix([dynocc, Numbers("n", 5)], [1, 1], stop="all")
    mixed.set_epoch(3)
    assert dynocc.epoch == 3 and mixed.datasets[1]._epoch.get() == 3
    items = list(mixed)
    assert sorted(i["meta"]["key"] for i in items if isinstance(i, dict)) == sorted(shards.keys)
    assert sorted(i for i in items if isinstance(i, tuple)) == [("n", i) for i in range(5)]


class Items(Dataset):
    """Map-style dataset of contract-like dict items named by source and index (tiny images)."""

    def __init__(self, name: str, n: int) -> None:
        self.name, self.n = name, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.n:
            raise IndexError(index)
        return {"image": torch.zeros(3, 2, 2, dtype=torch.uint8), "pairs": torch.zeros(0, 4, dtype=torch.int64),
                "ordinal": torch.zeros(0, dtype=torch.int64), "meta": {"source": self.name, "key": f"{index}"}}


def test_per_batch_mixing_over_two_workers_and_two_ranks(monkeypatch):
    """Every batch from one source; batch shares follow the weights across 2 workers x 2 ranks; loss weights."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    batch_size, batches_per_rank = 8, 300
    sources = {}
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        mixed = mix([Items("a", 97), Items("b", 61)], [3, 1], stop="never", seed=11, per_batch=True,
                    batch_size=batch_size, epoch_length=batch_size * batches_per_rank, loss_weights=[1.0, 0.25])
        loader = DataLoader(mixed, batch_size=batch_size, num_workers=2, collate_fn=collate_pairs)
        batches = list(loader)
        assert len(batches) == batches_per_rank
        for batch in batches:
            names = {m["source"] for m in batch["meta"]}
            assert len(names) == 1, names  # one source per batch
            assert batch["source_index"].unique().tolist() == [0 if names == {"a"} else 1]
            assert batch["loss_weight"].tolist() == [1.0 if names == {"a"} else 0.25] * batch_size
        sources[rank] = [batch["meta"][0]["source"] for batch in batches]
    everything = sources[0] + sources[1]
    # 600 batches, weight 3:1: the share of "a" batches is 0.75 +- 0.018 (1 sd); 4 sd tolerance
    assert abs(everything.count("a") / len(everything) - 0.75) <= 0.07
    for rank in (0, 1):
        assert abs(sources[rank].count("a") / len(sources[rank]) - 0.75) <= 0.1
    assert sources[0] != sources[1]  # ranks draw their own sequences


def test_per_batch_runs_in_process_and_end_of_sources():
    mixed = mix([Items("a", 20), Items("b", 9)], [1, 1], stop="all", seed=1, per_batch=True, batch_size=4)
    items = list(mixed)
    runs = [items[i:i + 4] for i in range(0, len(items), 4)]
    assert all(len({it["meta"]["source"] for it in run}) == 1 for run in runs)
    # "b" gives two whole batches (its last item, a partial batch, is left out); "a" all five
    assert sum(it["meta"]["source"] == "a" for it in items) == 20
    assert sum(it["meta"]["source"] == "b" for it in items) == 8
    with pytest.raises(ValueError, match="batch_size"):
        mix([Items("a", 3)], per_batch=True)
    with pytest.raises(ValueError, match="loss_weights"):
        mix([Items("a", 3), Items("b", 3)], loss_weights=[1.0])
    plain = list(mix([Numbers("a", 3)], per_batch=True, batch_size=3))
    assert sorted(plain) == [("a", 0), ("a", 1), ("a", 2)]  # non-dict items pass untagged
