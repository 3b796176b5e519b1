"""Stream DynOcc WebDataset shards into PyTorch: the consumer side of docs/FORMAT.md.

::

    ds = DynOccDataset("shards/dynocc-r000-{000000..000099}.tar", strategy="band", shuffle=2000)
    loader = DataLoader(ds, batch_size=32, num_workers=8, collate_fn=collate_pairs)

**URLs.** ``urls`` is one of

* a folder written by ``dynocc-data generate``, local or an fsspec URL (``s3://bucket/run``): its ``index.json``
  lists the shards and their sizes;
* an ``index.json`` file (same thing);
* a string: a path or URL, brace patterns (``shard-{000000..000099}.tar``), several joined with ``::``,
  ``${NAME}`` replaced by the environment variable ``WDS_NAME`` (webdataset's ``expand_urls``);
* a list of any of these.

Each shard is opened with webdataset's ``gopen``: a local path or ``file:`` URL; ``pipe:COMMAND`` (the shell
command's stdout is read: ``pipe:aws s3 cp s3://bucket/shard.tar -``; shell commands, so trusted input only);
``http(s)://`` (read through ``curl``, which must be installed); any other ``scheme://`` URL (``s3://``, ``gs://``)
is opened through fsspec (:mod:`dynocc_data.storage`; credentials from the back end's usual sources, e.g. the AWS
environment variables), and with ``cache_dir`` it is downloaded whole into a local cache of at most
``cache_limit`` bytes (:class:`~dynocc_data.storage.ShardCache`: least recently used shards evicted, downloads
renamed into place, so workers can share it) and read from there in later epochs. It is read by a lean tar parser
equivalent to ``tarfile``'s stream mode (plain, gzip, bzip2 or xz; several times faster on shards of small
members), and its files grouped into samples by webdataset. Sample counts (for ``len()`` and ``equalize``)
come from ``index`` (default ``"auto"``: the ``index.json`` next to local shards; or give a path, an URL or the
parsed dict for remote shards; ``None`` for none). A shard is matched to its index entry by path, or for
remote/``pipe:`` URLs by its file name appearing in the URL.

**Splitting** (one epoch, without ``resampled``): the shard list (shuffled identically on every rank when
``shuffle > 0``, seeded by ``(seed, epoch)``) is dealt round-robin to the ranks, then each rank's shards
round-robin to its DataLoader workers, so no sample is read twice. With fewer shards than ranks x workers
(``too_few_shards="split"``, the default) every reader reads every shard, in the same order, and keeps every
``R``-th sample (``R`` readers), with one warning that each shard is then read ``R`` times; with known counts and
several ranks every reader keeps ``total // R`` of them (at most ``R - 1`` dropped), so every rank yields the same
count; ``"error"`` raises instead, ``"resample"`` switches to resampled mode with a warning. With several ranks,
``equalize=True`` and known counts, every (rank, worker) reader yields exactly ``q`` samples, the minimum over all
readers of the samples their shards hold: the rest (the last samples of the larger readers, or random ones after
the shuffle buffer) are dropped for this epoch and the drop is logged (a warning above 10 %). Every rank then yields
the same number of samples and batches, so no rank hangs at the end of an epoch. Shard counts that are a multiple
of ranks x workers and equal shard sizes keep the drop small. With one rank nothing is dropped.

**Resampled mode** (``resampled=True``): every reader draws shards with replacement forever (webdataset's
``ResampledShards``, seeded by ``(seed, epoch, rank, worker)``) and an epoch is ``epoch_length`` samples per rank
(as webdataset's ``with_epoch``), shared out among the workers.

**Decoding** (:func:`dynocc_data.format.sample.decode_sample`, the package's one decoder) never unpickles: ``.jpg`` with
``torchvision.io.decode_jpeg`` (libjpeg-turbo) to ``uint8 [3,H,W]`` RGB, ``.npy`` with
``numpy.load(allow_pickle=False)`` (or a cached-dtype ``numpy.frombuffer`` fast path), ``.json`` with
``json.loads``; other members (``.pyd``, ``.pickle``, ...) are ignored; ``meta["source"]`` comes from the JSON
(default ``"dynocc"``; shards made by ``dynocc_data.tools.convert`` say ``"youtube3d"`` or ``"diw"``). A sample missing
one of the five members is an error naming the shard, the key and the field, whatever ``handler`` says. A truncated
or corrupt tar, or a member that does not decode, is counted in :attr:`DynOccDataset.stats` and then handled by
``handler``: ``"warn"`` (log a warning, skip), ``"ignore"`` (skip silently), ``"raise"`` or a callable
``handler(ShardFormatError) -> bool`` (True: skip and go on, False: stop this reader). The readable samples of a
truncated shard are kept, its incomplete last one skipped. A shard counts as truncated when reading it fails, when a
local one lacks the tar end-of-archive blocks or is shorter than ``index.json`` says, or when it ends with fewer
samples than ``index.json`` says (tarfile stops silently at a corrupt header); without an index, a remote shard cut
exactly between two members cannot be told from a sample missing a member.

**Items** follow the contract (image, pairs, ordinal, meta, and ``boundary`` when ``keep_boundary``); pairs come
from ``strategy`` (``"stored"``: the pairs in the shard; otherwise ``sampling.create_sampler(strategy)`` called
with ``sampling.sample_generator(seed, epoch, key)``), then ``transform(item)`` is applied. The stored pairs
(``pairs.npy``, ``ordinal.npy``) are decoded, and checked, only for strategies that read them (``"stored"`` and
custom callables, which get them as ``stored=``); the built-in strategies that draw their own pairs skip them.

Longer than 500 lines because shard resolution, the epoch plan, per-reader bookkeeping and the pipeline stages make
one reader whose error handling and counting span all of them; the format and the tar reader live in
:mod:`dynocc_data.format`.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union

import torch
import webdataset as wds
from torch.utils.data import IterableDataset

from .. import storage
from ..errors import InputError, InputNotFoundError, ShardFormatError
from ..format.index import INDEX_NAME, ShardInfo, load_index, local_path
from ..format.sample import MissingFieldError, decode_image_member, decode_sample
from ..format.tar import expand_tars, group_members, is_compressed
from ..sampling import create_sampler, sample_generator
from ._distributed import DistributedStream, mix_seed, share_of, worker_info

logger = logging.getLogger(__name__)

__all__ = [
    "DynOccDataset",
    "EpochPlan",
    "MissingFieldError",
    "ReadStats",
    "ShardInfo",
    "decode_sample",
    "load_index",
    "plan_epoch",
    "resolve_shards",
    "sample_split_quota",
]

_MAX_STAT_ROWS = 256  # one counter row per DataLoader worker id (wraps around beyond that)
_TAR_END = 1024  # a tar archive ends with two 512-byte zero blocks
_DUPLICATES_REPORTED = 5  # duplicate keys logged one by one per reader and epoch; the rest are only counted
_SHARD_SUFFIXES = (".tar", ".tgz", ".tar.gz", ".tar.bz2", ".tar.xz")  # a store URL without one names a folder

Handler = Union[Literal["warn", "raise", "ignore"], Callable[[ShardFormatError], bool]]
UrlSpec = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]


# ------------------------------------------------------------------------------------------ shard lists


def _expand(spec: UrlSpec) -> list[ShardInfo]:
    """Expand folders, index files, brace patterns and lists into shards (counts only where an index was read)."""
    if isinstance(spec, (str, os.PathLike)):
        text = os.fspath(spec)
        local = local_path(text)
        if local is not None and (os.path.isdir(local) or (local.endswith(".json") and os.path.isfile(local))):
            return load_index(text)
        if storage.is_store(text) and "{" not in text and "::" not in text and not text.endswith(_SHARD_SUFFIXES):
            return load_index(text)  # an index.json URL, or a folder URL holding one
        try:
            return [ShardInfo(url) for url in wds.shardlists.expand_urls(text)]
        except AssertionError as err:  # webdataset asserts when a ${NAME} has no WDS_NAME variable
            raise InputError(text, f"cannot expand the URL pattern: {err}") from None
    if isinstance(spec, Sequence):
        return [shard for item in spec for shard in _expand(item)]
    raise TypeError(f"urls must be a string, a path or a list of them, got {type(spec).__name__}")


def _index_lookup(shards: list[ShardInfo]) -> tuple[dict[str, ShardInfo], dict[str, ShardInfo]]:
    """Index entries keyed by absolute local path and by file name (for remote and ``pipe:`` URLs)."""
    by_path, by_name = {}, {}
    for shard in shards:
        local = local_path(shard.url)
        if local is not None:
            by_path[os.path.abspath(local)] = shard
        by_name[shard.url.rsplit("/", 1)[-1]] = shard
    return by_path, by_name


def _with_counts(shards: list[ShardInfo], index: str | os.PathLike | Mapping[str, Any] | None) -> list[ShardInfo]:
    """Fill in the count of every shard found in ``index`` (``"auto"``: the index.json next to local shards)."""
    if index is None or all(s.count is not None for s in shards):
        return shards
    auto = isinstance(index, str) and index == "auto"
    if auto:
        folders = {os.path.dirname(os.path.abspath(p)) for s in shards if (p := local_path(s.url)) is not None}
        entries = [e for d in sorted(folders) if os.path.isfile(os.path.join(d, INDEX_NAME))
                   for e in load_index(os.path.join(d, INDEX_NAME))]
    else:
        entries = load_index(index)
    by_path, by_name = _index_lookup(entries)
    out = []
    for shard in shards:
        local = local_path(shard.url)
        found = by_path.get(os.path.abspath(local)) if local is not None else None
        if found is None and (local is None or not auto):
            # remote or pipe (or an index given for shards elsewhere): the file name appears in the URL
            words = shard.url.replace("/", " ").replace("?", " ").split()
            found = next((by_name[w] for w in reversed(words) if w in by_name), None)
        keep = shard.count is not None or found is None
        out.append(shard if keep else ShardInfo(shard.url, found.count, found.nbytes))
    return out


def _describe(urls: UrlSpec) -> str:
    """A short name for ``urls`` in messages."""
    if isinstance(urls, (str, os.PathLike)):
        return os.fspath(urls)
    first = os.fspath(urls[0]) if len(urls) else "[]"
    return first if len(urls) == 1 else f"{first} (+{len(urls) - 1} more)"


def resolve_shards(
    urls: UrlSpec, *, index: str | os.PathLike | Mapping[str, Any] | None = "auto"
) -> list[ShardInfo]:
    """The shard list of ``urls`` with sample counts from ``index``.

    Args:
        urls: as for :class:`DynOccDataset` (see the module docstring).
        index: ``"auto"`` (the ``index.json`` next to local shards), a path, an URL or the parsed dict; ``None``
            for no counts.

    Returns:
        One :class:`ShardInfo` per shard, in order.

    Raises:
        InputError: when there are no shards, or the index cannot be read.
        InputNotFoundError: when a local shard does not exist.
    """
    shards = _with_counts(_expand(urls), index)
    if not shards:
        raise InputError(str(urls), "no shards")
    missing = [s.url for s in shards if (p := local_path(s.url)) is not None and not os.path.isfile(p)]
    if missing:
        more = f" ({len(missing)} of {len(shards)} shards missing)" if len(missing) > 1 else ""
        raise InputNotFoundError(missing[0], f"shard not found{more}")
    return shards


# ------------------------------------------------------------------------------------------ epoch plan


@dataclass(frozen=True)
class EpochPlan:
    """Which shards each (rank, worker) reader reads in one epoch, and how many samples it yields.

    Attributes:
        readers: ``readers[rank * num_workers + worker]`` lists shard indices in reading order.
        counts: ``counts[i]`` is the samples reader i's shards hold (``None`` when a count is unknown).
        quota: the number of samples every reader yields when equalizing (``None``: all of them).
        num_workers: DataLoader workers per rank.
    """

    readers: tuple[tuple[int, ...], ...]
    counts: tuple[int | None, ...]
    quota: int | None
    num_workers: int

    def reader(self, rank: int, worker: int) -> tuple[int, ...]:
        """Shard indices of one reader.

        Args:
            rank: the reader's rank.
            worker: the reader's DataLoader worker.

        Returns:
            The shard indices, in reading order.
        """
        return self.readers[rank * self.num_workers + worker]

    def rank_length(self, rank: int) -> int | None:
        """Samples one rank yields in the epoch.

        Args:
            rank: the rank.

        Returns:
            The number of samples (``None`` when unknown).
        """
        if self.quota is not None:
            return self.quota * self.num_workers
        counts = self.counts[rank * self.num_workers:(rank + 1) * self.num_workers]
        return None if any(c is None for c in counts) else sum(counts)

    @property
    def dropped(self) -> int:
        """Samples left out by equalizing, over all readers."""
        return 0 if self.quota is None else sum(c - self.quota for c in self.counts)


def plan_epoch(
    counts: Sequence[int | None], *, world_size: int, num_workers: int, epoch: int, seed: int,
    shuffle: bool, equalize: bool,
) -> EpochPlan:
    """Deal shards to ranks then workers round-robin, after a ``(seed, epoch)`` shuffle identical on every rank.

    Pure and deterministic, so every rank and worker computes the same plan. Needs ``len(counts) >= readers``.

    Args:
        counts: the samples of each shard (``None`` when unknown).
        world_size: the number of ranks.
        num_workers: DataLoader workers per rank.
        epoch: the epoch (seeds the shuffle).
        seed: the dataset's seed.
        shuffle: shuffle the shard list first.
        equalize: give every reader the same quota, the smallest reader's samples (only when every count is
            known).

    Returns:
        The plan.
    """
    order = list(range(len(counts)))
    if shuffle:
        random.Random(mix_seed(seed, epoch, 0x5A4D)).shuffle(order)
    readers = tuple(
        tuple(order[rank::world_size][worker::num_workers])
        for rank in range(world_size)
        for worker in range(num_workers)
    )
    sums = tuple(None if any(counts[i] is None for i in r) else sum(counts[i] for i in r) for r in readers)
    quota = min(sums) if equalize and sums and all(s is not None for s in sums) else None
    return EpochPlan(readers, sums, quota, num_workers)


def sample_split_quota(counts: Sequence[int | None], *, readers: int, equalize: bool) -> tuple[int | None, ...]:
    """Samples each reader yields when the readers share the samples of all shards round-robin.

    Sample ``i`` goes to reader ``i % readers``; with ``equalize`` every reader yields ``total // readers``.

    Args:
        counts: samples per shard (``None`` where unknown).
        readers: ranks x DataLoader workers.
        equalize: every reader yields the same number (the rest is dropped).

    Returns:
        One count per reader, ``None`` each when a shard count is unknown.
    """
    if any(c is None for c in counts):
        return (None,) * readers
    total = sum(counts)
    if equalize:
        return (total // readers,) * readers
    return tuple(total // readers + (r < total % readers) for r in range(readers))


def _every_nth(src: Iterator[dict[str, Any]], *, start: int, step: int) -> Iterator[dict[str, Any]]:
    """Pipeline stage: the samples ``start, start + step, ...`` of the stream (the split by sample)."""
    return itertools.islice(src, start, None, step)


# ------------------------------------------------------------------------------------------ errors and counters


@dataclass(frozen=True)
class ReadStats:
    """Counters over every reader of a dataset since creation (or :meth:`DynOccDataset.reset_stats`).

    Attributes:
        samples: items yielded.
        skipped_samples: samples that did not decode (or were cut off by a truncated shard).
        shard_errors: shards found truncated, corrupt or unreadable (once per shard and epoch).
        dropped: samples left out by equalize.
        duplicates: samples skipped because a sample with the same key came first (in the same reader).
        repeated: samples yielded a second time to make up a reader's quota (broken shards, index miscounts).
    """

    samples: int = 0
    skipped_samples: int = 0
    shard_errors: int = 0
    dropped: int = 0
    duplicates: int = 0
    repeated: int = 0


_STAT_NAMES = tuple(ReadStats.__dataclass_fields__)


def _first_line(err: BaseException) -> str:
    """An exception as one short line (webdataset appends stream objects to the message)."""
    text = str(err.args[0]) if err.args else ""
    text = text.split(" @ <")[0].strip()
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


class _ReaderState:
    """Per-reader, per-epoch bookkeeping: the shard being read, broken shards, counters, and the handler."""

    def __init__(self, handler: Handler, row: torch.Tensor, *, give_up_after: int | None) -> None:
        """``row`` is this reader's slice of the shared counters; ``give_up_after`` guards resampled mode."""
        self.handler, self.row, self.give_up_after = handler, row, give_up_after
        self._shared = row.numpy()  # a view of the shared-memory row: numpy's += is far cheaper than torch indexing
        self.current_url = "?"
        self.broken: set[str] = set()
        self.local = dict.fromkeys(_STAT_NAMES, 0)
        self.failures_in_a_row = 0

    def count(self, name: str, n: int = 1) -> None:
        """Add to a counter, locally (for the epoch log) and in shared memory (for ``dataset.stats``)."""
        self.local[name] += n
        self._shared[_STAT_NAMES.index(name)] += n

    def decide(self, err: ShardFormatError, what: str) -> bool:
        """Apply the handler to a counted error: True to skip and go on, False to stop; raises in "raise" mode."""
        if self.handler == "raise":
            raise err
        if self.handler == "warn":
            logger.warning("%s: %s", what, err)
            return True
        if self.handler == "ignore":
            return True
        return bool(self.handler(err))

    def shard_error(self, exn: BaseException) -> bool:
        """The webdataset handler for tar-level errors (open, truncated, corrupt headers) of the current shard."""
        if isinstance(exn, ShardFormatError):
            url, err = exn.shard, exn
        else:  # raised by tarfile or gopen while reading the shard the check stage last passed on
            url = self.current_url
            err = ShardFormatError(url, None, f"unreadable tar ({_first_line(exn)})")
        self.failures_in_a_row += 1
        if self.give_up_after is not None and self.failures_in_a_row > self.give_up_after:
            raise ShardFormatError(
                url, None, f"{self.failures_in_a_row} shard errors in a row, giving up: {err.reason}"
            )
        if url in self.broken and self.handler in ("warn", "ignore"):
            return True  # already reported for this shard (a truncated tar fails on the member, then the header)
        if url not in self.broken:
            self.broken.add(url)
            self.count("shard_errors")
        if self.handler == "raise" and err is not exn:
            raise err from exn
        return self.decide(err, "bad shard (samples read before the error are kept)")

    def sample_error(self, exn: BaseException) -> bool:
        """The webdataset handler for sample decoding errors; missing members are raised unless the shard is broken."""
        if isinstance(exn, MissingFieldError):
            if exn.shard not in self.broken:
                raise exn
            self.count("skipped_samples")
            if self.handler == "warn":
                logger.warning("skipped sample cut off by the broken shard: %s", exn)
            return True
        if not isinstance(exn, ShardFormatError):
            raise exn  # a bug, not bad data
        self.count("skipped_samples")
        return self.decide(exn, "skipped sample")


