"""Findings: connected components of a thresholded score map, with their position, size and scores.

Labels are computed in the canonical voxel grid (the grid of ``Volume.data``); every position reported
in a :class:`Finding` is in the *original* file's voxel grid or in world RAS mm, so it can be found in any
viewer that opens the source file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from .io import Volume

__all__ = ["interior", "Finding", "label_components", "component_thickness", "describe_components", "find_findings",
           "card_findings"]


@dataclass(frozen=True)
class Finding:
    """One connected component above threshold.

    centroid_ijk: centre of mass in original-file voxel coordinates.
    centroid_xyz_mm: centre of mass in world RAS mm.
    first_slice, last_slice: range of axial slice indices (original file index along its axial axis).
    signal: "hyperintense" or "hypointense" -- brighter or darker than its own tissue class expects (the sign of
    the signed tissue map's mean over the finding); "" where no tissue map was given.
    """

    finding_id: int
    voxel_count: int
    volume_mm3: float
    centroid_ijk: tuple[float, float, float]
    centroid_xyz_mm: tuple[float, float, float]
    max_score: float
    mean_score: float
    first_slice: int
    last_slice: int
    signal: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Smallest box holding every True voxel of a 3D mask, or None when it is empty."""
    box = []
    for axis in range(3):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        if hit.size == 0:
            return None
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def component_thickness(labels: np.ndarray, spacing) -> np.ndarray:
    """Per label 1..n of ``labels`` (n = its maximum; components that do not touch one another): twice the largest
    distance (world mm, voxel ``spacing`` honoured) from one of its voxels to the nearest voxel outside it -- the
    diameter of the largest ball it holds; a sheet one voxel thick measures 2 voxel sizes across it."""
    n = int(labels.max()) if labels.size else 0
    if n == 0:
        return np.zeros(0)
    box = _bounding_box(labels > 0)
    sub = labels[box]
    distance = ndimage.distance_transform_edt(np.pad(sub > 0, 1), sampling=[float(s) for s in spacing])
    return 2.0 * np.asarray(ndimage.maximum(distance[1:-1, 1:-1, 1:-1], sub, np.arange(1, n + 1)), np.float64)


def label_components(score_map: np.ndarray, threshold: float, voxel_volume_mm3: float,
                     min_volume_mm3: float = 0.0, connectivity: int = 3, min_thickness_mm: float = 0.0,
                     spacing=None) -> tuple[np.ndarray, int]:
    """Connected components of ``score_map >= threshold`` (any 3D grid).

    Components smaller than ``min_volume_mm3`` are dropped, and with ``min_thickness_mm`` > 0 (needs the voxel
    ``spacing``, mm) those thinner than it (:func:`component_thickness`: a sheet along a sulcus or a ventricle
    rim, not a lesion). Labels (uint16, 0 = background) are numbered 1..n by decreasing maximum score, so finding
    1 is the most anomalous.
    ``connectivity``: 1 (faces, 6-neighbourhood), 2 (edges, 18) or 3 (corners, 26).
    Only the bounding box of the voxels above threshold is labelled, so the cost follows the findings.
    """
    if connectivity not in (1, 2, 3):
        raise ValueError(f"connectivity must be 1, 2 or 3, not {connectivity}")
    out = np.zeros(score_map.shape, dtype=np.uint16)
    above = score_map >= threshold
    box = _bounding_box(above)
    if box is None:
        return out, 0
    structure = ndimage.generate_binary_structure(3, connectivity)
    labels, n = ndimage.label(above[box], structure=structure)
    idx = np.flatnonzero(labels)
    lab = labels.ravel()[idx]
    values = score_map[box].ravel()[idx]
    sizes = np.bincount(lab, minlength=n + 1)
    peaks = np.full(n + 1, -np.inf)
    np.maximum.at(peaks, lab, values)
    keep = np.flatnonzero(sizes * voxel_volume_mm3 >= min_volume_mm3)
    keep = keep[keep > 0]
    if min_thickness_mm > 0 and keep.size:
        if spacing is None:
            raise ValueError("a minimum finding thickness needs the voxel spacing")
        lut = np.zeros(n + 1, dtype=np.int64)
        lut[keep] = np.arange(1, keep.size + 1)
        keep = keep[component_thickness(lut[labels], spacing) >= min_thickness_mm]
    if keep.size > np.iinfo(np.uint16).max:
        raise ValueError(f"{keep.size} findings: too many for uint16 labels; raise the threshold")
    order = keep[np.argsort(-peaks[keep], kind="stable")]
    lut = np.zeros(n + 1, dtype=np.uint16)
    lut[order] = np.arange(1, order.size + 1, dtype=np.uint16)
    out[box] = lut[labels]
    return out, int(order.size)


def labelled_voxels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat indices, labels (int64) and voxel coordinates (N, 3) of every labelled voxel (0 = background),
    found inside the labels' bounding box only."""
    box = _bounding_box(labels > 0)
    if box is None:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 3), np.int64)
    sub = labels[box]
    idx = np.flatnonzero(sub)
    coords = np.stack(np.unravel_index(idx, sub.shape), axis=1) + [b.start for b in box]
    return np.ravel_multi_index(coords.T, labels.shape), sub.ravel()[idx].astype(np.int64), coords


