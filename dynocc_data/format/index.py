"""The shard index (``index.json``): its one writer-side document builder and its one reader.

An index lists the shards of a folder with their sample counts and byte sizes (docs/FORMAT.md). The
generator writes it (:func:`dynocc_data.generation.writer.write_index` builds it with :func:`index_document`);
every reader (the datasets, ``stats``, the tests) goes through :func:`load_index` / :func:`read_index`.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import webdataset as wds

from .. import storage
from ..errors import InputError, InputNotFoundError
from ..storage import local_path

__all__ = ["INDEX_FORMAT", "INDEX_NAME", "ShardInfo", "confined_url", "index_document", "load_index", "local_path",
           "read_index", "read_text"]

INDEX_NAME = "index.json"
INDEX_FORMAT = "dynocc-shards/1"
MAX_INDEX_BYTES = 64 << 20  # an index of a million shards is ~100 MB of JSON less; anything bigger is not ours
# An index entry names a file under the index's folder: word characters and ``.+=@,%-`` between slashes. No shell
# metacharacter can pass (the entry may end up inside a ``pipe:`` or curl command line built from the index's
# own URL), no scheme, no absolute path, no ``..``.
_SAFE_ENTRY = re.compile(r"[\w+=@,%-][\w.+=@,%-]*(/[\w+=@,%-][\w.+=@,%-]*)*\Z")
_SHELL_CHARS = re.compile(r"[\s'\"`$;&|<>(){}\[\]*?!#\\]")
_COMMAND_SCHEMES = ("pipe:",)  # URLs that run a command: only ever from the caller's own arguments


@dataclass(frozen=True)
class ShardInfo:
    """One shard URL with its sample count and file size from ``index.json`` (``None`` when unknown).

    Args:
        url: the shard's URL or path, joined onto the index's folder.
        count: the number of samples in the shard.
        nbytes: the shard's size in bytes.
    """

    url: str
    count: int | None = None
    nbytes: int | None = None


def read_text(url: str, *, max_bytes: int = MAX_INDEX_BYTES) -> str:
    """Read a small text file from a local path, an fsspec URL (``s3://``, ``gs://``) or a URL for ``gopen``.

    Args:
        url: the file's path or URL.
        max_bytes: the most it may hold (more raises ``ValueError``).

    Returns:
        The file's contents, decoded as UTF-8.

    Raises:
        ValueError: when the file holds more than ``max_bytes``.
    """
    if storage.is_local(url) or storage.is_store(url):
        return storage.read_text(url, max_bytes=max_bytes)
    with wds.gopen(url, "rb") as stream:  # pipe: (the caller's own argument, never an index entry), http(s)
        data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"larger than {max_bytes} bytes")
    return data.decode("utf-8")


def _under(path: str, root: str) -> bool:
    """True when ``path`` (symbolic links resolved) lies inside the folder ``root``."""
    real, base = os.path.realpath(path), os.path.realpath(root)
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


def confined_url(where: str, base: str, url: str, *, allow_outside: bool = False) -> str:
    """The URL of an index entry ``url`` joined onto ``base`` (the index's folder).

    Refused unless it names a file under that folder (or the same remote prefix).

    Args:
        where: the index, for messages.
        base: the folder (path or URL prefix) the index lives in; ``""`` for an index given as a dict.
        url: the entry as written in the index.
        allow_outside: also accept absolute paths, ``..`` and ``http(s)``/``file:`` URLs (the caller trusts the
            index). Command URLs (``pipe:``) and shell metacharacters are refused even then.

    Returns:
        The URL to open.

    Raises:
        InputError: naming the index and the entry, when the entry may not be read.
    """
    def refuse(reason: str) -> InputError:
        return InputError(where, f"refusing shard entry {url!r}: {reason}")

    if url.lower().startswith(_COMMAND_SCHEMES):
        raise refuse("an index may not run commands (pipe: URLs only come from your own arguments)")
    if allow_outside:
        if _SHELL_CHARS.search(url):
            raise refuse("shell metacharacters")
        return url if "://" in url or url.startswith("file:") or posixpath.isabs(url) or not base else f"{base}/{url}"
    if "://" in url or ":" in url.split("/", 1)[0]:
        raise refuse("not a file under the index's folder (URLs are refused; pass allow_outside=True to trust it)")
    if posixpath.isabs(url) or os.path.isabs(url):
        raise refuse("an absolute path leaves the index's folder")
    if not _SAFE_ENTRY.match(url) or ".." in url.split("/"):
        raise refuse("not a plain relative file name under the index's folder")
    if not base:
        return url
    joined = f"{base}/{url}"
    local_base = local_path(base)
    if local_base is not None and not _under(local_path(joined) or joined, local_base):
        raise refuse("a symbolic link out of the index's folder")
    return joined


def _read_document(source: str | os.PathLike | Mapping[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """``(where, base, index)``: the index's name for messages, its URLs' folder, and the checked JSON object."""
    if isinstance(source, Mapping):
        where, base, index = "<index dict>", "", dict(source)
    else:
        where = os.fspath(source)
        local = local_path(where)
        if local is not None and os.path.isdir(local):
            where = os.path.join(where, INDEX_NAME)
        elif storage.is_store(where) and not where.endswith(".json"):  # a folder URL: its index.json
            where = storage.join(where, INDEX_NAME)
        base = where.rsplit("/", 1)[0] if "/" in where else ""
        try:
            index = json.loads(read_text(where))
        except FileNotFoundError:
            raise InputNotFoundError(where,
                                     "no index.json here (pass shard URLs, or run dynocc-data generate)") from None
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise InputError(where, f"cannot read the shard index: {err}") from None
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT or not isinstance(index.get("shards"), list):
        raise InputError(where, f"not a shard index (expected a JSON object with format {INDEX_FORMAT!r} and shards)")
    return where, base, index


def load_index(source: str | os.PathLike | Mapping[str, Any], *, allow_outside: bool = False) -> list[ShardInfo]:
    """Shards listed by an ``index.json``, with their URLs joined onto the index's folder.

    Every entry must name a file under the index's own folder (or the same remote prefix): URLs, absolute paths,
    ``..``, symbolic links out of the folder and shell metacharacters are refused (:func:`confined_url`), and
    command URLs (``pipe:``) always are, so reading a folder from a stranger never runs a command.

    Args:
        source: a path or URL of an ``index.json``, a folder (local, or an fsspec URL such as ``s3://bucket/run``)
            holding one, or the parsed dict.
        allow_outside: trust the index's entries to point elsewhere (see :func:`confined_url`).

    Returns:
        One :class:`ShardInfo` per entry, in the index's order.

    Raises:
        InputError: naming the file, when it is missing, unreadable or not a shard index.
    """
    return _entries(*_read_document(source), allow_outside=allow_outside)


def _entries(where: str, base: str, index: Mapping[str, Any], *, allow_outside: bool = False) -> list[ShardInfo]:
    """The checked shard entries of a checked index document."""
    shards = []
    for entry in index["shards"]:
        ok = isinstance(entry, dict) and isinstance(entry.get("url"), str)
        count, nbytes = (entry.get("count"), entry.get("bytes")) if ok else (None, None)
        if not ok or not isinstance(count, int) or count < 0 or not (nbytes is None or isinstance(nbytes, int)):
            raise InputError(where, f"bad shard entry {entry!r} (needs url and a count >= 0)")
        if isinstance(count, bool) or isinstance(nbytes, bool) or (nbytes is not None and nbytes < 0):
            raise InputError(where, f"bad shard entry {entry!r} (count and bytes are integers >= 0)")
        shards.append(ShardInfo(confined_url(where, base, entry["url"], allow_outside=allow_outside), count, nbytes))
    return shards


def read_index(source: str | os.PathLike | Mapping[str, Any], *, allow_outside: bool = False) -> dict[str, Any]:
    """The whole ``index.json`` object, its shard URLs joined onto the index's folder.

    Args:
        source: as for :func:`load_index`.
        allow_outside: as for :func:`load_index`.

    Returns:
        The JSON object with ``"shards"`` as dicts of ``url``, ``count`` and ``bytes``.

    Raises:
        InputError: as :func:`load_index` (the same checks).
    """
    where, base, index = _read_document(source)
    shards = _entries(where, base, index, allow_outside=allow_outside)
    return {**index, "shards": [{"url": s.url, "count": s.count, "bytes": s.nbytes} for s in shards]}


def index_document(shards: Sequence[Mapping[str, Any]], extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``index.json`` object for ``shards``, sorted by URL.

    Args:
        shards: one dict per shard with ``url``, ``count`` and ``bytes`` (other keys are dropped).
        extra: more top-level fields (e.g. the generating config), added after ``format``, ``num_samples`` and
            ``shards`` (and overriding them when they share a name).

    Returns:
        The JSON-ready object: ``format``, ``num_samples`` (the sum of the counts), ``shards``, then ``extra``.
    """
    entries = sorted(({"url": s["url"], "count": s["count"], "bytes": s["bytes"]} for s in shards),
                     key=lambda s: s["url"])
    return {"format": INDEX_FORMAT, "num_samples": sum(s["count"] for s in entries), "shards": entries,
            **dict(extra or {})}
