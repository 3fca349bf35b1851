"""Preprocessing: a pipeline of named steps from a raw scan to model input (see ``steps``).

brain_extraction -> bias_field (N4) -> normalisation -> alignment (template space) -> slicing.
"""

from .brain_extraction import BrainExtractionError, BrainMask, brain_mask, check_brain_mask
from .config import SKULL_STRIP_MODES, PipelineOptions, PreprocessingConfig
from .normalisation import clip_only, normalise_intensity
from .steps import STEP_NAMES, PreparedVolume, brain_extraction_mode, iter_prepare_volume, prepare_volume

__all__ = ["BrainExtractionError", "BrainMask", "PipelineOptions", "PreparedVolume", "PreprocessingConfig",
           "SKULL_STRIP_MODES", "STEP_NAMES", "brain_extraction_mode", "brain_mask", "check_brain_mask", "clip_only",
           "iter_prepare_volume", "normalise_intensity", "prepare_volume"]
