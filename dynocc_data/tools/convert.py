"""Write the YouTube3D and DIW releases and dense-depth sources as shards in the DynOcc format.

So one loader reads them all.

::

    n = convert("diw", "DIW/DIW_train.csv", "shards/diw")          # dynocc-data convert diw DIW_train.csv --out ...
    ds = DynOccDataset("shards/diw")                                  # items as DIWDataset gives them

Every CSV row becomes one sample (docs/FORMAT.md): ``<key>.jpg`` is the source file's bytes unchanged when it is
a JPEG (DIW's ``*.thumb`` files included; other formats are encoded at ``jpeg_quality``), ``pairs.npy`` and
``ordinal.npy`` hold exactly the pairs the release's own dataset class gives for that image
(:class:`~dynocc_data.datasets.youtube3d.YouTube3DDataset`, :class:`~dynocc_data.datasets.diw.DIWDataset`: same
pixel rule, same ordinal convention), ``boundary.npy`` is empty (still images have no occlusion boundaries), and
``json`` says ``source`` (``"youtube3d"``/``"diw"``), ``video`` (the image path as the dataset class reports it),
``frame`` 0, ``orig_size`` = ``size`` (the decoded image) and where the row came from (``csv``, ``line``, plus the
target path or the annotated size). Keys are ``<sanitised image path>-<8 hex of SHA-1 of the row>_000000``.

Shards go through :class:`~dynocc_data.generation.writer.ShardWriter` (``.partial`` files, ledger commit,
``index.json``).
A bad row (malformed CSV line, missing or undecodable image, refused pickle, duplicate) is logged as one line
naming the file and the reason, skipped and counted; a summary is logged at the end. Pickled YouTube3D targets
are read with the restricted unpickler of :func:`~dynocc_data.datasets.youtube3d.load_youtube3d_pkl`.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np
import torch
from torchvision.io import encode_jpeg

from .. import _version
from ..datasets._common import read_csv_lines, read_image_rgb, relative_key, resolve_path
from ..datasets.dense import DenseDepthDataset
from ..datasets.diw import iter_diw_rows, scale_diw_coordinates
from ..datasets.youtube3d import from_youtube3d_target, load_youtube3d_pkl
from ..errors import InputError
from ..format.sample import BOUNDARY_DTYPE, encode_sample
from ..generation.writer import ShardWriter, write_index

__all__ = ["FORMATS", "SourceRow", "convert", "read_rows", "sample_key"]

log = logging.getLogger(__name__)

FORMATS = ("youtube3d", "diw", "dense")
Format = Literal["youtube3d", "diw", "dense"]
_JPEG_MAGIC = b"\xff\xd8\xff"
_EMPTY_BOUNDARY = {name: np.zeros(0, dtype=BOUNDARY_DTYPE[name]) for name in BOUNDARY_DTYPE.names}
Labels = Callable[[tuple[int, int]], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class SourceRow:
    """One parsed CSV row: the image as written, what identifies the row, and how to get its pairs.

    Attributes:
        line: the CSV line number of the row (of its image path line for DIW).
        image: the image path as written in the CSV.
        ident: what identifies the row (hashed into the sample key).
        labels: ``labels(size)`` gives ``int64`` pairs ``[N,4]`` and ordinals ``[N]`` in pixels of the decoded
            image of ``size`` (it may raise :class:`InputError` naming a target file).
        extra: goes into the sample's JSON.
    """

    line: int
    image: str
    ident: str
    labels: Labels
    extra: dict[str, Any] = field(default_factory=dict)


Row = Union[SourceRow, InputError]  # a bad row is its error


# ----------------------------------------------------------------------------------------- keys


def sample_key(image: str, ident: str) -> str:
    """The sample key of a row: no dots or slashes.

    The sanitised part keeps ``[A-Za-z0-9_-]`` (other runs become ``_``) and at most the last 64 characters.

    Args:
        image: the image path as written in the CSV.
        ident: what identifies the row.

    Returns:
        ``<image path without extension, sanitised>-<8 hex of sha1(ident)>_000000``.
    """
    stem = relative_key(image).rsplit(".", 1)[0] if "." in Path(image).name else relative_key(image)
    clean = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_-")[-64:].strip("_-") or "image"
    return f"{clean}-{hashlib.sha1(ident.encode('utf-8')).hexdigest()[:8]}_000000"


# ----------------------------------------------------------------------------------------- CSV rows


def _youtube3d_labels(target: Path) -> Labels:
    """Pairs of a YouTube3D target, as :class:`YouTube3DDataset` makes them for an image of a given size."""
    def labels(size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        return from_youtube3d_target(torch.from_numpy(load_youtube3d_pkl(target)), size)

    return labels


def _youtube3d_rows(csv_path: Path, root: Path) -> Iterator[Row]:
    """Rows of a YouTube3D CSV (``image_path, pkl_path``; an optional header whose 2nd field is not a .pkl)."""
    first = True
    for line_no, text in read_csv_lines(csv_path):
        fields = [f.strip() for f in next(csv.reader([text], skipinitialspace=True), [])]
        while fields and not fields[-1]:
            fields.pop()
        if first and len(fields) == 2 and not fields[1].lower().endswith(".pkl"):
            first = False
            continue  # a header line, as parse_youtube3d_csv treats it
        first = False
        if len(fields) != 2 or not all(fields):
            yield InputError(csv_path, f"line {line_no}: expected 'image_path,pkl_path', got {text!r}")
            continue
        image, target = fields
        target_path = resolve_path(root, target)
        yield SourceRow(line_no, image, f"{relative_key(image)}\n{relative_key(target)}",
                        _youtube3d_labels(target_path), {"target_path": str(target_path)})


def _diw_labels(coords: list[float], ordinal: int, annotated: tuple[int, int]) -> Labels:
    """Pairs of a DIW annotation, rescaled to the decoded image as :class:`DIWDataset` does."""
    def labels(size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = scale_diw_coordinates(np.asarray(coords, dtype=np.float64), annotated, size)
        return pairs, torch.tensor([ordinal], dtype=torch.int64)

    return labels


def _diw_rows(csv_path: Path, root: Path) -> Iterator[Row]:
    """Rows of a DIW CSV in either layout, from the one DIW reader (:func:`~dynocc_data.datasets.diw.iter_diw_rows`).

    Reads on after a malformed sample.
    """
    del root  # DIW rows hold no other file than the image
    for row in iter_diw_rows(csv_path):
        if isinstance(row, InputError):
            yield row
            continue
        yield SourceRow(row.line, row.image, f"{relative_key(row.image)}\n{row.coord_line}",
                        _diw_labels(row.coords, row.ordinal, row.size), {"annotated_size": list(row.size)})


_READERS: dict[str, Callable[[Path, Path], Iterator[Row]]] = {"youtube3d": _youtube3d_rows, "diw": _diw_rows}
# "dense" sources are read by DenseDepthDataset itself (see _dense_samples), not row by row.


def read_rows(format: Format, csv_path: str | os.PathLike, root: str | os.PathLike | None = None) -> Iterator[Row]:
    """The rows of a dataset's CSV.

    Lazy: the first ``next()`` raises :class:`InputError` when the CSV cannot be read or lists nothing.

    Args:
        format: ``"youtube3d"`` or ``"diw"`` (case is ignored).
        csv_path: the CSV.
        root: the folder the CSV's paths are relative to (default: the CSV's folder).

    Returns:
        An iterator of :class:`SourceRow`, or for a malformed line its :class:`InputError`.

    Raises:
        ValueError: for an unknown format.
    """
    csv_path = Path(csv_path)
    return _READERS[_check_format(format)](csv_path, Path(root) if root is not None else csv_path.parent)


def _dense_samples(source: Path, out: Path, prefix: str, shard_size: int, quality: int,
                   options: dict[str, Any]) -> int:
    """``convert("dense", ...)``: every sample of a :class:`DenseDepthDataset` with its depth as ``depth.npy``."""
    dataset = DenseDepthDataset(source, **options)
    tally, seen = _Tally(), {}
    header = {"convert": "dense", "source": str(source), "layout": dataset.layout, "depth_kind": dataset.depth_kind,
              "version": _version.__version__}
    with ShardWriter(out, prefix=prefix, max_count=shard_size, header=header) as writer:
        for index, (image_name, depth_name) in enumerate(dataset.samples):
            key = sample_key(image_name, f"{relative_key(image_name)}\n{relative_key(depth_name)}")
            if key in seen:
                tally.reject(InputError(source, f"sample {index}: duplicate of sample {seen[key]}"), "duplicate")
                continue
            try:
                item = dataset[index]
                image_path = Path(item["meta"]["video"])
                jpeg = _jpeg_of(image_path, item["image"], quality)
            except InputError as err:
                tally.reject(err, "unusable image or depth")
                continue
            size = list(item["meta"]["orig_size"])
            meta = {
                "source": dataset.source_name, "key": key, "video": item["meta"]["video"],
                "video_id": key.rsplit("_", 1)[0], "frame": 0, "orig_size": size, "size": size, "scale": 1.0,
                "num_pairs": int(len(item["pairs"])), "num_boundary": 0, "depth_kind": dataset.depth_kind,
                "depth_path": item["meta"]["depth_path"], "version": _version.__version__,
            }
            seen[key] = index
            writer.write(encode_sample(key, jpeg, meta, item["pairs"], item["ordinal"], _EMPTY_BOUNDARY,
                                       depth=item["depth"], valid_mask=item["valid_mask"]),
                         video_id=key.rsplit("_", 1)[0], frame=0)
            tally.samples += 1
    if tally.samples == 0:
        raise InputError(source, f"no usable samples ({tally.bad} bad, see the warnings above)")
    write_index(out)
    (log.warning if tally.bad else log.info)("%s: converted %d dense samples into %d shards in %s; skipped %d bad",
                                             source, tally.samples, len(writer.shards_written), out, tally.bad)
    return tally.samples


def _check_format(format: str) -> str:
    """The format name in lower case, or ``ValueError``."""
    fmt = str(format).strip().lower()
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    return fmt


# ----------------------------------------------------------------------------------------- samples


def _jpeg_of(path: Path, image: torch.Tensor, quality: int) -> bytes:
    """The file's own bytes when it is a JPEG (no re-encoding), else ``image`` encoded as JPEG."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise InputError(path, f"cannot read image: {err.strerror or err}") from None
    if raw.startswith(_JPEG_MAGIC):
        return raw

    return encode_jpeg(image, quality=quality).numpy().tobytes()


