"""convert: YouTube3D and DIW releases (exact release formats) to shards read back by DynOccDataset unchanged."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from dynocc_data.tools.fake_releases import (
    DIWSample,
    YouTube3DSample,
    py2_call_pickle,
    py2_ndarray_pickle,
    two_colour_image,
    write_diw_release,
    write_png,
    write_youtube3d_release,
)

from dynocc_data.datasets.diw import DIWDataset
from dynocc_data.datasets.dynocc import DynOccDataset
from dynocc_data.datasets.youtube3d import YouTube3DDataset
from dynocc_data.errors import InputError
from dynocc_data.format.sample import BOUNDARY_DTYPE, decode_sample
from dynocc_data.tools.convert import convert, sample_key

H, W = 24, 32
TARGET = np.array([[0.5, 0.26, 1.0, -0.1], [0.999, 0.0, 0.5, 0.26], [0.1, 0.9, 0.0, 0.75],
                   [0.25, 0.3, 1.2, 0.5], [1.0, -1.0, 0.0, 1.0]])


def textured(height: int, width: int, seed: int) -> torch.Tensor:
    """A smooth, seed-dependent RGB image (distinct JPEG bytes per sample)."""
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack([yy * 7 + seed * 30, xx * 5 + seed * 11, (yy + xx) * 3 + seed]).remainder(256).to(torch.uint8)


def youtube3d_release(root: Path) -> Path:
    """Three samples, one taller image and a float32 target."""
    samples = [
        YouTube3DSample("./laundry_room_0001/shot_001/0001.jpg",
                        "./laundry_room_0001/shot_001/colmap/0/0001_0.6_6000_col_reldepth.pkl",
                        two_colour_image(H, W), py2_ndarray_pickle(TARGET)),
        YouTube3DSample("./kitchen_0002/shot_003/0042.jpg",
                        "./kitchen_0002/shot_003/colmap/1/0042_0.6_6000_col_reldepth.pkl",
                        textured(2 * H, W, 1), py2_ndarray_pickle(TARGET[:, :2].astype(np.float32))),
        YouTube3DSample("./kitchen_0002/shot_003/0043.jpg",
                        "./kitchen_0002/shot_003/colmap/1/0043_0.6_6000_col_reldepth.pkl",
                        textured(H, 2 * W, 2), py2_ndarray_pickle(TARGET[:, 1:])),
    ]
    return write_youtube3d_release(root, samples)


def diw_release(root: Path) -> Path:
    """Four samples, two thumbnails at half the annotated size (rescaled pairs)."""
    samples = [
        DIWSample("./DIW_test/0001.thumb", textured(H, W, 3), "5,10,20,30,>,32,24"),
        DIWSample("./DIW_test/0002.thumb", textured(H, W, 4), "1,1,24,32,<,32,24"),
        DIWSample("./DIW_test/0003.thumb", textured(H // 2, W // 2, 5), "5,10,24,32,>,32,24"),
        DIWSample("./DIW_test/0004.thumb", two_colour_image(H // 2, W // 2), "1,3,23,31,<,32,24"),
    ]
    return write_diw_release(root, samples)


def by_video(items) -> dict[str, dict]:
    """Items keyed by their meta video (the image path)."""
    return {item["meta"]["video"]: item for item in items}


def assert_same_items(ours, theirs, source: str) -> None:
    """DynOccDataset items equal the release dataset's: pixels, pairs, ordinals, source, video, frame, size."""
    ours, theirs = by_video(ours), by_video(theirs)
    assert sorted(ours) == sorted(theirs)
    for video, want in theirs.items():
        got = ours[video]
        assert got["image"].dtype == torch.uint8 and torch.equal(got["image"], want["image"]), video
        assert got["pairs"].dtype == torch.int64 and torch.equal(got["pairs"], want["pairs"]), video
        assert got["ordinal"].dtype == torch.int64 and torch.equal(got["ordinal"], want["ordinal"]), video
        assert got["meta"]["source"] == want["meta"]["source"] == source
        assert got["meta"]["frame"] == want["meta"]["frame"] == 0
        assert got["meta"]["orig_size"] == got["meta"]["size"] == want["meta"]["orig_size"]
        assert got["boundary"]["y"].shape == (0,) and set(got["boundary"]) == set(BOUNDARY_DTYPE.names)


def shard_members(out: Path) -> dict[str, bytes]:
    """Every member of every shard in ``out``, by name."""
    members = {}
    for path in sorted(out.glob("*.tar")):
        with tarfile.open(path) as tf:
            members.update({m.name: tf.extractfile(m).read() for m in tf.getmembers()})
    return members


