"""First use: the public names, configs checked where they are built, the command line's parse-time checks."""

from __future__ import annotations

import argparse
import dataclasses
import logging

import pytest

import dynocc_data
from dynocc_data.errors import ConfigError
from dynocc_data.generation.config import GenerateConfig, RunOptions
from dynocc_data.tools.cli import build_parser



def test_generate_is_the_function_in_every_import_form():
    from dynocc_data import GenerateConfig as Config, generate

    assert callable(generate) and generate.__module__ == "dynocc_data.generation.launch"
    assert Config is GenerateConfig
    import dynocc_data.generation.launch  # noqa: F401 - importing the submodules must not shadow the function
    import dynocc_data.generation.writer  # noqa: F401

    assert callable(dynocc_data.generate) and dynocc_data.generate is generate


@pytest.mark.parametrize("kwargs, message", [
    ({"stride": 0}, "stride: must be an integer >= 1, got 0"),
    ({"gap": 0}, "gap: must be an integer >= 1, got 0"),
    ({"max_side": -5}, "max_side: must be an integer >= 16 or None, got -5"),
    ({"jpeg_quality": 500}, "jpeg_quality: must be an integer from 1 to 100, got 500"),
    ({"sampler": "nope"}, "sampler: must be one of 'band', 'boundary', 'multiscale', 'uniform', got 'nope'"),
    ({"flow": "farneback"}, "flow: must be one of 'dis', 'raft', got 'farneback'"),
    ({"decoder": "ffmpeg"}, "decoder: must be one of 'auto', 'decord', 'pyav', 'torchcodec', got 'ffmpeg'"),
    ({"stride": 2.5}, "stride: must be an integer >= 1, got 2.5"),
    ({"sampler_options": {"spacing": -1.0}}, "sampler_options: "),
])
def test_generate_config_is_checked_at_construction(kwargs, message):
    with pytest.raises(ConfigError) as caught:
        GenerateConfig(**kwargs)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_configs_are_frozen_and_changed_with_replace():
    config = GenerateConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.stride = 2  # type: ignore[misc]
    assert dataclasses.replace(config, stride=2).stride == 2 and config.stride == 4
    with pytest.raises(ConfigError, match="stride"):
        dataclasses.replace(config, stride=0)
    with pytest.raises(ConfigError, match="batch_size: must be an integer >= 1, got 0"):
        RunOptions(batch_size=0)
    with pytest.raises(ConfigError, match="device"):
        RunOptions(device="tpu")
    with pytest.raises(dataclasses.FrozenInstanceError):
        RunOptions().resume = True  # type: ignore[misc]



@pytest.mark.parametrize("argv, option", [
    (["generate", "v.mp4", "--out", "o", "--stride", "0"], "--stride"),
    (["generate", "v.mp4", "--out", "o", "--gap", "0"], "--gap"),
    (["generate", "v.mp4", "--out", "o", "--max-side", "-5"], "--max-side"),
    (["generate", "v.mp4", "--out", "o", "--jpeg-quality", "500"], "--jpeg-quality"),
    (["show", "s", "--out", "o", "--limit", "0"], "--limit"),
    (["show", "s", "--out", "o", "--columns", "0"], "--columns"),
    (["evaluate", "--scenes", "0"], "--scenes"),
    (["evaluate", "--size", "360"], "--size"),
])
def test_bad_option_values_fail_at_parse_time_in_one_line(argv, option, capsys):
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(argv)
    err = capsys.readouterr().err
    assert caught.value.code == 2
    assert err.count("\n") == 1 and f"argument {option}" in err and "expected" in err


def test_every_option_has_help_and_shows_its_default():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        text = sub.format_help()
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
            has_default = action.default not in (None, False, argparse.SUPPRESS) and not action.required
            if has_default and action.option_strings:
                assert f"default: {action.default}" in " ".join(text.split()) or "(default" in action.help, (
                    name, action.option_strings)
    generate = subparsers.choices["generate"].format_help()
    assert "PyAV on the CPU, decord on CUDA" in " ".join(generate.split())


def test_verbose_works_before_and_after_the_subcommand():
    parser = build_parser()
    assert parser.parse_args(["-v", "stats", "s"]).verbose
    assert parser.parse_args(["stats", "s", "-v"]).verbose
    assert not parser.parse_args(["stats", "s"]).verbose