def _check_tar_end(url: str, nbytes: int | None) -> None:
    """Raise :class:`ShardFormatError` when a local plain tar is shorter than its index says or lacks its end.

    The end is the end-of-archive blocks (tarfile stops silently when a stream is cut at a member boundary).
    """
    path = local_path(url)
    if path is None:
        return
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as stream:
            if is_compressed(stream.read(8)):  # by content, not by name: a gzip shard may be named .tar
                return
            stream.seek(max(0, size - _TAR_END))
            tail = stream.read()
    except OSError as err:  # e.g. deleted or unmounted since the dataset was created
        raise ShardFormatError(url, None, f"cannot read: {err.strerror or err}") from None
    if nbytes is not None and size < nbytes:
        raise ShardFormatError(url, None, f"truncated: {size} bytes, index.json says {nbytes}")
    if size % 512 or len(tail) < _TAR_END or tail.count(0) != len(tail):
        raise ShardFormatError(url, None, "truncated: no end-of-archive marker")


def _checked_shards(
    src: Iterator[dict[str, Any]], *, state: _ReaderState, sizes: Mapping[str, int | None]
) -> Iterator[dict[str, Any]]:
    """Pipeline stage: note the shard being opened and flag a truncated local shard before reading it.

    Its readable samples are still read in "warn"/"ignore" mode.
    """
    for source in src:
        state.current_url = source["url"]
        try:
            _check_tar_end(source["url"], sizes.get(source["url"]))
        except ShardFormatError as err:
            if not state.shard_error(err):
                return
        yield source


