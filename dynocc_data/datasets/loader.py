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
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset
from torchdata.stateful_dataloader import StatefulDataLoader

from ..collate import collate_pairs
from ._distributed import distributed_info, mix_seed
from .dynocc import DynOccDataset
from .mix import as_iterable

logger = logging.getLogger(__name__)

__all__ = ["create_loader", "seed_worker"]


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed Python's ``random`` and NumPy from the worker's torch seed.

    torch seeds each worker with ``base_seed + worker_id`` (``base_seed`` drawn from the loader's generator), but
    leaves ``random`` and NumPy alone, so every worker would otherwise draw the same augmentations.

    Args:
        worker_id: the worker's index (unused: the torch seed already depends on it).
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
    stateful: bool = False,
    **dataset_kwargs: Any,
) -> DataLoader:
    """A ``DataLoader`` over DynOcc shards (built from URLs) or over a given dataset.

    Workers get numpy/random seeded by :func:`seed_worker`; the loader's generator is seeded from
    ``(seed, rank)`` so runs are reproducible and ranks draw different augmentations.

    Args:
        dataset_or_urls: shard URLs (anything :class:`~dynocc_data.datasets.dynocc.DynOccDataset` accepts), from
            which ``strategy``, ``transform``, ``seed`` and ``dataset_kwargs`` build the dataset; or a ready dataset
            (iterable, e.g. a ``mix``; a map-style one is wrapped with ``as_iterable`` so that it is split and
            shuffled per rank, worker and epoch like the shards).
        batch_size: items per batch (>= 1).
        num_workers: loader worker processes (>= 0); also given to the dataset, for an exact ``len()`` and an
            early error when there are too few shards.
        strategy: the pair strategy of a dataset built from URLs (default ``"stored"``).
        transform: the transform of a dataset built from URLs.
        collate_fn: default :func:`~dynocc_data.collate.collate_pairs`.
        pin_memory: as for ``DataLoader``.
        persistent_workers: as for ``DataLoader`` (only with workers).
        prefetch_factor: as for ``DataLoader`` (only with workers).
        drop_last: as for ``DataLoader``.
        seed: seeds the dataset's shuffling and pair sampling, and the loader's generator.
        worker_init_fn: called in each worker after :func:`seed_worker`.
        multiprocessing_context: as for ``DataLoader`` (only with workers), e.g. ``"spawn"``.
        stateful: return torchdata's ``StatefulDataLoader``, whose ``state_dict()`` (plain data: save it with the
            model) and ``load_state_dict()`` resume an epoch where it stopped, in each worker, without reading
            again what was read (see the README's "Resuming mid-epoch").
        **dataset_kwargs: more options of a dataset built from URLs.

    Returns:
        The loader (a ``StatefulDataLoader`` with ``stateful=True``, a torch ``DataLoader`` otherwise).

    Raises:
        ValueError: when ``batch_size < 1`` or ``num_workers < 0``, or dataset options are given with a ready
            dataset.
        InputError: from a :class:`~dynocc_data.datasets.dynocc.DynOccDataset`, when its shards are unreadable or
            too few for the ranks and workers (unless it resamples).
    """
    if batch_size < 1 or num_workers < 0:
        raise ValueError(f"batch_size must be >= 1 and num_workers >= 0, got {batch_size} and {num_workers}")
    if _is_url_spec(dataset_or_urls):
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
            dataset = as_iterable(dataset, shuffle=True, seed=seed)
    if hasattr(dataset, "set_num_workers"):
        dataset.set_num_workers(num_workers)  # exact len() and an early too-few-shards error
    if hasattr(dataset, "check_readers"):
        dataset.check_readers(num_workers)
    rank, _ = distributed_info()
    workers = num_workers > 0
    loader_class = StatefulDataLoader if stateful else DataLoader
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="'set_vital' is deprecated")  # torchdata 0.11's constructor
        return loader_class(
            dataset,
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=collate_fn if collate_fn is not None else collate_pairs,
            pin_memory=pin_memory,
            drop_last=drop_last,
            persistent_workers=persistent_workers and workers,
            prefetch_factor=prefetch_factor if workers else None,
            worker_init_fn=_chain(seed_worker, worker_init_fn),
            generator=torch.Generator().manual_seed(mix_seed(seed, rank)),
            multiprocessing_context=multiprocessing_context if workers else None,
        )
