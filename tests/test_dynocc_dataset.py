"""DynOccDataset: the item contract, URL forms, lengths, rank/worker splitting, shuffling, resampling, errors."""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_shards import (
    evil_npy,
    evil_pickle,
    member_offsets,
    npy_bytes,
    truncate,
    write_shards,
)
from torch.utils.data import DataLoader

from dynocc_data.datasets.dynocc import DynOccDataset, plan_epoch
from dynocc_data.errors import InputError, ShardFormatError
from dynocc_data.format.sample import MissingFieldError

COUNTS = [3, 4, 2, 5]


def as_list(batch):
    """collate_fn keeping the items as they are."""
    return batch


def keys(items) -> list[str]:
    """Sample keys of items, in order."""
    return [item["meta"]["key"] for item in items]


def read(dataset, num_workers: int = 0) -> list[dict]:
    """All items of one epoch through a DataLoader."""
    loader = DataLoader(dataset, batch_size=2, num_workers=num_workers, collate_fn=as_list)
    return [item for batch in loader for item in batch]


@pytest.fixture
def shards(tmp_path):
    return write_shards(tmp_path / "shards", COUNTS)


# ------------------------------------------------------------------------------------------ contract


def test_items_follow_the_contract(shards):
    items = list(DynOccDataset(shards.root))
    assert keys(items) == shards.keys  # no shuffle: shard order, then sample order
    for item in items:
        s = shards.samples[item["meta"]["key"]]
        assert set(item) == {"image", "pairs", "ordinal", "meta", "boundary"}
        assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 12, 16)
        assert torch.equal(item["image"], s.image)
        colour = torch.tensor([s.frame * 10 % 250, 40 + int(s.video_id[4]) * 20, 200], dtype=torch.float32)
        assert (item["image"].float().mean(dim=(1, 2)) - colour).abs().max() <= 3
        assert item["pairs"].dtype == torch.int64 and item["pairs"].shape == (len(s.pairs), 4)
        assert item["pairs"].tolist() == s.pairs.tolist()
        assert item["ordinal"].dtype == torch.int64 and item["ordinal"].tolist() == s.ordinal.tolist()
        assert item["meta"] == {
            "source": "dynocc", "key": s.key, "video": s.video, "video_id": s.video_id, "frame": s.frame,
            "orig_size": (24, 32), "size": (12, 16), "url": str(shards.paths[int(s.video_id[4])]),
        }
        boundary = item["boundary"]
        assert set(boundary) == {"y", "x", "ny", "nx", "confidence", "segment", "jump"}
        for name, tensor in boundary.items():
            assert tensor.dtype == (torch.int64 if name == "segment" else torch.float32)
            assert tensor.tolist() == pytest.approx(s.boundary[name].tolist())


def test_keep_boundary_false_leaves_it_out(shards):
    item = next(iter(DynOccDataset(shards.root, keep_boundary=False)))
    assert set(item) == {"image", "pairs", "ordinal", "meta"}


def test_transform_is_applied_last(shards):
    ds = DynOccDataset(shards.root, transform=lambda item: (item["meta"]["key"], item["pairs"].shape[0]))
    assert list(ds) == [(k, len(shards.samples[k].pairs)) for k in shards.keys]


def test_url_forms_read_the_same_samples(shards):
    paths = [str(p) for p in shards.paths]
    forms = [
        shards.root, shards.root / "index.json", shards.pattern, paths, [Path(p) for p in paths],
        f"{paths[0]}::{paths[1]}::{shards.root}/dynocc-r000-{{000002..000003}}.tar", [f"file://{p}" for p in paths],
    ]
    for form in forms:
        ds = DynOccDataset(form)
        assert sorted(keys(ds)) == sorted(shards.keys), form
        assert len(ds) == sum(COUNTS), form
    piped = f"pipe:cat {shards.pattern}"
    assert sorted(keys(DynOccDataset(piped))) == sorted(shards.keys)
    with pytest.raises(TypeError, match="length unknown"):
        len(DynOccDataset(piped))  # no local index next to a pipe: command ...
    assert len(DynOccDataset(piped, index=shards.root / "index.json")) == sum(COUNTS)  # ... unless given


