"""Gross-anomaly check of the out-of-distribution guard: a synthetic brain with a bright ball over 30 % of it.

Usage: python benchmarks/ood_ball.py [--model NAME|PATH] [--contrasts t1,t2,flair,pd] [--seed 2026] [--dark]
       [--out runs/ood_ball]

For each contrast, the MNI-template synthetic brain of --seed (``synth.healthy_volume``, the sample brain's
generator) with its central 30 % replaced by a textured ball at 1.8 x its 99th intensity percentile
(``synth.bright_ball``; with --dark a ball at its 1st percentile, ``synth.dark_ball``) is written to --out and
scored with ``napari-uad score`` (default maps). Prints per contrast: how the scan was read, the brain mask's
volume and fit to the template, the share of the ball inside the brain mask, the findings, how many of them touch
the ball, and the guard's warnings. No finding and no warning on such a scan is a failure the guard exists to
prevent.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--contrasts", default="t1,t2,flair,pd")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--dark", action="store_true", help="a dark ball (synth.dark_ball) instead of a bright one")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "ood_ball")
    args = parser.parse_args()
    from napari_uad.cli import main as cli_main
    from napari_uad.synth import bright_ball, dark_ball, healthy_volume

    args.out.mkdir(parents=True, exist_ok=True)
    for contrast in args.contrasts.split(","):
        case = healthy_volume(args.seed, contrast=contrast)
        data, ball = (dark_ball if args.dark else bright_ball)(case.data, 0.3)
        scan = args.out / f"{'dark' if args.dark else 'ball'}_{contrast}.nii.gz"
        nib.save(nib.Nifti1Image(data, case.affine), str(scan))
        command = ["score", str(scan), "--out", str(args.out / "pred"), "--quiet", "--device", "cpu"]
        if cli_main(command + (["--model", args.model] if args.model else [])) != 0:
            raise SystemExit(f"{scan}: scoring failed")
        stem = args.out / "pred" / scan.name.removesuffix(".nii.gz")
        report = json.loads(Path(f"{stem}.json").read_text())
        # the outputs share the input file's voxel grid, so the ball mask indexes them directly
        labels = np.asarray(nib.load(f"{stem}.labels.nii.gz").dataobj)
        mask = np.asarray(nib.load(f"{stem}.brainmask.nii.gz").dataobj) > 0
        ood = report["out_of_distribution"]
        print(json.dumps({"contrast": contrast, "read_as": report.get("contrast"),
                          "model": f"{report['model']['name']} {report['model']['version']}",
                          "brain_ml": ood.get("brain_volume_ml"), "template_brain_dice": ood.get("template_brain_dice"),
                          "ball_in_brain_mask": round(float(mask[ball].mean()), 3),
                          "findings": report["n_findings"],
                          "findings_on_ball": len(set(np.unique(labels[ball]).tolist()) - {0}),
                          "fraction_above_card_threshold": ood.get("fraction_above_card_threshold"),
                          "warnings": report["warnings"]}), flush=True)


if __name__ == "__main__":
    main()
