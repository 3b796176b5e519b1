"""Crash-safe small-file writes shared by the writer and the tools (never a half-written file under a final name)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["PARTIAL", "atomic_write_text", "fsync_dir"]

PARTIAL = ".partial"  # suffix of every file still being written


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries to disk, so that a rename into it survives a crash; best effort.

    Args:
        path: the folder. Where it cannot be opened or synced (some file systems, Windows) nothing happens.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (never half-written).

    Args:
        path: the final file; the temporary one is next to it, named ``<name>.<pid>.partial``, and is removed when
            writing fails.
        text: the contents, written as UTF-8 and fsynced before the rename.
    """
    path = Path(path)
    tmp = path.with_name(path.name + f".{os.getpid()}{PARTIAL}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
