"""create_loader: worker counts, seeding, epochs with persistent workers, early errors, and real DDP (torchrun)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import pickle
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from fixtures_shards import write_shards
from torch.utils.data import Dataset, IterableDataset

from dynocc_data.datasets._distributed import mix_seed, share_of
from dynocc_data.datasets.dynocc import DynOccDataset
from dynocc_data.datasets.loader import create_loader
from dynocc_data.errors import InputError

HERE = Path(__file__).resolve().parent


def as_list(batch):
    """collate_fn keeping the items as they are."""
    return batch


def keys(loader) -> list[str]:
    """Keys of one epoch, in order."""
    return [item["meta"]["key"] for batch in loader for item in batch]


@pytest.fixture
def shards(tmp_path):
    return write_shards(tmp_path / "shards", [3, 4, 2, 5])  # uneven on purpose


def test_0_1_and_2_workers_read_the_same_samples(shards):
    for urls in (shards.root, shards.pattern):
        for workers in (0, 1, 2):
            loader = create_loader(urls, batch_size=3, num_workers=workers, collate_fn=as_list)
            assert sorted(keys(loader)) == sorted(shards.keys), (urls, workers)
            assert len(loader.dataset) == 14
    dataset = DynOccDataset(shards.root)
    assert sorted(keys(create_loader(dataset, batch_size=4, num_workers=2, collate_fn=as_list))) == sorted(shards.keys)
    assert dataset.num_workers == 2  # create_loader told the dataset


def test_dataset_options_only_with_urls(shards):
    with pytest.raises(ValueError, match="only apply when create_loader builds the dataset"):
        create_loader(DynOccDataset(shards.root), batch_size=2, num_workers=0, strategy="band", collate_fn=as_list)


def test_too_few_shards_fail_in_the_main_process(shards):
    with pytest.raises(InputError, match="4 shards cannot be split over 1 ranks x 5 DataLoader workers"):
        create_loader(shards.root, batch_size=2, num_workers=5, collate_fn=as_list, too_few_shards="error")


def test_length_follows_the_worker_count_under_equalize(tmp_path):
    s = write_shards(tmp_path / "s", [5, 3, 4, 2, 6, 1, 3, 3])
    loader = create_loader(s.root, batch_size=3, num_workers=2, collate_fn=as_list, rank=1, world_size=2)
    got = keys(loader)
    assert len(got) == len(loader.dataset) == 8  # readers hold 11, 7 | 4, 5 samples -> 4 each


def sample_randomness(item):
    """Transform recording numpy and Python random draws in the worker."""
    return item["meta"]["key"], int(np.random.randint(1 << 30)), random.random()


def test_workers_get_distinct_reproducible_numpy_and_random_seeds(tmp_path):
    s = write_shards(tmp_path / "s", [4, 4])
    runs = [list(create_loader(s.root, batch_size=4, num_workers=2, collate_fn=as_list, transform=sample_randomness,
                               seed=11)) for _ in range(2)]
    assert runs[0] == runs[1]  # same seed, same draws
    first, second = runs[0][0], runs[0][1]  # one batch per worker
    assert {k for k, _, _ in first}.isdisjoint({k for k, _, _ in second})
    assert [d[1:] for d in first] != [d[1:] for d in second]  # the workers' generators differ
    other = list(create_loader(s.root, batch_size=4, num_workers=2, collate_fn=as_list, transform=sample_randomness,
                               seed=12))
    assert other != runs[0]


def test_persistent_workers_follow_set_epoch(tmp_path):
    s = write_shards(tmp_path / "s", [4] * 4)
    loader = create_loader(s.root, batch_size=2, num_workers=2, collate_fn=as_list, shuffle=6, seed=3,
                           persistent_workers=True)
    epoch0 = keys(loader)
    loader.dataset.set_epoch(1)
    epoch1 = keys(loader)  # same worker processes: the epoch must reach them through shared memory
    fresh = create_loader(s.root, batch_size=2, num_workers=2, collate_fn=as_list, shuffle=6, seed=3)
    fresh.dataset.set_epoch(1)
    assert epoch1 == keys(fresh) and epoch1 != epoch0 and sorted(epoch1) == sorted(epoch0)


def test_map_style_datasets_are_streamed_split_and_shuffled():
    class Squares(Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, i):
            return i * i

    loader = create_loader(Squares(), batch_size=3, num_workers=2, collate_fn=as_list, seed=4)
    assert isinstance(loader.dataset, IterableDataset)
    got = [x for batch in loader for x in batch]
    assert sorted(got) == [i * i for i in range(10)] and got != sorted(got)


def test_default_collate_is_collate_pairs(shards):
    if importlib.util.find_spec("dynocc_data.collate") is None:
        with pytest.raises(ImportError, match="pass collate_fn= explicitly"):
            create_loader(shards.root, batch_size=2, num_workers=0)
    else:
        from dynocc_data.collate import collate_pairs

        assert create_loader(shards.root, batch_size=2, num_workers=0).collate_fn is collate_pairs


def test_rank_is_recorded_when_pickled_for_spawned_workers(shards, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    blob = pickle.dumps(DynOccDataset(shards.root))
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")  # a spawned worker of an mp.spawn job may not see the rank at all
    assert pickle.loads(blob)._node() == (1, 2)


def test_helpers():
    assert [share_of(10, p, 4) for p in range(4)] == [3, 3, 2, 2]
    assert mix_seed(1, 2) == mix_seed(1, 2) != mix_seed(2, 1)


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_torchrun_two_ranks_two_workers_disjoint_complete_and_equal_batches(tmp_path):
    even = write_shards(tmp_path / "even", [3] * 8)
    uneven = write_shards(tmp_path / "uneven", [5, 3, 4, 2, 6, 1, 3, 3])
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)]), "OMP_NUM_THREADS": "1"}
    cmd = ["torchrun", "--standalone", "--nproc_per_node", "2", str(HERE / "ddp_loader_check.py"),
           "--urls", str(even.root), "--urls", str(uneven.root), "--out", str(out),
           "--num-workers", "2", "--batch-size", "3", "--shuffle", "4"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in records] == [0, 1] and all(r["world"] == 2 for r in records)
    for shard_set, epochs in zip((even, uneven), zip(records[0]["sets"], records[1]["sets"])):
        for per_rank in zip(*epochs):  # one epoch, both ranks
            k0, k1 = per_rank[0]["keys"], per_rank[1]["keys"]
            assert len(k0) == len(set(k0)) and not set(k0) & set(k1)  # no sample read twice
            assert len(k0) == len(k1) == per_rank[0]["len"] == per_rank[1]["len"]
            batches = 2 * math.ceil(len(k0) / 2 / 3)  # 2 workers, each batching its quota by 3
            assert per_rank[0]["all_batches"] == per_rank[1]["all_batches"] == [batches, batches]
            if shard_set is even:
                assert sorted(k0 + k1) == sorted(even.keys)  # equal shards: nothing dropped
            else:
                assert set(k0) | set(k1) < set(uneven.keys)  # equalized: the surplus is dropped
        assert epochs[0][0]["keys"] != epochs[0][1]["keys"]  # set_epoch reshuffled
