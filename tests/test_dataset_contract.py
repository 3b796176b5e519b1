"""Every dataset class of the package against the one contract test case of ``tests/datasets_utils.py``.

Each subclass writes small fake data in the source's exact on-disk format: DynOcc shards (``fixtures_shards``),
the YouTube3D and DIW releases (:mod:`dynocc_data.tools.fake_releases`), YouTube3D converted to shards by
``dynocc-data convert``, and a mix of two sources.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from datasets_utils import DatasetContract
from fixtures_shards import write_shards

from dynocc_data import DenseDepthDataset, DIWDataset, DynOccDataset, YouTube3DDataset, as_iterable, mix
from dynocc_data.tools.convert import convert
from dynocc_data.tools.fake_releases import (
    DenseSample,
    DIWSample,
    YouTube3DSample,
    py2_ndarray_pickle,
    two_colour_image,
    write_dense_release,
    write_diw_release,
    write_youtube3d_release,
)

# A YouTube3D target: 5 x N normalised (y_A, x_A, y_B, x_B, ordinal).
TARGET = np.array([[0.5, 0.25, 0.9], [0.1, 0.75, 0.5], [0.2, 0.5, 0.1], [0.9, 0.25, 0.5], [1.0, -1.0, 0.0]])


def youtube3d_release(root: Path) -> Path:
    """Three YouTube3D samples (two image sizes) in the release layout; returns the CSV."""
    samples = [
        YouTube3DSample(f"./room_{i:04d}/shot_001/{i:04d}.jpg", f"./room_{i:04d}/shot_001/colmap/0/{i:04d}.pkl",
                        two_colour_image(24 * (1 + i % 2), 32), py2_ndarray_pickle(TARGET))
        for i in range(3)
    ]
    return write_youtube3d_release(root, samples)


class TestDynOccDataset(DatasetContract):
    source = "dynocc"
    options: dict[str, Any] = {}

    def make(self, root: Path, **kwargs: Any) -> Any:
        shards = root / "shards"
        if not shards.exists():
            write_shards(shards, [3, 2, 3, 2])
        return DynOccDataset(shards, **self.options, **kwargs)


class TestDynOccDatasetResampledPairs(TestDynOccDataset):
    """The same shards with a load-time strategy drawing its own pairs from the boundary annotation."""

    options = {"strategy": "band"}


class TestYouTube3DDataset(DatasetContract):
    source = "youtube3d"

    def make(self, root: Path, **kwargs: Any) -> Any:
        csv = root / "YT_train.csv"
        return YouTube3DDataset(csv if csv.exists() else youtube3d_release(root), **kwargs)


class TestDIWDataset(DatasetContract):
    source = "diw"

    def make(self, root: Path, **kwargs: Any) -> Any:
        csv = root / "DIW_test.csv"
        if not csv.exists():
            write_diw_release(root, [
                DIWSample("./DIW_test/0001.thumb", two_colour_image(24, 32), "5,10,20,30,>,32,24"),
                DIWSample("./DIW_test/0002.thumb", two_colour_image(24, 32), "1,1,24,32,<,32,24"),
                DIWSample("./DIW_test/0003.thumb", two_colour_image(12, 16), "5,10,24,32,=,32,24"),
            ])
        return DIWDataset(csv, **kwargs)


class TestConvertedYouTube3DShards(DatasetContract):
    """YouTube3D written as shards by ``convert`` and read back by DynOccDataset."""

    source = "youtube3d"

    def make(self, root: Path, **kwargs: Any) -> Any:
        out = root / "converted"
        if not out.exists():
            convert("youtube3d", youtube3d_release(root / "release"), out, shard_size=2)
        return DynOccDataset(out, **kwargs)


class TestMix(DatasetContract):
    """DynOcc shards and the YouTube3D release (map-style, streamed) mixed until both are used up."""

    source = ("dynocc", "youtube3d")
    takes_transform = False

    def make(self, root: Path, **kwargs: Any) -> Any:
        shards, csv = root / "shards", root / "YT_train.csv"
        if not shards.exists():
            write_shards(shards, [3, 2, 3, 2])
            youtube3d_release(root)
        return mix([DynOccDataset(shards), as_iterable(YouTube3DDataset(csv), shuffle=False)], [0.5, 0.5],
                   stop="all", seed=3)


def dense_release(root: Path, redweb: bool = False) -> Path:
    """Three dense-depth samples: JPEGs + 16-bit PNG depth in a CSV, or ReDWeb's Imgs/*.jpg + RDs/*.png (8-bit)."""
    depth = (1000 + 50 * np.arange(24)[:, None] + 10 * np.arange(32)[None]).astype(np.uint8 if redweb else np.uint16)
    folders = ("Imgs", "RDs") if redweb else ("images", "depth")
    samples = [DenseSample(f"{folders[0]}/{i:04d}.jpg", f"{folders[1]}/{i:04d}.png", two_colour_image(24, 32), depth)
               for i in range(3)]
    return write_dense_release(root, samples, csv_name=None if redweb else "dense.csv")


class TestDenseDepthDatasetCSV(DatasetContract):
    source = "dense"

    def make(self, root: Path, **kwargs: Any) -> Any:
        csv = root / "dense.csv"
        return DenseDepthDataset(csv if csv.exists() else dense_release(root), depth_scale=0.001, num_pairs=50,
                                 **kwargs)


class TestDenseDepthDatasetReDWeb(DatasetContract):
    source = "redweb"

    def make(self, root: Path, **kwargs: Any) -> Any:
        folder = root / "ReDWeb_V1"
        if not folder.exists():
            dense_release(folder, redweb=True)
        return DenseDepthDataset(folder, num_pairs=50, **kwargs)


class TestConvertedDenseShards(DatasetContract):
    """A dense-depth CSV written as shards (with the depth.npy member) by ``convert`` and read by DynOccDataset."""

    source = "dense"

    def make(self, root: Path, **kwargs: Any) -> Any:
        out = root / "converted"
        if not out.exists():
            convert("dense", dense_release(root / "release"), out, shard_size=2, dense={"num_pairs": 50})
        return DynOccDataset(out, **kwargs)
