"""Normal anatomy that whole-head label maps lack but every real brain MR shows (for synthetic heads).

SynthSeg's label maps have no label for two structures a radiologist sees on every FLAIR and T2 and reads as
normal, so a healthy synthetic head without them is cleaner than a healthy patient:

- the **periventricular rim** and **caps**: a thin band of white matter along the lateral ventricles, a little
  brighter than white matter on FLAIR/T2/PD and a little darker on T1 (ependymal lining, interstitial fluid),
  thicker at the tips of the frontal and occipital horns ("caps"). FreeSurfer labels it
  Left/Right-WM-hypointensities (78/79), the names used here; present in most heads, absent in some.
- the **choroid plexus** in each lateral ventricle's atrium (FreeSurfer Left/Right-Choroid-Plexus, 31/63): a
  lobulated tissue glomus inside the CSF, near grey matter in intensity, so on FLAIR a bright blob in dark CSF.

Geometry is drawn per head in world mm on the label map's grid (RAS+, canonical order: axis 1 runs posterior ->
anterior); intensities relative to the head's own tissue-class means per contrast family. Everything comes
from the caller's random generator, so a head is deterministic per seed.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .mask import bounding_box
from .synth import _smooth_field

__all__ = ["RIM_LABELS", "CHOROID_LABELS", "VARIANT_LABELS", "insert_normal_variants", "variant_means"]

# (lateral ventricle, inferior lateral ventricle, cerebral white matter, rim label, choroid label) per side
_SIDES = ((4, 5, 2, 78, 31), (43, 44, 41, 79, 63))
RIM_LABELS = (78, 79)
CHOROID_LABELS = (31, 63)
VARIANT_LABELS = RIM_LABELS + CHOROID_LABELS
RIM_PROBABILITY = 0.8  # heads with a visible rim
# intensity of the rim (x white matter) and the choroid plexus (x grey matter) per family: (low, high)
_RIM_SCALE = {"flair": (1.08, 1.35), "t2": (1.05, 1.25), "pd": (1.04, 1.2), "t1": (0.85, 0.98)}
_CHOROID_SCALE = {"flair": (0.7, 1.2), "t2": (0.9, 1.3), "pd": (0.9, 1.2), "t1": (0.85, 1.1)}


def _rim(labels: np.ndarray, spacing: np.ndarray, ventricle: int, wm: int, lining: float, cap: float,
         modulation: np.ndarray) -> np.ndarray:
    """White-matter voxels within the rim's thickness (mm) of the ventricle: a lining of ``lining`` mm plus caps
    growing to ``cap`` mm more at the anterior and posterior tips, modulated by a smooth field (``modulation``,
    4^3 coarse values; x0.6-1.4)."""
    vent = labels == ventricle
    out = np.zeros(labels.shape, bool)
    if not vent.any():
        return out
    reach = [int(np.ceil((lining + cap) * 1.4 / d)) + 1 for d in spacing]
    box = bounding_box(vent, reach)
    v = vent[box]
    distance = ndimage.distance_transform_edt(~v, sampling=spacing)
    y = np.nonzero(v.any(axis=(0, 2)))[0]
    pos = (np.arange(v.shape[1]) - y.min()) / max(1, y.max() - y.min())  # 0 posterior tip .. 1 anterior tip
    tips = np.clip((pos - 0.8) / 0.2, 0, None) + 0.5 * np.clip((0.15 - pos) / 0.15, 0, None)
    field = ndimage.zoom(modulation, np.array(v.shape) / 4.0, order=1)[: v.shape[0], : v.shape[1], : v.shape[2]]
    thickness = (lining + cap * np.minimum(tips, 1.0)[None, :, None]) * np.clip(1.0 + field, 0.6, 1.4)
    out[box] = (labels[box] == wm) & (distance <= thickness)
    return out


def _choroid(labels: np.ndarray, spacing: np.ndarray, ventricle: int, temporal: int, rng: np.random.Generator
             ) -> tuple[np.ndarray, float]:
    """Ventricle voxels within a radius (mm) of the atrium's centre: where the ventricle meets its temporal
    horn (within 4 mm of it), or without one the ventricle's posterior quarter."""
    radius = float(rng.uniform(3.0, 6.5))
    vent = labels == ventricle
    out = np.zeros(labels.shape, bool)
    if not vent.any():
        return out, radius
    box = bounding_box(vent, [int(np.ceil(5.0 / d)) for d in spacing])
    v = vent[box]
    horn = labels[box] == temporal
    if horn.any():
        atrium = v & (ndimage.distance_transform_edt(~horn, sampling=spacing) <= 4.0)
    else:
        atrium = np.zeros_like(v)
    if not atrium.any():
        y = np.nonzero(v.any(axis=(0, 2)))[0]
        atrium = v.copy()
        atrium[:, y.min() + max(1, (y.max() - y.min()) // 4):, :] = False
    centre = np.argwhere(atrium).mean(axis=0)
    grid = np.indices(v.shape, dtype=np.float32)
    d2 = sum(((grid[a] - centre[a]) * spacing[a]) ** 2 for a in range(3))
    out[box] = v & (d2 <= radius**2)
    return out, radius


def insert_normal_variants(labels: np.ndarray, affine: np.ndarray, rng: np.random.Generator
                           ) -> tuple[np.ndarray, dict]:
    """Labels with the periventricular rim (78/79; in ``RIM_PROBABILITY`` of heads) and the choroid plexus
    (31/63) drawn in; ``affine`` (voxel -> RAS mm) gives the grid's spacing. Returns the new labels and what was
    drawn (mm)."""
    spacing = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    labels = labels.copy()
    has_rim = bool(rng.random() < RIM_PROBABILITY)
    params: dict = {"periventricular_rim": has_rim}
    for ventricle, temporal, wm, rim_label, choroid_label in _SIDES:
        # the rim's parameters are drawn for every head, so the stream (and the plexus) is the same either way
        lining, cap = float(rng.uniform(1.0, 2.2)), float(rng.uniform(1.5, 5.0))  # >= 1 voxel of lining at 1 mm
        modulation = _smooth_field(rng, (4, 4, 4), 4, 0.2)
        rim = _rim(labels, spacing, ventricle, wm, lining, cap, modulation) if has_rim else None
        plexus, radius = _choroid(labels, spacing, ventricle, temporal, rng)
        if has_rim:
            labels[rim] = rim_label
            params[f"rim_{rim_label}_mm"] = [round(lining, 2), round(cap, 2)]
        labels[plexus] = choroid_label
        params[f"choroid_{choroid_label}_radius_mm"] = round(radius, 2)
    return labels, params


def variant_means(family: str, tissue: dict, rng: np.random.Generator) -> dict[int, float]:
    """Mean intensity of each variant label for a contrast family, relative to the head's tissue-class means
    ``tissue`` (csf, gm, wm, deep): the rim x white matter, the choroid plexus x grey matter; "random": uniform
    in [0.02, 1] like every label of that family."""
    means = {}
    for lab in VARIANT_LABELS:
        if family not in _RIM_SCALE:
            means[lab] = float(rng.uniform(0.02, 1.0))
        elif lab in RIM_LABELS:
            means[lab] = float(tissue["wm"] * rng.uniform(*_RIM_SCALE[family]))
        else:
            means[lab] = float(tissue["gm"] * rng.uniform(*_CHOROID_SCALE[family]))
    return means
