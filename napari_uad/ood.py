"""Out-of-distribution guard: is this scan like the ones the model's card was calibrated on?

The card's ``calibration.ood`` block (written by :func:`napari_uad.calibration.calibrate` from its healthy
validation volumes) holds: modality, brain volume range (ml), smallest field-of-view side (mm), the healthy
volume scores, the largest fraction of brain voxels above the detection threshold and whether the healthy scans
were contrast-enhanced (absent in older cards: ours were not). Two checks need no reference: the scan's tissue fit
must have its classes in an order some MR contrast has, and no region darker than its tissue may be thicker than
1.5 x the thickest of the healthy validation heads' (a cavity or a large cyst, which a detection map that scores
hyperintensity alone does not mark, and one with a dark channel may mark only in part). Each check returns
human-readable warnings; a CT scan given to an MR model (or the reverse) is refused unless forced.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .io import Volume
from .model_card import ModelCard
from .tissue import implausible_tissue_order

if TYPE_CHECKING:
    from .scoring import ScoreResult

__all__ = ["ModalityMismatch", "check_input", "check_result", "check_score", "ood_reference", "UNRELIABLE"]

UNRELIABLE = "this scan differs from the model's training data; findings are unreliable"
_BRAIN_VOLUME_SLACK = 0.5  # flagged below half the smallest / above 1.5x the largest calibration brain: a partial
# brain, a failed mask or not a head (the calibration brains are synthetic, MNI-sized: real adult brains of
# 1000-1700 ml are smaller, and alignment to the template evens out size for the model anyway)
_TEMPLATE_DICE_SLACK = 0.05  # flagged when the brain mask fits the aligned template brain this much worse than
# every healthy calibration scan: brain extraction cut away part of the brain (or a lesion), or alignment failed
_FRACTION_FACTOR = 10.0  # flagged when 10x more of the brain is above threshold than in any healthy scan ...
_MIN_FRACTION = 0.15  # ... and at least 15 % of it: more than a large glioma with its oedema; a scan of
# another contrast or a broken preprocessing lights up most of the brain
HYPOINTENSE_HEALTHY_MAX_MM = 9.17  # the thickest hypointense region (``tissue.hypointense_thickness_mm``, world
# mm) of 64 healthy validation heads (32 label-map heads, 32 MNI-template brains; docs/RESULTS.md, "Out-of-
# distribution guard: a thick dark region") ...
HYPOINTENSE_THICKNESS_MM = 1.5 * HYPOINTENSE_HEALTHY_MAX_MM  # ... and the bound: 1.5 x that (64 fresh healthy heads:
# none above it; 128 lesion heads: 2 FLAIR infarcts with tissue loss above it)


class ModalityMismatch(ValueError):
    """The scan's modality is not the model's; the message is one line."""


def ood_reference(card: ModelCard) -> dict:
    return card.calibration.get("ood", {})


def check_input(volume: Volume, card: ModelCard, force: bool = False) -> list[str]:
    """Warnings about a scan before scoring (modality, field of view, a contrast agent the calibration scans did
    not have); raises ModalityMismatch unless ``force``."""
    warnings: list[str] = []
    if volume.modality != card.modality:
        message = (f"{volume.modality} scan, but model {card.name!r} is made for {card.modality}; "
                   "use --force to score it anyway")
        if not force:
            raise ModalityMismatch(message)
        warnings.append(f"{volume.modality} scan scored by the {card.modality} model {card.name!r} (forced)")
    ref = ood_reference(card)
    extent = np.asarray(volume.shape) * np.asarray(volume.spacing)
    in_plane = min(volume.shape[:2])
    if in_plane < card.input_size / 4 or min(volume.shape) < 3:
        warnings.append(f"the volume is tiny ({' x '.join(map(str, volume.shape))} voxels, "
                        f"{' x '.join(f'{e:.0f}' for e in extent)} mm) for a model that reads "
                        f"{card.input_size} x {card.input_size}-pixel slices")
    agent = volume.metadata.get("contrast_agent")
    if agent and not ref.get("contrast_enhanced", False):
        warnings.append(f"contrast-enhanced scan (agent: {agent}); the model was calibrated on scans without "
                        "contrast agent: enhancing vessels, dura and choroid plexus may be flagged")
    min_side = ref.get("min_field_of_view_mm")
    if min_side is not None and extent.min() < 0.5 * min_side:
        warnings.append(f"field of view {' x '.join(f'{e:.0f}' for e in extent)} mm is much smaller than the "
                        f"model's calibration scans (smallest side {min_side:.0f} mm)")
    return warnings


def check_result(brain: np.ndarray, voxel_volume_mm3: float, detection: np.ndarray, volume_score: float,
                 card: ModelCard, detection_map: str, template_dice: float | None = None,
                 tissue_means: tuple[float, float, float] | None = None, hypointense_mm: float | None = None,
                 contrast: str | None = None) -> tuple[list[str], dict]:
    """Warnings after scoring and the numbers they rest on (for S.json).

    brain: brain mask (canonical grid); detection: the detection map, same grid; the fraction above threshold
    is taken at the card's calibrated threshold, so it is comparable to the card's healthy reference whatever
    threshold the user chose. template_dice: Dice of the brain mask with the aligned template's brain
    (``ScoreResult.template_brain_dice``; None when the scan was not aligned). tissue_means: the tissue fit's CSF,
    GM and WM means (``ScoreResult.tissue_means``; None when the tissue map was not computed), checked against the
    orders MR contrasts have (``tissue.implausible_tissue_order``; needs no calibration reference).
    hypointense_mm: the thickness (world mm) of the thickest region darker than its tissue
    (``ScoreResult.hypointense_mm``; None when the tissue map was not computed), against
    ``HYPOINTENSE_THICKNESS_MM``; its warning says whether the detection map can mark such a region (the combined
    map with a dark channel for the scan's settings key ``contrast``, ``combined.dark_components``) or not.
    """
    ref = ood_reference(card)
    warnings: list[str] = []
    brain_ml = float(brain.sum() * voxel_volume_mm3 / 1000.0)
    facts: dict = {"brain_volume_ml": round(brain_ml, 1)}
    lo_hi = ref.get("brain_volume_ml")
    if lo_hi is not None:
        lo, hi = lo_hi
        if not (1 - _BRAIN_VOLUME_SLACK) * lo <= brain_ml <= (1 + _BRAIN_VOLUME_SLACK) * hi:
            warnings.append(f"brain volume {brain_ml:.0f} ml is outside the calibration scans' "
                            f"{lo:.0f}-{hi:.0f} ml")
    if template_dice is not None:
        facts["template_brain_dice"] = round(template_dice, 4)
        lowest = ref.get("min_template_brain_dice")
        if lowest is not None and template_dice < lowest - _TEMPLATE_DICE_SLACK:
            warnings.append(f"the brain mask fits the template brain poorly (Dice {template_dice:.2f}; healthy "
                            f"calibration scans >= {lowest:.2f}): brain extraction may have cut away part of the "
                            "brain or a lesion")
    if tissue_means is not None:
        facts["tissue_means_csf_gm_wm"] = [round(float(m), 3) for m in tissue_means]
        why = implausible_tissue_order(tissue_means)
        if why is not None:
            warnings.append(f"the scan's tissue fit is implausible ({why}, which no T1, T2, PD or FLAIR scan "
                            "without contrast agent shows): a large anomaly or a contrast agent may have taken over a "
                            "tissue class, or this is not a structural brain MR")
    if hypointense_mm is not None:
        facts["hypointense_thickness_mm"] = round(float(hypointense_mm), 1)
        if hypointense_mm > HYPOINTENSE_THICKNESS_MM:
            warnings.append(f"a region darker than its tissue should be is {hypointense_mm:.0f} mm thick (inscribed "
                            f"radius; healthy validation heads stay below {HYPOINTENSE_THICKNESS_MM:.0f} mm): a large "
                            f"dark anomaly such as a cavity or a cyst, {_dark_coverage(card, detection_map, contrast)}; "
                            "look at it")
    threshold = card.default_threshold(detection_map)
    healthy_max = ref.get("max_fraction_above_threshold", {}).get(detection_map)
    if threshold is not None and brain.any():
        fraction = float((detection[brain] >= threshold).mean())
        facts["fraction_above_card_threshold"] = round(fraction, 5)
        if healthy_max is not None and fraction > max(_FRACTION_FACTOR * healthy_max, _MIN_FRACTION):
            warnings.append(f"{100 * fraction:.1f} % of the brain is above the detection threshold "
                            f"(healthy calibration scans: at most {100 * healthy_max:.2f} %)")
    scores = ref.get("volume_scores")
    if scores and np.isfinite(volume_score):
        scores = np.sort(np.asarray(scores, dtype=np.float64))
        facts["volume_score_healthy_quantile"] = round(float(np.searchsorted(scores, volume_score) / scores.size), 4)
        median, top = float(np.median(scores)), float(scores[-1])
        if volume_score > top + 2.0 * (top - median):
            warnings.append(f"volume score {volume_score:.0f} is far above every healthy calibration scan "
                            f"(max {top:.0f})")
    return warnings, facts


def _dark_coverage(card: ModelCard, detection_map: str, contrast: str | None) -> str:
    """What the detection map does with a region darker than its tissue, in words for the warning."""
    from .combined import COMBINED, dark_components

    if detection_map == COMBINED and dark_components(card.calibration, contrast):
        return "which only the detection map's dark channel scores: check that the findings cover it"
    return "which the detection map (it scores hyperintensity) does not mark"


def check_score(result: "ScoreResult", voxel_volume_mm3: float, card: ModelCard, detection_map: str
                ) -> tuple[list[str], dict]:
    """:func:`check_result` on a scorer's result (its brain mask, detection map, volume score, template fit,
    tissue fit and thickest hypointense region), and first a declared sequence that the scan's fluid contradicts
    (``sequence.sequence_mismatch``)."""
    from .sequence import sequence_mismatch

    warnings, facts = check_result(result.mask, voxel_volume_mm3, result.maps[detection_map], result.volume_score,
                                   card, detection_map, result.template_brain_dice, result.tissue_means,
                                   result.hypointense_mm, result.settings)
    why = sequence_mismatch(result.sequence, result.contrast)
    return ([why] if why else []) + warnings, facts
