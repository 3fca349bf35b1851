"""``napari-uad evaluate``: compare ``napari-uad score`` outputs with ground-truth masks and write a report.

Inputs per scan stem S: ``PRED/S.json`` and ``PRED/S.<map>.nii.gz`` (from ``napari-uad score``), ``GT/S.nii.gz``
(binary mask, all zero for a normal scan). Everything is compared in the canonical grid after checking that
shapes and affines agree. Voxels counted are those of the foreground: ``--masks DIR`` (S.nii.gz) if given,
else the automatic mask of the scan recorded in S.json (the rule scoring used).

Pooling: all foreground voxels of all scans are pooled exactly while a scan has at most
``max_negatives_per_scan`` healthy voxels (default 500 000, so memory stays bounded for many 1 mm scans);
above that, that scan's healthy voxels are subsampled uniformly with a seeded generator and weighted by the
inverse rate (an unbiased estimate of AP, AUROC and best Dice); the report says which scans were
subsampled. Positive voxels are always all kept. Dice at the threshold and object metrics use every voxel.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from .calibration import best_dice_threshold
from .export import write_json
from .findings import interior, label_components
from .io import Volume, VolumeError, read_volume
from .mask import foreground_mask, load_mask
from .metrics import dice, object_counts, object_metrics, sample_metrics
from .preprocessing import PreprocessingConfig, normalise_intensity

__all__ = ["evaluate", "BASELINES"]

BASELINES = ("intensity", "histeq")


@dataclass
class _Pool:
    scores: list[np.ndarray] = field(default_factory=list)
    truths: list[np.ndarray] = field(default_factory=list)
    weights: list[np.ndarray] = field(default_factory=list)
    per_scan_ap: list[float] = field(default_factory=list)
    counts: list = field(default_factory=list)
    volume_scores: list[float] = field(default_factory=list)
    inter: int = 0
    pred_sum: int = 0

    def arrays(self):
        return np.concatenate(self.scores), np.concatenate(self.truths), np.concatenate(self.weights)


def _read_grid(path: Path, reference: Volume | None, allow_constant: bool = True) -> Volume:
    """Read a volume that must have the ground truth's grid (original shape and affine)."""
    if not path.exists():
        raise VolumeError(path, "file not found")
    vol = read_volume(path, modality="MR", allow_constant=allow_constant)
    if reference is not None and (vol.original_shape != reference.original_shape
                                  or not np.allclose(vol.original_affine, reference.original_affine, atol=1e-3)):
        raise VolumeError(path, f"grid {vol.original_shape} does not match the ground truth {reference.path} "
                                f"(grid {reference.original_shape}; shape and affine must be equal)")
    return vol


def _histeq(values: np.ndarray) -> np.ndarray:
    """Histogram-equalised intensity of foreground voxels: empirical CDF in [0, 1] (equal values, equal rank)."""
    from scipy.stats import rankdata

    return (rankdata(values, method="max") / max(1, values.size)).astype(np.float32)


