"""``dynocc-data``: the command line.

    dynocc-data demo [--out DIR]                      generate from built-in scenes, read back, draw overlays
    dynocc-data generate INPUT... --out DIR [...]      videos / folders / frame folders / list files -> shards
    dynocc-data plan INPUT... --out URL [--chunks K]   probe sizes once, write a manifest of balanced chunks
    dynocc-data generate --manifest URL [--chunk I]    one chunk (or SLURM_ARRAY_TASK_ID), or claim chunks
    dynocc-data merge DIR                              index.json + stats.json from the ranks of a parallel run
    dynocc-data evaluate [--scenes N] [--seed S] ...   score the pipeline on synthetic scenes with ground truth
    dynocc-data show SHARDS --out DIR                  per-sample overlays and a contact sheet
    dynocc-data stats SHARDS                           pairs per frame, offsets, confidences, label balance
    dynocc-data convert youtube3d|diw|dense CSV --out DIR    re-pack YouTube3D / DIW / dense depth as shards

The library logs; this module prints the summaries.

Longer than 500 lines because every option is declared here with its help text, default and parse-time check
(one place for what the command line accepts).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import NoReturn, get_args

from .. import _version, storage
from ..errors import DynOccError
from ..format.dense import DEPTH_KINDS
from ..generation import GenerateConfig, generate
from ..generation.chunks import ChunkMerge, generate_manifest, merge_chunks
from ..generation.config import DIS_DEFAULTS, DecoderName, FlowName, RunOptions
from ..generation.launch import WorkerFailure, merge_run, rank_from_env
from ..generation.manifest import MANIFEST_NAME, plan_manifest, write_manifest
from ..storage import exists, join
from .convert import FORMATS as CONVERT_FORMATS
from .convert import convert
from .demo import run_demo
from .evaluate import (
    EVAL_SCENE_CONFIG,
    EvalResult,
    evaluate_semireal,
    evaluate_static_camera,
    evaluate_synthetic,
    format_result,
    pooled,
)
from .reference import format_mask_result
from .semireal import SEMIREAL_CONFIG
from .stats import format_summary, shard_stats
from .viz import show

__all__ = ["add_generation_options", "build_parser", "generation_config_from_args", "main"]

log = logging.getLogger("dynocc_data")


# ------------------------------------------------------------------------------------- options
# Values are checked here, at parse time (argparse type functions: one line naming the option and the allowed
# range, exit status 2), and again by the frozen configs they build (GenerateConfig, RunOptions).


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``low``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
        return value
    parse.__name__ = f"integer >= {low}"  # argparse names the type in some messages
    return parse


def int_between(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer in ``[low, high]``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected an integer from {low} to {high}, got {text!r}")
        return value
    parse.__name__ = f"integer {low}-{high}"
    return parse


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _positive_or_zero(text: str) -> float:
    """Parse a finite number >= 0 (an argparse type)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def add_generation_options(p: argparse.ArgumentParser) -> None:
    """Add the options of a generation run (``generate``, ``plan``, ``evaluate``, the Ray recipe) to a parser.

    Args:
        p: the parser (or subcommand parser) to add them to.
    """
    d = GenerateConfig()
    g = p.add_argument_group("frames")
    g.add_argument("--stride", type=int_at_least(1), default=d.stride, help="process every STRIDE-th frame")
    g.add_argument("--gap", type=int_at_least(1), default=d.gap,
                   help="flow between frames GAP apart (counted at --reference-fps: slower videos use fewer)")
    g.add_argument("--reference-fps", type=_positive_or_zero, default=d.reference_fps,
                   help="the frame rate GAP is counted at: a slower video uses GAP*fps/this frames, at least 1 "
                        "(0: GAP frames whatever the rate)")
    g.add_argument("--max-side", type=int_at_least(0), default=d.max_side,
                   help="resize so the longer side is at most this (>= 16); 0 keeps the size")
    g.add_argument("--max-frames", type=int_at_least(1), default=None,
                   help="at most this many selected frames per video (default: all)")
    g.add_argument("--decoder", default=d.decoder, choices=get_args(DecoderName),
                   help="video decoder; auto: PyAV on the CPU, decord on CUDA (decord falls back to PyAV on a file "
                        "it cannot read)")
    f = p.add_argument_group("flow")
    f.add_argument("--flow", default=d.flow, choices=get_args(FlowName), help="optical flow backend")
    f.add_argument("--dis-preset", default=None, choices=["ultrafast", "fast", "medium"],
                   help="plain OpenCV DIS preset instead of the tuned default (medium, denser patches, "
                        "stronger variational refinement)")
    f.add_argument("--raft-size", default="large", choices=["large", "small"], help="RAFT model (with --flow raft)")
    f.add_argument("--raft-weights", default="default",
                   help="RAFT checkpoint path, or 'default' for torchvision's weights (needs them cached or a "
                        "connected machine)")
    f.add_argument("--raft-iters", type=int_at_least(1), default=12, help="RAFT refinement iterations")
    f.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where flow (RAFT) and post-processing run")
    f.add_argument("--batch-size", type=int_at_least(1), default=4, help="frames processed together")
    o = p.add_argument_group("output")
    o.add_argument("--seed", type=int_at_least(0), default=d.seed,
                   help="seed of pair sampling (the same seed gives byte-identical shards)")
    o.add_argument("--max-pairs", type=int_at_least(1), default=d.max_pairs, help="stored pairs per frame at most")
    o.add_argument("--jpeg-quality", type=int_between(1, 100), default=d.jpeg_quality,
                   help="JPEG quality of the stored frames")
    o.add_argument("--shard-size", type=int_at_least(1), default=1000, help="samples per shard at most")
    o.add_argument("--prefix", default="dynocc", help="shard name prefix")


