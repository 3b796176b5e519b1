"""Mix several datasets by probability, and stream map-style datasets split per rank, worker and epoch.

::

    train = mix([DynOccDataset("shards/"), as_iterable(YouTube3DDataset(...)), DIWDataset(...)],
                weights=[3, 1, 1], stop="all", seed=0)
    loader = create_loader(train, batch_size=32, num_workers=8)

**Workers and ranks.** A :class:`MixedDataset` is iterated inside each DataLoader worker, and so are its sources:
each source splits itself for that worker and rank (``DynOccDataset`` by shards; map-style datasets through
:func:`as_iterable`, which deals a per-epoch permutation of their indices to ranks and then workers). Map-style
sources given to :func:`mix` are wrapped with ``as_iterable(shuffle=True, seed=seed)`` automatically. The choice of
source is drawn per item with a generator seeded by ``(seed, epoch, rank, worker)``.

**End of a source** (``stop``): ``"first"``: the mix ends when a draw hits an exhausted source (the proportions
hold up to the end; other sources are left unfinished); ``"all"``: an exhausted source is dropped and the weights of
the others renormalised, and the mix ends when every source with a positive weight is exhausted (everything is read
once; the proportions drift at the end); ``"never"``: an exhausted source is started again (same epoch, so the same
order), so the mix is endless unless ``epoch_length`` (items per rank per epoch) is set. ``epoch_length`` caps the
other modes too. With several ranks, prefer ``"all"`` over equalized sources or ``epoch_length``: ``"first"`` ends
at a random point, so ranks may see different numbers of batches.

:meth:`MixedDataset.set_epoch` is passed on to every source that has one.

**Checkpoints**: ``state_dict()`` / ``load_state_dict()`` (torchdata's ``Stateful`` protocol) on both classes. A
:class:`MapAsIterable` state counts the items yielded (the rest of the permutation follows); a :class:`MixedDataset`
state counts the draws made (one ``random()`` each, replayed on restore) and holds each source's own state (per
batch, mid-run: the run's source as it was at the run's start, read again and the yielded part dropped).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch
from torch.utils.data import Dataset, IterableDataset

from ._distributed import DistributedStream, mix_seed, share_of

logger = logging.getLogger(__name__)

__all__ = ["MapAsIterable", "MixedDataset", "as_iterable", "mix"]

Stop = Literal["first", "all", "never"]


class MapAsIterable(DistributedStream):
    """A map-style dataset streamed as an ``IterableDataset``, split per rank, worker and epoch.

    Each epoch a permutation of its indices (seeded by ``(seed, epoch)``, identical on every rank) is dealt to the
    ranks, then each rank's share to its workers; no index is read twice in an epoch.

    Args:
        dataset: a map-style dataset (with ``__len__`` and ``__getitem__``).
        shuffle: permute the indices each epoch (else in order).
        seed: seeds the permutations.
        split_by_node: split across ranks (else every rank reads all of it).
        equalize: every rank gets ``len(dataset) // world_size`` indices (the remainder is left out this epoch),
            so ranks see the same number of batches.
        rank: an explicit rank (default: detected, see :class:`~._distributed.DistributedStream`).
        world_size: an explicit world size (default: detected).

    Raises:
        TypeError: when ``dataset`` is not map-style.
    """

    def __init__(self, dataset: Dataset, *, shuffle: bool = True, seed: int = 0, split_by_node: bool = True,
                 equalize: bool = True, rank: int | None = None, world_size: int | None = None) -> None:
        """Wrap ``dataset`` (which needs ``__len__`` and ``__getitem__``)."""
        super().__init__()
        if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
            raise TypeError(f"as_iterable needs a map-style dataset with __len__ and __getitem__, got {type(dataset)}")
        self.dataset, self.shuffle, self.seed = dataset, bool(shuffle), int(seed)
        self.split_by_node, self.equalize = bool(split_by_node), bool(equalize)
        self._init_stream(rank, world_size)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch here and in the wrapped dataset when it has ``set_epoch`` (e.g. new pair draws).

        Args:
            epoch: the epoch number (>= 0).
        """
        super().set_epoch(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def indices(self, *, rank: int, world_size: int, worker: int = 0, num_workers: int = 1,
                epoch: int | None = None) -> list[int]:
        """The indices one (rank, worker) reads in an epoch.

        Args:
            rank: the rank.
            world_size: the number of ranks.
            worker: the DataLoader worker.
            num_workers: the DataLoader workers per rank.
            epoch: the epoch (default: the current one).

        Returns:
            The dataset indices, in reading order.
        """
        n = len(self.dataset)
        epoch = self.epoch if epoch is None else epoch
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(self.seed, epoch)))
        else:
            order = torch.arange(n)
        end = n // world_size * world_size if self.equalize else n
        return order[rank:end:world_size][worker::num_workers].tolist()

    def __len__(self) -> int:
        """Items this rank reads per epoch."""
        rank, world = self._node()
        n = len(self.dataset)
        return n // world if self.equalize else share_of(n, rank, world)

    def _identity(self) -> dict[str, Any]:
        """What a state must agree on to be loaded here."""
        return {"dataset": type(self.dataset).__name__, "length": len(self.dataset), "seed": self.seed,
                "shuffle": self.shuffle, "equalize": self.equalize, "split_by_node": self.split_by_node}

    def _position(self) -> dict[str, Any] | None:
        """``{"yielded": n}``: the items this reader yielded in the epoch (``None`` before iterating)."""
        return None if self._progress is None else dict(self._progress)

    def __iter__(self) -> Iterator[Any]:
        """This worker's items of the epoch (after a :meth:`load_state_dict`, those not yet yielded)."""
        world = self.world()
        position = self._take_resume(self.epoch)
        progress = self._track({"yielded": 0 if position is None else int(position["yielded"])}, self.epoch)
        indices = self.indices(rank=world.rank, world_size=world.world_size, worker=world.worker,
                               num_workers=world.num_workers)
        for index in indices[progress["yielded"]:]:  # the map-style dataset reads one index: nothing to skip
            item = self.dataset[index]
            progress["yielded"] += 1
            yield item

    def __repr__(self) -> str:
        """Short description."""
        return f"{type(self).__name__}({self.dataset!r}, shuffle={self.shuffle}, seed={self.seed})"


