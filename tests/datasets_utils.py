"""One contract test case run against every dataset class, as torchvision's ``test/datasets_utils.py`` does.

A subclass of :class:`DatasetContract` writes small fake data on disk in the source's exact format and builds the
dataset over it (:meth:`DatasetContract.make`); the base class's tests then check the item contract of
docs/FORMAT.md on every item it yields, and the behaviour every dataset of the package shares:

* ``image`` ``uint8 [3,H,W]``; ``pairs`` ``int64 [N,4]`` inside the image; ``ordinal`` ``int64 [N]`` in {-1, 0, 1};
  ``meta`` with ``source`` (the subclass's), ``key`` (unique), ``video``, ``frame`` (int >= 0) and ``orig_size``;
  the optional dense fields, when present, ``depth`` ``float32 [1,H,W]`` and ``valid_mask`` ``bool [1,H,W]``
  with ``meta["depth_kind"]``;
* the same items twice (determinism) and after pickling (DataLoader workers started by spawn);
* ``len()`` equal to the items of an epoch, where a length is defined;
* a ``transform`` sees each item and its result is what the dataset yields;
* through ``DataLoader(num_workers=2, collate_fn=collate_pairs)`` the same items as in-process, none twice.

A new dataset class gets these checks by adding one subclass to ``tests/test_dataset_contract.py``.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset

from dynocc_data import collate_pairs

Item = dict[str, Any]


def items_of(dataset: Any) -> list[Item]:
    """Every item of one epoch, in order (map-style: by index; iterable: by iteration)."""
    if isinstance(dataset, IterableDataset):
        return list(dataset)
    return [dataset[i] for i in range(len(dataset))]


def check_item(item: Item, *, source: str | Iterable[str]) -> None:
    """Assert that ``item`` follows the item contract of docs/FORMAT.md (``source``: the allowed meta sources)."""
    sources = {source} if isinstance(source, str) else set(source)
    image = item["image"]
    assert isinstance(image, torch.Tensor) and image.dtype == torch.uint8, type(image)
    assert image.ndim == 3 and image.shape[0] == 3 and image.shape[1] > 0 and image.shape[2] > 0
    height, width = image.shape[1:]
    pairs, ordinal = item["pairs"], item["ordinal"]
    assert pairs.dtype == torch.int64 and pairs.ndim == 2 and pairs.shape[1] == 4
    assert ordinal.dtype == torch.int64 and ordinal.shape == (len(pairs),)
    if len(pairs):
        assert int(pairs.min()) >= 0
        assert int(pairs[:, [0, 2]].max()) < height and int(pairs[:, [1, 3]].max()) < width
        assert set(ordinal.unique().tolist()) <= {-1, 0, 1}
    meta = item["meta"]
    assert {"source", "key", "video", "frame", "orig_size"} <= set(meta)
    assert meta["source"] in sources
    assert isinstance(meta["key"], str) and meta["key"]
    assert isinstance(meta["video"], str) and meta["video"]
    assert type(meta["frame"]) is int and meta["frame"] >= 0
    orig = meta["orig_size"]
    assert isinstance(orig, tuple) and len(orig) == 2 and all(type(v) is int and v > 0 for v in orig)
    if "depth" in item:
        assert item["depth"].dtype == torch.float32 and item["depth"].shape == (1, height, width)
        assert "depth_kind" in meta
    if "valid_mask" in item:
        assert item["valid_mask"].dtype == torch.bool and item["valid_mask"].shape == (1, height, width)


def same_items(a: list[Item], b: list[Item]) -> bool:
    """True when two lists hold the same items (images, pairs, ordinals and keys), in the same order."""
    return len(a) == len(b) and all(
        x["meta"]["key"] == y["meta"]["key"] and torch.equal(x["image"], y["image"])
        and torch.equal(x["pairs"], y["pairs"]) and torch.equal(x["ordinal"], y["ordinal"])
        for x, y in zip(a, b)
    )


class _Recorder:
    """A transform that counts its calls and marks the item (a class, so that it pickles for workers)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, item: Item) -> Item:
        self.calls += 1
        return {**item, "meta": {**item["meta"], "transformed": True}}


class DatasetContract:
    """Base test case: subclasses set :attr:`source` and implement :meth:`make` (not collected by itself)."""

    source: str | tuple[str, ...] = ""
    """The ``meta["source"]`` the items must carry (a tuple when a mix yields several)."""
    has_len: bool = True
    """Whether ``len()`` is defined on the dataset built by :meth:`make`."""
    takes_transform: bool = True
    """Whether :meth:`make` accepts ``transform=``."""

    def make(self, root: Path, **kwargs: Any) -> Any:
        """Write fake data in the exact format under ``root`` and return the dataset built over it."""
        raise NotImplementedError

    @pytest.fixture
    def dataset(self, tmp_path: Path) -> Any:
        return self.make(tmp_path)

    @pytest.fixture
    def items(self, dataset: Any) -> list[Item]:
        return items_of(dataset)

    def test_every_item_follows_the_contract(self, items: list[Item]) -> None:
        assert items, "the fake data must give at least one item"
        for item in items:
            check_item(item, source=self.source)
        assert any(len(item["pairs"]) for item in items), "the fake data must give some pairs"

    def test_keys_are_unique(self, items: list[Item]) -> None:
        keys = [item["meta"]["key"] for item in items]
        assert len(keys) == len(set(keys))

    def test_same_items_twice_and_after_pickling(self, dataset: Any, items: list[Item]) -> None:
        assert same_items(items, items_of(dataset))
        assert same_items(items, items_of(pickle.loads(pickle.dumps(dataset))))

    def test_len_is_the_number_of_items(self, dataset: Any, items: list[Item]) -> None:
        if not self.has_len:
            pytest.skip(f"{type(dataset).__name__} built this way has no fixed length")
        assert len(dataset) == len(items)

    def test_transform_sees_each_item(self, tmp_path: Path) -> None:
        if not self.takes_transform:
            pytest.skip("this dataset takes its transform on the sources")
        recorder = _Recorder()
        transformed = items_of(self.make(tmp_path, transform=recorder))
        assert transformed and all(item["meta"].get("transformed") for item in transformed)
        assert recorder.calls == len(transformed)

    def test_dataloader_with_two_workers_yields_each_item_once(self, dataset: Any, items: list[Item]) -> None:
        loader = DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=_ListCollate(),
                            shuffle=False if not isinstance(dataset, IterableDataset) else None)
        loaded = [item for batch in loader for item in batch]
        by_key: Callable[[Item], str] = lambda item: item["meta"]["key"]  # noqa: E731
        assert same_items(sorted(loaded, key=by_key), sorted(items, key=by_key))
        alike = [item for item in items if item["image"].shape == items[0]["image"].shape][:2]
        batch = collate_pairs(alike)
        assert batch["image"].shape[0] == len(alike) and batch["pairs"].shape[0] == len(alike)


class _ListCollate:
    """Collate into a plain list (items keep their own sizes)."""

    def __call__(self, batch: list[Item]) -> list[Item]:
        return batch
