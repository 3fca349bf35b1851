"""Validation experiment: does a scan's own tissue fit tell its contrast (``tissue.scan_contrast``)?

Usage: python benchmarks/contrast_recognition.py [--model NAME|PATH] [--maps-dir DIR] [--val-maps 4] [--n 8]
       [--seed 100000] [--out runs/contrast_recognition.json] [--scans FILE ...]

--n synthetic heads per clinical contrast (T1, T2, FLAIR, PD) from the held-out *validation* label maps (maps and
contrasts in turn as calibration takes them, seeds from --seed, normal variants), each prepared with the card's
preprocessing on its true brain mask and its tissue mixture fitted as the tissue map fits it (no model needed).
Prints each head's fitted CSF / GM / WM means (in the standardised units) and the contrast the card's rule
(``scoring.tissue_contrast_rule``) recognises, and the
confusion table (true family -> recognised) with the expected answer: t1 and flair -> dark_fluid, t2 and pd ->
bright_fluid (the two contrasts ``scan_contrast`` tells apart).
--scans: also recognise these scan files as ``napari-uad score`` does (brain extraction where needed), e.g. the
real test scans: reported only, never used to choose anything.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from _validation import fitted_tissue, heads_in_turn, validation_args  # noqa: E402


def main() -> None:
    def options(parser) -> None:
        parser.add_argument("--seed", type=int, default=100_000)
        parser.add_argument("--scans", nargs="*", type=Path, default=[])

    args, setup = validation_args(__doc__.splitlines()[0], 8, "contrast_recognition.json", options)
    if setup is None:
        return
    _, card, files = setup
    from napari_uad.sequence import SEQUENCE_FLUID
    from napari_uad.synth_labels import CLINICAL_FAMILIES
    from napari_uad.tissue import CONTRASTS, scan_contrast

    rule = card.scoring.tissue().contrast_rule  # the card's reading, as the scorer's

    rows, confusion = [], Counter()
    for i, _, head in heads_in_turn(files, args.n * len(CLINICAL_FAMILIES), args.seed):
        family = head.params["contrast_family"]
        means = fitted_tissue(card, head.data, head.affine, head.brain).means
        contrast = scan_contrast(means, rule)
        confusion[(family, contrast)] += 1
        row = {"seed": args.seed + i, "family": family, "means_csf_gm_wm": [round(float(m), 3) for m in means],
               "recognised": contrast, "right": contrast == SEQUENCE_FLUID[family]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    scans = []
    if args.scans:
        from napari_uad.io import read_volume
        from napari_uad.scoring import Scorer

        scorer = Scorer(setup[0], card, device="cpu")
        for path in args.scans:
            scans.append({"scan": str(path), "recognised": scorer.score(read_volume(path), ("tissue",)).contrast})
            print(json.dumps(scans[-1]), flush=True)
    table = {f: {c: confusion[(f, c)] for c in CONTRASTS if confusion[(f, c)]} for f in CLINICAL_FAMILIES}
    out = {"model": f"{card.name} {card.version}", "seeds_from": args.seed, "confusion": table,
           "right": sum(r["right"] for r in rows), "heads": len(rows), "rows": rows, "scans": scans}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({"confusion": table, "right": out["right"], "heads": out["heads"]}))


if __name__ == "__main__":
    main()
