"""Every pair-quality figure of issue 10 in one run, so that a method change can be measured before and after.

    python benchmarks/quality_report.py                      # all parts (~20 min on 2 cores)
    python benchmarks/quality_report.py --quick              # 2 sets of 4 synthetic scenes, 1 semi-real scene a clip
    python benchmarks/quality_report.py --parts static,real  # only some parts

Parts (default settings of ``generate`` throughout):

* ``synthetic``: ``evaluate`` on 8 sets of 16 synthetic scenes with cast shadows (first seeds 1000, 2000, ...,
  8000): correct, wrong order, same surface (localisation + false boundary), coverage (any motion, 4 px, every
  selected frame), pairs per written frame, per set and pooled;
* ``semireal``: semi-real scenes over every clip of the videos folder: correct of the scored pairs, unscored share;
* ``static``: the static-camera clips (cars_topdown, people_walking) against the background model: right share and
  pairs per written frame;
* ``real``: every clip of the folder: pairs per written frame and the share of selected frames written.

Work files go to ``--out`` (default runs/quality); ``quality.json`` there holds every figure.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from dynocc_data.generation import GenerateConfig
from dynocc_data.tools.evaluate import (
    count_real_clips,
    evaluate_semireal,
    evaluate_static_camera,
    evaluate_synthetic,
    pooled,
)

REPO = Path(__file__).resolve().parents[1]
STATIC_CLIPS = ("cars_topdown.mp4", "people_walking.mp4")


def _pct(x: float) -> str:
    return f"{100 * x:6.2f} %"


def synthetic(out: Path, seeds: list[int], scenes: int) -> dict:
    """Scores of each set of synthetic scenes and of all of them."""
    rows = {}
    print(f"\n## synthetic scenes with shadows ({len(seeds)} sets of {scenes})")
    print(f"{'set':<20} {'pairs':>7} {'correct':>9} {'wrong':>9} {'same surf.':>10} {'coverage':>9} {'pairs/fr':>8}")
    results = []
    for seed in seeds:
        r = evaluate_synthetic(out / f"synthetic_{seed}", num_scenes=scenes, seed=seed)
        results.append(r)
        rows[f"seeds {seed}-{seed + scenes - 1}"] = r.to_dict()
        print(f"{seed}-{seed + scenes - 1:<15} {r.pairs:>7} {_pct(r.correct)} {_pct(r.share('wrong_order'))} "
              f"{_pct(r.same_surface):>10} {_pct(r.coverage)} {r.pairs_per_frame:>8.1f}", flush=True)
    total = pooled(results)
    print(f"{'all':<20} {total.pairs:>7} {_pct(total.correct)} {_pct(total.share('wrong_order'))} "
          f"{_pct(total.same_surface):>10} {_pct(total.coverage)} {total.pairs_per_frame:>8.1f}")
    print(f"  (localisation {_pct(total.share('localisation'))}, false boundary {_pct(total.share('false_boundary'))};"
          f" old sign agreement {_pct(total.old_precision)})")
    return {"sets": rows, "all": total.to_dict()}


def semireal(out: Path, videos: list[Path], scenes: int) -> dict:
    """Semi-real scenes over every clip."""
    print(f"\n## semi-real scenes ({scenes} over each clip, with shadows)")
    r = evaluate_semireal([str(v) for v in videos], out / "semireal", num_scenes=scenes, seed=1000)
    by_clip: dict[str, list] = {}
    for name, v in r.per_video.items():
        by_clip.setdefault(name.rsplit("_", 1)[0], []).append(v)
    print("(correct, wrong order and same surface as shares of the scored pairs; unscored of all pairs)")
    print(f"{'clip':<20} {'pairs':>7} {'correct':>9} {'wrong':>9} {'same surf.':>10} {'unscored':>9}")
    for clip, c in [*sorted((k, pooled(v)) for k, v in by_clip.items()), ("all", r)]:
        same = c.counts["localisation"] + c.counts["false_boundary"]
        print(f"{clip:<20} {c.pairs:>7} {_pct(c.correct_of_scored)} {_pct(c.counts['wrong_order'] / max(c.scored, 1))} "
              f"{_pct(same / max(c.scored, 1)):>10} {_pct(c.share('unscored'))}")
    return r.to_dict()


def static(out: Path, videos: list[Path]) -> dict:
    """Static-camera clips against the background model."""
    print("\n## static-camera clips against a background model")
    r = evaluate_static_camera([str(v) for v in videos], out / "static")
    print(f"{'clip':<20} {'pairs':>7} {'right':>9} {'both bg':>9} {'both mov.':>9} {'wrong':>9} {'pairs/fr':>8}")
    for name, v in sorted(r.per_video.items()) + [("all", r)]:
        print(f"{name:<20} {v.pairs:>7} {_pct(v.right)} {_pct(v.share('both_background'))} "
              f"{_pct(v.share('both_moving'))} {_pct(v.share('wrong_order'))} {v.pairs_per_frame:>8.1f}")
    return r.to_dict()


def real(out: Path, videos: list[Path]) -> dict:
    """Pairs per written frame and frames written on every real clip."""
    print("\n## real clips")
    r = count_real_clips([str(v) for v in videos], out / "real")
    print(f"{'clip':<20} {'pairs':>7} {'pairs/fr':>8} {'written':>12}")
    for name, v in sorted(r.per_video.items()) + [("all", r)]:
        print(f"{name:<20} {v.pairs:>7} {v.pairs_per_frame:>8.1f} {v.frames_written:>4}/{v.frames_selected:<4} "
              f"{_pct(v.frames_written_share)}")
    return {k: {"pairs": v.pairs, "pairs_per_frame": v.pairs_per_frame, "frames_written": v.frames_written,
                "frames_selected": v.frames_selected} for k, v in [*r.per_video.items(), ("all", r)]}


def main(argv: list[str] | None = None) -> int:
    """Run the chosen parts and print their tables."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=Path, default=REPO.parent / "shared" / "videos", help="folder of real clips")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "quality")
    p.add_argument("--parts", default="synthetic,semireal,static,real")
    p.add_argument("--sets", type=int, default=8, help="synthetic sets (first seeds 1000, 2000, ...)")
    p.add_argument("--scenes", type=int, default=16, help="synthetic scenes per set")
    p.add_argument("--semireal-scenes", type=int, default=2, help="semi-real scenes over each clip")
    p.add_argument("--quick", action="store_true", help="2 sets of 4 synthetic scenes, 1 semi-real scene a clip")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.quick:
        args.sets, args.scenes, args.semireal_scenes = 2, 4, 1
    parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    unknown = set(parts) - {"synthetic", "semireal", "static", "real"}
    if unknown:
        p.error(f"--parts: unknown part(s) {', '.join(sorted(unknown))}")
    videos = sorted(args.videos.glob("*.mp4"))
    if not videos and set(parts) - {"synthetic"}:
        p.error(f"--videos: no .mp4 clips in {args.videos}")
    print(f"generate defaults: stride {GenerateConfig().stride}, gap {GenerateConfig().gap}, "
          f"max_side {GenerateConfig().max_side}, flow {GenerateConfig().flow}")
    report: dict = {}
    start = time.perf_counter()
    if "synthetic" in parts:
        report["synthetic"] = synthetic(args.out, [1000 * (i + 1) for i in range(args.sets)], args.scenes)
    if "semireal" in parts:
        report["semireal"] = semireal(args.out, videos, args.semireal_scenes)
    if "static" in parts:
        report["static"] = static(args.out, [v for v in videos if v.name in STATIC_CLIPS])
    if "real" in parts:
        report["real"] = real(args.out, videos)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quality.json").write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    print(f"\n{time.perf_counter() - start:.0f} s; figures in {args.out / 'quality.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
