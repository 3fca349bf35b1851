"""Lesions that look like real disease, inserted into a head's label map before its intensities are drawn.

Kinds (FreeSurfer tissue labels decide where each may go; voxel size 1 mm assumed, canonical grid):
- ``tumour``: glioma-like: necrotic core, enhancing rim and surrounding oedema in white matter, with mass
  effect (the anatomy around it is pushed outward);
- ``ms``: 4-15 small ovoid white-matter lesions, periventricular (within 6 mm of a lateral ventricle) or
  juxtacortical (within 3 mm of the cortex);
- ``infarct``: a cortical-subcortical territory of one hemisphere, with tissue loss (CSF-like) or acute oedema;
- ``haemorrhage``: a deep ball, bright on T1 and dark on T2/T2*/FLAIR/PD.
Each lesion gets its own labels (>= 900), whose intensities are drawn relative to the head's tissue means for
its contrast family (``lesion_means``), so partial volume, bias, thick slices and noise act on it as on anatomy.
The ground truth is the set of lesion-labelled voxels.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .synth import _smooth_field

__all__ = ["LESION_KINDS", "LESION_LABELS", "insert_lesion", "lesion_means"]

LESION_KINDS = ("tumour", "ms", "infarct", "haemorrhage")
LESION_LABELS = {"necrosis": 901, "enhancing": 902, "oedema": 903, "ms": 911, "infarct": 921, "haemorrhage": 931}
_WM = (2, 41)
_CORTEX = (3, 42)
_VENTRICLES = (4, 43)
_DEEP_GM = (10, 11, 12, 13, 49, 50, 51, 52)


def _pick(rng: np.random.Generator, candidates: np.ndarray) -> np.ndarray:
    idx = np.argwhere(candidates)
    if not len(idx):
        raise ValueError("no place for this lesion in the label map")
    return idx[rng.integers(len(idx))]


def _distance_mm(labels: np.ndarray, targets: tuple[int, ...]) -> np.ndarray:
    return ndimage.distance_transform_edt(~np.isin(labels, targets))


def _mass_effect(labels: np.ndarray, centre: np.ndarray, radius: float, strength: float) -> np.ndarray:
    """Labels pushed radially away from ``centre``: displacement strength * radius * exp(-(r / 1.5 radius)^2)
    up to 2.5 radius (voxels), none beyond."""
    shape = labels.shape
    grid = np.indices(shape, dtype=np.float32)
    offset = grid - centre.reshape(3, 1, 1, 1).astype(np.float32)
    r = np.sqrt((offset**2).sum(axis=0)) + 1e-3
    push = strength * radius * np.exp(-((r / (1.5 * radius)) ** 2)) * (r < 2.5 * radius)  # none beyond 2.5 R
    source = grid - offset / r * push  # sample closer to the centre: tissue moves outward
    norm = [2.0 * source[a] / (shape[a] - 1) - 1.0 for a in range(3)]
    g = torch.from_numpy(np.stack(norm[::-1], axis=-1)[None])
    x = torch.from_numpy(labels.astype(np.float32))[None, None]
    return F.grid_sample(x, g, mode="nearest", padding_mode="border", align_corners=True)[0, 0].numpy().astype(
        np.int16)


def _wobbly_ball(shape, centre, radius: float, rng: np.random.Generator) -> np.ndarray:
    """Ball of ``radius`` voxels whose surface wobbles by up to ~20 %."""
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    r = np.sqrt(sum((g - c) ** 2 for g, c in zip(grids, centre)))
    return r <= radius * (1.0 + 0.2 * np.tanh(_smooth_field(rng, shape, 6, 1.0)))


def insert_lesion(labels: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """A copy of ``labels`` with one lesion of ``kind`` (lesion labels >= 900) and its parameters."""
    if kind not in LESION_KINDS:
        raise ValueError(f"unknown lesion {kind!r}; choose from {', '.join(LESION_KINDS)}")
    brain_tissue = (labels > 0) & (labels < 500) & ~np.isin(labels, (4, 5, 14, 15, 24, 43, 44))
    out = labels.copy()
    params: dict = {"lesion": kind}
    if kind == "tumour":
        radius = float(rng.uniform(8, 22))
        deep_wm = np.isin(labels, _WM) & (_distance_mm(labels, _CORTEX) > radius * 0.5)
        centre = _pick(rng, deep_wm if deep_wm.any() else np.isin(labels, _WM))
        out = _mass_effect(out, centre, radius, float(rng.uniform(0.2, 0.5)))
        tissue = (out > 0) & (out < 500) & ~np.isin(out, (24,))
        oedema = _wobbly_ball(out.shape, centre, radius, rng) & tissue
        rim = _wobbly_ball(out.shape, centre, radius * rng.uniform(0.45, 0.65), rng) & tissue
        core = _wobbly_ball(out.shape, centre, radius * rng.uniform(0.2, 0.35), rng) & tissue
        out[oedema] = LESION_LABELS["oedema"]
        out[rim] = LESION_LABELS["enhancing"]
        if rng.random() < 0.7:  # most high-grade gliomas have a necrotic core
            out[core] = LESION_LABELS["necrosis"]
        params.update(centre_voxel=centre.tolist(), radius_mm=radius)
    elif kind == "ms":
        wm = np.isin(labels, _WM)
        near_ventricle = wm & (_distance_mm(labels, _VENTRICLES) <= 6)
        near_cortex = wm & (_distance_mm(labels, _CORTEX) <= 3)
        n = int(rng.integers(4, 16))
        centres = []
        for _ in range(n):
            where = near_ventricle if rng.random() < 0.6 and near_ventricle.any() else near_cortex
            c = _pick(rng, where)
            radii = rng.uniform(1.5, 5.0, 3)
            grids = np.ogrid[tuple(slice(0, s) for s in labels.shape)]
            ovoid = sum(((g - ci) / ri) ** 2 for g, ci, ri in zip(grids, c, radii)) <= 1.0
            out[ovoid & wm] = LESION_LABELS["ms"]
            centres.append(c.tolist())
        params.update(n_lesions=n, centres_voxel=centres)
    elif kind == "infarct":
        centre = _pick(rng, np.isin(labels, _CORTEX))
        radius = float(rng.uniform(10, 25))
        left = np.isin(labels, (2, 3))[tuple(centre)]
        hemisphere = np.isin(labels, (2, 3) if left else (41, 42))
        region = _wobbly_ball(labels.shape, centre, radius, rng) & hemisphere
        out[region] = LESION_LABELS["infarct"]
        params.update(centre_voxel=centre.tolist(), radius_mm=radius, stage="chronic" if rng.random() < 0.5
                      else "acute")
    else:  # haemorrhage
        deep = np.isin(labels, _DEEP_GM)
        centre = _pick(rng, deep if deep.any() else np.isin(labels, _WM))
        radius = float(rng.uniform(5, 15))
        region = _wobbly_ball(labels.shape, centre, radius, rng) & brain_tissue
        out[region] = LESION_LABELS["haemorrhage"]
        params.update(centre_voxel=centre.tolist(), radius_mm=radius)
    if not (out >= 900).any():
        raise ValueError(f"the {kind} lesion fell outside the brain")
    return out, params


def lesion_means(family: str, tissue: dict[str, float], rng: np.random.Generator, stage: str | None = None
                 ) -> dict[int, float]:
    """Mean intensity of each lesion label for a contrast family, from the head's tissue means
    (``tissue``: csf, gm, wm). Random family: uniform in [0.02, 1]."""
    if family == "random":
        return {lab: float(rng.uniform(0.02, 1.0)) for lab in LESION_LABELS.values()}
    csf, gm, wm = tissue["csf"], tissue["gm"], tissue["wm"]
    u = lambda a, b: float(rng.uniform(a, b))  # noqa: E731
    bright = family in ("t2", "flair", "pd")  # fluid-like lesions are hyperintense on these
    if family == "flair":
        oedema, ms, enhancing, necrosis = gm * u(1.25, 1.6), gm * u(1.25, 1.6), gm * u(1.3, 1.7), gm * u(0.4, 0.9)
    elif bright:  # t2, pd: between grey matter and CSF
        oedema, ms = gm + u(0.3, 0.7) * (csf - gm), gm + u(0.3, 0.7) * (csf - gm)
        enhancing, necrosis = gm * u(1.0, 1.2), csf * u(0.85, 1.05)
    else:  # t1: hypointense, between CSF and grey matter; the rim near grey matter
        oedema, ms = csf + u(0.4, 0.8) * (gm - csf), csf + u(0.3, 0.7) * (gm - csf)
        enhancing, necrosis = gm * u(0.9, 1.1), csf * u(0.9, 1.2)
    acute = stage == "acute"
    infarct = oedema if acute else csf * u(0.85, 1.1)
    haemorrhage = wm * u(1.2, 1.5) if family == "t1" else wm * u(0.2, 0.45)
    return {LESION_LABELS["oedema"]: oedema, LESION_LABELS["ms"]: ms, LESION_LABELS["enhancing"]: enhancing,
            LESION_LABELS["necrosis"]: necrosis, LESION_LABELS["infarct"]: infarct,
            LESION_LABELS["haemorrhage"]: haemorrhage}
