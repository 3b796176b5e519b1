"""Scaling figures of ``dynocc-data generate``: worker processes and memory on long videos.

    python benchmarks/bench_scale.py                       # both parts, default sizes
    python benchmarks/bench_scale.py --skip-memory         # throughput only (about a minute with the clips cached)
    python benchmarks/bench_scale.py --cache /tmp/bench    # keep the rendered videos for the next run
    python benchmarks/bench_scale.py --restore             # only the loader's restore time (about a minute)
    python benchmarks/bench_scale.py --plan                # planning time only (100,000 entries, 1,000 ranks)

1. **Throughput**: a few synthetic 640x360 clips (``synthetic.make_scene``) generated with 1 and with 2 worker
   processes (``--workers``); prints frames/s (selected frames per second of wall time, process start
   included) and the ratio.
2. **Memory**: peak RSS of a generation run on a long synthetic 1280x720 video (``--long-minutes``, default 10
   minutes = 15000 frames at 25 fps) and on a short one (``--short-minutes``, default 1). The videos are rendered
   frame by frame (a textured background panning, textured discs and boxes moving in front of it) and encoded
   progressively with PyAV/libx264 (``fast`` preset), so the benchmark itself never holds a video in memory.
   Generation selects every ``--stride``-th frame over the *whole* video (decode and processing span its full
   length) and runs in a child process; its peak RSS comes from ``os.wait4`` (``ru_maxrss``). Measured once
   per decoder of ``--decoders`` (default ``auto``, which is PyAV on the CPU, and ``decord``): decord2 keeps
   decoding ahead in the background while the pipeline is busy with earlier frames, which costs up to about
   1 GB more on long videos before it levels off (hence PyAV is the CPU default); PyAV's footprint stays
   flat.

3. **Loader restore** (``--restore``, alone): seconds from ``load_state_dict`` to the first item of a
   ``DynOccDataset`` (and to the first batch of a 2-worker ``StatefulDataLoader``) stopped at 0, 25, 50 and 90 %
   of an epoch, against reading and discarding the items before (see :func:`loader_restore`).
4. **Planning** (``--plan`` runs only this part): seconds to deal ``--plan-entries`` (default 100,000) fake manifest
   entries (random frame counts) into ``--plan-ranks`` (default 1,000) chunks with the manifest's heap-based
   greedy (``manifest.balance``, O(n log k)), and to build and write the manifest JSON, against the greedy
   ``launch.partition`` every rank computed before (O(n k)), measured in the same run on the same entries
   (medians of ``--plan-repeats`` runs; ``partition`` ``--partition-repeats`` times, default 1, as it is slow). Both
   deal the same groups (checked).

Every generation run is ``python -m dynocc_data.tools.cli generate`` in a fresh process. No assertion: figures are
printed (and written with ``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]


from bench_load import generated_samples, write_bench_shards  # noqa: E402 (benchmarks/ is the script's folder)

from dynocc_data import DynOccDataset, create_loader  # noqa: E402
from dynocc_data.tools.synthetic import SceneConfig, make_scene, write_scene  # noqa: E402

# ------------------------------------------------------------------------------------------------ rendering


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Colourful multi-scale noise (uint8 HxWx3): enough texture everywhere for optical flow."""
    out = np.zeros((h, w, 3), np.float32)
    for cell, weight in ((64, 0.5), (16, 0.3), (4, 0.2)):
        small = rng.random((max(2, h // cell), max(2, w // cell), 3), dtype=np.float32)
        out += weight * cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(out * 255, 0, 255).astype(np.uint8)


class LayeredVideo:
    """Frames of a long video made on the fly in constant memory: a textured background panning back and forth
    and ``sprites`` textured discs and boxes bouncing in front of it (moving occlusion boundaries)."""

    def __init__(self, size: tuple[int, int] = (720, 1280), sprites: int = 4, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.h, self.w = size
        self.pan = 160
        self.background = _texture(rng, self.h, self.w + self.pan)
        self.sprites = []
        for i in range(sprites):
            side = int(rng.integers(self.h // 6, self.h // 3))
            yy, xx = np.mgrid[:side, :side]
            mask = ((yy - side / 2) ** 2 + (xx - side / 2) ** 2 <= (side / 2) ** 2) if i % 2 == 0 else \
                np.ones((side, side), bool)
            start = rng.uniform([0, 0], [self.h - side, self.w - side])
            velocity = rng.uniform(1.5, 4.0, size=2) * rng.choice([-1, 1], size=2)
            self.sprites.append((_texture(rng, side, side), mask, start, velocity))

    @staticmethod
    def _bounce(x: np.ndarray, span: np.ndarray) -> np.ndarray:
        """Triangle wave: positions moving back and forth within ``[0, span]``."""
        period = 2 * span
        x = np.mod(x, period)
        return np.where(x > span, period - x, x)

    def frame(self, t: int) -> np.ndarray:
        """RGB uint8 HxWx3 frame ``t``."""
        off = int(self._bounce(np.array(t * 0.8), np.array(self.pan)))
        img = self.background[:, off:off + self.w].copy()
        for tex, mask, start, velocity in self.sprites:
            side = tex.shape[0]
            y, x = self._bounce(start + velocity * t, np.array([self.h - side, self.w - side])).astype(int)
            region = img[y:y + side, x:x + side]
            region[mask] = tex[mask]
        return img


def encode_long_video(path: Path, minutes: float, fps: int = 25, size: tuple[int, int] = (720, 1280)) -> float:
    """Render and encode ``minutes`` of :class:`LayeredVideo` to ``path`` (H.264, preset fast); returns seconds."""
    import av

    t0 = time.perf_counter()
    video = LayeredVideo(size)
    tmp = path.with_name(path.name + ".part")
    with av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "fast", "crf": "23"}
        for t in range(int(round(minutes * 60 * fps))):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(video.frame(t), format="rgb24")))
        container.mux(stream.encode(None))
    os.replace(tmp, path)
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------ runs


def run_generate(inputs: list[Path], out: Path, *args: str) -> dict:
    """``dynocc-data generate`` in a child process: wall seconds, peak RSS (MiB) and its stats.json."""
    cmd = [sys.executable, "-m", "dynocc_data.tools.cli", "generate", *map(str, inputs), "--out", str(out),
           "--no-progress", *args]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"generate failed ({proc.returncode}):\n{stderr.decode(errors='replace')[-3000:]}")
    stats = json.loads((out / "stats.json").read_text())
    return {"wall_s": round(wall, 2), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "stats": stats}


def throughput(work: Path, args: argparse.Namespace) -> dict:
    clips = work / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    videos = []
    for i in range(args.videos):
        name = f"clip{i}-{args.frames}f"  # the frame count in the name: a cache never serves the wrong length
        path = clips / f"{name}.mp4"
        if not path.exists():
            write_scene(make_scene(SceneConfig(height=360, width=640, num_frames=args.frames), seed=100 + i),
                        clips, name)
        videos.append(path)
    results = {}
    for workers in (1, 2):
        out = Path(tempfile.mkdtemp(dir=work, prefix=f"w{workers}-"))
        r = run_generate(videos, out, "--workers", str(workers))
        frames = r["stats"]["frames_processed"]
        results[workers] = {"frames": frames, "wall_s": r["wall_s"], "frames_per_s": round(frames / r["wall_s"], 3),
                            "peak_rss_mib": r["peak_rss_mib"]}
        print(f"  {workers} worker(s): {frames} frames in {r['wall_s']:.1f} s = "
              f"{results[workers]['frames_per_s']:.2f} frames/s (peak RSS of the largest process "
              f"{r['peak_rss_mib']:.0f} MiB)")
    ratio = results[2]["frames_per_s"] / results[1]["frames_per_s"]
    print(f"  speed-up with 2 workers: {ratio:.2f}x on {os.cpu_count()} CPU(s), "
          f"load average before: {args.load_before}")
    return {"per_workers": results, "speedup_2_vs_1": round(ratio, 3)}


def memory(work: Path, args: argparse.Namespace) -> dict:
    videos = {}
    for label, minutes in (("short", args.short_minutes), ("long", args.long_minutes)):
        videos[label] = video = work / f"layered_{minutes:g}min.mp4"
        if not video.exists():
            secs = encode_long_video(video, minutes)
            print(f"  rendered and encoded {minutes:g} min of 1280x720 ({int(minutes * 60 * 25)} frames) in "
                  f"{secs:.0f} s, {video.stat().st_size / 2**20:.0f} MiB")
    figures = {}
    for decoder in args.decoders.split(","):
        results = {}
        for label, minutes in (("short", args.short_minutes), ("long", args.long_minutes)):
            out = Path(tempfile.mkdtemp(dir=work, prefix=f"mem-{decoder}-{label}-"))
            r = run_generate([videos[label]], out, "--workers", "1", "--stride", str(args.stride),
                             "--decoder", decoder)
            s = r["stats"]
            results[label] = {"minutes": minutes, "frames_in_video": int(minutes * 60 * 25),
                              "frames_processed": s["frames_processed"], "frames_written": s["frames_written"],
                              "wall_s": r["wall_s"], "peak_rss_mib": r["peak_rss_mib"]}
            print(f"  --decoder {decoder}, {minutes:g} min: {s['frames_processed']} selected frames (every "
                  f"{args.stride}th, whole video), {s['frames_written']} written, {r['wall_s']:.0f} s, "
                  f"peak RSS {r['peak_rss_mib']:.0f} MiB")
        ratio = results["long"]["peak_rss_mib"] / results["short"]["peak_rss_mib"]
        print(f"  --decoder {decoder}: peak RSS long / short {ratio:.3f} "
              f"(long: {results['long']['peak_rss_mib'] / 1024:.2f} GiB)")
        figures[decoder] = {**results, "rss_ratio_long_vs_short": round(ratio, 3)}
    return figures


# ------------------------------------------------------------------------------------------------ planning

import statistics  # noqa: E402

from dynocc_data.generation.launch import partition  # noqa: E402
from dynocc_data.generation.manifest import Chunk, Manifest, balance  # noqa: E402
from dynocc_data.generation.video import VideoSource  # noqa: E402


def planning(work: Path, args: argparse.Namespace) -> dict:
    """Planning time of ``--plan-entries`` fake entries into ``--plan-ranks`` chunks: heap LPT vs ``partition``."""
    n, k = args.plan_entries, args.plan_ranks
    rng = np.random.default_rng(0)
    frames = rng.integers(100, 100_000, size=n).tolist()
    sources = [VideoSource(f"/data/clip{i:06d}.mp4", "file", f"clip{i:06d}.mp4") for i in range(n)]

    def timed(fn, repeats: int) -> tuple[float, object]:
        times, result = [], None
        for _ in range(repeats):
            t0 = time.perf_counter()
            result = fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times), result

    def plan_and_write() -> list[list[int]]:
        groups = balance(frames, k)
        manifest = Manifest(str(work), "0" * 12, {}, ("/data",),
                            tuple(Chunk(c, tuple(sources[i] for i in g), tuple(frames[i] for i in g))
                                  for c, g in enumerate(groups)))
        (work / "manifest.json").write_text(json.dumps(manifest.to_dict()))
        return groups

    heap_s, groups = timed(lambda: balance(frames, k), args.plan_repeats)
    write_s, _ = timed(plan_and_write, args.plan_repeats)
    greedy_s, parts = timed(lambda: partition(sources, k, frames), args.partition_repeats)
    same = [[int(s.rel[4:10]) for s in p] for p in parts] == groups
    loads = [sum(frames[i] for i in g) for g in groups]
    figures = {"entries": n, "ranks": k, "heap_lpt_s": round(heap_s, 4), "heap_lpt_and_manifest_s": round(write_s, 4),
               "partition_s": round(greedy_s, 3), "speedup": round(greedy_s / heap_s, 1), "same_groups": same,
               "max_over_mean_load": round(max(loads) / (sum(loads) / k), 5)}
    print(f"  heap LPT (manifest.balance):      {heap_s:8.3f} s  (median of {args.plan_repeats})")
    print(f"  heap LPT + manifest.json written: {write_s:8.3f} s  (median of {args.plan_repeats})")
    print(f"  launch.partition (greedy O(n k)): {greedy_s:8.3f} s  (median of {args.partition_repeats})")
    print(f"  speedup {figures['speedup']}x, same groups: {same}, heaviest chunk / mean: "
          f"{figures['max_over_mean_load']}")
    return figures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=4, help="640x360 clips for the throughput part (default 4)")
    p.add_argument("--frames", type=int, default=240,
                   help="frames per clip (default 240: enough work that process start-up does not dominate)")
    p.add_argument("--long-minutes", type=float, default=10.0)
    p.add_argument("--short-minutes", type=float, default=1.0)
    p.add_argument("--stride", type=int, default=50, help="frame stride of the memory runs (default 50)")
    p.add_argument("--decoders", default="auto,decord",
                   help="decoders of the memory runs, comma-separated (default auto,decord: auto is PyAV on "
                        "the CPU)")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--cache", default=None, help="folder keeping the rendered videos between runs")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    p.add_argument("--plan", action="store_true", help="only the planning part")
    p.add_argument("--plan-entries", type=int, default=100_000)
    p.add_argument("--plan-ranks", type=int, default=1_000)
    p.add_argument("--plan-repeats", type=int, default=5)
    p.add_argument("--partition-repeats", type=int, default=1)
    add_restore_arguments(p)
    args = p.parse_args()
    if args.restore:
        return restore_main(args)
    if args.plan:
        args.skip_throughput = args.skip_memory = True
    args.load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    figures = {"cpus": os.cpu_count(), "load_average_before": args.load_before}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.cache) if args.cache else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if not args.skip_throughput:
            print(f"throughput: {args.videos} synthetic 640x360 clips of {args.frames} frames (stride 4)")
            figures["throughput"] = throughput(work, args)
        if not args.skip_memory:
            print(f"memory: {args.short_minutes:g}- and {args.long_minutes:g}-minute synthetic 1280x720 videos")
            figures["memory"] = memory(work, args)
        print(f"planning: {args.plan_entries} fake manifest entries into {args.plan_ranks} chunks/ranks")
        figures["planning"] = planning(work, args)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")


