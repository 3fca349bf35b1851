"""How volumes and maps are shown in napari (Qt-free: plain dicts of layer keyword arguments).

Display order: napari layer arrays are the canonical volume transposed to (k, j, i) = (S, A, R), so the
slider runs over axial slices and napari world coordinates are (z, y, x) in RAS mm — the numbers of the
findings CSV in reverse order. With ``RADIOLOGICAL_ORIENTATION`` (anterior up, patient right on the screen's
left) the 2D view matches radiological convention. Layer ``scale`` is the voxel spacing in mm and
``translate`` the world position of voxel (0, 0, 0); an oblique rotation, if any, goes into ``affine``.
Everything needed to write a layer back into the source file's grid lives in ``metadata["napari_uad"]``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .io import Volume, file_stem

__all__ = ["CT_WINDOWS", "MAP_COLORMAPS", "RADIOLOGICAL_ORIENTATION", "AXIS_LABELS", "to_display", "from_display",
           "layer_geometry", "contrast_limits", "map_limits", "QUANTILE_LIMITS", "window_limits", "image_layer_kwargs",
           "volume_metadata",
           "volume_from_layer", "display_world_to_ras", "ras_to_display_world"]

# (level, width) in HU
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0), "subdural": (75.0, 215.0), "stroke": (32.0, 8.0), "bone": (600.0, 2800.0),
    "soft tissue": (50.0, 400.0),
}
# colormaps that start at black, so additive blending leaves low scores (and the background) invisible
MAP_COLORMAPS = {"residual": "inferno", "signed_residual": "red", "U": "bone", "E": "magma", "z": "magenta",
                 "nll": "afmhot", "tissue": "viridis", "asymmetry": "cyan", "combined": "yellow", "kl_grad": "gist_heat",
                 "elbo_grad": "copper", "combi": "hot"}
RADIOLOGICAL_ORIENTATION = ("up", "left")  # camera.orientation2d: anterior up, patient right on screen left
AXIS_LABELS = ("S (mm)", "A (mm)", "R (mm)")
_KEY = "napari_uad"


def to_display(canonical: np.ndarray) -> np.ndarray:
    """Canonical (i, j, k) array -> napari display order (k, j, i) (a view)."""
    return np.asarray(canonical).transpose(2, 1, 0)


def from_display(display: np.ndarray) -> np.ndarray:
    """napari display order (k, j, i) -> canonical (i, j, k) (a view)."""
    return np.asarray(display).transpose(2, 1, 0)


def layer_geometry(volume: Volume) -> dict:
    """scale / translate (and rotation ``affine`` when oblique) placing display voxels at world (z, y, x) mm."""
    linear = volume.affine[:3, :3][::-1, ::-1]  # display index (k, j, i) -> world (z, y, x)
    scale = np.sqrt((linear**2).sum(axis=0))
    rotation = linear / scale
    geometry = {"scale": tuple(float(s) for s in scale),
                "translate": tuple(float(t) for t in volume.affine[:3, 3][::-1]),
                "axis_labels": AXIS_LABELS, "units": ("mm", "mm", "mm")}
    if not np.allclose(rotation, np.eye(3), atol=1e-6):
        # napari applies world = affine @ (scale * index + translate): rotate the translation back
        affine = np.eye(4)
        affine[:3, :3] = rotation
        geometry["affine"] = affine
        geometry["translate"] = tuple(float(t) for t in rotation.T @ volume.affine[:3, 3][::-1])
    return geometry


def window_limits(level: float, width: float) -> tuple[float, float]:
    return (level - width / 2.0, level + width / 2.0)


def contrast_limits(volume: Volume, ct_window: str = "brain") -> tuple[float, float]:
    """MR: 0.5-99.5 % percentiles of non-background voxels; CT: a window preset (level/width in HU)."""
    if volume.modality == "CT":
        return window_limits(*CT_WINDOWS[ct_window])
    data = volume.data
    values = data[data != data.min()] if np.any(data != data.min()) else data.ravel()
    lo, hi = np.percentile(values[:: max(1, values.size // 500_000)], [0.5, 99.5])
    return (float(lo), float(hi if hi > lo else lo + 1))


# colour range of a map shown as healthy-voxel quantiles: black up to the 99th percentile of healthy voxels, as
# for a raw map (``map_limits``)
QUANTILE_LIMITS = (0.99, 1.0)


def map_limits(brain_values: np.ndarray, calibration: dict | None = None) -> tuple[float, float]:
    """Display range of a raw score map (map units), from its values inside the brain.

    With the card's calibration entry of the map: black at the healthy-voxel 99th percentile
    (``threshold_fpr_1pct``: 1 % of a healthy brain shows any colour), full brightness at the detection threshold
    (or at the scan's 99.9th percentile where that is higher, so a large lesion keeps its gradation): colour
    means "above what 1 % of a healthy brain reaches" on every scan.
    Without one: the median (at least 0, the background) to the 99.9th percentile."""
    values = np.asarray(brain_values, dtype=np.float64)
    entry = calibration or {}
    if not values.size:
        return (0.0, 1.0)
    top = float(np.quantile(values, 0.999))
    if "threshold_fpr_1pct" in entry and "threshold" in entry:
        lo = float(entry["threshold_fpr_1pct"])
        hi = max(float(entry["threshold"]), top)
    else:
        lo, hi = max(float(np.median(values)), 0.0), top
    return (lo, hi if hi > lo else lo + 1.0)


def volume_metadata(volume: Volume) -> dict:
    """Layer metadata carrying the volume's full geometry (for exact export back into the source grid) and the
    facts the scoring reads (contrast agent, declared sequence and where it was read)."""
    return {_KEY: {"path": None if volume.path is None else str(volume.path), "modality": volume.modality,
                   "affine": volume.affine.tolist(), "original_affine": volume.original_affine.tolist(),
                   "original_shape": list(volume.original_shape), "ornt": volume.ornt.tolist(),
                   "contrast_agent": volume.metadata.get("contrast_agent"),
                   "sequence": volume.metadata.get("sequence"),
                   "sequence_source": volume.metadata.get("sequence_source")}}


def image_layer_kwargs(volume: Volume, name: str | None = None, ct_window: str = "brain") -> dict:
    """Keyword arguments for an image layer showing ``volume``."""
    name = name or (file_stem(volume.path) if volume.path else "scan")
    return {"name": name, "contrast_limits": contrast_limits(volume, ct_window), "colormap": "gray",
            "metadata": volume_metadata(volume), **layer_geometry(volume)}


def volume_from_layer(data: np.ndarray, metadata: dict | None = None, scale=None, translate=None) -> Volume:
    """Rebuild the :class:`Volume` behind an image layer (display-order ``data``).

    Layers made by this plugin carry their geometry in metadata; any other 3D image layer is taken as RAS
    display order with its ``scale``/``translate`` in mm.
    """
    meta = (metadata or {}).get(_KEY)
    canonical = np.ascontiguousarray(from_display(np.asarray(data)), dtype=np.float32)
    if meta:
        return Volume(data=canonical, affine=np.asarray(meta["affine"]),
                      original_affine=np.asarray(meta["original_affine"]),
                      original_shape=tuple(meta["original_shape"]), ornt=np.asarray(meta["ornt"]),
                      path=None if meta["path"] is None else Path(meta["path"]), modality=meta["modality"],
                      metadata={k: meta[k] for k in ("contrast_agent", "sequence", "sequence_source") if meta.get(k)})
    affine = np.eye(4)
    scale = np.ones(3) if scale is None else np.asarray(scale, dtype=float)
    translate = np.zeros(3) if translate is None else np.asarray(translate, dtype=float)
    affine[:3, :3] = np.diag(scale[::-1])
    affine[:3, 3] = translate[::-1]
    return Volume.from_array(canonical, affine)


def ras_to_display_world(xyz_mm) -> np.ndarray:
    """World RAS (x, y, z) mm -> napari world (z, y, x)."""
    return np.asarray(xyz_mm, dtype=float)[..., ::-1]


def display_world_to_ras(zyx) -> np.ndarray:
    """napari world (z, y, x) -> world RAS (x, y, z) mm."""
    return np.asarray(zyx, dtype=float)[..., ::-1]
