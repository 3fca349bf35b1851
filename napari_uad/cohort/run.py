"""Score a cohort on Dask and write the ranked worklist (``napari-uad cohort``).

Layout of the output directory DIR:
    DIR/scans/<id>.*           what ``napari-uad score`` writes, per scan (same code path, atomically)
    DIR/cohort.csv             one row per scan (``worker.ROW_COLUMNS``), most anomalous first
    DIR/cohort_findings.csv    every finding of every scan (the findings CSV schema)
    DIR/cohort.json            model, settings, totals, throughput

Ranking: by the volume score's quantile among the healthy calibration scans, then by the volume score;
failed scans last. Rerunning the same command skips scans whose outputs are complete (``outputs_complete``).
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable
from pathlib import Path

from ..export import FINDINGS_COLUMNS, utc_now, write_json
from ..io import atomic_write
from .cluster import ClusterPlan, connect
from .inputs import CohortItem
from .worker import PLUGIN_NAME, ROW_COLUMNS, JobSpec, ModelPlugin, score_item

__all__ = ["run_cohort", "rank_rows"]


def rank_rows(rows: list[dict]) -> list[dict]:
    """Most anomalous first (healthy quantile, then volume score); failed scans last; ``rank`` from 1."""
    def key(row: dict):
        done = row.get("status") != "failed"
        q = row.get("volume_score_healthy_quantile")
        s = row.get("volume_score")
        return (not done, -(q if q is not None else -1.0), -(s if s is not None else float("-inf")), row["id"])

    ranked = sorted(rows, key=key)
    for i, row in enumerate(ranked, start=1):
        row["rank"] = i
    return ranked


def _write_csv(path: Path, rows: list[dict], columns: tuple[str, ...]) -> None:
    with atomic_write(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: "" if row.get(c) is None else row.get(c) for c in columns})


def _all_findings(scans: Path, rows: list[dict]) -> list[dict]:
    found = []
    for row in rows:
        path = scans / f"{row['id']}.findings.csv"
        if row.get("status") != "failed" and path.is_file():
            with open(path, newline="", encoding="utf-8") as fh:
                found += list(csv.DictReader(fh))
    return found


def run_cohort(items: list[CohortItem], out: Path, spec: JobSpec, scheduler: str | None = None,
               plan: ClusterPlan | None = None, command: str = "", log: Callable[[str], None] = print,
               show_progress: bool = True) -> dict:
    """Score ``items`` into ``out`` on a Dask cluster; returns the cohort.json summary."""
    from distributed import as_completed
    from tqdm import tqdm

    out = Path(out)
    job = spec.build("cpu")  # weights verified and settings checked once, before any worker starts
    card = job.scorer.card
    scans = out / "scans"
    scans.mkdir(parents=True, exist_ok=True)
    healthy = [float(v) for v in card.calibration.get("ood", {}).get("volume_scores", [])]
    t0 = time.perf_counter()
    client, cluster = connect(scheduler, plan)
    try:
        log(f"Dask dashboard: {client.dashboard_link}")
        client.register_plugin(ModelPlugin(spec), name=PLUGIN_NAME)
        resources = {"GPU": 1} if spec.device == "cuda" or (plan and plan.resources) else None
        futures = [client.submit(score_item, item, str(scans), healthy, key=f"score-{i}-{item.id}",
                                 resources=resources, pure=False) for i, item in enumerate(items)]
        rows, failed = [], 0
        bar = tqdm(total=len(items), unit="scan", desc="cohort", disable=not show_progress)
        for future in as_completed(futures):
            row = future.result()
            rows.append(row)
            failed += row["status"] == "failed"
            if row["status"] == "failed":
                log(f"napari-uad: error: {row['error']}")
            bar.set_postfix(done=len(rows) - failed, failed=failed)
            bar.update(1)
        bar.close()
        workers = len(client.scheduler_info().get("workers", {}))
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    wall = time.perf_counter() - t0
    ranked = rank_rows(rows)
    _write_csv(out / "cohort.csv", ranked, ROW_COLUMNS)
    _write_csv(out / "cohort_findings.csv", _all_findings(scans, ranked), FINDINGS_COLUMNS)
    scored = sum(r["status"] == "done" and not r.get("reused") for r in rows)
    summary = {
        "created": utc_now(), "command": command,
        "model": {"name": card.name, "version": card.version, "sha256": card.weights_sha256, "path": spec.model},
        "settings": {"maps": list(spec.maps), "device": spec.device, "torch_threads": spec.torch_threads,
                     "detection_map": job.detection_map, "threshold": job.threshold,
                     "min_volume_mm3": job.min_volume_mm3, "min_thickness_mm": job.min_thickness(None),
                     "edge_margin_mm": job.edge_margin_mm, "sequence": job.sequence,
                     "by_contrast": {c: {**dict(zip(("threshold", "min_volume_mm3"), job.operating_point(c))),
                                         "min_thickness_mm": job.min_thickness(c)} for c in card.contrast_points},
                     "preprocessing": spec.options,
                     "scheduler": scheduler or "LocalCluster", "workers": workers},
        "totals": {"scans": len(rows), "scored": scored,
                   "skipped_complete": sum(bool(r.get("reused")) for r in rows),
                   "failed": sum(r["status"] == "failed" for r in rows)},
        "wall_seconds": round(wall, 2),
        "throughput_scans_per_minute": round(len(rows) / wall * 60, 3) if wall > 0 else None,
        "scored_per_minute": round(scored / wall * 60, 3) if wall > 0 else None,
        "cpu_count": os.cpu_count(),
    }
    write_json(out / "cohort.json", summary)
    return summary