# ------------------------------------------------------------------------------------------ loader restore time
# (self-contained: python benchmarks/bench_scale.py --restore)


def add_restore_arguments(p: argparse.ArgumentParser) -> None:
    """The ``--restore`` section's options."""
    p.add_argument("--restore", action="store_true",
                   help="only the loader's restore time versus the position in the epoch (DynOccDataset."
                        "load_state_dict to the first item, against iterating and discarding)")
    p.add_argument("--restore-samples", type=int, default=2000, help="samples in the restore shards (default 2000)")
    p.add_argument("--restore-shards", type=int, default=40, help="shards holding them (default 40)")
    p.add_argument("--restore-shuffle", type=int, default=500, help="shuffle buffer of the restore runs (default 500)")
    p.add_argument("--restore-at", default="0,25,50,90", help="positions in the epoch, in %% (default 0,25,50,90)")


def _first_item_seconds(make: Any, state: dict | None, discard: int) -> float:
    """Seconds from building a dataset to its first item, through ``load_state_dict(state)`` when given.

    Without a state, ``discard`` items are read and thrown away first (the naive way).
    """
    t0 = time.perf_counter()
    dataset = make()
    dataset.set_epoch(1)
    if state is not None:
        dataset.load_state_dict(state)
    items = iter(dataset)
    for _ in range(discard):
        next(items)
    next(items)
    return time.perf_counter() - t0


