"""``shard_stats`` on small shards written in the exact format, with answers worked out by hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from fixtures_shards import write_shards

from dynocc_data.errors import DynOccError
from dynocc_data.format.sample import encode_sample
from dynocc_data.generation.writer import ShardWriter, write_index
from dynocc_data.tools.stats import MAX_FINE_BINS, Accumulator, shard_stats, summarize

REPO = Path(__file__).resolve().parents[1]

# (video_id, frame, size, pairs, ordinal, confidences, jumps)
HAND = [
    ("a-00000001", 0, (32, 48), [[0, 0, 3, 4], [10, 10, 16, 18]], [1, -1], [0.75, 1.0], [1.0, 3.0]),
    ("a-00000001", 2, (32, 48), [[5, 5, 5, 10], [0, 0, 6, 8], [20, 20, 23, 24]], [1, 1, 0], [0.9], [10.0]),
    ("a-00000001", 4, (32, 48), [], [], [], []),
    ("b-00000002", 0, (40, 40), [[1, 1, 4, 5], [2, 2, 2, 7], [30, 30, 30, 20]], [-1, 1, -1], [0.8, 0.85, 0.95],
     [0.5, 0.25, 2.25]),
]


def write_hand_shards(root: Path) -> Path:
    """The ``HAND`` samples, generator style: ShardWriter (2 samples per shard), then index.json."""
    with ShardWriter(root, prefix="h", max_count=2) as w:
        for vid, frame, size, pairs, ordinal, conf, jump in HAND:
            key = f"{vid}_{frame:06d}"
            ok, jpeg = cv2.imencode(".jpg", np.full((*size, 3), 90, np.uint8))
            assert ok
            meta = {"key": key, "video": f"{vid[0]}.mp4", "video_id": vid, "frame": frame,
                    "orig_size": [2 * size[0], 2 * size[1]], "size": list(size), "scale": 0.5, "fps": 25.0,
                    "num_pairs": len(pairs), "num_boundary": len(conf), "params": {}, "version": "0.1.0"}
            n = len(conf)
            bnd = {"y": torch.arange(n, dtype=torch.float32), "x": torch.ones(n), "ny": torch.zeros(n),
                   "nx": torch.ones(n), "confidence": torch.tensor(conf, dtype=torch.float32),
                   "segment": torch.zeros(n, dtype=torch.int64), "jump": torch.tensor(jump, dtype=torch.float32)}
            w.write(encode_sample(key, jpeg.tobytes(), meta, np.array(pairs, np.int32).reshape(-1, 4),
                                  np.array(ordinal, np.int8), bnd), video_id=vid, frame=frame)
    write_index(root)
    return root


def test_hand_made_shards(tmp_path: Path) -> None:
    s = shard_stats(write_hand_shards(tmp_path / "h"))
    assert s["samples"] == 4 and s["videos"] == 2
    assert s["frames_per_video"] == {"a-00000001": 3, "b-00000002": 1}
    assert s["pairs"] == 8 and s["frames_without_pairs"] == 1 and s["boundary_points"] == 6
    ppf = s["pairs_per_frame"]  # 2, 3, 0, 3
    assert ppf["count"] == 4 and ppf["mean"] == 2.0 and ppf["median"] == 2.5
    assert ppf["min"] == 0 and ppf["max"] == 3 and ppf["p10"] == pytest.approx(0.6) and ppf["p90"] == 3.0
    assert ppf["histogram"] == {"edges": [0.0, 1.0, 2.0, 3.0, 4.0], "counts": [1, 0, 1, 2]}
    off = s["pair_offset"]  # 5, 10, 5, 10, 5, 5, 5, 10
    assert off["count"] == 8 and off["mean"] == pytest.approx(55 / 8) and off["median"] == 5.0
    assert off["min"] == 5.0 and off["max"] == 10.0
    assert off["histogram"]["edges"][0] == 5.0 and off["histogram"]["edges"][-1] == 10.5
    assert off["histogram"]["counts"][0] == 5 and off["histogram"]["counts"][-1] == 3
    assert sum(off["histogram"]["counts"]) == 8
    conf = s["boundary_confidence"]
    assert conf["count"] == 6 and conf["mean"] == pytest.approx((0.75 + 1 + 0.9 + 0.8 + 0.85 + 0.95) / 6)
    assert conf["histogram"]["edges"][0] == 0.75 and sum(conf["histogram"]["counts"]) == 6
    assert conf["histogram"]["counts"] == [1, 1, 1, 1, 1, 1]  # 0.75, 0.8, 0.85, 0.9, 0.95, 1.0
    jump = s["jump"]
    assert jump["mean"] == pytest.approx(17.0 / 6) and jump["max"] == 10.0 and jump["min"] == 0.25
    assert s["labels"]["counts"] == {"+1": 4, "-1": 3, "0": 1}
    assert s["labels"]["shares"] == {"+1": 0.5, "-1": 0.375, "0": 0.125}
    assert s["image_sizes"] == {"32x48": 3, "40x40": 1}
    assert s["orig_sizes"] == {"64x96": 3, "80x80": 1}
    assert s["read"] == {"skipped_samples": 0, "shard_errors": 0}
    json.dumps(s)  # JSON-ready


def test_fixture_shards_match_their_arrays(tmp_path: Path) -> None:
    shards = write_shards(tmp_path / "f", [3, 4, 2])
    s = shard_stats(shards.pattern)
    samples = list(shards.samples.values())
    assert s["samples"] == 9 and s["videos"] == 3
    assert s["frames_per_video"] == {smp.video_id: n for smp, n in
                                     zip([samples[0], samples[3], samples[7]], [3, 4, 2])}
    pairs = np.concatenate([smp.pairs for smp in samples]).astype(float)
    ordinal = np.concatenate([smp.ordinal for smp in samples])
    assert s["pairs"] == len(pairs)
    assert s["pairs_per_frame"]["mean"] == pytest.approx(len(pairs) / 9)
    offsets = np.hypot(pairs[:, 0] - pairs[:, 2], pairs[:, 1] - pairs[:, 3])
    assert s["pair_offset"]["mean"] == pytest.approx(offsets.mean())
    assert s["pair_offset"]["median"] == pytest.approx(np.median(offsets))
    conf = np.concatenate([smp.boundary["confidence"] for smp in samples])
    assert s["boundary_confidence"]["mean"] == pytest.approx(conf.mean(), rel=1e-6)
    assert s["jump"]["max"] == pytest.approx(np.concatenate([smp.boundary["jump"] for smp in samples]).max())
    for name in ("pairs_per_frame", "boundary_points_per_frame", "pair_offset", "boundary_confidence", "jump"):
        h = s[name]["histogram"]
        assert sum(h["counts"]) == s[name]["count"] and len(h["edges"]) == len(h["counts"]) + 1
        assert h["edges"][0] <= s[name]["min"] and s[name]["max"] < h["edges"][-1]
    for label, key in ((1, "+1"), (-1, "-1"), (0, "0")):
        assert s["labels"]["counts"][key] == int((ordinal == label).sum())
    assert sum(s["labels"]["shares"].values()) == pytest.approx(1.0)
    assert s["image_sizes"] == {"12x16": 9}


def test_broken_sample_is_counted_not_fatal(tmp_path: Path) -> None:
    shards = write_shards(tmp_path / "b", [3])
    bad = shards.keys[1]
    shards = write_shards(tmp_path / "b", [3], edit={bad: {"pairs.npy": b"not an npy"}})
    s = shard_stats(shards.root)
    assert s["samples"] == 2 and s["read"]["skipped_samples"] == 1


def test_no_samples(tmp_path: Path) -> None:
    shards = write_shards(tmp_path / "e", [0])
    s = shard_stats(shards.root)
    assert s["samples"] == 0 and s["pairs"] == 0 and s["labels"]["shares"] == {"+1": 0.0, "-1": 0.0, "0": 0.0}
    assert s["pair_offset"]["mean"] is None and s["pair_offset"]["histogram"] == {"edges": [], "counts": []}


def test_accumulator_is_exact_below_capacity_and_streams_beyond() -> None:
    small = Accumulator(1.0)
    small.add(np.arange(100))
    h = summarize(small)
    assert h["median"] == 49.5 and h["p10"] == pytest.approx(9.9) and h["std"] == pytest.approx(np.arange(100).std())
    assert h["histogram"]["counts"] == [5] * 20 and h["histogram"]["edges"][-1] == 100.0  # 100 fine bins -> 20 of 5
    big = Accumulator(1.0, capacity=500)
    values = np.arange(20000) % 1000  # uniform over 0..999, 20 of each
    for chunk in np.array_split(values, 37):
        big.add(chunk)
    h = summarize(big)
    assert h["count"] == 20000 and h["mean"] == pytest.approx(499.5) and h["max"] == 999
    assert len(big.sample) == 500 and sum(h["histogram"]["counts"]) == 20000
    assert h["histogram"]["counts"] == [1000] * 20  # exact: 50-wide bins of 50 values x 20 copies
    assert abs(h["median"] - 499.5) < 60 and abs(h["p90"] - 899.5) < 60  # estimated from 500 samples
    again = Accumulator(1.0, capacity=500)
    for chunk in np.array_split(values, 37):
        again.add(chunk)
    assert summarize(again) == h  # a fixed seed: same answer every run


def test_accumulator_survives_huge_and_non_finite_values() -> None:
    acc = Accumulator(0.05)
    acc.add([0.1, 0.2, 1e9, float("nan"), float("inf")])
    h = summarize(acc)
    assert h["count"] == 3 and h["nonfinite"] == 2 and h["max"] == 1e9
    assert len(acc.bins) <= MAX_FINE_BINS and sum(h["histogram"]["counts"]) == 3
    assert h["histogram"]["counts"][0] == 2 and h["histogram"]["edges"][-1] > 1e9
    assert "nonfinite" not in summarize(Accumulator(1.0))


def test_plots(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    s = shard_stats(write_hand_shards(tmp_path / "h"), plots=tmp_path / "plots")
    names = sorted(Path(p).name for p in s["plots"])
    assert names == ["boundary_confidence.png", "boundary_points_per_frame.png", "jump.png", "labels.png",
                     "pair_offset.png", "pairs_per_frame.png"]
    for p in s["plots"]:
        img = cv2.imread(p)
        assert img is not None and img.shape[0] > 100 and img.shape[1] > 100
    assert not list((tmp_path / "plots").glob("*.partial"))


def test_plots_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what an environment without the package gives
    with pytest.raises(DynOccError, match="matplotlib"):
        shard_stats(write_hand_shards(tmp_path / "h"), plots=tmp_path / "plots")
    assert not (tmp_path / "plots").exists()


def test_cli_stats(tmp_path: Path) -> None:
    root = write_hand_shards(tmp_path / "h")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "dynocc_data.tools.cli", "stats", str(root), "--json", "--plots",
                           str(tmp_path / "plots")], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    s = json.loads(done.stdout)
    assert s["samples"] == 4 and s["labels"]["counts"] == {"+1": 4, "-1": 3, "0": 1}
    assert len(s["plots"]) == 6 and all(Path(p).is_file() for p in s["plots"])


def test_cli_stats_prints_the_summary_by_default(tmp_path: Path) -> None:
    root = write_hand_shards(tmp_path / "h")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "dynocc_data.tools.cli", "stats", str(root), "-v"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("videos ") and "samples 4, pairs 8" in lines[0]
    assert lines[1].startswith("pairs per frame") and "+1 50.0%  -1 37.5%  0 12.5%" in done.stdout
    assert len(lines) < 12 and "{" not in done.stdout
