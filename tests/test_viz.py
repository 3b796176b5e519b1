"""Overlays, legend, contact sheets and ``show`` on small shards written in the exact format."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from fixtures_shards import write_shards, write_tar

from dynocc_data.errors import InputError
from dynocc_data.format.sample import encode_sample
from dynocc_data.generation.writer import ShardWriter, write_index
from dynocc_data.tools.cli import main
from dynocc_data.tools.viz import (
    BACKGROUND,
    CLOSER,
    EQUAL,
    FARTHER,
    SHEET_NAME,
    contact_sheet,
    draw_overlay,
    legend_strip,
    show,
)

REPO = Path(__file__).resolve().parents[1]


def boundary(points: list[tuple[float, float, float, float]]) -> dict[str, torch.Tensor]:
    """Boundary dict of ``(y, x, ny, nx)`` points, confidence 0.9, jump 2, one segment."""
    arr = torch.tensor(points, dtype=torch.float32).reshape(-1, 4)
    n = len(arr)
    return {"y": arr[:, 0], "x": arr[:, 1], "ny": arr[:, 2], "nx": arr[:, 3], "confidence": torch.full((n,), 0.9),
            "segment": torch.zeros(n, dtype=torch.int64), "jump": torch.full((n,), 2.0)}


def write_sample(writer: ShardWriter, video_id: str, frame: int, size: tuple[int, int], pairs: list, ordinal: list,
                 points: list) -> str:
    """Encode one sample (a flat dark grey frame) as the generator does and add it to ``writer``."""
    key = f"{video_id}_{frame:06d}"
    ok, jpeg = cv2.imencode(".jpg", np.full((*size, 3), 40, np.uint8))
    assert ok
    meta = {"key": key, "video": f"{video_id}.mp4", "video_id": video_id, "frame": frame, "orig_size": list(size),
            "size": list(size), "scale": 1.0, "fps": 25.0, "num_pairs": len(pairs), "num_boundary": len(points),
            "flow": {"backend": "dis"}, "params": {}, "version": "0.1.0"}
    writer.write(encode_sample(key, jpeg.tobytes(), meta, np.array(pairs, np.int32).reshape(-1, 4),
                               np.array(ordinal, np.int8), boundary(points)), video_id=video_id, frame=frame)
    return key


@pytest.fixture
def mixed_shards(tmp_path: Path) -> Path:
    """Two videos of different aspect ratios (48x96 wide, 64x32 tall), 2 frames each, in one shard + index.json."""
    root = tmp_path / "shards"
    with ShardWriter(root, prefix="t") as w:
        for frame in (0, 4):
            write_sample(w, "wide-00000001", frame, (48, 96), [[10, 20, 10, 40], [30, 80, 40, 60]], [1, -1],
                         [(10, 30, 0, -1)])
            write_sample(w, "tall-00000002", frame, (64, 32), [[5, 5, 50, 25]], [0], [(32, 16, 1, 0)])
    write_index(root)
    return root


def is_colour(pixel: np.ndarray, colour: tuple[int, int, int], tol: int = 3) -> bool:
    return bool(np.all(np.abs(pixel.astype(int) - np.array(colour)) <= tol))


def test_overlay_points_and_boundary_sides() -> None:
    item = {"image": torch.full((3, 20, 30), 40, dtype=torch.uint8),
            "pairs": torch.tensor([[5, 5, 5, 20], [12, 25, 2, 25], [17, 3, 17, 27]]),
            "ordinal": torch.tensor([1, -1, 0]),
            "boundary": boundary([(15, 10, 0, 1)])}  # front side towards +x
    o = draw_overlay(item, scale=2)
    assert o.shape == (40, 60, 3) and o.dtype == np.uint8
    # +1: A (5,5) is farther, B (5,20) closer; -1: A (12,25) closer; 0: both grey
    assert is_colour(o[10, 40], CLOSER) and is_colour(o[10, 10], FARTHER)
    assert is_colour(o[24, 50], CLOSER) and is_colour(o[4, 50], FARTHER)
    assert is_colour(o[34, 6], EQUAL) and is_colour(o[34, 54], EQUAL)
    r, g, b = (o[30, 22].astype(int))  # 1 px right of the boundary point at (30, 20): front, green
    assert g > r + 100 and g > b + 100
    r, g, b = (o[30, 19].astype(int))  # left: back, magenta
    assert r > g + 80 and b > g + 80
    assert is_colour(o[0, 0], (30, 30, 30))  # the image, dimmed to 75 %


def test_overlay_draws_discs_over_lines() -> None:
    # the second pair's line passes over the first pair's closer point: the disc must stay visible
    item = {"image": torch.zeros((3, 20, 20), dtype=torch.uint8), "pairs": torch.tensor([[10, 10, 10, 2],
                                                                                          [10, 18, 10, 4]]),
            "ordinal": torch.tensor([-1, -1])}
    o = draw_overlay(item, scale=2)
    assert is_colour(o[20, 20], CLOSER)


def test_legend_strip_wraps_to_width() -> None:
    wide, narrow = legend_strip(900), legend_strip(200)
    assert wide.shape[1] == 900 and narrow.shape[1] == 200
    assert narrow.shape[0] > wide.shape[0]  # more lines
    for colour in (CLOSER, FARTHER):
        assert (np.abs(wide.astype(int) - colour).max(-1) <= 3).any()


def test_contact_sheet_rows_fill_the_width_without_padding() -> None:
    tiles = [np.full((100, 200, 3), 200, np.uint8), np.full((200, 100, 3), 120, np.uint8)]
    sheet = contact_sheet(tiles, columns=2, tile_width=320, gap=0)
    # aspects 2 and 0.5 share one height: 640 / 2.5 = 256, widths 512 and 128
    assert sheet.shape == (256, 640, 3)
    assert (sheet[:, :512] == 200).all() and (sheet[:, 512:] == 120).all()
    captioned = contact_sheet(tiles, captions=["a", "b"], columns=2, tile_width=320, gap=0)
    assert captioned.shape == (256 + 18, 640, 3)


def test_contact_sheet_mixed_aspects_has_no_big_gaps() -> None:
    shapes = [(272, 640), (144, 176), (300, 200), (100, 100), (272, 640), (144, 176), (50, 400), (144, 176),
              (120, 160)]
    tiles = [np.full((*s, 3), 60 + 20 * i, np.uint8) for i, s in enumerate(shapes)]
    sheet = contact_sheet(tiles, columns=4, tile_width=160, gap=2)
    assert sheet.shape[1] == 4 * 160 + 3 * 2
    bg = (sheet == np.array(BACKGROUND, np.uint8)).all(-1)
    full_rows = 2  # two full rows of 4, then one tile alone
    row_h = [int(r) for r in np.flatnonzero(bg.all(1))]  # horizontal separator lines
    assert len(row_h) == full_rows * 2  # the separators are exactly `gap` rows
    top = bg[: row_h[-1] + 1]  # the two full rows and the separators below them
    # inside full rows only the 3 separator columns (2 px each) are background
    assert top.sum() == 4 * sheet.shape[1] + 3 * 2 * (len(top) - 4)
    # the last row holds one tile of typical height, left-aligned, the rest background
    last = bg[row_h[-1] + 1:]
    assert 0 < (~last).sum(1).max() < sheet.shape[1] / 2


def test_contact_sheet_checks_input() -> None:
    with pytest.raises(ValueError):
        contact_sheet([])
    with pytest.raises(ValueError):
        contact_sheet([np.zeros((4, 4, 3), np.uint8)], captions=["a", "b"])


def test_show_writes_overlays_and_a_sheet(mixed_shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "show"
    paths = show(mixed_shards, out, limit=10, columns=2, scale=2)
    assert [p.name for p in paths] == ["wide-00000001_000000.png", "tall-00000002_000000.png",
                                       "wide-00000001_000004.png", "tall-00000002_000004.png", SHEET_NAME]
    assert not list(out.glob("*.partial"))
    wide = cv2.cvtColor(cv2.imread(str(paths[0])), cv2.COLOR_BGR2RGB)
    legend_h = legend_strip(192).shape[0]
    assert wide.shape == (48 * 2 + legend_h, 96 * 2, 3)
    # pair (10,20)-(10,40) labelled +1: the closer point is B = (10, 40); pair 2 labelled -1: A = (30, 80) closer
    assert is_colour(wide[20, 80], CLOSER, 6) and is_colour(wide[20, 40], FARTHER, 6)
    assert is_colour(wide[60, 160], CLOSER, 6) and is_colour(wide[80, 120], FARTHER, 6)
    tall = cv2.cvtColor(cv2.imread(str(paths[1])), cv2.COLOR_BGR2RGB)
    assert tall.shape[:2] == (64 * 2 + legend_strip(64).shape[0], 64)
    assert is_colour(tall[10, 10], EQUAL, 6) and is_colour(tall[100, 50], EQUAL, 6)
    sheet = cv2.imread(str(paths[-1]))
    assert sheet.shape[1] == 2 * 320 + 2


def test_show_spreads_samples_over_the_data(tmp_path: Path) -> None:
    shards = write_shards(tmp_path / "s", [5, 5, 5])
    paths = show(shards.root, tmp_path / "out", limit=3)
    assert [p.stem for p in paths[:-1]] == [shards.keys[0], shards.keys[5], shards.keys[10]]
    paths = show(shards.pattern, tmp_path / "out2", limit=4, spread=False)
    assert [p.stem for p in paths[:-1]] == shards.keys[:4]


def test_show_reads_a_bare_tar(tmp_path: Path) -> None:
    shards = write_shards(tmp_path / "s", [4], index=False)
    paths = show(shards.paths[0], tmp_path / "out", limit=2)
    assert [p.stem for p in paths[:-1]] == shards.keys[:2] and paths[-1].is_file()


def test_show_without_samples_is_an_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.tar"
    write_tar(empty, [])
    with pytest.raises(InputError, match="empty.tar: no samples to show"):
        show(empty, tmp_path / "out")
    assert not (tmp_path / "out" / SHEET_NAME).exists()


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "dynocc_data.tools.cli", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_cli_show(mixed_shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    done = run_cli("show", str(mixed_shards), "--out", str(out), "--limit", "3", "--columns", "3")
    assert done.returncode == 0, done.stderr
    assert f"wrote 3 overlays and the contact sheet {out / SHEET_NAME}" in done.stdout
    assert len(list(out.glob("*.png"))) == 4


def test_cli_show_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["show", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"dynocc-data: error: {tmp_path / 'nowhere'}")
    assert not (tmp_path / "out").exists()
