"""Picture: the combined map of a real scan with and without the dark channel opened (a ball D mm wide).

Usage: python benchmarks/dark_opening_picture.py [--model NAME|PATH] [--scan ../shared/data/real_heads/flair_brain.nii.gz]
       [--opening-mm 3] [--out docs/results/dark_opening/flair_brain.png]

Scores the scan once with the card as it is and once with ``calibration.combined.dark_opening_mm`` set (weights and
everything else unchanged; scanned as ``napari-uad score`` reads it) and draws three axial slices through the
middle of the brain in the scan's canonical grid: the scan, the combined map as the card gives it, the combined map
with the dark channel opened, and where the two differ -- both maps at the same colour scale, thresholded at the
card's operating point for the scan's settings as the contour. Prints the number of findings each way. Not for test
data: meant for the non-test real heads (``../shared/data/real_heads``).
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--scan", type=Path, default=ROOT.parent / "shared" / "data" / "real_heads" / "flair_brain.nii.gz")
    parser.add_argument("--opening-mm", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "dark_opening" / "flair_brain.png")
    args = parser.parse_args()
    if not args.scan.is_file():
        print(f"{args.scan}: not found; nothing to draw")
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from napari_uad.findings import card_findings
    from napari_uad.io import read_volume
    from napari_uad.model_card import load_model
    from napari_uad.scoring import Scorer

    model, card = load_model(args.model)
    opened_card = copy.deepcopy(card)
    opened_card.calibration.setdefault("combined", {})["dark_opening_mm"] = args.opening_mm
    volume = read_volume(args.scan)
    results = [Scorer(model, c, device="cpu").score(volume) for c in (card, opened_card)]
    counts = [len(card_findings(r, volume, c)[1]) for r, c in zip(results, (card, opened_card))]
    threshold, _ = card.operating_point(results[0].settings)
    brain = results[0].mask
    ks = np.flatnonzero(brain.any(axis=(0, 1)))
    slices = [int(k) for k in np.percentile(ks, [40, 55, 70])]
    maps = [r.maps["combined"] for r in results]
    vmax = float(max(m.max() for m in maps))
    fig, axes = plt.subplots(len(slices), 4, figsize=(13, 3.3 * len(slices)))
    titles = ["scan", f"combined ({counts[0]} findings)",
              f"dark channel opened {args.opening_mm:g} mm ({counts[1]} findings)", "lowered by the opening"]
    for row, k in enumerate(slices):
        panels = [volume.data[:, :, k], maps[0][:, :, k], maps[1][:, :, k], (maps[0] - maps[1])[:, :, k]]
        for col, panel in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(np.rot90(panel), cmap="gray" if col == 0 else "magma",
                      vmin=0 if col else None, vmax=vmax if col else None)
            if col in (1, 2):
                ax.contour(np.rot90(panel >= threshold), levels=[0.5], colors="cyan", linewidths=0.6)
            ax.set_axis_off()
            ax.set_title(f"{titles[col]}, slice {k}" if row == 0 else f"slice {k}", fontsize=9)
    fig.suptitle(f"{args.scan.name}: {card.name} {card.version}, settings {results[0].settings}, "
                 f"threshold {threshold:.2f} (cyan)", fontsize=10)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=70)
    print(f"{args.scan}: findings {counts[0]} as the card gives them, {counts[1]} with the dark channel opened by "
          f"{args.opening_mm:g} mm; picture {args.out}")


if __name__ == "__main__":
    main()
