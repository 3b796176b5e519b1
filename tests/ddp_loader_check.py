"""Read DynOcc shards under real DDP and record what each rank saw (run by tests/test_loader.py).

    torchrun --standalone --nproc_per_node 2 tests/ddp_loader_check.py --urls SHARDS --out DIR

Every rank initialises a gloo process group, reads ``--epochs`` epochs of each ``--urls`` set through
``create_loader`` with ``--num-workers`` workers and writes ``DIR/rank<r>.json``: per set and epoch
``len(dataset)``, the keys in order, the batch count, and the batch counts of all ranks gathered with
``all_gather_object`` (proof the collective still works after the epoch, i.e. no rank was left waiting).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch.distributed as dist

from dynocc_data.datasets.loader import create_loader


def as_list(batch):
    """collate_fn keeping the items as they are."""
    return batch


def main() -> None:
    """Parse the arguments, read, gather, write the record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--urls", required=True, action="append", help="shards to read (repeat for several sets)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--shuffle", type=int, default=0)
    args = parser.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    os.environ.pop("RANK")  # the split must come from torch.distributed itself
    record = {"rank": rank, "world": world, "sets": []}
    for urls in args.urls:
        loader = create_loader(urls, batch_size=args.batch_size, num_workers=args.num_workers,
                               collate_fn=as_list, shuffle=args.shuffle, seed=5)
        epochs = []
        for epoch in range(args.epochs):
            loader.dataset.set_epoch(epoch)
            length = len(loader.dataset)
            batches = list(loader)
            keys = [item["meta"]["key"] for batch in batches for item in batch]
            gathered = [None] * world
            dist.all_gather_object(gathered, len(batches))
            epochs.append({"len": length, "keys": keys, "batches": len(batches), "all_batches": gathered})
        record["sets"].append(epochs)
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = args.out / f"rank{rank}.json.partial"
    tmp.write_text(json.dumps(record))
    tmp.rename(args.out / f"rank{rank}.json")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