def as_iterable(map_dataset: Dataset, *, shuffle: bool = True, seed: int = 0, **options: Any) -> MapAsIterable:
    """Stream a map-style dataset split across ranks and workers and shuffled per epoch.

    Args:
        map_dataset: the dataset.
        shuffle: permute the indices each epoch.
        seed: seeds the permutations.
        **options: ``split_by_node``, ``equalize``, ``rank``, ``world_size`` (see :class:`MapAsIterable`).

    Returns:
        The stream.
    """
    return MapAsIterable(map_dataset, shuffle=shuffle, seed=seed, **options)


def _as_stream(dataset: Dataset, seed: int) -> IterableDataset:
    """Iterable datasets as they are; map-style ones wrapped with :func:`as_iterable`."""
    if isinstance(dataset, IterableDataset):
        return dataset
    logger.info("mix: streaming map-style %s through as_iterable(shuffle=True)", type(dataset).__name__)
    return as_iterable(dataset, shuffle=True, seed=seed)


class MixedDataset(DistributedStream):
    """Items drawn from several datasets with given probabilities (see the module docstring for ``stop``).

    Args:
        datasets: the sources; map-style ones are wrapped with :func:`as_iterable` (``shuffle=True``, ``seed``).
        weights: one finite weight >= 0 per source, not all 0; default equal weights.
        stop: ``"first"``, ``"all"`` or ``"never"``.
        seed: seeds the choice of source (with the epoch, rank and worker).
        epoch_length: items per rank per epoch (>= 0); ``None`` for no cap.
        rank: an explicit rank (default: detected).
        world_size: an explicit world size (default: detected).
        per_batch: draw one source per batch of ``batch_size`` items (see :func:`mix`).
        batch_size: the loader's batch size (required with ``per_batch``).
        loss_weights: one loss weight per source, put on dict items as ``loss_weight`` (with ``source_index``).

    Raises:
        ValueError: for no datasets, bad weights, an unknown ``stop``, a negative ``epoch_length``, ``per_batch``
            without a ``batch_size`` or bad ``loss_weights``.
    """

    def __init__(self, datasets: Sequence[Dataset], weights: Sequence[float] | None = None, *, stop: Stop = "first",
                 seed: int = 0, epoch_length: int | None = None, rank: int | None = None,
                 world_size: int | None = None, per_batch: bool = False, batch_size: int | None = None,
                 loss_weights: Sequence[float] | None = None) -> None:
        """Check the weights and wrap map-style sources.

        ``per_batch``, ``batch_size`` and ``loss_weights`` are those of :func:`mix`.
        """
        super().__init__()
        if not datasets:
            raise ValueError("mix needs at least one dataset")
        weights = [1.0] * len(datasets) if weights is None else [float(w) for w in weights]
        if len(weights) != len(datasets):
            raise ValueError(f"{len(weights)} weights for {len(datasets)} datasets")
        if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"weights must be finite, >= 0 and not all 0, got {weights}")
        if stop not in ("first", "all", "never"):
            raise ValueError(f"stop must be 'first', 'all' or 'never', got {stop!r}")
        if epoch_length is not None and epoch_length < 0:
            raise ValueError(f"epoch_length must be >= 0, got {epoch_length}")
        if per_batch and (batch_size is None or int(batch_size) < 1):
            raise ValueError(f"mix(per_batch=True) needs the loader's batch_size >= 1, got {batch_size!r}")
        if loss_weights is not None:
            loss_weights = [float(w) for w in loss_weights]
            if len(loss_weights) != len(datasets) or any(not math.isfinite(w) or w < 0 for w in loss_weights):
                raise ValueError(f"loss_weights must be one finite value >= 0 per dataset, got {loss_weights}")
        self.per_batch, self.batch_size = bool(per_batch), int(batch_size) if per_batch else None
        self.loss_weights = loss_weights
        self.datasets = [_as_stream(d, seed) for d in datasets]
        self.weights, self.stop, self.seed, self.epoch_length = weights, stop, int(seed), epoch_length
        self._init_stream(rank, world_size)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch here and in every source that has ``set_epoch``.

        Args:
            epoch: the epoch (>= 0).
        """
        super().set_epoch(epoch)
        for dataset in self.datasets:
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)

    def set_num_workers(self, num_workers: int) -> None:
        """Pass the DataLoader's worker count on to the sources that use it.

        Args:
            num_workers: DataLoader workers per rank.
        """
        for dataset in self.datasets:
            if hasattr(dataset, "set_num_workers"):
                dataset.set_num_workers(num_workers)

    def check_readers(self, num_workers: int) -> None:
        """Let each source check that it can be split over the readers.

        Args:
            num_workers: DataLoader workers per rank.
        """
        for dataset in self.datasets:
            if hasattr(dataset, "check_readers"):
                dataset.check_readers(num_workers)

    def _identity(self) -> dict[str, Any]:
        """What a state must agree on to be loaded here (each source checks its own part)."""
        return {"sources": len(self.datasets), "weights": list(self.weights), "stop": self.stop, "seed": self.seed,
                "epoch_length": self.epoch_length, "per_batch": self.per_batch, "batch_size": self.batch_size}

    def _position(self) -> dict[str, Any] | None:
        """The draws made, items (runs) yielded, the sources still active, and each source's own state.

        Mid-run (``per_batch``), ``run`` holds the run's source, the items of it yielded and that source's state
        at the run's start (the run is read again from there on restore).
        """
        if self._progress is None:
            return None
        return {**self._progress, "sources": [d.state_dict() if isinstance(d, DistributedStream) else None
                                              for d in self.datasets]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from a :meth:`state_dict`: this mix's draws, then each source from its own state.

        Args:
            state: a state returned by :meth:`state_dict` of the same mix.

        Raises:
            ValueError: (one line) when the state comes from another mix, source, seed or reader.
        """
        super().load_state_dict(state)
        position = state["position"]
        if position is None:
            return
        run = position.get("run")
        for i, (dataset, source_state) in enumerate(zip(self.datasets, position["sources"], strict=True)):
            if run is not None and run["source"] == i:
                source_state = run["start"]
            if isinstance(dataset, DistributedStream) and source_state is not None:
                dataset.load_state_dict(source_state)
            elif not isinstance(dataset, DistributedStream):
                logger.warning("mix: source %d (%r) has no state_dict: it restarts from its beginning", i, dataset)

    def __len__(self) -> int:
        """Items per rank per epoch: ``epoch_length``, or with ``stop="all"`` the sum of the sources' lengths."""
        if self.epoch_length is not None:
            return self.epoch_length
        if self.stop != "all" or self.per_batch:  # per batch: the partial batches left out depend on the workers
            raise TypeError(f"the length of a mix with stop={self.stop!r} and no epoch_length is not fixed")
        return sum(len(d) for d, w in zip(self.datasets, self.weights) if w > 0)

    def _tag(self, item: Any, source: int) -> Any:
        """A dict item with ``source_index`` and ``loss_weight`` added when per-batch or loss weights are on."""
        if not (self.per_batch or self.loss_weights is not None) or not isinstance(item, dict):
            return item
        weight = self.loss_weights[source] if self.loss_weights is not None else 1.0
        return {**item, "source_index": source, "loss_weight": weight}

    def _start(self, world: Any, salt: int) -> tuple[random.Random, dict[str, Any], dict[str, Any] | None]:
        """The draw generator and the progress of an iteration, both moved to a loaded position if any."""
        rng = random.Random(mix_seed(self.seed, self.epoch, world.rank, world.worker, salt))
        position = self._take_resume(self.epoch)
        fresh = {"draws": 0, "count": 0, "active": [i for i, w in enumerate(self.weights) if w > 0], "run": None}
        progress = fresh if position is None else {k: position[k] for k in fresh}
        for _ in range(progress["draws"]):
            rng.random()  # one draw of choices(k=1) is one random()
        self._track(progress, self.epoch)
        return rng, progress, progress["run"]

    def _draw(self, rng: random.Random, progress: dict[str, Any]) -> int:
        """Draw a source among the active ones by weight."""
        progress["draws"] += 1
        active = progress["active"]
        return rng.choices(active, weights=[self.weights[j] for j in active])[0]

    def _iter_per_batch(self, world: Any) -> Iterator[Any]:
        """Runs of ``batch_size`` items, each run from one source drawn by weight (see :func:`mix`)."""
        size = self.batch_size
        rng, progress, pending = self._start(world, 0x8A7C)
        limit = None if self.epoch_length is None else share_of(self.epoch_length // size, world.worker,
                                                                  world.num_workers)
        iterators = [iter(d) for d in self.datasets]
        active = progress["active"]
        while active and (limit is None or progress["count"] < limit):
            i, skip = (pending["source"], pending["yielded"]) if pending else (self._draw(rng, progress), 0)
            start = pending["start"] if pending else (
                self.datasets[i].state_dict() if isinstance(self.datasets[i], DistributedStream) else None)
            pending = None
            run, restarted = [], False
            while len(run) < size:
                item = next(iterators[i], _EMPTY)
                if item is not _EMPTY:
                    run.append(item)
                    restarted = False
                    continue
                if self.stop != "never":
                    break
                if restarted:
                    raise ValueError(f"mix: source {i} ({self.datasets[i]!r}) yields nothing, cannot cycle it")
                iterators[i], restarted = iter(self.datasets[i]), True
            if len(run) < size:  # the source ran out inside a batch: its last partial batch is left out
                if self.stop == "first":
                    return
                active.remove(i)
                continue
            for n in range(skip, size):
                last = n + 1 == size
                progress["run"] = None if last else {"source": i, "yielded": n + 1, "start": start}
                progress["count"] += last
                yield self._tag(run[n], i)
                run[n] = None

    def __iter__(self) -> Iterator[Any]:
        """Draw a source per item (per batch with ``per_batch``) until ``stop`` says so.

        Or until this worker's share of ``epoch_length`` is read.
        """
        world = self.world()
        if self.per_batch:
            yield from self._iter_per_batch(world)
            return
        rng, progress, _ = self._start(world, 0x313)
        limit = None if self.epoch_length is None else share_of(self.epoch_length, world.worker, world.num_workers)
        iterators = [iter(d) for d in self.datasets]
        active = progress["active"]
        while active and (limit is None or progress["count"] < limit):
            i = self._draw(rng, progress)
            try:
                item = next(iterators[i])
            except StopIteration:
                if self.stop == "first":
                    return
                if self.stop == "all":
                    active.remove(i)
                    continue
                iterators[i] = iter(self.datasets[i])  # "never": start the source again
                item = next(iterators[i], _EMPTY)
                if item is _EMPTY:
                    raise ValueError(f"mix: source {i} ({self.datasets[i]!r}) yields nothing, cannot cycle it")
            progress["count"] += 1
            yield self._tag(item, i)

    def __repr__(self) -> str:
        """Short description."""
        return f"{type(self).__name__}({len(self.datasets)} sources, weights={self.weights}, stop={self.stop!r})"