def evaluate(pred_dir: str | Path, gt_dir: str | Path, maps: tuple[str, ...] | None = None,
             masks_dir: str | Path | None = None, threshold_from: str | float = "card",
             out_dir: str | Path | None = None, max_negatives_per_scan: int = 500_000, seed: int = 0,
             log=lambda m: None) -> dict:
    """Evaluate score outputs against ground truth; returns the summary dict (and writes the report)."""
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    reports = sorted(pred_dir.glob("*.json"))
    if not reports:
        raise ValueError(f"{pred_dir}: no napari-uad score outputs (S.json) found")
    stems = [r.name[: -len(".json")] for r in reports]
    missing = [s for s in stems if not any((gt_dir / f"{s}{x}").is_file() for x in (".nii.gz", ".nii"))]
    if missing:
        raise ValueError(f"{gt_dir}: no ground truth for {', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}")
    first = json.loads(reports[0].read_text(encoding="utf-8"))
    maps = tuple(maps or first["maps"])
    methods = list(maps) + list(BASELINES)
    pools = {m: _Pool() for m in methods}
    rng = np.random.default_rng(seed)
    subsampled: list[float] = []
    abnormal: list[bool] = []
    elbo_scores: list[float] = []
    per_scan_rows = []
    for stem, report_path in zip(stems, reports):
        report = json.loads(report_path.read_text(encoding="utf-8"))
        gt_path = next(gt_dir / f"{stem}{x}" for x in (".nii.gz", ".nii") if (gt_dir / f"{stem}{x}").is_file())
        gt = _read_grid(gt_path, None)
        truth = gt.data > 0
        scan = None
        scan_path = Path(report["scan"]["path"])
        if scan_path.exists():
            scan = _read_grid(scan_path, gt, allow_constant=False)
        if masks_dir is not None:
            fg = load_mask(Path(masks_dir) / f"{stem}.nii.gz", gt)
        elif scan is not None:
            fg = foreground_mask(scan.data)
        else:
            raise ValueError(f"{scan_path}: scan not found to derive the foreground; pass --masks DIR")
        allowed = fg  # where findings may lie: as `score` found them (brain mask less its edge margin)
        brainmask = pred_dir / f"{stem}.brainmask.nii.gz"
        if report.get("edge_margin_mm", 0) > 0 and brainmask.is_file():
            brain = _read_grid(brainmask, gt).data > 0
            allowed = fg & interior(brain, gt.spacing, float(report["edge_margin_mm"]))
        t = truth[fg]
        neg = np.flatnonzero(~t)
        keep = np.flatnonzero(t)
        weight_neg = 1.0
        if neg.size > max_negatives_per_scan:
            rate = max_negatives_per_scan / neg.size
            neg = np.sort(rng.choice(neg, size=max_negatives_per_scan, replace=False))
            weight_neg = 1.0 / rate
            subsampled.append(rate)
        idx = np.concatenate([keep, neg])
        weights = np.concatenate([np.ones(keep.size, np.float32), np.full(neg.size, weight_neg, np.float32)])
        scores_by_method: dict[str, np.ndarray] = {}
        for m in maps:
            scores_by_method[m] = _read_grid(pred_dir / f"{stem}.{m}.nii.gz", gt).data
        if scan is not None:
            z = normalise_intensity(scan.data, fg, PreprocessingConfig(clip=(-1e6, 1e6)))
            scores_by_method["intensity"] = z
            he = np.zeros(scan.shape, np.float32)
            he[fg] = _histeq(scan.data[fg])
            scores_by_method["histeq"] = he
        row = {"scan": stem, "normal": not truth.any(), "anomalous_voxels": int(truth.sum())}
        for m in methods:
            if m not in scores_by_method:
                continue
            full = scores_by_method[m]
            values = full[fg]
            pool = pools[m]
            pool.scores.append(values[idx].astype(np.float32))
            pool.truths.append(t[idx])
            pool.weights.append(weights)
            if t.any():
                ap = float(average_precision_score(t, values))
                pool.per_scan_ap.append(ap)
                row[f"{m}_ap"] = ap
            thr = _threshold(report, m, threshold_from)
            if thr is not None:
                pred = (full >= thr) & fg
                pool.inter += int((pred & truth).sum())
                pool.pred_sum += int(pred.sum())
                labels, _ = label_components(np.where(allowed, full, -np.inf), thr, gt.voxel_volume_mm3,
                                             float(report.get("min_volume_mm3", 0.0)), report.get("connectivity", 3),
                                             float(report.get("min_thickness_mm", 0.0))
                                             if m == report.get("detection_map") else 0.0, gt.spacing)
                pool.counts.append(object_counts(labels, truth))
                row[f"{m}_dice"] = dice(pred, truth)
            pool.volume_scores.append(float(report["sample_scores"]["volume"]) if m in maps
                                      else float(np.quantile(values, 0.999)))
        abnormal.append(bool(truth.any()))
        elbo_scores.append(float(report["sample_scores"]["volume"]))
        per_scan_rows.append(row)
        log(f"{stem}: evaluated")
    n_true = sum(int(r["anomalous_voxels"]) for r in per_scan_rows)
    summary = {"maps": {}, "baselines": {}, "n_scans": len(stems), "n_normal": int(sum(not a for a in abnormal)),
               "pooling": "exact" if not subsampled else (
                   f"healthy voxels of {len(subsampled)} scans subsampled to {max_negatives_per_scan} each (rates "
                   f"{min(subsampled):.3f}-{max(subsampled):.3f}, seed {seed}) and weighted by the inverse rate"),
               "threshold_from": str(threshold_from)}
    curves = {}
    for m in methods:
        pool = pools[m]
        if not pool.scores:
            continue
        s, t, w = pool.arrays()
        entry = {"pixel_ap": None, "pixel_ap_per_scan": float(np.mean(pool.per_scan_ap)) if pool.per_scan_ap
                 else None, "pixel_auroc": None, "dice_at_threshold": None, "best_dice": None}
        if t.any() and not t.all():
            entry["pixel_ap"] = float(average_precision_score(t, s, sample_weight=w))
            entry["pixel_auroc"] = float(roc_auc_score(t, s, sample_weight=w))
            entry["best_dice"] = best_dice_threshold(s, t, w)[1]
            precision, recall, _ = precision_recall_curve(t, s, sample_weight=w)
            fpr, tpr, _ = roc_curve(t, s, sample_weight=w)
            curves[m] = _thin(recall, precision) + _thin(fpr, tpr)
        if pool.counts:
            entry["dice_at_threshold"] = (2 * pool.inter / (pool.pred_sum + n_true)) if pool.pred_sum + n_true else None
        entry.update(object_metrics(pool.counts) if pool.counts else
                     {"object_recall": None, "object_precision": None, "fp_objects_per_scan": None,
                      "fp_objects_per_normal_scan": None})
        entry.update(sample_metrics(pool.volume_scores, abnormal))
        (summary["baselines"] if m in BASELINES else summary["maps"])[m] = entry
    if out_dir is not None:
        _write_report(Path(out_dir), summary, per_scan_rows, curves, methods)
    return summary


