"""napari writers: heatmap image layers and findings labels layers to NIfTI in the source scan's grid."""

from __future__ import annotations

import numpy as np

from .display import volume_from_layer
from .io import write_like

__all__ = ["write_image", "write_labels"]


def _write(path: str, data, meta: dict, dtype) -> list[str]:
    volume = volume_from_layer(data, meta.get("metadata"), meta.get("scale"), meta.get("translate"))
    if not str(path).lower().endswith((".nii", ".nii.gz")):
        path = f"{path}.nii.gz"
    write_like(volume, volume.data.astype(dtype), path, dtype=dtype)
    return [str(path)]


def write_image(path: str, data, meta: dict) -> list[str]:
    """Image layer (e.g. a heatmap) -> float32 NIfTI with the original file's grid and affine."""
    return _write(path, data, meta, np.float32)


def write_labels(path: str, data, meta: dict) -> list[str]:
    """Labels layer (findings) -> uint16 NIfTI with the original file's grid and affine."""
    return _write(path, data, meta, np.uint16)
