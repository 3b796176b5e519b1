"""DenseDepthDataset on fixtures in the exact on-disk formats, dense pairs, the depth shard member, convert."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch

from dynocc_data.datasets.dense import DenseDepthDataset
from dynocc_data.datasets.dynocc import DynOccDataset
from dynocc_data.errors import InputError
from dynocc_data.format.dense import DEPTH_KINDS, farther_sign, read_depth_file
from dynocc_data.sampling import DensePairSampler, sample_dense_pairs
from dynocc_data.tools.cli import main as cli
from dynocc_data.tools.convert import convert
from dynocc_data.tools.fake_releases import DenseSample, write_dense_release, write_depth_file
from dynocc_data.transforms import create_transform

H, W = 24, 32


def ramp_image(height: int = H, width: int = W) -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack([x * 7, y * 9, torch.full_like(x, 128)]).to(torch.uint8)


def millimetres(height: int = H, width: int = W) -> np.ndarray:
    """16-bit depth in mm growing with the row (1000 mm at the top ... ), 0 (no depth) in the top-left 4x4."""
    depth = (1000 + 100 * np.arange(height)[:, None] + np.zeros((1, width))).astype(np.uint16)
    depth[:4, :4] = 0
    return depth


def test_read_depth_file_formats(tmp_path):
    mm = millimetres()
    png = read_depth_file(write_depth_file(tmp_path / "d.png", mm), scale=1 / 1000)
    assert png.dtype == torch.float32 and png.shape == (H, W)
    assert torch.isnan(png[:4, :4]).all() and float(png[5, 7]) == pytest.approx(1.5)
    metres = mm.astype(np.float32) / 1000
    metres[:4, :4] = np.nan
    npy = read_depth_file(write_depth_file(tmp_path / "d.npy", metres), invalid=None)
    tif = read_depth_file(write_depth_file(tmp_path / "d.tif", metres), invalid=None)
    for got in (npy, tif):
        assert torch.equal(torch.isnan(got), torch.isnan(png)) and torch.allclose(got[4:], png[4:])


def test_depth_files_are_never_unpickled(tmp_path):
    path = tmp_path / "evil.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="evil.npy.*pickled arrays are refused"):
        read_depth_file(path)
    with pytest.raises(InputError, match="numeric"):
        read_depth_file(write_depth_file(tmp_path / "cube.npy", np.zeros((2, 3, 4), np.float32)))
    (tmp_path / "x.jpg").write_bytes(b"")
    with pytest.raises(InputError, match="unknown depth file type"):
        read_depth_file(tmp_path / "x.jpg")


def test_exr_is_read_or_refused_with_a_clear_line(tmp_path):
    path = tmp_path / "d.exr"
    path.write_bytes(b"\x76\x2f\x31\x01" + bytes(60))  # EXR magic, no valid header
    with pytest.raises(InputError, match="d.exr: cannot decode depth"):
        read_depth_file(path)


def csv_release(root, depth_suffix: str = ".png"):
    samples = []
    for i in range(3):
        depth = millimetres()
        if depth_suffix != ".png":
            depth = depth.astype(np.float32) / 1000
        samples.append(DenseSample(f"images/{i:03d}.jpg", f"depth/{i:03d}{depth_suffix}", ramp_image(), depth))
    return write_dense_release(root, samples)


def test_csv_layout_gives_contract_items_with_dense_fields(tmp_path):
    ds = DenseDepthDataset(csv_release(tmp_path), depth_scale=1 / 1000, num_pairs=500)
    assert len(ds) == 3 and ds.layout == "csv"
    item = ds[1]
    assert item["image"].shape == (3, H, W) and item["depth"].shape == (1, H, W) and item["depth"].dtype == torch.float32
    assert item["valid_mask"].dtype == torch.bool and not item["valid_mask"][0, :4, :4].any()
    assert int(item["valid_mask"].sum()) == H * W - 16 and float(item["depth"][0, 0, 0]) == 0.0
    assert float(item["depth"][0, 10, 3]) == pytest.approx(2.0)
    meta = item["meta"]
    assert meta["source"] == "dense" and meta["key"] == "images/001.jpg" and meta["depth_kind"] == "depth"
    assert meta["orig_size"] == (H, W) and meta["frame"] == 0
    # pairs: every end valid; the order is the depth ratio's (depth grows 100 mm per row: ties only on one row)
    pairs, ordinal = item["pairs"], item["ordinal"]
    assert 400 < len(pairs) <= 500
    valid = item["valid_mask"][0]
    assert valid[pairs[:, 0], pairs[:, 1]].all() and valid[pairs[:, 2], pairs[:, 3]].all()
    assert torch.equal(ordinal, torch.sign(pairs[:, 0] - pairs[:, 2]))
    # reproducible per (seed, epoch, key); new draws each epoch
    assert torch.equal(ds[1]["pairs"], pairs)
    ds.set_epoch(1)
    assert not torch.equal(ds[1]["pairs"], pairs)


def test_npy_csv_with_nan_as_invalid(tmp_path):
    ds = DenseDepthDataset(csv_release(tmp_path, ".npy"), num_pairs=10)
    assert int(ds[0]["valid_mask"].sum()) == H * W - 16


def test_redweb_layout(tmp_path):
    """ReDWeb: Imgs/<name>.jpg + RDs/<name>.png (8-bit, larger = closer)."""
    rd = np.tile(np.arange(W, dtype=np.uint8)[None] * 8, (H, 1))  # closer to the right
    samples = [DenseSample(f"Imgs/{name}.jpg", f"RDs/{name}.png", ramp_image(), rd) for name in ("a1", "b2")]
    root = write_dense_release(tmp_path / "ReDWeb_V1", samples, csv_name=None)
    (root / "Imgs" / "orphan.jpg").write_bytes((root / "Imgs" / "a1.jpg").read_bytes())  # no depth: left out
    ds = DenseDepthDataset(root, num_pairs=400)
    assert ds.layout == "redweb" and len(ds) == 2 and ds.depth_kind == "disparity_affine"
    item = ds[0]
    assert item["meta"]["source"] == "redweb" and item["meta"]["key"] == "Imgs/a1.jpg"
    # no invalid value in ReDWeb: the value 0 (leftmost column, farthest) is a depth like any other
    assert item["valid_mask"].all()
    pairs, ordinal = item["pairs"], item["ordinal"]
    # disparity: A farther (+1) when A is to the left of B (smaller value), ties within 2 % only on one column
    xa, xb = pairs[:, 1], pairs[:, 3]
    assert torch.equal(ordinal[xa != xb], torch.sign(xb - xa)[xa != xb])
    assert (ordinal[xa == xb] == 0).all()


def test_bad_sources_name_the_file(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        DenseDepthDataset(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("a.jpg,b.jpg\nc.jpg,d.jpg\n")
    with pytest.raises(InputError, match="bad.csv: line 2"):
        DenseDepthDataset(bad)
    csv = csv_release(tmp_path / "r")
    write_depth_file(tmp_path / "r" / "depth" / "002.png", millimetres(10, 10))
    with pytest.raises(InputError, match="002.png: depth is 10x10 but its image"):
        DenseDepthDataset(csv)[2]
    with pytest.raises(ValueError, match="depth_kind must be one of"):
        DenseDepthDataset(csv, depth_kind="metres")


def test_sample_dense_pairs_hand_case():
    depth = torch.tensor([[1.0, 1.01], [2.0, 5.0]])
    valid = torch.tensor([[True, True], [True, False]])
    pairs, ordinal = sample_dense_pairs(depth, valid, torch.Generator().manual_seed(0), num_pairs=200)
    flat = {(0, 0): 1.0, (0, 1): 1.01, (1, 0): 2.0}
    assert len(pairs) > 100
    for (ya, xa, yb, xb), o in zip(pairs.tolist(), ordinal.tolist()):
        a, b = flat[ya, xa], flat[yb, xb]  # never the invalid (1, 1)
        assert o == (1 if a > 1.02 * b else -1 if b > 1.02 * a else 0)
    _, flipped = sample_dense_pairs(depth, valid, torch.Generator().manual_seed(0), num_pairs=200,
                                    depth_kind="disparity")
    assert torch.equal(flipped, -ordinal)
    assert [farther_sign(k) for k in DEPTH_KINDS] == [1, 1, 1, -1, -1]
    with pytest.raises(ValueError, match="ratio"):
        DensePairSampler(ratio=1.0)


def test_pairs_are_drawn_after_the_transform(tmp_path):
    transform = create_transform(train=True, size=(12, 16), scale=(0.2, 0.3))
    ds = DenseDepthDataset(csv_release(tmp_path), depth_scale=1 / 1000, num_pairs=300, transform=transform)
    item = ds[0]
    assert item["image"].shape == (3, 12, 16) and item["depth"].shape == (1, 12, 16)
    assert len(item["pairs"]) > 250  # all drawn inside the crop (ends on one pixel dropped)


def test_convert_dense_to_shards_and_read_back(tmp_path, capsys):
    csv = csv_release(tmp_path / "release")
    assert cli(["convert", "dense", str(csv), "--out", str(tmp_path / "shards"), "--depth-scale", "0.001",
                "--num-pairs", "200", "--shard-size", "2"]) == 0
    assert "wrote 3 samples" in capsys.readouterr().out
    direct = DenseDepthDataset(csv, depth_scale=1 / 1000, num_pairs=200)
    items = sorted(DynOccDataset(tmp_path / "shards"), key=lambda it: it["meta"]["key"])
    assert len(items) == 3
    for item, (index, expected) in zip(items, enumerate(direct[i] for i in range(3))):
        assert item["meta"]["source"] == "dense" and item["meta"]["depth_kind"] == "depth"
        assert torch.equal(item["depth"], expected["depth"]) and torch.equal(item["valid_mask"],
                                                                             expected["valid_mask"])
        assert torch.equal(item["pairs"], expected["pairs"]) and torch.equal(item["ordinal"], expected["ordinal"])
    # the member is a plain float32 .npy with NaN where invalid (never a pickle)
    import tarfile
    with tarfile.open(next((tmp_path / "shards").glob("*.tar"))) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".depth.npy"))
        array = np.load(io.BytesIO(tar.extractfile(member).read()), allow_pickle=False)
    assert array.dtype == np.float32 and array.shape == (H, W) and np.isnan(array[:4, :4]).all()
    with pytest.raises(SystemExit):
        cli(["convert", "youtube3d", str(csv), "--out", str(tmp_path / "x"), "--depth-scale", "2"])
    assert convert("dense", csv, tmp_path / "again", dense={"num_pairs": 0}) == 3
    assert pickle.dumps(direct)  # picklable for DataLoader workers