def _encode_row(fmt: str, row: SourceRow, key: str, csv_path: Path, root: Path, quality: int) -> dict[str, Any]:
    """One shard sample for a row (raises :class:`InputError` naming the image or target when one is bad)."""
    image_path = resolve_path(root, row.image)
    image = read_image_rgb(image_path)
    size = (int(image.shape[1]), int(image.shape[2]))
    try:
        pairs, ordinal = row.labels(size)
    except ValueError as err:  # InputError (a bad target file) passes through
        raise InputError(csv_path, f"line {row.line}: {err}") from None
    meta = {
        "source": fmt, "key": key, "video": str(image_path), "video_id": key.rsplit("_", 1)[0], "frame": 0,
        "orig_size": list(size), "size": list(size), "scale": 1.0, "num_pairs": int(len(pairs)), "num_boundary": 0,
        "csv": str(csv_path), "line": row.line, **row.extra, "version": _version.__version__,
    }
    return encode_sample(key, _jpeg_of(image_path, image, quality), meta, pairs, ordinal, _EMPTY_BOUNDARY)


@dataclass
class _Tally:
    """Counts of one conversion, for the summary line."""

    samples: int = 0
    bad: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def reject(self, err: InputError, kind: str) -> None:
        """Log and count a bad row (one line naming the file and the reason); ``kind`` groups the summary."""
        log.warning("skipping bad row: %s", err)
        self.bad += 1
        self.reasons[kind] = self.reasons.get(kind, 0) + 1


