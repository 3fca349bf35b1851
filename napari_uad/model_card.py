"""Model cards and weights: ``card.json`` + ``model.safetensors`` in one directory per model.

A card states what a model is (name, version, modality/contrast), how to feed it (architecture,
preprocessing), how to score with it (score settings), how it was trained, and its calibration (per-map
healthy-voxel quantiles and detection thresholds). It carries the sha256 of the weights, which is verified
on every load. Weights are only ever read with safetensors (no pickle).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .asymmetry import SMOOTHING_MM as ASYMMETRY_SIGMA_MM
from .io import atomic_write, file_sha256
from .model import ArchitectureConfig, CeVAE
from .preprocessing import PreprocessingConfig
from .resources import DEFAULT_MODEL, bundled_models_dir, user_models_dir
from .tissue import TissueSettings

__all__ = [
    "ScoringConfig",
    "ModelCard",
    "ModelError",
    "load_model",
    "save_model",
    "resolve_model",
    "list_models",
    "DEFAULT_MODEL",
    "CARD_FILE",
    "WEIGHTS_FILE",
]

CARD_FILE = "card.json"
WEIGHTS_FILE = "model.safetensors"


class ModelError(RuntimeError):
    """A model cannot be found or loaded; the message is one line naming the model and the problem."""


GRAD_REDUCTIONS = ("mean_abs", "abs_mean", "positive")


@dataclass(frozen=True)
class ScoringConfig:
    """Settings of the score maps; stored in the model card.

    smoothgrad_samples: noisy copies n averaged for the gradient maps (SmoothGrad).
    smoothgrad_noise: noise std as a fraction of the model's input range.
    grad_smoothing_sigma: Gaussian sigma (model pixels at 128 px; scaled with the input size) applied to
        the gradient maps against checkerboard artefacts (reference: 3 at 128 px, 7x7 window).
    top_k_slices: the volume score is the mean of the k highest slice scores.
    seed: seed of the SmoothGrad noise (per slice, so independent of batch size and device).
    grad_reduction: how the n gradients g of a pixel become one value: "mean_abs" = mean |g| (the thesis'
        KL-grad), "abs_mean" = |mean g| (SmoothGrad as published), "positive" = max(mean g, 0) (only where
        brightening the pixel raises the loss, as at a hyperintense lesion).
    grad_brain_only: zero the gradient outside the brain mask before smoothing, so the strong gradients at
        the brain's edge do not bleed into it.
    tissue_prior_sigma_mm, tissue_prior_floor, tissue_class_peak, tissue_partial_volume,
        tissue_sign_from_prior, tissue_fluid_floor, tissue_deform_mm, tissue_pv_boundary_mm,
        tissue_contrast_rule: the tissue map's ``TissueSettings`` (a card without them keeps the map's first
        definition; the contrast rule also decides which of a card's per-contrast settings a scan gets).
    detection_median_mm: width (world mm) of a 3D median filter applied to the card's detection map before it
        is shown and thresholded (``napari_uad.postprocess``); 0 = none. Its calibration is of the filtered map.
    asymmetry_sigma_mm: Gaussian sigma (world mm) the asymmetry map smooths the scan by before comparing the
        hemispheres (``napari_uad.asymmetry``; a card without it keeps the map's first 2 mm).
    """

    smoothgrad_samples: int = 4
    smoothgrad_noise: float = 0.1
    grad_smoothing_sigma: float = 3.0
    top_k_slices: int = 3
    seed: int = 0
    grad_reduction: str = "mean_abs"
    grad_brain_only: bool = False
    tissue_prior_sigma_mm: float = TissueSettings.prior_sigma_mm
    tissue_prior_floor: float = TissueSettings.prior_floor
    tissue_class_peak: bool = TissueSettings.class_peak
    tissue_partial_volume: bool = TissueSettings.partial_volume
    tissue_sign_from_prior: bool = TissueSettings.sign_from_prior
    tissue_fluid_floor: float = TissueSettings.fluid_floor
    tissue_deform_mm: float = TissueSettings.deform_mm
    tissue_pv_boundary_mm: float = TissueSettings.pv_boundary_mm
    tissue_contrast_rule: str = TissueSettings.contrast_rule
    detection_median_mm: float = 0.0
    asymmetry_sigma_mm: float = ASYMMETRY_SIGMA_MM

    def __post_init__(self):
        if self.grad_reduction not in GRAD_REDUCTIONS:
            raise ValueError(f"grad_reduction {self.grad_reduction!r}: choose from {', '.join(GRAD_REDUCTIONS)}")
        if not 0.0 <= float(self.detection_median_mm) < 50.0:
            raise ValueError(f"detection_median_mm must be in [0, 50) mm, not {self.detection_median_mm}")
        self.tissue()  # the tissue settings check themselves (an unknown contrast rule is refused here)
        if not 0.0 < float(self.asymmetry_sigma_mm) <= 20.0:
            raise ValueError(f"asymmetry_sigma_mm must be in (0, 20] mm, not {self.asymmetry_sigma_mm}")

    def to_dict(self) -> dict:
        return asdict(self)

    def tissue(self) -> TissueSettings:
        """The tissue map's settings."""
        return TissueSettings(self.tissue_prior_sigma_mm, self.tissue_prior_floor, self.tissue_class_peak,
                              self.tissue_partial_volume, self.tissue_sign_from_prior, self.tissue_fluid_floor,
                              self.tissue_deform_mm, self.tissue_pv_boundary_mm, self.tissue_contrast_rule)


def contrast_points(calibration: dict) -> dict:
    """The operating points a card's ``calibration`` holds per recognised contrast (``tissue.scan_contrast``):
    contrast -> point."""
    return (calibration.get("operating_point") or {}).get("by_contrast") or {}


def min_thickness_by_contrast(calibration: dict) -> dict[str, float]:
    """Recognised contrast -> the minimum finding thickness (world mm) of its operating point, where it has one."""
    return {c: float(p["min_thickness_mm"]) for c, p in contrast_points(calibration).items()
            if p.get("min_thickness_mm")}


def contrast_point(calibration: dict, contrast: str | None) -> dict | None:
    """The operating point a card's ``calibration`` holds for scans of ``contrast``, or None where it has none
    (the pooled point applies)."""
    return contrast_points(calibration).get(contrast) if contrast else None


def _has_settings(calibration: dict, key: str) -> bool:
    """Whether a card's calibration holds settings of its own for scans keyed ``key`` (an operating point, or
    the combined map's components, dark channel or healthy tables)."""
    combined = calibration.get("combined") or {}
    return key in contrast_points(calibration) or any(
        key in (combined.get(part) or {})
        for part in ("components_by_contrast", "dark_components_by_contrast", "tables_by_contrast",
                     "tables_by_tissue"))


def settings_key(calibration: dict, contrast: str | None, sequence: str | None) -> str | None:
    """The key of the card's per-scan settings (operating point, combined-map components, dark channel, tables)
    for a scan: its declared ``sequence`` (``sequence.SEQUENCES``) where the card has settings for it and the
    scan's fluid agrees with it (``sequence.sequence_mismatch``), else the ``contrast`` its tissue fit recognises
    (``tissue.scan_contrast``; None where not computed), whose settings, or the pooled ones, apply. Each setting
    the card lacks for the key returned falls back to the pooled one (not to the recognised contrast's): a card
    with settings for a sequence gives it every setting it needs (point, components, dark channel)."""
    from .sequence import sequence_mismatch

    if sequence is None or sequence_mismatch(sequence, contrast) or not _has_settings(calibration, sequence):
        return contrast
    return sequence


@dataclass
class ModelCard:
    """Everything known about one model; serialised as ``card.json``."""

    name: str
    version: str
    modality: str = "MR"
    contrast: str = "any"
    description: str = ""
    architecture: ArchitectureConfig = field(default_factory=ArchitectureConfig)
    preprocessing: PreprocessingConfig = field(default_factory=PreprocessingConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    training: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)
    weights_sha256: str = ""
    weights_file: str = WEIGHTS_FILE
    path: Path | None = None  # directory the card was loaded from (not serialised)

    @property
    def input_size(self) -> int:
        return self.architecture.input_size

    @property
    def detection_map(self) -> str:
        """Default detection map: the card's calibrated choice, else 'combi'."""
        return self.calibration.get("detection_map", "combi")

    def default_threshold(self, map_name: str | None = None, contrast: str | None = None) -> float | None:
        """Calibrated detection threshold (raw score units) of ``map_name``, or None if not calibrated; for the
        detection map on a scan of a ``contrast`` with its own operating point, that point's threshold."""
        name = map_name or self.detection_map
        own = self.contrast_point(contrast) if name == self.detection_map else None
        value = own["threshold"] if own else self.calibration.get("maps", {}).get(name, {}).get("threshold")
        return None if value is None else float(value)

    def default_min_volume(self, contrast: str | None = None) -> float:
        """Calibrated minimum finding volume (mm^3) of the detection map, that of the ``contrast``'s own
        operating point where it has one; 0 if not calibrated."""
        own = self.contrast_point(contrast)
        return float(own["min_volume_mm3"] if own else self.calibration.get("min_volume_mm3", 0.0))

    def default_min_thickness(self, contrast: str | None = None) -> float:
        """Calibrated minimum finding thickness (world mm; ``findings.component_thickness``) of the detection map,
        that of the ``contrast``'s own operating point where it has one; 0 (none) if not calibrated."""
        own = self.contrast_point(contrast)
        return float(own.get("min_thickness_mm", 0.0) if own else self.calibration.get("min_thickness_mm", 0.0))

    def operating_point(self, contrast: str | None = None) -> tuple[float | None, float]:
        """(detection threshold, minimum finding volume mm^3) of the detection map for a scan of ``contrast``
        (``default_threshold``, ``default_min_volume``)."""
        return self.default_threshold(contrast=contrast), self.default_min_volume(contrast)

    @property
    def contrast_points(self) -> dict:
        """The operating points calibrated per recognised contrast (``tissue.scan_contrast``): contrast -> point."""
        return contrast_points(self.calibration)

    def contrast_point(self, contrast: str | None) -> dict | None:
        """The operating point calibrated for scans of ``contrast``, or None where the card has none for it (the
        pooled point applies)."""
        return contrast_point(self.calibration, contrast)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "modality": self.modality,
            "contrast": self.contrast,
            "description": self.description,
            "input_size": self.input_size,
            "architecture": self.architecture.to_dict(),
            "preprocessing": self.preprocessing.to_dict(),
            "scoring": self.scoring.to_dict(),
            "training": self.training,
            "calibration": self.calibration,
            "weights": {"file": self.weights_file, "sha256": self.weights_sha256},
        }

    @classmethod
    def from_dict(cls, d: dict, path: Path | None = None) -> "ModelCard":
        return cls(
            name=d["name"],
            version=str(d["version"]),
            modality=d.get("modality", "MR"),
            contrast=d.get("contrast", "any"),
            description=d.get("description", ""),
            architecture=ArchitectureConfig.from_dict(d["architecture"]),
            preprocessing=PreprocessingConfig.from_dict(d.get("preprocessing", {})),
            scoring=ScoringConfig(**d.get("scoring", {})),
            training=d.get("training", {}),
            calibration=d.get("calibration", {}),
            weights_sha256=d["weights"]["sha256"],
            weights_file=d["weights"].get("file", WEIGHTS_FILE),
            path=path,
        )

    @classmethod
    def read(cls, card_path: str | os.PathLike) -> "ModelCard":
        card_path = Path(card_path)
        try:
            d = json.loads(card_path.read_text(encoding="utf-8"))
            return cls.from_dict(d, path=card_path.parent)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ModelError(f"{card_path}: not a valid model card ({type(err).__name__}: {err})") from err

    def write(self, directory: str | os.PathLike) -> Path:
        """Write ``card.json`` atomically into ``directory``."""
        from .export import write_json

        return write_json(Path(directory) / CARD_FILE, self.to_dict())


