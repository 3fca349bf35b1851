"""The out-of-distribution guard: fires on a CT scan, a tiny volume, a brain a third of which is 'lesion' and a tissue
fit no MR contrast gives; stays quiet on the bundled sample scored by the bundled model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_uad.cli import main as cli_main
from napari_uad.io import Volume
from napari_uad.model_card import ModelCard
from napari_uad.ood import UNRELIABLE, ModalityMismatch, check_input, check_result
from napari_uad.resources import sample_data_dir
from napari_uad.tissue import implausible_tissue_order


def card_with_reference() -> ModelCard:
    """A card whose calibration knows healthy scans: 1100-1500 ml brains, >= 150 mm fields of view, at most
    0.05 % of the brain above the nll threshold 5.0, volume scores 100-140."""
    return ModelCard(name="m", version="1", modality="MR", calibration={
        "detection_map": "nll", "maps": {"nll": {"threshold": 5.0}},
        "ood": {"brain_volume_ml": [1100.0, 1500.0], "min_field_of_view_mm": 150.0,
                "volume_scores": [100.0, 110.0, 120.0, 140.0], "max_fraction_above_threshold": {"nll": 0.0005}}})


def brain_ball(shape=(60, 60, 60), spacing=3.0) -> tuple[Volume, np.ndarray]:
    i, j, k = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    brain = ((i - 30) ** 2 + (j - 30) ** 2 + (k - 30) ** 2) < madius2(spacing)
    data = np.where(brain, 100.0, 0.0).astype(np.float32)
    return Volume.from_array(data, np.diag([spacing, spacing, spacing, 1.0])), brain


def madius2(spacing: float) -> float:
    radius_mm = (3 * 1300e3 / (4 * np.pi)) ** (1 / 3)  # a 1300 ml ball
    return (radius_mm / spacing) ** 2


def test_ct_scan_is_refused_unless_forced():
    ct = Volume.from_array(np.full((64, 64, 64), -1000.0, np.float32) + np.pad(np.full((32, 32, 32), 1040.0),
                                                                              16).astype(np.float32), np.eye(4))
    assert ct.modality == "CT"
    with pytest.raises(ModalityMismatch, match="CT scan, but model 'm' is made for MR"):
        check_input(ct, card_with_reference())
    warnings = check_input(ct, card_with_reference(), force=True)
    assert any("forced" in w for w in warnings)


def test_contrast_enhanced_scan_fires_unless_the_calibration_scans_were_enhanced():
    volume = brain_ball()[0]
    assert check_input(volume, card_with_reference()) == []
    volume.metadata["contrast_agent"] = "GADAVIST"
    warnings = check_input(volume, card_with_reference())
    assert len(warnings) == 1 and "contrast-enhanced scan (agent: GADAVIST)" in warnings[0]
    enhanced = card_with_reference()
    enhanced.calibration["ood"]["contrast_enhanced"] = True  # e.g. a site calibrated on its own T1c normals
    assert check_input(volume, enhanced) == []


def test_tiny_volume_fires():
    tiny = Volume.from_array(np.random.default_rng(0).normal(100, 10, (8, 8, 8)).astype(np.float32), np.eye(4))
    warnings = check_input(tiny, card_with_reference())
    assert len(warnings) == 2 and "field of view 8 x 8 x 8 mm" in warnings[1]
    # without any calibration reference the tiny volume still speaks
    bare = ModelCard(name="m", version="1", modality="MR")
    assert check_input(tiny, bare) == ["the volume is tiny (8 x 8 x 8 voxels, 8 x 8 x 8 mm) for a model that reads "
                                       "128 x 128-pixel slices"]
    assert check_input(brain_ball()[0], bare) == []
    found, facts = check_result(np.ones((8, 8, 8), bool), 1.0, np.zeros((8, 8, 8), np.float32), 0.0,
                                card_with_reference(), "nll")
    assert any("brain volume 1 ml" in w for w in found) and facts["brain_volume_ml"] == pytest.approx(0.5, abs=0.1)


def test_lesion_covering_a_third_of_the_brain_fires_and_a_normal_brain_does_not():
    volume, brain = brain_ball()
    assert check_input(volume, card_with_reference()) == []
    score = np.zeros(brain.shape, np.float32)
    voxels = np.flatnonzero(brain)
    score.ravel()[voxels[: voxels.size // 2000]] = 9.0  # 0.05 %: like a healthy scan
    quiet, facts = check_result(brain, volume.voxel_volume_mm3, score, 120.0, card_with_reference(), "nll")
    assert quiet == [] and facts["volume_score_healthy_quantile"] == pytest.approx(0.5)
    score.ravel()[voxels[: int(0.3 * voxels.size)]] = 9.0  # 30 % of the brain
    loud, facts = check_result(brain, volume.voxel_volume_mm3, score, 400.0, card_with_reference(), "nll")
    assert any("30.0 % of the brain is above the detection threshold" in w for w in loud)
    assert any("volume score 400 is far above every healthy calibration scan" in w for w in loud)
    assert facts["fraction_above_card_threshold"] == pytest.approx(0.3, abs=1e-3)


def test_a_brain_mask_that_misses_part_of_the_template_brain_fires():
    """Brain extraction that cut away part of the brain (deepbet can cut a large lesion's surroundings) shows as
    a poor fit to the aligned template's brain; the card's healthy reference says what is poor."""
    volume, brain = brain_ball()
    card = card_with_reference()
    card.calibration["ood"]["min_template_brain_dice"] = 0.95
    quiet, facts = check_result(brain, volume.voxel_volume_mm3, np.zeros(brain.shape, np.float32), 120.0, card,
                                "nll", template_dice=0.93)
    assert quiet == [] and facts["template_brain_dice"] == 0.93
    loud, _ = check_result(brain, volume.voxel_volume_mm3, np.zeros(brain.shape, np.float32), 120.0, card, "nll",
                           template_dice=0.86)
    assert loud == ["the brain mask fits the template brain poorly (Dice 0.86; healthy calibration scans >= 0.95): "
                    "brain extraction may have cut away part of the brain or a lesion"]
    # a card without that reference (older calibration) stays silent about it
    assert check_result(brain, volume.voxel_volume_mm3, np.zeros(brain.shape, np.float32), 120.0,
                        card_with_reference(), "nll", template_dice=0.5)[0] == []


@pytest.mark.parametrize("contrast, means", [("T1", (-1.7, -0.4, 1.3)), ("T2", (1.5, 0.4, -1.2)),
                                             ("FLAIR", (-2.4, 0.6, 0.3)), ("PD", (1.0, 0.5, -1.0)),
                                             ("PD, fluid between", (-0.5, 0.6, -0.9))])
def test_the_tissue_orders_of_mr_contrasts_are_plausible(contrast, means):
    """CSF, GM, WM means as the tissue fits of healthy validation heads give them (standardised units)."""
    assert implausible_tissue_order(means) is None


@pytest.mark.parametrize("means", [(1.2, -0.8, 1.1), (0.7, -0.6, 1.0), (-0.3, -0.6, 1.1)])
def test_grey_matter_darker_than_fluid_and_white_matter_is_implausible_and_warns(means):
    """The fits of brains whose central 30 % is a bright ball: the CSF and WM classes absorb it."""
    assert implausible_tissue_order(means) == "grey matter darker than both fluid and white matter"
    volume, brain = brain_ball()
    quiet, facts = check_result(brain, volume.voxel_volume_mm3, np.zeros(brain.shape, np.float32), 120.0,
                                card_with_reference(), "nll", tissue_means=(-1.7, -0.4, 1.3))
    assert quiet == [] and facts["tissue_means_csf_gm_wm"] == [-1.7, -0.4, 1.3]
    loud, facts = check_result(brain, volume.voxel_volume_mm3, np.zeros(brain.shape, np.float32), 120.0,
                               card_with_reference(), "nll", tissue_means=means)
    assert len(loud) == 1 and loud[0].startswith("the scan's tissue fit is implausible (grey matter darker")
    # without a tissue fit (the tissue map not computed) there is nothing to check
    assert "tissue_means_csf_gm_wm" not in check_result(brain, volume.voxel_volume_mm3,
                                                        np.zeros(brain.shape, np.float32), 120.0,
                                                        card_with_reference(), "nll")[1]


def test_a_thick_region_darker_than_its_tissue_warns_and_thin_ones_do_not():
    """A cavity or a large cyst is dark where its tissue should be and thick; healthy heads' hypointense
    voxels form thin shells (``ood.HYPOINTENSE_HEALTHY_MAX_MM`` at most on validation heads)."""
    from napari_uad.ood import HYPOINTENSE_HEALTHY_MAX_MM, HYPOINTENSE_THICKNESS_MM

    volume, brain = brain_ball()
    zeros = np.zeros(brain.shape, np.float32)
    quiet, facts = check_result(brain, volume.voxel_volume_mm3, zeros, 120.0, card_with_reference(), "nll",
                                hypointense_mm=HYPOINTENSE_HEALTHY_MAX_MM)
    assert quiet == [] and facts["hypointense_thickness_mm"] == round(HYPOINTENSE_HEALTHY_MAX_MM, 1)
    loud, facts = check_result(brain, volume.voxel_volume_mm3, zeros, 120.0, card_with_reference(), "nll",
                               hypointense_mm=HYPOINTENSE_THICKNESS_MM + 0.5)
    assert len(loud) == 1 and "darker than its tissue" in loud[0] and "cavity" in loud[0]
    assert "scores hyperintensity) does not mark" in loud[0]
    # a card whose combined map has a dark channel for the scan's contrast does score it: the warning says so
    card = card_with_reference()
    card.calibration.update(detection_map="combined", combined={"dark_components_by_contrast": {
        "dark_fluid": ["-tissue"]}})
    card.calibration["maps"].update({"-tissue": {}, "combined": {"threshold": 2.0}})
    for contrast, marks in (("dark_fluid", True), ("bright_fluid", False), (None, False)):
        said = check_result(brain, volume.voxel_volume_mm3, zeros, 120.0, card, "combined",
                            hypointense_mm=HYPOINTENSE_THICKNESS_MM + 0.5, contrast=contrast)[0]
        assert len(said) == 1 and ("dark channel scores" in said[0]) is marks
        assert ("does not mark" in said[0]) is not marks
    # without a tissue map there is nothing to measure
    assert "hypointense_thickness_mm" not in check_result(brain, volume.voxel_volume_mm3, zeros, 120.0,
                                                          card_with_reference(), "nll")[1]


def test_check_score_reads_the_scorers_result():
    """The callers hand over the ScoreResult: its mask, detection map, volume score and template fit are used."""
    from napari_uad.ood import check_score
    from napari_uad.scoring import ScoreResult

    volume, brain = brain_ball()
    card = card_with_reference()
    card.calibration["ood"]["min_template_brain_dice"] = 0.95
    score = np.zeros(brain.shape, np.float32)
    score[brain] = 10.0  # the whole brain above the card's threshold
    k = np.zeros(brain.shape[2])
    result = ScoreResult(maps={"nll": score}, mask=brain, slice_scores=k, slice_kl=k, slice_rec=k, volume_score=400.0,
                         device="cpu", batch_size=1, template_brain_dice=0.86, tissue_means=(0.7, -0.6, 1.0),
                         hypointense_mm=60.0)
    assert check_score(result, volume.voxel_volume_mm3, card, "nll") == check_result(
        brain, volume.voxel_volume_mm3, score, 400.0, card, "nll", template_dice=0.86, tissue_means=(0.7, -0.6, 1.0),
        hypointense_mm=60.0)
    found, facts = check_score(result, volume.voxel_volume_mm3, card, "nll")
    assert len(found) == 5 and facts["template_brain_dice"] == 0.86 and facts["fraction_above_card_threshold"] == 1
    assert facts["hypointense_thickness_mm"] == 60.0


@pytest.mark.slow
def test_bundled_sample_is_quiet_and_a_lesion_scan_speaks(tmp_path, capsys):
    """End to end with the bundled model: the sample brain raises no OOD warning; a T2-like synthetic brain with
    30 % of it replaced by a bright 'lesion' gets warnings in S.json and on stderr (brain extraction cuts the
    ball away, and the guard says so). On a FLAIR-like brain the ball survives brain extraction and lights up no
    finding (the tissue fit absorbs it); the guard then speaks through the tissue fit's implausible class order
    (docs/RESULTS.md, "Out-of-distribution guard: the tissue fit"), with the default maps."""
    import nibabel as nib

    from napari_uad.synth import bright_ball, healthy_volume

    out = tmp_path / "out"
    assert cli_main(["score", str(sample_data_dir() / 'sample_brain.nii.gz'), "--out", str(out), "--maps", "nll", "--quiet"]) == 0
    report = json.loads((out / "sample_brain.json").read_text())
    assert report["out_of_distribution"]["warnings"] == [] and report["warnings"] == []
    assert report["out_of_distribution"]["template_brain_dice"] > 0.9  # its brain mask fits the aligned template
    assert (out / "sample_brain.brainmask.nii.gz").is_file()
    assert [s["step"] for s in report["preprocessing"]] == ["brain_extraction", "bias_correction", "normalisation",
                                                             "alignment", "slicing"]
    case = healthy_volume(2026, contrast="t2")
    data, _ = bright_ball(case.data, 0.3)  # a bright, textured ball: 30 % of the brain
    bad = tmp_path / "lesion.nii.gz"
    nib.save(nib.Nifti1Image(data, case.affine), str(bad))
    capsys.readouterr()
    assert cli_main(["score", str(bad), "--out", str(out), "--maps", "nll", "--quiet"]) == 0
    report = json.loads((out / "lesion.json").read_text())
    assert UNRELIABLE in report["out_of_distribution"]["warnings"]
    assert UNRELIABLE in capsys.readouterr().err
    flair = healthy_volume(2026, contrast="flair")
    data, _ = bright_ball(flair.data, 0.3)
    nib.save(nib.Nifti1Image(data, flair.affine), str(tmp_path / "ball_flair.nii.gz"))
    assert cli_main(["score", str(tmp_path / "ball_flair.nii.gz"), "--out", str(out), "--quiet"]) == 0
    ood = json.loads((out / "ball_flair.json").read_text())["out_of_distribution"]
    assert any("tissue fit is implausible" in w for w in ood["warnings"]) and UNRELIABLE in ood["warnings"]
    assert UNRELIABLE in capsys.readouterr().err
    csf, gm, wm = ood["tissue_means_csf_gm_wm"]
    assert gm < min(csf, wm)


@pytest.mark.slow
@pytest.mark.parametrize("contrast", ["flair", "t1"])
def test_a_brain_with_a_large_cavity_gets_a_warning(tmp_path, capsys, contrast):
    """End to end with the bundled model and default maps: a FLAIR- or T1-like brain whose central 30 % is dark
    (``synth.dark_ball``: a cavity) gets no finding on it -- the bundled model's dark channel scores regions darker
    than their tissue, but not one this large -- so the guard must speak, and say that only the dark channel could
    mark it: the region darker than its tissue is thicker than healthy validation heads' (docs/RESULTS.md,
    "Out-of-distribution guard: a thick dark region"). The generator's brain has background voxels enclosed in
    its mask (filled holes); were they in the tissue fit, the T1 cavity would pass unnoticed."""
    import nibabel as nib

    from napari_uad.ood import HYPOINTENSE_THICKNESS_MM
    from napari_uad.synth import dark_ball, healthy_volume

    brain = healthy_volume(2026, contrast=contrast)
    data, _ = dark_ball(brain.data, 0.3)
    nib.save(nib.Nifti1Image(data, brain.affine), str(tmp_path / "cavity.nii.gz"))
    out = tmp_path / "out"
    assert cli_main(["score", str(tmp_path / "cavity.nii.gz"), "--out", str(out), "--quiet"]) == 0
    ood = json.loads((out / "cavity.json").read_text())["out_of_distribution"]
    assert ood["hypointense_thickness_mm"] > HYPOINTENSE_THICKNESS_MM
    assert any("darker than its tissue" in w and "dark channel" in w for w in ood["warnings"])
    assert UNRELIABLE in ood["warnings"]
    assert "darker than its tissue" in capsys.readouterr().err
