"""Writing shards crash-safely: the shard writer, the per-rank ledger, the run state and the index.

Writing protocol (so that a run killed at any moment leaves no half-written shard under a final name,
and ``--resume`` ends with exactly the samples of an uninterrupted run):

1. a shard is written to ``<name>.tar.partial`` with webdataset's ``TarWriter``, flushed and fsynced;
2. a ``shard`` record (its name, sample count and the frames of each video it holds) is appended to the
   rank's ledger ``ledger-r<rank>.jsonl`` and fsynced: this is the commit point;
3. the file is renamed to ``<name>.tar``.

On resume, committed ``.partial`` files are renamed (roll forward), uncommitted ones are deleted, and
the ledgers tell which videos are finished and up to which frame each unfinished one got. The samples
themselves are encoded by :mod:`dynocc_data.format.sample`; formats: ``docs/FORMAT.md``.

**Remote outputs** (``out`` an fsspec URL such as ``s3://bucket/run``, through :mod:`dynocc_data.storage`): a shard
is written to a local staging folder, uploaded whole with one ``put``, and only then committed in the ledger. An
object cannot be appended to, so a remote ledger is one small object per record,
``ledgers/ledger-r<rank>-<seq:09d>.json`` (created exclusively: a second writer of the same rank fails instead of
overwriting), read back in name order. On resume, shards of the folder that no ledger record commits (uploaded,
then killed before the record) are deleted, as uncommitted ``.partial`` files are locally.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import webdataset as wds

from .. import storage
from ..errors import DynOccError
from ..format.files import PARTIAL, atomic_write_text, fsync_dir
from ..format.index import INDEX_NAME, index_document
from .ledger import LEDGER_FOLDER, Ledger, ObjectLedger, has_ledgers, open_ledgers, rank_ledger

__all__ = [
    "LEDGER_FOLDER",
    "Ledger",
    "ObjectLedger",
    "RunState",
    "ShardWriter",
    "has_ledgers",
    "open_ledgers",
    "rank_ledger",
    "read_run_state",
    "repair_store",
    "run_upload",
    "upload_command",
    "write_index",
]

log = logging.getLogger(__name__)

_SHARD_RANK_RE = re.compile(r"^.+-r(\d+)-\d+\.tar$")


@dataclass
class RunState:
    """What the ledgers of an output folder say has been done.

    Attributes:
        shards: the ``shard`` records (``url``, ``count``, ``bytes``, ``frames``, ``remote`` for uploads).
        videos: video_id -> its final ``video`` record (finished or failed).
        last_frame: video_id -> the last frame of it in a committed shard.
        headers: the run ``header`` records, one per ledger opening.
    """

    shards: list[dict[str, Any]] = field(default_factory=list)
    videos: dict[str, dict[str, Any]] = field(default_factory=dict)  # video_id -> final record
    last_frame: dict[str, int] = field(default_factory=dict)  # video_id -> last committed frame
    headers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def num_samples(self) -> int:
        """The number of samples in committed shards."""
        return sum(s["count"] for s in self.shards)


def read_run_state(out: str | os.PathLike, *, repair: bool = False) -> RunState:
    """Read every ledger in ``out``.

    Args:
        out: the output folder of a run.
        repair: also roll committed ``.partial`` shards forward (rename to the final name) and delete uncommitted
            ones, as a resumed run does first.

    Returns:
        The state of all ledgers together (empty when there are none).

    Raises:
        DynOccError: with ``repair``, when a committed local shard is missing on disk.
    """
    state = RunState()
    for ledger in open_ledgers(out).values():
        for rec in ledger.records():
            kind = rec.get("type")
            if kind == "header":
                state.headers.append(rec)
            elif kind == "shard":
                state.shards.append(rec)
                for vid, frames in rec["frames"].items():
                    if frames:
                        state.last_frame[vid] = max(state.last_frame.get(vid, -1), max(frames))
            elif kind == "video":
                state.videos[rec["video_id"]] = rec
    if repair and storage.is_store(out):
        _repair_store(os.fspath(out), state)
    elif repair:
        out = Path(out)
        committed = {s["url"] for s in state.shards}
        for partial in sorted(out.glob(f"*.tar{PARTIAL}")):
            final = partial.with_name(partial.name[: -len(PARTIAL)])
            if final.name in committed:
                log.info("%s: committed before the interruption, completing the rename", final)
                os.replace(partial, final)
            else:
                log.info("%s: removing a shard left unfinished by an interrupted run", partial)
                partial.unlink()
        for s in state.shards:
            if not s.get("remote") and not (out / s["url"]).exists():  # uploaded shards live elsewhere
                raise DynOccError(f"{out / s['url']}: committed in the ledger but missing on disk")
    return state


def _repair_store(out: str, state: RunState, ranks: Callable[[int], bool] | None = None) -> None:
    """On an object store: delete shards no ledger commits; check that the committed ones exist."""
    committed = {s["url"] for s in state.shards}
    names = set(storage.list_names(out))

    def mine(name: str) -> bool:
        match = _SHARD_RANK_RE.match(name)
        return match is not None and (ranks is None or ranks(int(match.group(1))))

    for name in sorted(names):
        if mine(name) and name not in committed:
            log.info("%s: removing a shard uploaded but not committed by an interrupted run", name)
            storage.remove(storage.join(out, name))
    for s in state.shards:
        if not s.get("remote") and mine(s["url"]) and s["url"] not in names:
            raise DynOccError(f"{storage.join(out, s['url'])}: committed in the ledger but missing")


def repair_store(out: str, ranks: Callable[[int], bool] | None = None) -> RunState:
    """Make a remote output consistent after an interruption (see the module docstring).

    Args:
        out: the output URL.
        ranks: ``ranks(rank) -> bool`` accepts the ranks whose shards may be touched; ``None`` for all.

    Returns:
        The state of all ledgers.

    Raises:
        DynOccError: when a committed shard of an accepted rank is missing.
    """
    state = read_run_state(out)
    _repair_store(out, state, ranks)
    return state


def upload_command(upload: str) -> str:
    """Validate an upload template and return its shell command.

    Args:
        upload: ``CMD {name}`` or ``pipe:CMD {name}``, e.g. ``aws s3 cp - s3://bucket/dir/{name}``.

    Returns:
        The command without its ``pipe:`` prefix and surrounding space, ``{name}`` still in it.

    Raises:
        DynOccError: when the command is empty or has no ``{name}``.
    """
    cmd = upload[len("pipe:"):] if upload.startswith("pipe:") else upload
    if "{name}" not in cmd or not cmd.strip():
        raise DynOccError(f"upload command {upload!r}: must contain {{name}} (replaced by each file's name), "
                          f"e.g. 'aws s3 cp - s3://bucket/dir/{{name}}'")
    return cmd.strip()


def run_upload(upload: str, path: str | os.PathLike, name: str) -> None:
    """Run the upload command with a file on its stdin.

    Args:
        upload: the upload template (see :func:`upload_command`).
        path: the file to upload.
        name: the name it gets, shell-quoted in place of ``{name}``.

    Raises:
        DynOccError: when the template is invalid, the command cannot be started, or it exits non-zero (with the
            exit status and the end of the command's output).
    """
    cmd = upload_command(upload).replace("{name}", shlex.quote(name))
    with open(path, "rb") as src, tempfile.TemporaryFile() as output:
        try:
            proc = subprocess.run(cmd, shell=True, stdin=src, stdout=output, stderr=subprocess.STDOUT, check=False)
        except OSError as e:
            raise DynOccError(f"{name}: cannot run the upload command ({e.strerror or e})") from None
        if proc.returncode != 0:
            output.seek(0)
            tail = " ".join(output.read()[-600:].decode("utf-8", "replace").split()) or "no output"
            status = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
            raise DynOccError(f"{name}: upload command failed ({status}: {tail}); not committed")


class ShardWriter:
    """Writes samples into shards ``<prefix>-r<rank:03d>-<seq:06d>.tar``, with the commit protocol of this module.

    Video-level records given to :meth:`video_done` are held back until every sample of that video is in
    a committed shard, so a "done" video in the ledger is really done. Shard numbers continue after those on
    disk and those committed in this rank's ledger, so a resumed run overwrites an uncommitted upload of the same
    name. Use it as a context manager: a clean exit commits the last shard, an exception drops it.

    Args:
        out: the output folder (created when missing), or an fsspec URL (shards staged locally, then uploaded).
        prefix: the shard names' prefix.
        rank: this writer's rank, in shard and ledger names.
        max_count: a shard is committed when it holds this many samples.
        max_bytes: a shard is committed when it reaches about this many bytes.
        header: a run ``header`` record appended to the ledger on opening.
        upload: a shell command template such as ``aws s3 cp - s3://bucket/dir/{name}`` (optionally prefixed
            ``pipe:``): a finished shard is fed to it on stdin and committed (ledger record with ``remote: true``)
            only once the command exits 0; the local ``.partial`` copy is then deleted.
        staging: with a URL ``out``, the local folder where shards are written before their upload (default: a
            new temporary folder, removed on closing).

    Raises:
        DynOccError: when ``out`` cannot be written or ``upload`` is not a valid template.
    """

    def __init__(self, out: str | os.PathLike, *, prefix: str = "dynocc", rank: int = 0,
                 max_count: int = 1000, max_bytes: int = 1 << 30, header: Mapping[str, Any] | None = None,
                 upload: str | None = None, staging: str | os.PathLike | None = None):
        self._wds = wds
        self.remote = storage.is_store(out)
        self.out = os.fspath(out) if self.remote else Path(out)
        self.prefix, self.rank = prefix, rank
        self.max_count, self.max_bytes = max_count, max_bytes
        self.upload = upload_command(upload) if upload is not None else None
        if self.remote and self.upload is not None:
            raise DynOccError(f"{out}: --upload sends shards elsewhere, but --out is already remote; use one of them")
        self._own_staging = self.remote and staging is None
        self.staging = (Path(tempfile.mkdtemp(prefix=f"dynocc-staging-r{rank:03d}-")) if self._own_staging
                        else Path(staging) if self.remote else self.out)
        try:
            self.staging.mkdir(parents=True, exist_ok=True)
            probe = self.staging / f".write-test-r{rank:03d}{PARTIAL}"
            probe.write_bytes(b"")
            probe.unlink()
            if self.remote:
                url = storage.join(self.out, f".write-test-r{rank:03d}")
                storage.write_atomic(url, b"")
                storage.remove(url)
        except OSError as e:
            self._drop_staging()
            raise DynOccError(f"{self.out}: cannot write output ({e.strerror or e})") from None
        self.ledger = rank_ledger(self.out, rank)
        if header is not None:
            self.ledger.append({"type": "header", **header})
        pattern = re.compile(rf"^{re.escape(prefix)}-r{rank:03d}-(\d+)\.tar$")
        names = storage.list_names(self.out) if self.remote else [p.name for p in self.out.iterdir()]
        taken = [int(m.group(1)) for name in names if (m := pattern.match(name))]
        taken += [int(m.group(1)) for rec in self.ledger.records()
                  if rec.get("type") == "shard" and (m := pattern.match(str(rec.get("url", ""))))]
        self._seq = max(taken, default=-1) + 1
        self._stream = None
        self._tar = None
        self._name = ""
        self._count = 0
        self._frames: dict[str, list[int]] = {}
        self._pending_videos: list[dict[str, Any]] = []
        self.shards_written: list[dict[str, Any]] = []

    # -- writing
    def _open(self) -> None:
        self._name = f"{self.prefix}-r{self.rank:03d}-{self._seq:06d}.tar"
        self._seq += 1
        self._stream = open(self.staging / (self._name + PARTIAL), "wb")
        self._tar = self._wds.TarWriter(self._stream, encoder=False, mtime=0)
        self._count = 0
        self._frames = {}

    def write(self, sample: Mapping[str, Any], *, video_id: str, frame: int) -> None:
        """Add one encoded sample; commits the shard when it is full.

        Args:
            sample: a sample of :func:`~dynocc_data.format.sample.encode_sample`.
            video_id: the sample's video, recorded in the shard's ledger record.
            frame: the sample's frame, recorded likewise (resume restarts after the last committed one).

        Raises:
            DynOccError: when writing fails (the shard is dropped), and as :meth:`commit` does.
        """
        if self._tar is None:
            self._open()
        try:
            self._tar.write(dict(sample))
        except OSError as e:
            self.abort()
            raise DynOccError(f"{self._url(self._name)}: write failed ({e.strerror or e})") from None
        self._count += 1
        self._frames.setdefault(video_id, []).append(int(frame))
        if self._count >= self.max_count or self._stream.tell() >= self.max_bytes:
            self.commit()

    def video_done(self, record: Mapping[str, Any]) -> None:
        """Record a finished (or failed) video once all of its samples are committed.

        Args:
            record: the video's record, with at least ``video_id``; stored with ``type: "video"``.
        """
        rec = {"type": "video", **record}
        if self._tar is not None and record["video_id"] in self._frames:
            self._pending_videos.append(rec)
        else:
            self.ledger.append(rec)

    def commit(self) -> None:
        """Close the current shard and commit it (no-op when none is open).

        Raises:
            DynOccError: when the shard cannot be finished or its upload fails; the shard is then dropped, not
                committed.
        """
        if self._tar is None:
            return
        path = self.staging / self._name
        try:
            self._tar.close()  # closes the tar stream, not our file
            self._stream.flush()
            os.fsync(self._stream.fileno())
            size = self._stream.tell()
            self._stream.close()
            rec = {"type": "shard", "url": self._name, "count": self._count, "bytes": size,
                   "frames": self._frames}
            if self.upload is not None:
                try:
                    run_upload(self.upload, str(path) + PARTIAL, self._name)
                except DynOccError:
                    self.abort()
                    raise
                rec["remote"] = True
            elif self.remote:
                storage.put_file(str(path) + PARTIAL, self._url(self._name))  # whole, before the commit
            self.ledger.append(rec)
            if self.upload is None and not self.remote:
                os.replace(str(path) + PARTIAL, path)
            else:
                Path(str(path) + PARTIAL).unlink()
            fsync_dir(self.staging)
        except OSError as e:
            self.abort()
            raise DynOccError(f"{self._url(self._name)}: cannot finish shard ({e.strerror or e})") from None
        self.shards_written.append(rec)
        log.debug("committed %s (%d samples)", self._name, self._count)
        self._tar = self._stream = None
        for rec in self._pending_videos:
            self.ledger.append(rec)
        self._pending_videos = []

    def abort(self) -> None:
        """Drop the shard being written (its ``.partial`` file is removed)."""
        if self._stream is not None:
            try:
                self._tar.tarstream.close()  # so that garbage collection does not flush into a closed file
            except Exception:  # noqa: BLE001 - the shard is being thrown away
                pass
            try:
                self._stream.close()
            except OSError:
                pass
            Path(str(self.staging / self._name) + PARTIAL).unlink(missing_ok=True)
        self._tar = self._stream = None
        self._pending_videos = []

    def _url(self, name: str) -> str:
        """Where the shard ``name`` lives once committed."""
        return storage.join(self.out, name) if self.remote else str(self.out / name)

    def _drop_staging(self) -> None:
        """Remove the temporary staging folder this writer made (nothing for a given ``staging``)."""
        if self._own_staging:
            shutil.rmtree(self.staging, ignore_errors=True)

    def close(self) -> None:
        """Commit the shard being written, as :meth:`commit`, and remove a temporary staging folder."""
        try:
            self.commit()
        finally:
            self._drop_staging()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
            self._drop_staging()


def write_index(out: str | os.PathLike, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write ``index.json`` (shards and their sample counts) from the ledgers of ``out``.

    Args:
        out: the output folder of a run.
        extra: more top-level keys for the index (``stats`` summaries, run parameters).

    Returns:
        The index object as written.
    """
    index = index_document(read_run_state(out).shards, extra)
    atomic_write_text(storage.join(out, INDEX_NAME), json.dumps(index, indent=1, sort_keys=True) + "\n")
    return index