def test_youtube3d_round_trip(tmp_path: Path) -> None:
    csv_path = youtube3d_release(tmp_path / "yt")
    assert convert("youtube3d", csv_path, tmp_path / "out") == 3
    ours = list(DynOccDataset(tmp_path / "out"))
    assert_same_items(ours, list(YouTube3DDataset(csv_path)), "youtube3d")
    assert by_video(ours)[str(tmp_path / "yt/laundry_room_0001/shot_001/0001.jpg")]["pairs"].tolist() == [
        [12, 31, 2, 8], [6, 0, 21, 9], [23, 16, 0, 31], [0, 8, 18, 16]]  # the release reader's pixel rule
    members = shard_members(tmp_path / "out")
    for item in ours:  # the JPEG bytes are the source file's, not a re-encoding
        assert members[f"{item['meta']['key']}.jpg"] == Path(item["meta"]["video"]).read_bytes()
        meta = json.loads(members[f"{item['meta']['key']}.json"])
        assert meta["target_path"].endswith("_col_reldepth.pkl") and meta["key"] == item["meta"]["key"]
    assert not list((tmp_path / "out").glob("*.partial"))
    index = json.loads((tmp_path / "out/index.json").read_text())
    assert index["num_samples"] == 3 and [s["url"] for s in index["shards"]] == ["youtube3d-r000-000000.tar"]


def test_diw_round_trip_with_small_shards(tmp_path: Path) -> None:
    csv_path = diw_release(tmp_path / "diw")
    out = tmp_path / "out"
    assert convert("diw", csv_path, out, shard_size=3, prefix="diw-test") == 4
    assert sorted(p.name for p in out.glob("*.tar")) == ["diw-test-r000-000000.tar", "diw-test-r000-000001.tar"]
    assert [s["count"] for s in json.loads((out / "index.json").read_text())["shards"]] == [3, 1]
    ours = list(DynOccDataset(out))
    assert len(DynOccDataset(out)) == 4
    theirs = list(DIWDataset(csv_path))
    assert_same_items(ours, theirs, "diw")
    rescaled = by_video(ours)[str(tmp_path / "diw/DIW_test/0003.thumb")]
    assert rescaled["pairs"].tolist() == [[1, 4, 11, 15]] and rescaled["ordinal"].tolist() == [1]


def test_non_jpeg_sources_are_encoded(tmp_path: Path) -> None:
    root = tmp_path / "diw"
    csv_path = diw_release(root)
    write_png(root / "DIW_test/0002.thumb", textured(H, W, 4))  # a PNG under the DIW name
    convert("diw", csv_path, tmp_path / "out", jpeg_quality=100)
    item = by_video(DynOccDataset(tmp_path / "out"))[str(root / "DIW_test/0002.thumb")]
    want = DIWDataset(csv_path)[1]
    assert item["image"].shape == want["image"].shape == (3, H, W)
    assert (item["image"].float() - want["image"].float()).abs().mean() < 3  # JPEG at quality 100
    assert torch.equal(item["pairs"], want["pairs"])


def test_bad_rows_are_reported_skipped_and_counted(tmp_path: Path, caplog) -> None:
    root = tmp_path / "yt"
    csv_path = youtube3d_release(root)
    marker = tmp_path / "pwned"
    (root / "evil.pkl").write_bytes(py2_call_pickle("posix", "system", f"touch {marker}".encode()))
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    lines = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join([
        lines[0],
        "./missing.jpg, ./laundry_room_0001/shot_001/colmap/0/0001_0.6_6000_col_reldepth.pkl",
        "./kitchen_0002/shot_003/0042.jpg, ./evil.pkl",
        "./broken.jpg, ./laundry_room_0001/shot_001/colmap/0/0001_0.6_6000_col_reldepth.pkl",
        "just-one-field",
        lines[1],
        lines[0],  # the same row twice
        lines[2],
    ]) + "\n")
    with caplog.at_level(logging.INFO, logger="dynocc_data.tools.convert"):
        assert convert("youtube3d", csv_path, tmp_path / "out") == 3
    assert not marker.exists()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    expected = [f"{root / 'missing.jpg'}: cannot read image", f"{root / 'evil.pkl'}: refusing to unpickle global "
                "posix.system", f"{root / 'broken.jpg'}: cannot decode image",
                f"{csv_path}: line 5: expected 'image_path,pkl_path'", f"{csv_path}: line 7: duplicate of line 1"]
    for text in expected:
        assert any(text in w for w in warnings), text
    summary = warnings[-1]
    assert "converted 3 youtube3d samples into 1 shards" in summary and "skipped 5 bad rows" in summary
    assert "3 unusable image or target" in summary and "1 duplicate" in summary
    kept = ("laundry_room_0001/shot_001/0001.jpg", "kitchen_0002/shot_003/0042.jpg", "kitchen_0002/shot_003/0043.jpg")
    assert sorted(by_video(DynOccDataset(tmp_path / "out"))) == sorted(str(root / n) for n in kept)


