"""napari reader: NIfTI, NRRD, MetaImage files and DICOM series directories, through ``napari_uad.io``."""

from __future__ import annotations

import os
from pathlib import Path

from .display import image_layer_kwargs
from .io import ITK_SUFFIXES, NIFTI_SUFFIXES, VolumeError, read_volume

__all__ = ["get_reader", "read_layers"]


def _is_dicom_dir(path: Path) -> bool:
    import SimpleITK as sitk

    try:
        return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path)))
    except RuntimeError:
        return False


def get_reader(path: str | os.PathLike | list):
    """npe2 reader contribution: a reader function for supported paths, else None."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if p.is_dir():
        return read_layers if _is_dicom_dir(p) else None
    return read_layers if p.name.lower().endswith(NIFTI_SUFFIXES + ITK_SUFFIXES) else None


def read_layers(path: str | os.PathLike | list) -> list[tuple]:
    """One image layer in RAS display order with scale (mm), translate and the full geometry in metadata."""
    if isinstance(path, list):
        path = path[0]
    try:
        volume = read_volume(path)
    except VolumeError as err:
        raise ValueError(str(err)) from None  # napari shows the one-line message as a notification
    from .display import to_display

    return [(to_display(volume.data), image_layer_kwargs(volume), "image")]
