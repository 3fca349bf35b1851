"""napari reader: NIfTI, NRRD, MetaImage files and DICOM series directories, through ``napari_uad.io``; a 3D
Slicer segmentation of findings (``S.seg.nrrd``, ``napari_uad.interop.slicer``) opens as a labels layer with each
finding's review (tag, category, note) in its features."""

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
    if p.name.lower().endswith(".seg.nrrd"):
        return read_findings_segmentation
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


def read_findings_segmentation(path: str | os.PathLike | list) -> list[tuple]:
    """A findings segmentation as one labels layer over its scan (same geometry as the scan's image layer)."""
    import numpy as np

    from .display import layer_geometry, to_display
    from .interop.slicer import read_segmentation_findings
    from .io import Volume

    if isinstance(path, list):
        path = path[0]
    try:
        labels, affine, fields = read_segmentation_findings(path)
        volume = Volume.from_array(labels, affine, path=Path(path), allow_constant=True)
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"{path}: cannot be read as a findings segmentation ({err})") from None
    ids = sorted(fields)
    features = {"index": np.array([0, *ids]),
                **{key: np.array(["", *[fields[i].get(key, "") for i in ids]], dtype=object)
                   for key in ("name", "tag", "category", "note", "max_score", "volume_mm3")}}
    geometry = {k: v for k, v in layer_geometry(volume).items() if k != "axis_labels"}
    name = Path(path).name[: -len(".seg.nrrd")] + " findings"
    return [(to_display(volume.data.astype(np.int32)), {"name": name, "features": features, "opacity": 0.6,
                                                         "metadata": {"napari_uad_findings": fields}, **geometry},
             "labels")]
