"""Intensity normalisation of a scan into the model's input range (canonical voxel grid, no resampling)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["PreprocessingConfig", "normalise_intensity"]


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
