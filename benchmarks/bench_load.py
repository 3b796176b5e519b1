"""Loading speed of DynOccDataset on 640x360 shards, against a bare JPEG-decode loop and a YouTube3D-style loader.

    python benchmarks/bench_load.py                      # about 40 s on 2 CPU cores
    python benchmarks/bench_load.py --samples 800 --json load.json

Makes the data first (not timed): two synthetic 640x360 clips go through ``dynocc_data.generation`` (real JPEGs,
stored pairs and dense boundary annotations), and their samples are written again under new keys into
``--shards`` shards of ``--samples`` samples in all (ShardWriter + index.json). Then, in this one process with
``--threads`` torch and OpenCV threads (default 1, what a DataLoader worker gets; extra OpenMP threads on a busy
machine slow the transforms down many times), items/s is the best of ``--repeats`` passes over all samples, the
setups taking turns within each round so that a busy machine slows them alike:

* **bare decode**: a loop that only decodes the same JPEG bytes (already in memory) with the same decoder
  (``torchvision.io.decode_jpeg``, RGB) — the floor any loader pays;
* **stored**: ``DynOccDataset(strategy="stored")``, full items (ratio to bare decode, target >= 0.8);
* **train**: ``DynOccDataset(strategy=--strategy)`` plus ``create_transform(train=True, size=--size,
  crop="random", color_jitter=0, to_float=False)``: the issue's "resampling strategy plus random crop and
  flip", ``uint8`` out (converted to float on the GPU; ratio to bare decode, target >= 0.6);
* **train, resized + float** (for information): the same with the default random *resized* crop (a resample)
  and ``float32`` output in the loader;
* **YouTube3D-style vs ours, same output**: a map-style dataset written as princeton-vl/YouTube3D's
  ``YoutubeDataset.__getitem__`` does it (a JPEG file per image read with ``cv2.imread``, a pickle per target —
  a ``5 x N`` float array the bench writes with ``pickle`` — coordinates scaled and clipped, ``cv2.resize`` to
  ``--size``, ``float32 [3,h,w]`` in [0, 1]) against ``DynOccDataset(strategy="stored", transform=
  create_transform(train=False, size=--size, antialias=False))``, which yields the same sizes and dtypes and
  samples like ``cv2.resize`` (bilinear, no antialiasing) (target: ours not slower);
* **DataLoader** items/s of the train setup with 0, 1 and 2 workers (``collate_pairs``, ``--batch-size``),
  counted from the first batch (worker start-up excluded);
* two **reference** rows that are not the package's way of loading, to show where the time goes: the train setup
  with the random crop and flip of the image done by ``v2.functional`` but the pairs moved by a few lines of numpy
  instead of ``tv_tensors.KeyPoints`` through v2 (what the v2 key-point path costs), and ``DynOccDataset(stored)``
  followed by nothing but ``v2.functional.resize`` and the float conversion of the image (the floor of any
  v2-based loader with the YouTube3D-style output: it reads, parses and decodes, but does no pair geometry).

No assertion: the figures are printed as a table and, with ``--json``, written to a file.
"""

from __future__ import annotations

import argparse
import io
import json
import pickle
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F


from dynocc_data.collate import collate_pairs  # noqa: E402
from dynocc_data.datasets.dynocc import DynOccDataset  # noqa: E402
from dynocc_data.datasets.youtube3d import to_youtube3d_target  # noqa: E402
from dynocc_data.format.sample import decode_sample  # noqa: E402
from dynocc_data.format.tar import expand_tars  # noqa: E402
from dynocc_data.generation import GenerateConfig, generate  # noqa: E402
from dynocc_data.generation.writer import ShardWriter, write_index  # noqa: E402
from dynocc_data.sampling import create_sampler, sample_generator  # noqa: E402
from dynocc_data.tools.synthetic import SceneConfig, make_scene, write_scene  # noqa: E402
from dynocc_data.transforms import create_transform  # noqa: E402

MEMBERS = ("jpg", "json", "pairs.npy", "ordinal.npy", "boundary.npy")


# ------------------------------------------------------------------------------------------ data


