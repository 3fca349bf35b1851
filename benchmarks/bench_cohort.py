"""Benchmark: cohort throughput on Dask with 1 and 2 workers, and the cohort path's overhead against `score`.

Usage: python benchmarks/bench_cohort.py [--n 12] [--model NAME|PATH] [--device cpu|cuda] [--workers 1,2]
       [--work runs/bench_cohort] [--no-score]

Makes --n synthetic 1 mm brains (``napari-uad synth``, seeds 950000+, a third normal), then
  1. ``napari-uad score`` over all of them in one process (the baseline: the same per-scan code path),
  2. ``napari-uad cohort`` with each worker count (a fresh output directory each time, so nothing is reused).
Default maps. Prints one JSON line per run (wall seconds, scans/minute, speed-up over 1 worker, overhead of the
cohort path with 1 worker over `score`) and writes them to WORK/bench_cohort.json after each run (a run cut short
by a time limit keeps the rows before it). --no-score skips the `score` baseline (e.g. where it was measured
before and device time is short); the overhead is then not computed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path


def _run(args: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "napari_uad.cli", *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=12)
    parser.add_argument("--model", default=None, help="default: the bundled default model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--work", type=Path, default=Path("runs/bench_cohort"))
    parser.add_argument("--no-score", action="store_true", help="skip the `score` baseline")
    args = parser.parse_args()
    data = args.work / "data"
    if not (data / "synth.json").is_file():
        _run(["synth", "--out", str(data), "--n", str(args.n), "--normal-fraction", "0.33", "--seed", "950000"])
    scans = sorted(str(p) for p in (data / "scans").glob("*.nii.gz"))
    machine = {"platform": platform.platform(), "cpu_count": os.cpu_count(), "device": args.device}
    rows = []
    out = args.work / "score"
    shutil.rmtree(out, ignore_errors=True)
    model = ["--model", args.model] if args.model else []
    report = args.work / "bench_cohort.json"

    def record(row: dict) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)
        report.write_text(json.dumps(rows, indent=1))

    score_s = None
    if not args.no_score:
        score_s = _run(["score", *scans, "--out", str(out), *model, "--device", args.device, "--quiet"])
        record({"run": "score (one process)", "scans": len(scans), "wall_s": round(score_s, 1),
                "scans_per_min": round(len(scans) / score_s * 60, 2), **machine})
    base = None
    for w in (int(x) for x in args.workers.split(",")):
        out = args.work / f"cohort-{w}"
        shutil.rmtree(out, ignore_errors=True)
        seconds = _run(["cohort", str(data / "scans"), "--out", str(out), *model, "--workers", str(w),
                        "--device", args.device, "--quiet"])
        base = base or seconds
        record({"run": f"cohort, {w} worker(s)", "scans": len(scans), "wall_s": round(seconds, 1),
                "scans_per_min": round(len(scans) / seconds * 60, 2),
                "speedup_vs_1_worker": round(base / seconds, 2),
                "overhead_vs_score": round(seconds / score_s - 1, 3) if w == 1 and score_s else None,
                **machine})


if __name__ == "__main__":
    main()