def _first_batch_seconds(make: Any, state: dict | None, discard: int) -> float:
    """As :func:`_first_item_seconds` through ``create_loader(stateful=True)`` with 2 workers (batches of 8)."""
    t0 = time.perf_counter()
    loader = _restore_loader(make)
    if state is not None:
        loader.load_state_dict(state)
    batches = iter(loader)
    for _ in range(discard):
        next(batches)
    next(batches)
    seconds = time.perf_counter() - t0
    del batches
    return seconds


def _restore_loader(make: Any) -> Any:
    """The StatefulDataLoader of the loader rows: 2 workers, batches of 8 items kept as lists, epoch 1."""
    dataset = make()
    dataset.set_epoch(1)
    return create_loader(dataset, batch_size=8, num_workers=2, collate_fn=list, stateful=True)


def loader_restore(work: Path, args: argparse.Namespace) -> dict:
    """Restore time of ``DynOccDataset`` at several positions of an epoch, against iterating and discarding.

    640x360 samples from two synthetic clips (``benchmarks/bench_load.py``'s data, written under new keys into
    ``--restore-shards`` shards), ``shuffle=--restore-shuffle``: read in this process (num_workers=0: the same
    code runs in each DataLoader worker), and through ``create_loader(stateful=True)`` with 2 workers and batches
    of 8 (worker start-up included on both sides). Each position's state comes from a run stopped there (not
    timed).
    """
    shards = work / "restore_shards"
    if not (shards / "index.json").is_file():
        write_bench_shards(generated_samples(work / "restore_clips", 36), shards, args.restore_samples,
                           args.restore_shards)

    def make() -> Any:
        return DynOccDataset(shards, shuffle=args.restore_shuffle, seed=0)

    total = len(make())
    rows = []
    print(f"{'':>20} {'dataset, no workers':^28} {'StatefulDataLoader, 2 workers':^30}")
    print(f"{'position':>9} {'items':>10} {'restore s':>10} {'naive s':>9} {'ratio':>7} {'restore s':>10} "
          f"{'naive s':>9} {'ratio':>7}  state bytes")
    for percent in (float(x) for x in args.restore_at.split(",")):
        k = min(total - 1, int(total * percent / 100))
        stopped = make()
        stopped.set_epoch(1)
        items = iter(stopped)
        for _ in range(k):
            next(items)
        state = json.loads(json.dumps(stopped.state_dict()))  # as saved in a checkpoint
        del items, stopped
        restored = _first_item_seconds(make, state, 0)
        naive = _first_item_seconds(make, None, k)
        stopped_loader = _restore_loader(make)
        batches = iter(stopped_loader)
        for _ in range(k // 8):
            next(batches)
        loader_state = json.loads(json.dumps(stopped_loader.state_dict()))
        del batches, stopped_loader
        loader_restored = _first_batch_seconds(make, loader_state, 0)
        loader_naive = _first_batch_seconds(make, None, k // 8)
        rows.append({"percent": percent, "items": k, "restore_s": restored, "naive_s": naive,
                     "loader_restore_s": loader_restored, "loader_naive_s": loader_naive,
                     "state_bytes": len(json.dumps(state))})
        print(f"{percent:>8g}% {k:>10} {restored:>10.3f} {naive:>9.3f} {naive / restored:>6.1f}x "
              f"{loader_restored:>10.3f} {loader_naive:>9.3f} {loader_naive / loader_restored:>6.1f}x  "
              f"{rows[-1]['state_bytes']}")
    return {"samples": total, "shards": args.restore_shards, "shuffle": args.restore_shuffle, "rows": rows}


def restore_main(args: argparse.Namespace) -> None:
    """The ``--restore`` section alone."""
    figures = {"cpus": os.cpu_count(), "load_average_before": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.cache) if args.cache else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        print(f"loader restore: {args.restore_samples} samples of 640x360 in {args.restore_shards} shards, "
              f"shuffle {args.restore_shuffle}; seconds from load_state_dict to the first item")
        figures["restore"] = loader_restore(work, args)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
