"""The ``dynocc-data`` command line, run as a user runs it: ``python -m dynocc_data.tools.cli ...`` in a subprocess.

Each call pays the interpreter and torch start-up (a few seconds), so the calls are few and the inputs tiny.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dynocc_data.tools.synthetic import moving_square_scene, write_scene

REPO = Path(__file__).resolve().parents[1]
FAST = ["--stride", "2", "--gap", "2", "--no-progress"]


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``python -m dynocc_data.tools.cli ARGS`` from the repository, capturing its output."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "dynocc_data.tools.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=REPO)


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    """A textured square moving over a textured background, 180x320, 12 frames."""
    scene = moving_square_scene((180, 320), 12, velocity=(0.0, 3.0), seed=1, side=60)
    return write_scene(scene, tmp_path_factory.mktemp("videos"), "square")[0]


def test_generate_prints_the_summary_and_writes_stats_and_index(video, tmp_path):
    out = tmp_path / "shards"
    res = cli("generate", video, "--out", out, *FAST, "--max-frames", "2", "--shard-size", "1")
    assert res.returncode == 0, res.stderr
    assert "videos: 1 done, 0 failed, 0 skipped" in res.stdout
    assert "frames: 2 processed, 2 written" in res.stdout
    assert "in 2 shard(s)" in res.stdout
    assert f"wrote {out}/index.json and {out}/stats.json" in res.stdout
    stats = json.loads((out / "stats.json").read_text())
    index = json.loads((out / "index.json").read_text())
    assert stats["frames_written"] == 2 and stats["videos_done"] == 1 and stats["failed"] == []
    assert index["num_samples"] == 2 and [s["count"] for s in index["shards"]] == [1, 1]
    assert f"pairs: {stats['pairs']} " in res.stdout
    assert not list(out.glob("*.partial"))


def test_exit_1_when_nothing_could_be_processed(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    missing = tmp_path / "missing.mp4"
    out = tmp_path / "shards"
    res = cli("generate", empty, missing, "--out", out, *FAST)
    assert res.returncode == 1
    assert "dynocc-data: error:" in res.stderr and "no video could be processed" in res.stderr
    # one line per bad input, naming the file and the reason
    assert f"{empty}: zero-length file" in res.stderr
    assert f"{missing}: no such file or directory" in res.stderr
    assert "Traceback" not in res.stderr
    stats = json.loads((out / "stats.json").read_text())
    assert len(stats["failed"]) == 2


def test_strict_exits_1_when_one_input_failed(video, tmp_path):
    out = tmp_path / "shards"
    res = cli("generate", video, tmp_path / "missing.mp4", "--out", out, *FAST, "--max-frames", "1", "--strict")
    assert res.returncode == 1
    assert "--strict" in res.stderr and "missing.mp4: no such file or directory" in res.stderr
    # the good video was still processed and its shards indexed
    assert json.loads((out / "index.json").read_text())["num_samples"] == 1


def test_generate_help_lists_the_options():
    res = cli("generate", "--help")
    assert res.returncode == 0
    for option in ("--out", "--resume", "--strict", "--stride", "--gap", "--max-side", "--max-frames", "--flow",
                   "--device", "--batch-size", "--seed", "--max-pairs", "--shard-size", "--prefix", "--decoder"):
        assert option in res.stdout, option


def test_evaluate_writes_scores(tmp_path):
    out = tmp_path / "eval"
    res = cli("evaluate", "--scenes", "1", "--size", "180x320", "--frames", "16", "--out", out, "--no-progress")
    assert res.returncode == 0, res.stderr
    for words in ("correct (different surfaces, right order)", "wrong order", "localisation", "false boundary",
                  "coverage (any motion, 4 px, every selected frame)", "old scoring (secondary)",
                  "cast shadows on"):
        assert words in res.stdout, words
    scores = json.loads((out / "eval.json").read_text())
    assert scores["frames_selected"] == 2  # 16 frames, stride 4, gap 4: frames 4 and 8
    assert scores["pairs"] > 0 and sum(scores["counts"].values()) == scores["pairs"]
    assert scores["correct"] == scores["counts"]["correct"] / scores["pairs"] >= 0.5
    assert 0.0 <= scores["coverage"] <= 1.0 and scores["coverage_radius"] == 4.0
    assert scores["old"]["precision"] >= scores["correct"]  # sign agreement also counts same-surface luck
    assert scores["scene_config"]["cast_shadows"] is True
    assert (out / "scenes" / "scene_01000.mp4").is_file() and (out / "shards" / "index.json").is_file()
    # --json prints the same document; bad seeds are refused where they enter
    res = cli("evaluate", "--scenes", "1", "--size", "180x320", "--frames", "16", "--out", tmp_path / "j",
              "--no-progress", "--no-shadows", "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["scene_config"]["cast_shadows"] is False and doc["pairs"] > 0
    res = cli("evaluate", "--scene-seed", "1,x", "--out", tmp_path / "bad")
    assert res.returncode == 2 and "--scene-seed" in res.stderr


def test_evaluate_semireal_and_static_camera_modes(tmp_path, video):
    res = cli("evaluate", "--background", video, "--scenes", "1", "--frames", "12", "--out", tmp_path / "semi",
              "--no-progress")
    assert res.returncode == 0, res.stderr
    assert "semi-real scenes: 1 over each of 1 clip(s)" in res.stdout and "correct (different surfaces" in res.stdout
    doc = json.loads((tmp_path / "semi" / "eval.json").read_text())
    assert doc["mode"] == "semi-real" and doc["scene_config"]["cast_shadows"] is True
    assert doc["pairs"] == doc["scored"] + doc["counts"]["unscored"] and doc["frames_selected"] == 1
    # a textured square sliding over a still background: the background model finds it, and the pairs on its
    # leading and trailing edges have the square in front
    res = cli("evaluate", "--static-camera", video, "--out", tmp_path / "static", "--no-progress", "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["mode"] == "static-camera" and doc["pairs"] > 20 and doc["right"] > 0.6
    assert doc["counts"]["right"] == max(doc["counts"].values())
    res = cli("evaluate", "--static-camera", video, "--background", video, "--out", tmp_path / "x")
    assert res.returncode == 2 and "not allowed with" in res.stderr
