"""Intensity standardisation inside the brain (any voxel grid; no resampling)."""

from __future__ import annotations

import numpy as np

from .config import PreprocessingConfig

__all__ = ["normalise_intensity", "clip_only"]

_IQR_TO_STD = 1.349  # interquartile range of a unit normal


def normalise_intensity(data: np.ndarray, mask: np.ndarray, config: PreprocessingConfig) -> np.ndarray:
    """Normalise a volume inside its brain ``mask`` (same grid); float32, background = ``config.background``.

    zscore: (x - mean) / std of brain voxels; robust: (x - median) / (IQR / 1.349), so T1, T2, FLAIR and PD from
    different scanners share one scale and a large lesion shifts it little; window: a fixed intensity window
    (CT, HU). The result is clipped to ``config.clip``.
    """
    if not mask.any():
        raise ValueError("brain mask is empty")
    data = np.asarray(data, dtype=np.float32)
    if config.normalisation in ("zscore", "robust"):
        values = data[mask].astype(np.float64)
        if config.normalisation == "zscore":
            centre, scale = values.mean(), values.std()
        else:
            q25, centre, q75 = np.percentile(values, [25, 50, 75])
            scale = (q75 - q25) / _IQR_TO_STD
        out = (data - centre) / (scale if scale > 0 else 1.0)
    else:
        lo, hi = config.window
        out = config.clip[0] + (data - lo) * (config.value_range / (hi - lo))
    return clip_only(out, mask, config)


def clip_only(data: np.ndarray, mask: np.ndarray, config: PreprocessingConfig) -> np.ndarray:
    """Values clipped to the model's range, background outside ``mask`` (for scans normalised by the user)."""
    out = np.clip(np.asarray(data, dtype=np.float32), config.clip[0], config.clip[1]).astype(np.float32)
    out[~mask] = config.background
    return out
