"""Validation experiment: can the extent or the thickness of the brain region that is hypointense for its tissue
tell a large dark anomaly (``synth.dark_ball``: a cavity over 30 % of the brain) from healthy and lesion heads?

Usage: cd benchmarks && python hypointense_region.py N OUT.jsonl SETS [SEED [STATS]]

SETS: comma-separated sets of ``tissue_order.py`` (label, label-lesion, mni, mni-lesion, ball, dark; N per
contrast, 8 per lesion kind, seeds from SEED (default 720000) as there). Per head, from the signed tissue map on
its true brain mask (no model pass): the minimum of the brain-normalised Gaussian-smoothed map (5 and 10 mm)
inside the brain; the volume (ml) of the largest connected region of tissue <= -2 after a morphological opening
by a ball of 2 and 4 mm; and the thickness of the hypointense region: its largest inscribed radius (mm, Euclidean
distance transform in world mm; the brain's outside counts as boundary) for tissue <= -2 and <= -3 (``rmax2``,
``rmax3``) and the same on the map smoothed by 2 mm (``srmax2``, ``srmax3``). STATS: ``all`` (default) or
``thickness`` (the last four only). Appends a JSON line per head. Results and the rules they were judged by:
docs/RESULTS.md, "Out-of-distribution guard: the tissue fit" (extent: not adopted) and "... a thick dark region"
(thickness: ``rmax2`` adopted as ``tissue.hypointense_thickness_mm``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

import tissue_order
from _validation import fitted_tissue, validation_setup
from napari_uad.tissue import hypointense_thickness_mm

LEVEL = 2.0  # tissue map <= -LEVEL: hypointense for its tissue
SMOOTHING_MM = (5.0, 10.0)
OPENING_MM = (2.0, 4.0)
THICKNESS_LEVELS = (2.0, 3.0)
THICKNESS_SMOOTHING_MM = 2.0


def _ball(radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    reach = np.ceil(radius_mm / spacing).astype(int)
    grid = np.indices(2 * reach + 1).astype(float)
    return (((grid - reach[:, None, None, None]) * spacing[:, None, None, None]) ** 2).sum(0) <= radius_mm**2


def head_stats(tissue: np.ndarray, brain: np.ndarray, spacing, extent: bool = True) -> dict:
    """The statistics of the module docstring for one signed tissue map and brain mask (spacing in mm); without
    ``extent`` the thickness ones only."""
    sp = np.asarray(spacing, np.float64)
    row = {}
    for s in SMOOTHING_MM if extent else ():
        weight = ndimage.gaussian_filter(brain.astype(np.float32), s / sp)
        smoothed = ndimage.gaussian_filter(np.where(brain, tissue, 0).astype(np.float32), s / sp)
        row[f"smin{int(s)}"] = round(float((smoothed / np.maximum(weight, 1e-6))[brain & (weight > 0.5)].min()), 3)
    hypo = brain & (tissue <= -LEVEL)
    for r in OPENING_MM if extent else ():
        labels, n = ndimage.label(ndimage.binary_opening(hypo, _ball(r, sp)))
        largest = np.bincount(labels.ravel())[1:].max() if n else 0
        row[f"lcc2_r{int(r)}_ml"] = round(float(largest * np.prod(sp) / 1000), 1)
    for level in THICKNESS_LEVELS:
        for prefix, smoothing in (("", 0.0), ("s", THICKNESS_SMOOTHING_MM)):
            radius = hypointense_thickness_mm(tissue, brain, spacing, level, smoothing)
            row[f"{prefix}rmax{int(level)}"] = round(radius, 2)
    return row


def main() -> None:
    n, out, sets = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3].split(",")
    seed = int(sys.argv[4]) if len(sys.argv) > 4 else 720_000
    extent = (sys.argv[5] if len(sys.argv) > 5 else "all") == "all"
    root = Path(__file__).resolve().parents[1]
    args = argparse.Namespace(model=None, maps_dir=root.parent / "shared" / "data" / "synthseg_label_maps",
                              val_maps=4, n=n, n_lesion=8, seed=seed)
    setup = validation_setup(args)
    if setup is None:
        return
    _, card, files = setup
    with out.open("a") as f:
        for name in sets:
            for family, data, affine, brain in tissue_order._cases(name, files, args):
                fit = fitted_tissue(card, data, affine, brain)
                row = {"set": name, "family": family, **head_stats(fit.tissue, fit.brain, fit.spacing, extent)}
                f.write(json.dumps(row) + "\n")
                f.flush()
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