def output_url(text: str) -> str:
    """An output folder: a path, a ``file:`` URL or an fsspec URL whose back end is installed (checked here).

    Args:
        text: the option's value.

    Returns:
        The path (``file:`` URLs become paths) or the URL.

    Raises:
        argparse.ArgumentTypeError: for ``pipe:``/``http(s)`` URLs and schemes without an installed fsspec back
            end (e.g. ``s3://`` without ``s3fs``).
    """
    try:
        return storage.check_url(text)
    except storage.StorageError as err:
        raise argparse.ArgumentTypeError(err.reason) from None


def generation_config_from_args(args: argparse.Namespace) -> GenerateConfig:
    """The :class:`GenerateConfig` of options parsed with :func:`add_generation_options`.

    Args:
        args: the parsed command line.

    Returns:
        The validated config.
    """
    if args.flow == "raft":
        flow_options = {"size": args.raft_size, "weights": args.raft_weights, "num_flow_updates": args.raft_iters}
    elif args.dis_preset:
        flow_options = {"preset": args.dis_preset}
    else:
        flow_options = dict(DIS_DEFAULTS)
    return GenerateConfig(stride=args.stride, gap=args.gap, reference_fps=args.reference_fps or None,
                          max_side=args.max_side or None,
                          max_frames=args.max_frames, flow=args.flow, flow_options=flow_options, decoder=args.decoder,
                          max_pairs=args.max_pairs, jpeg_quality=args.jpeg_quality, seed=args.seed)


def _print_summary(summary) -> None:
    d = summary.to_dict()
    print(f"videos: {d['videos_done']} done, {len(d['failed'])} failed, {d['videos_skipped']} skipped (resume)")
    for f in d["failed"]:
        print(f"  failed: {f['video']}: {f['reason']}")
    for f in d["no_pairs"]:
        print(f"  no pairs: {f['video']}: {f['reason']}")
    rej = ", ".join(f"{v} {k}" for k, v in sorted(d["frames_rejected"].items())) or "none"
    print(f"frames: {d['frames_processed']} processed, {d['frames_written']} written (rejected: {rej})")
    print(f"pairs: {d['pairs']} ({d['pairs_per_frame']:.1f} per written frame) in {d['shards']} shard(s)")
    print(f"time: {d['seconds']:.1f} s, {d['frames_per_second']:.2f} frames/s")


