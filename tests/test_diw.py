"""DIW reader on a fixture in the release format: two CSV lines per sample, 1-based coordinates, *.thumb JPEGs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from dynocc_data.tools.fake_releases import (
    DIWSample,
    two_colour_image,
    write_diw_release,
    write_jpeg,
    write_png,
)

from dynocc_data.datasets._common import read_image_rgb
from dynocc_data.datasets.diw import DIWDataset, parse_diw_csv, scale_diw_coordinates
from dynocc_data.errors import InputError

H, W = 24, 32


def _release(root: Path) -> Path:
    samples = [
        DIWSample("./DIW_test/0001.thumb", two_colour_image(H, W), "5,10,20,30,>,32,24"),
        DIWSample("./DIW_test/0002.thumb", two_colour_image(H, W), "1,1,24,32,<,32,24"),
        # thumbnail at half the annotated size: coordinates are rescaled
        DIWSample("./DIW_test/0003.thumb", two_colour_image(H // 2, W // 2), "5,10,24,32,>,32,24"),
        DIWSample("./DIW_test/0004.thumb", two_colour_image(H // 2, W // 2), "1,3,23,31,<,32,24"),
    ]
    return write_diw_release(root, samples)


def test_items_follow_the_contract(tmp_path: Path) -> None:
    csv_path = _release(tmp_path)
    assert csv_path.read_text().splitlines()[:2] == ["./DIW_test/0001.thumb", "5,10,20,30,>,32,24"]
    ds = DIWDataset(csv_path)
    assert len(ds) == 4
    first = ds[0]
    image = first["image"]
    assert image.dtype == torch.uint8 and image.shape == (3, H, W)
    assert image[0, :, :12].float().mean() > 200 and image[2, :, 20:].float().mean() > 200  # RGB order
    torch.testing.assert_close(first["pairs"], torch.tensor([[4, 9, 19, 29]]))  # 1-based -> 0-based
    torch.testing.assert_close(first["ordinal"], torch.tensor([1]))  # '>' : A farther
    assert first["meta"] == {
        "source": "diw",
        "key": "DIW_test/0001.thumb",
        "video": str(tmp_path / "DIW_test/0001.thumb"),
        "frame": 0,
        "orig_size": (H, W),
        "annotated_size": (H, W),
        "line": 1,
    }
    second = ds[1]
    torch.testing.assert_close(second["pairs"], torch.tensor([[0, 0, 23, 31]]))  # the image corners
    torch.testing.assert_close(second["ordinal"], torch.tensor([-1]))  # '<' : A closer
    assert second["meta"]["line"] == 3


def test_coordinates_are_rescaled_to_the_decoded_image(tmp_path: Path) -> None:
    ds = DIWDataset(_release(tmp_path))
    third, fourth = ds[2], ds[3]
    assert third["meta"]["orig_size"] == (12, 16) and third["meta"]["annotated_size"] == (24, 32)
    # floor(c * 12/24) or floor(c * 16/32), at least 1, then 0-based: 5 -> 1, 10 -> 4, 24 -> 11, 32 -> 15
    torch.testing.assert_close(third["pairs"], torch.tensor([[1, 4, 11, 15]]))
    # 1 -> floor(0.5) = 0 -> clamped to 1 -> 0; 3 -> 0; 23 -> 10; 31 -> 14
    torch.testing.assert_close(fourth["pairs"], torch.tensor([[0, 0, 10, 14]]))
    assert all(int(p.max()) < 16 for p in (third["pairs"], fourth["pairs"]))


def test_equal_sizes_are_an_exact_shift() -> None:
    for height, width in ((7, 13), (240, 320), (1000, 999)):
        ys = torch.arange(1, height + 1, dtype=torch.float64)
        xs = torch.arange(1, width + 1, dtype=torch.float64)
        n = max(height, width)
        columns = [ys.repeat(n)[:n], xs.repeat(n)[:n], ys.flip(0).repeat(n)[:n], xs.flip(0).repeat(n)[:n]]
        coords = torch.stack(columns, 1)
        torch.testing.assert_close(scale_diw_coordinates(coords, (height, width), (height, width)), coords.long() - 1)


def test_root_and_transform(tmp_path: Path) -> None:
    csv_path = _release(tmp_path / "images")
    moved = tmp_path / "annotations" / "DIW_test.csv"
    moved.parent.mkdir()
    moved.write_text(csv_path.read_text())
    ds = DIWDataset(moved, root=tmp_path / "images", transform=lambda item: {**item, "image": item["image"].float()})
    assert ds[0]["image"].dtype == torch.float32
    with pytest.raises(InputError, match=r"DIW_test/0001.thumb: cannot read image"):
        DIWDataset(moved)[0]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("a.thumb\n5,10,20,30,?,32,24\n", "line 2: relation must be '>' or '<'"),
        (
            "a.thumb\n5,10,20,30,>,32,24\nb.thumb\n5,10,20,30,>,32\n",
            "line 4: expected 'y_A,x_A,y_B,x_B,rel,width,height'",
        ),
        ("a.thumb\nfive,10,20,30,>,32,24\n", "line 2: non-numeric"),
        ("a.thumb\n5,10,20,30,>,0,24\n", "line 2: image size must be positive"),
        ("a.thumb\n5,10,20,30,>,32,24\n\nb.thumb\n", "line 4: image path without an annotation line"),
        ("a.thumb\n5,10,20,30,>,32,24\n5,10,20,30,<,32,24\nb.thumb\n", "line 3: expected an image path"),
        ("\n\n", "no samples listed"),
    ],
)
def test_malformed_csv_names_file_and_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "DIW_bad.csv"
    path.write_text(content)
    with pytest.raises(InputError) as err:
        DIWDataset(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)
    assert "\n" not in str(err.value)


def test_parser_keeps_compact_arrays(tmp_path: Path) -> None:
    ann = parse_diw_csv(_release(tmp_path))
    assert ann.coords.shape == (4, 4) and ann.ordinal.tolist() == [1, -1, 1, -1]
    assert ann.sizes.tolist() == [[24, 32]] * 4 and ann.lines.tolist() == [1, 3, 5, 7]


def test_image_reader_decodes_by_content(tmp_path: Path) -> None:
    grey = torch.arange(12 * 10, dtype=torch.uint8).reshape(1, 12, 10)
    rgb = read_image_rgb(write_png(tmp_path / "grey.jpg", grey))  # a PNG behind a .jpg name
    assert rgb.shape == (3, 12, 10) and torch.equal(rgb[0], grey[0]) and torch.equal(rgb[2], grey[0])
    jpeg = read_image_rgb(write_jpeg(tmp_path / "x.thumb", two_colour_image(8, 8)))
    assert jpeg.shape == (3, 8, 8)
    junk = tmp_path / "junk.thumb"
    junk.write_bytes(b"\xff\xd8\xff" + b"not really a jpeg" * 4)
    with pytest.raises(InputError, match="junk.thumb: cannot decode image"):
        read_image_rgb(junk)
    empty = tmp_path / "empty.thumb"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty.thumb: image file is empty"):
        read_image_rgb(empty)
