"""Validation experiment: should findings keep a margin from the brain mask's surface (and should the
detection map be median-filtered first)?

Usage: python benchmarks/edge_margin.py [--model NAME|PATH] [--maps-dir DIR] [--val-maps 4] [--n 6]
       [--margins 0,2,3,4,6] [--median-sizes 0] [--contrast any|clinical]

Synthetic heads made from the held-out *validation* label maps (the last --val-maps maps; never the tumour test
cases): --n healthy heads and --n heads with a disease-like lesion (tumour, MS, infarct, haemorrhage), each
scored like a clinical scan (deepbet brain extraction on the head with skull, N4, alignment). For each margin m
(mm) the detection map is thresholded at the card's threshold inside the brain mask eroded by m (the voxels at
least m mm from its surface) and we count false-positive findings per healthy head, lesions found (a finding
overlapping the lesion) and false-positive findings per lesion head. With --median-sizes 0,3,5 the same is
repeated on the detection map after a 3D median filter of that size (voxels; 0 = none; Baur et al.'s
post-processing), at the card's threshold. The detection map is the model's raw one (``postprocess=False``),
also for a card with its own median filter (3.3.0+), whose threshold is then for the filtered map. --contrast clinical gives the heads T1, T2, FLAIR and PD in turn
(as calibration does since 3.1.0); the default draws every family, fully random contrasts included.
Prints one JSON line per margin and median size.
"""

from __future__ import annotations

import json

import numpy as np
from scipy import ndimage

from _validation import heads_in_turn, validation_parser, validation_scorer  # noqa: E402


def main() -> None:
    parser = validation_parser(__doc__.splitlines()[0], n=6)
    parser.add_argument("--margins", default="0,2,3,4,6")
    parser.add_argument("--median-sizes", default="0")
    parser.add_argument("--contrast", choices=("any", "clinical"), default="any")
    args = parser.parse_args()
    setup = validation_scorer(args)
    if setup is None:
        return
    scorer, card, files = setup
    from napari_uad.findings import interior, label_components
    from napari_uad.io import Volume
    from napari_uad.synth_labels import CLINICAL_FAMILIES

    det, thr = card.detection_map, card.default_threshold()
    min_volume = float(card.calibration.get("min_volume_mm3", 0.0))
    margins = [float(m) for m in args.margins.split(",")]
    medians = [int(m) for m in args.median_sizes.split(",")]
    settings = [(m, size) for size in medians for m in margins]
    counts = {key: {"fp_healthy": 0, "found": 0, "lesions": 0, "fp_lesion": 0} for key in settings}
    families = CLINICAL_FAMILIES if args.contrast == "clinical" else ()
    for i, _, head in heads_in_turn(files, 2 * args.n, 200_000, families, lambda i: None if i < args.n else "any",
                                    normal_variants=False):
        lesion = i >= args.n
        volume = Volume.from_array(head.data, head.affine, modality="MR")
        result = scorer.score(volume, (det,), postprocess=False)  # raw map: the filter is the experiment's
        filtered = {size: result.maps[det] if size < 2 else ndimage.median_filter(result.maps[det], size)
                    for size in medians}
        for m, size in settings:
            score = np.where(interior(result.mask, volume.spacing, m), filtered[size], 0.0).astype(np.float32)
            labels, n = label_components(score, thr, volume.voxel_volume_mm3, min_volume)
            hits = set(np.unique(labels[head.lesion])) - {0} if lesion else set()
            c = counts[(m, size)]
            if lesion:
                c["lesions"] += 1
                c["found"] += bool(hits)
                c["fp_lesion"] += n - len(hits)
            else:
                c["fp_healthy"] += n
        print(f"head {i} ({head.params.get('lesion', 'healthy')}, {head.params['contrast_family']}) scored",
              flush=True)
    for m, size in settings:
        c = counts[(m, size)]
        print(json.dumps({"margin_mm": m, "median_size": size, "fp_per_healthy_head": c["fp_healthy"] / args.n,
                          "lesions_found": f"{c['found']}/{c['lesions']}",
                          "fp_per_lesion_head": c["fp_lesion"] / args.n}))


if __name__ == "__main__":
    main()
