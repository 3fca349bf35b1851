"""Left-right asymmetry: each voxel against its mirror image across the brain's midsagittal plane, in the same
scan (no training).

A radiologist reads a brain by comparing the hemispheres: most normal anatomy that a single-scan intensity map
flags -- ventricle walls, the choroid plexus, cortex, the deep grey nuclei -- has a counterpart on the other
side, while a glioma, an infarct or a haemorrhage usually has not. The plane is the template's (the aligned
MNI152 template's x = 0, world RAS mm), carried into the scan by the affine alignment; the mirror of canonical
voxel v is

    M = inv(N) @ inv(A_template) @ diag(-1, 1, 1, 1) @ A_template @ N     (N: canonical voxel -> template voxel)

then corrected by a rigid registration of the mirrored scan onto the scan (``refine_mirror``): the brain's own
plane of symmetry, not only the template's.

Map (signed, unitless): the brain's intensities are smoothed by a Gaussian of ``SMOOTHING_MM`` (world mm per
axis, normalised by the smoothed brain mask so the brain's edge is not darkened), the smoothed scan is sampled
at each voxel's mirror (trilinear), and

    a(v) = (s(v) - s(M v)) / (1.4826 * MAD of s - s o M over the brain)

positive = brighter than the same place in the other hemisphere (a lesion on FLAIR/T2), negative = darker.
Voxels whose mirror falls outside the brain mask (an asymmetric brain extraction, a resection cavity) get 0:
there is nothing to compare with. A lesion also makes its healthy mirror region read as "darker than the other
side", so the map's lower tail opposite a bright lesion is not a finding; the detection threshold reads the
upper tail. A lesion that straddles the midline symmetrically is invisible to this map alone.
"""

from __future__ import annotations

import numpy as np

from .mask import smoothed_inside
from .preprocessing.alignment import register_rigid, resample

__all__ = ["mirror_voxel_map", "refine_mirror", "asymmetry_map", "SMOOTHING_MM"]

SMOOTHING_MM = 2.0  # Gaussian sigma before comparing the hemispheres: tolerates ~2 mm of plane and anatomy error
_MAD_TO_SD = 1.4826  # MAD of a normal distribution times this = its standard deviation
_MAX_REFINE_DEG, _MAX_REFINE_MM = 15.0, 20.0  # a refinement beyond these failed: the template's plane is kept


def mirror_voxel_map(native_to_model: np.ndarray, model_affine: np.ndarray) -> np.ndarray:
    """4x4 matrix: canonical voxel (i, j, k) -> the canonical voxel mirrored across the template's midsagittal
    plane (template world RAS x = 0). ``native_to_model``: canonical voxel -> template voxel; ``model_affine``:
    template voxel -> template world RAS mm."""
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    return np.linalg.inv(native_to_model) @ np.linalg.inv(model_affine) @ flip @ model_affine @ native_to_model


def refine_mirror(smoothed: np.ndarray, mirror: np.ndarray, spacing) -> np.ndarray:
    """The mirror map ``mirror`` (4x4 canonical voxel -> voxel) corrected by the rigid registration of the
    mirrored scan onto the scan itself (``register_rigid``), so that the plane is the brain's own, not only the
    template's (an affine alignment of brain masks leaves a few degrees and millimetres). Kept unchanged when the
    correction exceeds 15 degrees or 20 mm (a failed registration)."""
    scale = np.diag([*map(float, spacing), 1.0])  # a world frame of the canonical grid (rigid: orientation-free)
    mirrored = resample(smoothed[None], mirror, smoothed.shape)[0]
    world = register_rigid(smoothed, mirrored, scale, target_mm=SMOOTHING_MM)
    angle = np.degrees(np.arccos(np.clip((np.trace(world[:3, :3]) - 1.0) / 2.0, -1.0, 1.0)))
    centre = scale[:3, :3] @ (np.asarray(smoothed.shape) - 1) / 2.0
    shift = np.linalg.norm(world[:3, :3] @ centre + world[:3, 3] - centre)
    if angle > _MAX_REFINE_DEG or shift > _MAX_REFINE_MM:
        return mirror
    return mirror @ np.linalg.inv(scale) @ world @ scale


def asymmetry_map(data: np.ndarray, brain: np.ndarray, mirror: np.ndarray,
                  spacing: tuple[float, float, float] = (1.0, 1.0, 1.0), sigma_mm: float = SMOOTHING_MM,
                  refine: bool = True) -> np.ndarray:
    """Signed left-right asymmetry (float32, ``data``'s grid, 0 outside ``brain`` and where the mirror is not in
    the brain; module docstring).

    data: intensities in the scan's canonical grid (any scale); brain: bool mask in that grid; mirror: 4x4
    canonical voxel -> mirrored canonical voxel (``mirror_voxel_map``); spacing: voxel size in mm per axis;
    refine: correct the mirror by registering the mirrored scan onto the scan (``refine_mirror``).
    """
    out = np.zeros(data.shape, np.float32)
    if not brain.any():
        return out
    smoothed = smoothed_inside(data, brain, spacing, sigma_mm)
    if refine:
        mirror = refine_mirror(smoothed, mirror, spacing)
    mirrored, mirrored_brain = resample(np.stack([smoothed, brain.astype(np.float32)]), mirror, brain.shape)
    valid = brain & (mirrored_brain >= 0.5)
    if not valid.any():
        return out
    diff = smoothed[valid] - mirrored[valid] / mirrored_brain[valid]  # mirrored voxels straddling the edge
    spread = _MAD_TO_SD * float(np.median(np.abs(diff - np.median(diff))))
    floor = 1e-3 * float(np.std(smoothed[valid])) + 1e-12  # a perfectly symmetric brain: no division by zero
    out[valid] = (diff / max(spread, floor)).astype(np.float32)
    return out