def test_diw_bad_lines_resync(tmp_path: Path, caplog) -> None:
    csv_path = diw_release(tmp_path / "diw")
    lines = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join([
        lines[0], lines[1],
        "./DIW_test/orphan.thumb",  # no annotation line after it
        lines[2], "5,10,20,30,?,32,24",  # bad relation: the pair of lines is skipped
        "1,1,2,2,>,32,24",  # an annotation without its image line
        lines[4], lines[5], lines[6], lines[7],
    ]) + "\n")
    with caplog.at_level(logging.WARNING, logger="dynocc_data.tools.convert"):
        assert convert("diw", csv_path, tmp_path / "out") == 3
    text = caplog.text
    assert f"{csv_path}: line 3: image path without an annotation line after it" in text
    assert f"{csv_path}: line 5: relation must be '>' or '<'" in text
    assert f"{csv_path}: line 6: expected an image path, got an annotation line" in text
    got = sorted(Path(v).name for v in by_video(DynOccDataset(tmp_path / "out")))
    assert got == ["0001.thumb", "0003.thumb", "0004.thumb"]


def test_unusable_inputs_raise(tmp_path: Path) -> None:
    csv_path = diw_release(tmp_path / "diw")
    with pytest.raises(ValueError, match="format must be one of youtube3d, diw"):
        convert("kitti", csv_path, tmp_path / "out")
    with pytest.raises(InputError, match="cannot read CSV"):
        convert("diw", tmp_path / "nope.csv", tmp_path / "out")
    (tmp_path / "empty.csv").write_text("\n\n")
    with pytest.raises(InputError, match="empty.csv: no samples listed"):
        convert("diw", tmp_path / "empty.csv", tmp_path / "out")
    (tmp_path / "allbad.csv").write_text("./a.thumb\n1,1,2,2,>,32,24\n")
    with pytest.raises(InputError, match=r"allbad.csv: no usable rows \(1 bad"):
        convert("diw", tmp_path / "allbad.csv", tmp_path / "out")
    assert not list((tmp_path / "out").glob("*.tar*")) and not (tmp_path / "out/index.json").exists()
    convert("diw", csv_path, tmp_path / "out")
    with pytest.raises(InputError, match="already holds diw shards"):
        convert("diw", csv_path, tmp_path / "out")


def test_keys_are_webdataset_safe_and_stable() -> None:
    key = sample_key("./laundry_room_0001/shot_001/0001.jpg", "row")
    assert key == sample_key("./laundry_room_0001/shot_001/0001.jpg", "row")
    assert key.startswith("laundry_room_0001_shot_001_0001-") and key.endswith("_000000")
    assert "." not in key and "/" not in key and len(key.rsplit("_", 1)[0].rsplit("-", 1)[1]) == 8
    assert key != sample_key("./laundry_room_0001/shot_001/0001.jpg", "other row")
    assert sample_key("../../" + "x" * 200 + ".thumb", "r").startswith("x" * 64 + "-")


def test_decode_sample_takes_source_from_json(tmp_path: Path) -> None:
    convert("diw", diw_release(tmp_path / "diw"), tmp_path / "out")
    members = shard_members(tmp_path / "out")
    key = next(n[: -len(".jpg")] for n in members if n.endswith(".jpg"))
    sample = {"__key__": key, "__url__": "diw.tar", **{n[len(key) + 1:]: v for n, v in members.items()
                                                        if n.startswith(key + ".")}}
    assert decode_sample(sample)["meta"]["source"] == "diw"
    meta = json.loads(sample["json"])
    del meta["source"]
    assert decode_sample({**sample, "json": json.dumps(meta).encode()})["meta"]["source"] == "dynocc"


def test_cli_round_trip(tmp_path: Path) -> None:
    csv_path = diw_release(tmp_path / "data")
    moved = tmp_path / "lists" / "test.csv"
    moved.parent.mkdir()
    moved.write_text(csv_path.read_text())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "dynocc_data.tools.cli", "convert", "diw", str(moved), "--out", str(tmp_path / "out"),
           "--root", str(tmp_path / "data"), "--shard-size", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"wrote 4 samples to {tmp_path / 'out'}" in done.stdout
    assert len(list((tmp_path / "out").glob("diw-r000-*.tar"))) == 2
    assert_same_items(list(DynOccDataset(tmp_path / "out")), list(DIWDataset(moved, root=tmp_path / "data")), "diw")
    bad = subprocess.run(cmd[:-4] + ["--out", str(tmp_path / "out2")], capture_output=True, text=True, env=env,
                         timeout=120)  # without --root the CSV's folder has no images
    assert bad.returncode == 1 and "dynocc-data: error: " in bad.stderr and "no usable rows (4 bad" in bad.stderr