def component_centroids(lab: np.ndarray, coords: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Voxel counts [n] and centres of mass [n, 3] (voxel coordinates) of labels 1..n (empty labels: NaN)."""
    counts = np.bincount(lab, minlength=n + 1)[1:]
    sums = np.stack([np.bincount(lab, weights=coords[:, a], minlength=n + 1)[1:] for a in range(3)], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return counts, sums / counts[:, None]


def _signals(signed: np.ndarray | None, flat: np.ndarray, lab: np.ndarray, n: int) -> list[str]:
    """Per label 1..n: "hyperintense" / "hypointense" by the sign of ``signed``'s mean over it; "" without a map
    (or where the mean is 0: no tissue there)."""
    if signed is None:
        return [""] * n
    sums = np.bincount(lab, weights=signed.ravel()[flat].astype(np.float64), minlength=n + 1)[1:]
    return ["hyperintense" if s > 0 else "hypointense" if s < 0 else "" for s in sums]


def describe_components(labels: np.ndarray, score_map: np.ndarray, volume: Volume,
                        signed: np.ndarray | None = None) -> list[Finding]:
    """Measure every labelled component; ``labels``, ``score_map`` and ``signed`` (the signed tissue map, for each
    finding's ``signal``; optional) are in the volume's canonical grid."""
    flat, lab, coords = labelled_voxels(labels)
    if lab.size == 0:
        return []
    n = int(lab.max())
    values = score_map.ravel()[flat].astype(np.float64)
    counts, centres = component_centroids(lab, coords, n)
    means = np.bincount(lab, weights=values, minlength=n + 1)[1:] / counts
    maxima = np.full(n + 1, -np.inf)
    np.maximum.at(maxima, lab, values)
    k_first = np.full(n + 1, np.iinfo(np.int64).max)
    k_last = np.full(n + 1, -1)
    np.minimum.at(k_first, lab, coords[:, 2])
    np.maximum.at(k_last, lab, coords[:, 2])
    signals = _signals(signed, flat, lab, n)
    world = volume.canonical_to_world(centres)
    original = volume.canonical_to_original_index(centres)
    axial = volume.axial_original_axis
    findings = []
    for i in range(n):
        ends = volume.canonical_to_original_index(
            np.array([[0, 0, k_first[i + 1]], [0, 0, k_last[i + 1]]], dtype=np.float64))[:, axial]
        first, last = (int(round(v)) for v in sorted(ends))
        findings.append(Finding(
            finding_id=i + 1,
            voxel_count=int(counts[i]),
            volume_mm3=float(counts[i] * volume.voxel_volume_mm3),
            centroid_ijk=tuple(float(v) for v in original[i]),
            centroid_xyz_mm=tuple(float(v) for v in world[i]),
            max_score=float(maxima[i + 1]),
            mean_score=float(means[i]),
            first_slice=first,
            last_slice=last,
            signal=signals[i],
        ))
    return findings


def interior(mask: np.ndarray, spacing, margin_mm: float) -> np.ndarray:
    """Voxels of ``mask`` more than ``margin_mm`` (world mm, anisotropic spacing honoured) from its surface."""
    if margin_mm <= 0:
        return mask
    return ndimage.distance_transform_edt(mask, sampling=[float(s) for s in spacing]) > margin_mm


def find_findings(score_map: np.ndarray, volume: Volume, threshold: float, min_volume_mm3: float = 0.0,
                  connectivity: int = 3, allowed: np.ndarray | None = None, signed: np.ndarray | None = None,
                  min_thickness_mm: float = 0.0) -> tuple[np.ndarray, list[Finding]]:
    """Threshold, label and describe: (labels in the canonical grid, findings ordered by id); findings smaller
    than ``min_volume_mm3`` or thinner than ``min_thickness_mm`` (:func:`component_thickness`) are dropped.

    ``allowed``: where findings may lie (e.g. the brain mask less an edge margin, :func:`interior`); None = all.
    ``signed``: the signed tissue map, which says whether each finding is hyper- or hypointense (optional).
    """
    if allowed is not None:
        score_map = np.where(allowed, score_map, np.float32(-np.inf)).astype(score_map.dtype, copy=False)
    labels, _ = label_components(score_map, threshold, volume.voxel_volume_mm3, min_volume_mm3, connectivity,
                                 min_thickness_mm, volume.spacing)
    return labels, describe_components(labels, score_map, volume, signed)


def card_findings(result, volume: Volume, card) -> tuple[np.ndarray, list[Finding], float | None, float]:
    """Findings of a scored scan at its model card's own settings, as ``napari-uad score`` makes them without
    options: the card's detection map, its operating point for the scan's settings key (declared sequence or
    recognised contrast: ``result.settings``, with its minimum thickness) and its edge margin (world mm) from the
    brain mask's surface.
    ``result``: a ``scoring.ScoreResult`` of ``volume`` (canonical grid); ``card``: a ``model_card.ModelCard``.
    Returns (labels, findings, threshold, minimum volume mm^3)."""
    threshold, min_volume = card.operating_point(result.settings)
    margin = float(card.calibration.get("edge_margin_mm", 0.0))
    labels, findings = find_findings(result.maps[card.detection_map], volume, threshold, min_volume,
                                     allowed=interior(result.mask, volume.spacing, margin),
                                     signed=result.maps.get("tissue"),
                                     min_thickness_mm=card.default_min_thickness(result.settings))
    return labels, findings, threshold, min_volume