def _open_shards(
    src: Iterator[dict[str, Any]], *, handler: Callable[[BaseException], bool], cache: storage.ShardCache | None,
    sizes: Mapping[str, int | None],
) -> Iterator[dict[str, Any]]:
    """Pipeline stage: open each shard as webdataset's ``url_opener`` does, fsspec URLs through storage.

    Those are read from ``cache`` when given (downloaded whole into it first), else streamed; local paths,
    ``pipe:`` and ``http(s)`` URLs go to webdataset's ``gopen``.
    """
    for source in src:
        url = source["url"]
        try:
            if storage.is_store(url):
                stream = cache.open(url, sizes.get(url)) if cache is not None else storage.open_read(url)
            else:
                stream = wds.gopen(url)
        except Exception as exn:  # noqa: BLE001 - the handler decides, as in webdataset's url_opener
            exn.args = exn.args + (url,)
            if handler(exn):
                continue
            break
        yield {**source, "stream": stream}


def _shard_ends(
    src: Iterator[dict[str, Any]], *, state: _ReaderState, counts: Mapping[str, int | None]
) -> Iterator[dict[str, Any]]:
    """Pipeline stage: count each shard's samples and flag a shard that ends with fewer than its index count.

    tarfile stops silently at a corrupt header, so the shard is flagged before its last, possibly incomplete,
    sample is passed on.
    """
    pending, seen = None, 0
    for sample in src:
        if pending is not None and sample["__url__"] != pending["__url__"]:
            if not _shard_complete(pending["__url__"], seen, counts, state):
                return
            seen = 0
        if pending is not None:
            yield pending
        pending, seen = sample, seen + 1
    if pending is not None and _shard_complete(pending["__url__"], seen, counts, state):
        yield pending


