"""Evaluation metrics (``shared/METHODS.md``), on numpy arrays; scikit-learn does the ranking metrics.

- Pixel level: average precision over all foreground voxels of all scans pooled (the MOOD metric), the
  per-scan mean AP (scans with anomalies only), pixel AUROC, Dice at a threshold and the best Dice over
  thresholds (an upper bound, never used to pick a threshold).
- Object level (thesis rule): a predicted component is a true positive if its centre of mass lies inside a
  ground-truth object and the two volumes differ by at most 2x; a ground-truth object counts once even if
  several components hit it.
- Sample level: AP over scans and the false-positive rate at 95 % true-positive rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from .calibration import best_dice_threshold
from .findings import component_centroids, labelled_voxels
from .mask import dice

__all__ = ["pixel_metrics", "dice", "ObjectCounts", "component_matches", "counts_from_matches",
           "object_counts", "object_metrics", "sample_metrics"]


def pixel_metrics(scores: Sequence[np.ndarray], truths: Sequence[np.ndarray], threshold: float | None = None
                  ) -> dict[str, float | None]:
    """Pixel metrics over scans; ``scores[i]``/``truths[i]`` are the foreground voxels of scan i (1D arrays)."""
    s = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in scores])
    t = np.concatenate([np.asarray(a, dtype=bool).ravel() for a in truths])
    out: dict[str, float | None] = {"pixel_ap": None, "pixel_auroc": None, "pixel_ap_per_scan": None,
                                    "dice_at_threshold": None, "best_dice": None}
    if t.any() and not t.all():
        out["pixel_ap"] = float(average_precision_score(t, s))
        out["pixel_auroc"] = float(roc_auc_score(t, s))
        out["best_dice"] = best_dice_threshold(s, t)[1]
    per_scan = [average_precision_score(tt, ss) for ss, tt in zip(scores, truths)
                if np.any(tt) and not np.all(tt)]
    if per_scan:
        out["pixel_ap_per_scan"] = float(np.mean(per_scan))
    if threshold is not None and t.any():
        out["dice_at_threshold"] = dice(s >= threshold, t)
    return out


@dataclass
class ObjectCounts:
    """Object-level counts of one scan."""

    n_pred: int
    n_true: int
    tp_pred: int  # predicted components that match a ground-truth object
    detected_true: int  # ground-truth objects hit by at least one matching component

    @property
    def fp(self) -> int:
        return self.n_pred - self.tp_pred


def component_matches(pred_labels: np.ndarray, truth: np.ndarray, connectivity: int = 3
                      ) -> tuple[np.ndarray, np.ndarray, int]:
    """Per predicted component (labels 1..n that are present): its voxel count and the ground-truth object it
    matches under the thesis rule (0 = none), plus the number of ground-truth objects."""
    structure = ndimage.generate_binary_structure(3, connectivity)
    true_labels, n_true = ndimage.label(np.asarray(truth) > 0, structure=structure)
    _, lab, coords = labelled_voxels(pred_labels)
    if lab.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), n_true
    sizes, centres = component_centroids(lab, coords, int(lab.max()))
    present = np.flatnonzero(sizes > 0)
    true_sizes = np.bincount(true_labels.ravel(), minlength=n_true + 1)
    matched = np.zeros(present.size, np.int64)
    for i, centre in enumerate(centres[present]):
        target = int(true_labels[tuple(int(round(c)) for c in centre)])
        if target and 0.5 <= sizes[present[i]] / true_sizes[target] <= 2.0:
            matched[i] = target
    return sizes[present], matched, n_true


def counts_from_matches(matched: np.ndarray, n_true: int) -> ObjectCounts:
    """ObjectCounts of the components whose matches (``component_matches``) are given."""
    hit = matched[matched > 0]
    return ObjectCounts(int(matched.size), n_true, int(hit.size), int(np.unique(hit).size))


def object_counts(pred_labels: np.ndarray, truth: np.ndarray, connectivity: int = 3) -> ObjectCounts:
    """Match predicted components (labelled array) to ground-truth objects (binary mask, same grid)."""
    _, matched, n_true = component_matches(pred_labels, truth, connectivity)
    return counts_from_matches(matched, n_true)


def finding_overlaps(pred_labels: np.ndarray, truth: np.ndarray, connectivity: int = 3) -> tuple[dict[int, int], int]:
    """({finding id: ground-truth object it overlaps most, 0 = none}, number of ground-truth objects): the
    plain overlap rule a new user reads as "this finding is a true positive"."""
    structure = ndimage.generate_binary_structure(3, connectivity)
    true_labels, n_true = ndimage.label(np.asarray(truth) > 0, structure=structure)
    overlaps = {}
    for finding in (int(v) for v in np.unique(pred_labels) if v > 0):
        hit = true_labels[pred_labels == finding]
        hit = hit[hit > 0]
        overlaps[finding] = int(np.bincount(hit).argmax()) if hit.size else 0
    return overlaps, int(n_true)


def object_metrics(counts: Sequence[ObjectCounts]) -> dict[str, float | None]:
    """Recall, precision, false-positive objects per scan and per normal scan (no ground-truth object)."""
    n_true = sum(c.n_true for c in counts)
    n_pred = sum(c.n_pred for c in counts)
    normal = [c for c in counts if c.n_true == 0]
    return {
        "object_recall": sum(c.detected_true for c in counts) / n_true if n_true else None,
        "object_precision": sum(c.tp_pred for c in counts) / n_pred if n_pred else None,
        "fp_objects_per_scan": sum(c.fp for c in counts) / len(counts) if counts else None,
        "fp_objects_per_normal_scan": sum(c.fp for c in normal) / len(normal) if normal else None,
    }


def sample_metrics(volume_scores: Sequence[float], abnormal: Sequence[bool]) -> dict[str, float | None]:
    """AP over scans (abnormal = positive) and FPR at 95 % TPR."""
    y, s = np.asarray(abnormal, bool), np.asarray(volume_scores, np.float64)
    if not y.any() or y.all():
        return {"sample_ap": None, "fpr_at_95tpr": None}
    fpr, tpr, _ = roc_curve(y, s)
    return {"sample_ap": float(average_precision_score(y, s)), "fpr_at_95tpr": float(fpr[np.argmax(tpr >= 0.95)])}
