"""Validation experiment: which synthetic lesions does the card's operating point find, per recognised contrast?

Usage: python benchmarks/lesions_by_contrast.py [--model NAME|PATH] [--maps-dir DIR] [--val-maps 4] [--n 4]
       [--seed 330000] [--out runs/lesions_by_contrast.json]

``4 * --n`` lesion heads from the held-out *validation* label maps (the last --val-maps maps; never the tumour test
cases), contrast families T1, T2, FLAIR, PD in turn and lesion kinds tumour, MS, infarct, haemorrhage in turn (each
family gets each kind once per 16 heads), normal variants, seeds from --seed, each scored on its true brain as a
skull-stripped scan (as calibration with --true-brain-masks scores them). Findings are made as ``napari-uad score``
makes them (the card's operating point for the recognised contrast, its edge margin). For every lesion object (a
connected component of the lesion mask, as object recall counts them) one line: kind, volume (mm^3), the detection
map's maximum inside it, how many mm^3 of it reach the threshold, whether a finding overlaps it (``found``: what a
reviewer sees) and whether a finding matches it by object recall's rule (``matched``: ``metrics.component_matches``,
the finding's centroid inside it and a size within 0.5-2x). Says why a contrast's object recall is what it is (too
small, too faint, or cut by the minimum volume); changes no card.
"""

from __future__ import annotations

import json

import numpy as np
from scipy import ndimage

from _validation import heads_in_turn, validation_args  # noqa: E402


def main() -> None:
    def options(parser) -> None:
        parser.add_argument("--seed", type=int, default=330_000)

    args, setup = validation_args(__doc__.splitlines()[0], 4, "lesions_by_contrast.json", options, scorer=True)
    if setup is None:
        return
    scorer, card, files = setup
    from napari_uad.findings import card_findings
    from napari_uad.metrics import component_matches
    from napari_uad.io import Volume
    from napari_uad.synth_lesions import LESION_KINDS

    structure = ndimage.generate_binary_structure(3, 3)
    rows = []
    kind_of = lambda i: LESION_KINDS[(i // 4) % 4]  # noqa: E731  (each family gets each kind once per 16 heads)
    for i, path, head in heads_in_turn(files, 4 * args.n, args.seed, lesion=kind_of):
        data = np.where(head.brain, head.data, 0).astype(head.data.dtype)
        volume = Volume.from_array(data, head.affine, modality="MR")
        result = scorer.score(volume, mask=head.brain)
        labels, _, threshold, min_volume = card_findings(result, volume, card)
        score_map = result.maps[card.detection_map]
        voxel_mm3 = float(np.prod(volume.spacing))
        matched = set(component_matches(labels, head.lesion)[1].tolist())
        objects, n_objects = ndimage.label(head.lesion > 0, structure=structure)
        for k in range(1, n_objects + 1):
            inside = objects == k
            row = {"seed": args.seed + i, "family": head.params["contrast_family"],
                   "recognised_contrast": result.contrast, "kind": kind_of(i), "threshold": round(threshold, 3),
                   "min_volume_mm3": min_volume,
                   "lesion_mm3": round(float(inside.sum()) * voxel_mm3, 1),
                   "max_score": round(float(score_map[inside].max()), 3),
                   "mm3_above_threshold": round(float((score_map[inside] >= threshold).sum()) * voxel_mm3, 1),
                   "found": bool((labels[inside] > 0).any()), "matched": k in matched}
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = {}
    for contrast in sorted({r["recognised_contrast"] or "unrecognised" for r in rows}):
        mine = [r for r in rows if (r["recognised_contrast"] or "unrecognised") == contrast]
        summary[contrast] = {kind: f"{sum(r['found'] for r in mine if r['kind'] == kind)} found, "
                                   f"{sum(r['matched'] for r in mine if r['kind'] == kind)} matched / "
                                   f"{sum(r['kind'] == kind for r in mine)}" for kind in LESION_KINDS}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": f"{card.name} {card.version}", "seed": args.seed, "n": args.n,
                                    "found_by_contrast_and_kind": summary, "lesions": rows}, indent=1) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
