"""Where a reader runs: rank, world size, DataLoader worker, and the epoch shared with persistent workers.

One home for the plumbing every streaming dataset of this package needs (:class:`~.dynocc.DynOccDataset`,
:class:`~.mix.MapAsIterable`, :class:`~.mix.MixedDataset`): :class:`World` says which reader this is,
:class:`SharedEpoch` carries ``set_epoch`` into worker processes, :func:`mix_seed` and :func:`share_of` make the
per-reader seeds and splits.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset

logger = logging.getLogger(__name__)

__all__ = ["DistributedStream", "SharedEpoch", "World", "distributed_info", "mix_seed", "share_of", "worker_info"]

STATE_FORMAT = "dynocc-data/stream-state/1"  # the ``format`` of every state_dict a stream of this package returns


@dataclass(frozen=True)
class World:
    """The reader this code runs as: ``rank`` of ``world_size`` processes, DataLoader ``worker`` of ``num_workers``.

    Args:
        rank: this process's rank (0 without DDP).
        world_size: number of ranks (1 without DDP).
        worker: this DataLoader worker's id (0 in the main process).
        num_workers: DataLoader workers per rank (1 in the main process).

    Raises:
        ValueError: when the rank or worker is not inside its world.
    """

    rank: int = 0
    world_size: int = 1
    worker: int = 0
    num_workers: int = 1

    def __post_init__(self) -> None:
        """Check the four numbers are consistent."""
        if not (self.world_size >= 1 and 0 <= self.rank < self.world_size):
            raise ValueError(f"invalid rank {self.rank} for world size {self.world_size}")
        if not (self.num_workers >= 1 and 0 <= self.worker < self.num_workers):
            raise ValueError(f"invalid worker {self.worker} of {self.num_workers}")

    @classmethod
    def detect(cls, rank: int | None = None, world_size: int | None = None) -> "World":
        """The current world; workers from torch.

        Args:
            rank: an explicit rank, else from :func:`distributed_info`.
            world_size: an explicit world size, else from :func:`distributed_info`.

        Returns:
            The world.
        """
        rank, world_size = distributed_info(rank, world_size)
        worker, num_workers = worker_info()
        return cls(rank, world_size, worker, num_workers)

    @property
    def reader(self) -> int:
        """This reader's global index among ``world_size * num_workers`` readers (rank-major)."""
        return self.rank * self.num_workers + self.worker

    @property
    def num_readers(self) -> int:
        """Readers in all: ``world_size * num_workers``."""
        return self.world_size * self.num_workers


class SharedEpoch:
    """An epoch number in shared memory, so ``set_epoch`` reaches persistent DataLoader workers too.

    Args:
        epoch: the initial epoch.
    """

    def __init__(self, epoch: int = 0) -> None:
        """Allocate the shared counter (a shared-memory tensor survives fork and spawn alike)."""
        self._value = torch.full((), int(epoch), dtype=torch.int64).share_memory_()

    def set(self, epoch: int) -> None:
        """Set the epoch (visible to every worker of this dataset).

        Args:
            epoch: the epoch (>= 0).

        Raises:
            ValueError: for a negative epoch.
        """
        if int(epoch) < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self._value.fill_(int(epoch))

    def get(self) -> int:
        """The current epoch.

        Returns:
            The epoch last set.
        """
        return int(self._value.item())