def _thin(x: np.ndarray, y: np.ndarray, n: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """At most ~n points of a curve for plotting (every k-th point, ends kept)."""
    if len(x) <= n:
        return x, y
    idx = np.unique(np.r_[np.linspace(0, len(x) - 1, n).astype(int), len(x) - 1])
    return x[idx], y[idx]


def _threshold(report: dict, method: str, threshold_from) -> float | None:
    if method in BASELINES:
        return None
    if threshold_from == "card":
        value = report.get("card_thresholds", {}).get(method)
        if value is None and method == report.get("detection_map"):
            value = report.get("threshold")
        return value
    return float(threshold_from)


def _write_report(out: Path, summary: dict, per_scan_rows: list[dict], curves: dict, methods: list[str]) -> None:
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "summary.json", summary)
    columns = ["method", "pixel_ap", "pixel_ap_per_scan", "pixel_auroc", "dice_at_threshold", "best_dice",
               "object_recall", "object_precision", "fp_objects_per_scan", "fp_objects_per_normal_scan",
               "sample_ap", "fpr_at_95tpr"]
    table = {**summary["maps"], **{f"baseline_{k}": v for k, v in summary["baselines"].items()}}
    with open(out / "metrics.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for name, entry in table.items():
            writer.writerow([name] + [entry.get(c) for c in columns[1:]])
    keys = sorted({k for r in per_scan_rows for k in r})
    with open(out / "per_scan.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["scan", "normal", "anomalous_voxels"] +
                                [k for k in keys if k not in ("scan", "normal", "anomalous_voxels")])
        writer.writeheader()
        writer.writerows(per_scan_rows)
    for kind, (xi, yi, xlabel, ylabel) in {"pr_curves": (0, 1, "recall", "precision"),
                                           "roc_curves": (2, 3, "false-positive rate", "true-positive rate")}.items():
        fig, ax = plt.subplots(figsize=(6, 5))
        for name in methods:
            if name in curves:
                ax.plot(curves[name][xi], curves[name][yi], label=name, lw=1.2,
                        ls="--" if name in BASELINES else "-")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(f"pixel-level {kind.split('_')[0].upper()} ({summary['n_scans']} scans)")
        ax.legend(fontsize=8, loc="lower right" if kind == "roc_curves" else "upper right")
        fig.tight_layout()
        fig.savefig(out / f"{kind}.png", dpi=110)
        plt.close(fig)

    def f(v):
        return "–" if v is None else f"{v:.3f}"

    lines = ["# napari-uad evaluation", "",
             f"{summary['n_scans']} scans ({summary['n_normal']} normal). Pixel metrics pool all foreground voxels "
             f"of all scans ({summary['pooling']}). Thresholds: {summary['threshold_from']}. Best Dice is an upper "
             "bound (threshold chosen on these very scans) and is never used to pick a threshold. Sample-level "
             "metrics of the maps use the per-volume score from S.json; baselines use the 99.9th percentile of "
             "the intensity inside the foreground.", "",
             "| method | " + " | ".join(columns[1:]) + " |", "|---" * len(columns) + "|"]
    for name, entry in table.items():
        lines.append(f"| {name} | " + " | ".join(f(entry.get(c)) for c in columns[1:]) + " |")
    lines += ["", "![PR curves](pr_curves.png) ![ROC curves](roc_curves.png)", "",
              "Files: `summary.json`, `metrics.csv`, `per_scan.csv`."]
    (out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
