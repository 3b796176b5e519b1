"""A lean tar reader for shards of small members, standing in for ``tarfile``'s stream mode.

Why hand-written: on shards of small members (a JPEG and four small ``.npy``/``.json`` files per sample)
``tarfile.open(fileobj=..., mode="r|*")`` spends most of its time building ``TarInfo`` objects; this
reader parses the 512-byte headers directly and is several times faster (``benchmarks/bench_load.py``).
Its outcomes are the same as tarfile's on every archive the tests build, including truncated and
corrupt ones (``tests/test_convert.py::test_tar_reader_matches_tarfile`` checks it against ``tarfile``).
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

__all__ = ["MAX_MEMBER_BYTES", "expand_tars", "group_members", "is_compressed", "iter_tar_members", "tar_members"]

_BLOCK = 512
_REGULAR = (b"0", b"\0", b"7")  # regular file types, as tarfile's REGULAR_TYPES (sparse files aside)
_WDS_META = re.compile(r"__[^/]*__($|/)")  # webdataset's skip_meta: such members are not sample files
MAX_MEMBER_BYTES = 1 << 30  # a member claiming more is refused before anything is read into memory
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd")  # gzip, bzip2, xz, zstd


def is_compressed(head: bytes) -> bool:
    """Tell a compressed file by its content, whatever it is named.

    Args:
        head: the file's first bytes (8 are enough).

    Returns:
        True when ``head`` starts with a gzip, bzip2, xz or zstd signature.
    """
    return head.startswith(_COMPRESSED_MAGIC)


class _Prepended:
    """A read-only stream: ``head`` bytes, then the rest of ``stream`` (to look at a stream's first block)."""

    def __init__(self, head: bytes, stream: Any) -> None:
        """Serve ``head`` first, then read from ``stream``."""
        self.head, self.stream = head, stream

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all that is left for ``size < 0``)."""
        if not self.head:
            return self.stream.read(size)
        if size < 0:
            out, self.head = self.head + self.stream.read(), b""
            return out
        out, self.head = self.head[:size], self.head[size:]
        return out + self.stream.read(size - len(out)) if len(out) < size else out


def _decompressed(stream: Any) -> Any:
    """``stream``, or a decompressing reader over it when it starts with a gzip, bzip2 or xz signature.

    These are the compressions tarfile's ``r|*`` mode detects.
    """
    head = stream.read(_BLOCK)
    stream = _Prepended(head, stream)
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=stream)
    if head.startswith(b"BZh"):
        return bz2.BZ2File(stream)
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(stream)
    return stream


def _number(field: bytes) -> int:
    """A numeric tar header field: NUL/space-terminated octal, or GNU base-256 (first byte 0x80 or 0xff)."""
    if field[:1] in (b"\x80", b"\xff"):
        value = int.from_bytes(field[1:], "big")
        return value - (1 << (8 * len(field) - 8)) if field[:1] == b"\xff" else value
    return int(field.split(b"\0", 1)[0].strip() or b"0", 8)


def _checksum_ok(header: bytes) -> bool:
    """True when the header's checksum field matches its bytes (unsigned or signed sum, as tarfile accepts)."""
    try:
        stored = _number(header[148:156])
    except ValueError:
        return False
    if stored == sum(header) - sum(header[148:156]) + 256:  # the checksum field counts as eight spaces
        return True
    return stored == 256 + sum(b - 256 if b > 127 else b for b in header[:148] + header[156:])


def _pax_records(data: bytes) -> dict[str, str]:
    r"""The ``length key=value\n`` records of a pax extended header."""
    records, pos = {}, 0
    while pos < len(data) and data[pos] != 0:
        space = data.index(b" ", pos)
        end = pos + int(data[pos:space])
        if end <= space or data[end - 1:end] != b"\n":
            raise tarfile.ReadError("invalid pax header")
        key, _, value = data[space + 1:end - 1].partition(b"=")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos = end
    return records


def _member_name(header: bytes, pax: Mapping[str, str], long_name: str | None) -> str:
    """A member's name: the pax ``path``, else a GNU long name, else the header's (with its ustar prefix)."""
    if "path" in pax:
        return pax["path"]
    if long_name is not None:
        return long_name
    name = header[:100].split(b"\0", 1)[0]
    prefix = header[345:500].split(b"\0", 1)[0] if header[257:265] == b"ustar\x0000" else b""
    return (prefix + b"/" + name if prefix else name).decode("utf-8", "surrogateescape")


