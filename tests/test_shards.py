import io
import json
import os
import tarfile

import numpy as np
import pytest
import torch
from torchvision.io import encode_jpeg

from dynocc_data.errors import DynOccError, ShardFormatError
from dynocc_data.format.index import read_index
from dynocc_data.format.sample import (
    BOUNDARY_DTYPE,
    MissingFieldError,
    decode_sample,
    encode_sample,
)
from dynocc_data.generation.writer import ShardWriter, read_run_state, write_index


def make_sample(key="vid-0000abcd_000004", n=3, m=5, size=(24, 32), seed=0):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size[0]), torch.arange(size[1]), indexing="ij")
    image = torch.stack([yy * 5, xx * 4, (yy + xx) * 3]).clamp(0, 255).to(torch.uint8)  # smooth: JPEG-friendly
    pairs = torch.randint(0, min(size), (n, 4), generator=g)
    ordinal = torch.tensor([1, -1, 0][:n] + [1] * max(0, n - 3))
    boundary = {"y": torch.rand(m, generator=g) * size[0], "x": torch.rand(m, generator=g) * size[1],
                "ny": torch.zeros(m), "nx": torch.ones(m), "confidence": torch.rand(m, generator=g),
                "segment": torch.arange(m) % 2, "jump": torch.full((m,), 2.5)}
    meta = {"video": "clips/vid.mp4", "video_id": "vid-0000abcd", "frame": 4, "orig_size": [48, 64],
            "size": list(size), "scale": 0.5, "fps": 25.0}
    jpeg = encode_jpeg(image, quality=95).numpy().tobytes()
    return encode_sample(key, jpeg, meta, pairs, ordinal, boundary), (image, pairs, ordinal, boundary)


def test_encode_decode_round_trip():
    sample, (image, pairs, ordinal, boundary) = make_sample()
    item = decode_sample({**sample, "__url__": "x.tar"})
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 24, 32)
    assert (item["image"].float() - image.float()).abs().mean() < 4  # JPEG
    assert item["pairs"].dtype == torch.int64 and torch.equal(item["pairs"], pairs)
    assert item["ordinal"].dtype == torch.int64 and torch.equal(item["ordinal"], ordinal)
    for k, v in boundary.items():
        assert torch.allclose(item["boundary"][k].double(), v.double(), atol=1e-6), k
    assert item["boundary"]["segment"].dtype == torch.int64
    meta = item["meta"]
    assert meta["source"] == "dynocc" and meta["key"] == "vid-0000abcd_000004"
    assert meta["video"] == "clips/vid.mp4" and meta["frame"] == 4 and meta["orig_size"] == (48, 64)


def test_stored_arrays_have_the_documented_dtypes():
    sample, _ = make_sample()
    assert np.load(io.BytesIO(sample["pairs.npy"]), allow_pickle=False).dtype == np.int32
    assert np.load(io.BytesIO(sample["ordinal.npy"]), allow_pickle=False).dtype == np.int8
    assert np.load(io.BytesIO(sample["boundary.npy"]), allow_pickle=False).dtype == BOUNDARY_DTYPE


def test_missing_field_names_shard_key_and_field():
    sample, _ = make_sample()
    del sample["boundary.npy"]
    with pytest.raises(MissingFieldError, match=r"s\.tar \[vid-0000abcd_000004\]: sample has no boundary.npy member"):
        decode_sample({**sample, "__url__": "s.tar"})


