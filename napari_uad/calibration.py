"""Calibration of score maps on validation data (written into the model card).

- Healthy-voxel quantile table per map: any raw score maps to its quantile (0-1) among foreground voxels of
  healthy validation volumes, so one slider position means the same false-positive rate for every map.
- Detection thresholds per map: at 1 % and 0.1 % healthy-voxel false-positive rate, and the best pooled Dice
  on a validation set of synthetic toy anomalies (the thesis' method: never tuned on test data).
- The combined map (``combined``): the pair or triple of the best single maps (non-gradient) whose mean
  healthy-quantile surprise has the best validation Dice; its components go to ``calibration.combined``.
- The default detection map is the one with the best validation Dice; its minimum finding volume is the
  candidate that maximises object-level F1 (thesis matching rule) over all validation volumes, so spurious
  small findings on healthy volumes count against it.
- The out-of-distribution reference (``ood``): brain volumes, fields of view, volume scores and the largest
  fraction of brain above each threshold over the healthy volumes (see ``napari_uad.ood``).
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import combinations

import numpy as np

from .combined import COMBINED, combine
from .findings import label_components
from .io import Volume
from .scoring import GRADIENT_MAPS, MAP_NAMES, Scorer

__all__ = ["QUANTILE_LEVELS", "MIN_VOLUME_CANDIDATES_MM3", "quantile_table", "to_quantile", "best_dice_threshold",
           "calibrate"]

# dense in the upper tail, where detection thresholds live
QUANTILE_LEVELS = np.unique(np.concatenate([np.linspace(0.0, 0.9, 91), 1.0 - np.logspace(-1, -5, 41), [1.0]]))
MIN_VOLUME_CANDIDATES_MM3 = (0.0, 10.0, 25.0, 50.0, 100.0, 200.0, 400.0)


def quantile_table(values: np.ndarray, levels: np.ndarray = QUANTILE_LEVELS) -> np.ndarray:
    """Non-decreasing map values at the given quantile levels."""
    return np.maximum.accumulate(np.quantile(np.asarray(values, dtype=np.float64), levels))


def to_quantile(scores: np.ndarray, table: dict) -> np.ndarray:
    """Raw scores -> healthy-voxel quantile in [0, 1] by linear interpolation in the card's table."""
    values, levels = np.asarray(table["quantiles"]), np.asarray(table["levels"])
    return np.interp(scores, values, levels).astype(np.float32)


def best_dice_threshold(scores: np.ndarray, truth: np.ndarray, weights: np.ndarray | None = None
                        ) -> tuple[float, float]:
    """(threshold, Dice) maximising pooled Dice of ``scores >= threshold`` against boolean ``truth``.

    ``weights`` (voxel counts each sample stands for, e.g. inverse subsampling rates) make it an estimate."""
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], truth[order]
    w = np.ones(len(s)) if weights is None else np.asarray(weights, dtype=np.float64)[order]
    tp = np.cumsum(np.where(t, w, 0.0))
    k = np.cumsum(w)
    last_of_value = np.r_[s[1:] != s[:-1], True]  # a threshold keeps all voxels of equal score
    dice = np.where(last_of_value, 2 * tp / (k + tp[-1]), -1.0)
    best = int(np.argmax(dice))
    return float(s[best]), float(dice[best])


def calibrate(scorer: Scorer, healthy: Iterable[Volume], anomalous: Iterable[tuple[Volume, np.ndarray]] = (),
              maps: tuple[str, ...] = MAP_NAMES, voxels_per_volume: int = 400_000, seed: int = 0,
              combined_components: tuple[str, ...] = (), log=lambda m: None) -> dict:
    """Calibration dict for the model card (see module docstring); masks are in the volumes' canonical grid.

    ``combined_components``: use these for the combined map instead of choosing them (needed without anomalies,
    which cannot choose them)."""
    with_combined = COMBINED in maps
    maps = tuple(m for m in maps if m != COMBINED)  # derived from the others once their tables exist
    rng = np.random.default_rng(seed)
    pools: dict[str, list[np.ndarray]] = {m: [] for m in maps}
    kept: list[tuple[Volume, dict, np.ndarray | None]] = []  # (volume, maps, truth) for the object-level rule
    n_healthy = 0
    reference: dict = {"brain_volume_ml": [], "field_of_view_mm": [], "volume_scores": [], "masks": []}
    for volume in healthy:
        result = scorer.score(volume, maps)
        kept.append((volume, {m: result.maps[m].astype(np.float16) for m in maps}, None))
        reference["brain_volume_ml"].append(float(result.mask.sum() * volume.voxel_volume_mm3 / 1000.0))
        reference["field_of_view_mm"].append(float((np.asarray(volume.shape) * volume.spacing).min()))
        reference["volume_scores"].append(result.volume_score)
        reference["masks"].append(result.mask)
        fg = np.flatnonzero(result.mask)
        pick = rng.choice(fg, size=min(voxels_per_volume, fg.size), replace=False)
        for m in maps:
            pools[m].append(result.maps[m].ravel()[pick])
        n_healthy += 1
        log(f"calibration: healthy volume {n_healthy} scored")
    if n_healthy == 0:
        raise ValueError("calibration needs at least one healthy volume")
    scores: dict[str, list[np.ndarray]] = {m: [] for m in maps}
    truths: list[np.ndarray] = []
    for volume, truth in anomalous:
        result = scorer.score(volume, maps)
        kept.append((volume, {m: result.maps[m].astype(np.float16) for m in maps}, truth > 0))
        fg = result.mask
        for m in maps:
            scores[m].append(result.maps[m][fg])
        truths.append(truth[fg] > 0)
        log(f"calibration: anomalous volume {len(truths)} scored")
    out = {"levels": QUANTILE_LEVELS.tolist(), "maps": {},
           "n_healthy_volumes": n_healthy, "n_anomalous_volumes": len(truths),
           "healthy_voxels_per_volume": voxels_per_volume,
           "rule": "threshold = best pooled Dice on synthetic toy anomalies (validation); "
                   "threshold_fpr_* = healthy-voxel quantiles"}
    for m in maps:
        values = np.concatenate(pools[m])
        table = quantile_table(values)
        entry = {"quantiles": table.tolist(),
                 "threshold_fpr_1pct": float(np.quantile(values, 0.99)),
                 "threshold_fpr_0.1pct": float(np.quantile(values, 0.999))}
        if truths:
            thr, dice = best_dice_threshold(np.concatenate(scores[m]), np.concatenate(truths))
            entry.update(threshold=thr, best_dice_validation=dice)
        else:
            entry.update(threshold=entry["threshold_fpr_0.1pct"], best_dice_validation=None)
        out["maps"][m] = entry
    if with_combined and (truths or combined_components):
        _add_combined(out, pools, scores, truths, kept, tuple(combined_components))
        maps = (*maps, COMBINED)
    if truths:
        out["detection_map"] = max(maps, key=lambda m: out["maps"][m]["best_dice_validation"])
        out["min_volume_mm3"], out["min_volume_selection"] = _select_min_volume(
            kept, out["detection_map"], out["maps"][out["detection_map"]]["threshold"])
    else:
        out["detection_map"] = "combi" if "combi" in maps else maps[0]
        out["min_volume_mm3"] = 0.0
    out["ood"] = _ood_reference(kept[:n_healthy], reference, out["maps"], scorer.card.modality)
    return out