def generated_samples(work: Path, frames: int) -> list[dict[str, bytes]]:
    """Raw samples (member bytes) of a generation run on two synthetic 640x360 clips."""
    videos = []
    for seed in (7, 8):
        scene = make_scene(SceneConfig(height=360, width=640, num_frames=frames), seed=seed)
        video, _ = write_scene(scene, work / "clips", f"bench{seed}")
        videos.append(str(video))
    generate(videos, work / "generated", GenerateConfig(stride=2), progress=False)
    samples: dict[str, dict[str, bytes]] = {}
    for shard in sorted((work / "generated").glob("*.tar")):
        with tarfile.open(shard) as tf:
            for member in tf.getmembers():
                key, ext = member.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tf.extractfile(member).read()
    return [samples[k] for k in sorted(samples)]


def write_bench_shards(source: list[dict[str, bytes]], out: Path, total: int, shards: int) -> list[dict[str, Any]]:
    """Write ``total`` samples (``source`` cycled, new keys) into ``shards`` shards; returns them in order."""
    per_shard = -(-total // shards)
    written = []
    with ShardWriter(out, prefix="bench", max_count=per_shard) as writer:
        for i in range(total):
            members = dict(source[i % len(source)])
            meta = json.loads(members["json"])
            video_id = f"{meta['video_id']}-{i // len(source):03d}"
            meta.update(key=f"{video_id}_{meta['frame']:06d}", video_id=video_id)
            members["json"] = json.dumps(meta, sort_keys=True).encode()
            writer.write({"__key__": meta["key"], **members}, video_id=video_id, frame=meta["frame"])
            written.append(members)
    write_index(out)
    return written


def write_youtube3d_style(samples: list[dict[str, Any]], out: Path) -> list[tuple[str, str]]:
    """A JPEG file and a pickled normalised ``5 x N`` target per sample, as the YouTube3D release stores them."""
    out.mkdir(parents=True)
    entries = []
    for i, members in enumerate(samples):
        size = json.loads(members["json"])["size"]
        pairs = np.load(io.BytesIO(members["pairs.npy"]), allow_pickle=False)
        ordinal = np.load(io.BytesIO(members["ordinal.npy"]), allow_pickle=False)
        target = to_youtube3d_target(torch.from_numpy(pairs.astype(np.int64)),
                                     torch.from_numpy(ordinal.astype(np.int64)), size).double().numpy()
        image, pkl = out / f"{i:06d}.jpg", out / f"{i:06d}.pkl"
        image.write_bytes(members["jpg"])
        with open(pkl, "wb") as f:
            pickle.dump(target, f, 2)  # the bench's own file: trusted
        entries.append((str(image), str(pkl)))
    return entries


class YouTube3DStyle(Dataset):
    """The reading path of princeton-vl/YouTube3D's ``YoutubeDataset.__getitem__`` (no augmentation), returning
    the contract's field names: ``float32 [3,h,w]`` image in [0, 1] (RGB), ``int64`` pairs in output pixels."""

    def __init__(self, entries: list[tuple[str, str]], size: tuple[int, int]) -> None:
        self.entries, (self.height, self.width) = entries, size

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_name, pkl_name = self.entries[index]
        color = cv2.imread(image_name)
        with open(pkl_name, "rb") as f:
            target = pickle.load(f)  # trusted: written by this bench
        h, w = color.shape[:2]
        for row, (scale, out) in enumerate(((h, self.height), (w, self.width), (h, self.height), (w, self.width))):
            v = np.clip(target[row] * scale, 0, scale - 1)  # to source pixels, clipped (as their code)
            target[row] = np.clip(v / float(scale) * out, 0, out - 1)  # to output pixels, clipped
        color = cv2.resize(color, (self.width, self.height))
        color = np.ascontiguousarray(color[:, :, ::-1].transpose(2, 0, 1)).astype(np.float32) / 255.0  # RGB
        target = target.astype(np.int64)
        return {"image": torch.from_numpy(color), "pairs": torch.from_numpy(target[:4].T.copy()),
                "ordinal": torch.from_numpy(target[4].copy())}


# ------------------------------------------------------------------------------------------ timing


def best_rates(setups: dict[str, Callable[[], Iterable[Any] | int]], repeats: int) -> dict[str, float]:
    """Best items/s of each setup over ``repeats`` full passes (a setup returns its items or their number), the
    setups taking turns within each round (so that a busy machine slows them alike)."""
    best = dict.fromkeys(setups, 0.0)
    for _ in range(repeats):
        for name, run in setups.items():
            t0 = time.perf_counter()
            out = run()
            count = out if isinstance(out, int) else sum(1 for _ in out)
            best[name] = max(best[name], count / (time.perf_counter() - t0))
    return best


def read_only(urls: list[str]) -> Iterable[dict[str, Any]]:
    """Raw samples as DynOccDataset reads them (its tar reader, webdataset's grouping), nothing decoded."""
    return wds.DataPipeline(wds.SimpleShardList(urls), wds.pipelinefilter(wds.tariterators.url_opener)(),
                            wds.pipelinefilter(expand_tars)(handler=wds.reraise_exception),
                            wds.pipelinefilter(wds.tariterators.group_by_keys)())


def stage_costs(root: Path, strategy: str, train_tf: Any, eval_tf: Any, repeats: int) -> dict[str, float]:
    """Milliseconds per item of each stage of DynOccDataset, timed apart (in-memory samples except for the
    reading; best of ``repeats``, stages taking turns), to show where a loader's time goes."""
    urls = sorted(str(p) for p in root.glob("*.tar"))
    raw = [s for s, _ in zip(read_only(urls), range(100))]
    items = [decode_sample(s) for s in raw]
    plain = [{k: v for k, v in item.items() if k != "boundary"} for item in items]
    sampler = create_sampler(strategy)

    def each(fn: Callable[[int], Any]) -> Callable[[], int]:
        return lambda: sum(1 for i in range(len(items)) if fn(i) is not None)

    stages: dict[str, Callable[[], int]] = {
        "read shards (tar, group members)": lambda: sum(1 for _ in read_only(urls)),
        "JPEG decode": each(lambda i: decode_jpeg(torch.frombuffer(bytearray(raw[i]["jpg"]), dtype=torch.uint8),
                                                  mode=ImageReadMode.RGB)),
        "decode_sample minus the JPEG": each(lambda i: decode_sample(raw[i], decode_image=False)),
        f"pair strategy {strategy}": each(lambda i: sampler(items[i]["boundary"], items[i]["meta"]["size"],
                                                            sample_generator(0, 0, items[i]["meta"]["key"]))),
        "train transform (random crop, flip)": each(lambda i: train_tf(plain[i])),
        "eval transform (resize, float)": each(lambda i: eval_tf(plain[i])),
    }
    return {name: 1000 / rate for name, rate in best_rates(stages, repeats).items()}


class HandCropFlip:
    """Reference only: ``v2.RandomCrop(size)`` + ``v2.RandomHorizontalFlip()`` on the image with the pairs moved by
    numpy (integer pixel arithmetic) instead of ``tv_tensors.KeyPoints``; same draws as the package's transform."""

    def __init__(self, size: tuple[int, int]) -> None:
        self.crop = v2.RandomCrop(size)
        self.height, self.width = size

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        image = item["image"]
        params = self.crop.make_params([image])
        top, left = params["top"], params["left"]
        image = F.crop(image, top, left, self.height, self.width)
        pairs = item["pairs"].numpy() - (top, left, top, left)
        if torch.rand(1) < 0.5:
            image = F.horizontal_flip(image)
            pairs[:, 1::2] = self.width - 1 - pairs[:, 1::2]
        keep = (pairs.min(1) >= 0) & (pairs[:, 0::2].max(1) < self.height) & (pairs[:, 1::2].max(1) < self.width)
        return {**item, "image": image, "pairs": torch.from_numpy(pairs[keep]),
                "ordinal": torch.from_numpy(item["ordinal"].numpy()[keep])}


def resize_only(size: tuple[int, int]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Reference only: the image resized (bilinear, no antialiasing) and made float, pairs left as they are."""
    def run(item: dict[str, Any]) -> dict[str, Any]:
        image = F.to_dtype(F.resize(item["image"], list(size), antialias=False), torch.float32, scale=True)
        return {**item, "image": image}
    return run


def bare_decode(jpegs: list[bytes]) -> Iterable[torch.Tensor]:
    """Only the JPEG decode of every sample, bytes already in memory."""
    for data in jpegs:
        yield decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)


def loader_rate(dataset: Any, workers: int, batch_size: int, repeats: int) -> float:
    """DataLoader items/s counted from the first batch of each pass (worker start-up excluded); best pass."""
    best = 0.0
    for _ in range(repeats):
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate_pairs)
        it = iter(loader)
        next(it)
        t0, n = time.perf_counter(), 0
        for batch in it:
            n += batch["image"].shape[0]
        best = max(best, n / (time.perf_counter() - t0))
        del it, loader
    return best


# ------------------------------------------------------------------------------------------ main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=400, help="samples in the bench shards (default 400)")
    p.add_argument("--shards", type=int, default=4, help="number of shards (default 4)")
    p.add_argument("--frames", type=int, default=36, help="frames per synthetic clip (default 36)")
    p.add_argument("--strategy", default="band", help="load-time pair strategy of the train setup (default band)")
    p.add_argument("--size", type=int, nargs=2, default=(240, 320), metavar=("H", "W"),
                   help="output size of the train and YouTube3D-style setups (default 240 320)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5, help="passes per measurement, best one kept (default 5)")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    p.add_argument("--threads", type=int, default=1,
                   help="torch and OpenCV threads in this process (default 1, as in a DataLoader worker)")
    args = p.parse_args()
    size = tuple(args.size)
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        source = generated_samples(tmp, args.frames)
        written = write_bench_shards(source, tmp / "shards", args.samples, args.shards)
        entries = write_youtube3d_style(written, tmp / "youtube3d")
        jpegs = [m["jpg"] for m in written]
        meta = json.loads(written[0]["json"])
        n_pairs = np.mean([len(np.load(io.BytesIO(m["pairs.npy"]))) for m in source])
        n_boundary = np.mean([len(np.load(io.BytesIO(m["boundary.npy"]))) for m in source])
        print(f"data: {len(source)} generated samples ({meta['size'][0]}x{meta['size'][1]} JPEG, "
              f"{np.mean([len(j) for j in jpegs]) / 1024:.0f} KiB, {n_pairs:.0f} stored pairs, {n_boundary:.0f} "
              f"boundary points on average) written as {args.samples} samples in {args.shards} shards "
              f"({time.perf_counter() - t0:.1f} s, not timed)")
        print(f"torch threads {torch.get_num_threads()}, OpenCV threads {cv2.getNumThreads()}; "
              f"items/s = best of {args.repeats} passes")

        root = tmp / "shards"
        train_tf = create_transform(train=True, size=size, crop="random", color_jitter=0.0, to_float=False)
        resized_tf = create_transform(train=True, size=size, color_jitter=0.0)
        eval_tf = create_transform(train=False, size=size, antialias=False)
        youtube3d = YouTube3DStyle(entries, size)
        rates = best_rates({
            "bare_decode": lambda: bare_decode(jpegs),
            "stored": lambda: DynOccDataset(root, strategy="stored"),
            "train": lambda: DynOccDataset(root, strategy=args.strategy, transform=train_tf, keep_boundary=False),
            "train_resized": lambda: DynOccDataset(root, strategy=args.strategy, transform=resized_tf,
                                                   keep_boundary=False),
            "youtube3d_style": lambda: (youtube3d[i] for i in range(len(youtube3d))),
            "ours_same_output": lambda: DynOccDataset(root, strategy="stored", transform=eval_tf, keep_boundary=False),
            "ref_hand_pairs": lambda: DynOccDataset(root, strategy=args.strategy, transform=HandCropFlip(size),
                                                    keep_boundary=False),
            "ref_resize_only": lambda: DynOccDataset(root, strategy="stored", transform=resize_only(size),
                                                     keep_boundary=False),
        }, args.repeats)
        ours, theirs = next(iter(DynOccDataset(root, transform=eval_tf, keep_boundary=False))), youtube3d[0]
        same = all(ours[k].shape[1:] == theirs[k].shape[1:] and ours[k].dtype == theirs[k].dtype
                   for k in ("image", "pairs", "ordinal")) and ours["image"].shape == theirs["image"].shape
        torch.manual_seed(0)
        ours_train = list(DynOccDataset(root, strategy=args.strategy, transform=train_tf, keep_boundary=False))
        torch.manual_seed(0)
        hand = list(DynOccDataset(root, strategy=args.strategy, transform=HandCropFlip(size), keep_boundary=False))
        hand_same = all(torch.equal(a[k], b[k]) for a, b in zip(ours_train, hand) for k in ("image", "pairs", "ordinal"))
        stages = stage_costs(root, args.strategy, train_tf, eval_tf, args.repeats)
        train_ds = DynOccDataset(root, strategy=args.strategy, transform=train_tf, keep_boundary=False)
        for workers in (0, 1, 2):
            rates[f"loader_{workers}w"] = loader_rate(train_ds, workers, args.batch_size, max(1, args.repeats - 1))

    ratios = {
        "stored / bare decode": (rates["stored"] / rates["bare_decode"], 0.8),
        f"train ({args.strategy} + random crop/flip) / bare decode": (rates["train"] / rates["bare_decode"], 0.6),
        "ours / YouTube3D-style (same output)": (rates["ours_same_output"] / rates["youtube3d_style"], 1.0),
    }
    references = {
        "reference: train, pairs by numpy / bare decode": rates["ref_hand_pairs"] / rates["bare_decode"],
        "reference: resize-only floor / YouTube3D-style": rates["ref_resize_only"] / rates["youtube3d_style"],
    }
    print(f"\n{'setup':62s} {'items/s':>9s}")
    labels = {
        "bare_decode": "bare decode (decode_jpeg of the same bytes)",
        "stored": "DynOccDataset strategy=stored",
        "train": f"DynOccDataset strategy={args.strategy} + random crop/flip {size[0]}x{size[1]}, uint8",
        "train_resized": f"  same, random resized crop + flip {size[0]}x{size[1]}, float32",
        "youtube3d_style": f"YouTube3D-style (cv2.imread + pickle + cv2.resize {size[0]}x{size[1]})",
        "ours_same_output": f"DynOccDataset stored + resize {size[0]}x{size[1]} (same output)",
        **{f"loader_{w}w": f"DataLoader train setup, {w} workers, batch {args.batch_size}" for w in (0, 1, 2)},
        "ref_hand_pairs": "reference: train setup, pairs moved by numpy, not KeyPoints",
        "ref_resize_only": "reference: stored + resize + float, no pair handling",
    }
    for name, rate in rates.items():
        print(f"{labels[name]:62s} {rate:9.1f}")
    print(f"\n{'ratio':62s} {'value':>9s} {'target':>7s}")
    for name, (value, target) in ratios.items():
        print(f"{name:62s} {value:8.2f}x {'>=' + format(target, '.1f'):>7s} {'ok' if value >= target else 'MISSED'}")
    for name, value in references.items():
        print(f"{name:62s} {value:8.2f}x")
    print(f"same output sizes and dtypes as the YouTube3D-style loader: {same}")
    print(f"numpy-pairs reference yields the same items as the train setup (same seed): {hand_same}")
    print(f"\n{'stage (timed apart)':62s} {'ms/item':>9s}")
    for name, ms in stages.items():
        print(f"{name:62s} {ms:9.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "items_per_s": rates, "ratios": {k: v for k, (v, _) in ratios.items()},
            "targets": {k: t for k, (_, t) in ratios.items()}, "references": references, "stage_ms": stages,
            "samples": args.samples,
            "shards": args.shards,
            "size": list(size), "strategy": args.strategy, "threads": args.threads,
        }, indent=1))


if __name__ == "__main__":
    main()
