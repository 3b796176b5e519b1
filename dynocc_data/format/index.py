"""The shard index (``index.json``): its one writer-side document builder and its one reader.

An index lists the shards of a folder with their sample counts and byte sizes (docs/FORMAT.md). The
generator writes it (:func:`dynocc_data.generation.writer.write_index` builds it with :func:`index_document`);
every reader (the datasets, ``stats``, the tests) goes through :func:`load_index` / :func:`read_index`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import webdataset as wds

from ..errors import InputError, InputNotFoundError

__all__ = ["INDEX_FORMAT", "INDEX_NAME", "ShardInfo", "index_document", "load_index", "local_path", "read_index",
           "read_text"]

INDEX_NAME = "index.json"
INDEX_FORMAT = "dynocc-shards/1"


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


def local_path(url: str) -> str | None:
    """The file-system path of a local shard URL.

    Args:
        url: a plain path, a ``file:`` URL, or any other URL.

    Returns:
        The path for a plain path or a ``file:`` URL; ``None`` for remote and pipe URLs.
    """
    parsed = urlparse(url)
    if parsed.scheme == "":
        return url
    if parsed.scheme == "file":
        return url2pathname(parsed.path)
    return None


def read_text(url: str) -> str:
    """Read a small text file from a local path or any URL webdataset's ``gopen`` understands.

    Args:
        url: the file's path or URL.

    Returns:
        The file's contents, decoded as UTF-8.
    """
    local = local_path(url)
    if local is not None:
        with open(local, encoding="utf-8") as stream:
            return stream.read()
    with wds.gopen(url, "rb") as stream:
        return stream.read().decode("utf-8")


def _read_document(source: str | os.PathLike | Mapping[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """``(where, base, index)``: the index's name for messages, its URLs' folder, and the checked JSON object."""
    if isinstance(source, Mapping):
        where, base, index = "<index dict>", "", dict(source)
    else:
        where = os.fspath(source)
        local = local_path(where)
        if local is not None and os.path.isdir(local):
            where = os.path.join(where, INDEX_NAME)
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


def load_index(source: str | os.PathLike | Mapping[str, Any]) -> list[ShardInfo]:
    """Shards listed by an ``index.json``, with their URLs joined onto the index's folder.

    Args:
        source: a path or URL of an ``index.json``, a local folder holding one, or the parsed dict.

    Returns:
        One :class:`ShardInfo` per entry, in the index's order.

    Raises:
        InputError: naming the file, when it is missing, unreadable or not a shard index.
    """
    return _entries(*_read_document(source))


def _entries(where: str, base: str, index: Mapping[str, Any]) -> list[ShardInfo]:
    """The checked shard entries of a checked index document."""
    shards = []
    for entry in index["shards"]:
        ok = isinstance(entry, dict) and isinstance(entry.get("url"), str)
        count, nbytes = (entry.get("count"), entry.get("bytes")) if ok else (None, None)
        if not ok or not isinstance(count, int) or count < 0 or not (nbytes is None or isinstance(nbytes, int)):
            raise InputError(where, f"bad shard entry {entry!r} (needs url and a count >= 0)")
        url = entry["url"]
        if base and "://" not in url and not os.path.isabs(url):
            url = f"{base}/{url}"
        shards.append(ShardInfo(url, count, nbytes))
    return shards


def read_index(source: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """The whole ``index.json`` object, its shard URLs joined onto the index's folder.

    Args:
        source: as for :func:`load_index`.

    Returns:
        The JSON object with ``"shards"`` as dicts of ``url``, ``count`` and ``bytes``.

    Raises:
        InputError: as :func:`load_index` (the same checks).
    """
    where, base, index = _read_document(source)
    shards = _entries(where, base, index)
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
