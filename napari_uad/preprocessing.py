"""Intensity normalisation of a scan into the model's input range (canonical voxel grid, no resampling)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .io import Volume
from .mask import foreground_mask
from .slices import SliceGeometry

__all__ = ["PreprocessingConfig", "PreparedVolume", "normalise_intensity", "prepare_volume"]


@dataclass(frozen=True)
class PreprocessingConfig:
    """How a scan is turned into model input; stored in the model card.

    normalisation: "zscore" (mean/std of foreground voxels, MR) or "window" (linear map of ``window`` HU onto
        ``clip``, CT).
    clip: model input range after normalisation; the background outside the foreground gets ``clip[0]``.
    window: (low, high) intensity window for "window" normalisation.
    margin: fraction of the foreground's in-plane extent added on each side of the model field of view.
    """

    normalisation: str = "zscore"
    clip: tuple[float, float] = (-3.0, 3.0)
    window: tuple[float, float] | None = None
    margin: float = 0.05

    def __post_init__(self):
        if self.normalisation not in ("zscore", "window"):
            raise ValueError(f"unknown normalisation {self.normalisation!r} (zscore or window)")
        if self.normalisation == "window" and self.window is None:
            raise ValueError("window normalisation needs a (low, high) window")
        if not self.clip[0] < self.clip[1]:
            raise ValueError(f"clip range {self.clip} is empty")

    @property
    def background(self) -> float:
        return float(self.clip[0])

    @property
    def value_range(self) -> float:
        return float(self.clip[1] - self.clip[0])

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessingConfig":
        d = dict(d)
        for key in ("clip", "window"):
            if d.get(key) is not None:
                d[key] = tuple(float(v) for v in d[key])
        return cls(**d)


def normalise_intensity(data: np.ndarray, mask: np.ndarray, config: PreprocessingConfig) -> np.ndarray:
    """Normalise a volume inside its foreground ``mask`` (same grid); float32, background = ``config.background``."""
    if not mask.any():
        raise ValueError("foreground mask is empty")
    data = np.asarray(data, dtype=np.float32)
    if config.normalisation == "zscore":
        values = data[mask].astype(np.float64)
        mean, std = values.mean(), values.std()
        out = (data - mean) / (std if std > 0 else 1.0)
    else:
        lo, hi = config.window
        out = config.clip[0] + (data - lo) * (config.value_range / (hi - lo))
    out = np.clip(out, config.clip[0], config.clip[1]).astype(np.float32)
    out[~mask] = config.background
    return out


@dataclass
class PreparedVolume:
    """A volume ready for the model: normalised intensities and foreground mask (canonical grid), the slice
    geometry onto the model grid and the axial slices k that hold foreground."""

    normalised: np.ndarray
    mask: np.ndarray
    geometry: SliceGeometry
    slices: np.ndarray


def prepare_volume(volume: Volume, config: PreprocessingConfig, size: int, mask: np.ndarray | None = None,
                   min_foreground_fraction: float = 0.0) -> PreparedVolume:
    """Mask (automatic unless given), normalise and lay out the model geometry: the one path shared by
    scoring and training. Slices whose foreground covers less than ``min_foreground_fraction`` of the
    foreground's largest slice are left out of ``slices``."""
    if mask is None:
        mask = foreground_mask(volume.data)
    elif mask.shape != volume.shape:
        raise ValueError(f"mask shape {mask.shape} does not match volume shape {volume.shape}")
    if not mask.any():
        raise ValueError("foreground mask is empty")
    normalised = normalise_intensity(volume.data, mask, config)
    geometry = SliceGeometry.from_mask(mask, volume.spacing[:2], size, config.margin)
    area = mask.sum(axis=(0, 1))
    slices = np.flatnonzero(area > max(0, min_foreground_fraction * area.max()))
    return PreparedVolume(normalised=normalised, mask=mask, geometry=geometry, slices=slices)
