"""Foreground (head/brain/body) mask in the volume's own voxel grid."""

from __future__ import annotations

import os

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

from .io import Volume, VolumeError, read_volume

__all__ = ["foreground_mask", "background_holes", "constant_background_value", "load_mask", "dice", "bounding_box",
           "smoothed_inside"]


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean arrays (1.0 when both are empty)."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    denom = pred.sum() + truth.sum()
    return 1.0 if denom == 0 else float(2.0 * np.logical_and(pred, truth).sum() / denom)


def bounding_box(mask: np.ndarray, reach: tuple[int, ...] | list[int]) -> tuple[slice, ...]:
    """Slices of ``mask``'s bounding box grown by ``reach`` voxels per axis (clipped to the grid). A filter
    whose footprint reaches at most ``reach`` voxels gives the mask's voxels the same values on this box as
    on the whole grid."""
    idx = np.argwhere(mask)
    lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
    return tuple(slice(max(0, int(a) - int(r)), min(n, int(b) + int(r))) for a, b, r, n in zip(lo, hi, reach, mask.shape))


_TRUNCATE = 4.0  # scipy's gaussian_filter default: the kernel reaches int(4 sigma + 0.5) voxels


def smoothed_inside(data: np.ndarray, mask: np.ndarray, spacing, sigma_mm: float) -> np.ndarray:
    """``data`` inside the bool ``mask`` smoothed by a Gaussian of ``sigma_mm`` world mm per axis (``spacing``: voxel
    size in mm), normalised by the smoothed mask, so that voxels outside the mask do not pull its edge down; float32,
    0 outside the mask; ``sigma_mm`` 0: the values themselves. Computed on the mask's bounding box grown by the
    kernel's reach, which gives the mask's voxels the same values as smoothing the whole grid."""
    out = np.zeros(data.shape, np.float32)
    sigma = np.asarray([sigma_mm / float(d) for d in spacing])
    box = bounding_box(mask, [int(_TRUNCATE * s + 0.5) for s in sigma])
    weight = mask[box].astype(np.float32)
    values = np.where(mask[box], np.asarray(data[box], np.float32), np.float32(0.0))
    if sigma_mm > 0:
        num, den = ndimage.gaussian_filter(values, sigma), ndimage.gaussian_filter(weight, sigma)
        values = np.where(den > 1e-6, num / np.maximum(den, 1e-6), 0.0).astype(np.float32)
    out[box] = np.where(mask[box], values, np.float32(0.0))
    return out


def constant_background_value(data: np.ndarray, min_fraction: float = 0.05) -> float | None:
    """The value of a constant background, if the scan has one, else None.

    Skull-stripped and z-scored scans fill everything outside the brain with one value (0, or a negative
    number after z-scoring). It is recognised as the most frequent value when it covers at least
    ``min_fraction`` of the volume and at least 90 % of the volume's outer faces.
    """
    faces = np.concatenate([data[[0, -1]].ravel(), data[:, [0, -1]].ravel(), data[:, :, [0, -1]].ravel()])
    values, counts = np.unique(faces, return_counts=True)
    candidate = values[np.argmax(counts)]
    if counts.max() < 0.9 * faces.size:
        return None
    if np.count_nonzero(data == candidate) < min_fraction * data.size:
        return None
    return float(candidate)


def background_holes(data: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` (bool, same grid as ``data``) at the scan's constant background value
    (``constant_background_value``): holes that ``foreground_mask`` filled in a skull-stripped scan, or a user
    mask's voxels outside the stripped brain. They carry no tissue intensity. All False where the scan has no
    constant background (a head with skull)."""
    background = constant_background_value(data)
    if background is None:
        return np.zeros(mask.shape, dtype=bool)
    return mask & (data == background)


def foreground_mask(data: np.ndarray) -> np.ndarray:
    """Boolean foreground mask of a 3D scan (any voxel order).

    Constant background -> everything that differs from it; otherwise Otsu's threshold. Then the largest
    6-connected component, with holes filled in 3D and in every axial slice (last axis).
    """
    background = constant_background_value(data)
    if background is not None:
        fg = data != background
    else:
        sample = data[:: max(1, data.shape[0] // 128), :: max(1, data.shape[1] // 128)]
        fg = data > threshold_otsu(sample)
    labels, n = ndimage.label(fg)
    if n == 0:
        return np.zeros(data.shape, dtype=bool)
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        fg = labels == np.argmax(sizes)
    # hole filling inside the bounding box (+1 voxel) only: outside it all is background, so what touches
    # the box's border touches the outside either way and the result is the same as on the whole volume
    occupied = [np.flatnonzero(fg.any(axis=other)) for other in ((1, 2), (0, 2), (0, 1))]
    box = tuple(slice(max(int(i[0]) - 1, 0), int(i[-1]) + 2) for i in occupied)
    inner = ndimage.binary_fill_holes(fg[box])
    for k in range(inner.shape[2]):
        if inner[:, :, k].any():
            inner[:, :, k] = ndimage.binary_fill_holes(inner[:, :, k])
    fg[box] = inner
    return fg


def load_mask(path: str | os.PathLike, volume: Volume) -> np.ndarray:
    """Read a user mask file and return it as a boolean array in the volume's canonical grid.

    The mask must have the scan's grid: same shape and the same affine (to 1e-3 mm).
    """
    mask_volume = read_volume(path, modality="MR", allow_constant=True)
    if mask_volume.shape != volume.shape or not np.allclose(mask_volume.affine, volume.affine, atol=1e-3):
        raise VolumeError(path, f"mask grid {mask_volume.original_shape} does not match the scan's grid "
                                f"{volume.original_shape} (shape and affine must be equal)")
    mask = mask_volume.data > 0
    if not mask.any():
        raise VolumeError(path, "mask is empty")
    return mask
