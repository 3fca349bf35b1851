"""Findings CSV (one schema for the CLI and the napari review) and JSON reports, written atomically."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .findings import Finding
from .io import atomic_write

__all__ = ["FINDINGS_COLUMNS", "findings_rows", "write_findings_csv", "write_json", "utc_now"]

FINDINGS_COLUMNS: tuple[str, ...] = (
    "scan_path", "scan_sha256", "finding_id", "tag", "category", "note", "reviewer", "reviewed_at",
    "model_name", "model_version", "model_sha256", "detection_map", "threshold", "min_volume_mm3",
    "min_thickness_mm", "centroid_i", "centroid_j", "centroid_k", "centroid_x_mm", "centroid_y_mm", "centroid_z_mm",
    "volume_mm3", "voxel_count", "max_score", "mean_score", "signal", "first_slice", "last_slice",
)
UNREVIEWED = "unreviewed"


def utc_now() -> str:
    """Current time as ISO-8601 UTC with seconds, e.g. 2026-11-22T10:00:00Z."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def findings_rows(findings: Iterable[Finding], *, scan_path: str, scan_sha256: str, model_name: str,
                  model_version: str, model_sha256: str, detection_map: str, threshold: float,
                  min_volume_mm3: float, reviews: Mapping[int, Mapping[str, str]] | None = None,
                  min_thickness_mm: float = 0.0) -> list[dict]:
    """CSV rows (dicts keyed by FINDINGS_COLUMNS). ``reviews`` maps finding_id -> tag/category/note/reviewer/
    reviewed_at; findings without a review are 'unreviewed' with empty review fields.
    World coordinates are RAS mm; voxel coordinates index the original scan file; ``signal``: hyperintense or
    hypointense against the finding's own tissue class (empty without a tissue map); ``min_thickness_mm``: findings
    thinner than this (world mm, ``findings.component_thickness``) were dropped (0: none)."""
    reviews = reviews or {}
    rows = []
    for f in findings:
        review = reviews.get(f.finding_id, {})
        rows.append({
            "scan_path": scan_path,
            "scan_sha256": scan_sha256,
            "finding_id": f.finding_id,
            "tag": review.get("tag") or UNREVIEWED,
            "category": review.get("category", ""),
            "note": review.get("note", ""),
            "reviewer": review.get("reviewer", ""),
            "reviewed_at": review.get("reviewed_at", ""),
            "model_name": model_name,
            "model_version": model_version,
            "model_sha256": model_sha256,
            "detection_map": detection_map,
            "threshold": _num(threshold),
            "min_volume_mm3": _num(min_volume_mm3),
            "min_thickness_mm": _num(min_thickness_mm),
            "centroid_i": _num(f.centroid_ijk[0]),
            "centroid_j": _num(f.centroid_ijk[1]),
            "centroid_k": _num(f.centroid_ijk[2]),
            "centroid_x_mm": _num(f.centroid_xyz_mm[0]),
            "centroid_y_mm": _num(f.centroid_xyz_mm[1]),
            "centroid_z_mm": _num(f.centroid_xyz_mm[2]),
            "volume_mm3": _num(f.volume_mm3),
            "voxel_count": f.voxel_count,
            "max_score": _num(f.max_score),
            "mean_score": _num(f.mean_score),
            "signal": f.signal,
            "first_slice": f.first_slice,
            "last_slice": f.last_slice,
        })
    return rows


def _num(value: float) -> str:
    """Shortest repr that round-trips a float64 (no precision lost in the CSV)."""
    return repr(float(value))


def write_findings_csv(path: str | os.PathLike, rows: Iterable[Mapping]) -> Path:
    """Write findings rows with exactly FINDINGS_COLUMNS, atomically (a reader never sees half a file)."""
    path = Path(path)
    with atomic_write(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=FINDINGS_COLUMNS, extrasaction="raise")
        writer.writeheader()
        writer.writerows(rows)
    return path


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | os.PathLike, obj) -> Path:
    """Write ``obj`` as indented JSON atomically; NaN/Inf become null, numpy types plain numbers."""
    path = Path(path)
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(_jsonable(obj), indent=2) + "\n", encoding="utf-8")
    return path
