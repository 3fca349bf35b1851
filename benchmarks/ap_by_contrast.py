"""Split an evaluation's per-scan pixel AP by the contrast each scan was read as (a report from ``quality.sh``).

Usage: python benchmarks/ap_by_contrast.py REPORT_DIR PRED_DIR [--map combined] [--contrast-from DIR]

REPORT_DIR holds ``per_scan.csv`` written by ``napari-uad evaluate``; PRED_DIR holds the ``S.json`` that
``napari-uad score`` wrote for the same scans, whose ``contrast`` says how the scan was read (``bright_fluid``,
``dark_fluid`` or none). Prints, per contrast, the number of lesion scans and the mean per-scan pixel AP of --map
(normal scans have no AP). --contrast-from reads the contrasts from another scoring of the same scans (outputs
made before S.json recorded the contrast). Examples (docs/RESULTS.md, "Held-out synthetic sets, 3.8.0"):
``python benchmarks/ap_by_contrast.py runs/report-ba runs/quality-ba/pred`` and
``python benchmarks/ap_by_contrast.py runs/report-3.7 runs/quality-3.7/pred --contrast-from runs/quality-ba/pred``.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path


def ap_by_contrast(per_scan_csv: Path, pred_dir: Path, map_name: str = "combined") -> dict[str, list[float]]:
    """{contrast read from each scan's S.json in pred_dir: [per-scan pixel AP of map_name on its lesion scans]}."""
    contrast = {}
    for report in sorted(pred_dir.glob("*.json")):
        scan = json.loads(report.read_text())
        contrast[report.name[: -len(".json")]] = scan.get("contrast") or "unrecognised"
    by_contrast: dict[str, list[float]] = defaultdict(list)
    with open(per_scan_csv, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row["normal"] == "True" or not row.get(f"{map_name}_ap"):
                continue
            by_contrast[contrast.get(row["scan"], "no S.json")].append(float(row[f"{map_name}_ap"]))
    return dict(by_contrast)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report_dir", type=Path)
    parser.add_argument("pred_dir", type=Path)
    parser.add_argument("--map", default="combined")
    parser.add_argument("--contrast-from", type=Path, default=None, help="S.json files to read the contrasts from")
    args = parser.parse_args()
    by_contrast = ap_by_contrast(args.report_dir / "per_scan.csv", args.contrast_from or args.pred_dir, args.map)
    for name, aps in sorted(by_contrast.items()):
        print(f"{name}: {len(aps)} lesion scans, mean per-scan {args.map} AP {sum(aps) / len(aps):.3f}")


if __name__ == "__main__":
    main()