def distributed_info(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """This process's rank and world size.

    Args:
        rank: an explicit rank; ``None`` to detect it.
        world_size: an explicit world size; ``None`` to detect it.

    Returns:
        ``(rank, world_size)``: explicit values, else ``torch.distributed`` when initialised, else the
        ``RANK``/``WORLD_SIZE`` environment variables, else ``(0, 1)``.

    Raises:
        ValueError: when the rank is not inside the world.
    """
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
    """The current DataLoader worker.

    Returns:
        ``(worker id, number of workers)``; ``(0, 1)`` in the main process.
    """
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (int(info.id), int(info.num_workers))


def mix_seed(*values: int) -> int:
    """A 63-bit seed from integers, stable across processes and runs (unlike ``hash`` of a string).

    Args:
        *values: the integers (taken modulo 2**64).

    Returns:
        The seed, ``0 <= seed < 2**63``.
    """
    state = np.random.SeedSequence([int(v) & 0xFFFFFFFFFFFFFFFF for v in values]).generate_state(2, np.uint64)
    return int(state[0] >> np.uint64(1))


def share_of(total: int, part: int, parts: int) -> int:
    """The size of one part of ``total`` items split as evenly as possible.

    Args:
        total: the number of items.
        part: the part's index, ``0 <= part < parts``.
        parts: the number of parts.

    Returns:
        The items given to ``part`` (the first parts get one more).
    """
    return total // parts + (1 if part < total % parts else 0)


class DistributedStream(IterableDataset):
    """Base of the package's streaming datasets: the rank, the epoch and pickling for worker processes, once.

    A subclass calls :meth:`_init_stream` in its constructor, then reads :meth:`world` inside ``__iter__``.
    ``rank``/``world_size`` given explicitly override detection; otherwise they come from ``torch.distributed``
    (or ``RANK``/``WORLD_SIZE``) **in the process that built the loader**: :meth:`__getstate__` records them when
    the dataset is pickled for a spawned DataLoader worker, where ``torch.distributed`` is not set up.
    """

    rank: int | None
    world_size: int | None
    split_by_node: bool = True

    def _init_stream(self, rank: int | None, world_size: int | None) -> None:
        """Set up the shared epoch counter and the rank override (call from ``__init__``)."""
        self.rank, self.world_size = rank, world_size
        self._pickled_node: tuple[int, int] | None = None
        self._epoch = SharedEpoch(0)
        self._resume: dict[str, Any] | None = None  # a loaded position, used by the next iteration of its epoch
        self._progress: Any = None  # the last iteration's position tracker, in the process that iterates
        self._progress_epoch = -1  # the epoch of that iteration

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch (visible to persistent DataLoader workers too); it seeds every per-epoch draw.

        Args:
            epoch: the epoch (>= 0).
        """
        self._epoch.set(epoch)

    @property
    def epoch(self) -> int:
        """The current epoch."""
        return self._epoch.get()

    def _node(self) -> tuple[int, int]:
        """``(rank, world size)`` used for splitting (``(0, 1)`` when ``split_by_node`` is False)."""
        rank, world = distributed_info(*(self._pickled_node or (self.rank, self.world_size)))
        return (rank, world) if self.split_by_node else (0, 1)

    # -- checkpointing (torchdata's Stateful protocol: state_dict() after an item, load_state_dict() before iter)
    def _identity(self) -> dict[str, Any]:
        """What a state must agree on to be loaded here (overridden: seed, shuffle, shard list, ...)."""
        return {}

    def _position(self) -> dict[str, Any] | None:
        """This reader's position in the current iteration (``None``: none started; overridden)."""
        return None

    def _track(self, progress: Any, epoch: int) -> Any:
        """Keep ``progress`` as the position tracker of an iteration of ``epoch`` (read by :meth:`_position`)."""
        self._progress, self._progress_epoch = progress, epoch
        return progress

    def state_dict(self) -> dict[str, Any]:
        """Where this reader stands: plain JSON-able data (ints, strings, lists, dicts), never pickled objects.

        Inside a DataLoader worker it describes that worker's reader (torchdata's ``StatefulDataLoader`` calls it
        in each worker after each batch); in the main process, the one reader of a plain loop.

        Returns:
            ``format``, ``type``, ``identity`` (what the dataset must match to load it), ``epoch``, ``world``
            (rank, world size, worker, workers) and ``position`` (``None``: the epoch not started).
        """
        epoch = self.epoch  # an epoch set since the last iteration has not started: no position in it yet
        return {"format": STATE_FORMAT, "type": type(self).__name__, "identity": self._identity(), "epoch": epoch,
                "world": _world_dict(self.world()),
                "position": self._position() if self._progress_epoch == epoch else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from a :meth:`state_dict`: set its epoch; the next ``iter()`` of that epoch yields what was left.

        Call it before iterating, in the process that iterates (``StatefulDataLoader`` does it in each worker).
        A ``set_epoch`` to another epoch before iterating discards the position (that epoch starts afresh).

        Args:
            state: a state returned by :meth:`state_dict` of the same dataset (same options and reader).

        Raises:
            ValueError: (one line) when ``state`` is not such a state, or comes from another dataset, seed,
                shard list or reader (rank, world size, worker, workers): the message names what differs.
        """
        self._check_state(state)
        self.set_epoch(int(state["epoch"]))
        self._resume = {"epoch": int(state["epoch"]), "position": state["position"], "world": state["world"]}

    def _check_state(self, state: Any) -> None:
        """Raise a one-line ``ValueError`` naming the first field where ``state`` does not fit this reader."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"{type(self).__name__}.load_state_dict: not a state of this package (format "
                             f"{state.get('format') if isinstance(state, dict) else type(state).__name__!r}, "
                             f"need {STATE_FORMAT!r})")
        if state.get("type") != type(self).__name__:
            raise ValueError(f"{type(self).__name__}.load_state_dict: the state is from a {state.get('type')}")
        differs = _first_difference(state.get("identity"), self._identity())
        if differs is not None:
            raise ValueError(f"{type(self).__name__}.load_state_dict: the state is from another dataset: {differs}")
        differs = _first_difference(state.get("world"), _world_dict(self.world()))
        if differs is not None:
            raise ValueError(f"{type(self).__name__}.load_state_dict: the state is from another reader: {differs} "
                             "(load each rank's and worker's state into the same rank and worker, e.g. through "
                             "StatefulDataLoader.load_state_dict)")

    def _take_resume(self, epoch: int) -> dict[str, Any] | None:
        """The position loaded for ``epoch`` (once: the next iteration starts afresh), else ``None``.

        Raises:
            ValueError: when the iteration runs as another reader than the state's (e.g. loaded in the main
                process, then iterated in DataLoader workers).
        """
        resume, self._resume = self._resume, None
        if resume is None:
            return None
        differs = _first_difference(resume["world"], _world_dict(self.world()))
        if differs is not None:
            raise ValueError(f"{type(self).__name__}: the loaded state is another reader's: {differs} (load a "
                             "DataLoader's states through StatefulDataLoader.load_state_dict)")
        if resume["epoch"] != epoch:
            logger.info("%s: the loaded state is for epoch %d, this iteration is epoch %d: starting it afresh",
                        type(self).__name__, resume["epoch"], epoch)
            return None
        return resume["position"]

    def world(self) -> World:
        """The reader this code runs as.

        Returns:
            The split's rank and world size, and the current DataLoader worker.
        """
        rank, world_size = self._node()
        worker, num_workers = worker_info()
        return World(rank, world_size, worker, num_workers)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled for a spawned DataLoader worker: record the rank here, where ``torch.distributed`` is set up."""
        return {**self.__dict__, "_pickled_node": distributed_info(self.rank, self.world_size), "_progress": None}


def _world_dict(where: World) -> dict[str, int]:
    """A world as plain data for a state."""
    return {"rank": where.rank, "world_size": where.world_size, "worker": where.worker,
            "num_workers": where.num_workers}


def _first_difference(stored: Any, current: dict[str, Any]) -> str | None:
    """``"name: stored (state) != current (this dataset)"`` for the first field that differs, else ``None``."""
    if not isinstance(stored, dict):
        return f"no such field in the state ({stored!r})"
    for name in sorted(set(stored) | set(current)):
        if stored.get(name) != current.get(name):
            return f"{name} {stored.get(name)!r} (state) != {current.get(name)!r} (here)"
    return None
