"""Validation experiment: does a grey-scale opening of the detection map (a ball D mm wide) help?

Usage: python benchmarks/detection_opening.py [--model NAME|PATH] [--maps-dir DIR] [--val-maps 4] [--n 8]
       [--seed 370000] [--families t1,flair] [--openings 0,2,3,5] [--channel whole|dark]
       [--out runs/detection_opening.json]

``--n`` normal heads and ``--n`` lesion heads per family in --families from the held-out *validation* label maps
(the last --val-maps maps; never the tumour test cases), lesion kinds tumour, MS, infarct, haemorrhage in turn,
normal variants, normal heads from --seed and lesion heads from --seed + 50 000, each scored once on its true brain
as a skull-stripped scan (as calibration with --true-brain-masks scores them). For each opening width D (0 = the
card's map as it is; ``postprocess.open_map``) the card's detection map is opened (``--channel dark``: only the
combined map's dark channel, where the head's settings have one -- the map is then the larger of the bright channel
and the opened dark channel -- so bright lesions keep their values) and then measured as a reviewer meets it: pixel AP / AUROC pooled over the lesion heads' brain voxels (sklearn), and the findings exactly as
``napari-uad score`` makes them (the card's operating point for the head's settings, its minimum thickness and
edge margin; the point is the card's, not recalibrated): false findings per normal head, findings on lesion heads
that overlap no lesion, and lesions found (overlapped by a finding). Prints a line per head and a table per family
and for all; writes them to --out (JSON). Changes no card.
"""

from __future__ import annotations

import json

import numpy as np
from scipy import ndimage

from _validation import normal_and_lesion_heads, skull_stripped, validation_args  # noqa: E402


def summarise(heads: list[dict], pooled: dict, openings: list[float]) -> list[dict]:
    """Per opening width: pixel AP / AUROC pooled over ``pooled[D]`` ((scores, truth) per lesion head) and the
    findings counts of ``heads``."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    rows = []
    normal = [h for h in heads if not h["lesion"]]
    sick = [h for h in heads if h["lesion"]]
    for d in openings:
        key = str(d)
        scores = np.concatenate([s for s, _ in pooled[key]]) if pooled[key] else np.zeros(0)
        truth = np.concatenate([t for _, t in pooled[key]]) if pooled[key] else np.zeros(0, bool)
        rows.append({"opening_mm": d,
                     "pixel_ap": round(float(average_precision_score(truth, scores)), 4) if truth.any() else None,
                     "pixel_auroc": round(float(roc_auc_score(truth, scores)), 4) if truth.any() else None,
                     "fp_per_normal_head": round(sum(h["by_opening"][key]["findings"] for h in normal)
                                                 / max(len(normal), 1), 3),
                     "false_per_lesion_head": round(sum(h["by_opening"][key]["false"] for h in sick)
                                                    / max(len(sick), 1), 3),
                     "lesions_found": sum(h["by_opening"][key]["found"] for h in sick),
                     "lesions": sum(h["n_lesions"] for h in sick), "normal_heads": len(normal),
                     "lesion_heads": len(sick)})
    return rows


def _dark_channel_opening(result, card):
    """For a head whose settings have a dark channel: D, spacing -> the combined map with only its dark channel
    opened by a ball D mm wide (0 outside the brain); None where the settings have no dark channel (the map is
    then opened whole). At D = 0 it is checked to give the scored combined map."""
    from napari_uad.combined import COMBINED, combine, combined_components, dark_components
    from napari_uad.postprocess import open_map

    cal, settings = card.calibration, result.settings
    dark = dark_components(cal, settings)
    if card.detection_map != COMBINED or not dark:
        return None
    bright = np.where(result.mask, combine(result.maps, cal, combined_components(cal, settings), settings), 0)
    channel = combine(result.maps, cal, dark, settings)
    np.testing.assert_allclose(np.maximum(bright, np.where(result.mask, channel, 0)), result.maps[COMBINED],
                               atol=1e-5)
    return lambda d, spacing: np.maximum(bright, open_map(channel, result.mask, spacing, d)).astype(np.float32)


def main() -> None:
    def options(parser) -> None:
        parser.add_argument("--seed", type=int, default=370_000)
        parser.add_argument("--families", default="t1,flair")
        parser.add_argument("--openings", default="0,2,3,5", help="ball diameters in world mm (0 = no opening)")
        parser.add_argument("--channel", choices=("whole", "dark"), default="whole",
                            help="open the whole detection map, or only the combined map's dark channel")

    args, setup = validation_args(__doc__.splitlines()[0], 8, "detection_opening.json", options, scorer=True)
    if setup is None:
        return
    scorer, card, files = setup
    from napari_uad.findings import find_findings, interior
    from napari_uad.metrics import finding_overlaps
    from napari_uad.postprocess import open_map

    families = tuple(args.families.split(","))
    openings = [float(v) for v in args.openings.split(",")]
    margin = float(card.calibration.get("edge_margin_mm", 0.0))
    heads, kind_of = normal_and_lesion_heads(files, args.n, args.seed, families)
    rows: list[dict] = []
    pooled = {f: {str(d): [] for d in openings} for f in (*families, "all")}
    for lesion, i, path, head in heads:
        volume = skull_stripped(head)
        result = scorer.score(volume, mask=head.brain)
        threshold, min_volume = card.operating_point(result.settings)
        thickness = card.default_min_thickness(result.settings)
        allowed = interior(result.mask, volume.spacing, margin)
        truth = head.lesion > 0 if lesion else np.zeros(volume.shape, bool)
        n_lesions = int(ndimage.label(truth, structure=ndimage.generate_binary_structure(3, 3))[1])
        family = head.params["contrast_family"]
        row = {"seed": args.seed + (50_000 if lesion else 0) + i, "family": family,
               "lesion": kind_of(i) if lesion else "", "n_lesions": n_lesions, "settings": result.settings,
               "threshold": threshold, "min_volume_mm3": min_volume, "min_thickness_mm": thickness, "by_opening": {}}
        inside = result.mask > 0
        opening = _dark_channel_opening(result, card) if args.channel == "dark" else None
        for d in openings:
            opened = (open_map(result.maps[card.detection_map], result.mask, volume.spacing, d) if opening is None
                      else opening(d, volume.spacing))
            labels, findings = find_findings(opened, volume, threshold, min_volume, allowed=allowed,
                                             min_thickness_mm=thickness)
            overlaps, _ = finding_overlaps(labels, truth)
            row["by_opening"][str(d)] = {"findings": len(findings),
                                         "false": sum(1 for f in findings if not overlaps.get(f.finding_id)),
                                         "found": len({v for v in overlaps.values() if v})}
            if lesion and truth[inside].any():
                pair = (opened[inside], truth[inside])  # one copy, in both groups
                for group in (family, "all"):
                    pooled[group][str(d)].append(pair)
        rows.append(row)
        print(json.dumps(row), flush=True)
    tables = {group: summarise([r for r in rows if group in ("all", r["family"])], pooled[group], openings)
              for group in (*families, "all")}
    for group, table in tables.items():
        for line in table:
            print(json.dumps({"model": f"{card.name} {card.version}", "channel": args.channel, "family": group, **line}))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": f"{card.name} {card.version}", "seed": args.seed,
                                    "channel": args.channel, "families": families, "openings_mm": openings, "heads": rows,
                                    "tables": tables}, indent=1) + "\n")


if __name__ == "__main__":
    main()
