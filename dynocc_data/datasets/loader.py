"""DataLoader factory and the rank/worker/epoch plumbing shared by the streaming datasets.

``create_loader`` is the timm-style entry point::

    loader = create_loader("shards/", batch_size=32, num_workers=8, strategy="band", seed=0)
    for epoch in range(epochs):
        loader.dataset.set_epoch(epoch)   # reshuffles shards and buffers, re-draws pairs and resampling
        for batch in loader:
            ...

Distributed data parallel (DDP): start every rank with the same arguments (``torchrun ...``) and call
``torch.distributed.init_process_group`` before iterating. Each rank then reads a disjoint subset of the
shards (rank from ``torch.distributed`` when initialised, else from the ``RANK``/``WORLD_SIZE`` environment
variables, else a single process), each DataLoader worker a disjoint subset of its rank's shards, and with
``equalize=True`` (the default) every rank yields the same number of samples and batches, so no rank waits
for another at the end of an epoch. Do **not** add a ``DistributedSampler``: the split is done by the dataset.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

logger = logging.getLogger(__name__)

__all__ = [
    "SharedEpoch",
    "create_loader",
    "distributed_info",
    "mix_seed",
    "seed_worker",
    "share_of",
    "worker_info",
]


class SharedEpoch:
    """An epoch number in shared memory, so ``set_epoch`` reaches persistent DataLoader workers too."""

    def __init__(self, epoch: int = 0) -> None:
        """Allocate the shared counter (a shared-memory tensor survives fork and spawn alike)."""
        self._value = torch.full((), int(epoch), dtype=torch.int64).share_memory_()

    def set(self, epoch: int) -> None:
        """Set the epoch (visible to every worker of this dataset)."""
        if int(epoch) < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self._value.fill_(int(epoch))

    def get(self) -> int:
        """The current epoch."""
        return int(self._value.item())


def distributed_info(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """``(rank, world_size)``: explicit values, else ``torch.distributed`` when initialised, else the
    ``RANK``/``WORLD_SIZE`` environment variables, else ``(0, 1)``."""
    if rank is None or world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            found = torch.distributed.get_rank(), torch.distributed.get_world_size()
        elif "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            found = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        else:
            found = 0, 1
        rank = found[0] if rank is None else rank
        world_size = found[1] if world_size is None else world_size
    if not (world_size >= 1 and 0 <= rank < world_size):
        raise ValueError(f"invalid rank {rank} for world size {world_size}")
    return int(rank), int(world_size)


def worker_info() -> tuple[int, int]:
    """``(worker id, number of workers)`` of the current DataLoader worker; ``(0, 1)`` in the main process."""
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (int(info.id), int(info.num_workers))


def mix_seed(*values: int) -> int:
    """A 63-bit seed from integers, stable across processes and runs (unlike ``hash`` of a string)."""
    state = np.random.SeedSequence([int(v) & 0xFFFFFFFFFFFFFFFF for v in values]).generate_state(2, np.uint64)
    return int(state[0] >> np.uint64(1))


def share_of(total: int, part: int, parts: int) -> int:
    """Items of ``total`` given to ``part`` when split as evenly as possible into ``parts`` (first ones get more)."""
    return total // parts + (1 if part < total % parts else 0)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed Python's ``random`` and NumPy from the worker's torch seed.

    torch seeds each worker with ``base_seed + worker_id`` (``base_seed`` drawn from the loader's generator), but
    leaves ``random`` and NumPy alone, so every worker would otherwise draw the same augmentations.
    """
    seed = torch.initial_seed()
    random.seed(seed)
    np.random.seed(seed % 2**32)


def _chain(first: Callable[[int], None], second: Callable[[int], None] | None) -> Callable[[int], None]:
    """Call ``first`` then ``second`` (when given) with the worker id."""
    if second is None:
        return first
    return _ChainedInit(first, second)


