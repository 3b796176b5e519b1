"""End-to-end generation speed at 640x360 and the share of time per stage.

    python benchmarks/bench_generate.py                 # default DIS flow on the CPU
    python benchmarks/bench_generate.py --flow raft --device cuda --raft-weights PATH

Makes one synthetic 640x360 clip (H.264, ``--frames`` long, so that per-video costs are amortised as on
real footage), runs ``dynocc_data.generation`` on it with default settings and prints:

* output frames/s (selected frames written or rejected per second of wall time) and input frames/s
  (decoded video frames per second);
* the wall time of each stage on the main thread and its share of the total: decode (time spent waiting
  for the prefetching decoder thread), flow, boundaries, order, refine, sampling, encode/write (time
  spent handing samples to the background writer thread, whose own busy time is printed too).

No assertion: numbers are measured in one run and printed.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
import json
import tempfile
import time
from pathlib import Path

import torch


from dynocc_data.generation import GenerateConfig, generate  # noqa: E402
from dynocc_data.tools.synthetic import SceneConfig, make_scene, write_scene  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=240, help="length of the clip (default 240)")
    p.add_argument("--flow", default="dis", choices=["dis", "raft"])
    p.add_argument("--device", default="auto")
    p.add_argument("--raft-weights", default=None, help="RAFT checkpoint (default: random weights, speed only)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--json", default=None, help="also write the figures to this file")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        scene = make_scene(SceneConfig(height=360, width=640, num_frames=args.frames), seed=7)
        video, _ = write_scene(scene, tmp / "clip", "bench")
        print(f"made a 640x360 clip of {args.frames} frames in {time.perf_counter() - t0:.1f} s")
        config = GenerateConfig()
        if args.flow == "raft":
            config = replace(config, flow="raft", flow_options={"size": "large", "weights": args.raft_weights})
        # warm up (imports, OpenCV and torch kernels) on a short run, so the measurement is steady state
        generate([str(video)], tmp / "warm", config, device=args.device, progress=False,
                 batch_size=args.batch_size).frames_processed
        t0 = time.perf_counter()
        summary = generate([str(video)], tmp / "out", config, device=args.device, progress=False,
                           batch_size=args.batch_size)
        wall = time.perf_counter() - t0

    stages = dict(summary.stage_seconds)
    background = stages.pop("encode/write (background)", 0.0)
    total = sum(stages.values())
    frames = summary.frames_processed
    decoded = frames * config.stride  # every frame between selected ones is decoded
    print(f"device: {args.device} ({'cuda' if torch.cuda.is_available() else 'cpu'} available), "
          f"flow: {args.flow}, torch threads: {torch.get_num_threads()}")
    print(f"{frames} output frames (stride {config.stride}, gap {config.gap}) in {wall:.2f} s wall: "
          f"{frames / wall:.2f} output frames/s, {decoded / wall:.1f} input frames/s")
    print(f"pairs: {summary.pairs} ({summary.pairs_per_frame:.0f} per written frame)")
    print(f"{'stage':14s} {'seconds':>8s} {'ms/frame':>9s} {'share':>7s}")
    for name in ("decode", "flow", "boundaries", "order", "refine", "sampling", "encode/write"):
        sec = stages.get(name, 0.0)
        print(f"{name:14s} {sec:8.2f} {1000 * sec / max(frames, 1):9.1f} {sec / total:7.1%}")
    other = wall - total
    print(f"{'(untimed)':14s} {other:8.2f} {1000 * other / max(frames, 1):9.1f}   (bookkeeping, progress)")
    print(f"JPEG encoding and shard writing ran in a background thread for {background:.2f} s "
          f"({1000 * background / max(frames, 1):.1f} ms/frame), overlapping the stages above")
    print(f"flow share of the timed stages: {stages.get('flow', 0) / total:.1%}; "
          f"of the wall time: {stages.get('flow', 0) / wall:.1%}")
    if args.json:
        Path(args.json).write_text(json.dumps({"output_fps": frames / wall, "input_fps": decoded / wall,
                                               "wall": wall, "stages": stages, "frames": frames}, indent=1))


if __name__ == "__main__":
    main()