def test_bad_urls_and_index_are_one_line_input_errors(shards, tmp_path):
    with pytest.raises(InputError, match=r"dynocc-r000-000004.tar: shard not found \(6 of 10 shards missing\)"):
        DynOccDataset(str(shards.root / "dynocc-r000-{000000..000009}.tar"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty/index.json: no index.json"):
        DynOccDataset(tmp_path / "empty")
    (shards.root / "index.json").write_text('{"format": "something else"}')
    with pytest.raises(InputError, match="index.json: not a shard index"):
        DynOccDataset(shards.root)


def test_unknown_strategy_fails_at_construction(shards):
    with pytest.raises(ValueError, match="unknown pair-sampling strategy"):
        DynOccDataset(shards.root, strategy="no-such-strategy")


# ------------------------------------------------------------------------------------------ strategies


def test_custom_strategy_gets_boundary_size_generator_and_stored_pairs(shards):
    from dynocc_data.sampling import sample_generator

    seen = {}

    def strategy(boundary, image_size, generator, stored=None):
        seen[len(seen)] = (boundary, image_size, stored)
        pairs = torch.randint(0, 12, (3, 4), generator=generator)
        return pairs, torch.tensor([1, -1, 0])

    ds = DynOccDataset(shards.root, strategy=strategy, seed=7, keep_boundary=False)
    first = list(ds)
    assert "boundary" not in first[0]
    for item, (boundary, image_size, stored) in zip(first, seen.values()):
        s = shards.samples[item["meta"]["key"]]
        assert image_size == (12, 16)
        assert boundary["y"].tolist() == pytest.approx(s.boundary["y"].tolist())
        assert stored[0].tolist() == s.pairs.tolist() and stored[1].tolist() == s.ordinal.tolist()
        expected = torch.randint(0, 12, (3, 4), generator=sample_generator(7, 0, s.key))
        assert torch.equal(item["pairs"], expected)  # seeded by (seed, epoch, key)
        assert item["ordinal"].tolist() == [1, -1, 0]
    again = list(ds)
    assert all(torch.equal(a["pairs"], b["pairs"]) for a, b in zip(first, again))
    ds.set_epoch(1)
    later = list(ds)
    assert not all(torch.equal(a["pairs"], b["pairs"]) for a, b in zip(first, later))


@pytest.mark.parametrize("strategy", ["boundary", "multiscale", "band", "uniform"])
def test_built_in_strategies_draw_the_same_pairs_from_boundary_npy_as_it_is(shards, strategy):
    # without keep_boundary the sampler gets boundary.npy's structured array, not per-field tensors
    kept = list(DynOccDataset(shards.root, strategy=strategy, seed=3))
    lean = list(DynOccDataset(shards.root, strategy=strategy, seed=3, keep_boundary=False))
    assert keys(kept) == keys(lean) == shards.keys
    assert sum(len(item["pairs"]) for item in lean) > 0
    for a, b in zip(kept, lean):
        assert torch.equal(a["pairs"], b["pairs"]) and torch.equal(a["ordinal"], b["ordinal"])
        assert "boundary" in a and "boundary" not in b


def test_a_failing_batch_is_drawn_again_one_by_one(shards):
    from dynocc_data.sampling import BandSampler

    class Flaky(BandSampler):
        """sample_many always fails; alone, the sample named ``bad`` fails."""

        bad = None

        def sample_many(self, boundaries, image_sizes, generators):
            if len(boundaries) > 1:
                raise RuntimeError("batch")
            return super().sample_many(boundaries, image_sizes, generators)

        def __call__(self, boundary, image_size, generator, stored=None):
            if boundary["y"].tolist() == self.bad:
                raise ValueError("this sample")
            return super().__call__(boundary, image_size, generator, stored)

    reference = list(DynOccDataset(shards.root, strategy="band", seed=2, keep_boundary=False))
    flaky = Flaky()
    got = list(DynOccDataset(shards.root, strategy=flaky, seed=2, keep_boundary=False))
    assert keys(got) == keys(reference)  # every sample drawn alone, with the same pairs
    assert all(torch.equal(a["pairs"], b["pairs"]) and torch.equal(a["ordinal"], b["ordinal"])
               for a, b in zip(got, reference))
    flaky.bad = shards.samples[shards.keys[5]].boundary["y"].tolist()
    first_bad = next(i for i, k in enumerate(shards.keys) if shards.samples[k].boundary["y"].tolist() == flaky.bad)
    assert first_bad > 1
    before_error = []
    with pytest.raises(ValueError, match="this sample"):  # a bug in a strategy is raised, at its sample's turn
        for item in DynOccDataset(shards.root, strategy=flaky, seed=2, keep_boundary=False):
            before_error.append(item["meta"]["key"])
    assert before_error == shards.keys[:first_bad]


def test_stored_pairs_are_decoded_only_for_strategies_that_read_them(tmp_path):
    key = "clip1-9e3779b1_000000"
    s = write_shards(tmp_path / "s", COUNTS, edit={key: {"pairs.npy": b"\x93NUMPY garbage"}})
    assert key not in keys(DynOccDataset(s.root))  # "stored": the sample is skipped
    assert key not in keys(DynOccDataset(s.root, strategy=lambda b, size, g, stored=None: stored))
    for keep_boundary in (True, False):  # "band" draws its own pairs and never reads pairs.npy
        assert keys(DynOccDataset(s.root, strategy="band", keep_boundary=keep_boundary)) == s.keys
    missing = write_shards(tmp_path / "m", COUNTS, edit={key: {"pairs.npy": None}})
    with pytest.raises(MissingFieldError, match="pairs.npy"):  # a missing member is an error all the same
        list(DynOccDataset(missing.root, strategy="band"))


def test_named_strategy_goes_through_create_sampler(shards):
    items = list(DynOccDataset(shards.root, strategy="stored", sampler_options={"max_pairs": 1}))
    assert all(item["pairs"].shape == (1, 4) for item in items)
    assert all(item["pairs"][0].tolist() in shards.samples[item["meta"]["key"]].pairs.tolist() for item in items)


def test_strategy_returning_bad_shapes_is_reported(shards):
    ds = DynOccDataset(shards.root, strategy=lambda b, size, g, stored=None: (torch.zeros(2, 3), torch.zeros(2)))
    with pytest.raises(ValueError, match=r"need int64 \[N,4\]"):
        next(iter(ds))


# ------------------------------------------------------------------------------------------ lengths and splitting


def test_plan_epoch_deals_shards_round_robin_and_equalizes():
    plan = plan_epoch([5, 3, 4, 2, 6, 1, 3, 3], world_size=2, num_workers=2, epoch=0, seed=0, shuffle=False,
                      equalize=True)
    assert plan.readers == ((0, 4), (2, 6), (1, 5), (3, 7))
    assert plan.counts == (11, 7, 4, 5) and plan.quota == 4 and plan.dropped == 27 - 16
    assert plan.rank_length(0) == plan.rank_length(1) == 8
    shuffled = [plan_epoch(list(range(8)), world_size=2, num_workers=2, epoch=e, seed=3, shuffle=True,
                           equalize=False).readers for e in (0, 0, 1)]
    assert shuffled[0] == shuffled[1] and shuffled[0] != shuffled[2]
    assert sorted(i for r in shuffled[2] for i in r) == list(range(8))


def test_length_from_index(shards, tmp_path):
    assert len(DynOccDataset(shards.root)) == 14
    # two ranks: shards 0, 2 (3 + 2 samples) and 1, 3 (4 + 5)
    assert [len(DynOccDataset(shards.root, rank=r, world_size=2, equalize=False)) for r in (0, 1)] == [5, 9]
    assert [len(DynOccDataset(shards.root, rank=r, world_size=2)) for r in (0, 1)] == [5, 5]
    # 2 ranks x 2 workers: readers hold 3, 2 | 4, 5 samples -> 2 each
    assert len(DynOccDataset(shards.root, rank=1, world_size=2, num_workers=2)) == 4
    bare = write_shards(tmp_path / "bare", [2, 2], index=False)
    with pytest.raises(TypeError, match="length unknown"):
        len(DynOccDataset(bare.pattern))


def test_ranks_and_workers_read_disjoint_complete_subsets(tmp_path, monkeypatch):
    s = write_shards(tmp_path / "s", [3] * 8)
    per_rank = [keys(read(DynOccDataset(s.root, rank=r, world_size=2, num_workers=2), num_workers=2)) for r in (0, 1)]
    assert len(per_rank[0]) == len(per_rank[1]) == 12 == len(DynOccDataset(s.root, rank=0, world_size=2))
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == sorted(s.keys)
    monkeypatch.setenv("WORLD_SIZE", "2")
    for r in (0, 1):  # the environment of torchrun, without torch.distributed initialised
        monkeypatch.setenv("RANK", str(r))
        assert sorted(keys(read(DynOccDataset(s.root, num_workers=2), num_workers=2))) == sorted(per_rank[r])


def test_equalize_gives_every_rank_the_same_count(tmp_path, caplog):
    s = write_shards(tmp_path / "s", [5, 3, 4, 2, 6, 1, 3, 3])
    got = []
    for r in (0, 1):
        ds = DynOccDataset(s.root, rank=r, world_size=2, num_workers=2)
        with caplog.at_level(logging.INFO, logger="dynocc_data"):
            got.append(keys(read(ds, num_workers=2)))
        assert len(got[-1]) == len(ds) == 8
        assert ds.stats.dropped == [10, 1][r] and ds.stats.samples == 8
    assert not set(got[0]) & set(got[1])
    unequal = [len(read(DynOccDataset(s.root, rank=r, world_size=2, equalize=False), 2)) for r in (0, 1)]
    assert unequal == [18, 9]


def test_too_few_shards_is_a_clear_error(shards, caplog):
    three = DynOccDataset(shards.paths[:3], rank=0, world_size=2, too_few_shards="error")
    with pytest.raises(InputError, match="3 shards cannot be split over 2 ranks x 2 DataLoader workers"):
        three.check_readers(2)
    with pytest.raises(RuntimeError, match="3 shards cannot be split"):  # re-raised from the worker
        read(three, num_workers=2)
    resample = DynOccDataset(shards.paths[:3], rank=0, world_size=4, too_few_shards="resample", epoch_length=6)
    with caplog.at_level(logging.WARNING):
        assert len(list(resample)) == 6 == len(resample)
    assert "resampling shards instead" in caplog.text


def test_too_few_shards_split_by_sample(tmp_path, caplog):
    """One shard of 7 samples over 2 ranks x 2 workers: no sample twice, every rank the same count, one warning."""
    s = write_shards(tmp_path / "s", [7])
    got = []
    for r in (0, 1):
        ds = DynOccDataset(s.root, rank=r, world_size=2, num_workers=2, shuffle=4, seed=3)
        got.append(keys(read(ds, num_workers=2)))
        assert len(got[-1]) == len(ds) == 2 * (7 // 4)  # 7 // 4 readers = 1 each: 3 dropped
    assert not set(got[0]) & set(got[1])
    for r in range(4):  # in the main process (caplog sees it): 4 ranks x 1 reader; the warning once, on rank 0
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="dynocc_data"):
            assert len(list(DynOccDataset(s.root, rank=r, world_size=4))) == 1
        warned = [rec for rec in caplog.records if "keeps 1 sample in 4" in rec.getMessage()]
        assert len(warned) == (1 if r == 0 else 0) and len(caplog.records) == len(warned)
    # one rank, two workers: every sample exactly once, nothing dropped
    one = DynOccDataset(s.root, num_workers=2)
    assert sorted(keys(read(one, num_workers=2))) == sorted(s.keys) and len(one) == 7
    # two shards, one rank, three workers: still every sample once
    s2 = write_shards(tmp_path / "s2", [4, 5])
    assert sorted(keys(read(DynOccDataset(s2.root), num_workers=3))) == sorted(s2.keys)


# ------------------------------------------------------------------------------------------ shuffle, resampling


def test_shuffle_is_reproducible_per_seed_and_epoch(tmp_path):
    s = write_shards(tmp_path / "s", [4] * 6)
    ds = DynOccDataset(s.root, shuffle=8, seed=1)
    epoch0 = keys(ds)
    assert keys(ds) == epoch0 and sorted(epoch0) == sorted(s.keys) and epoch0 != s.keys
    ds.set_epoch(1)
    epoch1 = keys(ds)
    assert epoch1 != epoch0 and sorted(epoch1) == sorted(epoch0)
    assert keys(DynOccDataset(s.root, shuffle=8, seed=2)) != epoch0
    assert keys(DynOccDataset(s.root)) == s.keys


def test_resampled_mode_yields_epoch_length_items(shards):
    ds = DynOccDataset(shards.root, resampled=True, epoch_length=13, seed=3)
    epoch0 = keys(ds)
    assert len(epoch0) == 13 == len(ds) and set(epoch0) <= set(shards.keys)
    assert keys(ds) == epoch0
    ds.set_epoch(1)
    assert keys(ds) != epoch0
    assert len(read(ds, num_workers=2)) == 13


# ------------------------------------------------------------------------------------------ bad data


def cut(path: Path, member: str, *, into_data: bool) -> None:
    """Truncate a shard inside ``member``'s data, or exactly before its header."""
    name, header, data = next(m for m in member_offsets(path) if m[0] == member)
    truncate(path, data + 10 if into_data else header)


@pytest.mark.parametrize("into_data, index", [(True, True), (False, True), (False, False)],
                         ids=["inside-a-member", "at-a-member-boundary", "at-a-member-boundary-no-index"])
def test_truncated_shard_is_skipped_with_a_warning_and_counted(tmp_path, caplog, into_data, index):
    shards = write_shards(tmp_path / "s", COUNTS, index=index)
    victim = shards.keys_by_shard[1][2]
    cut(shards.paths[1], f"{victim}.jpg", into_data=into_data)  # members are written sorted: boundary.npy first
    ds = DynOccDataset(shards.pattern)
    with caplog.at_level(logging.WARNING):
        got = keys(ds)
    # the readable samples of the cut shard are kept; its incomplete one is skipped, not a missing-field error
    assert got == [k for k in shards.keys if k not in shards.keys_by_shard[1][2:]]
    assert (ds.stats.shard_errors, ds.stats.skipped_samples) == (1, 1)
    assert f"bad shard (samples read before the error are kept): {shards.paths[1]}: " in caplog.text
    assert f"skipped sample cut off by the broken shard: {shards.paths[1]} [{victim}]" in caplog.text
    with pytest.raises(ShardFormatError, match="dynocc-r000-000001.tar: (truncated|unreadable)"):
        list(DynOccDataset(shards.pattern, handler="raise"))


def test_corrupt_tar_header_ends_the_shard_with_a_warning_and_a_count(shards, caplog):
    name, header, _ = member_offsets(shards.paths[1])[7]  # sample 1 of shard 1: boundary.npy, jpg, then json
    assert name == f"{shards.keys_by_shard[1][1]}.json"
    with open(shards.paths[1], "r+b") as stream:
        stream.seek(header)
        stream.write(b"\x07" * 512)
    ds = DynOccDataset(shards.root)
    with caplog.at_level(logging.WARNING):
        got = keys(ds)
    assert got == [k for k in shards.keys if k not in shards.keys_by_shard[1][1:]]
    assert (ds.stats.shard_errors, ds.stats.skipped_samples) == (1, 1)
    assert f"{shards.paths[1]}: truncated or corrupt: ended after 2 of 4 samples" in caplog.text


@pytest.mark.parametrize("chunk", [1, 3, 8])
def test_corrupt_samples_are_skipped_and_counted(tmp_path, caplog, chunk):
    # a bad JPEG (found by the decode step) before bad small members (found by the parse step): with chunks the
    # parse step runs first over the chunk, yet errors reach the handler in sample order, as without chunks
    bad = {"clip0-00000000_000001": {"jpg": b"not a jpeg"},
           "clip1-9e3779b1_000000": {"pairs.npy": b"\x93NUMPY garbage"},
           "clip1-9e3779b1_000002": {"json": b"{not json"},
           "clip2-3c6ef362_000000": {"ordinal.npy": npy_bytes(np.full(4, 7, dtype=np.int8))}}
    s = write_shards(tmp_path / "s", COUNTS, edit=bad)
    assert set(bad) <= set(s.keys)
    ds = DynOccDataset(s.root, decode_chunk=chunk)
    with caplog.at_level(logging.WARNING):
        got = keys(ds)
    assert got == [k for k in s.keys if k not in bad]
    assert ds.stats.skipped_samples == 4 and ds.stats.shard_errors == 0
    assert f"skipped sample: {s.paths[0]} [clip0-00000000_000001]: jpg: " in caplog.text
    assert f"skipped sample: {s.paths[1]} [clip1-9e3779b1_000000]: pairs.npy: " in caplog.text
    before_error = []
    with pytest.raises(ShardFormatError, match=r"dynocc-r000-000000.tar \[clip0-00000000_000001\]: jpg"):
        for item in DynOccDataset(s.root, handler="raise", decode_chunk=chunk):
            before_error.append(item["meta"]["key"])
    assert before_error == s.keys[:1]  # the samples before the bad one come out first
    errors = []
    assert len(list(DynOccDataset(s.root, handler=lambda e: errors.append(e) or True, decode_chunk=chunk))) == 10
    assert [e.key for e in errors] == [k for k in s.keys if k in bad]  # in sample order
    assert keys(DynOccDataset(s.root, handler=lambda e: False, decode_chunk=chunk)) == s.keys[:1]  # stop


def test_decode_chunk_changes_nothing_but_speed(shards):
    from dynocc_data.transforms import create_transform

    def epoch(chunk):
        torch.manual_seed(3)  # the transform draws from the global generator, in item order
        ds = DynOccDataset(shards.root, strategy="band", shuffle=5, seed=1, decode_chunk=chunk,
                           transform=create_transform(train=True, size=(8, 8), crop="random", to_float=False))
        return list(ds)

    one, chunked = epoch(1), epoch(4)
    assert keys(one) == keys(chunked) and len(one) == sum(COUNTS)
    for a, b in zip(one, chunked):
        assert all(torch.equal(a[k], b[k]) for k in ("image", "pairs", "ordinal"))
        assert all(torch.equal(a["boundary"][k], b["boundary"][k]) for k in a["boundary"])
    with pytest.raises(ValueError, match="decode_chunk"):
        DynOccDataset(shards.root, decode_chunk=0)


def test_missing_field_names_shard_key_and_field(tmp_path):
    key = "clip1-9e3779b1_000002"
    s = write_shards(tmp_path / "s", COUNTS, edit={key: {"ordinal.npy": None}})
    for handler in ("warn", "raise", lambda e: True):
        with pytest.raises(MissingFieldError) as info:
            list(DynOccDataset(s.root, handler=handler))
        assert str(info.value).startswith(f"{s.paths[1]} [{key}]: sample has no ordinal.npy member")
    with pytest.raises(RuntimeError, match=f"{key}.*ordinal.npy"):
        read(DynOccDataset(s.root), num_workers=2)


def test_pickled_members_are_never_unpickled(tmp_path):
    proof = tmp_path / "proof"
    pickle.loads(evil_pickle(proof))  # the payload is live: unpickling it creates the folder
    assert proof.is_dir()
    markers = [tmp_path / f"marker{i}" for i in range(3)]
    edit = {"clip0-00000000_000000": {"pyd": evil_pickle(markers[0]), "pickle": evil_pickle(markers[1])},
            "clip1-9e3779b1_000001": {"pairs.npy": evil_npy(markers[2])}}
    s = write_shards(tmp_path / "s", COUNTS, edit=edit)
    ds = DynOccDataset(s.root)
    items = list(ds)
    assert keys(items) == [k for k in s.keys if k != "clip1-9e3779b1_000001"]  # the object .npy is refused
    assert set(items[0]) == {"image", "pairs", "ordinal", "meta", "boundary"}  # .pyd/.pickle ignored
    assert ds.stats.skipped_samples == 1
    assert not any(os.path.exists(m) for m in markers)
