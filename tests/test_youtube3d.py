"""YouTube3D release reader on fixtures in the exact release format (Python 2 pickles included)."""

from __future__ import annotations

import io
import pickletools
from pathlib import Path

import numpy as np
import pytest
import torch
from dynocc_data.tools.fake_releases import (
    YouTube3DSample,
    py2_call_pickle,
    py2_list_pickle,
    py2_ndarray_pickle,
    two_colour_image,
    write_youtube3d_release,
)

from dynocc_data.datasets.youtube3d import (
    YouTube3DDataset,
    from_youtube3d_target,
    load_youtube3d_pkl,
    parse_youtube3d_csv,
    to_youtube3d_target,
)
from dynocc_data.errors import InputError

H, W = 24, 32
# Normalised targets and the pixels the release's reader makes of them (v * size, clip to [0, size-1], truncate).
TARGET = np.array(
    [
        [0.5, 0.26, 1.0, -0.1],  # y_A -> 12, 6, 23 (clipped), 0 (clipped)
        [0.999, 0.0, 0.5, 0.26],  # x_A -> 31, 0, 16, 8
        [0.1, 0.9, 0.0, 0.75],  # y_B -> 2, 21, 0, 18
        [0.25, 0.3, 1.2, 0.5],  # x_B -> 8, 9, 31 (clipped), 16
        [1.0, -1.0, 0.0, 1.0],
    ]
)
EXPECTED_PAIRS = torch.tensor([[12, 31, 2, 8], [6, 0, 21, 9], [23, 16, 0, 31], [0, 8, 18, 16]])
EXPECTED_ORDINAL = torch.tensor([1, -1, 0, 1])


def _disassemble(data: bytes) -> str:
    out = io.StringIO()
    pickletools.dis(data, out=out)
    return out.getvalue()


def test_fixture_pickles_look_like_python2(tmp_path: Path) -> None:
    small = _disassemble(py2_ndarray_pickle(TARGET))
    large = _disassemble(py2_ndarray_pickle(np.random.default_rng(0).random((5, 20)).astype(np.float32)))
    for text in (small, large):
        assert "PROTO      2" in text
        assert "GLOBAL     'numpy.core.multiarray _reconstruct'" in text
        assert "SHORT_BINSTRING 'b'" in text and "SHORT_BINSTRING '<'" in text
        for py3_only in ("BINUNICODE", "BINBYTES", "STACK_GLOBAL", "FRAME", "MEMOIZE"):
            assert py3_only not in text
    assert "SHORT_BINSTRING 'f8'" in small and "SHORT_BINSTRING 'f4'" in large
    assert " BINSTRING " in large  # 400 bytes of data: a long py2 str


def test_loads_python2_pickles(tmp_path: Path) -> None:
    path = tmp_path / "t.pkl"
    path.write_bytes(py2_ndarray_pickle(TARGET))
    loaded = load_youtube3d_pkl(path)
    assert loaded.dtype == np.float64 and loaded.flags.writeable
    np.testing.assert_array_equal(loaded, TARGET)
    f32 = np.random.default_rng(1).random((5, 70)).astype(np.float32)
    f32[4] = 1.0
    path.write_bytes(py2_ndarray_pickle(f32))
    np.testing.assert_array_equal(load_youtube3d_pkl(path), f32)


def test_malicious_pickle_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for module, name in (("posix", "system"), ("os", "system"), ("__builtin__", "eval"), ("builtins", "exec")):
        path = tmp_path / f"{module}.pkl"
        command = f"touch {marker}" if name == "system" else f"open({str(marker)!r}, 'w').close()"
        path.write_bytes(py2_call_pickle(module, name, command.encode()))
        with pytest.raises(InputError) as err:
            load_youtube3d_pkl(path)
        assert not marker.exists(), f"{module}.{name} was executed"
        assert str(err.value) == f"{path}: refusing to unpickle global {module}.{name}"


def test_non_array_and_bad_arrays_are_refused(tmp_path: Path) -> None:
    cases = {
        "list.pkl": (py2_list_pickle([0.1, 0.2]), "expected a numeric array of shape (5, N), got object of type list"),
        "shape.pkl": (py2_ndarray_pickle(TARGET[:4]), "got array of shape (4, 4)"),
        "ordinal.pkl": (py2_ndarray_pickle(np.vstack([TARGET[:4], [[2.0, 1, 1, 1]]])), "ordinal row"),
        "nan.pkl": (py2_ndarray_pickle(np.where(TARGET == 0.5, np.nan, TARGET)), "non-finite"),
        "truncated.pkl": (py2_ndarray_pickle(TARGET)[:100], "not a readable pickle"),
        "text.pkl": (b"image_path,pkl_path\n", "not a readable pickle"),
    }
    for name, (data, reason) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(InputError, match=str(path)) as err:
            load_youtube3d_pkl(path)
        assert reason in err.value.reason and "\n" not in str(err.value)


def test_target_conversion_mirrors_the_release_reader() -> None:
    pairs, ordinal = from_youtube3d_target(TARGET, (H, W))
    assert pairs.dtype == ordinal.dtype == torch.int64
    torch.testing.assert_close(pairs, EXPECTED_PAIRS)
    torch.testing.assert_close(ordinal, EXPECTED_ORDINAL)


