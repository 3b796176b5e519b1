"""The Ray Data recipe (examples/ray_generate.py) in Ray's local mode on the CPU: same shards as ``generate``.

Two small H.264 scenes (180x320, 12 frames, as in test_generate.py) with ``stride=2, gap=2`` (selected frames
2, 4, 6, 8), decoded in windows of 3 selected frames, so that every video is split into two windows of unequal
size, and written 3 samples per shard, so that shards cross video boundaries; plus a zero-length video, which
fails. Skipped when Ray is not installed (the ``ray`` extra).
"""

import json
from pathlib import Path

import pytest
import webdataset as wds

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'dynocc-data[ray]')")

import ray_generate  # noqa: E402

from dynocc_data import DynOccDataset  # noqa: E402
from dynocc_data.errors import DynOccError  # noqa: E402
from dynocc_data.format.index import read_index  # noqa: E402
from dynocc_data.generation import GenerateConfig, generate  # noqa: E402
from dynocc_data.tools.synthetic import moving_square_scene, write_scene  # noqa: E402

SIZE = (180, 320)
FRAMES = 12
CFG = GenerateConfig(stride=2, gap=2)


@pytest.fixture(scope="module")
def local_ray():
    """Ray in local mode with two CPUs (one decode task and one CPU actor at a time)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """Two moving squares and a zero-length video, in one folder."""
    d = tmp_path_factory.mktemp("ray_videos")
    write_scene(moving_square_scene(SIZE, FRAMES, velocity=(0.0, 3.0), seed=1, side=60), d, "sq_a")
    write_scene(moving_square_scene(SIZE, FRAMES, velocity=(2.0, -3.0), seed=2, side=60), d, "sq_b")
    (d / "empty.mp4").write_bytes(b"")
    return d


def shard_bytes(out: Path) -> dict[str, bytes]:
    """Every final shard of ``out`` by name."""
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.tar"))}


def index_rows(out: Path) -> list[tuple[str, int]]:
    """(file name, sample count) of every shard in ``out``'s index.json (its urls are absolute paths)."""
    return [(Path(s["url"]).name, s["count"]) for s in read_index(out)["shards"]]


def samples(out: Path) -> dict[str, dict]:
    """Every sample of ``out`` (member bytes) by key, read with webdataset."""
    return {s["__key__"]: s for s in wds.WebDataset([str(p) for p in sorted(out.glob("*.tar"))], shardshuffle=False)}


def test_ray_recipe_writes_the_shards_of_generate(local_ray, videos, tmp_path):
    """Same shard names and bytes, same index shards, the same failures, readable by DynOccDataset."""
    ref, out = tmp_path / "generate", tmp_path / "ray"
    generate([str(videos)], ref, CFG, progress=False, shard_size=3)
    summary = ray_generate.main([str(videos), "--out", str(out), "--stride", "2", "--gap", "2", "--window", "3",
                                 "--shard-size", "3", "--device", "cpu"])

    expected = shard_bytes(ref)
    assert len(expected) >= 2 and len(samples(ref)) >= 6  # the fixture makes shards that span videos
    assert shard_bytes(out) == expected
    assert index_rows(out) == index_rows(ref)
    assert read_index(out)["digest"] == CFG.digest()

    ref_stats = json.loads((ref / "stats.json").read_text())
    assert summary.failed == ref_stats["failed"] and [f["video"] for f in summary.failed] == ["empty.mp4"]
    for name in ("videos_total", "videos_done", "frames_processed", "frames_written", "frames_rejected", "pairs",
                 "boundary_points", "shards", "no_pairs"):
        assert getattr(summary, name) == ref_stats[name], name
    assert json.loads((out / "stats.json").read_text())["num_samples"] == len(samples(ref))

    items = {it["meta"]["key"]: it for it in DynOccDataset(str(out))}
    assert sorted(items) == sorted(samples(ref))
    for it in items.values():
        assert len(it["pairs"]) == len(it["ordinal"]) > 0


def test_ray_recipe_refuses_bad_output_and_input(local_ray, videos, tmp_path, capsys):
    """A folder that already holds a run, inputs without a video and a bad option: one line naming it, no work."""
    out = tmp_path / "used"
    out.mkdir()
    (out / "ledger-r000.jsonl").write_text("")
    with pytest.raises(DynOccError, match=f"{out}: already holds shards"):
        ray_generate.run([str(videos)], out, CFG)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["ledger-r000.jsonl"]
    with pytest.raises(DynOccError, match="no video found"):
        ray_generate.run([str(tmp_path / "missing")], tmp_path / "new", CFG)
    with pytest.raises(SystemExit):
        ray_generate.parse_args([str(videos), "--out", str(tmp_path / "x"), "--decode-cpus", "0"])
    assert "--decode-cpus" in capsys.readouterr().err