def convert(format: Format, csv: str | os.PathLike, out: str | os.PathLike, *, root: str | os.PathLike | None = None,
            shard_size: int = 1000, prefix: str | None = None, jpeg_quality: int = 95,
            dense: dict[str, Any] | None = None) -> int:
    """Write the ``format`` dataset listed in ``csv`` as DynOcc shards in ``out``; returns the samples written.

    Bad rows are logged, skipped and counted. ``format="dense"``: ``csv`` is a dense-depth CSV or a ReDWeb folder
    read by :class:`~dynocc_data.datasets.dense.DenseDepthDataset` with the keyword options ``dense``
    (``depth_kind``, ``depth_scale``, ``num_pairs``, ...); each sample also stores its depth (``depth.npy``,
    docs/FORMAT.md) and the pairs drawn from it.

    Args:
        format: ``"youtube3d"``, ``"diw"`` or ``"dense"`` (case is ignored).
        csv: the dataset's CSV.
        out: the output folder.
        root: the folder the CSV's paths are relative to (default: the CSV's folder).
        shard_size: samples per shard (>= 1).
        prefix: the shard name prefix (default: the format).
        jpeg_quality: the quality for sources that are not JPEGs (1..100).
        dense: ``DenseDepthDataset`` options for ``format="dense"``.

    Returns:
        The number of samples written.

    Raises:
        ValueError: for an unknown format, or ``shard_size`` or ``jpeg_quality`` out of range.
        InputError: when the CSV cannot be read or has no usable row, or when ``out`` already holds shards with
            this prefix.
    """
    fmt = _check_format(format)
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
    csv_path, out = Path(csv), Path(out)
    root_path = Path(root) if root is not None else csv_path.parent
    prefix = prefix or fmt
    if out.is_dir() and any(out.glob(f"{prefix}-r*.tar*")):
        raise InputError(out, f"already holds {prefix} shards; use an empty --out (or another prefix)")
    if fmt == "dense":
        options = {**(dense or {}), **({"root": root} if root is not None else {})}
        return _dense_samples(csv_path, out, prefix, shard_size, jpeg_quality, options)
    if dense:
        raise ValueError(f"dense options are for format 'dense', not {fmt!r}")
    rows = read_rows(fmt, csv_path, root_path)
    first = next(rows)  # an unreadable or empty CSV raises here, before anything is written
    tally, seen = _Tally(), {}
    header = {"convert": fmt, "csv": str(csv_path), "root": str(root_path), "version": _version.__version__}
    with ShardWriter(out, prefix=prefix, max_count=shard_size, header=header) as writer:
        for row in itertools.chain([first], rows):
            if isinstance(row, InputError):
                tally.reject(row, "malformed CSV line")
                continue
            key = sample_key(row.image, row.ident)
            if key in seen:
                tally.reject(InputError(csv_path, f"line {row.line}: duplicate of line {seen[key]}"), "duplicate")
                continue
            try:
                sample = _encode_row(fmt, row, key, csv_path, root_path, jpeg_quality)
            except InputError as err:
                tally.reject(err, "unusable image or target")
                continue
            seen[key] = row.line
            writer.write(sample, video_id=key.rsplit("_", 1)[0], frame=0)
            tally.samples += 1
    shards = len(writer.shards_written)
    if tally.samples == 0:
        raise InputError(csv_path, f"no usable rows ({tally.bad} bad, see the warnings above)")
    write_index(out)
    reasons = ", ".join(f"{n} {k}" for k, n in sorted(tally.reasons.items(), key=lambda kv: -kv[1]))
    (log.warning if tally.bad else log.info)(
        "%s: converted %d %s samples into %d shards in %s; skipped %d bad rows%s", csv_path, tally.samples, fmt,
        shards, out, tally.bad, f" ({reasons})" if reasons else "")
    return tally.samples