def resolve_model(ref: str | os.PathLike | None = None) -> Path:
    """Directory of a model given a name (bundled, then user models directory), a model directory or a card path."""
    ref = DEFAULT_MODEL if ref is None else ref
    p = Path(ref).expanduser()
    if p.is_file() and p.name.endswith(".json"):
        return p.parent
    if (p / CARD_FILE).is_file():
        return p
    for root in (bundled_models_dir(), user_models_dir()):
        if root is not None and (root / str(ref) / CARD_FILE).is_file():
            return root / str(ref)
    known = ", ".join(sorted(list_models())) or "none"
    hint = " (the bundled model is missing from this installation)" if str(ref) == DEFAULT_MODEL else ""
    raise ModelError(f"model {ref!r} not found{hint}; give a model directory or card.json, or one of: {known}")


def list_models() -> dict[str, Path]:
    """Model name -> directory, for bundled models and those in the user models directory."""
    found: dict[str, Path] = {}
    for root in (user_models_dir(), bundled_models_dir()):  # bundled names win
        if root is not None and root.is_dir():
            for card in sorted(root.glob(f"*/{CARD_FILE}")):
                found[card.parent.name] = card.parent
    return found


def load_model(ref: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> tuple[CeVAE, ModelCard]:
    """Load a model (eval mode) and its card; the weights' sha256 must match the card."""
    directory = resolve_model(ref)
    card = ModelCard.read(directory / CARD_FILE)
    weights = directory / card.weights_file
    if not weights.is_file():
        raise ModelError(f"{weights}: weights file missing")
    digest = file_sha256(weights)
    if digest != card.weights_sha256:
        raise ModelError(f"{weights}: sha256 {digest[:12]}... does not match the card ({card.weights_sha256[:12]}...)")
    model = CeVAE(card.architecture)
    try:
        state = load_file(str(weights), device="cpu")
        model.load_state_dict(state, strict=True)
    except Exception as err:
        raise ModelError(f"{weights}: weights do not fit the card's architecture ({str(err).splitlines()[0]})") from err
    return model.to(device).eval(), card


def save_model(model: CeVAE, card: ModelCard, directory: str | os.PathLike) -> ModelCard:
    """Write ``model.safetensors`` and ``card.json`` (with the weights' sha256) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / card.weights_file
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_write(weights) as tmp:
        save_file(state, str(tmp), metadata={"name": card.name, "version": card.version})
    card.weights_sha256 = file_sha256(weights)
    card.architecture = model.config
    card.write(directory)
    card.path = directory
    return card