_MISCOUNTED: set[str] = set()  # shards whose index count was found too small (warned once per process)


def _shard_complete(url: str, seen: int, counts: Mapping[str, int | None], state: _ReaderState) -> bool:
    """Report a shard that yielded fewer samples than its index says (a shard error) or more (a warning, once).

    Returns False when the handler says stop.
    """
    expected = counts.get(url)
    if expected is not None and seen > expected and url not in _MISCOUNTED:
        _MISCOUNTED.add(url)
        logger.warning("%s: index.json says %d samples but the shard holds %d: len() and equalize trust the index, "
                       "so samples are lost or ranks unequal (rebuild the index: dynocc-data merge)", url, expected,
                       seen)
    if expected is None or seen >= expected:
        return True
    return state.shard_error(ShardFormatError(url, None, f"truncated or corrupt: ended after {seen} of {expected} "
                                                         "samples"))


def _unique_keys(src: Iterator[dict[str, Any]], *, state: _ReaderState) -> Iterator[dict[str, Any]]:
    """Pipeline stage: pass on the first sample of each key, count (and report the first few of) the others.

    Duplicates are found in one shard or across this reader's shards, adjacent or not.
    """
    first: dict[str, str] = {}
    for sample in src:
        key, url = sample["__key__"], sample["__url__"]
        if key not in first:
            first[key] = url
            yield sample
            continue
        state.count("duplicates")
        if state.handler != "ignore" and state.local["duplicates"] <= _DUPLICATES_REPORTED:
            more = " (further duplicates are counted in stats.duplicates)" \
                if state.local["duplicates"] == _DUPLICATES_REPORTED else ""
            logger.warning("%s: duplicate sample key %r (first read from %s): kept the first, skipped this one%s",
                           url, key, first[key], more)


