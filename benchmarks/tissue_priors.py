"""Validation experiment: which tissue-map settings (prior smoothing, prior floor, class peak, partial volume)
hold on real anatomy?

Usage: python benchmarks/tissue_priors.py [--model NAME|PATH] [--maps-dir DIR] [--val-maps 4] [--n 24]
       [--out runs/tissue_priors.json] [--sigmas 0,4] [--floors 0.001,0.05] [--class-peak no,yes]
       [--partial-volume no] [--sign-from-prior no] [--fluid-floors 0] [--deform-mm 0] [--pv-boundary-mm 0]

Synthetic heads made from the held-out *validation* label maps (the last --val-maps maps: real subjects'
anatomy, so the template fits them only as well as an affine alignment fits a patient; seeds 400000+; never the
tumour test cases), clinical contrasts in turn (T1, T2, FLAIR, PD), every third head normal, the others with one
disease-like lesion (``synth_lesions``). Each head is prepared once with the card's preprocessing and its known
brain mask; then the tissue map (``napari_uad.tissue``) is computed for every variant of ``TissueSettings`` in
the grid given (the product of the lists).

Per variant: pixel AP / AUROC (sklearn; brain voxels of the lesion heads pooled; non-lesion voxels subsampled
1 in 4 with weight 4), AP per contrast family, and at one threshold per variant -- the 99.9 % quantile of the
normal heads' brain voxels -- findings >= 25 mm^3 (the plain overlap rule): false findings per normal head,
lesions found, false findings per lesion head. Each variant is scored twice: its upper tail (``tail``
"bright", the map as the detection threshold reads it) and its magnitude ("both": bright and dark lesions).
Prints one JSON line per variant and tail; writes all rows to --out.
"""

from __future__ import annotations

import itertools
import json
import time

import numpy as np

from _validation import validation_args  # noqa: E402

FAMILIES = ("t1", "t2", "flair", "pd")
FPR = 1e-3  # the per-variant threshold: this fraction of normal brain voxels lies above it
MIN_VOLUME_MM3 = 25.0
SUBSAMPLE = 4


def _box(mask: np.ndarray) -> tuple[slice, ...]:
    idx = np.argwhere(mask)
    return tuple(slice(int(a), int(b) + 1) for a, b in zip(idx.min(0), idx.max(0)))


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(t) for t in text.split(","))


def _flags(text: str) -> tuple[bool, ...]:
    return tuple({"no": False, "yes": True}[t.strip()] for t in text.split(","))