_EMPTY = object()


def mix(datasets: Sequence[Dataset], weights: Sequence[float] | None = None, *, stop: Stop = "first", seed: int = 0,
        epoch_length: int | None = None, per_batch: bool = False, batch_size: int | None = None,
        loss_weights: Sequence[float] | None = None) -> MixedDataset:
    """An ``IterableDataset`` drawing each item from ``datasets[i]`` with probability ``weights[i] / sum(weights)``.

    Equal weights by default; see :class:`MixedDataset` and the module docstring.

    Args:
        datasets: the sources (map-style ones are streamed through :func:`as_iterable`).
        weights: the probability of each source (any scale).
        stop: ``"first"``, ``"all"`` or ``"never"`` (module docstring).
        seed: seeds the draws, with the epoch, rank and worker.
        epoch_length: items per rank per epoch (``None``: until ``stop``).
        per_batch: draw a source per **batch** (as Marigold's ``MixedBatchSampler``): each DataLoader worker yields
            runs of ``batch_size`` items from one source, so every batch the loader makes (it batches each worker's
            items in order) comes from a single source, the sources in the proportions of ``weights``, with the
            draws seeded per ``(seed, epoch, rank, worker)``. A source that runs out inside a batch leaves that
            partial batch out (``"all"``) or ends the epoch (``"first"``); ``epoch_length`` counts whole batches.
        batch_size: the loader's batch size (required with ``per_batch``; it must match, or batches straddle runs).
        loss_weights: one weight per source, set on each dict item as ``loss_weight`` (with ``source_index``), and
            stacked by ``collate_pairs`` into ``batch["loss_weight"]`` ``[B]`` (``per_batch`` alone sets 1.0).

    Returns:
        The :class:`MixedDataset`.

    Raises:
        ValueError: bad weights, ``stop``, ``epoch_length``, ``batch_size`` or ``loss_weights``.
    """
    return MixedDataset(datasets, weights, stop=stop, seed=seed, epoch_length=epoch_length, per_batch=per_batch,
                        batch_size=batch_size, loss_weights=loss_weights)
