"""Validation experiment: which contrasts and tissues carry the false findings on normal heads?

Usage: python benchmarks/fp_by_contrast.py [--model NAME|PATH] [--maps-dir DIR] [--val-maps 4] [--n 3]
       [--seed 600000] [--skull-stripped] [--declare-sequence] [--families clinical|LIST]
       [--out runs/fp_by_contrast.json]

--n healthy heads per clinical contrast (T1, T2, FLAIR, PD; --families: these instead) from the held-out *validation* label maps (the last
--val-maps maps, never the tumour test cases), with normal variants (periventricular rim, choroid plexus), seeds
from --seed (calibration uses 100000+), each scored like a clinical scan (deepbet brain extraction on the head with
skull, N4, alignment, the card's default maps) and its findings made exactly as ``napari-uad score`` makes them (the
card's operating point for the head's settings -- its recognised contrast, or with --declare-sequence the sequence of
its contrast family where the card has settings for it -- and its edge margin). Every finding on a normal head is
false; each is attributed to the tissue its voxels mostly lie in (the head's own labels: CSF, GM, WM, deep grey
matter, normal variant, outside the true brain). Heads whose brain mask has Dice < 0.9 with the true brain are
counted apart, as calibration leaves them out (``calibration.MIN_BRAIN_MASK_DICE``). --skull-stripped presents each
head as a skull-stripped scan instead (its true brain, background 0: how the real test gliomas come), which
separates false findings caused by a failed brain extraction from those of the maps themselves. Each head's
out-of-distribution warnings (``ood.check_score``, what `score` prints and S.json holds) are counted too, kept and
failed heads apart: whether a failed brain extraction reaches the user as a warning, and how often a good one
raises a false alarm; and the numbers the guard read (``ood.check_score``'s facts, as S.json holds them): the Dice
of the brain mask with the aligned template's brain, the brain volume and the fitted CSF / GM / WM means
(standardised units), from which the recognised contrast comes (``tissue.scan_contrast``). A head the
preprocessing refuses (brain extraction or alignment fails: `score` stops with a one-line error) is counted as
refused. Prints a line per head and writes the per-contrast totals to --out (JSON).
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np

from _validation import heads_in_turn, validation_args  # noqa: E402


def tissue_of(labels: np.ndarray) -> str:
    """The tissue most of a finding's head labels (FreeSurfer numbering) belong to."""
    from napari_uad.synth_labels import TISSUE_CLASSES
    from napari_uad.synth_variants import VARIANT_LABELS

    names = []
    for lab in labels.ravel().tolist():
        if lab == 0 or lab >= 500:
            names.append("outside brain")
        elif lab in VARIANT_LABELS:
            names.append("normal variant")
        else:
            names.append(next((n for n, labs in TISSUE_CLASSES.items() if lab in labs), "deep"))
    return Counter(names).most_common(1)[0][0]


def main() -> None:
    def options(parser) -> None:
        parser.add_argument("--seed", type=int, default=600_000)
        parser.add_argument("--skull-stripped", action="store_true",
                            help="score each head's true brain on a zero background instead of the head with skull")
        parser.add_argument("--declare-sequence", action="store_true",
                            help="declare each head the sequence of its contrast family (as `score --sequence`), so "
                                 "the card's settings for that sequence apply where it has some")
        parser.add_argument("--families", default="clinical",
                            help="contrast families of the heads, taken in turn (default: clinical = t1,t2,flair,pd; "
                                 "e.g. t2,pd for a change that only bright-fluid scans see)")

    args, setup = validation_args(__doc__.splitlines()[0], 3, "fp_by_contrast.json", options, scorer=True)
    if setup is None:
        return
    scorer, card, files = setup
    from napari_uad.calibration import MIN_BRAIN_MASK_DICE
    from napari_uad.findings import card_findings
    from napari_uad.io import Volume
    from napari_uad.mask import dice
    from napari_uad.ood import check_score
    from napari_uad.synth_labels import parse_families

    families = parse_families(args.families)
    if not families:
        raise SystemExit("--families: name them (clinical or a list such as t2,pd); per-family totals need them")
    margin = float(card.calibration.get("edge_margin_mm", 0.0))
    totals = {f: {"heads": 0, "findings": 0, "by_tissue": Counter(), "failed_brain_masks": 0,
                  "findings_on_failed": 0, "warned": 0, "failed_warned": 0, "refused": 0} for f in families}
    for i, path, head in heads_in_turn(files, args.n * len(families), args.seed, families):
        seed, family = args.seed + i, head.params["contrast_family"]
        data = np.where(head.brain, head.data, 0).astype(head.data.dtype) if args.skull_stripped else head.data
        volume = Volume.from_array(data, head.affine, modality="MR")
        if args.declare_sequence:
            volume.metadata.update(sequence=family, sequence_source="benchmark: the head's contrast family")
        try:
            result = scorer.score(volume)
        except ValueError as err:  # brain extraction or alignment refused the scan: `score` stops with this line
            totals[family]["refused"] += 1
            print(json.dumps({"seed": seed, "family": family, "label_map": path.name, "refused": str(err)}), flush=True)
            continue
        # the card's operating point for the head's recognised contrast, as `napari-uad score` uses
        labels, findings, threshold, min_volume = card_findings(result, volume, card)
        where = [tissue_of(head.labels[labels == f.finding_id]) for f in findings]
        brain_dice = float(dice(result.mask, head.brain))
        warnings, facts = check_score(result, volume.voxel_volume_mm3, card, card.detection_map)
        t = totals[family]
        if brain_dice < MIN_BRAIN_MASK_DICE:
            t["failed_brain_masks"] += 1
            t["findings_on_failed"] += len(findings)
            t["failed_warned"] += bool(warnings)
        else:
            t["heads"] += 1
            t["findings"] += len(findings)
            t["by_tissue"].update(where)
            t["warned"] += bool(warnings)
        print(json.dumps({"seed": seed, "family": family, "recognised_contrast": result.contrast,
                          "settings": result.settings,
                          "threshold": round(threshold, 4), "min_volume_mm3": min_volume, "label_map": path.name,
                          "brain_mask_dice": round(brain_dice, 3), "findings": len(findings),
                          "tissues": dict(Counter(where)),
                          "warnings": [w.split(":")[0][:80] for w in warnings],
                          **{k: facts.get(k) for k in ("template_brain_dice", "brain_volume_ml",
                                                       "tissue_means_csf_gm_wm")}}), flush=True)
    pooled = card.operating_point()
    out = {"model": f"{card.name} {card.version}", "threshold": pooled[0], "min_volume_mm3": pooled[1],
           "by_contrast": {c: [p["threshold"], p["min_volume_mm3"]] for c, p in card.contrast_points.items()},
           "edge_margin_mm": margin, "seeds_from": args.seed, "skull_stripped": args.skull_stripped,
           "declared_sequence": args.declare_sequence, "families": list(families),
           "per_contrast": {f: {**t, "by_tissue": dict(t["by_tissue"]),
                                "findings_per_normal_head": t["findings"] / t["heads"] if t["heads"] else None}
                            for f, t in totals.items()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["per_contrast"]))


if __name__ == "__main__":
    main()