# ------------------------------------------------------------------------------------- commands


def cmd_plan(args: argparse.Namespace) -> int:
    """``dynocc-data plan``: probe the inputs once and write the manifest of chunks."""
    manifest = plan_manifest(args.inputs, args.out, generation_config_from_args(args), chunk_frames=args.chunk_frames,
                             chunks=args.chunks)
    write_manifest(manifest)
    weights = [c.weight for c in manifest.chunks]
    videos = sum(len(c.videos) for c in manifest.chunks)
    print(f"planned {videos} video(s) into {len(weights)} chunk(s) of {min(weights)} to {max(weights)} frames "
          f"({len(manifest.input_errors)} input(s) rejected)")
    print(f"wrote {manifest.url}; run: dynocc-data generate --manifest {args.out} [--chunk I] (same options)")
    return 0


def _print_chunk_merge(result: ChunkMerge, out: str) -> int:
    _print_summary(result.summary)
    for u in result.unfinished:
        print(f"  chunk {u['chunk']} not finished: {len(u['unfinished'])} video(s)")
    print(f"wrote {join(out, 'index.json')} ({result.index['num_samples']} samples) and {join(out, 'stats.json')} "
          f"({result.chunks - len(result.unfinished)} of {result.chunks} chunks done)")
    return 1 if result.unfinished else 0


def _cmd_generate_manifest(args: argparse.Namespace) -> int:
    """``generate --manifest``: one chunk, or claim chunks until all are done."""
    if args.inputs or args.out:
        raise DynOccError("--manifest: the inputs and --out come from the manifest; give neither")
    options = RunOptions(device=args.device, batch_size=args.batch_size, prefix=args.prefix,
                         shard_size=args.shard_size, progress=False, workers=args.workers,
                         video_timeout=args.video_timeout, lease_ttl=args.lease_ttl, staging=args.staging)
    result = generate_manifest(args.manifest, generation_config_from_args(args), options, chunk=args.chunk)
    if isinstance(result, ChunkMerge):
        return _print_chunk_merge(result, result.summary.out)
    if result is None:
        print("nothing left to run here (chunk finished, or every chunk claimed and done; rank 0 merges)")
    else:
        _print_summary(result)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """``dynocc-data generate``: a whole run, or a manifest's chunks."""
    if args.manifest is not None:
        return _cmd_generate_manifest(args)
    for flag, value in (("--chunk", args.chunk), ("--video-timeout", args.video_timeout)):
        if value is not None:  # never accepted and then ignored: only a manifest run watches its videos
            raise DynOccError(f"{flag} needs --manifest (make one with dynocc-data plan INPUT... --out URL)")
    if not args.inputs or not args.out:
        raise DynOccError("generate: give INPUT... and --out (or --manifest URL)")
    try:
        summary = generate(args.inputs, args.out, generation_config_from_args(args), device=args.device,
                           batch_size=args.batch_size, resume=args.resume, strict=args.strict, prefix=args.prefix,
                           shard_size=args.shard_size, progress=not args.no_progress, workers=args.workers,
                           upload=args.upload, merge_timeout=args.merge_timeout, staging=args.staging)
    except WorkerFailure as e:
        _print_summary(e.result.summary)
        raise
    _print_summary(summary)
    rank = rank_from_env().rank
    print(f"wrote {args.out}/index.json and {args.out}/stats.json" if rank == 0 else
          f"rank {rank} finished its videos; rank 0 writes {args.out}/index.json and stats.json")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    """``dynocc-data merge``: index.json and stats.json of a parallel run or of a manifest's chunks."""
    if exists(join(args.out, MANIFEST_NAME)):
        return _print_chunk_merge(merge_chunks(args.out), args.out)
    result = merge_run(args.out, world_size=args.world_size, upload=args.upload)
    _print_summary(result.summary)
    for f in result.failures:
        print(f"  rank {f['rank']} {f['status']}: {f['reason']}; {len(f['unfinished'])} video(s) unfinished")
    print(f"wrote {args.out}/index.json ({result.index['num_samples']} samples) and {args.out}/stats.json")
    return 1 if result.failures else 0


