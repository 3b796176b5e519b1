"""Datasets that yield the item contract of ``docs/FORMAT.md``, and the tools to combine and load them.

* :class:`DynOccDataset` — streams generated shards (WebDataset), re-sampling pairs at load time;
* :class:`YouTube3DDataset`, :class:`DIWDataset` — the YouTube3D and DIW releases, map-style;
* :class:`DenseDepthDataset` — dense-depth sources (image + depth files in a CSV, or ReDWeb's folders), map-style;
* :func:`mix` / :func:`as_iterable` — draw from several sources by probability, rank- and worker-aware;
* :func:`create_loader` — a ``DataLoader`` factory with the right collate, seeding and DDP handling.
"""

from ..format.index import load_index
from .dense import DenseDepthDataset
from .diw import DIWDataset, parse_diw_csv
from .dynocc import DynOccDataset, ReadStats
from .loader import create_loader, seed_worker
from .mix import MapAsIterable, MixedDataset, as_iterable, mix
from .youtube3d import YouTube3DDataset, from_youtube3d_target, load_youtube3d_pkl, to_youtube3d_target

__all__ = [
    "DynOccDataset", "ReadStats", "load_index",
    "YouTube3DDataset", "load_youtube3d_pkl", "to_youtube3d_target", "from_youtube3d_target",
    "DIWDataset", "parse_diw_csv", "DenseDepthDataset",
    "mix", "as_iterable", "MixedDataset", "MapAsIterable",
    "create_loader", "seed_worker",
]
