"""The template space brain models are trained in: MNI152 2009 (nilearn's copy, shipped offline), 1 mm, RAS."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

__all__ = ["TEMPLATES", "load_atlas"]

TEMPLATES = ("mni152-2009",)


@lru_cache(maxsize=1)
def load_atlas() -> dict:
    """MNI152 2009 (1 mm) T1 template, GM/WM probabilities and brain mask, cropped to the brain + 10 mm.

    Returns arrays in RAS+ voxel order and ``affine`` (voxel -> world RAS mm, MNI space). Callers must not
    modify the arrays (they are shared).
    """
    from nilearn import datasets

    t1 = datasets.load_mni152_template(resolution=1)
    gm = np.asarray(datasets.load_mni152_gm_template(resolution=1).dataobj, dtype=np.float32)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=1).dataobj, dtype=np.float32)
    brain = np.asarray(datasets.load_mni152_brain_mask(resolution=1).dataobj) > 0
    idx = np.argwhere(brain)
    lo = np.maximum(idx.min(0) - 10, 0)
    hi = np.minimum(idx.max(0) + 11, brain.shape)
    crop = tuple(slice(a, b) for a, b in zip(lo, hi))
    affine = t1.affine.copy()
    affine[:3, 3] = t1.affine[:3, :3] @ lo + t1.affine[:3, 3]
    return {"t1": np.asarray(t1.dataobj, dtype=np.float32)[crop], "gm": gm[crop], "wm": wm[crop],
            "brain": brain[crop].astype(np.float32), "affine": affine}