# ------------------------------------------------------------------------------------------ fast readers
# The shard-reading speed-ups made for benchmarks/bench_load.py (datasets/dynocc.py's tar reader, shards.py's .npy
# fast path) must read exactly what tarfile and numpy.load read.


def _tar_bytes(entries: list[tuple[str, bytes | None]], fmt: int, mode: str = "w") -> bytes:
    """A tar in ``fmt`` of regular files (``None``: a directory), through the standard library."""
    import io

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode, format=fmt) as tf:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            else:
                info.size, info.mtime = len(data), 0.5  # a float mtime makes every pax member get a pax header
                tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("link")
        link.type, link.linkname = tarfile.SYMTYPE, "a" * (150 if fmt != tarfile.USTAR_FORMAT else 50)
        tf.addfile(link)
    return buf.getvalue()


def _members_by_tarfile(data: bytes) -> list[tuple[str, bytes]]:
    import io

    with tarfile.open(fileobj=io.BytesIO(data), mode="r|*") as tf:
        return [(m.name, tf.extractfile(m).read()) for m in tf if m.isreg()]


def test_tar_reader_matches_tarfile() -> None:
    import io

    from dynocc_data.format.tar import tar_members

    long_dir = "/".join(["d" * 40] * 4)
    entries = [("a.jpg", b"x" * 1000), ("a.json", b"{}"), ("empty.npy", b""), ("dir", None),
               (f"{long_dir}/k.jpg", bytes(range(256)) * 3), ("n" * 120 + ".pairs.npy", b"\x93NUMPY" + b"\0" * 600),
               ("ünï.json", b"[1]")]
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT):
        usable = entries if fmt != tarfile.USTAR_FORMAT else [e for e in entries if not e[0].startswith("n" * 120)]
        for mode in ("w", "w:gz", "w:bz2", "w:xz"):
            data = _tar_bytes(usable, fmt, mode)
            got = list(tar_members(io.BytesIO(data)))
            assert got == _members_by_tarfile(data), (fmt, mode)
            assert len(got) == len(usable) - 1
    data = _tar_bytes(entries, tarfile.PAX_FORMAT)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        inside, second = tf.getmembers()[0].offset_data + 100, tf.getmembers()[1].offset  # (pax) header start
    with pytest.raises(tarfile.ReadError, match="unexpected end of data"):
        list(tar_members(io.BytesIO(data[:inside])))
    first = _members_by_tarfile(data)[:1]
    assert list(tar_members(io.BytesIO(data[:second]))) == first  # cut at a header: ends silently, as tarfile
    corrupt = data[:second] + b"\x07" * 512 + data[second + 512:]
    assert list(tar_members(io.BytesIO(corrupt))) == first == _members_by_tarfile(corrupt)  # bad header: ends
    for bad, reason in ((b"", "empty file"), (b"\x07" * 512, "bad checksum"), (data[:300], "truncated header")):
        with pytest.raises(tarfile.ReadError, match=reason):
            list(tar_members(io.BytesIO(bad)))


def test_compressed_shards_read_the_same(tmp_path: Path) -> None:
    import gzip

    from fixtures_shards import write_shards

    plain = write_shards(tmp_path / "plain", [3, 2])
    urls = []
    for path in plain.paths:
        target = tmp_path / (path.name + ".gz")
        target.write_bytes(gzip.compress(path.read_bytes()))
        urls.append(str(target))
    got = [(i["meta"]["key"], i["pairs"].tolist()) for i in DynOccDataset(urls, index=None)]
    assert got == [(i["meta"]["key"], i["pairs"].tolist()) for i in DynOccDataset(plain.root)]


def test_npy_fast_path_matches_numpy_and_never_unpickles(tmp_path: Path) -> None:
    import io

    from dynocc_data.format.sample import _npy_array

    def npy(array, **kw) -> bytes:
        buf = io.BytesIO()
        np.save(buf, array, **kw)
        return buf.getvalue()

    arrays = [np.arange(12, dtype=np.int32).reshape(3, 4), np.zeros((0, 4), np.int32), np.array([1, -1, 0], np.int8),
              np.ones(5, BOUNDARY_DTYPE), np.asfortranarray(np.arange(6.0).reshape(2, 3)), np.float32(3.5),
              np.arange(8, dtype=">i4").reshape(2, 4)]
    for _ in range(2):  # the second round takes the cached-dtype path
        for array in arrays:
            got = _npy_array(npy(array))
            assert got.dtype == array.dtype and got.shape == array.shape and np.array_equal(got, array)
    with pytest.raises(ValueError, match="EOF"):
        _npy_array(npy(arrays[0])[:-4])  # truncated data is not read past the end
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    with pytest.raises(ValueError, match="allow_pickle=False"):
        _npy_array(npy(np.array([Evil(), 1], dtype=object), allow_pickle=True))
    assert not marker.exists()