def test_pickled_npy_is_refused_not_unpickled(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    buf = io.BytesIO()
    np.save(buf, np.array([Evil()], dtype=object), allow_pickle=True)
    sample, _ = make_sample()
    sample["pairs.npy"] = buf.getvalue()
    with pytest.raises(ShardFormatError, match="pairs.npy"):
        decode_sample({**sample, "__url__": "s.tar"})
    assert not marker.exists()


def test_writer_rotates_commits_and_indexes(tmp_path):
    with ShardWriter(tmp_path, prefix="t", max_count=2, header={"digest": "abc"}) as w:
        for i in range(5):
            s, _ = make_sample(key=f"v-00000000_{i:06d}", seed=i)
            w.write(s, video_id="v-00000000", frame=i)
        w.video_done({"video_id": "v-00000000", "status": "done", "samples": 5})
    names = sorted(p.name for p in tmp_path.glob("*.tar"))
    assert names == ["t-r000-000000.tar", "t-r000-000001.tar", "t-r000-000002.tar"]
    assert not list(tmp_path.glob("*.partial"))
    with tarfile.open(tmp_path / names[0]) as tf:
        members = tf.getnames()
        assert all(m.mtime == 0 for m in tf.getmembers())  # reproducible bytes
    assert members[:5] == ["v-00000000_000000." + f for f in
                           ("boundary.npy", "jpg", "json", "ordinal.npy", "pairs.npy")]
    index = write_index(tmp_path)
    assert index["num_samples"] == 5 and [s["count"] for s in index["shards"]] == [2, 2, 1]
    again = read_index(tmp_path)
    assert again["shards"][0]["url"] == str(tmp_path / "t-r000-000000.tar")
    state = read_run_state(tmp_path)
    assert state.videos["v-00000000"]["status"] == "done" and state.last_frame["v-00000000"] == 4


def test_video_done_is_deferred_until_its_shard_commits(tmp_path):
    w = ShardWriter(tmp_path, max_count=10)
    s, _ = make_sample(key="v-00000000_000000")
    w.write(s, video_id="v-00000000", frame=0)
    w.video_done({"video_id": "v-00000000", "status": "done"})
    assert "v-00000000" not in read_run_state(tmp_path).videos  # its sample is not committed yet
    w.close()
    assert read_run_state(tmp_path).videos["v-00000000"]["status"] == "done"


def test_repair_rolls_committed_forward_and_drops_uncommitted(tmp_path):
    w = ShardWriter(tmp_path, max_count=1)
    s, _ = make_sample(key="v-00000000_000000")
    w.write(s, video_id="v-00000000", frame=0)  # committed
    # simulate a crash between the ledger commit and the rename of a second shard
    (tmp_path / "dynocc-r000-000000.tar").rename(tmp_path / "dynocc-r000-000000.tar.partial")
    # and an unfinished shard that was never committed
    (tmp_path / "dynocc-r000-000001.tar.partial").write_bytes(b"half a tar")
    state = read_run_state(tmp_path, repair=True)
    assert (tmp_path / "dynocc-r000-000000.tar").exists()
    assert not list(tmp_path.glob("*.partial"))
    assert state.num_samples == 1
    w2 = ShardWriter(tmp_path, max_count=1)  # numbering continues after existing shards
    w2.write(s, video_id="v-00000000", frame=2)
    assert (tmp_path / "dynocc-r000-000001.tar").exists()


def test_torn_ledger_line_is_ignored(tmp_path):
    w = ShardWriter(tmp_path, max_count=1)
    s, _ = make_sample()
    w.write(s, video_id="v", frame=0)
    with open(tmp_path / "ledger-r000.jsonl", "a") as f:
        f.write('{"type": "shard", "url": "x.tar", "cou')  # killed mid-write
    assert read_run_state(tmp_path).num_samples == 1


def test_unwritable_output_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(DynOccError, match="cannot write output"):
        ShardWriter(blocker / "out")


def test_write_failure_leaves_no_partial_or_final(tmp_path):
    w = ShardWriter(tmp_path, max_count=10)
    s, _ = make_sample()
    w.write(s, video_id="v", frame=0)

    class Broken(io.RawIOBase):
        def write(self, b):
            raise OSError(28, "No space left on device")

    w._tar.tarstream.fileobj = Broken()  # the disk fills up under the tar stream
    with pytest.raises(DynOccError, match="No space left on device"):
        for i in range(50):
            w.write(s, video_id="v", frame=i + 1)
    assert not list(tmp_path.glob("*.tar*"))


def test_read_index_errors(tmp_path):
    with pytest.raises(DynOccError, match="no index.json here"):
        read_index(tmp_path)
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(DynOccError, match="cannot read the shard index"):
        read_index(tmp_path)
    (tmp_path / "index.json").write_text(json.dumps({"shards": [{"url": "a.tar", "count": 3}]}))
    with pytest.raises(DynOccError, match="not a shard index"):  # one reader, one set of rules: format required
        read_index(tmp_path)
    (tmp_path / "index.json").write_text(json.dumps({"format": "dynocc-shards/1",
                                                     "shards": [{"url": "a.tar", "count": 3}]}))
    assert read_index(tmp_path)["shards"][0]["count"] == 3
