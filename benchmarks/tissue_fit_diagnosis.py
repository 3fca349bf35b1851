"""Diagnosis of the tissue map on one validation head: which structures the fitted classes and the priors explain,
with the priors as aligned (affine) and deformed onto the scan (``TissueSettings.deform_mm``).

Usage: python benchmarks/tissue_fit_diagnosis.py [--maps-dir DIR] [--val-maps 4] [--seed 600000] [--index 4]
       [--deform-mm 3] [--class-peak] [--png docs/results/tissue_fit_600004.png] [--out runs/tissue_fit_diagnosis.json]

The head is the ``--index``-th of ``heads_in_turn(validation maps, ..., --seed)`` -- the same head as
``fp_by_contrast.py`` with that seed (index 4, seed 600000: the T2 head 600004, whose false findings on its true
brain lie in CSF). It is prepared with the card's preprocessing on its true brain mask. Printed and written: per
structure (ventricles, extracerebral CSF, cortex, white matter; FreeSurfer labels) the voxel count in the brain
and the standardised intensity mean / sd; the fitted classes (CSF, GM, WM means and sds) and each structure's
mean CSF prior, with affine and deformed priors; the fraction of each structure above the tissue map's value 3.
The PNG shows the axial slice through the ventricles' centre: the scan, the CSF prior (affine, deformed) and the
tissue map (affine, deformed), in the scan's canonical voxel grid (RAS; x = i to the right, y = j up).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from _validation import ROOT, heads_in_turn, validation_args  # noqa: E402

STRUCTURES = {"ventricles": (4, 43), "extracerebral CSF": (24,), "cortex": (3, 42), "white matter": (2, 41)}
MAP_LEVEL = 3.0


def main() -> None:
    def options(parser) -> None:
        parser.add_argument("--seed", type=int, default=600_000)
        parser.add_argument("--index", type=int, default=4)
        parser.add_argument("--deform-mm", type=float, default=3.0)
        parser.add_argument("--class-peak", action="store_true", help="the card's tissue settings with class_peak on")
        parser.add_argument("--png", type=Path, default=ROOT / "docs" / "results" / "tissue_fit_600004.png")

    args, setup = validation_args(__doc__.splitlines()[0], 1, "tissue_fit_diagnosis.json", options)
    if setup is None:
        return
    _, card, files = setup
    from napari_uad.io import Volume
    from napari_uad.preprocessing import prepare_volume
    from napari_uad.tissue import _at_voxels, _box_priors, deformed_priors, fit_tissue_mixture, tissue_outliers

    *_, (_, path, head) = heads_in_turn(files, args.index + 1, args.seed)
    volume = Volume.from_array(head.data, head.affine, modality="MR")
    prepared = prepare_volume(volume, card.preprocessing, card.input_size, mask=head.brain)
    x, brain, labels = prepared.standardised, prepared.brain, head.labels
    base = dataclasses.replace(card.scoring.tissue(), class_peak=card.scoring.tissue().class_peak or args.class_peak)
    box, smoothed = _box_priors(prepared.tissue_priors(), brain, volume.spacing, base)
    inside = brain[box]
    xb, lb = x[brain], labels[box][inside]
    variants = {}
    p = _at_voxels(smoothed, inside, base.prior_floor)
    mu, sd = fit_tissue_mixture(xb, p, partial_volume=base.partial_volume)
    deformed = deformed_priors(xb, inside, smoothed, volume.spacing, mu, sd, args.deform_mm)
    for name, priors, deform in (("affine", smoothed, 0.0), ("deformed", deformed, args.deform_mm)):
        pp = _at_voxels(priors, inside, base.prior_floor)
        m_mu, m_sd = fit_tissue_mixture(xb, pp, partial_volume=base.partial_volume)
        tissue, _ = tissue_outliers(x, brain, prepared.tissue_priors(), volume.spacing,
                                    dataclasses.replace(base, deform_mm=deform))
        tb = tissue[box][inside]
        variants[name] = {"class_means": np.round(m_mu, 3).tolist(), "class_sds": np.round(m_sd, 3).tolist(),
                          **{s: {"csf_prior_mean": round(float(pp[0][np.isin(lb, labs)].mean()), 3),
                                 f"fraction_above_{MAP_LEVEL:g}": round(float((tb[np.isin(lb, labs)] > MAP_LEVEL)
                                                                               .mean()), 3)}
                             for s, labs in STRUCTURES.items()},
                          "map": tissue, "priors": priors}
    structures = {s: {"voxels": int(np.isin(lb, labs).sum()), "mean": round(float(xb[np.isin(lb, labs)].mean()), 3),
                      "sd": round(float(xb[np.isin(lb, labs)].std()), 3)} for s, labs in STRUCTURES.items()}
    report = {"head": {"seed": args.seed + args.index, "label_map": path.name,
                       "family": head.params["contrast_family"]}, "model": f"{card.name} {card.version}",
              "deform_mm": args.deform_mm, "class_peak": base.class_peak, "structures": structures,
              **{n: {k: v for k, v in r.items() if k not in ("map", "priors")} for n, r in variants.items()}}
    print(json.dumps(report, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = int(round(np.argwhere(np.isin(labels, STRUCTURES["ventricles"]) & brain)[:, 2].mean()))
    panels = [("scan (standardised)", x[:, :, k], "gray", None)]
    for n in ("affine", "deformed"):
        panels.append((f"CSF prior, {n}", np.zeros(brain.shape, np.float32), "viridis", (0, 1)))
        panels[-1][1][box] = np.where(inside, variants[n]["priors"][0], 0)
        panels[-1] = (panels[-1][0], panels[-1][1][:, :, k], "viridis", (0, 1))
    for n in ("affine", "deformed"):
        panels.append((f"tissue map, {n} priors", variants[n]["map"][:, :, k], "RdBu_r", (-8, 8)))
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.4))
    for ax, (title, image, cmap, lim) in zip(axes, panels):
        ax.imshow(image.T, cmap=cmap, origin="lower", **({} if lim is None else {"vmin": lim[0], "vmax": lim[1]}))
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.suptitle(f"{head.params['contrast_family'].upper()} validation head {args.seed + args.index} "
                 f"({path.name}), axial slice k={k}; deform {args.deform_mm:g} mm"
                 + ("; class peak" if base.class_peak else ""), fontsize=10)
    fig.tight_layout()
    args.png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png, dpi=60)


if __name__ == "__main__":
    main()
