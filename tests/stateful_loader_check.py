"""Stop a training loop after k batches, save the loader's state, resume in a new process.

Run by tests/test_stateful_loading.py::

    python tests/stateful_loader_check.py --data DIR --mode full|save|resume --batches K --state FILE

``--data`` holds shard folders ``a`` and ``b`` (``--mix``: both mixed with a map-style dataset, else ``a``
alone). The loader is ``create_loader(..., num_workers=2, stateful=True)`` at epoch 1. ``full`` prints every batch
of the epoch; ``save`` reads ``K`` batches (``K`` may be 0), writes the loader's ``state_dict()`` as JSON to
``--state`` and prints the batches read; ``resume`` loads that state in this new process and prints the batches of
the rest of the epoch. A batch is one JSON line: its items, each [key, pairs, ordinal, digest of the image].
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import torch
from torch.utils.data import Dataset

from dynocc_data import DynOccDataset, create_loader, mix


class Numbers(Dataset):
    """A map-style dataset of 11 small items."""

    def __len__(self) -> int:
        return 11

    def __getitem__(self, index: int) -> dict:
        image = torch.full((3, 4, 4), index, dtype=torch.uint8)
        return {"image": image, "pairs": torch.tensor([[0, 0, 1, 1]]), "ordinal": torch.tensor([index % 3 - 1]),
                "meta": {"key": f"number{index}", "size": (4, 4), "source": "numbers"}}


def as_list(batch: list) -> list:
    """collate_fn keeping the items as they are."""
    return batch


def describe(item: dict) -> list:
    """What must match between runs: key, pairs, ordinal and the decoded image's bytes."""
    digest = hashlib.sha1(item["image"].numpy().tobytes()).hexdigest()
    return [item["meta"]["key"], item["pairs"].tolist(), item["ordinal"].tolist(), digest]


def main() -> None:
    """Build the loader, then read, save or resume."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--mode", required=True, choices=["full", "save", "resume"])
    parser.add_argument("--batches", type=int, default=0)
    parser.add_argument("--state", type=Path)
    parser.add_argument("--mix", action="store_true")
    args = parser.parse_args()

    shards = DynOccDataset(args.data / "a", shuffle=5, strategy="band", seed=3)
    dataset = shards if not args.mix else mix(
        [shards, DynOccDataset(args.data / "b", seed=4), Numbers()], [2, 1, 1], stop="all", seed=5)
    loader = create_loader(dataset, batch_size=3, num_workers=2, collate_fn=as_list, stateful=True)
    dataset.set_epoch(1)
    if args.mode == "resume":
        loader.load_state_dict(json.loads(args.state.read_text()))
    saving = args.mode == "save"
    if saving and args.batches == 0:
        args.state.write_text(json.dumps(loader.state_dict()))  # before the first batch
        return
    for n, batch in enumerate(loader):
        print(json.dumps([describe(item) for item in batch]))
        if saving and n + 1 == args.batches:
            args.state.write_text(json.dumps(loader.state_dict()))
            return


if __name__ == "__main__":
    main()