def test_target_round_trip() -> None:
    gen = torch.Generator().manual_seed(3)
    for height, width in ((1, 1), (7, 13), (272, 640), (1080, 1920)):
        n = 200
        pairs = torch.stack(
            [torch.randint(0, s, (n,), generator=gen) for s in (height, width, height, width)], dim=1
        )
        ordinal = torch.randint(-1, 2, (n,), generator=gen)
        target = to_youtube3d_target(pairs, ordinal, (height, width))
        assert target.dtype == torch.float32 and target.shape == (5, n)
        assert bool(((target[:4] > 0) & (target[:4] < 1)).all())
        back_pairs, back_ordinal = from_youtube3d_target(target, (height, width))
        torch.testing.assert_close(back_pairs, pairs)
        torch.testing.assert_close(back_ordinal, ordinal)
    # the corner pixel is stored as its centre
    corner = to_youtube3d_target(torch.tensor([[0, 0, 3, 7]]), torch.tensor([1]), (4, 8))
    torch.testing.assert_close(corner[:, 0], torch.tensor([0.5 / 4, 0.5 / 8, 3.5 / 4, 7.5 / 8, 1.0]))
    with pytest.raises(ValueError, match="inside the 4x8 image"):
        to_youtube3d_target(torch.tensor([[0, 8, 0, 0]]), torch.tensor([1]), (4, 8))


def _release(root: Path, *, header: str | None = None) -> Path:
    samples = [
        YouTube3DSample(
            "./laundry_room_0001/shot_001/0001.jpg",
            "./laundry_room_0001/shot_001/colmap/0/0001_0.6_6000_col_reldepth.pkl",
            two_colour_image(H, W),
            py2_ndarray_pickle(TARGET),
        ),
        YouTube3DSample(
            "./kitchen_0002/shot_003/0042.jpg",
            "./kitchen_0002/shot_003/colmap/1/0042_0.6_6000_col_reldepth.pkl",
            two_colour_image(2 * H, W),
            py2_ndarray_pickle(TARGET[:, :2].astype(np.float32)),
        ),
    ]
    return write_youtube3d_release(root, samples, header=header)


def test_dataset_items_follow_the_contract(tmp_path: Path) -> None:
    csv_path = _release(tmp_path)
    assert csv_path.read_text().splitlines()[0] == (
        "./laundry_room_0001/shot_001/0001.jpg, ./laundry_room_0001/shot_001/colmap/0/0001_0.6_6000_col_reldepth.pkl"
    )
    ds = YouTube3DDataset(csv_path)
    assert len(ds) == 2
    item = ds[0]
    image = item["image"]
    assert image.dtype == torch.uint8 and image.shape == (3, H, W)
    left, right = image[:, :, : W // 2 - 2].float().mean((1, 2)), image[:, :, W // 2 + 2 :].float().mean((1, 2))
    assert left[0] > 200 and left[2] < 50 and right[2] > 200 and right[0] < 50  # RGB, not BGR
    torch.testing.assert_close(item["pairs"], EXPECTED_PAIRS)
    torch.testing.assert_close(item["ordinal"], EXPECTED_ORDINAL)
    assert item["meta"] == {
        "source": "youtube3d",
        "key": "laundry_room_0001/shot_001/0001.jpg",
        "video": str(tmp_path / "laundry_room_0001/shot_001/0001.jpg"),
        "frame": 0,
        "orig_size": (H, W),
        "target_path": str(tmp_path / "laundry_room_0001/shot_001/colmap/0/0001_0.6_6000_col_reldepth.pkl"),
    }
    second = ds[1]  # a taller image: y scales with its own height, float32 target
    assert second["meta"]["orig_size"] == (2 * H, W)
    torch.testing.assert_close(second["pairs"], torch.tensor([[24, 31, 4, 8], [12, 0, 43, 9]]))
    with pytest.raises(IndexError):
        ds[2]


def test_header_root_and_transform(tmp_path: Path) -> None:
    data = tmp_path / "data"
    csv_path = _release(data, header="image_path,pkl_path")
    moved = tmp_path / "lists" / "train.csv"
    moved.parent.mkdir()
    moved.write_text(csv_path.read_text())
    assert len(parse_youtube3d_csv(moved)) == 2

    def flip_order(item: dict) -> dict:
        item["ordinal"] = -item["ordinal"]
        return item

    ds = YouTube3DDataset(moved, root=data, transform=flip_order)
    torch.testing.assert_close(ds[0]["ordinal"], -EXPECTED_ORDINAL)
    with pytest.raises(InputError, match="cannot read image"):
        YouTube3DDataset(moved)[0]  # paths are relative to the CSV folder unless root is given


def test_malicious_target_in_dataset(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = py2_call_pickle("posix", "system", f"touch {marker}".encode())
    sample = YouTube3DSample("a.jpg", "a.pkl", two_colour_image(8, 8), payload)
    ds = YouTube3DDataset(write_youtube3d_release(tmp_path, [sample]))
    with pytest.raises(InputError, match="a.pkl: refusing to unpickle global posix.system"):
        ds[0]
    assert not marker.exists()


def test_malformed_csv_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("a.jpg, a.pkl\nb.jpg\n")
    with pytest.raises(InputError, match=r"bad.csv: line 2: expected 'image_path,pkl_path'"):
        YouTube3DDataset(bad)
    empty = tmp_path / "empty.csv"
    empty.write_text("\n")
    with pytest.raises(InputError, match="no samples"):
        YouTube3DDataset(empty)
    with pytest.raises(InputError, match="cannot read CSV"):
        YouTube3DDataset(tmp_path / "missing.csv")
