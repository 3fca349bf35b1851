"""napari sample data: the bundled synthetic brain scan and its lesion ground truth."""

from __future__ import annotations

from .display import image_layer_kwargs, to_display, volume_metadata
from .io import read_volume
from .resources import sample_data_dir

__all__ = ["sample_brain", "SAMPLE_SCAN", "SAMPLE_MASK"]

SAMPLE_SCAN = "sample_brain.nii.gz"
SAMPLE_MASK = "sample_brain_mask.nii.gz"


def sample_brain() -> list[tuple]:
    """Image layer of the sample scan plus a labels layer of its inserted lesions (ground truth)."""
    directory = sample_data_dir()
    if directory is None or not (directory / SAMPLE_SCAN).is_file():
        raise FileNotFoundError("the bundled sample scan is missing from this installation")
    volume = read_volume(directory / SAMPLE_SCAN)
    truth = read_volume(directory / SAMPLE_MASK, allow_constant=True)
    scan_kwargs = image_layer_kwargs(volume, name="sample_brain")
    geometry = {k: scan_kwargs[k] for k in ("scale", "translate", "affine", "axis_labels", "units")
                if k in scan_kwargs}
    mask_kwargs = {"name": "sample_brain ground truth", "opacity": 0.5, "visible": False,
                   "metadata": volume_metadata(truth), **geometry}
    return [(to_display(volume.data), scan_kwargs, "image"),
            (to_display(truth.data > 0).astype("uint8"), mask_kwargs, "labels")]