def _add_combined(out: dict, pools: dict, scores: dict, truths: list, kept: list, components: tuple[str, ...] = (),
                  candidates: int = 4) -> None:
    """Add the combined map's entry (in place), its components chosen on the validation anomalies unless given."""
    trials = []
    if components:
        names = components
    else:
        singles = sorted((m for m in out["maps"] if m not in GRADIENT_MAPS),
                         key=lambda m: -out["maps"][m]["best_dice_validation"])[:candidates]
        truth = np.concatenate(truths)
        for size in (2, 3):
            for combo in combinations(singles, size):
                values = combine({m: np.concatenate(scores[m]) for m in combo}, out, combo)
                trials.append((best_dice_threshold(values, truth), combo))
        _, names = max(trials, key=lambda t: t[0][1])
    healthy = combine({m: np.concatenate(pools[m]) for m in names}, out, names)
    entry = {"quantiles": quantile_table(healthy).tolist(),
             "threshold_fpr_1pct": float(np.quantile(healthy, 0.99)),
             "threshold_fpr_0.1pct": float(np.quantile(healthy, 0.999))}
    if truths:
        thr, dice = best_dice_threshold(combine({m: np.concatenate(scores[m]) for m in names}, out, names),
                                        np.concatenate(truths))
        entry.update(threshold=thr, best_dice_validation=dice)
    else:
        entry.update(threshold=entry["threshold_fpr_0.1pct"], best_dice_validation=None)
    out["maps"][COMBINED] = entry
    out[COMBINED] = {"components": list(names),
                     "rule": "kept from the card (normal scans cannot choose them)" if not trials else
                     "mean healthy-quantile surprise (napari_uad.combined) of the pair or triple of the "
                     f"{candidates} best single maps with the best validation Dice",
                     "trials": [{"components": list(n), "best_dice_validation": d} for (_, d), n in trials]}
    for _, kept_maps, _ in kept:
        kept_maps[COMBINED] = combine({m: kept_maps[m].astype(np.float32) for m in names}, out,
                                      names).astype(np.float16)


def _ood_reference(kept, reference: dict, entries: dict, modality: str) -> dict:
    """What the out-of-distribution guard (``ood``) compares a scan with, from the healthy calibration volumes."""
    fractions = {m: max(float((maps[m][mask] >= entries[m]["threshold"]).mean())
                        for (_, maps, _), mask in zip(kept, reference["masks"]))
                 for m in entries}
    return {"modality": modality,
            "brain_volume_ml": [min(reference["brain_volume_ml"]), max(reference["brain_volume_ml"])],
            "min_field_of_view_mm": min(reference["field_of_view_mm"]),
            "volume_scores": sorted(float(v) for v in reference["volume_scores"]),
            "max_fraction_above_threshold": fractions,
            "rule": "healthy calibration volumes: brain volume range, smallest field-of-view side, volume "
                    "scores, largest fraction of brain voxels at or above each map's threshold"}


def _select_min_volume(kept, map_name: str, threshold: float) -> tuple[float, list[dict]]:
    """Minimum finding volume (mm^3) with the best object F1 over the validation volumes."""
    from .metrics import object_counts, object_metrics

    table = []
    for min_volume in MIN_VOLUME_CANDIDATES_MM3:
        counts = []
        for volume, maps, truth in kept:
            labels, _ = label_components(maps[map_name].astype(np.float32), threshold, volume.voxel_volume_mm3,
                                         min_volume)
            counts.append(object_counts(labels, truth if truth is not None else np.zeros(labels.shape, bool)))
        m = object_metrics(counts)
        r, p = m["object_recall"] or 0.0, m["object_precision"] or 0.0
        table.append({"min_volume_mm3": min_volume, "object_f1": 0.0 if r + p == 0 else 2 * r * p / (r + p),
                      **m})
    best = max(table, key=lambda row: row["object_f1"])
    return best["min_volume_mm3"], table
