"""The bundled model: its card verifies against its weights and is complete enough to score and calibrate."""

import json

import numpy as np
import pytest

from napari_uad.model_card import DEFAULT_MODEL, list_models, load_model
from napari_uad.scoring import MAP_NAMES, default_maps


@pytest.mark.parametrize("name", sorted({DEFAULT_MODEL, "cevae-brain-mr", "cevae-brain-mr-heads"}))
def test_bundled_card_verifies_and_is_calibrated(name):
    assert name in list_models()
    model, card = load_model(name)  # raises if the sha256 in the card does not match the weights
    weights = list_models()[name] / card.weights_file
    assert weights.stat().st_size < 50 * 2**20
    assert card.modality == "MR" and card.training["command"].startswith("napari-uad train --")
    assert card.training["wall_seconds"] > 0 and card.training["best_val_loss_nats_per_slice"] is not None
    cal = card.calibration
    assert cal["detection_map"] in MAP_NAMES and card.default_threshold() is not None
    # every map the model writes by default is calibrated (3.0.0: all maps; 2.3.0 predates the signed and
    # combined maps and writes the five it was calibrated for)
    offered = default_maps(card)
    assert {"residual", "E", "nll", "tissue"} <= set(offered)
    for name in offered + (("kl_grad", "elbo_grad", "combi") if "kl_grad" in cal["maps"] else ()):
        entry = cal["maps"][name]
        assert np.all(np.diff(entry["quantiles"]) >= 0)
        assert entry["threshold_fpr_1pct"] <= entry["threshold_fpr_0.1pct"]
    assert sum(p.numel() for p in model.parameters()) > 0
    if name == DEFAULT_MODEL:  # the default's operating point keeps normal validation heads quiet
        point = cal["operating_point"]
        assert point["fp_target_met"] and point["validation"]["fp_objects_per_normal_scan"] <= 1.0
        assert point["threshold"] == card.default_threshold() and point["min_volume_mm3"] == cal["min_volume_mm3"]


def test_the_default_model_finds_the_sample_lesions(tmp_path):
    """The README demo shows the default model at work: on the bundled sample at the card's operating point it
    finds the inserted lesions (checked against the ground truth shipped beside it), with at most one false finding."""
    import nibabel as nib

    from napari_uad.cli import main as cli_main
    from napari_uad.metrics import finding_overlaps
    from napari_uad.resources import sample_data_dir

    out = tmp_path / "demo"
    assert cli_main(["demo", "--headless", "--out", str(out), "--device", "cpu"]) == 0
    labels = np.asarray(nib.load(str(out / "sample_brain.labels.nii.gz")).dataobj).astype(np.int64)
    truth = np.asarray(nib.load(str(sample_data_dir() / "sample_brain_mask.nii.gz")).dataobj)
    overlaps, n_lesions = finding_overlaps(labels, truth)
    found = {lesion for lesion in overlaps.values() if lesion}
    false = [fid for fid, lesion in overlaps.items() if not lesion]
    assert n_lesions == 3 and len(found) >= 2 and len(false) <= 1
    # and the out-of-distribution guard (tissue fit included: the default maps compute it) is quiet on it
    assert json.loads((out / "sample_brain.json").read_text())["warnings"] == []
