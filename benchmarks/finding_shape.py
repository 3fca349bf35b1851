"""Validation experiment: does a finding's shape (its thickness) tell a lesion from a healthy structure?

Usage: python benchmarks/finding_shape.py [--model NAME|PATH] [--maps-dir DIR] [--val-maps 4] [--n 8]
       [--seed 700000] [--families t1,flair] [--offsets=-0.4,-0.2,0,0.2] [--declare-sequence]
       [--out runs/finding_shape.json]
       python benchmarks/finding_shape.py --analyse runs/finding_shape.json [--model NAME|PATH]
           (the rule tables again, every offset, and the card's own rule; --model: the card whose minimum
           thickness per settings heads written before it was recorded take)

``--n`` normal heads and ``--n`` lesion heads per family in --families from the held-out *validation* label maps
(the last --val-maps maps; never the tumour test cases), lesion kinds tumour, MS, infarct, haemorrhage in turn,
normal variants, normal heads from --seed and lesion heads from --seed + 50 000, each scored on its true brain as a
skull-stripped scan (as calibration with --true-brain-masks scores them; with --declare-sequence each declared the
sequence of its contrast family, so the card's settings for that sequence apply where it has some). For each head,
at the card's threshold for its settings (recognised contrast or declared sequence) plus each of --offsets, the
card's detection map is thresholded inside the brain less the edge margin (no minimum volume) and every component
is measured: volume (mm^3), thickness (mm: twice the
largest distance from one of its voxels to the nearest voxel outside it, i.e. the diameter of the largest ball it
holds, voxel size honoured), signal (hyper-/hypointense against its tissue class), whether it overlaps a lesion
and whether it matches one by object recall's rule; each lesion head's pixel AP of the detection map over its brain
voxels (sklearn), whose mean per family the analysis prints. From these rows any (threshold, minimum volume, minimum
thickness) rule's false findings per normal head and lesions found can be counted without scoring again; the
script prints that table for every offset and the thickness minima 0-8 mm (``--analyse``: again, from the JSON
written, without scoring). Changes no card.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

from _validation import normal_and_lesion_heads, skull_stripped, validation_args  # noqa: E402

THICKNESS_MINIMA_MM = (0.0, 3.0, 4.0, 5.0, 6.0, 8.0)


def analyse(path: Path, model: str | None = None) -> None:
    """Print the rule tables of a JSON written by this script, every offset (normal heads of each family apart),
    then the card's own rule per family. Heads written before the minimum thickness was recorded take it from the
    card of ``model`` (by their settings); without it they get no card-rule line."""
    saved = json.loads(path.read_text())
    if model is not None:
        from napari_uad.model_card import CARD_FILE, ModelCard, resolve_model
        card = ModelCard.read(resolve_model(model) / CARD_FILE)  # the card only: no weights to hash and load
        for h in saved["heads"]:
            h.setdefault("card_min_thickness_mm", card.default_min_thickness(h["settings"]))
    offsets = sorted({r["offset"] for r in saved["components"]})
    families = sorted({h["family"] for h in saved["heads"]}) + ["all"]
    for family in families:
        heads = [h for h in saved["heads"] if family in ("all", h["family"])]
        aps = [h["pixel_ap"] for h in heads if h.get("pixel_ap") is not None]
        if aps:
            print(json.dumps({"model": saved["model"], "family": family, "lesion_heads": len(aps),
                              "mean_pixel_ap": round(float(np.mean(aps)), 4)}))
        for offset in offsets:
            for line in rule_table(heads, saved["components"], offset):
                print(json.dumps({"model": saved["model"], "family": family, **line}))
    if all("card_min_thickness_mm" in h for h in saved["heads"]):
        for family in families:
            heads = [h for h in saved["heads"] if family in ("all", h["family"])]
            print(json.dumps({"model": saved["model"], "family": family, "rule": "card",
                              **card_rule(heads, saved["components"])}))


def main() -> None:
    if len(sys.argv) in (3, 5) and sys.argv[1] == "--analyse" and sys.argv[3:4] in ([], ["--model"]):
        analyse(Path(sys.argv[2]), sys.argv[4] if len(sys.argv) == 5 else None)
        return

    def options(parser) -> None:
        parser.add_argument("--seed", type=int, default=700_000)
        parser.add_argument("--families", default="t1,flair")
        parser.add_argument("--offsets", default="-0.4,-0.2,0,0.2",
                            help="thresholds measured: the card's point plus each of these")
        parser.add_argument("--declare-sequence", action="store_true",
                            help="declare each head the sequence of its contrast family (as `score --sequence`), so "
                                 "the card's settings (map and point) for that sequence apply where it has some")

    args, setup = validation_args(__doc__.splitlines()[0], 8, "finding_shape.json", options, scorer=True)
    if setup is None:
        return
    scorer, card, files = setup
    from napari_uad.findings import component_thickness, describe_components, interior, label_components
    from napari_uad.metrics import component_matches, finding_overlaps
    from sklearn.metrics import average_precision_score

    families = tuple(args.families.split(","))
    offsets = [float(v) for v in args.offsets.split(",")]
    margin = float(card.calibration.get("edge_margin_mm", 0.0))
    heads, kind_of = normal_and_lesion_heads(files, args.n, args.seed, families)
    rows, summary_heads = [], []
    for lesion, i, path, head in heads:
        volume = skull_stripped(head)
        if args.declare_sequence:
            volume.metadata.update(sequence=head.params["contrast_family"],
                                   sequence_source="benchmark: the head's contrast family")
        result = scorer.score(volume, mask=head.brain)
        threshold, min_volume = card.operating_point(result.settings)
        allowed = interior(result.mask, volume.spacing, margin)
        score = np.where(allowed, result.maps[card.detection_map], np.float32(-np.inf)).astype(np.float32)
        truth = head.lesion > 0 if lesion else np.zeros(score.shape, bool)
        n_lesions = int(ndimage.label(truth, structure=ndimage.generate_binary_structure(3, 3))[1])
        seed = args.seed + (50_000 if lesion else 0) + i
        inside = result.mask > 0
        pixel_ap = (float(average_precision_score(truth[inside], result.maps[card.detection_map][inside]))
                    if lesion and truth[inside].any() else None)
        summary_heads.append({"seed": seed, "lesion": kind_of(i) if lesion else "", "n_lesions": n_lesions,
                              "family": head.params["contrast_family"], "contrast": result.contrast,
                              "settings": result.settings,
                              "card_threshold": threshold, "card_min_volume_mm3": min_volume,
                              "card_min_thickness_mm": card.default_min_thickness(result.settings),
                              "pixel_ap": pixel_ap})
        for offset in offsets:
            labels, _ = label_components(score, threshold + offset, volume.voxel_volume_mm3)
            findings = describe_components(labels, score, volume, result.maps.get("tissue"))
            thickness = component_thickness(labels, volume.spacing)
            overlaps, _ = finding_overlaps(labels, truth)
            _, matched, _ = component_matches(labels, truth)
            for f in findings:
                rows.append({"seed": seed, "offset": offset, "finding": f.finding_id,
                             "volume_mm3": round(f.volume_mm3, 1), "thickness_mm": round(float(thickness[f.finding_id - 1]), 2),
                             "signal": f.signal, "max_score": round(f.max_score, 3),
                             "overlaps": overlaps.get(f.finding_id, 0), "matched": int(matched[f.finding_id - 1])})
        print(json.dumps(summary_heads[-1]), sum(r["seed"] == seed for r in rows), "components", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": f"{card.name} {card.version}", "seed": args.seed,
                                    "families": families, "heads": summary_heads, "components": rows}, indent=1) + "\n")
    analyse(args.out)


def _counts(heads: list[dict], rows: list[dict], offset: float, min_volume_of, min_thickness_of) -> dict:
    """At threshold card + ``offset``, keeping a head's components of at least ``min_volume_of(head)`` mm^3 and
    ``min_thickness_of(head)`` mm: false findings per normal head (all, hypointense) and lesions found (overlapped)
    out of all lesions, over the heads given."""
    normal = [h for h in heads if not h["lesion"]]

    def kept(h):
        return [r for r in rows if r["seed"] == h["seed"] and r["offset"] == offset
                and r["volume_mm3"] >= min_volume_of(h) and r["thickness_mm"] >= min_thickness_of(h)]
    fp = [r for h in normal for r in kept(h)]
    found = sum(len({r["overlaps"] for r in kept(h) if r["overlaps"]}) for h in heads if h["lesion"])
    return {"fp_per_normal_head": round(len(fp) / max(len(normal), 1), 2),
            "hypointense_fp_per_normal_head": round(
                sum(r["signal"] == "hypointense" for r in fp) / max(len(normal), 1), 2),
            "lesions_found": found, "lesions": sum(h["n_lesions"] for h in heads if h["lesion"])}


def rule_table(heads: list[dict], rows: list[dict], offset: float, min_volumes=(None, 10.0, 25.0, 50.0, 100.0)
               ) -> list[dict]:
    """At threshold card + ``offset``: per minimum volume (None: the card's) and minimum thickness (the same for
    every head), false findings per normal head (all, hypointense) and lesions found (overlapped) out of all
    lesions, over the heads given."""
    return [{"offset": offset, "min_volume_mm3": min_volume or "card", "min_thickness_mm": min_thickness,
             **_counts(heads, rows, offset,
                       lambda h, v=min_volume: h["card_min_volume_mm3"] if v is None else v,
                       lambda h, t=min_thickness: t)}
            for min_volume in min_volumes for min_thickness in THICKNESS_MINIMA_MM]


def card_rule(heads: list[dict], rows: list[dict]) -> dict:
    """The card's own rule: each head at its settings' threshold, minimum volume and minimum thickness (offset 0)."""
    return {"offset": 0.0, "min_volume_mm3": "card", "min_thickness_mm": "card",
            **_counts(heads, rows, 0.0, lambda h: h["card_min_volume_mm3"], lambda h: h["card_min_thickness_mm"])}


if __name__ == "__main__":
    main()