def tar_members(stream: Any) -> Iterator[tuple[str, bytes]]:
    """Read the regular files of an (optionally compressed) tar stream, block by block.

    A lean equivalent of iterating ``tarfile.open(fileobj=stream, mode="r|*")``, with the same outcomes: the end
    of the data, a zero block or a bad header where a header should start ends the archive silently; pax
    (``path``, ``size``) and GNU long-name headers apply to the member that follows. Names are returned as they
    are (``../x``, ``/etc/x``): nothing is ever extracted, they only group members into samples; links, devices
    and folders are skipped.

    Args:
        stream: a binary stream with ``read``; gzip, bzip2 and xz are detected from its first bytes.

    Yields:
        ``(name, data)`` of each regular file, in archive order.

    Raises:
        tarfile.ReadError: when the archive is empty or bad at its very start or right after a pax / long-name
            header, when an extended header is malformed, (``"unexpected end of data"``) when data is cut short,
            and before reading a member that claims more than :data:`MAX_MEMBER_BYTES`.
    """
    stream = _decompressed(stream)
    offset, pax, long_name = 0, {}, None
    while True:
        header = stream.read(_BLOCK)
        if len(header) < _BLOCK or header.count(0) == _BLOCK or not _checksum_ok(header):
            subsequent = bool(pax) or long_name is not None
            if subsequent or (offset == 0 and header.count(0) != _BLOCK):
                reason = "empty file" if not header else "truncated header" if len(header) < _BLOCK else "bad checksum"
                raise tarfile.ReadError(f"missing or bad header after an extended header ({reason})" if subsequent
                                        else reason)
            return
        kind = header[156:157]
        size = int(pax["size"]) if "size" in pax else _number(header[124:136])
        if not 0 <= size <= MAX_MEMBER_BYTES:
            raise tarfile.ReadError(f"member {_member_name(header, pax, long_name)!r} claims {size} bytes "
                                    f"(the limit is {MAX_MEMBER_BYTES})")
        data = stream.read(size)
        if len(data) < size:
            raise tarfile.ReadError("unexpected end of data")
        padding = -size % _BLOCK
        padded = not padding or len(stream.read(padding)) == padding
        offset += _BLOCK + size + padding
        if kind in (b"x", b"X"):
            pax = _pax_records(data)
        elif kind == b"L":
            long_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        elif kind not in (b"g", b"K"):  # global pax headers and GNU long link names matter to no sample
            name = _member_name(header, pax, long_name)
            pax, long_name = {}, None
            if kind in _REGULAR:
                yield name, data
        if not padded:
            raise tarfile.ReadError("unexpected end of data")


def expand_tars(src: Iterator[dict[str, Any]], *,
                 handler: Callable[[BaseException], bool]) -> Iterator[dict[str, Any]]:
    """Pipeline stage in place of webdataset's ``tar_file_expander``, reading with :func:`tar_members`.

    Several times faster than ``tarfile`` on shards of small members, and yields the same. Each stream is closed
    when its shard is done.

    Args:
        src: dicts with ``url`` and an open binary ``stream`` (webdataset's ``url_opener`` output).
        handler: called with each error (its ``args`` extended by the shard's URL); True: go on with the next
            shard, False: stop.

    Yields:
        ``{"fname", "data", "__url__"}`` per file (webdataset metadata members skipped), and ``{}`` after each
        complete shard.
    """
    for source in src:
        url, stream = source["url"], source["stream"]
        error, closed = None, False
        try:
            try:
                for name, data in tar_members(stream):
                    if not _WDS_META.match(name):
                        yield {"fname": name, "data": data, "__url__": url}
            except Exception as exn:  # noqa: BLE001 - reported through the handler, as webdataset does
                error = exn
            closed = True
            try:
                _close(stream)  # a pipe: or curl stream reports its command's exit status here
            except Exception as exn:  # noqa: BLE001 - OSError("exit status 22"): the shard failed, not the epoch
                error = error or exn
        finally:
            if not closed:  # the consumer stopped early (GeneratorExit): close quietly
                try:
                    _close(stream)
                except Exception:  # noqa: BLE001 - a command killed because nobody reads it any more
                    pass
        if error is None:
            yield {}
            continue
        error.args = error.args + (url,)
        if not handler(error):
            break


_KEY_SUFFIX = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext: key, then every extension


def group_members(src: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Pipeline stage in place of webdataset's ``group_by_keys``: consecutive members with one key make a sample.

    The same grouping (key = the name up to the first dot of its last part, suffix = the rest, lower-cased; a
    shard's end, ``{}``, ends its last sample), except that a member whose suffix the current sample already has
    starts a new sample with the same key instead of failing the rest of the shard, so a duplicate sample is one
    sample whether its copies are adjacent or not (the reader then keeps the first, see
    :func:`dynocc_data.datasets.dynocc`).

    Args:
        src: the output of :func:`expand_tars`.

    Yields:
        Samples: ``__key__``, ``__url__`` and one entry per member suffix.
    """
    current: dict[str, Any] | None = None
    for member in src:
        if not member:
            if current is not None:
                yield current
            current = None
            continue
        match = _KEY_SUFFIX.match(member["fname"])
        if not match:
            continue
        key, suffix = match.group(1), match.group(2).lower()
        if current is None or key != current["__key__"] or suffix in current:
            if current is not None:
                yield current
            current = {"__key__": key, "__url__": member["__url__"]}
        current[suffix] = member["data"]
    if current is not None:
        yield current


def _close(stream: Any) -> None:
    """Close ``stream`` if it can be closed."""
    close = getattr(stream, "close", None)
    if close is not None:
        close()


def iter_tar_members(path: str | os.PathLike) -> Iterable[tarfile.TarInfo]:
    """The members of a tar (used by tests and tools to check shard contents without decoding).

    Args:
        path: the tar file; any compression ``tarfile`` detects.

    Yields:
        Each member's ``TarInfo``, in archive order.
    """
    with tarfile.open(path) as tf:
        yield from tf.getmembers()
