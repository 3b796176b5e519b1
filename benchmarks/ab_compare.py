"""A/B: run one benchmark under two checkouts of the package, alternately, and print the ratios of its figures.

    python benchmarks/ab_compare.py --a /path/to/old-checkout --b . --bench bench_generate.py \
        --field output_frames_per_s --runs 5 -- --frames 120

Each run starts ``python benchmarks/<bench> ... --json FILE`` in checkout A, then in checkout B (with
``PYTHONPATH`` set to that checkout, so each imports its own ``dynocc_data``), ``--runs`` times. Alternating
the two on one machine in one session is what makes the ratio meaningful when the machine's speed drifts
(shared machines vary by 2x from day to day). Prints, for every numeric field named by ``--field`` (dotted
paths into the JSON), each pair's B/A ratio, and their median and range; also ``cpu_seconds``, the CPU time
each whole run used (a steadier figure than wall-clock rates when other work shares the machine: there, a B/A
above 1 means B needed more CPU). No assertion.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def _field(data: dict, path: str) -> float:
    value = data
    for part in path.split("."):
        value = value[part]
    return float(value)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(checkout: Path, bench: str, args: list[str], out: Path) -> dict:
    """One benchmark run; its JSON figures plus ``cpu_seconds``, the CPU time the whole run used."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    cmd = [sys.executable, str(checkout / "benchmarks" / bench), *args, "--json", str(out)]
    before = _cpu_seconds()
    subprocess.run(cmd, cwd=checkout, env=env, check=True, stdout=subprocess.DEVNULL)
    return {**json.loads(out.read_text()), "cpu_seconds": _cpu_seconds() - before}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", type=Path, required=True, help="checkout A (the reference)")
    p.add_argument("--b", type=Path, required=True, help="checkout B (the change)")
    p.add_argument("--bench", required=True, help="script under benchmarks/, e.g. bench_generate.py")
    p.add_argument("--field", action="append", required=True, help="JSON field to compare (repeatable)")
    p.add_argument("--runs", type=int, default=5, help="A/B pairs (default 5)")
    p.add_argument("bench_args", nargs="*", help="arguments after -- go to the benchmark")
    args = p.parse_args()
    fields = [*args.field, "cpu_seconds"]
    ratios: dict[str, list[float]] = {f: [] for f in fields}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            a = _run(args.a.resolve(), args.bench, args.bench_args, Path(tmp) / f"a{i}.json")
            b = _run(args.b.resolve(), args.bench, args.bench_args, Path(tmp) / f"b{i}.json")
            for f in fields:
                va, vb = _field(a, f), _field(b, f)
                ratios[f].append(vb / va)
                print(f"run {i + 1}: {f}: A {va:.4g}  B {vb:.4g}  B/A {vb / va:.3f}", flush=True)
    print(f"\n{'field':48s} {'median B/A':>10s} {'range':>15s}  (runs: {args.runs})")
    for f, values in ratios.items():
        print(f"{f:48s} {statistics.median(values):10.3f} {min(values):7.3f}-{max(values):.3f}")


if __name__ == "__main__":
    main()
