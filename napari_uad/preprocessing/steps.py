"""The preprocessing pipeline: brain extraction -> bias correction -> normalisation -> alignment -> slicing.

One function, :func:`prepare_volume`, shared by scoring, training, calibration, the cohort runner and the
napari widget. Each step is a pure function over arrays + affine (its own module); this module only runs them
in order, times them and records what each did (``PreparedVolume.steps``, written to ``S.json``).

Grids: the scan's *canonical* grid (``Volume.data``, RAS+ voxel order) and the *model grid*, where slices are
cut: the template grid when the model card names a template and alignment is on, else the canonical grid.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

import numpy as np

from ..io import Volume
from ..slices import SliceGeometry
from .alignment import register_to_template, resample, voxel_map
from .bias_field import n4_correct
from .brain_extraction import BrainMask, brain_mask, check_brain_mask
from .config import PipelineOptions, PreprocessingConfig
from .normalisation import clip_only, normalise_intensity
from .template import load_atlas

__all__ = ["PreparedVolume", "prepare_volume", "iter_prepare_volume", "brain_extraction_mode", "STEP_NAMES"]

STEP_NAMES = ("brain_extraction", "bias_correction", "normalisation", "alignment", "slicing")


@dataclass
class PreparedVolume:
    """A volume ready for the model.

    normalised, mask: model input intensities and brain mask in the model grid.
    geometry, slices: the square model field of view and the axial slices k (model grid) that hold brain.
    brain: the brain mask in the scan's canonical grid (written as S.brainmask.nii.gz).
    standardised: the normalised intensities in the scan's canonical grid (before alignment).
    native_to_model: 4x4 canonical voxel -> model-grid voxel, or None when the model grid is the canonical one.
    model_affine: model-grid voxel -> world RAS mm.
    steps: one record per step: {"step", "settings", "seconds"} (+ "skipped": reason).
    """

    normalised: np.ndarray
    mask: np.ndarray
    geometry: SliceGeometry
    slices: np.ndarray
    brain: np.ndarray
    standardised: np.ndarray
    native_shape: tuple[int, int, int]
    native_to_model: np.ndarray | None = None
    model_affine: np.ndarray | None = None
    steps: list[dict] = field(default_factory=list)
    _template: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def aligned(self) -> bool:
        return self.native_to_model is not None

    def template_maps(self) -> np.ndarray | None:
        """Template CSF, GM, WM probabilities and brain mask [4, ni, nj, nk] (float32, 0-1) in the scan's
        canonical grid through the alignment, or None when the scan was not aligned to a template. Cached."""
        if not self.aligned:
            return None
        if self._template is None:
            atlas = load_atlas()
            csf = np.clip(atlas["brain"] - atlas["gm"] - atlas["wm"], 0.0, 1.0)
            stacked = np.stack([csf, atlas["gm"], atlas["wm"], atlas["brain"].astype(np.float32)])
            self._template = np.clip(self.to_native(stacked), 0.0, 1.0)
        return self._template

    def tissue_priors(self) -> np.ndarray | None:
        """Template CSF, GM and WM probabilities [3, ni, nj, nk] in the scan's canonical grid, or None when the
        scan was not aligned to a template."""
        template = self.template_maps()
        return None if template is None else template[:3]

    def template_brain(self) -> np.ndarray | None:
        """The template's brain mask (bool) in the scan's canonical grid, or None when not aligned."""
        template = self.template_maps()
        return None if template is None else template[3] >= 0.5

    def midsagittal_mirror(self) -> np.ndarray | None:
        """4x4 canonical voxel -> its mirror across the aligned template's midsagittal plane
        (``napari_uad.asymmetry.mirror_voxel_map``), or None when the scan was not aligned to a template."""
        if not self.aligned or self.model_affine is None:
            return None
        from ..asymmetry import mirror_voxel_map

        return mirror_voxel_map(self.native_to_model, self.model_affine)

    def to_native(self, arrays: np.ndarray) -> np.ndarray:
        """Model-grid arrays [C, ...] -> the scan's canonical grid [C, ni, nj, nk] (trilinear; identity if not
        aligned). Values outside the model grid become 0."""
        if not self.aligned:
            return arrays
        return resample(arrays, self.native_to_model, self.native_shape)


def _timed(steps: list[dict], name: str, settings: dict, fn: Callable, *args):
    t = time.perf_counter()
    out = fn(*args)
    steps.append({"step": name, "settings": settings, "seconds": round(time.perf_counter() - t, 4)})
    return out


def _skipped(steps: list[dict], name: str, reason: str) -> None:
    steps.append({"step": name, "settings": {}, "seconds": 0.0, "skipped": reason})


def brain_extraction_mode(config: PreprocessingConfig, options: PipelineOptions) -> str:
    """The ``brain_mask`` mode the pipeline uses: the options' choice for a model that expects brains, else the
    foreground unless the user forces deepbet."""
    return options.skull_strip if config.skull_strip else ("on" if options.skull_strip == "on" else "off")


def prepare_volume(volume: Volume, config: PreprocessingConfig, size: int, mask: np.ndarray | None = None,
                   min_foreground_fraction: float = 0.0, options: PipelineOptions | None = None) -> PreparedVolume:
    """Run the preprocessing steps the model's ``config`` asks for, less those ``options`` switch off.

    ``mask``: a user brain mask in the canonical grid (replaces brain extraction). Axial slices whose brain
    covers less than ``min_foreground_fraction`` of the largest brain slice are left out of ``slices``.
    """
    gen = iter_prepare_volume(volume, config, size, mask, min_foreground_fraction, options)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def iter_prepare_volume(volume: Volume, config: PreprocessingConfig, size: int, mask: np.ndarray | None = None,
                        min_foreground_fraction: float = 0.0, options: PipelineOptions | None = None
                        ) -> Generator[str, None, PreparedVolume]:
    """Generator form of :func:`prepare_volume`: yields each step's name before running it (progress)."""
    options = options or PipelineOptions()
    steps: list[dict] = []
    data, affine = volume.data, volume.affine

    yield "brain_extraction"
    if mask is not None:
        if mask.shape != volume.shape:
            raise ValueError(f"mask shape {mask.shape} does not match volume shape {volume.shape}")
        if not mask.any():
            raise ValueError("the given mask is empty")
        found = BrainMask(mask, "user", None)  # the user's choice, even if it covers the whole image
        steps.append({"step": "brain_extraction", "settings": found.record(), "seconds": 0.0})
    else:
        mode = brain_extraction_mode(config, options)
        found = _timed(steps, "brain_extraction", {"mode": mode}, brain_mask, data, affine, mode, options.device)
        steps[-1]["settings"].update(found.record())
    brain = found.mask

    yield "bias_correction"
    if config.bias_correction and options.bias_correction:
        data = _timed(steps, "bias_correction", {"method": "N4", "shrink_mm": 4.0}, n4_correct, data, brain,
                      volume.spacing)
    else:
        _skipped(steps, "bias_correction", "switched off" if config.bias_correction else "model does not use it")

    yield "normalisation"
    if options.normalisation:
        normalised = _timed(steps, "normalisation", {"method": config.normalisation, "clip": list(config.clip)},
                            normalise_intensity, data, brain, config)
    else:
        normalised = _timed(steps, "normalisation", {"method": "none (clip only)", "clip": list(config.clip)},
                            clip_only, data, brain, config)

    yield "alignment"
    standardised = normalised
    model_mask, native_to_model, model_affine = brain, None, None
    if config.template and options.alignment:
        t = time.perf_counter()
        atlas = load_atlas()
        template_to_scan = register_to_template(brain, affine, atlas["brain"] > 0.5, atlas["affine"])
        template_shape = atlas["brain"].shape
        to_scan = voxel_map(atlas["affine"], affine, template_to_scan)
        moved = resample(np.stack([normalised, brain.astype(np.float32)]), to_scan, template_shape,
                         fill=0.0)
        model_mask = moved[1] > 0.5
        check_brain_mask(model_mask, "brain mask in template space")
        normalised = np.where(model_mask, moved[0], config.background).astype(np.float32)
        native_to_model = np.linalg.inv(to_scan)
        model_affine = atlas["affine"]
        steps.append({"step": "alignment",
                      "settings": {"template": config.template, "transform": "affine",
                                   "template_to_scan_world_ras": np.round(template_to_scan, 5).tolist()},
                      "seconds": round(time.perf_counter() - t, 4)})
    else:
        _skipped(steps, "alignment", "switched off" if config.template else "model has no template space")

    yield "slicing"
    t = time.perf_counter()
    spacing = volume.spacing if model_affine is None else np.sqrt((model_affine[:3, :3] ** 2).sum(axis=0))
    geometry = SliceGeometry.from_mask(model_mask, spacing[:2], size, config.margin)
    area = model_mask.sum(axis=(0, 1))
    slices = np.flatnonzero(area > max(0, min_foreground_fraction * area.max()))
    steps.append({"step": "slicing", "settings": {"size": size, "pixel_mm": round(geometry.pixel_mm, 4),
                                                   "slices": int(len(slices))},
                  "seconds": round(time.perf_counter() - t, 4)})
    return PreparedVolume(normalised=normalised, mask=model_mask, geometry=geometry, slices=slices, brain=brain,
                          standardised=standardised, native_shape=volume.shape, native_to_model=native_to_model, model_affine=model_affine,
                          steps=steps)
