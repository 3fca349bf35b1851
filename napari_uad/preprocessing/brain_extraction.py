"""Brain extraction: which scans still have skull and scalp, and the brain mask of those that do.

Method: deepbet (Fisch et al., Comput. Biol. Med. 2024; MIT licence), a 3D U-Net whose TorchScript weights ship
inside its PyPI wheel and are loaded by deepbet's own ``BrainExtraction`` class, as its documentation shows. It
was chosen by measurement on the real heads in ``../shared/data`` (docs/RESULTS.md): Dice 0.97 against a ROBEX
reference on the real T1 head, clean masks on the clinical 5.5 mm FLAIR/T1/T2 series, ~4 s on two CPU cores.

A skull-stripped scan is recognised by two facts: its background is one constant value (a head scan has noise
and tissue there), and the brain extraction keeps almost all of its foreground (on a head it keeps ~55 %).
All arrays are in one voxel grid (the caller's), ``affine`` maps it to world RAS mm.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..mask import constant_background_value, foreground_mask

__all__ = ["BrainMask", "BrainExtractionError", "brain_mask", "deepbet_mask", "check_brain_mask",
           "STRIPPED_COVERAGE"]

STRIPPED_COVERAGE = 0.85
"""A scan counts as skull-stripped when the extracted brain covers at least this fraction of its foreground.
Measured on the real scans: skull-stripped 0.97-0.99, heads with skull 0.54-0.59 (docs/RESULTS.md)."""

_MIN_HEAD_EXTENT_MM = 60.0  # deepbet needs a head-sized field of view; smaller volumes keep their foreground
_LOCK = threading.Lock()


class BrainExtractionError(ValueError):
    """The brain mask cannot be trusted (empty, or the whole image); the message is one line."""


@dataclass
class BrainMask:
    """A brain mask and how it was found.

    mask: bool array in the input grid. method: "deepbet", "foreground" (the scan's own non-background voxels)
    or "user". skull_stripped: whether the input was judged already skull-stripped (None: not tested).
    coverage: fraction of the foreground that deepbet kept (None unless the scan has a constant background and
        deepbet ran: only then can it be skull-stripped).
    """

    mask: np.ndarray
    method: str
    skull_stripped: bool | None
    coverage: float | None = None

    def record(self) -> dict:
        return {"method": self.method, "skull_stripped_input": self.skull_stripped,
                "deepbet_coverage_of_foreground": None if self.coverage is None else round(self.coverage, 4),
                "brain_volume_voxels": int(self.mask.sum())}


@lru_cache(maxsize=2)
def _extractor(device: str):
    from deepbet import BrainExtraction

    return BrainExtraction(no_gpu=not device.startswith("cuda"))


def deepbet_mask(data: np.ndarray, affine: np.ndarray, device: str = "cpu") -> np.ndarray:
    """deepbet brain mask (bool, same grid) of a volume with voxel->world RAS mm ``affine``."""
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(data, dtype=np.float32), np.asarray(affine, dtype=np.float64))
    with _LOCK:  # the extractor keeps per-call state
        try:
            _, mask_img, _ = _extractor(device).run(img)
        except (ValueError, AssertionError) as err:  # deepbet fails this way when it sees no brain at all
            raise BrainExtractionError(f"brain mask (deepbet) is empty: no brain found ({err})") from err
    return np.asarray(mask_img.dataobj) > 0


def check_brain_mask(mask: np.ndarray, what: str = "brain mask") -> np.ndarray:
    """Raise BrainExtractionError if ``mask`` is empty or covers (nearly) the whole image."""
    n = int(mask.sum())
    if n == 0:
        raise BrainExtractionError(f"{what} is empty: no brain found")
    if n >= 0.98 * mask.size:
        raise BrainExtractionError(f"{what} covers the whole image: cannot tell brain from background")
    return mask


def brain_mask(data: np.ndarray, affine: np.ndarray, mode: str = "auto", device: str = "cpu") -> BrainMask:
    """Brain mask of a scan.

    mode "off": the foreground (constant-background or Otsu mask). "on": deepbet. "auto": deepbet unless the
    scan is already skull-stripped (constant background and deepbet keeps >= STRIPPED_COVERAGE of the
    foreground), in which case the foreground is the brain. Volumes smaller than a head (any side < 60 mm)
    keep their foreground in every mode.
    """
    spacing = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    small = bool(np.any(np.asarray(data.shape) * spacing < _MIN_HEAD_EXTENT_MM))
    if mode == "off" or small:
        return BrainMask(check_brain_mask(foreground_mask(data), "foreground mask"), "foreground", None)
    brain = deepbet_mask(data, affine, device)
    coverage = None
    if mode == "auto" and constant_background_value(data) is not None:  # a head has no constant background
        fg = foreground_mask(data)
        coverage = float((brain & fg).sum() / max(int(fg.sum()), 1))
        if coverage >= STRIPPED_COVERAGE:
            return BrainMask(check_brain_mask(fg, "foreground mask"), "foreground", True, coverage)
    return BrainMask(check_brain_mask(brain, "brain mask (deepbet)"), "deepbet",
                     False if mode == "auto" else None, coverage)
