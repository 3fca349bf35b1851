"""Post-processing of the detection map before it is shown and thresholded (model card settings).

A 3D median filter removes isolated high voxels and thin bright rims (the brain's edge, sulci) that a
threshold would otherwise turn into small findings, while a lesion, larger than the filter, keeps its values
(Baur et al. 2021 median-filter every residual map before thresholding). The footprint is given in world mm
and becomes an odd number of voxels per axis of the scan's own grid, so a 1 x 1 x 5 mm scan is not smoothed
across 15 mm of slices. Voxels outside the brain mask count as 0 (the maps' value there) and stay 0.

A grey-scale opening by a ball ``opening_mm`` wide keeps at each voxel the largest value v such that a ball of
that diameter holding the voxel lies wholly at >= v: every level set of the opened map is the union of the balls
that fit in the original's, so a region thinner than the ball (a sulcus, a ventricle's rim) loses its values while
a thicker one keeps its own -- the map-level counterpart of a minimum finding thickness (``findings.
component_thickness``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage

from .mask import bounding_box

__all__ = ["median_footprint", "median_filter_map", "ball_footprint", "open_map", "ball_opener"]


def median_footprint(spacing: Sequence[float], size_mm: float) -> tuple[int, ...]:
    """Voxels per axis of a median footprint about ``size_mm`` wide: the odd number nearest to
    size_mm / spacing (mm per voxel), at least 1 (1 = that axis is not filtered)."""
    if not size_mm > 0:
        return tuple(1 for _ in spacing)
    return tuple(max(1, 2 * int(np.floor(size_mm / float(d) / 2.0)) + 1) for d in spacing)


def median_filter_map(values: np.ndarray, brain: np.ndarray, spacing: Sequence[float], size_mm: float
                      ) -> np.ndarray:
    """``values`` (a map in the scan's voxel grid, 0 outside ``brain``) median-filtered over
    ``median_footprint(spacing, size_mm)``, computed only on the brain's bounding box grown by the footprint's
    reach (the brain's voxels get the values a whole-grid filter gives them); float32, 0 outside the brain.
    ``size_mm`` <= 0 returns a copy."""
    values = np.asarray(values, dtype=np.float32)
    out = np.zeros_like(values)
    size = median_footprint(spacing, size_mm)
    if not brain.any():
        return out
    if all(s == 1 for s in size):
        out[brain] = values[brain]
        return out
    box = bounding_box(brain, [s // 2 for s in size])
    inside = np.where(brain[box], values[box], np.float32(0.0))
    filtered = ndimage.median_filter(inside, size=size, mode="constant", cval=0.0)
    out[box] = np.where(brain[box], filtered, np.float32(0.0))
    return out


def ball_footprint(spacing: Sequence[float], diameter_mm: float) -> np.ndarray:
    """Boolean footprint of a ball ``diameter_mm`` wide in a grid of voxel size ``spacing`` (world mm): the voxel
    offsets o with sum((o_i * spacing_i)^2) <= (diameter_mm / 2)^2, so a 1 x 1 x 5 mm grid gets a flat disc for 3 mm.
    A single voxel for ``diameter_mm`` <= 0."""
    radius = max(float(diameter_mm), 0.0) / 2.0
    reach = [int(np.floor(radius / float(d))) for d in spacing]
    grids = np.meshgrid(*[np.arange(-r, r + 1) * float(d) for r, d in zip(reach, spacing)], indexing="ij")
    return sum(g ** 2 for g in grids) <= radius ** 2 + 1e-9


def open_map(values: np.ndarray, brain: np.ndarray, spacing: Sequence[float], diameter_mm: float) -> np.ndarray:
    """``values`` (a map in the scan's voxel grid, 0 outside ``brain``) opened by ``ball_footprint(spacing,
    diameter_mm)``, computed on the brain's bounding box grown by the ball's reach (voxels outside the brain count
    as 0, as in the whole grid); float32, 0 outside the brain, never above ``values``. ``diameter_mm`` <= 0
    returns a copy (outside the brain set to 0)."""
    values = np.asarray(values, dtype=np.float32)
    out = np.zeros_like(values)
    if not brain.any():
        return out
    ball = ball_footprint(spacing, diameter_mm)
    if ball.sum() == 1:
        out[brain] = values[brain]
        return out
    box = bounding_box(brain, [s // 2 for s in ball.shape])
    inside = np.where(brain[box], values[box], np.float32(0.0))
    opened = ndimage.grey_opening(inside, footprint=ball, mode="constant", cval=0.0)
    out[box] = np.where(brain[box], opened, np.float32(0.0))
    return out


def ball_opener(brain: np.ndarray, spacing: Sequence[float], diameter_mm: float
                ) -> Callable[[np.ndarray], np.ndarray] | None:
    """``values -> open_map(values, brain, spacing, diameter_mm)`` (what ``combined.combine`` takes as
    ``open_dark``), or None for ``diameter_mm`` <= 0 (nothing to open)."""
    if not diameter_mm > 0:
        return None
    return lambda values: open_map(values, brain, spacing, diameter_mm)