class _Failed:
    """A sample whose step raised, kept in its place in the chunk until the handler sees it."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


def _each(fn: Callable[[Any], Any]) -> Callable[[list[Any]], list[Any]]:
    """A chunk step applying ``fn`` to each sample; a sample whose ``fn`` raises becomes a :class:`_Failed`."""
    def step(samples: list[Any]) -> list[Any]:
        out = []
        for sample in samples:
            try:
                out.append(fn(sample))
            except Exception as exn:  # noqa: BLE001 - the handler decides, in sample order (and re-raises bugs)
                out.append(_Failed(exn))
        return out
    return step


def _in_chunks(
    src: Iterator[dict[str, Any]], *, size: int, steps: Sequence[Callable[[list[Any]], list[Any]]],
    handler: Callable[[BaseException], bool],
) -> Iterator[Any]:
    """Pipeline stage: ``size`` samples at a time, each of ``steps`` run over the whole chunk before the next one.

    A step takes the chunk's samples that have not failed and returns one result each, a :class:`_Failed` for a
    sample it could not process (see :func:`_each`). Samples come out in order, and the errors too: a failed
    sample reaches ``handler`` at its turn, after the samples before it were yielded (True: skip it and go on;
    False: stop), as with webdataset's ``map``.
    Why chunks: per sample, the pair work is a few hundred small-array calls and the JPEG decode streams a megabyte
    through the caches; alternating them runs the small calls markedly slower than running them back to back,
    and a chunk lets the sampler do its arithmetic once for all its samples (``benchmarks/bench_load.py``:
    with a load-time strategy, about 15 % more items/s with chunks of 8 than one by one; larger chunks
    hold more decoded images and lose some of it again).
    """
    source = iter(src)
    while chunk := list(itertools.islice(source, size)):
        for step in steps:
            live = [i for i, sample in enumerate(chunk) if not isinstance(sample, _Failed)]
            for i, result in zip(live, step([chunk[i] for i in live]), strict=True):
                chunk[i] = result
        for i, result in enumerate(chunk):
            chunk[i] = None  # hold no reference to what was handed on: its decoded image can go once used
            if not isinstance(result, _Failed):
                yield result
            elif not handler(result.error):
                return


# ------------------------------------------------------------------------------------------ the dataset


def _resolve_strategy(
    strategy: Any, options: Mapping[str, Any]
) -> Callable[..., tuple[torch.Tensor, torch.Tensor]] | None:
    """``None`` for the stored pairs as they are, else a sampler from ``sampling.create_sampler``."""
    if isinstance(strategy, str) and strategy.strip().lower() == "stored" and not options:
        return None
    return create_sampler(strategy, **options)


def _warn_index_sizes(description: str, shards: Sequence[ShardInfo]) -> None:
    """Warn when local shards are not the size ``index.json`` says, or hold data the index counts as 0 samples.

    The index's counts (``len()``, ``equalize``) are then not to be trusted.
    """
    odd = []
    for shard in shards:
        path = local_path(shard.url)
        size = os.path.getsize(path) if path is not None and os.path.isfile(path) else None
        if size is not None and ((shard.nbytes is not None and size != shard.nbytes)
                                 or (shard.count == 0 and size > _TAR_END)):
            odd.append(f"{shard.url}: {size} bytes, index.json says {shard.nbytes} bytes and {shard.count} samples")
    if odd:
        logger.warning("%s: %d shard(s) do not match index.json (%s%s): its sample counts may be wrong, and len() "
                       "and equalize follow them", description, len(odd), odd[0], "; ..." if len(odd) > 1 else "")


class DynOccDataset(DistributedStream):
    """DynOcc shards as a torch ``IterableDataset`` of contract items (see the module docstring).

    The webdataset pipeline is built in ``__iter__``, i.e. inside each DataLoader worker, from the rank, the
    worker and the epoch (:meth:`set_epoch`). ``len()`` is the number of samples this rank yields per epoch
    when the index is known (``TypeError`` otherwise). ``num_workers`` tells ``len()`` and ``equalize`` how
    many DataLoader workers will read (``create_loader`` sets it); ``rank``/``world_size`` override the detected
    distributed setup (``split_by_node=False``: every rank reads every shard). Samples are decoded
    ``decode_chunk`` at a time, one step over the whole chunk before the next (parse and draw pairs, then
    decode the JPEGs). Order, results and error handling do not depend on it.

    Args:
        urls: a generate output folder, an ``index.json``, a path or URL (brace patterns, ``::``-joined,
            ``pipe:`` and ``http(s)://`` URLs), or a list of them (see the module docstring).
        strategy: the pair strategy: ``"stored"`` (the pairs in the shard), any name, config or callable
            :func:`~dynocc_data.sampling.create_sampler` accepts.
        sampler_options: options of the strategy's config.
        transform: applied to each item last.
        shuffle: the sample shuffle buffer size (0: none); > 0 also shuffles the shard list each epoch.
        seed: seeds the shard and buffer shuffles, resampling and load-time pair sampling (with the epoch).
        resampled: every reader draws shards with replacement forever; needs ``epoch_length``.
        epoch_length: samples per rank per epoch in resampled mode.
        split_by_node: ``False``: every rank reads every shard.
        handler: what to do with a truncated or corrupt shard or a sample that does not decode: ``"warn"``,
            ``"ignore"``, ``"raise"`` or a callable ``handler(ShardFormatError) -> bool``.
        equalize: with several ranks and known counts, every reader yields the same number of samples.
        keep_boundary: keep the ``boundary`` field in the items.
        index: where the sample counts come from: ``"auto"``, a path, an URL, the parsed dict, or ``None``.
        num_workers: how many DataLoader workers will read, for ``len()`` and ``equalize`` (``create_loader``
            sets it).
        rank: overrides the detected rank.
        world_size: overrides the detected world size.
        too_few_shards: fewer shards than readers: ``"error"``, or ``"resample"`` (resampled mode with a
            warning).
        decode_chunk: samples decoded together (>= 1): faster per item, at the cost of holding that many decoded
            images; 1 decodes one by one.
        short_reader: what a reader does when it ends with fewer samples than its equalized quota (broken shards,
            skipped or duplicate samples, an index counting more than the shards hold): ``"repeat"`` yields some
            of its samples again (``meta["repeated"]``, counted in ``stats.repeated``, warned) so that every rank
            sees the same number of batches; ``"raise"`` raises :class:`ShardFormatError`.
        cache_dir: a local folder caching shards read from fsspec URLs (``s3://``, ``gs://``), shared by the
            workers; ``None``: stream them on every read.
        cache_limit: the most bytes the cache holds (an int or a size such as ``"10GB"``); least recently used
            shards are evicted.

    Raises:
        ValueError: for an option out of its range or options that do not go together.
        InputError: when there are no shards or the index cannot be read.
        InputNotFoundError: when a local shard does not exist.
    """

    def __init__(
        self,
        urls: UrlSpec,
        *,
        strategy: Any = "stored",
        sampler_options: Mapping[str, Any] | None = None,
        transform: Callable[[dict[str, Any]], Any] | None = None,
        shuffle: int = 0,
        seed: int = 0,
        resampled: bool = False,
        epoch_length: int | None = None,
        split_by_node: bool = True,
        handler: Handler = "warn",
        equalize: bool = True,
        keep_boundary: bool = True,
        index: str | os.PathLike | Mapping[str, Any] | None = "auto",
        num_workers: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        too_few_shards: Literal["split", "error", "resample"] = "split",
        decode_chunk: int = 8,
        short_reader: Literal["repeat", "raise"] = "repeat",
        cache_dir: str | os.PathLike | None = None,
        cache_limit: int | str = "10GB",
    ) -> None:
        """Resolve the shard list and its counts, and the pair strategy; nothing is read yet."""
        super().__init__()
        if handler not in ("warn", "raise", "ignore") and not callable(handler):
            raise ValueError(f"handler must be 'warn', 'raise', 'ignore' or a callable, got {handler!r}")
        if short_reader not in ("repeat", "raise"):
            raise ValueError(f"short_reader must be 'repeat' or 'raise', got {short_reader!r}")
        if too_few_shards not in ("split", "error", "resample"):
            raise ValueError(f"too_few_shards must be 'split', 'error' or 'resample', got {too_few_shards!r}")
        if shuffle < 0 or (epoch_length is not None and epoch_length < 0):
            raise ValueError("shuffle and epoch_length must be >= 0")
        if not isinstance(decode_chunk, int) or isinstance(decode_chunk, bool) or decode_chunk < 1:
            raise ValueError(f"decode_chunk must be an int >= 1, got {decode_chunk!r}")
        if resampled and epoch_length is None:
            raise ValueError("resampled=True needs epoch_length (samples per rank per epoch)")
        if epoch_length is not None and not resampled and too_few_shards != "resample":
            raise ValueError("epoch_length applies to resampled mode only (resampled=True)")
        try:
            storage.parse_size(cache_limit)
        except ValueError as err:
            raise ValueError(f"cache_limit {err}") from None
        self.cache = storage.ShardCache(cache_dir, cache_limit) if cache_dir is not None else None
        self.description = _describe(urls)
        self.shards = resolve_shards(urls, index=index)
        _warn_index_sizes(self.description, self.shards)
        self.short_reader = short_reader
        self.strategy, self.sampler_options = strategy, dict(sampler_options or {})
        self._sampler = _resolve_strategy(strategy, self.sampler_options)
        self._own_pairs = bool(getattr(self._sampler, "takes_boundary_array", False))
        self.transform, self.shuffle, self.seed = transform, int(shuffle), int(seed)
        self.resampled, self.epoch_length = bool(resampled), epoch_length
        self.split_by_node, self.handler, self.equalize = bool(split_by_node), handler, bool(equalize)
        self.keep_boundary, self.num_workers = bool(keep_boundary), num_workers
        self.too_few_shards, self.decode_chunk = too_few_shards, decode_chunk
        self._init_stream(rank, world_size)
        self._stats = torch.zeros(_MAX_STAT_ROWS, len(_STAT_NAMES), dtype=torch.int64).share_memory_()

    # -- workers, counters (the epoch: DistributedStream.set_epoch; it seeds the shard and buffer shuffles,
    #    resampling and load-time pair sampling)
    def set_num_workers(self, num_workers: int) -> None:
        """Tell the dataset how many DataLoader workers will read it.

        Args:
            num_workers: DataLoader workers per rank (``0`` = main process).
        """
        self.num_workers = int(num_workers)

    @property
    def stats(self) -> ReadStats:
        """Counters summed over every reader (DataLoader workers included, through shared memory)."""
        return ReadStats(*(int(v) for v in self._stats.sum(dim=0)))

    def reset_stats(self) -> None:
        """Zero the counters."""
        self._stats.zero_()

    # -- planning
    def _resample_length(self, world: int) -> int:
        """Samples per rank per epoch in resampled mode (by default the data divided over the ranks)."""
        if self.epoch_length is not None:
            return self.epoch_length
        counts = [s.count for s in self.shards]
        if any(c is None for c in counts):
            raise InputError(self.description, "resampling needs epoch_length when sample counts are unknown")
        return sum(counts) // world

    def _split_by_sample(self, world: int, num_workers: int) -> bool:
        """True when readers share every shard sample by sample (fewer shards than readers, ``"split"``)."""
        return (not self.resampled and self.too_few_shards == "split"
                and len(self.shards) < world * num_workers)

    def _mode(self, world: int, num_workers: int) -> tuple[bool, int | None]:
        """``(resampled, epoch_length)`` for this setup; raises on too few shards when told to."""
        readers = world * num_workers
        if self.resampled or len(self.shards) >= readers or self.too_few_shards == "split":
            return self.resampled, self.epoch_length
        reason = (f"{len(self.shards)} shards cannot be split over {world} ranks x {num_workers} DataLoader workers "
                  f"({readers} readers) without reading samples twice")
        if self.too_few_shards == "error":
            raise InputError(self.description, f"{reason}; use more shards or fewer workers, or pass resampled=True "
                                               "(or too_few_shards='resample')")
        logger.warning("%s: %s; resampling shards instead", self.description, reason)
        return True, self._resample_length(world)

    def check_readers(self, num_workers: int) -> None:
        """Raise the too-few-shards error now (in the main process) rather than inside the workers.

        Args:
            num_workers: DataLoader workers per rank.

        Raises:
            InputError: with ``too_few_shards="error"``, when there are fewer shards than readers.
        """
        self._mode(self._node()[1], max(1, num_workers))

    def plan(self, *, num_workers: int | None = None, epoch: int | None = None) -> EpochPlan:
        """The shard assignment of an epoch.

        Args:
            num_workers: DataLoader workers per rank (default: the ``num_workers`` hint).
            epoch: the epoch (default: the current one).

        Returns:
            The plan (equalizing only with several ranks).
        """
        workers = max(1, self.num_workers or 0) if num_workers is None else max(1, num_workers)
        world = self._node()[1]
        return plan_epoch(
            [s.count for s in self.shards], world_size=world, num_workers=workers,
            epoch=self.epoch if epoch is None else epoch, seed=self.seed, shuffle=self.shuffle > 0,
            equalize=self.equalize and world > 1,  # a single rank has nobody to wait for: drop nothing
        )

    def __len__(self) -> int:
        """Samples this rank yields per epoch; ``TypeError`` (as torch expects) when the counts are unknown."""
        rank, world = self._node()
        workers = max(1, self.num_workers or 0)
        resampled, length = self._mode(world, workers)
        if resampled:
            return length
        if self._split_by_sample(world, workers):
            shares = sample_split_quota([s.count for s in self.shards], readers=world * workers,
                                        equalize=self.equalize and world > 1)
            mine = shares[rank * workers:(rank + 1) * workers]
            n = None if any(c is None for c in mine) else sum(mine)
        else:
            n = self.plan(num_workers=workers).rank_length(rank)
        if n is None:
            raise TypeError(f"{self.description}: length unknown (no index.json with every shard's sample count)")
        return n

    # -- reading
    def _parse(self, sample: dict[str, Any]) -> dict[str, Any]:
        """A raw sample to a contract item with the JPEG still undecoded and the pairs not yet drawn."""
        # The built-in side samplers never read the stored pairs, and take boundary.npy's array as it is.
        return decode_sample(sample, decode_image=False, with_boundary=self.keep_boundary or self._sampler is not None,
                             with_pairs=not self._own_pairs, boundary_array=self._own_pairs and not self.keep_boundary)

    def _draw_pairs(self, items: list[dict[str, Any]], epoch: int) -> list[Any]:
        """Chunk step: each item's pairs from the strategy.

        In one call over the chunk when the sampler has ``sample_many`` (the built-in ones), else (or to find the
        sample an error belongs to) one by one.
        """
        many = getattr(self._sampler, "sample_many", None)
        if many is not None and items:
            try:
                drawn = many([item["boundary"] for item in items], [item["meta"]["size"] for item in items],
                             [sample_generator(self.seed, epoch, item["meta"]["key"]) for item in items])
            except Exception:  # noqa: BLE001 - drawn again one by one below, where the error finds its sample
                pass
            else:
                return _each(lambda args: self._with_pairs(*args))(list(zip(items, drawn)))
        return _each(lambda item: self._draw_one(item, epoch))(items)

    def _draw_one(self, item: dict[str, Any], epoch: int) -> dict[str, Any]:
        """One item's pairs from the strategy."""
        generator = sample_generator(self.seed, epoch, item["meta"]["key"])
        stored = None if self._own_pairs else (item["pairs"], item["ordinal"])
        return self._with_pairs(item, self._sampler(item["boundary"], item["meta"]["size"], generator, stored=stored))

    def _with_pairs(self, item: dict[str, Any], drawn: tuple[torch.Tensor, torch.Tensor]) -> dict[str, Any]:
        """The item with the strategy's pairs (checked), its boundary dropped unless kept."""
        pairs, ordinal = drawn
        if not (pairs.dtype == ordinal.dtype == torch.int64 and pairs.dim() == 2 and pairs.shape[1] == 4
                and ordinal.shape == pairs.shape[:1]):
            raise ValueError(f"strategy {self.strategy!r} returned pairs {tuple(pairs.shape)} {pairs.dtype} and "
                             f"ordinal {tuple(ordinal.shape)} {ordinal.dtype}; need int64 [N,4] and [N]")
        item["pairs"], item["ordinal"] = pairs, ordinal
        if not self.keep_boundary:
            del item["boundary"]
        return item

    def _finish(self, item: dict[str, Any]) -> Any:
        """The transform of a decoded item (outside the decode stage: its errors are raised, never skipped)."""
        return item if self.transform is None else self.transform(item)

    def _source(self, rank: int, world: int, worker: int, workers: int, epoch: int,
                state: _ReaderState) -> tuple[IterableDataset, int | None]:
        """This reader's shard stream and the number of samples it yields (``None``: all)."""
        urls = [s.url for s in self.shards]
        resampled, length = self._mode(world, workers)
        if resampled:
            state.give_up_after = max(20, 2 * len(urls))  # an endless stream of broken shards must not spin forever
            return wds.ResampledShards(urls, seed=mix_seed(self.seed, epoch), deterministic=True,
                                       worker_seed=lambda: mix_seed(rank, worker)), share_of(length, worker, workers)
        if self._split_by_sample(world, workers):
            return self._sample_split_source(rank, world, worker, workers, epoch, state)
        plan = self.plan(num_workers=workers, epoch=epoch)
        if plan.quota is not None:
            state.count("dropped", plan.counts[rank * workers + worker] - plan.quota)
        if rank == 0 and worker == 0:
            self._log_plan(plan, world, workers)
        return wds.SimpleShardList([urls[i] for i in plan.reader(rank, worker)]), plan.quota

    def _sample_split_source(self, rank: int, world: int, worker: int, workers: int, epoch: int,
                             state: _ReaderState) -> tuple[IterableDataset, int | None]:
        """Every shard, in the epoch's order; the ``__iter__`` stage :func:`_every_nth` keeps this reader's share."""
        readers = world * workers
        order = plan_epoch([s.count for s in self.shards], world_size=1, num_workers=1, epoch=epoch, seed=self.seed,
                           shuffle=self.shuffle > 0, equalize=False).reader(0, 0)
        counts = [s.count for s in self.shards]
        equalize = self.equalize and world > 1
        quota = sample_split_quota(counts, readers=readers, equalize=equalize)[rank * workers + worker]
        if equalize and quota is not None:
            state.count("dropped", sample_split_quota(counts, readers=readers, equalize=False)[rank * workers + worker]
                        - quota)
        if rank == 0 and worker == 0:
            logger.warning("%s: %d shards for %d ranks x %d DataLoader workers: every reader reads every shard and "
                           "keeps 1 sample in %d (%dx the reading; write more, smaller shards for speed, or pass "
                           "too_few_shards='error')", self.description, len(self.shards), world, workers, readers,
                           readers)
            if equalize and quota is None:
                logger.warning("%s: sample counts unknown (no index.json entry for some shards): cannot equalize, "
                               "so ranks may see different numbers of batches", self.description)
        return wds.SimpleShardList([self.shards[i].url for i in order]), quota

    def _log_plan(self, plan: EpochPlan, world: int, workers: int) -> None:
        """Say once per epoch (rank 0, worker 0) what equalizing drops, or why it cannot."""
        if plan.quota is not None and plan.dropped:
            total = sum(plan.counts)
            log = logger.warning if plan.dropped > 0.1 * total else logger.info
            log("%s: equalize keeps %d samples per reader (%d ranks x %d workers), dropping %d of %d this epoch",
                self.description, plan.quota, world, workers, plan.dropped, total)
        elif plan.quota is None and self.equalize and world > 1:
            logger.warning("%s: sample counts unknown (no index.json entry for some shards): cannot equalize, so "
                           "ranks may see different numbers of batches", self.description)
        if self.equalize and world > 1 and max(1, self.num_workers or 0) != workers:
            # len() runs in the main process, which cannot see the worker count; with equalize it depends on it
            log = logger.warning if self.num_workers is not None else logger.info
            log("%s: len() assumed num_workers=%s but %d workers read: pass num_workers= (create_loader does)",
                self.description, self.num_workers, workers)

    def _sample_split_stage(self, rank: int, worker: int) -> Any:
        """The stage keeping this reader's share of the samples when readers split shards by sample, else None."""
        world, workers = self._node()[1], worker_info()[1]
        if not self._split_by_sample(world, workers):
            return None
        return wds.pipelinefilter(_every_nth)(start=rank * workers + worker, step=world * workers)

    def _stages(self, source: Any, state: _ReaderState, epoch: int, rank: int, worker: int, *,
                first_pass: bool = True, unique: bool = True) -> tuple[list[Any], list[Any]]:
        """A reader's pipeline in two parts: shards to raw samples, then the shuffle buffer and the decoding.

        The raw part checks shards against the index and, on the first pass, drops duplicate keys (not when
        resampling, where shards repeat by design).
        """
        raw = [
            source,
            wds.pipelinefilter(_checked_shards)(state=state, sizes={s.url: s.nbytes for s in self.shards}),
            wds.pipelinefilter(_open_shards)(handler=state.shard_error, cache=self.cache,
                                             sizes={s.url: s.nbytes for s in self.shards}),
            wds.pipelinefilter(expand_tars)(handler=state.shard_error),
            wds.pipelinefilter(group_members)(),
            wds.pipelinefilter(_shard_ends)(state=state, counts={s.url: s.count for s in self.shards}),
            wds.pipelinefilter(_unique_keys)(state=state) if first_pass and unique else None,
            self._sample_split_stage(rank, worker) if first_pass else None,
        ]
        decode = [
            wds.shuffle(self.shuffle, self.shuffle, seed=mix_seed(self.seed, epoch, rank, worker))
            if self.shuffle and first_pass else None,
            wds.pipelinefilter(_in_chunks)(size=self.decode_chunk, handler=state.sample_error, steps=[
                _each(self._parse),
                *([lambda items: self._draw_pairs(items, epoch)] if self._sampler is not None else []),
                _each(decode_image_member),
            ]),
        ]
        return [stage for stage in raw if stage is not None], [stage for stage in decode if stage is not None]

    def __iter__(self) -> Iterator[Any]:
        """One epoch of this reader's items (the pipeline is built here, inside the worker)."""
        where = self.world()
        rank, world, worker, workers = where.rank, where.world_size, where.worker, where.num_workers
        epoch = self.epoch
        state = _ReaderState(self.handler, self._stats[worker % _MAX_STAT_ROWS], give_up_after=None)
        source, limit = self._source(rank, world, worker, workers, epoch, state)
        resampled = self._mode(world, workers)[0]  # shards drawn with replacement: the same keys come again
        raw_stages, decode_stages = self._stages(source, state, epoch, rank, worker, unique=not resampled)
        raw = iter(wds.DataPipeline(*raw_stages))
        try:
            if limit != 0:
                for decoded in wds.DataPipeline(lambda: raw, *decode_stages):
                    state.failures_in_a_row = 0
                    item = self._finish(decoded)
                    state.count("samples")
                    yield item
                    if limit is not None and state.local["samples"] >= limit:
                        break
            if limit is not None and not resampled:
                for _ in raw:  # the rest of this reader's shards, not decoded: _shard_ends checks their counts
                    pass
                if state.local["samples"] < limit:
                    yield from self._repeat(state, limit, source.urls, epoch, rank, worker)
        finally:
            troubled = state.local["skipped_samples"] or state.local["shard_errors"]  # else: a debug line only
            logger.log(logging.INFO if troubled else logging.DEBUG, "%s epoch %d rank %d/%d worker %d/%d: %s",
                       self.description, epoch, rank, world, worker, workers,
                       ", ".join(f"{k} {v}" for k, v in state.local.items()))

    def _repeat(self, state: _ReaderState, limit: int, own: Sequence[str], epoch: int, rank: int,
                worker: int) -> Iterator[Any]:
        """Make up a reader's quota with its own samples read again (then any shard's).

        So every rank yields the same number of batches (``short_reader="raise"``: fail instead).
        """
        short = (f"rank {rank} worker {worker} yielded {state.local['samples']} of its {limit} samples (broken "
                 f"shards, skipped or duplicate samples, or an index.json counting more than the shards hold)")
        if self.short_reader == "raise":
            raise ShardFormatError(self.description, None, f"{short}; other ranks would wait for its last batches")
        logger.warning("%s: %s: repeating %d samples so that every rank sees the same number of batches "
                       "(item meta['repeated'] is True; short_reader='raise' fails instead)", self.description, short,
                       limit - state.local["samples"])
        scratch = _ReaderState("ignore", torch.zeros(len(_STAT_NAMES), dtype=torch.int64), give_up_after=None)
        for urls in (list(own), [s.url for s in self.shards]):
            while state.local["samples"] < limit:
                raw_stages, decode_stages = self._stages(wds.SimpleShardList(urls), scratch, epoch, rank, worker,
                                                         first_pass=False)
                before = state.local["samples"]
                for decoded in wds.DataPipeline(*raw_stages, *decode_stages):
                    item = self._finish(decoded)
                    if isinstance(item, dict) and isinstance(item.get("meta"), dict):
                        item["meta"]["repeated"] = True
                    state.count("samples")
                    state.count("repeated")
                    yield item
                    if state.local["samples"] >= limit:
                        return
                if state.local["samples"] == before:
                    break  # nothing readable in these shards: try all of them, then give up
        raise ShardFormatError(self.description, None, f"{short}, and no readable sample is left to repeat")

    def __repr__(self) -> str:
        """Short description."""
        return (f"{type(self).__name__}({self.description!r}, shards={len(self.shards)}, "
                f"strategy={self.strategy!r}, shuffle={self.shuffle}, resampled={self.resampled}, "
                f"equalize={self.equalize})")
