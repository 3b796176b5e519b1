"""Milliseconds per 640x360 frame pair for each DIS preset, and for RAFT when CUDA is available.

    python benchmarks/bench_flow.py [--repeats 10] [--size 360x640] [--raft-weights PATH|default]

RAFT runs with random weights unless ``--raft-weights`` is given: the speed does not depend on them.
"""

from __future__ import annotations

import argparse
import logging
import time

import cv2
import numpy as np
import torch

from dynocc_data.generation.flow import create_flow


def make_pair(height: int, width: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth random texture and its copy shifted by (3, -2) px, as uint8 [B,3,H,W]."""
    noise = np.random.default_rng(0).random((height, width, 3)).astype(np.float32)
    image = cv2.normalize(cv2.GaussianBlur(noise, (0, 0), 2.0), None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    src = torch.from_numpy(image).permute(2, 0, 1)
    dst = torch.from_numpy(np.roll(image, (-2, 3), axis=(0, 1))).permute(2, 0, 1)
    return src.expand(batch, -1, -1, -1).contiguous(), dst.expand(batch, -1, -1, -1).contiguous()


def time_ms(estimator, src: torch.Tensor, dst: torch.Tensor, repeats: int) -> float:
    """Median wall time per pair in ms, after one warm-up call."""
    cuda = estimator.device.type == "cuda"
    estimator(src, dst)
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        estimator(src, dst)
        if cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000 / src.shape[0])
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--size", default="360x640", help="HxW of the frames")
    parser.add_argument("--raft-weights", default=None, help="'default' or a checkpoint path (default: random)")
    parser.add_argument("--raft-batch", type=int, default=8)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    height, width = map(int, args.size.lower().split("x"))

    src, dst = make_pair(height, width, 1)
    print(f"{height}x{width}, cv2 threads {cv2.getNumThreads()}, torch threads {torch.get_num_threads()}")
    for preset in ("ultrafast", "fast", "medium"):
        ms = time_ms(create_flow("dis", preset=preset), src, dst, args.repeats)
        print(f"dis/{preset:<10} {ms:8.1f} ms/pair")

    if not torch.cuda.is_available():
        print("raft: skipped (no CUDA)")
        return
    src, dst = make_pair(height, width, args.raft_batch)
    for size in ("small", "large"):
        for amp in (True, False):
            est = create_flow("raft", size=size, weights=args.raft_weights, device="cuda",
                              batch_size=args.raft_batch, amp=amp)
            ms = time_ms(est, src, dst, args.repeats)
            print(f"raft/{size:<5} {est.params['precision']} x{args.raft_batch} {ms:8.1f} ms/pair")


if __name__ == "__main__":
    main()
