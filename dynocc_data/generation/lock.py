"""One writer per output folder and rank: exclusive locks held by the operating system for the writing process.

``generate`` takes them before it touches an output folder (before ``--resume`` repairs anything) and holds them
until the merge is written. They are ``fcntl.flock`` locks on small files in the folder, so the kernel releases
them when the process ends in any way, ``kill -9`` included: a killed run leaves no stale lock, and
``--resume`` can start at once. A run of one process or of local worker processes owns the whole folder
(``.dynocc-lock``, exclusive); a rank of a ``torchrun``/``srun`` launch shares the folder (``.dynocc-lock``,
shared) and owns its rank (``.dynocc-lock-r<rank>``, exclusive). A second writer gets one line saying who holds
the lock (pid, host, start time), read from the lock file its holder wrote.

**Remote outputs** (an fsspec URL, no OS to hold a lock): the lock is an object, ``.dynocc-lock`` (a whole run) or
``.dynocc-lock-r<rank>`` (one rank), created exclusively (:func:`dynocc_data.storage.create_exclusive`) with the
holder's pid, host and start time, and deleted when the run ends. A whole run also refuses a folder where rank locks
exist, and a rank one where the whole-run lock exists. A process killed with ``kill -9`` cannot delete its lock:
it stays, and the next run is refused naming the dead holder, until ``--resume`` (``takeover=True``) takes it over
(logged with the old holder). ``--resume`` thus asserts that the previous run is gone.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .. import storage
from ..errors import DynOccError

__all__ = ["FOLDER_LOCK", "OutputBusyError", "hold_output"]

FOLDER_LOCK = ".dynocc-lock"

log = logging.getLogger(__name__)


class OutputBusyError(DynOccError):
    """Another process holds the output folder (or this rank of it)."""


def _holder(path: Path | str) -> str:
    """Who holds the lock ``path``, as its holder wrote it (``pid N on HOST since TIME``)."""
    try:
        info = json.loads(storage.read_text(os.fspath(path)) or "{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or "pid" not in info:
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    return f"pid {info.get('pid')} on {info.get('host', '?')} since {since}"


def _held(path: Path) -> bool:
    """True when some process holds a lock on ``path`` (probed with a non-blocking exclusive lock)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # releases the probe's lock, if it got one
    return False


def _holders(path: Path) -> str:
    """Who holds ``path``.

    The ranks holding their rank locks (they share the folder lock without signing it), else the signature in
    ``path`` itself.
    """
    ranks = [_holder(p) for p in sorted(path.parent.glob(f"{FOLDER_LOCK}-r*")) if p != path and _held(p)]
    return ", ".join(dict.fromkeys(ranks)) if path.name == FOLDER_LOCK and ranks else _holder(path)


def _lock(path: Path, mode: int, what: str) -> int:
    """An open descriptor of ``path`` holding ``mode`` (``LOCK_EX`` or ``LOCK_SH``), or :class:`OutputBusyError`."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise DynOccError(f"{path.parent}: cannot write output ({err.strerror or err})") from None
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise OutputBusyError(f"{path.parent}: {what} is being written by {_holders(path)} (lock {path.name}); "
                              f"wait for that run, or use another --out") from None
    except OSError as err:
        os.close(fd)
        raise DynOccError(f"{path}: cannot lock the output folder ({err.strerror or err})") from None
    return fd


def _sign(fd: int) -> None:
    """Write this process's pid, host and start time into the lock file it holds."""
    data = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}).encode()
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
    except OSError:  # a full disk: the lock holds all the same, only the message names nobody
        pass


def _signature() -> str:
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()})


def _take_object(out: str, name: str, what: str, takeover: bool) -> str:
    """Create the lock object ``name`` in ``out`` (taking over a left one with ``takeover``); return its URL."""
    url = storage.join(out, name)
    if storage.create_exclusive(url, _signature()):
        return url
    holder = _holder(url)
    if not takeover:
        raise OutputBusyError(f"{out}: {what} is being written by {holder} (lock {name}); wait for that run, or, "
                              f"if it was killed, pass --resume to take its lock over")
    log.warning("%s: taking over the lock %s of %s (--resume: that run is assumed dead)", out, name, holder)
    storage.remove(url)
    if not storage.create_exclusive(url, _signature()):
        raise OutputBusyError(f"{out}: {what} was just locked by {_holder(url)} (lock {name})")
    return url


@contextmanager
def _hold_store(out: str, rank: int | None, takeover: bool) -> Iterator[None]:
    """The object-store variant of :func:`hold_output` (see the module docstring)."""
    own = FOLDER_LOCK if rank is None else f"{FOLDER_LOCK}-r{rank:03d}"
    url = _take_object(out, own, "this folder" if rank is None else f"rank {rank} of this folder", takeover)
    try:
        names = storage.list_names(out)
        others = ([n for n in names if n.startswith(f"{FOLDER_LOCK}-r")] if rank is None
                  else [n for n in names if n == FOLDER_LOCK])
        for name in others:
            if not takeover:
                raise OutputBusyError(f"{out}: being written by {_holder(storage.join(out, name))} (lock {name}); "
                                      f"wait for that run, or, if it was killed, pass --resume to take over")
            log.warning("%s: removing the lock %s of %s (--resume)", out, name, _holder(storage.join(out, name)))
            storage.remove(storage.join(out, name))
        yield
    finally:
        storage.remove(url)


@contextmanager
def hold_output(out: str | os.PathLike, *, rank: int | None = None, takeover: bool = False) -> Iterator[None]:
    """Hold the output folder ``out`` (``rank=None``: all of it) or one rank of it while the body runs.

    Args:
        out: the output folder (it must exist), or an fsspec URL (a lock object, see the module docstring).
        rank: this process's rank in a multi-machine launch; ``None`` for a run that owns the whole folder.
        takeover: on an object store, take over a lock left by a killed run (``--resume``); OS locks need not.

    Yields:
        Nothing; the locks are released on leaving (and by the OS if the process dies; not on an object store).

    Raises:
        OutputBusyError: naming the holder, when another run writes into ``out`` (or into this rank of it).
        DynOccError: when the lock file cannot be created (a read-only folder).
    """
    if storage.is_store(out):
        with _hold_store(os.fspath(out), rank, takeover):
            yield
        return
    out = Path(out)
    held = []
    try:
        if rank is None:
            held.append(_lock(out / FOLDER_LOCK, fcntl.LOCK_EX, "this folder"))
            _sign(held[-1])
        else:
            held.append(_lock(out / FOLDER_LOCK, fcntl.LOCK_SH, "this folder"))
            held.append(_lock(out / f"{FOLDER_LOCK}-r{rank:03d}", fcntl.LOCK_EX, f"rank {rank} of this folder"))
            _sign(held[-1])
        yield
    finally:
        for fd in reversed(held):
            os.close(fd)  # closing the descriptor releases its flock
