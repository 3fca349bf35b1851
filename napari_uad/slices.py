"""Geometry between axial slices of the canonical voxel grid and the model's square input.

Every axial slice (i, j) of a volume is mapped onto the same S x S model grid: a square field of view in mm,
centred on the in-plane bounding box of the foreground (over all slices) with a margin, so physical size is
preserved (anisotropic in-plane spacing is handled) and scans of different field of view look alike to the
model. ``to_model`` and ``to_native`` use one pair of exactly inverse coordinate maps::

    i = ci + (u - (S - 1) / 2) * pixel_mm / si        u = (i - ci) * si / pixel_mm + (S - 1) / 2

(u, v: model pixel indices; i, j: canonical voxel indices; si, sj: voxel spacing in mm.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["SliceGeometry", "gaussian_blur2d", "gaussian_kernel1d"]


def gaussian_kernel1d(sigma: float, radius: int | None = None) -> torch.Tensor:
    """Normalised 1D Gaussian (float32), radius ceil(3 sigma) unless given."""
    radius = int(np.ceil(3 * sigma)) if radius is None else radius
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur2d(x: torch.Tensor, sigma: tuple[float, float], radius: tuple[int, int] | None = None) -> torch.Tensor:
    """Separable Gaussian blur of [B, C, H, W] with per-axis sigma (pixels); reflect padding, per image.

    Each image is filtered independently, so the result does not depend on what else is in the batch.
    """
    b, c, h, w = x.shape
    out = x.reshape(b * c, 1, h, w)
    for axis, s in enumerate(sigma):
        if s <= 0:
            continue
        k = gaussian_kernel1d(s, None if radius is None else radius[axis]).to(x.device, x.dtype)
        r = (k.numel() - 1) // 2
        size = out.shape[2 + axis]
        mode = "reflect" if r < size else "replicate"
        if axis == 0:
            out = F.conv2d(F.pad(out, (0, 0, r, r), mode=mode), k.view(1, 1, -1, 1))
        else:
            out = F.conv2d(F.pad(out, (r, r, 0, 0), mode=mode), k.view(1, 1, 1, -1))
    return out.reshape(b, c, h, w)


@dataclass(frozen=True)
class SliceGeometry:
    """Square model field of view for the axial slices of one volume.

    Attributes:
        native_shape: (ni, nj) in-plane shape of the canonical grid.
        spacing: (si, sj) in-plane voxel size in mm.
        centre: (ci, cj) field-of-view centre in canonical voxel coordinates.
        pixel_mm: size of one model pixel in mm (isotropic).
        size: S, the model input size in pixels.
    """

    native_shape: tuple[int, int]
    spacing: tuple[float, float]
    centre: tuple[float, float]
    pixel_mm: float
    size: int

    @classmethod
    def from_mask(cls, mask: np.ndarray, spacing, size: int, margin: float = 0.05) -> "SliceGeometry":
        """Field of view around the in-plane bounding box of a 3D foreground ``mask`` (canonical grid)."""
        in_plane = mask.any(axis=2)
        if not in_plane.any():
            raise ValueError("foreground mask is empty")
        ii, jj = np.flatnonzero(in_plane.any(axis=1)), np.flatnonzero(in_plane.any(axis=0))
        si, sj = float(spacing[0]), float(spacing[1])
        extent = max((ii[-1] - ii[0] + 1) * si, (jj[-1] - jj[0] + 1) * sj)
        return cls(
            native_shape=(int(mask.shape[0]), int(mask.shape[1])),
            spacing=(si, sj),
            centre=((ii[0] + ii[-1]) / 2.0, (jj[0] + jj[-1]) / 2.0),
            pixel_mm=extent * (1.0 + 2.0 * margin) / size,
            size=int(size),
        )

    # -- coordinate maps (exact inverses of each other) ------------------------------------------------
    def model_to_native(self, u, v):
        """Model pixel (u, v) -> canonical voxel (i, j) (float, vectorised)."""
        half = (self.size - 1) / 2.0
        return (self.centre[0] + (np.asarray(u, dtype=np.float64) - half) * self.pixel_mm / self.spacing[0],
                self.centre[1] + (np.asarray(v, dtype=np.float64) - half) * self.pixel_mm / self.spacing[1])

    def native_to_model(self, i, j):
        """Canonical voxel (i, j) -> model pixel (u, v) (float, vectorised)."""
        half = (self.size - 1) / 2.0
        return ((np.asarray(i, dtype=np.float64) - self.centre[0]) * self.spacing[0] / self.pixel_mm + half,
                (np.asarray(j, dtype=np.float64) - self.centre[1]) * self.spacing[1] / self.pixel_mm + half)

    # -- resampling --------------------------------------------------------------------------------------
    @staticmethod
    def _grid(rows: np.ndarray, cols: np.ndarray, n_rows: int, n_cols: int, device) -> torch.Tensor:
        """grid_sample grid (1, R, C, 2) sampling an (n_rows, n_cols) image at index positions rows x cols."""
        y = torch.as_tensor(2.0 * rows / max(n_rows - 1, 1) - 1.0, dtype=torch.float32)
        x = torch.as_tensor(2.0 * cols / max(n_cols - 1, 1) - 1.0, dtype=torch.float32)
        gy, gx = torch.meshgrid(y, x, indexing="ij")
        return torch.stack([gx, gy], dim=-1).unsqueeze(0).to(device)

    def to_model(self, slices: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """Resample native slices [B, C, ni, nj] onto the model grid [B, C, S, S] (bilinear, anti-aliased).

        Model pixels outside the native slice get ``fill``.
        """
        factor = (self.pixel_mm / self.spacing[0], self.pixel_mm / self.spacing[1])
        sigma = tuple(max(0.0, (f - 1.0) / 2.0) for f in factor)
        x = slices - fill
        if max(sigma) > 0:
            x = gaussian_blur2d(x, sigma)
        i, j = self.model_to_native(np.arange(self.size), np.arange(self.size))
        grid = self._grid(i, j, self.native_shape[0], self.native_shape[1], slices.device)
        out = F.grid_sample(x, grid.expand(x.shape[0], -1, -1, -1).to(x.dtype), mode="bilinear",
                            padding_mode="zeros", align_corners=True)
        return out + fill

    def to_native(self, maps: torch.Tensor) -> torch.Tensor:
        """Resample model-grid maps [B, C, S, S] back to native slices [B, C, ni, nj] (bilinear).

        Native voxels outside the model field of view get 0.
        """
        u, v = self.native_to_model(np.arange(self.native_shape[0]), np.arange(self.native_shape[1]))
        grid = self._grid(u, v, self.size, self.size, maps.device)
        return F.grid_sample(maps, grid.expand(maps.shape[0], -1, -1, -1).to(maps.dtype), mode="bilinear",
                             padding_mode="zeros", align_corners=True)
