"""A local cache of whole remote files (shards), bounded in size, least recently used evicted first.

A file is downloaded under a temporary name ``<entry>.<pid>.<random>.partial`` and renamed into place when
complete, so concurrent DataLoader workers (and several training processes sharing the folder) never read a part,
and two workers fetching the same shard at once both end with a whole copy (the second rename replaces the first
with identical bytes). A cached file's name carries its size, ``<sha1 of the URL>-<bytes>-<file name>``; one whose
size on disk differs (cut short, damaged) is deleted and fetched again, and when the caller knows the size (from
``index.json``) it must match too. Eviction and the rename run under an ``flock`` on ``<cache_dir>/.lock``, so the
finished files never sum to more than ``limit`` bytes (downloads in progress come on top); a file larger than the
limit is read once from its temporary copy and not kept. A hit refreshes the file's modification time, which is
the LRU order.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import logging
import os
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

from .fs import PARTIAL, StorageError, get_file

__all__ = ["ShardCache", "parse_size"]

log = logging.getLogger(__name__)

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?\s*", re.IGNORECASE)
_ENTRY_RE = re.compile(r"^[0-9a-f]{20}-(\d+)-")
_LOCK_NAME = ".lock"
_STALE_PARTIAL_SECONDS = 3600.0  # a download this old was left by a killed process


def parse_size(size: int | str) -> int:
    """A byte count from an int or a string such as ``"10GB"`` (powers of 1000) or ``"512MiB"`` (powers of 1024).

    Args:
        size: bytes as an int >= 0, or a number and an optional unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB).

    Returns:
        The number of bytes.

    Raises:
        ValueError: when ``size`` is negative or not a size.
    """
    if isinstance(size, int) and not isinstance(size, bool):
        if size < 0:
            raise ValueError(f"must be >= 0 bytes, got {size}")
        return size
    match = _SIZE_RE.fullmatch(size) if isinstance(size, str) else None
    if match is None:
        raise ValueError(f"must be a number of bytes or a size such as '10GB' or '512MiB', got {size!r}")
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "").lower()])


class ShardCache:
    """Whole remote files in a local folder, at most ``limit`` bytes in all; see the module docstring.

    Picklable (a folder and a number), so every DataLoader worker gets its own handle on the same folder; the
    counters ``hits`` and ``misses`` are per process.

    Args:
        cache_dir: the local folder (created when missing).
        limit: the most bytes the cached files may take: an int or a string such as ``"10GB"``.

    Raises:
        ValueError: when ``limit`` is not a size.
        StorageError: when ``cache_dir`` cannot be created.
    """

    def __init__(self, cache_dir: str | os.PathLike, limit: int | str = "10GB"):
        """Check the limit and create the folder."""
        self.cache_dir = os.path.abspath(os.fspath(cache_dir))
        self.limit = parse_size(limit)
        self.hits = 0
        self.misses = 0
        try:
            os.makedirs(self.cache_dir, exist_ok=True)
        except OSError as err:
            raise StorageError(self.cache_dir, f"cannot create the cache folder ({err.strerror or err})") from None

    def __repr__(self) -> str:
        """Folder and limit."""
        return f"ShardCache({self.cache_dir!r}, limit={self.limit})"

    def _key(self, url: str) -> str:
        return hashlib.sha1(url.encode("utf-8")).hexdigest()[:20]

    def entries(self) -> list[str]:
        """The cached files (finished ones only), least recently used first.

        Returns:
            Their paths.
        """
        found = []
        for path in glob.glob(os.path.join(glob.escape(self.cache_dir), "*")):
            name = os.path.basename(path)
            if _ENTRY_RE.match(name) and not name.endswith(PARTIAL):
                try:
                    found.append((os.path.getmtime(path), path))
                except FileNotFoundError:  # evicted by another process meanwhile
                    continue
        return [path for _, path in sorted(found)]

    def total_bytes(self) -> int:
        """The bytes the cached files take now.

        Returns:
            Their summed sizes.
        """
        return sum(os.path.getsize(p) for p in self.entries() if os.path.exists(p))

    def _cached(self, url: str, size: int | None) -> BinaryIO | None:
        """An open cached copy of ``url`` whose size matches its name (and ``size``), else None (bad ones go)."""
        for path in glob.glob(os.path.join(glob.escape(self.cache_dir), self._key(url) + "-*")):
            match = _ENTRY_RE.match(os.path.basename(path))
            if match is None or path.endswith(PARTIAL):
                continue
            try:
                stream = open(path, "rb")
            except FileNotFoundError:  # evicted between the listing and the open
                continue
            on_disk = os.fstat(stream.fileno()).st_size
            named = int(match.group(1))
            if on_disk == named and (size is None or size == named):
                try:
                    os.utime(path)  # most recently used
                except OSError:
                    pass
                return stream
            stream.close()
            log.warning("%s: cached copy of %s is %d bytes, expected %d: deleting it and downloading again", path,
                        url, on_disk, size if size is not None else named)
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        return None

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(os.path.join(self.cache_dir, _LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _evict(self, room: int) -> None:
        """Delete least recently used files until the cached ones take at most ``room`` bytes (call locked)."""
        sizes = []
        for path in self.entries():
            try:
                sizes.append((path, os.path.getsize(path)))
            except FileNotFoundError:
                continue
        total = sum(n for _, n in sizes)
        for path, n in sizes:
            if total <= room:
                break
            log.debug("cache full: evicting %s (%d bytes)", path, n)
            try:
                os.unlink(path)  # a reader that has it open keeps reading its copy
            except FileNotFoundError:
                pass
            total -= n
        now = time.time()
        for path in glob.glob(os.path.join(glob.escape(self.cache_dir), f"*{PARTIAL}")):
            try:
                if now - os.path.getmtime(path) > _STALE_PARTIAL_SECONDS:
                    os.unlink(path)
            except FileNotFoundError:
                pass

    def open(self, url: str, size: int | None = None) -> BinaryIO:
        """An open local copy of ``url``: the cached one, or a fresh download (cached when it fits the limit).

        Args:
            url: the remote file (any URL :func:`~dynocc_data.storage.fs.get_file` reads).
            size: its size in bytes when known (``index.json``); a copy of another size is not used.

        Returns:
            A binary file object open for reading, positioned at the start.

        Raises:
            StorageError: when the download has another size than ``size``.
            OSError: when the download fails (no copy is left behind).
        """
        stream = self._cached(url, size)
        if stream is not None:
            self.hits += 1
            return stream
        self.misses += 1
        base = re.sub(r"[^\w.+=@,-]", "_", url.rstrip("/").rsplit("/", 1)[-1])[:80]
        tmp = os.path.join(self.cache_dir, f"{self._key(url)}.{os.getpid()}.{uuid.uuid4().hex[:8]}{PARTIAL}")
        try:
            get_file(url, tmp)
            got = os.path.getsize(tmp)
            if size is not None and got != size:
                raise StorageError(url, f"downloaded {got} bytes, index.json says {size}")
            stream = open(tmp, "rb")
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        with self._locked():
            if got <= self.limit:
                self._evict(self.limit - got)
                os.replace(tmp, os.path.join(self.cache_dir, f"{self._key(url)}-{got}-{base}"))
            else:
                log.warning("%s: %d bytes, more than the cache limit of %d: read without caching", url, got,
                            self.limit)
                os.unlink(tmp)  # the open stream still reads it
        return stream
