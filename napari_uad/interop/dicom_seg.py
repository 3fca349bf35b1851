"""Findings as a DICOM Segmentation object (``S.seg.dcm``) over the DICOM series they were found in (highdicom).

One segment per finding (label ``finding <id>``, category "morphologically abnormal structure", type "lesion",
automatic, algorithm = the model's name and version, display colour by review tag), frames aligned with the
source series' slices, which the object references by SOP Instance UID — so PACS viewers show it over that series.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..io import Volume, atomic_write
from .slicer import SEGMENT_COLORS

__all__ = ["write_dicom_seg", "series_files"]


def series_files(directory: Path) -> list[str]:
    """The files of the series ``napari_uad.io`` reads from ``directory``, in its slice order."""
    import SimpleITK as sitk

    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(directory))
    return max((sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(directory), i) for i in ids), key=len)


def write_dicom_seg(path: str | os.PathLike, volume: Volume, labels: np.ndarray, rows: Sequence[Mapping],
                    model_name: str, model_version: str, software_version: str) -> Path:
    """``labels``: findings labels in the canonical grid; ``volume`` must come from a DICOM series directory."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    if volume.path is None or not Path(volume.path).is_dir():
        raise ValueError(f"{volume.path}: --export dicom-seg needs a DICOM series as input")
    files = series_files(Path(volume.path))
    sources = [pydicom.dcmread(f) for f in files]
    original = volume.to_original(np.asarray(labels)).astype(np.int64)  # (column, row, slice) of the series
    if original.shape[2] != len(sources):
        raise ValueError(f"{volume.path}: {len(sources)} DICOM files but {original.shape[2]} slices in the volume")
    ids = [int(r["finding_id"]) for r in rows]
    number = np.zeros(original.max(initial=0) + 1, np.uint16)
    number[ids] = np.arange(1, len(ids) + 1)  # segment numbers must run 1..n
    frames = number[original].transpose(2, 1, 0)  # (slice, row, column), as the source frames
    algorithm = hd.AlgorithmIdentificationSequence(name=model_name, version=model_version,
                                                   family=codes.cid7162.ArtificialIntelligence)
    descriptions = []
    for n, r in enumerate(rows, start=1):
        rgb = SEGMENT_COLORS.get(r.get("tag") or "unreviewed", SEGMENT_COLORS["unreviewed"])
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=n, segment_label=f"finding {r['finding_id']}",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm, tracking_id=f"finding {r['finding_id']}", tracking_uid=hd.UID(),
            display_color=hd.color.CIELabColor.from_rgb(*(int(round(255 * c)) for c in rgb))))
    if not descriptions:
        raise ValueError(f"{volume.path}: no findings, nothing to write as DICOM SEG")
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=9900,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="napari-uad",
        manufacturer_model_name=f"{model_name} {model_version}", software_versions=software_version,
        device_serial_number="none", content_description="napari-uad findings", omit_empty_frames=False)
    path = Path(path)
    with atomic_write(path) as tmp:
        seg.save_as(str(tmp))
    return path
