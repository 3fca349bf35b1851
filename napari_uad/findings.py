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

__all__ = ["Finding", "label_components", "describe_components", "find_findings"]


@dataclass(frozen=True)
class Finding:
    """One connected component above threshold.

    centroid_ijk: centre of mass in original-file voxel coordinates.
    centroid_xyz_mm: centre of mass in world RAS mm.
    first_slice, last_slice: range of axial slice indices (original file index along its axial axis).
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

    def to_dict(self) -> dict:
        return asdict(self)


def label_components(score_map: np.ndarray, threshold: float, voxel_volume_mm3: float,
                     min_volume_mm3: float = 0.0, connectivity: int = 3) -> tuple[np.ndarray, int]:
    """Connected components of ``score_map >= threshold`` (any 3D grid).

    Components smaller than ``min_volume_mm3`` are dropped. Labels (uint16, 0 = background) are numbered
    1..n by decreasing maximum score, so finding 1 is the most anomalous.
    ``connectivity``: 1 (faces, 6-neighbourhood), 2 (edges, 18) or 3 (corners, 26).
    """
    if connectivity not in (1, 2, 3):
        raise ValueError(f"connectivity must be 1, 2 or 3, not {connectivity}")
    structure = ndimage.generate_binary_structure(3, connectivity)
    labels, n = ndimage.label(score_map >= threshold, structure=structure)
    if n == 0:
        return np.zeros(score_map.shape, dtype=np.uint16), 0
    index = np.arange(1, n + 1)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    keep = index[sizes * voxel_volume_mm3 >= min_volume_mm3]
    if keep.size == 0:
        return np.zeros(score_map.shape, dtype=np.uint16), 0
    if keep.size > np.iinfo(np.uint16).max:
        raise ValueError(f"{keep.size} findings: too many for uint16 labels; raise the threshold")
    peaks = np.asarray(ndimage.maximum(score_map, labels, keep))
    order = keep[np.argsort(-peaks, kind="stable")]
    lut = np.zeros(n + 1, dtype=np.uint16)
    lut[order] = np.arange(1, order.size + 1, dtype=np.uint16)
    return lut[labels], int(order.size)


def describe_components(labels: np.ndarray, score_map: np.ndarray, volume: Volume) -> list[Finding]:
    """Measure every labelled component; ``labels`` and ``score_map`` are in the volume's canonical grid."""
    n = int(labels.max())
    if n == 0:
        return []
    index = np.arange(1, n + 1)
    counts = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    centres = np.asarray(ndimage.center_of_mass(np.ones(labels.shape, dtype=np.uint8), labels, index))
    maxima = np.asarray(ndimage.maximum(score_map, labels, index), dtype=np.float64)
    means = np.asarray(ndimage.mean(score_map, labels, index), dtype=np.float64)
    boxes = ndimage.find_objects(labels, max_label=n)
    world = volume.canonical_to_world(centres)
    original = volume.canonical_to_original_index(centres)
    axial = volume.axial_original_axis
    findings = []
    for lab in range(n):
        k0, k1 = boxes[lab][2].start, boxes[lab][2].stop - 1
        ends = volume.canonical_to_original_index(np.array([[0, 0, k0], [0, 0, k1]], dtype=np.float64))[:, axial]
        first, last = (int(round(v)) for v in sorted(ends))
        findings.append(Finding(
            finding_id=lab + 1,
            voxel_count=int(counts[lab]),
            volume_mm3=float(counts[lab] * volume.voxel_volume_mm3),
            centroid_ijk=tuple(float(v) for v in original[lab]),
            centroid_xyz_mm=tuple(float(v) for v in world[lab]),
            max_score=float(maxima[lab]),
            mean_score=float(means[lab]),
            first_slice=first,
            last_slice=last,
        ))
    return findings


def find_findings(score_map: np.ndarray, volume: Volume, threshold: float, min_volume_mm3: float = 0.0,
                  connectivity: int = 3) -> tuple[np.ndarray, list[Finding]]:
    """Threshold, label and describe: (labels in the canonical grid, findings ordered by id)."""
    labels, _ = label_components(score_map, threshold, volume.voxel_volume_mm3, min_volume_mm3, connectivity)
    return labels, describe_components(labels, score_map, volume)
