"""Exclusive leases with a heartbeat on a folder or an object-store prefix, for claiming work without a coordinator.

A lease on ``NAME`` is a sequence of objects ``lease-NAME-<generation>.json`` in one folder. Whoever creates a
generation with :func:`~dynocc_data.storage.fs.create_exclusive` holds the lease (exactly one of several racing
claimers wins each generation, on a local folder through ``O_EXCL``, on S3/GCS through a conditional put). The
holder renews its object (``renewed``, wall-clock seconds) every ``ttl / 3`` seconds. A lease whose newest
generation was last renewed more than ``ttl`` seconds ago is stale: anyone may take it over by creating the
next generation, which again exactly one claimer wins. A claimer with the holder's own ``owner`` name takes it back
at once (a restarted process of the same slot: its predecessor is gone). A holder learns at its next renewal that
a newer generation exists and stops (:attr:`Lease.lost`).

Staleness compares the holder's clock with the claimer's, so hosts sharing a folder need clocks agreeing to well
within ``ttl`` (NTP does; the default ``ttl`` is a minute).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from .fs import create_exclusive, join, list_names, read_text, write_atomic

__all__ = ["LEASE_FORMAT", "Lease", "LeaseInfo", "acquire", "lease_info"]

log = logging.getLogger(__name__)

LEASE_FORMAT = "dynocc-lease/1"


def _name_re(name: str) -> re.Pattern[str]:
    return re.compile(rf"^lease-{re.escape(name)}-(\d+)\.json$")


@dataclass(frozen=True)
class LeaseInfo:
    """The newest generation of a lease as read from storage.

    Attributes:
        generation: its generation number.
        owner: who holds it.
        renewed: wall-clock time (seconds since the epoch) of its last heartbeat.
        ttl: seconds after ``renewed`` at which it becomes stale.
    """

    generation: int
    owner: str
    renewed: float
    ttl: float

    def stale(self, now: float | None = None) -> bool:
        """Whether the holder missed its heartbeats for longer than ``ttl``.

        Args:
            now: the current wall-clock time; default :func:`time.time`.

        Returns:
            True when the lease may be taken over.
        """
        return (time.time() if now is None else now) > self.renewed + self.ttl


def _generations(folder: str, name: str) -> list[int]:
    pattern = _name_re(name)
    return sorted(int(m.group(1)) for n in list_names(folder) if (m := pattern.match(n)))


def _path(folder: str, name: str, generation: int) -> str:
    return join(folder, f"lease-{name}-{generation:06d}.json")


def lease_info(folder: str, name: str) -> LeaseInfo | None:
    """Read the newest generation of the lease ``name``.

    Args:
        folder: the folder (path or URL) holding the leases.
        name: the lease's name (letters, digits, ``-``, ``_``).

    Returns:
        Its newest generation; ``None`` when nobody ever held it. An unreadable object (written by something else)
        counts as stale.
    """
    generations = _generations(folder, name)
    if not generations:
        return None
    gen = generations[-1]
    try:
        data = json.loads(read_text(_path(folder, name, gen), max_bytes=1 << 16))
        return LeaseInfo(gen, str(data["owner"]), float(data["renewed"]), float(data["ttl"]))
    except FileNotFoundError:  # cannot happen for a generation: they are never deleted; be safe anyway
        return LeaseInfo(gen, "?", 0.0, 0.0)
    except (ValueError, KeyError, TypeError):
        log.warning("%s: unreadable lease, treating it as stale", _path(folder, name, gen))
        return LeaseInfo(gen, "?", 0.0, 0.0)


class Lease:
    """A lease this process holds (made by :func:`acquire`); a context manager that renews it in the background.

    Args:
        folder: the folder holding the leases.
        name: the lease's name.
        owner: who holds it (recorded in the object).
        generation: the generation this process created.
        ttl: seconds without a heartbeat after which others may take it over.
        clock: wall-clock source (tests).
    """

    def __init__(self, folder: str, name: str, owner: str, generation: int, ttl: float,
                 clock: Callable[[], float] = time.time):
        self.folder, self.name, self.owner = folder, name, owner
        self.generation, self.ttl = generation, ttl
        self._clock = clock
        self.acquired = clock()
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def path(self) -> str:
        """The object of this generation."""
        return _path(self.folder, self.name, self.generation)

    def record(self, renewed: float) -> dict[str, Any]:
        """The lease object's content.

        Args:
            renewed: the heartbeat time to record.

        Returns:
            The JSON-ready record.
        """
        return {"format": LEASE_FORMAT, "name": self.name, "generation": self.generation, "owner": self.owner,
                "acquired": self.acquired, "renewed": renewed, "ttl": self.ttl}

    def renew(self) -> bool:
        """Write a heartbeat, unless a newer generation shows that the lease was taken over.

        Returns:
            True while this process still holds the lease; False (and :attr:`lost` set) once it was taken over.
        """
        if self.lost.is_set():
            return False
        if _generations(self.folder, self.name)[-1:] != [self.generation]:
            log.warning("lease %s: taken over by a newer holder; stopping", self.name)
            self.lost.set()
            return False
        write_atomic(self.path, json.dumps(self.record(self._clock())))
        return True

    def _beat(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                if not self.renew():
                    return
            except OSError as err:  # a storage hiccup: try again at the next beat, the ttl leaves room for it
                log.warning("lease %s: heartbeat failed (%s)", self.name, err)

    def start(self, interval: float | None = None) -> "Lease":
        """Renew the lease in a daemon thread every ``interval`` seconds (default ``ttl / 3``).

        Args:
            interval: seconds between heartbeats.

        Returns:
            This lease.
        """
        if self._thread is None:
            self._thread = threading.Thread(target=self._beat, args=(interval or self.ttl / 3,),
                                            name=f"lease-{self.name}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the heartbeat (the lease object stays: it records who ran the work last)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> "Lease":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def acquire(folder: str, name: str, owner: str, ttl: float, *,
            clock: Callable[[], float] = time.time) -> Lease | None:
    """Claim the lease ``name``: create it when nobody holds it, take it over when its holder went silent.

    Args:
        folder: the folder (path or URL) holding the leases.
        name: the lease's name.
        owner: who claims it, recorded in the object; a lease held under the same name is taken back at once (name
            claimers so that one name is never used by two live processes).
        ttl: seconds without a heartbeat after which the lease is stale.
        clock: wall-clock source (tests).

    Returns:
        The held lease (not yet renewing: use it as a context manager or call :meth:`Lease.start`); ``None``
        when a live holder has it or another claimer won the race.

    Raises:
        StorageError: when the store cannot create objects exclusively.
    """
    current = lease_info(folder, name)
    if current is not None and not current.stale(clock()) and current.owner != owner:
        return None
    generation = 0 if current is None else current.generation + 1
    lease = Lease(folder, name, owner, generation, ttl, clock)
    if not create_exclusive(lease.path, json.dumps(lease.record(lease.acquired))):
        return None
    if current is not None:
        log.info("lease %s: took over from %s (silent for %.0f s)", name, current.owner,
                 clock() - current.renewed)
    return lease
