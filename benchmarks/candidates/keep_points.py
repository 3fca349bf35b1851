"""Make a candidate card: a recalibrated model with another card's operating points.

Usage: python benchmarks/candidates/keep_points.py --points-from CARD.json --model DIR --contrast dark_fluid --out DIR

The candidate is ``--model`` (weights and calibration: healthy tables, the combined map, its search tables), with
every operating point -- the pooled one, the card-level minimum volume, and each recognised contrast's -- taken
verbatim from ``--points-from``, except that for each ``--contrast`` the point keeps ``--model``'s own search table
(of the map that contrast is now scored with) and its ``validation`` becomes that table's row at the kept setting,
read as the reviewer's slider reads it (``calibration.validation_rates``: the row bounding it from the permissive
side). Use: a change to how a map is made (e.g. ``calibrate --dark-opening-mm``) measured on validation with the
previous card's points unchanged. The weights are copied; their sha256 is checked against the card.
"""
from __future__ import annotations

import argparse
import copy
import json
import shutil
from pathlib import Path

from napari_uad.calibration import validation_rates
from napari_uad.model_card import CARD_FILE, load_model


def keep_points(points_from: dict, calibration: dict, contrasts: list[str], version: str | None = None) -> dict:
    """``calibration`` (a card's; not modified) with the operating points of ``points_from`` (another card's
    calibration, of version ``version``), the contrasts in ``contrasts`` keeping ``calibration``'s search tables
    (module docstring). Returns a new calibration dict."""
    out = copy.deepcopy(calibration)
    kept = copy.deepcopy(points_from["operating_point"])
    for contrast in contrasts:
        own = calibration["operating_point"]["by_contrast"][contrast]
        point = kept["by_contrast"][contrast]
        point["table"] = own["table"]
        point["table_min_thickness_mm"] = own.get("table_min_thickness_mm", own.get("min_thickness_mm", 0.0))
        point.pop("table_contrast", None)
        probe = {**out, "operating_point": kept}
        row = validation_rates(probe, calibration["detection_map"], point["threshold"], point["min_volume_mm3"],
                               contrast)
        if row is None:
            raise SystemExit(f"{contrast}: the kept point is more permissive than every row of the new table")
        point["validation"] = {k: row[k] for k in own["validation"]}
        point["fp_target_met"] = row["fp_objects_per_normal_scan"] <= point["max_fp_per_normal_scan"]
        point["kept_from"] = {"version": version,
                              "validation_row": {"threshold": row["threshold"], "min_volume_mm3": row["min_volume_mm3"]},
                              "rule": "the previous card's setting kept; validation = this table's row bounding it "
                                      "from the permissive side (as the slider reads it)"}
    out["operating_point"] = kept
    out["min_volume_mm3"] = points_from["min_volume_mm3"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points-from", type=Path, required=True, help="card.json whose operating points are kept")
    parser.add_argument("--model", type=Path, required=True, help="model directory (card.json + weights)")
    parser.add_argument("--contrast", action="append", default=[], help="keep this contrast's new search table")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    source = json.loads(args.points_from.read_text())
    _, card = load_model(args.model)  # the weights verify against the card (sha256)
    card.calibration = keep_points(source["calibration"], card.calibration, args.contrast, source.get("version"))
    card.calibration["command"] += (f" ; then python benchmarks/candidates/keep_points.py --points-from "
                                    f"{args.points_from} --model {args.model}"
                                    + "".join(f" --contrast {c}" for c in args.contrast) + f" --out {args.out}")
    args.out.mkdir(parents=True, exist_ok=True)
    for path in args.model.iterdir():
        if path.name != CARD_FILE:
            shutil.copy2(path, args.out / path.name)
    card.write(args.out)
    print(f"{args.out}: operating points of {source.get('name')} {source.get('version')}; "
          f"new tables for {', '.join(args.contrast) or 'none'}")


if __name__ == "__main__":
    main()