class _ChainedInit:
    """Two ``worker_init_fn`` called in order (a class, not a closure, so that it pickles for spawn)."""

    def __init__(self, first: Callable[[int], None], second: Callable[[int], None]) -> None:
        """Keep both functions."""
        self.first, self.second = first, second

    def __call__(self, worker_id: int) -> None:
        """Run both."""
        self.first(worker_id)
        self.second(worker_id)


def _default_collate() -> Callable[[list[Any]], Any]:
    """``dynocc_data.collate.collate_pairs``, imported when first needed."""
    try:
        from ..collate import collate_pairs
    except ImportError as err:
        raise ImportError(
            f"create_loader needs dynocc_data.collate.collate_pairs as default collate_fn ({err}); "
            "pass collate_fn= explicitly"
        ) from None
    return collate_pairs


def _is_url_spec(value: Any) -> bool:
    """True for what DynOccDataset accepts as ``urls`` (a string, a path or a list of them)."""
    if isinstance(value, (str, os.PathLike)):
        return True
    return isinstance(value, Sequence) and all(isinstance(v, (str, os.PathLike)) for v in value)


def create_loader(
    dataset_or_urls: Dataset | str | os.PathLike | Sequence[str | os.PathLike],
    *,
    batch_size: int,
    num_workers: int = 4,
    strategy: Any = None,
    transform: Callable[[dict[str, Any]], Any] | None = None,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    pin_memory: bool = False,
    persistent_workers: bool = False,
    prefetch_factor: int | None = None,
    drop_last: bool = False,
    seed: int = 0,
    worker_init_fn: Callable[[int], None] | None = None,
    multiprocessing_context: str | None = None,
    **dataset_kwargs: Any,
) -> DataLoader:
    """A ``DataLoader`` over DynOcc shards (built from ``urls``) or over a given dataset.

    ``dataset_or_urls``: shard URLs (anything :class:`~dynocc_data.datasets.dynocc.DynOccDataset` accepts), in
    which case ``strategy`` (default ``"stored"``), ``transform``, ``seed`` and ``dataset_kwargs`` build the dataset;
    or a ready dataset (iterable, e.g. a ``mix``; a map-style one is wrapped with ``as_iterable`` so that it is split
    and shuffled per rank, worker and epoch like the shards). ``collate_fn`` defaults to ``collate_pairs``.
    Workers get numpy/random seeded by :func:`seed_worker`; the loader's generator is seeded from
    ``(seed, rank)`` so runs are reproducible and ranks draw different augmentations.
    """
    if batch_size < 1 or num_workers < 0:
        raise ValueError(f"batch_size must be >= 1 and num_workers >= 0, got {batch_size} and {num_workers}")
    if _is_url_spec(dataset_or_urls):
        from .dynocc import DynOccDataset

        dataset: Dataset = DynOccDataset(
            dataset_or_urls,
            strategy="stored" if strategy is None else strategy,
            transform=transform,
            seed=seed,
            num_workers=num_workers,
            **dataset_kwargs,
        )
    else:
        if strategy is not None or transform is not None or dataset_kwargs:
            raise ValueError(
                "strategy, transform and dataset options only apply when create_loader builds the dataset from "
                "URLs; set them on the dataset you pass"
            )
        dataset = dataset_or_urls
        if not isinstance(dataset, IterableDataset):
            from .mix import as_iterable

            dataset = as_iterable(dataset, shuffle=True, seed=seed)
    if hasattr(dataset, "set_num_workers"):
        dataset.set_num_workers(num_workers)  # exact len() and an early too-few-shards error
    if hasattr(dataset, "check_readers"):
        dataset.check_readers(num_workers)
    rank, _ = distributed_info()
    workers = num_workers > 0
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_fn if collate_fn is not None else _default_collate(),
        pin_memory=pin_memory,
        drop_last=drop_last,
        persistent_workers=persistent_workers and workers,
        prefetch_factor=prefetch_factor if workers else None,
        worker_init_fn=_chain(seed_worker, worker_init_fn),
        generator=torch.Generator().manual_seed(mix_seed(seed, rank)),
        multiprocessing_context=multiprocessing_context if workers else None,
    )
