"""The per-rank ledgers of a run: the append-only journals whose records are the commit points of the writer.

Locally a rank's ledger is one JSON-lines file, ``ledger-r<rank>.jsonl``, appended to and fsynced per record. An
object on a store (``s3://``, ``gs://``) cannot be appended to, so there a rank's ledger is one small object per
record, ``ledgers/ledger-r<rank>-<seq:09d>.json``, created exclusively (a second writer of the same rank fails
instead of overwriting) and read back in name order. Both have ``append``, ``records`` and ``delete``; formats:
``docs/FORMAT.md``.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .. import storage
from ..errors import DynOccError

__all__ = ["LEDGER_FOLDER", "Ledger", "ObjectLedger", "has_ledgers", "open_ledgers", "rank_ledger"]

MAX_RECORD_BYTES = 1 << 24  # a record lists one shard's frames or one video: kilobytes; never read a huge object whole

log = logging.getLogger(__name__)

LEDGER_FOLDER = "ledgers"  # remote outputs: one object per ledger record in this sub-folder
_LOCAL_LEDGER_RE = re.compile(r"^ledger-r(\d+)\.jsonl$")
_OBJECT_RECORD_RE = re.compile(r"^ledger-r(\d+)-(\d{9})\.json$")


class Ledger:
    """Append-only JSON-lines journal of one rank: run header, committed shards, finished videos.

    Args:
        path: the ledger file (``ledger-r<rank>.jsonl``); created by the first :meth:`append`.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def append(self, record: Mapping[str, Any]) -> None:
        """Append one record as a JSON line and fsync it (the commit point of the protocol).

        Args:
            record: a JSON-serialisable mapping, written with sorted keys. A torn last line left by a crash is
                first ended, so that it does not swallow this record.
        """
        line = json.dumps(dict(record), sort_keys=True) + "\n"
        with open(self.path, "a+b") as f:
            if f.tell() > 0:  # a torn last line (crash mid-write) gets its own line, not glued to this record
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    line = "\n" + line
            f.write(line.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())

    def records(self) -> list[dict[str, Any]]:
        """Read the ledger back.

        Returns:
            All complete records, in order (none when the file does not exist); torn lines from a crash are
            ignored with a warning.
        """
        if not self.path.exists():
            return []
        out = []
        with open(self.path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.endswith("\n"):
                    log.warning("%s: ignoring a torn last line (interrupted write)", self.path)
                    break
                try:
                    out.append(json.loads(line))
                except ValueError:
                    log.warning("%s:%d: ignoring a torn line (interrupted write)", self.path, lineno)
        return out

    def delete(self) -> None:
        """Delete the ledger file (a run that committed nothing starts afresh)."""
        self.path.unlink(missing_ok=True)


class ObjectLedger:
    """The ledger of one rank on an object store: one object per record, named in append order.

    ``<out>/ledgers/ledger-r<rank:03d>-<seq:09d>.json`` holds one record (a JSON object); :meth:`records` lists
    the rank's objects and reads them in name order. Each is created exclusively, so a second process appending to
    the same rank fails rather than overwriting a record.

    Args:
        out: the output folder URL.
        rank: the rank whose ledger this is.
    """

    def __init__(self, out: str, rank: int):
        self.out, self.rank = out, rank
        self.folder = storage.join(out, LEDGER_FOLDER)
        self.path = storage.join(self.folder, f"ledger-r{rank:03d}-*.json")  # for messages
        self._next: int | None = None

    def _names(self) -> list[str]:
        return [n for n in storage.list_names(self.folder)
                if (m := _OBJECT_RECORD_RE.match(n)) and int(m.group(1)) == self.rank]

    def append(self, record: Mapping[str, Any]) -> None:
        """Add one record as a new object (the commit point of the protocol).

        Args:
            record: a JSON-serialisable mapping, written with sorted keys.

        Raises:
            DynOccError: when the record's object already exists (another writer of this rank).
        """
        if self._next is None:
            self._next = max((int(_OBJECT_RECORD_RE.match(n).group(2)) for n in self._names()), default=-1) + 1
        url = storage.join(self.folder, f"ledger-r{self.rank:03d}-{self._next:09d}.json")
        if not storage.create_exclusive(url, json.dumps(dict(record), sort_keys=True) + "\n"):
            raise DynOccError(f"{url}: already exists: another process writes rank {self.rank} of this output")
        self._next += 1

    def records(self) -> list[dict[str, Any]]:
        """Read the ledger back.

        Returns:
            All records, in order (none when there are none); unreadable or oversized objects (more than
            ``MAX_RECORD_BYTES``, far beyond any record this package writes) are ignored with a warning.
        """
        out = []
        for name in self._names():
            url = storage.join(self.folder, name)
            try:
                out.append(json.loads(storage.read_text(url, max_bytes=MAX_RECORD_BYTES)))
            except FileNotFoundError:
                continue
            except ValueError:
                log.warning("%s: ignoring an unreadable ledger record", url)
        return out

    def delete(self) -> None:
        """Delete every record of this rank (a run that committed nothing starts afresh)."""
        for name in self._names():
            storage.remove(storage.join(self.folder, name))
        self._next = None


def open_ledgers(out: str | os.PathLike) -> dict[int, Ledger | ObjectLedger]:
    """The ledgers of every rank in an output folder or URL.

    Args:
        out: the output folder (local) or URL (object store).

    Returns:
        rank -> ledger, in rank order.
    """
    if storage.is_store(out):
        ranks = {int(m.group(1)) for n in storage.list_names(storage.join(os.fspath(out), LEDGER_FOLDER))
                 if (m := _OBJECT_RECORD_RE.match(n))}
        return {r: ObjectLedger(os.fspath(out), r) for r in sorted(ranks)}
    return {int(m.group(1)): Ledger(p) for p in _ledger_paths(Path(out)) if (m := _LOCAL_LEDGER_RE.match(p.name))}


def rank_ledger(out: str | os.PathLike, rank: int) -> Ledger | ObjectLedger:
    """The ledger of ``rank`` in ``out`` (a JSON-lines file locally, one object per record remotely).

    Args:
        out: the output folder or URL.
        rank: the rank.

    Returns:
        The ledger (it may not exist yet).
    """
    if storage.is_store(out):
        return ObjectLedger(os.fspath(out), rank)
    return Ledger(Path(out) / f"ledger-r{rank:03d}.jsonl")


def has_ledgers(out: str | os.PathLike, ranks: Callable[[int], bool] | None = None) -> bool:
    """Whether ``out`` holds a ledger (of a rank accepted by ``ranks``; of any rank without).

    Args:
        out: the output folder or URL.
        ranks: ``ranks(rank) -> bool``, or ``None`` for every rank.

    Returns:
        True when such a ledger exists.
    """
    return any(ranks is None or ranks(r) for r in open_ledgers(out))


def _ledger_paths(out: Path) -> list[Path]:
    return sorted(Path(p) for p in glob.glob(str(out / "ledger-r*.jsonl")))
