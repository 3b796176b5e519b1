"""Batching of ordinal-pair items: stacked images, padded pairs with a mask, lists for the rest."""

from __future__ import annotations

import collections

import pytest
import torch
from torch.utils.data import DataLoader

from dynocc_data.collate import collate_pairs, to_device
from dynocc_data.errors import InputError


def item(num_pairs: int, key: str, size: tuple[int, int] = (6, 8), boundary: bool = False) -> dict:
    """An item per docs/FORMAT.md whose pair i is (i, i+1, i+2, i+3) and ordinal alternates +1/-1."""
    out = {
        "image": torch.full((3, *size), num_pairs, dtype=torch.uint8),
        "pairs": torch.arange(num_pairs)[:, None] + torch.arange(4),
        "ordinal": torch.tensor([1, -1] * num_pairs)[:num_pairs],
        "meta": {"source": "dynocc", "key": key, "video": "v.mp4", "frame": 0, "orig_size": size},
    }
    if boundary:
        out["boundary"] = {"y": torch.zeros(2), "x": torch.ones(2)}
    return out


def test_padded_batch_shapes_values_and_mask():
    batch = collate_pairs([item(3, "a"), item(0, "b"), item(5, "c", boundary=True)])
    assert batch["image"].shape == (3, 3, 6, 8) and batch["image"].dtype == torch.uint8
    assert torch.equal(batch["image"][:, 0, 0, 0], torch.tensor([3, 0, 5], dtype=torch.uint8))
    assert batch["pairs"].shape == (3, 5, 4) and batch["pairs"].dtype == torch.int64
    assert batch["ordinal"].shape == (3, 5) and batch["ordinal"].dtype == torch.int64
    expected_mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(batch["pair_mask"], expected_mask)
    assert torch.equal(batch["num_pairs"], torch.tensor([3, 0, 5]))
    assert torch.equal(batch["pairs"][0, :3], item(3, "a")["pairs"])
    assert (batch["pairs"][~expected_mask] == 0).all() and (batch["ordinal"][~expected_mask] == 0).all()
    assert torch.equal(batch["ordinal"][2], torch.tensor([1, -1, 1, -1, 1]))
    assert [m["key"] for m in batch["meta"]] == ["a", "b", "c"]
    assert batch["boundary"][:2] == [None, None] and torch.equal(batch["boundary"][2]["x"], torch.ones(2))


def test_unpadded_batch_keeps_lists():
    items = [item(2, "a"), item(4, "b")]
    batch = collate_pairs(items, pad=False)
    assert "pair_mask" not in batch and "boundary" not in batch
    assert [p.shape for p in batch["pairs"]] == [(2, 4), (4, 4)]
    assert all(torch.equal(p, it["pairs"]) for p, it in zip(batch["pairs"], items))
    assert all(torch.equal(o, it["ordinal"]) for o, it in zip(batch["ordinal"], items))
    assert batch["image"].shape == (2, 3, 6, 8)


def test_other_fields_are_collected_as_lists():
    items = [dict(item(1, "a"), weight=0.5), item(1, "b")]
    assert collate_pairs(items)["weight"] == [0.5, None]


def test_mismatched_image_sizes_name_the_item():
    with pytest.raises(InputError, match=r"^b: image is 3x7x8 uint8 but the batch's first image is 3x6x8 uint8"):
        collate_pairs([item(1, "a"), item(1, "b", size=(7, 8))])
    with pytest.raises(ValueError, match="empty"):
        collate_pairs([])


def test_dataloader_uses_it_as_collate_fn():
    items = [item(n, f"k{n}") for n in (1, 2, 3, 4)]
    loader = DataLoader(items, batch_size=2, collate_fn=collate_pairs)
    shapes = [tuple(b["pairs"].shape) for b in loader]
    assert shapes == [(2, 2, 4), (2, 4, 4)]


def test_to_device_moves_every_tensor_and_keeps_the_rest():
    Pair = collections.namedtuple("Pair", "a b")
    batch = collate_pairs([item(2, "a", boundary=True), item(1, "b")])
    batch["extra"] = Pair(torch.zeros(1), "text")
    moved = to_device(batch, "meta")  # the meta device: a real move without a GPU
    assert all(moved[k].device.type == "meta" for k in ("image", "pairs", "ordinal", "pair_mask", "num_pairs"))
    assert moved["boundary"][0]["y"].device.type == "meta" and moved["boundary"][1] is None
    assert isinstance(moved["extra"], Pair) and moved["extra"].a.device.type == "meta" and moved["extra"].b == "text"
    assert moved["meta"] == batch["meta"]
    assert batch["image"].device.type == "cpu"  # the input batch is left alone