def main() -> None:
    def options(parser) -> None:
        parser.add_argument("--sigmas", type=_floats, default=(0.0, 4.0),
                            help="prior smoothing (mm), comma-separated")
        parser.add_argument("--floors", type=_floats, default=(1e-3, 0.05))
        parser.add_argument("--class-peak", type=_flags, default=(False, True), help="no,yes")
        parser.add_argument("--partial-volume", type=_flags, default=(False,), help="no,yes")
        parser.add_argument("--sign-from-prior", type=_flags, default=(False,), help="no,yes")
        parser.add_argument("--fluid-floors", type=_floats, default=(0.0,),
                            help="CSF prior floor on fluid-bright scans (TissueSettings.fluid_floor), comma-separated")
        parser.add_argument("--deform-mm", type=_floats, default=(0.0,),
                            help="priors deformed onto the scan, each demons update smoothed by this many mm "
                                 "(TissueSettings.deform_mm); 0 = off")
        parser.add_argument("--pv-boundary-mm", type=_floats, default=(0.0,),
                            help="two-tissue mixtures only within this many mm of both tissues "
                                 "(TissueSettings.pv_boundary_mm); 0 = off")

    args, setup = validation_args(__doc__.splitlines()[0], 24, "tissue_priors.json", options)
    if setup is None:
        return
    _, card, files = setup
    from sklearn.metrics import average_precision_score, roc_auc_score

    from napari_uad.findings import label_components
    from napari_uad.io import Volume
    from napari_uad.metrics import finding_overlaps
    from napari_uad.preprocessing import prepare_volume
    from napari_uad.synth_labels import label_head
    from napari_uad.tissue import TissueSettings, smooth_priors, tissue_outlier_map

    variants = list(itertools.product(args.sigmas, args.floors, args.class_peak, args.partial_volume,
                                      args.sign_from_prior, args.fluid_floors, args.deform_mm, args.pv_boundary_mm))
    normal_maps: list[list[np.ndarray]] = [[] for _ in variants]  # per variant: the normal heads' cropped maps
    normal_family: list[str] = []
    lesion_maps: list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = [[] for _ in variants]
    pooled: list[list[np.ndarray]] = [[] for _ in variants]
    truth, weights, family_of = [], [], []
    t0 = time.perf_counter()
    order = sorted(range(args.n), key=lambda i: i % 3 != 2)  # normal heads first
    for i in order:
        normal = i % 3 == 2
        family = FAMILIES[i % len(FAMILIES)]
        head = label_head(files[i % len(files)], 400_000 + i, family=family, lesion=None if normal else "any")
        volume = Volume.from_array(head.data, head.affine, modality="MR")
        prepared = prepare_volume(volume, card.preprocessing, card.input_size, mask=head.brain)
        priors, brain = prepared.tissue_priors(), prepared.brain
        box = _box(brain)
        lesion = head.lesion[box] & brain[box]
        inside = brain[box]
        if not normal:
            keep = lesion[inside] | (np.arange(int(inside.sum())) % SUBSAMPLE == 0)
            truth.append(lesion[inside][keep])
            weights.append(np.where(lesion[inside][keep], 1.0, float(SUBSAMPLE)))
            family_of.append(np.full(int(keep.sum()), family))
        else:
            normal_family.append(family)
        smoothed = {s: smooth_priors(priors, volume.spacing, s) for s in args.sigmas}
        for v, (sigma, floor, peak, pv, sign, fluid, deform, boundary) in enumerate(variants):
            settings = TissueSettings(prior_sigma_mm=0.0, prior_floor=floor, class_peak=peak, partial_volume=pv,
                                      sign_from_prior=sign, fluid_floor=fluid, deform_mm=deform,
                                      pv_boundary_mm=boundary)
            m = tissue_outlier_map(prepared.standardised, brain, smoothed[sigma], volume.spacing, settings)[box]
            if normal:
                normal_maps[v].append(m.astype(np.float16))
            else:
                lesion_maps[v].append((m.astype(np.float16), lesion, inside))
                pooled[v].append(m[inside][keep])
        print(f"head {i} ({family}, {'normal' if normal else head.params.get('lesion')}) "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
    truth_all, w_all, fam_all = np.concatenate(truth), np.concatenate(weights), np.concatenate(family_of)
    rows = []
    for (v, (sigma, floor, peak, pv, sign, fluid, deform, boundary)), tail in itertools.product(
            enumerate(variants), ("bright", "both")):
        look = (lambda m: m) if tail == "bright" else np.abs
        scores = look(np.concatenate(pooled[v]).astype(np.float64))
        threshold = float(np.quantile(look(np.concatenate([m[m != 0] for m in normal_maps[v]]).astype(np.float64)),
                                      1.0 - FPR))
        fp_normal = [label_components(look(m.astype(np.float32)), threshold, 1.0, MIN_VOLUME_MM3)[1]
                     for m in normal_maps[v]]
        found, fp_lesion = 0, []
        for m, lesion, inside in lesion_maps[v]:
            labels, _ = label_components(look(np.where(inside, m.astype(np.float32), 0)), threshold, 1.0,
                                         MIN_VOLUME_MM3)
            overlaps, _ = finding_overlaps(labels, lesion)
            found += any(overlaps.values())
            fp_lesion.append(sum(1 for t in overlaps.values() if t == 0))
        row = {"prior_sigma_mm": sigma, "prior_floor": floor, "class_peak": peak, "partial_volume": pv,
               "sign_from_prior": sign, "fluid_floor": fluid, "deform_mm": deform, "pv_boundary_mm": boundary,
               "tail": tail,
               "ap": round(float(average_precision_score(truth_all, scores, sample_weight=w_all)), 4),
               "auroc": round(float(roc_auc_score(truth_all, scores, sample_weight=w_all)), 4),
               **{f"ap_{f}": round(float(average_precision_score(truth_all[fam_all == f], scores[fam_all == f],
                                                                 sample_weight=w_all[fam_all == f])), 4)
                  for f in FAMILIES if truth_all[fam_all == f].any()},
               "threshold": round(threshold, 3), "fp_per_normal": round(float(np.mean(fp_normal)), 2),
               **{f"fp_per_normal_{f}": round(float(np.mean([n for n, g in zip(fp_normal, normal_family) if g == f])),
                                              2) for f in FAMILIES if f in normal_family},
               "lesions_found": f"{found}/{len(lesion_maps[v])}",
               "fp_per_lesion_head": round(float(np.mean(fp_lesion)), 2)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": f"{card.name} {card.version}", "n_heads": args.n,
                                    "label_maps": [p.name for p in files], "fpr": FPR,
                                    "min_volume_mm3": MIN_VOLUME_MM3, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
