"""Calibration of score maps on validation data (written into the model card).

- Healthy-voxel quantile table per map: any raw score maps to its quantile (0-1) among foreground voxels of
  healthy validation volumes, so one slider position means the same false-positive rate for every map.
- Detection thresholds per map: at 1 % and 0.1 % healthy-voxel false-positive rate, and the best pooled Dice
  on a validation set of synthetic toy anomalies (the thesis' method: never tuned on test data).
- The combined map (``combined``): the pair or triple of the best single maps (non-gradient) whose mean
  healthy-quantile surprise has the best validation Dice; its components go to ``calibration.combined``.
- The default detection map is the one with the best validation Dice. Its operating point (detection
  threshold and minimum finding volume) is searched, not only Dice-chosen: among the Dice threshold and every
  higher healthy-table threshold, each with every candidate minimum volume, findings counted as the user sees
  them (brain less the card's edge margin), the pair with the best object recall (thesis matching rule) whose
  false-positive findings per normal validation volume stay <= ``MAX_FP_PER_NORMAL_SCAN``; ties go to object F1.
  Where no pair meets the bound, the one with the fewest (``operating_point.fp_target_met`` = false).
- The out-of-distribution reference (``ood``): brain volumes, fields of view, volume scores and the largest
  fraction of brain above each threshold over the healthy volumes (see ``napari_uad.ood``).
- Operating points per contrast (``operating_point.by_contrast``): the same search on the validation volumes of
  each contrast the tissue fit recognises (``tissue.scan_contrast``: dark or bright fluid), from that contrast's own
  Dice threshold up through its own healthy table, for contrasts with at least
  ``MIN_VOLUMES_PER_CONTRAST`` healthy and as many anomalous volumes; a scan of that contrast gets that point,
  any other scan the pooled one (``ModelCard.contrast_point``). One pooled threshold cannot serve contrasts
  whose normal anatomy looks different to the maps (CSF is bright on T2, dark on T1 and FLAIR).
- Combined-map tables per contrast (``combined.tables_by_contrast``, where asked for): each component's healthy
  table from the healthy volumes of each recognised contrast with at least ``MIN_VOLUMES_PER_CONTRAST`` of them,
  so that the combined map measures a scan against normal scans of its own contrast (``combined.component_table``);
  the combined map's trials, healthy table and operating points are then computed with them.
- Healthy volumes that carry their true brain mask (``Volume.metadata["true_brain"]``, synthetic heads) are
  left out when the pipeline's brain mask disagrees with it (Dice < ``MIN_BRAIN_MASK_DICE``): a failed brain
  extraction is what the out-of-distribution guard should flag, not part of the healthy reference.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from itertools import combinations
from typing import NamedTuple

import numpy as np

from .combined import (COMBINED, NEGATED, SIGNED_MAPS, base_map, combine, combined_components, component_values,
                       contrast_tables, dark_components, healthy_quantile)
from .findings import interior, label_components
from .io import Volume
from .mask import bounding_box, dice as mask_dice
from .model_card import contrast_point
from .postprocess import ball_opener, median_filter_map
from .scoring import GRADIENT_MAPS, MAP_NAMES, Scorer
from .tissue import TISSUES

__all__ = ["QUANTILE_LEVELS", "MIN_VOLUME_CANDIDATES_MM3", "MAX_FP_PER_NORMAL_SCAN", "MIN_BRAIN_MASK_DICE",
           "MIN_VOLUMES_PER_CONTRAST",
           "quantile_table", "to_quantile", "best_dice_threshold", "validation_rates", "validation_source", "calibrate"]

# dense in the upper tail, where detection thresholds live
QUANTILE_LEVELS = np.unique(np.concatenate([np.linspace(0.0, 0.9, 91), 1.0 - np.logspace(-1, -5, 41), [1.0]]))
MIN_VOLUME_CANDIDATES_MM3 = (0.0, 10.0, 25.0, 50.0, 100.0, 200.0, 400.0)
MAX_FP_PER_NORMAL_SCAN = 1.0  # what a reviewer can afford on a scan with nothing to find
MIN_BRAIN_MASK_DICE = 0.9  # healthy volumes with a known brain whose pipeline mask agrees less are left out
# healthy and anomalous validation volumes a contrast needs for its own point (with 5 + 3 FLAIR heads a search
# chose a 400 mm^3 minimum volume on the strength of one lesion found; docs/RESULTS.md)
MIN_VOLUMES_PER_CONTRAST = 8
OPERATING_LEVELS = 1.0 - np.logspace(-2, -5, 13)  # healthy-voxel quantiles tried above the Dice threshold


class _Scored(NamedTuple):
    """A validation volume as the object-level rules need it: the maps they read, whole (float16), its anomaly
    mask (None: healthy), where findings may lie (brain less the edge margin) and its brain mask, all on the box of
    its canonical grid that holds the brain and the anomaly (``stored_box``), its voxel size (mm), recognised
    contrast (``ScoreResult.contrast``), stratum (synthetic heads: their contrast family, i.e. the sequence they
    stand for) and, where asked for, the template's tissue class of each voxel (``ScoreResult.tissue_classes``);
    not its intensities (memory)."""

    spacing: np.ndarray
    voxel_volume_mm3: float
    maps: dict
    truth: np.ndarray | None
    allowed: np.ndarray
    brain: np.ndarray
    contrast: str | None = None
    stratum: str | None = None
    classes: np.ndarray | None = None

    @classmethod
    def of(cls, volume: Volume, result, maps: tuple[str, ...], truth: np.ndarray | None,
           edge_margin_mm: float) -> "_Scored":
        """Kept on the bounding box of the brain and the anomaly mask only (``stored_box``): every rule reads
        the brain's voxels, and the filters and thickness treat voxels outside the brain as 0 / not a finding, so
        their results are those of the whole grid without keeping the grid outside the box (memory)."""
        stratum = volume.metadata.get("stratum")
        box = stored_box(result.mask, truth)

        def crop(a):
            return None if a is None else np.ascontiguousarray(a[box])

        return cls(volume.spacing, volume.voxel_volume_mm3, {m: result.maps[m][box].astype(np.float16) for m in maps},
                   crop(truth), crop(interior(result.mask, volume.spacing, edge_margin_mm)), crop(result.mask),
                   result.contrast, None if stratum is None else str(stratum), crop(result.tissue_classes))


def stored_box(brain: np.ndarray, truth: np.ndarray | None = None) -> tuple[slice, ...]:
    """Slices (voxel grid) of the smallest box holding the brain mask and the anomaly mask ``truth`` (None:
    healthy); the whole grid when both are empty."""
    where = brain if truth is None else (brain | (truth > 0))
    if not where.any():
        return tuple(slice(0, n) for n in where.shape)
    return bounding_box(where, [0] * where.ndim)


def _maps_kept_whole(maps: tuple[str, ...], detection_map: str | None, components: tuple[str, ...]
                     ) -> tuple[str, ...]:
    """The maps whose whole volumes the object-level rules will read: the given detection map (with the
    combined map's given components), or every map when the detection map or the components are still to be
    chosen on this set."""
    if detection_map is None or (detection_map == COMBINED and not components):
        return maps
    # only maps that are scored: a detection map that is not among them is refused once the tables exist
    return tuple(m for m in (components if detection_map == COMBINED else (detection_map,)) if m in maps)


def quantile_table(values: np.ndarray, levels: np.ndarray = QUANTILE_LEVELS) -> np.ndarray:
    """Non-decreasing map values at the given quantile levels."""
    return np.maximum.accumulate(np.quantile(np.asarray(values, dtype=np.float64), levels))


def to_quantile(scores: np.ndarray, table: dict) -> np.ndarray:
    """Raw scores -> healthy-voxel quantile in [0, 1] (float32) by linear interpolation in the card's table."""
    return healthy_quantile(scores, table).astype(np.float32)


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


VALIDATION_SOURCES = {"synthetic": "synthetic validation scans", "site": "your site's normal scans"}
"""The card's ``calibration.validation_source`` (written by ``train.calibrate_model``) -> words for a reviewer."""


def validation_source(calibration: Mapping) -> str:
    """What the card's validation volumes were, in a few words for a reviewer: synthetic scans (the bundled
    cards) or the site's own normal scans (``calibrate --data``), from the card's ``validation_source``; a card
    calibrated before that field existed is read from its free-text ``validation_set``."""
    source = calibration.get("validation_source")
    if source in VALIDATION_SOURCES:
        return VALIDATION_SOURCES[source]
    text = str(calibration.get("validation_set") or "")
    if "synthetic" in text:
        return VALIDATION_SOURCES["synthetic"]
    if "user scans" in text:
        return VALIDATION_SOURCES["site"]
    return "validation scans"


def validation_rates(calibration: Mapping, detection_map: str, threshold: float, min_volume_mm3: float,
                     contrast: str | None = None) -> dict | None:
    """What a reviewer's setting meant on the card's validation volumes: the operating-point table's row that
    bounds it from the permissive side -- the highest tabulated threshold <= ``threshold`` (raw units of
    ``detection_map``) and with it the largest tabulated minimum volume <= ``min_volume_mm3`` -- with its
    false-positive findings per normal volume and object recall, plus ``source`` (``validation_source``) and the
    card's ``validation_set``; for a scan of a ``contrast`` with its own operating point, the table of that
    contrast's validation volumes (``contrast`` is then in the answer: the point's ``table_contrast`` where it records
    one, i.e. a point taken over from another contrast's table, e.g. a declared sequence's). ``table_min_thickness_mm``: the minimum
    finding thickness the table's findings were counted with (the point's own, unless it records
    ``table_min_thickness_mm``: a thickness added after the search). None when the card has no table for this
    detection map, or the setting is more permissive than every tabulated one."""
    own = contrast_point(calibration, contrast)
    point = own or calibration.get("operating_point") or {}
    table = point.get("table")
    if calibration.get("detection_map") != detection_map or not table:
        return None
    tolerance = 1e-6 * max(1.0, abs(threshold))
    rows = [r for r in table
            if r["threshold"] <= threshold + tolerance and r["min_volume_mm3"] <= min_volume_mm3 + 1e-6]
    if not rows:
        return None
    row = max(rows, key=lambda r: (r["threshold"], r["min_volume_mm3"]))
    thickness = point.get("table_min_thickness_mm", point.get("min_thickness_mm", 0.0))
    return {**row, "source": validation_source(calibration), "validation_set": calibration.get("validation_set"),
            "table_min_thickness_mm": float(thickness),
            **({"contrast": point.get("table_contrast", contrast)} if own else {})}


def calibrate(scorer: Scorer, healthy: Iterable[Volume], anomalous: Iterable[tuple[Volume, np.ndarray]] = (),
              maps: tuple[str, ...] = MAP_NAMES, voxels_per_volume: int = 400_000, seed: int = 0,
              combined_components: tuple[str, ...] = (), edge_margin_mm: float = 0.0,
              max_fp_per_normal_scan: float = MAX_FP_PER_NORMAL_SCAN, detection_map: str | None = None,
              min_volume_mm3: float = 0.0, healthy_quota: Mapping[str, int] | None = None,
              true_brain_masks: bool = False, tables_by_contrast: bool = False,
              components_by_contrast: Mapping[str, tuple[str, ...]] | None = None,
              dark_by_contrast: Mapping[str, tuple[str, ...]] | None = None, min_thickness_mm: float = 0.0,
              min_thickness_by_contrast: Mapping[str, float] | None = None,
              points_by_sequence: Mapping[str, float] | None = None,
              tables_by_tissue: Mapping[str, tuple[str, ...]] | None = None, dark_opening_mm: float = 0.0,
              log=lambda m: None) -> dict:
    """Calibration dict for the model card (see module docstring); masks are in the volumes' canonical grid.

    ``healthy_quota``: healthy volumes to keep per stratum (``Volume.metadata["stratum"]``, e.g. the contrast);
    the healthy iterable is then a supply, read lazily: a volume of a full stratum is skipped unscored and reading
    stops once every quota is met, so heads left out by the brain-mask check are made up within their own stratum
    (the card records the strata kept, and any quota the supply could not fill).

    ``true_brain_masks``: volumes that carry their true brain mask (``Volume.metadata["true_brain"]``, synthetic
    heads) are scored on it instead of the pipeline's brain extraction, as a skull-stripped scan is: no head is
    then left out for a failed extraction, so every contrast sets the thresholds (brain extraction fails on far
    more synthetic T2 heads than on real ones).

    ``tables_by_contrast``: give the combined map healthy tables per recognised contrast (module docstring).
    ``components_by_contrast``: recognised contrast -> the combined map's components for scans of it (chosen on
    other validation data, ``benchmarks/maps_by_contrast.py``); other scans use ``combined_components`` or the
    chosen ones. The combined map's healthy table and operating points are computed with them.
    ``dark_by_contrast``: recognised contrast -> the combined map's dark channel for scans of it (``combined``
    module docstring; ``-NAME``: a signed map negated, tabled here as a map of its own).
    ``tables_by_tissue``: recognised contrast -> components of its combined map measured against healthy tables per
    tissue class (``combined.tissue_tables``: the healthy voxels of that contrast where the aligned template expects
    CSF, GM or WM; chosen on other validation data, ``benchmarks/tissue_tables.py``).
    ``dark_opening_mm``: the dark channel is opened by a ball this wide (world mm; ``combined`` module docstring)
    before the combined map's maximum, as scoring will open it; the combined map's healthy table, thresholds and
    operating points are then of the opened map, made from the validation volumes' whole maps (needs a dark
    channel and the combined map).
    ``min_thickness_mm`` / ``min_thickness_by_contrast``: findings thinner than this (world mm,
    ``findings.component_thickness``; pooled point / recognised contrast -> its point's) are dropped when the
    operating points count findings, and the points record it (chosen on other validation data,
    ``benchmarks/finding_shape.py``; not searched here).
    ``points_by_sequence``: declared sequence (``sequence.SEQUENCES``) -> the minimum finding thickness (mm; 0:
    none) of an operating point of its own, searched on the validation volumes of that stratum (synthetic heads:
    their contrast family) read as the contrast its fluid gives, with that contrast's combined map, whose settings
    are recorded under the sequence's key too (``_sequence_settings``): a scan declared that sequence
    (``model_card.settings_key``) gets the same map and this point.

    ``combined_components``: use these for the combined map instead of choosing them (needed without anomalies,
    which cannot choose them; with anomalies the trials are still recorded). ``detection_map``: with anomalies,
    use this map instead of the best-Dice one (chosen on other validation data, e.g.
    ``benchmarks/real_anatomy.py``); its operating point is searched as usual. ``edge_margin_mm``: the card's
    edge margin (findings keep this distance from the brain surface), applied when the operating point counts
    findings. Without anomalies (a site's normal scans) ``detection_map`` and ``min_volume_mm3`` are the card's,
    and the detection threshold becomes the lowest one (from the 1 % healthy-voxel FPR threshold up) that keeps
    false-positive findings per normal scan <= the bound at that minimum volume."""
    from .sequence import SEQUENCES

    not_sequences = sorted(set(points_by_sequence or {}) - set(SEQUENCES))
    if not_sequences:
        raise ValueError(f"points by sequence: {', '.join(not_sequences)}: not a sequence ({', '.join(SEQUENCES)})")
    with_combined = COMBINED in maps
    maps = tuple(m for m in maps if m != COMBINED)  # derived from the others once their tables exist
    by_contrast = {c: tuple(names) for c, names in (components_by_contrast or {}).items()}
    dark = {c: tuple(names) for c, names in (dark_by_contrast or {}).items()}
    negated = tuple(dict.fromkeys(m for names in dark.values() for m in names if m.startswith(NEGATED)))
    by_tissue = {c: tuple(names) for c, names in (tables_by_tissue or {}).items()}
    unknown = sorted({m for names in (combined_components, *by_contrast.values(), *dark.values(), *by_tissue.values())
                      for m in names if base_map(m) not in maps or m == COMBINED}
                     | {m for m in negated if base_map(m) not in SIGNED_MAPS})
    if dark_opening_mm < 0 or (dark_opening_mm > 0 and not (dark and with_combined)):
        raise ValueError("a dark-channel opening needs a width >= 0 mm, a dark channel and the combined map")
    if unknown:
        raise ValueError(f"combined components: {', '.join(unknown)} not among the calibrated maps (a negated "
                         "one: of a signed map)")
    maps = (*maps, *negated)  # scored as their signed maps, tabled as maps of their own
    every_component = tuple(dict.fromkeys(
        [*combined_components, *(m for names in (*by_contrast.values(), *dark.values()) for m in names)]))
    whole = _maps_kept_whole(maps, detection_map, every_component)
    if dark_opening_mm > 0:  # the opened combined map is made from its components' whole volumes
        whole = tuple(dict.fromkeys([*whole, *(m for m in every_component if m in maps)]))
    rng = np.random.default_rng(seed)
    pools: dict[str, list[np.ndarray]] = {m: [] for m in maps}
    classes: dict[str, list] = {"healthy": [], "anomalous": []}  # tissue classes at the pooled / scored voxels
    kept: list[_Scored] = []  # every validation volume, for the object-level rules
    n_healthy = 0
    reference: dict = {"brain_volume_ml": [], "field_of_view_mm": [], "volume_scores": [],
                       "template_brain_dice": [], "contrast_enhanced": []}
    excluded: list[dict] = []
    strata: dict[str, int] = {}  # healthy volumes kept per stratum
    for index, volume in enumerate(healthy):
        stratum = str(volume.metadata.get("stratum"))
        if healthy_quota is not None and strata.get(stratum, 0) >= healthy_quota.get(stratum, 0):
            continue  # its stratum is full: not scored
        result = _score(scorer, volume, maps, true_brain_masks, bool(by_tissue))
        true_brain = volume.metadata.get("true_brain")
        if true_brain is not None and (agreement := mask_dice(result.mask, true_brain)) < MIN_BRAIN_MASK_DICE:
            # the pipeline failed on this head (e.g. brain extraction kept the scalp): not a healthy reference
            excluded.append({"index": index, "brain_mask_dice": round(agreement, 4),
                             **({"stratum": stratum} if "stratum" in volume.metadata else {})})
            log(f"calibration: healthy volume left out (brain mask Dice {agreement:.2f} with its true brain)")
            continue
        strata[stratum] = strata.get(stratum, 0) + 1
        kept.append(_Scored.of(volume, result, whole, None, edge_margin_mm))
        reference["brain_volume_ml"].append(float(result.mask.sum() * volume.voxel_volume_mm3 / 1000.0))
        reference["field_of_view_mm"].append(float((np.asarray(volume.shape) * volume.spacing).min()))
        reference["volume_scores"].append(result.volume_score)
        reference["contrast_enhanced"].append(bool(volume.metadata.get("contrast_agent")))
        if result.template_brain_dice is not None:
            reference["template_brain_dice"].append(result.template_brain_dice)
        fg = np.flatnonzero(result.mask)
        pick = rng.choice(fg, size=min(voxels_per_volume, fg.size), replace=False)
        for m in maps:
            pools[m].append(result.maps[m].ravel()[pick])
        classes["healthy"].append(None if result.tissue_classes is None else result.tissue_classes.ravel()[pick])
        n_healthy += 1
        log(f"calibration: healthy volume {n_healthy} scored")
        if healthy_quota is not None and all(strata.get(k, 0) >= n for k, n in healthy_quota.items()):
            break  # every quota met: the supply's next head is not even made
    if n_healthy == 0:
        raise ValueError("calibration needs at least one healthy volume"
                         + (f" whose brain mask matches its true brain ({len(excluded)} left out)" if excluded else ""))
    scores: dict[str, list[np.ndarray]] = {m: [] for m in maps}
    truths: list[np.ndarray] = []
    for volume, truth in anomalous:
        result = _score(scorer, volume, maps, true_brain_masks, bool(by_tissue))
        kept.append(_Scored.of(volume, result, whole, truth > 0, edge_margin_mm))
        fg = result.mask
        for m in maps:
            scores[m].append(result.maps[m][fg])
        classes["anomalous"].append(None if result.tissue_classes is None else result.tissue_classes[fg])
        truths.append(truth[fg] > 0)
        log(f"calibration: anomalous volume {len(truths)} scored")
    out = {"levels": QUANTILE_LEVELS.tolist(), "maps": {},
           "n_healthy_volumes": n_healthy, "n_anomalous_volumes": len(truths),
           "healthy_voxels_per_volume": voxels_per_volume,
           "healthy_volumes_left_out": {"rule": f"brain mask Dice < {MIN_BRAIN_MASK_DICE} with the volume's true "
                                                "brain (synthetic heads): the pipeline failed, not a healthy "
                                                "reference", "volumes": excluded},
           "rule": "threshold = best pooled Dice on synthetic toy anomalies (validation); "
                   "threshold_fpr_* = healthy-voxel quantiles"}
    if healthy_quota is not None:
        out["healthy_strata"] = {"quota": dict(healthy_quota), "kept": strata}
        unmet = {k: strata.get(k, 0) for k, n in healthy_quota.items() if strata.get(k, 0) < n}
        if unmet:
            log(f"calibration: the supply of healthy volumes did not fill every stratum (kept: {unmet})")
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
        _add_combined(out, pools, scores, truths, kept, tuple(combined_components), tables_by_contrast, by_contrast,
                      dark, by_tissue, classes, dark_opening_mm=dark_opening_mm)
        maps = (*maps, COMBINED)
        if dark_opening_mm > 0:  # the opened map's entry: only whole volumes can be opened
            _retable_from_whole(out, pools, kept, n_healthy, COMBINED, voxels_per_volume, rng)
    if truths and detection_map is not None and detection_map not in out["maps"]:
        raise ValueError(f"detection map {detection_map!r} is not among the calibrated maps ({', '.join(maps)})")
    scored = tuple(m for m in maps if m not in negated)  # a map a scan can show
    chosen = ((detection_map or max(scored, key=lambda m: out["maps"][m]["best_dice_validation"])) if truths
              else detection_map if detection_map in out["maps"] else None)
    median_mm = float(scorer.card.scoring.detection_median_mm)
    if chosen is not None and median_mm > 0:
        _filter_detection_map(out, pools, kept, n_healthy, chosen, median_mm, voxels_per_volume, rng)
    if truths:
        name = out["detection_map"] = chosen
        entry = out["maps"][name]
        point = _OperatingSearch.of(kept, name, entry, out["levels"], min_thickness_mm=min_thickness_mm
                                    ).choose(max_fp_per_normal_scan)
        point["edge_margin_mm"] = edge_margin_mm
        point["by_contrast"] = _contrast_points(kept, pools[name], name, out["levels"], max_fp_per_normal_scan,
                                                min_thickness_by_contrast or {})
        if points_by_sequence:
            _sequence_settings(out, point["by_contrast"], kept, pools[name], name, max_fp_per_normal_scan,
                               points_by_sequence, log)
        entry["threshold_best_dice"], entry["threshold"] = entry["threshold"], point["threshold"]
        out["min_volume_mm3"], out["operating_point"] = point["min_volume_mm3"], point
    elif detection_map in out["maps"]:
        entry = out["maps"][detection_map]
        point = _OperatingSearch.of(kept, detection_map, entry, out["levels"], start=entry["threshold_fpr_1pct"],
                                    min_thickness_mm=min_thickness_mm
                                    ).choose(max_fp_per_normal_scan, min_volumes=(float(min_volume_mm3),))
        point["edge_margin_mm"], point["threshold_best_dice"] = edge_margin_mm, None
        point["rule"] = ("normal scans only: the lowest threshold from the 1 % healthy-voxel FPR threshold up whose "
                         "false-positive findings per normal scan stay <= max_fp_per_normal_scan at the card's "
                         "minimum finding volume; findings inside the brain less the edge margin")
        entry["threshold"] = point["threshold"]
        out.update(detection_map=detection_map, min_volume_mm3=float(min_volume_mm3), operating_point=point)
    else:
        out["detection_map"] = "combi" if "combi" in maps else maps[0]
        out["min_volume_mm3"] = 0.0
    if min_thickness_mm > 0:
        out["min_thickness_mm"] = float(min_thickness_mm)
    out["ood"] = _ood_reference(pools, reference, out["maps"], scorer.card.modality)
    return out


def _score(scorer: Scorer, volume: Volume, maps: tuple[str, ...], true_brain_masks: bool, tissue_classes: bool = False):
    """The calibration's scoring of one volume: raw maps (no post-processing), on its true brain mask where asked
    for and known; with ``tissue_classes``, the template's tissue class of each voxel kept too."""
    mask = volume.metadata.get("true_brain") if true_brain_masks else None
    result = scorer.score(volume, tuple(dict.fromkeys(map(base_map, maps))), mask, postprocess=False,
                          tissue_classes=tissue_classes)
    for m in maps:
        if m != base_map(m):  # a dark-channel component: its signed map negated
            result.maps[m] = component_values(result.maps, m)
    return result


def _by_contrast(contrasts: list) -> dict[str, list[int]]:
    """Recognised contrast -> indices of the volumes of it (in ``contrasts``' order; unrecognised ones left out)."""
    groups: dict[str, list[int]] = {}
    for i, contrast in enumerate(contrasts):
        if contrast is not None:
            groups.setdefault(contrast, []).append(i)
    return dict(sorted(groups.items()))


def _contrast_points(kept: list, healthy_samples: list, name: str, levels: list, max_fp: float,
                     min_thickness: Mapping[str, float]) -> dict:
    """Operating point of each recognised contrast with >= ``MIN_VOLUMES_PER_CONTRAST`` healthy and anomalous
    validation volumes (``_group_point``); ``min_thickness``: contrast -> the minimum finding thickness (mm) of its
    point."""
    points = {}
    for contrast, members in _by_contrast([k.contrast for k in kept]).items():
        point = _group_point(kept, members, healthy_samples, name, levels, max_fp,
                             float(min_thickness.get(contrast, 0.0)))
        if point is not None:
            points[contrast] = point
    return points


def _group_point(kept: list, members: list[int], healthy_samples: list, name: str, levels: list, max_fp: float,
                 thickness: float) -> dict | None:
    """The pooled point's search on the validation volumes ``kept[i]`` for i in ``members`` only, its candidate
    thresholds from their own Dice threshold up through their own healthy table (``healthy_samples[i]``: healthy
    ``kept[i]``'s sample of the map ``name``) -- a group whose map runs on another scale (the combined map of its own
    components, its own tables) is not held to the pooled volumes' thresholds -- with the numbers of volumes it
    rests on and its minimum finding ``thickness`` (mm); None where the group has fewer than
    ``MIN_VOLUMES_PER_CONTRAST`` healthy or anomalous volumes."""
    healthy = [i for i in members if kept[i].truth is None]
    anomalous = [kept[i] for i in members if kept[i].truth is not None]
    if min(len(healthy), len(anomalous)) < MIN_VOLUMES_PER_CONTRAST:
        return None
    own = {"threshold": _best_dice_of(anomalous, name)[0],
           "quantiles": quantile_table(np.concatenate([healthy_samples[i] for i in healthy])).tolist()}
    point = _OperatingSearch.of([kept[i] for i in members], name, own, levels, min_thickness_mm=thickness
                                ).choose(max_fp)
    if thickness > 0:
        point["min_thickness_mm"] = thickness
    return {**point, "n_healthy_volumes": len(healthy), "n_anomalous_volumes": len(anomalous)}


def _sequence_settings(out: dict, points: dict, kept: list, healthy_samples: list, name: str, max_fp: float,
                       thickness: Mapping[str, float], log) -> None:
    """Settings of each declared sequence in ``thickness`` (sequence -> minimum finding thickness, mm), in place:
    an operating point (``points[sequence]``) searched on the validation volumes of that stratum that the tissue
    fit reads as the contrast the sequence's fluid gives (``sequence.SEQUENCE_FLUID``; a declaration the fluid
    contradicts is not believed when scoring, so such volumes are not this sequence's), and that contrast's combined
    map -- components, dark channel and healthy tables copied under the sequence's key, as ``settings_key`` reads
    them -- so a scan declared the sequence gets the map its contrast gets, at a point of its own. A sequence
    with too few such volumes gets no settings (logged)."""
    from .sequence import SEQUENCE_FLUID, SEQUENCES

    spec = out.get(COMBINED) or {}
    for sequence, mm in sorted(thickness.items()):
        fluid = SEQUENCE_FLUID[sequence]
        members = [i for i, k in enumerate(kept) if k.stratum == sequence and k.contrast == fluid]
        point = _group_point(kept, members, healthy_samples, name, out["levels"], max_fp, float(mm))
        if point is None:
            log(f"calibration: no operating point for declared {SEQUENCES[sequence]} (fewer than "
                f"{MIN_VOLUMES_PER_CONTRAST} healthy or anomalous validation volumes of it read as {fluid})")
            continue
        points[sequence] = {**point, "sequence_of": f"validation volumes of contrast family {sequence} read as "
                                                    f"{fluid}, with {fluid}'s combined map"}
        for part in ("components_by_contrast", "dark_components_by_contrast", "tables_by_contrast", "tables_by_tissue"):
            if fluid in (spec.get(part) or {}):
                spec[part][sequence] = spec[part][fluid]


def _best_dice_of(anomalous: list, name: str) -> tuple[float, float]:
    """(threshold, Dice) of map ``name`` pooled over these anomalous validation volumes' brain voxels."""
    return best_dice_threshold(np.concatenate([k.maps[name][k.brain].astype(np.float32) for k in anomalous]),
                               np.concatenate([k.truth[k.brain] for k in anomalous]))


def _filter_detection_map(out: dict, pools: dict, kept: list, n_healthy: int, name: str, size_mm: float,
                          voxels_per_volume: int, rng: np.random.Generator) -> None:
    """Median-filter the detection map ``name`` of every validation volume as scoring will
    (``napari_uad.postprocess``; in place) and recompute its entry -- healthy quantile table, FPR thresholds,
    best-Dice threshold -- and its healthy samples (``pools``) from the filtered maps, so the card describes the
    map the reviewer sees."""
    for k in kept:
        filtered = median_filter_map(k.maps[name].astype(np.float32), k.brain, k.spacing, size_mm)
        k.maps[name] = filtered.astype(np.float16)
    _retable_from_whole(out, pools, kept, n_healthy, name, voxels_per_volume, rng)
    out["maps"][name]["median_filter_mm"] = size_mm


def _retable_from_whole(out: dict, pools: dict, kept: list, n_healthy: int, name: str, voxels_per_volume: int,
                        rng: np.random.Generator) -> None:
    """Recompute map ``name``'s entry -- healthy quantile table, FPR thresholds, best-Dice threshold -- and its
    healthy samples (``pools``) from the validation volumes' whole maps (``kept[i].maps[name]``), for a map that
    only whole volumes can make (filtered, opened)."""
    healthy = []
    for k in kept[:n_healthy]:
        values = k.maps[name][k.brain].astype(np.float32)
        healthy.append(rng.choice(values, size=min(voxels_per_volume, values.size), replace=False))
    pools[name] = healthy
    values = np.concatenate(healthy)
    entry = out["maps"].setdefault(name, {})
    entry.update(quantiles=quantile_table(values).tolist(), threshold_fpr_1pct=float(np.quantile(values, 0.99)),
                 **{"threshold_fpr_0.1pct": float(np.quantile(values, 0.999))})
    anomalous = kept[n_healthy:]
    if anomalous:
        thr, dice = _best_dice_of(anomalous, name)
        entry.update(threshold=thr, best_dice_validation=dice)
    else:
        entry.update(threshold=entry["threshold_fpr_0.1pct"], best_dice_validation=None)


def _add_combined(out: dict, pools: dict, scores: dict, truths: list, kept: list, components: tuple[str, ...] = (),
                  by_contrast: bool = False, components_by_contrast: Mapping[str, tuple[str, ...]] | None = None,
                  dark_by_contrast: Mapping[str, tuple[str, ...]] | None = None,
                  tables_by_tissue: Mapping[str, tuple[str, ...]] | None = None, classes: dict | None = None,
                  candidates: int = 4, dark_opening_mm: float = 0.0) -> None:
    """Add the combined map's entry and healthy samples (in place), its components chosen on the validation
    anomalies unless given; with ``by_contrast``, its components' healthy tables per recognised contrast; with
    ``components_by_contrast``, other components for the volumes of those contrasts; with ``dark_by_contrast``, a
    dark channel for them (after the trials, which compare bright channels); with ``tables_by_tissue``, those
    components' healthy tables per tissue class for the volumes of those contrasts (``classes``: "healthy" /
    "anomalous" -> per volume, the tissue classes at its ``pools`` / ``scores`` voxels). ``dark_opening_mm``: the
    whole combined maps (``kept[i].maps``) get their dark channel opened by a ball that wide and the card records it;
    the map's entry and healthy samples are then not made here from the pooled samples but by the caller from those
    whole opened maps (``_retable_from_whole``).

    ``kept`` holds the healthy volumes first (``pools[m][i]`` is ``kept[i]``'s sample), then the anomalous ones
    (``scores[m][j]`` is ``kept[n_healthy + j]``'s brain voxels)."""
    singles = sorted((m for m in out["maps"] if m not in GRADIENT_MAPS and m == base_map(m)),
                     key=lambda m: -(out["maps"][m]["best_dice_validation"] or 0.0))[:candidates]
    n_healthy = len(next(iter(pools.values())))
    own, dark = dict(components_by_contrast or {}), dict(dark_by_contrast or {})
    out[COMBINED] = {"tables_by_contrast": _tables_by_contrast(pools, kept[:n_healthy], set(singles) | set(components)
                                                              | {m for names in (*own.values(), *dark.values())
                                                                 for m in names})
                     if by_contrast else {}}
    healthy_contrasts = [k.contrast for k in kept[:n_healthy]]
    anomalous_contrasts = [k.contrast for k in kept[n_healthy:]]
    classes = classes or {}
    by_tissue = _tables_by_tissue(pools, classes.get("healthy") or [None] * n_healthy, healthy_contrasts,
                                  tables_by_tissue or {})
    if by_tissue:
        out[COMBINED]["tables_by_tissue"] = by_tissue
    healthy_classes = classes.get("healthy") or [None] * n_healthy
    anomalous_classes = classes.get("anomalous") or [None] * len(anomalous_contrasts)

    def values(source: dict, contrasts: list, where: list, components, channel=lambda c: ()) -> list[np.ndarray]:
        """The combined map of every volume of ``source``, each with the components ``components(contrast)``, the
        dark channel ``channel(contrast)``, its contrast's tables and its voxels' tissue classes (``where[i]``)."""
        return [combine({m: source[m][i] for m in (*components(c), *channel(c))}, out, components(c), c,
                        dark=channel(c), classes=where[i]) for i, c in enumerate(contrasts)]

    trials = []
    if truths:
        truth = np.concatenate(truths)
        for size in (2, 3):
            for combo in combinations(singles, size):
                combined = values(scores, anomalous_contrasts, anomalous_classes, lambda c, combo=combo: combo)
                trials.append((best_dice_threshold(np.concatenate(combined), truth), combo))
    names = components or max(trials, key=lambda t: t[0][1])[1]
    # the components each scan's combined map takes, read as scoring reads them from the card
    out[COMBINED].update(components=list(names), components_by_contrast={c: list(n) for c, n in own.items()},
                         dark_components_by_contrast={c: list(n) for c, n in dark.items()})

    def of(contrast: str | None) -> tuple[str, ...]:
        return combined_components(out, contrast)

    def dark_of(contrast: str | None) -> tuple[str, ...]:
        return dark_components(out, contrast)

    if not dark_opening_mm > 0:  # else the caller makes the entry from the whole opened maps
        pools[COMBINED] = values(pools, healthy_contrasts, healthy_classes, of, dark_of)
        healthy = np.concatenate(pools[COMBINED])
        entry = {"quantiles": quantile_table(healthy).tolist(),
                 "threshold_fpr_1pct": float(np.quantile(healthy, 0.99)),
                 "threshold_fpr_0.1pct": float(np.quantile(healthy, 0.999))}
        if truths:
            combined = values(scores, anomalous_contrasts, anomalous_classes, of, dark_of)
            thr, dice = best_dice_threshold(np.concatenate(combined), np.concatenate(truths))
            entry.update(threshold=thr, best_dice_validation=dice)
        else:
            entry.update(threshold=entry["threshold_fpr_0.1pct"], best_dice_validation=None)
        out["maps"][COMBINED] = entry
    tables = {c: {m: t[m] for m in (*of(c), *dark_of(c))} for c, t in contrast_tables(out).items()}
    out[COMBINED] = {"components": list(names),
                     "rule": "kept from the card (normal scans cannot choose them)" if not trials else
                     "given by the caller (chosen on other validation data); the trials are this set's Dice"
                     if components else
                     "mean healthy-quantile surprise (napari_uad.combined) of the pair or triple of the "
                     f"{candidates} best single maps with the best validation Dice",
                     "trials": [{"components": list(n), "best_dice_validation": d} for (_, d), n in trials],
                     **({"components_by_contrast": {c: list(n) for c, n in sorted(own.items())}} if own else {}),
                     **({"dark_components_by_contrast": {c: list(n) for c, n in sorted(dark.items())}} if dark else {}),
                     **({"tables_by_contrast": tables,
                         "tables_rule": "each component's healthy table from the healthy volumes of each recognised "
                                        f"contrast with >= {MIN_VOLUMES_PER_CONTRAST} of them; other scans: the "
                                        "pooled tables"} if tables else {}),
                     **({"tables_by_tissue": by_tissue,
                         "tables_by_tissue_rule": "these components, on scans of these contrasts, against the healthy "
                                                  "voxels of that contrast where the aligned template expects the "
                                                  "voxel's tissue (CSF, GM, WM: the largest smoothed prior)"}
                        if by_tissue else {})}
    if dark_opening_mm > 0:
        out[COMBINED]["dark_opening_mm"] = float(dark_opening_mm)
    for k in kept:  # whole combined maps where the operating point may need them (its components kept whole)
        needs = (*of(k.contrast), *dark_of(k.contrast))
        if all(m in k.maps for m in needs):
            k.maps[COMBINED] = combine({m: k.maps[m].astype(np.float32) for m in needs}, out, of(k.contrast),
                                       k.contrast, dark=dark_of(k.contrast), classes=k.classes,
                                       open_dark=ball_opener(k.brain, k.spacing, dark_opening_mm)).astype(np.float16)


def _tables_by_tissue(pools: dict, classes: list, contrasts: list, wanted: Mapping[str, tuple[str, ...]]) -> dict:
    """contrast -> {component: {"csf"|"gm"|"wm": healthy quantile table (list)}} for the components
    ``wanted[contrast]``, from the healthy samples (``pools[m][i]``, their tissue classes ``classes[i]``) of the volumes of that contrast
    (``contrasts[i]``). A contrast with fewer than ``MIN_VOLUMES_PER_CONTRAST`` healthy volumes that carry classes
    gets none (its scans keep their contrast's tables); a class no sample fell in takes the contrast's whole
    sample."""
    out = {}
    for contrast, members in _by_contrast(contrasts).items():
        members = [i for i in members if classes[i] is not None]
        if contrast not in wanted or len(members) < MIN_VOLUMES_PER_CONTRAST:
            continue
        out[contrast] = {}
        for m in wanted[contrast]:
            values = np.concatenate([pools[m][i] for i in members])
            where = np.concatenate([classes[i] for i in members])
            out[contrast][m] = {tissue: quantile_table(values[where == c] if (where == c).any() else values).tolist()
                                for c, tissue in enumerate(TISSUES)}
    return out


def _tables_by_contrast(pools: dict, healthy: list, names: set) -> dict:
    """contrast -> {map: healthy quantile table (list)} for the maps ``names``, from the healthy samples
    (``pools[m][i]`` of ``healthy[i]``) of each recognised contrast with >= ``MIN_VOLUMES_PER_CONTRAST``
    volumes; {} when fewer than two contrasts are present (the pooled tables are then that contrast's)."""
    groups = _by_contrast([k.contrast for k in healthy])
    if len(groups) < 2:
        return {}
    return {contrast: {m: quantile_table(np.concatenate([pools[m][i] for i in members])).tolist()
                       for m in sorted(names)}
            for contrast, members in groups.items() if len(members) >= MIN_VOLUMES_PER_CONTRAST}


def _ood_reference(pools: dict, reference: dict, entries: dict, modality: str) -> dict:
    """What the out-of-distribution guard (``ood``) compares a scan with, from the healthy calibration volumes;
    ``pools``: per map, each healthy volume's sample of brain voxels (as the map is shown: the detection map
    median-filtered where the card asks for it)."""
    fractions = {m: max(float((sample >= entries[m]["threshold"]).mean()) for sample in pools[m]) for m in entries}
    return {"modality": modality,
            "brain_volume_ml": [min(reference["brain_volume_ml"]), max(reference["brain_volume_ml"])],
            "min_field_of_view_mm": min(reference["field_of_view_mm"]),
            "volume_scores": sorted(float(v) for v in reference["volume_scores"]),
            "max_fraction_above_threshold": fractions,
            "min_template_brain_dice": (min(reference["template_brain_dice"])
                                        if reference["template_brain_dice"] else None),
            "contrast_enhanced": any(reference["contrast_enhanced"]),
            "rule": "healthy calibration volumes: brain volume range, smallest field-of-view side, volume "
                    "scores, largest fraction of brain voxels at or above each map's threshold (from each volume's "
                    "sample of its brain voxels), smallest Dice "
                    "of the brain mask with the aligned template's brain, whether any had a contrast agent"}


class _OperatingSearch(NamedTuple):
    """The candidate detection thresholds of a map (raw units) and, per threshold, each validation volume's
    findings matched against its lesions (component volumes in mm^3, matched lesion, number of lesions): what the
    operating-point rule chooses from (the pooled point's over all volumes, a contrast's over its own)."""

    dice_threshold: float
    thresholds: np.ndarray
    matches: list  # per threshold: per volume (component volumes mm^3, matched, n_true)

    @classmethod
    def of(cls, kept, map_name: str, entry: dict, levels: list, start: float | None = None,
           min_thickness_mm: float = 0.0) -> "_OperatingSearch":
        """Thresholds from ``start`` (default: the entry's Dice threshold) up through the healthy table's tail;
        components thinner than ``min_thickness_mm`` (world mm) are not findings."""
        from .metrics import component_matches

        dice_threshold = float(entry["threshold"] if start is None else start)
        tail = np.interp(OPERATING_LEVELS, np.asarray(levels), np.asarray(entry["quantiles"]))
        thresholds = np.unique(np.r_[dice_threshold, tail[tail > dice_threshold]])
        matches = []
        for threshold in thresholds:
            per_volume = []
            for k in kept:
                score = np.where(k.allowed, k.maps[map_name].astype(np.float32), np.float32(-np.inf))
                labels, _ = label_components(score, float(threshold), k.voxel_volume_mm3,
                                             min_thickness_mm=min_thickness_mm, spacing=k.spacing)
                sizes, matched, n_true = component_matches(
                    labels, k.truth if k.truth is not None else np.zeros(labels.shape, bool))
                per_volume.append((sizes * k.voxel_volume_mm3, matched, n_true))
            matches.append(per_volume)
        return cls(dice_threshold, thresholds, matches)

    def choose(self, max_fp: float, min_volumes: tuple[float, ...] = MIN_VOLUME_CANDIDATES_MM3) -> dict:
        """Detection threshold and minimum finding volume (mm^3) by the module docstring's rule, each threshold
        with every one of ``min_volumes``. Without anomalies every recall is 0 and the lowest threshold within
        the bound wins."""
        from .metrics import counts_from_matches, object_metrics

        table = []
        for threshold, matches in zip(self.thresholds, self.matches):
            for min_volume in min_volumes:
                m = object_metrics([counts_from_matches(matched[mm3 >= min_volume], n_true)
                                    for mm3, matched, n_true in matches])
                r, p = m["object_recall"] or 0.0, m["object_precision"] or 0.0
                table.append({"threshold": float(threshold), "min_volume_mm3": min_volume,
                              "object_f1": 0.0 if r + p == 0 else 2 * r * p / (r + p), **m})
        fp = [row["fp_objects_per_normal_scan"] or 0.0 for row in table]
        met = [row for row, f in zip(table, fp) if f <= max_fp]
        if met:
            best = max(met, key=lambda row: (row["object_recall"] or 0.0, row["object_f1"], -row["threshold"]))
        else:
            best = min(table, key=lambda row: (row["fp_objects_per_normal_scan"] or 0.0,
                                               -(row["object_recall"] or 0.0)))
        return {"threshold": best["threshold"], "min_volume_mm3": best["min_volume_mm3"],
                "threshold_best_dice": self.dice_threshold, "max_fp_per_normal_scan": max_fp,
                "fp_target_met": bool(met),
                "validation": {k: best[k] for k in ("object_recall", "object_precision", "object_f1",
                                                    "fp_objects_per_scan", "fp_objects_per_normal_scan")},
                "rule": "best object recall with false-positive findings per normal validation volume <= "
                        "max_fp_per_normal_scan (ties: object F1), over the Dice threshold and higher healthy-table "
                        "thresholds x minimum finding volumes; findings inside the brain less the edge margin",
                "table": table}
