"""Validation diagnosis: where does an extracted brain mask differ from a synthetic head's true brain, and what does
that do to the scan's tissue fit (and so to the contrast it is recognised as)?

Usage: python benchmarks/mask_errors.py [--model NAME|PATH] [--maps-dir DIR] [--val-maps 4] --seed 690000
       --heads 4[,11,...] [--out runs/mask_errors.json]

Head i is the i-th normal head that fp_by_contrast.py / calibration make from --seed (validation label map and
clinical contrast in turn, normal variants, seed --seed + i). Each is scored like a clinical scan (the head with
skull: brain extraction, N4, alignment) and again on its true brain mask; printed per head: the extracted mask's
voxels outside the true brain ("extra") and the true brain's voxels it lacks ("missing"), each by the head's own
tissue labels, the median raw intensity of each and of the true CSF / GM / WM, and the fitted CSF / GM / WM means
(standardised units) and recognised contrast both ways. Changes no card.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np

from _validation import heads_in_turn, validation_args  # noqa: E402


def main() -> None:
    def options(parser) -> None:
        parser.add_argument("--seed", type=int, default=690_000)
        parser.add_argument("--heads", required=True, help="comma list of head indices (seed = --seed + index)")

    args, setup = validation_args(__doc__.splitlines()[0], 3, "mask_errors.json", options, scorer=True)
    if setup is None:
        return
    scorer, card, files = setup
    from fp_by_contrast import tissue_of

    from napari_uad.io import Volume
    from napari_uad.synth_labels import TISSUE_CLASSES

    rows = []
    for i, path, head in heads_in_turn(files, 0, args.seed, only=[int(v) for v in args.heads.split(",")]):
        volume = Volume.from_array(head.data, head.affine, modality="MR")
        scored = scorer.score(volume, ("tissue",))
        true = scorer.score(volume, ("tissue",), mask=head.brain)
        extra, missing = scored.mask & ~head.brain, head.brain & ~scored.mask
        data = np.asarray(head.data, dtype=np.float64)
        median = {name: round(float(np.median(data[sel])), 2) if sel.any() else None for name, sel in
                  [("extra", extra), ("missing", missing)] + [
                      (f"true {t}", np.isin(head.labels, labels) & head.brain) for t, labels in TISSUE_CLASSES.items()]}

        def by_tissue(sel: np.ndarray) -> dict:
            counts = Counter(head.labels[sel].ravel().tolist())
            out: Counter = Counter()
            for label, n in counts.items():
                out[tissue_of(np.array([label]))] += n
            return dict(out.most_common())

        row = {"seed": args.seed + i, "family": head.params["contrast_family"], "label_map": path.name,
               "mask_voxels": int(scored.mask.sum()), "true_brain_voxels": int(head.brain.sum()),
               "extra": by_tissue(extra), "missing": by_tissue(missing), "median_raw_intensity": median,
               "as_scored": {"contrast": scored.contrast,
                             "tissue_means_csf_gm_wm": [round(float(m), 3) for m in scored.tissue_means]},
               "true_brain": {"contrast": true.contrast,
                              "tissue_means_csf_gm_wm": [round(float(m), 3) for m in true.tissue_means]}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": f"{card.name} {card.version}", "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