def _positive_int(text: str, *, alternatives: str = "") -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1{alternatives}, got {text!r}")
    return n


def _positive_float(text: str) -> float:
    """A finite number > 0 (an argparse type)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (0 < value < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    """An integer >= 0 (an argparse type)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _workers_arg(text: str) -> int | None:
    return None if text == "auto" else _positive_int(text, alternatives=" or 'auto'")


def _seeds_arg(text: str) -> list[int]:
    try:
        seeds = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        seeds = []
    if not seeds or any(s < 0 for s in seeds):
        raise argparse.ArgumentTypeError(f"expected seeds >= 0 separated by commas, got {text!r}")
    return seeds


def _size_arg(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 360x640, got {text!r}") from None
    if h < 16 or w < 16 or h % 2 or w % 2:
        raise argparse.ArgumentTypeError(f"scene size must be even and at least 16x16, got {text!r}")
    return h, w


def _print_set_table(rows: list[tuple[str, EvalResult]]) -> None:
    print(f"{'set':<24} {'pairs':>7} {'correct':>8} {'wrong':>7} {'local.':>7} {'false':>7} {'outside':>7} "
          f"{'cov.any4':>8} {'pairs/fr':>8}")
    for name, r in rows:
        print(f"{name:<24} {r.pairs:>7} {r.correct:>8.2%} {r.share('wrong_order'):>7.2%} "
              f"{r.share('localisation'):>7.2%} {r.share('false_boundary'):>7.2%} {r.share('outside'):>7.2%} "
              f"{r.coverage:>8.2%} {r.pairs_per_frame:>8.1f}")


def _write_eval(args: argparse.Namespace, doc: dict) -> Path:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    if args.json:
        print(json.dumps(doc, indent=1, sort_keys=True))
    return out / "eval.json"


def _evaluate_static(args: argparse.Namespace) -> int:
    res = evaluate_static_camera(args.static_camera, args.out, generation_config_from_args(args), device=args.device,
                                 batch_size=args.batch_size, progress=not args.no_progress)
    path = _write_eval(args, {"mode": "static-camera", **res.to_dict()})
    if not args.json:
        print(f"static-camera clips: {len(args.static_camera)}, scored against a background model of each clip "
              "(no ground-truth depth; caveats in the README)")
        for line in format_mask_result(res):
            print(line)
        print(f"wrote {path}")
    return 0


def _evaluate_semireal(args: argparse.Namespace) -> int:
    scene_config = replace(SEMIREAL_CONFIG, cast_shadows=args.shadows)
    if args.frames:
        scene_config = replace(scene_config, num_frames=args.frames)
    res = evaluate_semireal(args.background, args.out, num_scenes=args.scenes, seed=args.scene_seed[0],
                            scene_config=scene_config, generate_config=generation_config_from_args(args),
                            coverage_radius=args.radius, device=args.device, batch_size=args.batch_size,
                            progress=not args.no_progress)
    path = _write_eval(args, {"mode": "semi-real", **res.to_dict(), "scene_config": json.loads(scene_config.to_json())})
    if not args.json:
        print(f"semi-real scenes: {args.scenes} over each of {len(args.background)} clip(s) (seeds from "
              f"{args.scene_seed[0]}), cast shadows {'on' if args.shadows else 'off'}; pairs with both points on "
              "the footage are unscored")
        for line in format_result(res, per_video=args.per_scene):
            print(line)
        print(f"wrote {path}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:

    if args.static_camera:
        return _evaluate_static(args)
    if args.background:
        return _evaluate_semireal(args)
    scene_config = replace(EVAL_SCENE_CONFIG, cast_shadows=args.shadows)
    if args.size:
        scene_config = replace(scene_config, height=args.size[0], width=args.size[1])
    if args.frames:
        scene_config = replace(scene_config, num_frames=args.frames)
    out = Path(args.out)
    rows = []
    for seed in args.scene_seed:
        work = out if len(args.scene_seed) == 1 else out / f"seed_{seed}"
        res = evaluate_synthetic(work, num_scenes=args.scenes, seed=seed, scene_config=scene_config,
                                 generate_config=generation_config_from_args(args), coverage_radius=args.radius,
                                 device=args.device, batch_size=args.batch_size, progress=not args.no_progress)
        rows.append((f"seeds {seed}-{seed + args.scenes - 1}", res))
    total = pooled([r for _, r in rows])
    doc = total.to_dict()
    doc["sets"] = {name: r.to_dict() for name, r in rows}
    doc["scene_config"] = json.loads(scene_config.to_json())
    path = _write_eval(args, doc)
    if args.json:
        return 0
    print(f"synthetic scenes: {len(rows)} set(s) of {args.scenes} (first seeds {', '.join(map(str, args.scene_seed))}),"
          f" {scene_config.height}x{scene_config.width}, {scene_config.num_frames} frames, cast shadows "
          f"{'on' if args.shadows else 'off'}")
    for line in format_result(total, per_video=args.per_scene):
        print(line)
    if len(rows) > 1:
        _print_set_table(rows)
    print(f"wrote {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:

    result = run_demo(args.out, progress=not args.no_progress)
    _print_summary(result["summary"])
    scores = result["scores"]
    print(f"read back {result['items']} items through DynOccDataset; against the scenes' ground truth: "
          f"{scores.correct:.1%} of the pairs correct, {scores.same_surface:.1%} on one surface, "
          f"{scores.share('wrong_order'):.1%} in the wrong order; boundary coverage {scores.coverage:.1%}")
    print(f"overlay (closer point cyan, farther orange): {result['overlay']}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:

    paths = show(args.shards, args.out, limit=args.limit, columns=args.columns)
    print(f"wrote {len(paths) - 1} overlays and the contact sheet {paths[-1]}")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:

    stats = shard_stats(args.shards, plots=args.plots)
    print(json.dumps(stats, indent=1, sort_keys=True) if args.json else format_summary(stats))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:

    dense = None
    if args.format == "dense":
        dense = {"depth_kind": args.depth_kind, "depth_scale": args.depth_scale, "num_pairs": args.num_pairs}
    elif args.depth_kind is not None or args.depth_scale != 1.0 or args.num_pairs != 3000:
        raise SystemExit(f"dynocc-data convert: --depth-kind, --depth-scale and --num-pairs are for 'dense', not "
                         f"{args.format!r}")
    n = convert(args.format, args.csv, args.out, root=args.root, shard_size=args.shard_size, dense=dense)
    print(f"wrote {n} samples to {args.out}")
    return 0


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" to every option's help, except flags and texts that already say their default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default" in text or action.default in (False, argparse.SUPPRESS) or action.required:
            return text
        return super()._get_help_string(action) or text


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (the usage is one ``--help`` away)."""

    def error(self, message: str) -> NoReturn:
        """Print ``prog: error: message`` and a pointer to ``--help``; exit with status 2."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``dynocc-data`` argument parser, one sub-command per tool.

    Every option has a help text, and ``--help`` shows its default.

    Returns:
        The parser; each sub-command sets ``func``, the function that runs it.
    """
    formatter = _HelpFormatter
    # -v works before and after the subcommand: the subcommands' copy leaves the value alone when not given
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log debug messages")
    p = _Parser(prog="dynocc-data", formatter_class=formatter,
                                description="Ordinal depth pairs from dynamic occlusions in videos (DynOcc), as "
                                            "WebDataset shards.")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version.__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, parents=[verbose], formatter_class=formatter)

    pl = command("plan", "probe the videos once and write a manifest of chunks of about equal frames")
    pl.add_argument("inputs", nargs="+", help="video files, folders (recursive), frame folders, .txt lists, URLs")
    pl.add_argument("--out", required=True, type=output_url,
                    help="output folder or fsspec URL of the run (gets manifest.json)")
    size = pl.add_mutually_exclusive_group()
    size.add_argument("--chunk-frames", type=int_at_least(1), default=None, metavar="N",
                      help="about N frames per chunk")
    size.add_argument("--chunks", type=int_at_least(1), default=None, metavar="K",
                      help="K chunks (default: one per video)")
    add_generation_options(pl)
    pl.set_defaults(func=cmd_plan)

    g = command("generate", "make shards from videos")
    g.add_argument("inputs", nargs="*", help="video files, folders (recursive), frame folders, .txt lists, URLs")
    g.add_argument("--out", default=None, type=output_url, help="output folder, or an fsspec URL such as "
                                                                "s3://bucket/prefix (needs its back end, e.g. s3fs)")
    g.add_argument("--manifest", default=None, metavar="URL",
                   help="run the chunks of this manifest (dynocc-data plan) instead of INPUT... --out")
    g.add_argument("--chunk", type=int_at_least(0), default=None, metavar="I",
                   help="with --manifest: run only chunk I (default: SLURM_ARRAY_TASK_ID, else claim chunks)")
    g.add_argument("--video-timeout", type=positive_float, default=None, metavar="S",
                   help="with --manifest: abandon a video (recorded as failed) after S seconds")
    g.add_argument("--lease-ttl", type=positive_float, default=60.0, metavar="S",
                   help="with --manifest: take over a claimed chunk after S seconds without heartbeat")
    g.add_argument("--resume", action="store_true", help="skip videos (and frames) already in --out")
    g.add_argument("--strict", action="store_true", help="exit non-zero if any input fails")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (there is none off a terminal)")
    g.add_argument("--workers", type=_workers_arg, default="auto", metavar="N|auto",
                   help="worker processes on this machine (auto: one per GPU on CUDA, else 1); under "
                        "torchrun/srun each rank is one worker")
    g.add_argument("--upload", default=None, metavar="CMD",
                   help="shell command that receives each finished shard on stdin, {name} replaced by its file "
                        "name, e.g. 'aws s3 cp - s3://bucket/run/{name}'; --out keeps ledgers and index")
    g.add_argument("--staging", default=None, metavar="DIR",
                   help="with a URL --out: local folder for shards before their upload (default: a temporary one)")
    g.add_argument("--merge-timeout", type=positive_float, default=3600.0, metavar="S",
                   help="under torchrun/srun: seconds rank 0 waits for the other ranks before merging")
    add_generation_options(g)
    g.set_defaults(func=cmd_generate)

    m = command("merge", "merge the per-rank ledgers and stats of a parallel run (index.json, stats.json)")
    m.add_argument("out", type=output_url, help="the --out folder (or URL) of the run")
    m.add_argument("--world-size", type=int_at_least(1), default=None, help="ranks of the run (default: from the "
                                                                            "markers)")
    m.add_argument("--upload", default=None, metavar="CMD", help="also upload index.json and stats.json "
                                                                 "(default: the run's --upload)")
    m.set_defaults(func=cmd_merge)

    e = command("evaluate", "score the pipeline on synthetic scenes with ground-truth depth, semi-real scenes over "
                         "real footage, or static-camera clips")
    mode = e.add_mutually_exclusive_group()
    mode.add_argument("--background", nargs="+", metavar="VIDEO", default=None,
                      help="semi-real scenes: these videos as the background, composited objects in front")
    mode.add_argument("--static-camera", nargs="+", metavar="VIDEO", default=None,
                      help="real static-camera clips scored against a background model (no depth needed)")
    e.add_argument("--scenes", type=_positive_int, default=4,
                   help="scenes per set, or per --background video (default 4)")
    e.add_argument("--scene-seed", type=_seeds_arg, default=[1000], metavar="S[,S...]",
                   help="seed of the first scene of each set; several seeds, comma-separated, score several sets "
                        "(default 1000)")
    e.add_argument("--size", type=_size_arg, default=None, metavar="HxW", help="scene size (default 360x640)")
    e.add_argument("--frames", type=_positive_int, default=None, help="frames per scene (default 40)")
    e.add_argument("--shadows", action=argparse.BooleanOptionalAction, default=True,
                   help="moving objects cast soft shadows on the ground (default on)")
    e.add_argument("--radius", type=positive_float, default=4.0, help="coverage radius in pixels")
    e.add_argument("--out", default="runs/evaluate", help="work folder")
    e.add_argument("--json", action="store_true", help="print the scores as JSON instead of the summary")
    e.add_argument("--per-scene", action="store_true", help="also print one line per scene")
    e.add_argument("--no-progress", action="store_true", help="no progress bar (there is none off a terminal)")
    add_generation_options(e)
    e.set_defaults(func=cmd_evaluate)

    d = command("demo", "generate from built-in scenes, read back, write an overlay (no download)")
    d.add_argument("--out", default="runs/demo", help="output folder")
    d.add_argument("--no-progress", action="store_true", help="no progress bar (there is none off a terminal)")
    d.set_defaults(func=cmd_demo)

    s = command("show", "overlays of samples and a contact sheet")
    s.add_argument("shards", help="a generate output folder, a shard, or a brace pattern")
    s.add_argument("--out", required=True, help="folder for the overlays and contact_sheet.png")
    s.add_argument("--limit", type=int_at_least(1), default=24, help="samples to draw")
    s.add_argument("--columns", type=int_at_least(1), default=4, help="tiles per row of the contact sheet")
    s.set_defaults(func=cmd_show)

    st = command("stats", "statistics of shards (a summary; --json for everything)")
    st.add_argument("shards", help="a generate output folder, a shard, or a brace pattern")
    st.add_argument("--json", action="store_true", help="print every figure as JSON instead of the summary")
    st.add_argument("--plots", default=None, help="write histograms (matplotlib) to this folder")
    st.set_defaults(func=cmd_stats)

    c = command("convert", "write YouTube3D, DIW or a dense-depth source as shards")
    c.add_argument("format", choices=list(CONVERT_FORMATS), help="the dataset's layout")
    c.add_argument("csv", help="the dataset's CSV (dense: a CSV of image,depth paths or a ReDWeb folder)")
    c.add_argument("--depth-kind", default=None, choices=list(DEPTH_KINDS),
                   help="dense: what the maps hold (default depth; ReDWeb: disparity_affine)")
    c.add_argument("--depth-scale", type=_positive_float, default=1.0,
                   help="dense: factor on the stored values (e.g. 0.001 for 16-bit PNGs in mm)")
    c.add_argument("--num-pairs", type=_non_negative_int, default=3000,
                   help="dense: ordinal pairs drawn from each depth map and stored")
    c.add_argument("--root", default=None, help="folder the CSV's paths are relative to (default: its folder)")
    c.add_argument("--out", required=True, help="output folder")
    c.add_argument("--shard-size", type=int_at_least(1), default=1000, help="samples per shard at most")
    c.set_defaults(func=cmd_convert)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``dynocc-data`` command line.

    Errors the package raises on purpose (:class:`~dynocc_data.errors.DynOccError`) are printed as one line.

    Args:
        argv: the arguments, without the program name; ``None`` for ``sys.argv[1:]``.

    Returns:
        The exit status: 0 on success, 1 on an error, 130 when interrupted (argparse exits 2 on bad usage).
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except DynOccError as e:
        print(f"dynocc-data: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        resume = " (committed shards are kept: run the same command with --resume to continue)" \
            if args.func is cmd_generate else ""
        print(f"dynocc-data: interrupted{resume}", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