def test_demo_is_reproducible_and_logs_plain_lines_once(tmp_path, caplog):
    """Two demo runs give the same pairs (one-thread x264 encodes are byte-identical); off a terminal no
    progress bar, one log line per video, and no line twice."""
    from dynocc_data.datasets.dynocc import DynOccDataset
    from dynocc_data.generation.pipeline import progress_bars
    from dynocc_data.tools.demo import run_demo

    assert not progress_bars(True)  # pytest's stderr is not a terminal
    runs = []
    for name in ("a", "b"):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="dynocc_data"):
            result = run_demo(tmp_path / name, progress=True)
        messages = [rec.getMessage().replace(str(tmp_path / name), "OUT") for rec in caplog.records]
        assert len(messages) == len(set(messages)), messages
        assert sum("frames written" in m for m in messages) == 2  # one plain line per video
        items = list(DynOccDataset(tmp_path / name / "shards"))
        runs.append([(it["meta"]["key"], it["pairs"].tolist(), it["ordinal"].tolist()) for it in items])
        assert result["items"] == len(items) > 0
    assert runs[0] == runs[1]



def test_lossless_scene_video_decodes_to_its_frames(tmp_path):
    import av
    import cv2
    import numpy as np

    from dynocc_data.tools.synthetic import SceneConfig, make_scene, write_scene

    scene = make_scene(SceneConfig(height=64, width=96, num_frames=8), seed=3)
    video, _ = write_scene(scene, tmp_path, "s", lossless=True)
    with av.open(str(video)) as container:
        planes = [f.to_ndarray(format="yuv420p") for f in container.decode(video=0)]
    expected = [cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2YUV_I420) for f in scene.frames]
    assert len(planes) == len(expected) and all(np.array_equal(a, b) for a, b in zip(planes, expected))


def test_a_failed_run_leaves_out_usable(tmp_path):
    from dynocc_data import generate
    from dynocc_data.errors import DynOccError
    from dynocc_data.tools.synthetic import demo_scenes

    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    out = tmp_path / "out"
    with pytest.raises(DynOccError, match="no video could be processed"):
        generate([str(bad)], out, progress=False)
    assert list(out.glob("ledger-r*.jsonl"))  # the failed run's journal is there...
    video = demo_scenes(tmp_path / "v")[0]
    summary = generate([str(video)], out, progress=False)  # ...and no obstacle
    assert summary.videos_done == 1 and summary.shards >= 1
    with pytest.raises(DynOccError, match="already holds shards"):  # a run that did write shards is protected
        generate([str(video)], out, progress=False)


def test_evaluate_twice_into_one_folder(tmp_path):
    from dynocc_data.tools.evaluate import evaluate_synthetic
    from dynocc_data.tools.synthetic import _DEMO_CONFIG

    first = evaluate_synthetic(tmp_path / "e", num_scenes=2, seed=7, scene_config=_DEMO_CONFIG, progress=False)
    second = evaluate_synthetic(tmp_path / "e", num_scenes=1, seed=7, scene_config=_DEMO_CONFIG, progress=False)
    assert len(list((tmp_path / "e" / "scenes").glob("*.mp4"))) == 1
    assert second.to_dict()["pairs"] <= first.to_dict()["pairs"]


def test_dependency_floors_are_the_tested_versions():
    """pyproject's torch/torchvision floors: at least the first torchvision with tv_tensors.KeyPoints (0.23), and
    not above what this environment runs (the suite passing here is what the floor claims)."""
    import re
    from pathlib import Path

    import torch
    import torchvision
    from torchvision import tv_tensors

    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    floors = {name: tuple(int(v) for v in version.split(".")) for name, version in
              re.findall(r'"(torch|torchvision)>=([0-9.]+)"', text)}

    def version(module) -> tuple[int, ...]:
        return tuple(int(v) for v in module.__version__.split("+")[0].split(".")[:2])

    assert floors["torchvision"] >= (0, 23) and hasattr(tv_tensors, "KeyPoints")
    assert version(torch) >= floors["torch"] and version(torchvision) >= floors["torchvision"]
