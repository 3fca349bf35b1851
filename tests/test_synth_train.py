"""Synthetic data, training, resume and calibration."""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest
import torch

from napari_uad import cli
from napari_uad.calibration import MIN_VOLUME_CANDIDATES_MM3, best_dice_threshold, quantile_table, to_quantile
from napari_uad.model import ArchitectureConfig
from napari_uad.model_card import ModelCard, load_model
from napari_uad.synth import ANOMALY_KINDS, bright_ball, dark_ball, healthy_volume, insert_anomaly, synth_case
from napari_uad.train import TrainConfig, Trainer, context_encoding_batch, train_model


@pytest.fixture(scope="module")
def healthy():
    return healthy_volume(11, contrast="t2")


def test_healthy_generator_is_deterministic_and_skull_stripped(healthy):
    again = healthy_volume(11, contrast="t2")
    np.testing.assert_array_equal(again.data, healthy.data)
    other = healthy_volume(12, contrast="t2")
    assert other.data.shape == healthy.data.shape and not np.array_equal(other.data, healthy.data)
    assert healthy.data.dtype == np.float32 and healthy.data.min() == 0.0
    brain = healthy.data > 0
    assert 0.15 < brain.mean() < 0.6
    assert healthy.mask.sum() == 0


@pytest.mark.parametrize("kind", ANOMALY_KINDS)
def test_anomaly_mask_is_exactly_the_changed_voxels(healthy, kind):
    case = insert_anomaly(healthy, seed=5, kind=kind)
    changed = case.data != healthy.data
    np.testing.assert_array_equal(case.mask > 0, changed)
    assert case.mask.sum() > 10
    assert np.all(healthy.data[case.mask > 0] > 0)  # inside the brain only
    again = insert_anomaly(healthy, seed=5, kind=kind)
    np.testing.assert_array_equal(again.data, case.data)


def test_several_lesions_accumulate_in_the_mask():
    case = synth_case(3, "sphere", "t1", n_anomalies=3)
    base = healthy_volume(3, "t1")
    np.testing.assert_array_equal(case.mask > 0, case.data != base.data)
    assert case.params["anomalies"] == ["sphere"] * 3


def test_thick_slices_make_an_anisotropic_volume():
    case = synth_case(4, None, "flair", slice_thickness=3.0)
    assert np.allclose(np.sqrt((case.affine[:3, :3] ** 2).sum(0)), [1, 1, 3])


@pytest.mark.parametrize("make, percentile, factor", [(bright_ball, 99, 1.8), (dark_ball, 1, 1.0)])
def test_the_guards_gross_anomalies_replace_the_brains_central_fraction(make, percentile, factor):
    """bright_ball / dark_ball (benchmarks/ood_ball.py, tests/test_ood.py): the central 30 % of the brain's voxels,
    textured around 1.8 x its 99th / its 1st intensity percentile, still brain (> 0); the input is not changed."""
    data = np.zeros((30, 30, 30), np.float32)
    data[5:25, 5:25, 5:25] = np.random.default_rng(0).uniform(50, 150, (20, 20, 20))
    before = data.copy()
    out, ball = make(data, 0.3)
    brain = data > 0
    assert np.array_equal(data, before) and (ball <= brain).all()
    assert ball.sum() == pytest.approx(0.3 * brain.sum(), rel=0.05)  # radius ties on a small grid
    assert ball[15, 15, 15] and not ball[5, 5, 5]  # central, not at the edge
    level = factor * np.percentile(data[brain], percentile)
    assert np.median(out[ball]) == pytest.approx(level, rel=0.02) and (out[brain] > 0).all()
    assert np.array_equal(out[~ball], data[~ball])


def test_synth_cli_writes_scans_masks_and_manifest(tmp_path):
    assert cli.main(["synth", "--out", str(tmp_path), "--n", "2", "--anomalies", "blobs", "--contrast", "pd",
                     "--normal-fraction", "0.0"]) == 0
    import nibabel as nib

    manifest = json.loads((tmp_path / "synth.json").read_text(encoding="utf-8"))
    assert [c["anomaly"] for c in manifest["cases"]] == ["blobs", "blobs"]
    for case in manifest["cases"]:
        mask = np.asarray(nib.load(str(tmp_path / "masks" / f"{case['stem']}.nii.gz")).dataobj)
        scan = nib.load(str(tmp_path / "scans" / f"{case['stem']}.nii.gz"))
        assert mask.shape == scan.shape and mask.sum() == case["anomaly_voxels"]
    assert cli.main(["synth", "--out", str(tmp_path), "--n", "1", "--anomalies", "bogus"]) == 2


def test_context_encoding_masks_combine_rectangles():
    x = torch.zeros(64, 1, 32, 32)
    gen = torch.Generator().manual_seed(0)
    x_tilde, mask = context_encoding_batch(x, gen, (-3.0, 3.0))
    changed = x_tilde != 0
    assert torch.all(mask | ~changed)  # every painted pixel is in the mask
    assert torch.all(mask.flatten(1).any(1))
    frac = mask.float().mean(dim=(1, 2, 3))
    assert frac.min() > 0.005 and frac.max() < 0.5


def test_volumes_made_in_worker_processes_match_in_process():
    from napari_uad.preprocessing import PreprocessingConfig
    from napari_uad.train import map_in_workers, synthetic_slices

    make = partial(synthetic_slices, preprocessing=PreprocessingConfig(), size=32)
    here = list(map_in_workers(make, [3, 4], workers=1))
    spawned = list(map_in_workers(make, [3, 4], workers=2))
    assert len(here) == len(spawned) == 2
    for a, b in zip(here, spawned):
        assert a.shape == b.shape and a.shape[0] > 20
        torch.testing.assert_close(a.float(), b.float(), atol=2e-3, rtol=0)


def test_training_step_is_deterministic_per_seed():
    from napari_uad.train import augment_batch

    x = torch.linspace(-1, 2, 8 * 32 * 32).reshape(8, 1, 32, 32)
    outs = []
    for _ in range(2):
        gen, noise = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        a = augment_batch(x, gen, -3.0, (-3.0, 3.0), noise)
        outs.append(context_encoding_batch(a, gen, (-3.0, 3.0))[0])
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], x)


def tiny_card() -> ModelCard:
    return ModelCard(name="tiny", version="0", architecture=ArchitectureConfig(input_size=32, channels=(8, 16),
                                                                               latent=8))


def test_short_training_lowers_the_loss_and_writes_a_loadable_card(tmp_path):
    volumes = [healthy_volume(s, "t1", slice_thickness=3.0) for s in (1, 2)]
    from napari_uad.synth import case_volume

    trainer = Trainer(tiny_card(), tmp_path / "m", TrainConfig(epochs=6, steps_per_epoch=8, batch_size=16,
                                                               learning_rate=2e-3), device="cpu", log=lambda m: None)
    train = trainer.slices_of([case_volume(volumes[0])])
    val = trainer.slices_of([case_volume(volumes[1])])
    initial = trainer.validation_loss(val)
    state = trainer.fit(train, val)
    assert state["best_val"] < 0.8 * initial
    model, card = load_model(tmp_path / "m")
    assert card.training["best_val_loss_nats_per_slice"] == pytest.approx(state["best_val"])
    assert len(card.training["history"]) == 6


def test_learning_rate_halves_on_plateau_and_training_stops_early(tmp_path, monkeypatch):
    trainer = Trainer(tiny_card(), tmp_path / "m", TrainConfig(epochs=20, steps_per_epoch=1, batch_size=4,
                                                               learning_rate=1e-3, patience=5, lr_patience=2),
                      device="cpu", log=lambda m: None)
    losses = iter([10.0, 9.0, 9.5, 9.6, 9.7, 9.8, 9.9, 8.0, 8.5])  # improves at epochs 1, 2 and 8 only
    monkeypatch.setattr(trainer, "validation_loss", lambda val: next(losses))
    x = torch.rand(8, 1, 32, 32, dtype=torch.float16)
    state = trainer.fit(x, x)
    assert [h["learning_rate"] for h in state["history"]] == [1e-3, 1e-3, 1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4]
    assert [h["step"] for h in state["history"]] == [1, 2, 3, 4, 5, 6, 7]  # optimizer steps after each epoch
    assert state["epoch"] == 7 and state["best_epoch"] == 2 and state["stop_reason"].startswith("early stopping")
    assert trainer.optimizer.param_groups[0]["lr"] == 2.5e-4
    # the halved rate is part of the checkpoint, so --resume continues with it
    resumed = Trainer(tiny_card(), tmp_path / "m", trainer.config, device="cpu", log=lambda m: None)
    assert resumed.load_checkpoint() and resumed.optimizer.param_groups[0]["lr"] == 2.5e-4


def test_resume_continues_a_checkpoint_saved_on_another_device_type(tmp_path):
    """A GPU run's checkpoint resumes on a CPU-only machine (the noise generator's state cannot be moved)."""
    from safetensors.torch import load_file, save_file

    config = TrainConfig(epochs=1, steps_per_epoch=1, batch_size=4)
    trainer = Trainer(tiny_card(), tmp_path / "m", config, device="cpu", log=lambda m: None)
    x = torch.rand(8, 1, 32, 32, dtype=torch.float16)
    trainer.fit(x, x)
    path = tmp_path / "m" / "checkpoint" / "checkpoint.safetensors"
    tensors = load_file(str(path))
    tensors["rng.noise"] = torch.arange(16, dtype=torch.uint8)  # the size of a CUDA (Philox) generator state
    save_file(tensors, str(path))
    messages: list[str] = []
    resumed = Trainer(tiny_card(), tmp_path / "m", TrainConfig(epochs=2, steps_per_epoch=1, batch_size=4),
                      device="cpu", log=messages.append)
    assert resumed.load_checkpoint()
    assert any("reseeded on cpu" in m for m in messages)
    assert torch.equal(resumed.model.state_dict()["to_latent.weight"], trainer.model.state_dict()["to_latent.weight"])
    assert resumed.fit(x, x)["epoch"] == 2


def test_train_cli_resume_and_score(tmp_path, monkeypatch):
    import napari_uad.synth as synth

    real = synth.healthy_volume
    monkeypatch.setattr(synth, "healthy_volume", lambda s, c=None, t=1.0: real(s, c, 4.0))  # fewer slices
    out = tmp_path / "model"
    args = ["train", "--synthetic", "--out", str(out), "--n-volumes", "2", "--epochs", "2", "--steps-per-epoch",
            "2", "--input-size", "64", "--channels", "8,16", "--latent", "8", "--calibration-volumes", "1",
            "--device", "cpu", "--batch-size", "8", "--workers", "1"]
    assert cli.main(args) == 0
    card = json.loads((out / "card.json").read_text(encoding="utf-8"))
    assert card["training"]["epochs_run"] == 2
    calibration = card["calibration"]
    assert calibration["detection_map"] in calibration["maps"]
    for entry in calibration["maps"].values():
        q = np.asarray(entry["quantiles"])
        assert np.all(np.diff(q) >= 0)  # monotone
        assert entry["threshold_fpr_0.1pct"] >= entry["threshold_fpr_1pct"]
    # resume: two more epochs continue the same history
    assert cli.main(args[:7] + ["4"] + args[8:] + ["--resume"]) == 0
    card = json.loads((out / "card.json").read_text(encoding="utf-8"))
    assert card["training"]["epochs_run"] == 4
    assert [h["epoch"] for h in card["training"]["history"]] == [1, 2, 3, 4]
    first, second = card["training"]["commands"]  # both runs are on record
    assert "--resume" not in first and second.endswith("--resume")
    # the trained model scores a scan through the CLI with its calibrated threshold
    scan_dir = tmp_path / "synth"
    assert cli.main(["synth", "--out", str(scan_dir), "--n", "1", "--slice-thickness", "4"]) == 0
    scan = next((scan_dir / "scans").glob("*.nii.gz"))
    assert cli.main(["score", str(scan), "--out", str(tmp_path / "scored"), "--model", str(out), "--maps",
                     "residual", "--quiet"]) == 0
    # recalibration rewrites the card's calibration, keeps the weights, and the model still loads
    sha = card["weights"]["sha256"]
    assert cli.main(["calibrate", "--model", str(out), "--synthetic", "2", "--workers", "1", "--device", "cpu",
                     "--seed", "7"]) == 0
    card = json.loads((out / "card.json").read_text(encoding="utf-8"))
    assert card["calibration"]["n_healthy_volumes"] == 2 and "seeds from 100007" in card["calibration"]["validation_set"]
    assert card["calibration"]["validation_source"] == "synthetic"
    assert card["calibration"]["command"].startswith("napari-uad calibrate --model")
    assert card["weights"]["sha256"] == sha
    before = card["calibration"]
    # tables per contrast made by an earlier calibration: a site's recalibration does not keep them (its pooled
    # tables replace those they were made beside; one scan per contrast is too few for tables of its own)
    stale = {**card, "calibration": {**before, "combined": {**before["combined"], "tables_by_contrast": {
        "bright_fluid": {m: before["maps"][m]["quantiles"] for m in before["combined"]["components"]}},
        "dark_components_by_contrast": {"dark_fluid": ["-tissue", "E"]}, "dark_opening_mm": 3.0,  # a dark channel
        "tables_by_tissue": {"bright_fluid": {"E": {k: before["maps"]["E"]["quantiles"] for k in ("csf", "gm", "wm")}}}}}}
    (out / "card.json").write_text(json.dumps(stale), encoding="utf-8")
    assert cli.main(["calibrate", "--model", str(out), "--data", str(scan_dir / "scans")]) == 0
    card = json.loads((out / "card.json").read_text(encoding="utf-8"))
    assert card["calibration"]["validation_set"] == "1 held-out user scans (no anomalies)"
    assert card["calibration"]["validation_source"] == "site"
    # normal scans cannot choose the detection map or the minimum volume: the card's stay
    assert card["calibration"]["detection_map"] == before["detection_map"]
    assert card["calibration"]["min_volume_mm3"] == before["min_volume_mm3"]
    # ... and the threshold is the lowest that keeps these normal scans to <= 1 false-positive finding each
    point = card["calibration"]["operating_point"]
    assert point["min_volume_mm3"] == before["min_volume_mm3"] and point["table"]
    assert card["calibration"]["maps"][before["detection_map"]]["threshold"] == point["threshold"]
    # nor the combined map's components; its healthy table is new (from these scans)
    assert card["calibration"]["combined"]["components"] == before["combined"]["components"]
    assert "tables_by_contrast" not in card["calibration"]["combined"]
    assert "tables_by_tissue" not in card["calibration"]["combined"]  # nor tables by tissue (too few scans to make)
    assert card["calibration"]["maps"]["combined"]["quantiles"] != before["maps"]["combined"]["quantiles"]
    # the dark channel and its opening stay, its negated map tabled on these scans
    assert card["calibration"]["combined"]["dark_components_by_contrast"] == {"dark_fluid": ["-tissue", "E"]}
    assert card["calibration"]["combined"]["dark_opening_mm"] == 3.0
    assert "quantiles" in card["calibration"]["maps"]["-tissue"]
    # a detection map and combined components chosen elsewhere (benchmarks/real_anatomy.py) are honoured; the
    # combinations are still tried and recorded, and the operating point is searched for the given map
    assert cli.main(["calibrate", "--model", str(out), "--synthetic", "2", "--workers", "1", "--device", "cpu",
                     "--maps", "residual,E,z,tissue,combined", "--detection-map", "z",
                     "--combined", "tissue,residual"]) == 0
    forced = json.loads((out / "card.json").read_text(encoding="utf-8"))["calibration"]
    assert forced["detection_map"] == "z" and forced["operating_point"]["table"]
    assert forced["maps"]["z"]["threshold"] == forced["operating_point"]["threshold"]
    assert sorted(forced["combined"]["components"]) == ["residual", "tissue"]
    assert forced["combined"]["rule"].startswith("given by the caller") and len(forced["combined"]["trials"]) == 10
    # a map that is not calibrated cannot be the detection map or a component; normal scans cannot choose them
    assert cli.main(["calibrate", "--model", str(out), "--synthetic", "2", "--maps", "residual,z",
                     "--detection-map", "tissue"]) != 0
    assert cli.main(["calibrate", "--model", str(out), "--synthetic", "2", "--combined", "combined,z"]) != 0
    assert cli.main(["calibrate", "--model", str(out), "--synthetic", "2", "--combined-by-contrast", "t2=E"]) != 0
    assert cli.main(["calibrate", "--model", str(out), "--synthetic", "2", "--dark-by-contrast", "dark_fluid=-E"]) != 0
    assert cli.main(["calibrate", "--model", str(out), "--synthetic", "2", "--dark-opening-mm", "3"]) != 0  # no heads
    # the signed normalised error z can be negated (darker than the reconstruction); unsigned E cannot
    assert cli._components_by_contrast("dark_fluid=-tissue,-z", "--dark-by-contrast") == {
        "dark_fluid": ("-tissue", "-z")}
    assert cli._components_by_contrast("bright_fluid=nll", "--tables-by-tissue") == {"bright_fluid": ("nll",)}
    for spec in ("t2=nll", "bright_fluid=-tissue"):
        with pytest.raises(cli.CliError, match="--tables-by-tissue: "):
            cli._components_by_contrast(spec, "--tables-by-tissue")
    with pytest.raises(ValueError, match="unknown map"):
        cli._components_by_contrast("bright_fluid=volume", "--tables-by-tissue")
    assert cli.main(["calibrate", "--model", str(out), "--data", str(scan_dir / "scans"), "--tables-by-tissue",
                     "bright_fluid=nll"]) != 0  # needs synthetic heads
    assert cli._thickness_by_contrast("dark_fluid=4;bright_fluid=0") == {"dark_fluid": 4.0, "bright_fluid": 0.0}
    for spec in ("dark_fluid=thick", "dark_fluid=-1", "t2=4", "dark_fluid"):
        with pytest.raises(cli.CliError, match="--min-thickness-by-contrast: .* is not CONTRAST=MM"):
            cli._thickness_by_contrast(spec)
    assert cli._thickness_by_sequence("flair=3;t1=0") == {"flair": 3.0, "t1": 0.0}
    for spec in ("dark_fluid=3", "dwi=3", "flair=-3"):
        with pytest.raises(cli.CliError, match="--points-by-sequence: .* is not SEQUENCE=MM"):
            cli._thickness_by_sequence(spec)
    assert cli.main(["calibrate", "--model", str(out), "--data", str(scan_dir / "scans"), "--points-by-sequence",
                     "flair=3"]) != 0  # needs synthetic heads of known family
    assert cli.main(["calibrate", "--model", str(out), "--data", str(scan_dir / "scans"), "--detection-map", "z"]) != 0
    assert json.loads((out / "card.json").read_text(encoding="utf-8"))["calibration"] == forced  # untouched
    # a site's normal scans with toy anomalies put into copies of them: the card's detection map and components
    # stay, the operating point (threshold and minimum volume) is searched for recall; the scans are not changed
    scan_bytes = scan.read_bytes()
    assert cli.main(["calibrate", "--model", str(out), "--data", str(scan_dir / "scans"), "--toy-anomalies", "2",
                     "--maps", "residual,E,z,tissue,combined", "--device", "cpu"]) == 0
    site = json.loads((out / "card.json").read_text(encoding="utf-8"))["calibration"]
    assert site["detection_map"] == "z" and site["combined"]["components"] == forced["combined"]["components"]
    assert site["n_healthy_volumes"] == 1 and site["n_anomalous_volumes"] == 2
    assert "2 copies of them with one toy anomaly each" in site["validation_set"]
    assert site["validation_source"] == "site"
    assert site["operating_point"]["validation"]["object_recall"] is not None
    assert {row["min_volume_mm3"] for row in site["operating_point"]["table"]} == set(MIN_VOLUME_CANDIDATES_MM3)
    assert scan.read_bytes() == scan_bytes
    assert cli.main(["calibrate", "--model", str(out), "--synthetic", "2", "--toy-anomalies", "1"]) != 0
    assert cli.main(["calibrate", "--model", str(out), "--data", str(scan_dir / "scans"), "--toy-anomalies", "1",
                     "--maps", "residual"]) != 0  # the card's detection map (z) would not be calibrated
    load_model(out)


def test_calibrate_reports_bad_input_in_one_line(tmp_path, capsys):
    assert cli.main(["calibrate", "--model", str(tmp_path / "nope"), "--synthetic", "1"]) != 0
    assert cli.main(["calibrate", "--model", "cevae-brain-mr", "--data", str(tmp_path / "*.nii.gz")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert "nope" in err[0] and "no scans found" in err[-1] and "Traceback" not in "".join(err)


def test_resume_without_checkpoint_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no checkpoint"):
        train_model(tiny_card(), tmp_path, TrainConfig(), synthetic_volumes=2, resume=True)


def test_calibration_helpers():
    values = np.random.default_rng(0).normal(size=10000)
    table = quantile_table(values, np.array([0.0, 0.5, 0.99, 1.0]))
    assert np.all(np.diff(table) >= 0)
    q = to_quantile(np.array([-100.0, table[1], 100.0]), {"quantiles": table, "levels": [0.0, 0.5, 0.99, 1.0]})
    np.testing.assert_allclose(q, [0.0, 0.5, 1.0])
    scores = np.array([0.9, 0.8, 0.7, 0.2, 0.1])
    truth = np.array([1, 1, 0, 0, 0], bool)
    thr, dice = best_dice_threshold(scores, truth)
    assert thr == 0.8 and dice == 1.0
    thr, dice = best_dice_threshold(np.array([0.5, 0.5, 0.1]), np.array([1, 0, 0], bool))
    assert thr == 0.5 and dice == pytest.approx(2 / 3)  # ties cannot be split


def test_validation_rates_bound_a_setting_from_the_permissive_side():
    """The slider's setting is read against the card's operating-point table: the highest tabulated threshold not
    above it, with the largest tabulated minimum volume not above the reviewer's; nothing for another map or a
    setting more permissive than every row."""
    from napari_uad.calibration import validation_rates

    table = [{"threshold": t, "min_volume_mm3": v, "fp_objects_per_normal_scan": fp, "object_recall": rec}
             for t, v, fp, rec in [(2.0, 0.0, 9.0, 0.5), (2.0, 50.0, 2.0, 0.4), (3.0, 0.0, 1.5, 0.3),
                                   (3.0, 50.0, 0.4, 0.2), (4.0, 50.0, 0.0, 0.1)]]
    cal = {"detection_map": "combined", "operating_point": {"table": table}}
    assert validation_rates(cal, "combined", 3.0, 50.0)["fp_objects_per_normal_scan"] == 0.4  # the card's own row
    assert validation_rates(cal, "combined", 3.0, 50.0)["table_min_thickness_mm"] == 0.0  # counted without one
    # a point searched with a minimum thickness counted its table with it; one added afterwards says so
    thick = {**cal, "operating_point": {"table": table, "min_thickness_mm": 3.0}}
    assert validation_rates(thick, "combined", 3.0, 50.0)["table_min_thickness_mm"] == 3.0
    thick["operating_point"]["table_min_thickness_mm"] = 0.0
    assert validation_rates(thick, "combined", 3.0, 50.0)["table_min_thickness_mm"] == 0.0
    assert validation_rates(cal, "combined", 3.7, 60.0)["threshold"] == 3.0  # between rows: the lower threshold
    assert validation_rates(cal, "combined", 3.7, 25.0)["min_volume_mm3"] == 0.0  # and the smaller volume
    assert validation_rates(cal, "combined", 3.0 * (1 - 1e-9), 50.0)["threshold"] == 3.0  # float round trip
    assert validation_rates(cal, "combined", 1.5, 50.0) is None  # more permissive than anything tabulated
    assert validation_rates(cal, "nll", 3.0, 50.0) is None  # the table is the detection map's
    assert validation_rates({"detection_map": "combined"}, "combined", 3.0, 50.0) is None  # older card
    # the reviewer is told what the validation volumes were
    assert validation_rates(cal, "combined", 3.0, 50.0)["source"] == "validation scans"
    site = {**cal, "validation_set": "10 held-out user scans + 10 copies of them with one toy anomaly each"}
    assert validation_rates(site, "combined", 3.0, 50.0)["source"] == "your site's normal scans"
    synthetic = {**cal, "validation_set": "16 healthy + 16 toy-anomaly synthetic volumes, seeds from 100000"}
    assert validation_rates(synthetic, "combined", 3.0, 50.0)["source"] == "synthetic validation scans"
    # the card's structured field decides (the free text above is how cards before it are read)
    recorded = {**synthetic, "validation_source": "site"}
    assert validation_rates(recorded, "combined", 3.0, 50.0)["source"] == "your site's normal scans"


def test_train_refuses_unusable_scans_with_a_clear_message(tmp_path, capsys):
    data = tmp_path / "scans"
    data.mkdir()
    (data / "broken.nii.gz").write_bytes(b"not a scan")
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), str(data / "empty.nii.gz"))
    assert cli.main(["train", "--data", str(data), "--out", str(tmp_path / "m"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "skipping" in err and "broken.nii.gz" in err and "is constant" in err
    assert "need at least 2 usable scans" in err and "Traceback" not in err


def test_loss_region_and_beta_nll_weighting():
    from napari_uad.model import CeVAE, gaussian_nll
    from napari_uad.train import loss_region, slice_losses

    torch.manual_seed(0)
    model = CeVAE(ArchitectureConfig(input_size=32, channels=(8, 16), latent=8))
    x = torch.full((2, 1, 32, 32), -3.0)
    x[:, :, 10:20, 10:20] = 0.5
    region = loss_region(x, background=-3.0, dilate=2)
    assert region[0, 0, 8:22, 8:22].all() and region.sum() == 2 * 14 * 14
    plain = slice_losses(model, x, None, 0.0, sample=False)
    mu_x, log_var_x, _, _ = model(x, sample=False)
    u, e = gaussian_nll(x, mu_x, log_var_x)
    torch.testing.assert_close(plain["rec"], (u + e).sum(dim=(1, 2, 3)))
    masked = slice_losses(model, x, None, 0.0, sample=False, region=region)
    torch.testing.assert_close(masked["rec"], ((u + e) * region).sum(dim=(1, 2, 3)))
    beta = slice_losses(model, x, None, 0.0, sample=False, beta=0.5)
    torch.testing.assert_close(beta["rec"], ((u + e) * torch.exp(0.5 * log_var_x)).sum(dim=(1, 2, 3)))


def test_init_from_fine_tuning_lowers_the_validation_loss(tmp_path, monkeypatch):
    """train --init-from MODEL starts from MODEL's weights (its architecture and preprocessing kept) and
    fine-tuning lowers the validation loss it started from; the card records where it came from."""
    import napari_uad.synth as synth

    real = synth.healthy_volume
    monkeypatch.setattr(synth, "healthy_volume", lambda s, c=None, t=1.0: real(s, c, 4.0))  # fewer slices
    base = tmp_path / "base"
    common = ["--n-volumes", "2", "--steps-per-epoch", "4", "--calibration-volumes", "0", "--device", "cpu",
              "--batch-size", "8", "--workers", "1", "--learning-rate", "2e-3"]
    assert cli.main(["train", "--synthetic", "--out", str(base), "--epochs", "2", "--input-size", "64",
                     "--channels", "8,16", "--latent", "8", *common]) == 0
    base_card = json.loads((base / "card.json").read_text(encoding="utf-8"))
    base_card["calibration"].update(detection_map="nll", min_volume_mm3=50.0, edge_margin_mm=3.0)
    (base / "card.json").write_text(json.dumps(base_card), encoding="utf-8")
    tuned = tmp_path / "tuned"
    assert cli.main(["train", "--synthetic", "--out", str(tuned), "--epochs", "3", "--init-from", str(base),
                     "--seed", "5", *common]) == 0
    base_card = json.loads((base / "card.json").read_text(encoding="utf-8"))
    card = json.loads((tuned / "card.json").read_text(encoding="utf-8"))
    assert card["architecture"] == base_card["architecture"]  # kept although the defaults differ
    assert card["training"]["init_from"]["sha256"] == base_card["weights"]["sha256"]
    assert card["training"]["best_val_loss_nats_per_slice"] < card["training"]["initial_val_loss_nats_per_slice"]
    # the source's detection map, minimum volume and edge margin come along (normal scans cannot choose them)
    assert {k: card["calibration"][k] for k in ("detection_map", "min_volume_mm3", "edge_margin_mm")} == {
        "detection_map": "nll", "min_volume_mm3": 50.0, "edge_margin_mm": 3.0}


class _MapScorer:
    """Stands in for a Scorer in calibration: maps are given, no model involved."""

    def __init__(self, make, classes=None):
        self.card = ModelCard(name="m", version="1", modality="MR")
        self.make = make
        self.classes = classes  # volume -> the template's tissue classes (int8), where the test has them

    def score(self, volume, maps, mask=None, postprocess=True, tissue_classes=False):
        """The given maps on the given brain mask (default: everything), of the contrast the volume says; the
        tissue classes where given and asked for (as the Scorer keeps them)."""
        from napari_uad.scoring import ScoreResult

        out = self.make(volume)
        classes = self.classes(volume) if self.classes is not None and tissue_classes else None
        return ScoreResult(maps={m: out[m] for m in maps}, mask=np.ones(volume.shape, bool) if mask is None else mask,
                           slice_scores=np.zeros(volume.shape[2]), slice_kl=np.zeros(volume.shape[2]),
                           slice_rec=np.zeros(volume.shape[2]), volume_score=1.0, device="cpu", batch_size=1,
                           contrast=volume.metadata.get("contrast"), tissue_classes=classes)


def _coded_volume(shape, seed: int, sick: bool):
    """A blank volume whose voxels (0,0,0) and (1,1,1) carry a noise seed and whether it is sick (for _MapScorer)."""
    from napari_uad.io import Volume

    data = np.zeros(shape, np.float32)
    data[0, 0, 0], data[1, 1, 1] = seed + 1, float(sick)
    return Volume.from_array(data, np.eye(4))


def _coded_validation(shape, lesion):
    """4 healthy and 4 sick coded volumes (the sick ones with ``lesion`` as their mask)."""
    return ([_coded_volume(shape, s, False) for s in range(4)],
            [(_coded_volume(shape, 100 + s, True), lesion.astype(np.uint8)) for s in range(4)])


def _coded_of_contrast(shape, seed: int, sick: bool, contrast: str):
    """A coded volume (``_coded_volume``) whose recognised contrast is ``contrast`` (read by _MapScorer)."""
    volume = _coded_volume(shape, seed, sick)
    volume.metadata["contrast"] = contrast
    return volume


def _validation_by_contrast(shape, lesion, plan, stride: int = 10):
    """Healthy and sick coded volumes, ``n`` of each ``contrast`` for each (contrast, n) of ``plan``; seeds
    ``stride * i + s`` (healthy) and ``100 + stride * i + s`` (sick, ``lesion`` as their mask)."""
    healthy = [_coded_of_contrast(shape, stride * i + s, False, c) for i, (c, n) in enumerate(plan) for s in range(n)]
    anomalous = [(_coded_of_contrast(shape, 100 + stride * i + s, True, c), lesion.astype(np.uint8))
                 for i, (c, n) in enumerate(plan) for s in range(n)]
    return healthy, anomalous


def _cube_nll(volume, lesion, signal: float):
    """(rng, nll) of a coded volume: its seeded generator and a unit-noise map with ``signal`` added in the cube
    ``lesion`` if the volume is sick."""
    rng = np.random.default_rng(int(volume.data[0, 0, 0]))
    return rng, rng.normal(size=lesion.shape) + signal * (lesion & (volume.data[1, 1, 1] > 0))


def _cube_lesion_maps(signal: float, shape=(28, 28, 28)):
    """(shape, lesion, make): a 7^3 cube lesion and, for _MapScorer, maps of unit noise ("nll" with ``signal``
    added in the cube of sick volumes, "residual" noise only)."""
    lesion = np.zeros(shape, bool)
    lesion[10:17, 10:17, 10:17] = True

    def make(volume):
        rng, nll = _cube_nll(volume, lesion, signal)
        return {"nll": nll.astype(np.float32), "residual": rng.normal(size=shape).astype(np.float32)}

    return shape, lesion, make


def test_calibration_chooses_the_combined_maps_components_on_validation():
    """Two maps that each see a lesion through independent noise: their combination (mean healthy-quantile
    surprise) separates lesion from healthy better than either, so calibration keeps it as the detection map;
    a map that only adds noise is not among its components."""
    from napari_uad.calibration import calibrate
    from napari_uad.combined import combine

    shape = (24, 24, 24)
    lesion = np.zeros(shape, bool)
    lesion[8:14, 8:14, 8:14] = True

    def make(volume):
        rng = np.random.default_rng(int(volume.data[0, 0, 0]))
        truth = volume.data[1, 1, 1] > 0
        signal = 1.5 * (lesion & truth)
        return {"residual": (rng.normal(size=shape) + signal).astype(np.float32),
                "nll": (rng.normal(size=shape) + signal).astype(np.float32),
                "E": rng.normal(size=shape).astype(np.float32)}

    healthy, anomalous = _coded_validation(shape, lesion)
    cal = calibrate(_MapScorer(make), healthy, anomalous, maps=("residual", "E", "nll", "combined"))
    assert set(cal["combined"]["components"]) >= {"residual", "nll"} and len(cal["combined"]["trials"]) == 4
    dice = {m: cal["maps"][m]["best_dice_validation"] for m in cal["maps"]}
    assert dice["combined"] > max(dice["residual"], dice["nll"]) and cal["detection_map"] == "combined"
    # the combined map's own healthy table: about 1 % of healthy voxels above its 1 % threshold
    healthy_maps = make(healthy[0])
    values = combine(healthy_maps, cal, cal["combined"]["components"])
    assert 0.003 < (values > cal["maps"]["combined"]["threshold_fpr_1pct"]).mean() < 0.03


def test_calibration_operating_point_keeps_normal_scans_quiet():
    """The Dice threshold leaves many noise findings on normal volumes; the calibrated operating point
    (threshold and minimum volume) keeps them to <= 1 per normal volume while still finding every lesion, as a
    recount with the findings code on fresh normal volumes confirms. Findings count inside the brain less the
    card's edge margin; a bound no candidate meets is reported as not met."""
    from napari_uad.calibration import calibrate
    from napari_uad.findings import label_components

    shape, lesion, make = _cube_lesion_maps(4.0)

    healthy, anomalous = _coded_validation(shape, lesion)
    cal = calibrate(_MapScorer(make), healthy, anomalous, maps=("nll", "residual"), edge_margin_mm=1.0)
    point = cal["operating_point"]
    assert cal["detection_map"] == "nll" and point["fp_target_met"] and point["edge_margin_mm"] == 1.0
    assert point["validation"]["object_recall"] == 1.0 and point["validation"]["fp_objects_per_normal_scan"] <= 1
    at_dice = [r for r in point["table"] if r["threshold"] == point["threshold_best_dice"] and r["min_volume_mm3"] == 0]
    assert at_dice[0]["fp_objects_per_normal_scan"] > 1  # the search had something to do
    assert cal["maps"]["nll"]["threshold"] == point["threshold"] and cal["min_volume_mm3"] == point["min_volume_mm3"]
    fresh = [make(_coded_volume(shape, s, False))["nll"] for s in range(50, 58)]
    counts = [label_components(m, point["threshold"], 1.0, point["min_volume_mm3"])[1] for m in fresh]
    assert np.mean(counts) <= 1.5  # held-out normal volumes stay about as quiet
    # a detection map chosen elsewhere gets its operating point here; one that is not calibrated is refused
    given = calibrate(_MapScorer(make), healthy, anomalous, maps=("nll", "residual"), detection_map="residual")
    assert given["detection_map"] == "residual" and given["operating_point"]["table"]
    with pytest.raises(ValueError, match="detection map 'z' is not among the calibrated maps"):
        calibrate(_MapScorer(make), healthy, anomalous, maps=("nll", "residual"), detection_map="z")
    # a margin wider than the volume leaves nowhere to find anything: no lesion found, nothing to report
    blind = calibrate(_MapScorer(make), healthy, anomalous, maps=("nll", "residual"), edge_margin_mm=50.0)
    assert blind["operating_point"]["validation"]["object_recall"] == 0.0
    # a bound nothing meets is said so, and the fewest false positives are kept
    strict = calibrate(_MapScorer(make), healthy, anomalous, maps=("nll", "residual"),
                       max_fp_per_normal_scan=-1.0)["operating_point"]
    assert not strict["fp_target_met"]
    assert strict["validation"]["fp_objects_per_normal_scan"] == min(r["fp_objects_per_normal_scan"]
                                                                     for r in strict["table"])


def test_each_contrast_gets_its_own_operating_point_where_its_normal_scans_need_one():
    """Normal bright-fluid (T2) volumes carry bright structures in the detection map that dark-fluid (T1) ones
    lack (as CSF is on real T2): the dark-fluid operating point would flood them with false findings.
    Calibration gives each recognised contrast with >= 8 healthy and 8 anomalous volumes its own point by the
    same rule (one with fewer keeps the pooled one), and a
    scan of that contrast gets it from the card: fresh normal bright-fluid volumes stay quiet at their own
    threshold and not at the dark-fluid one."""
    from napari_uad.calibration import calibrate, validation_rates
    from napari_uad.findings import label_components
    from napari_uad.model_card import ModelCard

    dark, bright = "dark_fluid", "bright_fluid"
    shape, lesion, _ = _cube_lesion_maps(5.0)

    def make(volume):
        rng, nll = _cube_nll(volume, lesion, 5.0)
        if volume.metadata["contrast"] == bright:  # three bright 5^3 "CSF spaces" away from the lesion
            for _ in range(3):
                corner = rng.integers(0, 23, 3)
                while np.all((corner > 4) & (corner < 17)):
                    corner = rng.integers(0, 23, 3)
                nll[tuple(slice(c, c + 5) for c in corner)] += 3.0
        return {"nll": nll.astype(np.float32)}

    def coded(seed, sick, contrast):
        return _coded_of_contrast(shape, seed, sick, contrast)

    healthy, anomalous = _validation_by_contrast(shape, lesion, [(dark, 8), (bright, 8), ("other", 6)])
    cal = calibrate(_MapScorer(make), healthy, anomalous, maps=("nll",))
    points = cal["operating_point"]["by_contrast"]
    assert set(points) == {dark, bright}  # "other": 6 + 6 volumes, too few for its own point
    assert points[bright]["n_healthy_volumes"] == 8 and points[bright]["n_anomalous_volumes"] == 8
    dark_point, bright_point = ((p["threshold"], p["min_volume_mm3"]) for p in (points[dark], points[bright]))
    assert bright_point != dark_point and all(a >= b for a, b in zip(bright_point, dark_point))  # the stricter one
    for point in points.values():
        assert point["fp_target_met"] and point["validation"]["object_recall"] == 1.0
    card = ModelCard(name="m", version="1", calibration=cal)
    assert card.default_threshold(contrast=bright) == points[bright]["threshold"]
    assert card.operating_point(bright) == (points[bright]["threshold"], points[bright]["min_volume_mm3"])
    assert set(card.contrast_points) == {dark, bright}
    assert card.default_threshold(contrast="other") == card.default_threshold() == cal["operating_point"]["threshold"]
    assert card.default_threshold("residual", contrast=bright) is None  # only the detection map has points
    bright_normals = [make(coded(500 + s, False, bright))["nll"] for s in range(6)]

    def false_findings(threshold, min_volume):
        return np.mean([label_components(m, threshold, 1.0, min_volume)[1] for m in bright_normals])

    assert false_findings(points[bright]["threshold"], points[bright]["min_volume_mm3"]) <= 1.5
    assert false_findings(points[dark]["threshold"], points[dark]["min_volume_mm3"]) > 2
    rates = validation_rates(cal, "nll", *card.operating_point(bright), bright)
    assert rates["contrast"] == bright and rates["fp_objects_per_normal_scan"] <= 1.0
    assert "contrast" not in validation_rates(cal, "nll", points[bright]["threshold"], 400.0)
    # a minimum thickness given for bright fluid is what its point counts findings with, and the card gives it to
    # scans of that contrast only
    thick = calibrate(_MapScorer(make), healthy, anomalous, maps=("nll",), min_thickness_by_contrast={bright: 3.0})
    thick_points = thick["operating_point"]["by_contrast"]
    assert thick_points[bright]["min_thickness_mm"] == 3.0 and "min_thickness_mm" not in thick_points[dark]
    thick_card = ModelCard(name="m", version="1", calibration=thick)
    assert (thick_card.default_min_thickness(bright), thick_card.default_min_thickness(dark),
            thick_card.default_min_thickness()) == (3.0, 0.0, 0.0)


def test_a_declared_sequence_gets_a_point_of_its_own_searched_on_its_own_heads():
    """Dark-fluid validation volumes of two sequences (strata): T1 ones whose normal heads are quiet, FLAIR ones
    whose normal heads have bright "CSF" blocks. Pooled, the dark-fluid point must rise above the blocks; with
    points by sequence, a scan declared T1 gets a lower point, searched on the T1 volumes alone (every lesion found,
    fresh T1 normals quiet), one declared FLAIR a point at least as strict as the pooled one, and both the dark-fluid
    combined map's settings (components, tables), so their map is their contrast's. A FLAIR head read as bright
    fluid is not the FLAIR point's (a declaration its fluid contradicts is not believed). A site recalibration
    keeps no settings for declared sequences."""
    from napari_uad.calibration import calibrate
    from napari_uad.combined import combine
    from napari_uad.findings import label_components
    from napari_uad.model_card import settings_key
    from napari_uad.train import _contrast_settings_only

    dark, bright = "dark_fluid", "bright_fluid"
    shape, lesion, _ = _cube_lesion_maps(5.0)

    def make(volume):
        rng, nll = _cube_nll(volume, lesion, 5.0)
        if volume.metadata["stratum"] == "flair":  # three bright 5^3 blocks away from the lesion
            for _ in range(3):
                corner = rng.integers(0, 23, 3)
                while np.all((corner > 4) & (corner < 17)):
                    corner = rng.integers(0, 23, 3)
                nll[tuple(slice(c, c + 5) for c in corner)] += 3.0
        return {"nll": nll.astype(np.float32), "residual": rng.normal(size=shape).astype(np.float32)}

    def coded(seed, sick, contrast, stratum):
        volume = _coded_of_contrast(shape, seed, sick, contrast)
        volume.metadata["stratum"] = stratum
        return volume

    plan = [(dark, "t1", 8), (dark, "flair", 8), (bright, "flair", 2)]
    healthy = [coded(10 * i + s, False, c, f) for i, (c, f, n) in enumerate(plan) for s in range(n)]
    anomalous = [(coded(100 + 10 * i + s, True, c, f), lesion.astype(np.uint8))
                 for i, (c, f, n) in enumerate(plan) for s in range(n)]
    maps = ("nll", "residual", "combined")
    options = dict(maps=maps, detection_map="combined", combined_components=("nll", "residual"),
                   tables_by_contrast=True, components_by_contrast={dark: ("nll",)})
    pooled = calibrate(_MapScorer(make), healthy, anomalous, **options)
    cal = calibrate(_MapScorer(make), healthy, anomalous, points_by_sequence={"t1": 0.0, "flair": 3.0}, **options)
    points = cal["operating_point"]["by_contrast"]
    assert points[dark] == pooled["operating_point"]["by_contrast"][dark]  # scans declaring nothing: as before
    assert points["t1"]["n_healthy_volumes"] == 8 and points["flair"]["n_anomalous_volumes"] == 8  # not the bright
    assert points["flair"]["min_thickness_mm"] == 3.0 and "min_thickness_mm" not in points["t1"]
    assert points["t1"]["threshold"] < points[dark]["threshold"] <= points["flair"]["threshold"]
    assert points["t1"]["fp_target_met"] and points["t1"]["validation"]["object_recall"] == 1.0
    spec = cal["combined"]
    assert spec["components_by_contrast"]["t1"] == spec["components_by_contrast"]["flair"] == ["nll"]
    assert spec["tables_by_contrast"]["flair"] == spec["tables_by_contrast"][dark]
    assert (settings_key(cal, dark, "t1"), settings_key(cal, dark, "flair"), settings_key(cal, dark, None),
            settings_key(cal, bright, "flair")) == ("t1", "flair", dark, bright)
    card = ModelCard(name="m", version="1", calibration=cal)
    fresh_t1 = [coded(500 + s, False, dark, "t1") for s in range(6)]
    threshold, min_volume = card.operating_point("t1")
    quiet = [label_components(combine(make(v), cal, ("nll",), "t1"), threshold, 1.0, min_volume)[1] for v in fresh_t1]
    assert np.mean(quiet) <= 1.0
    site = _contrast_settings_only(spec)
    assert set(site["components_by_contrast"]) == {dark} and not {"t1", "flair"} & set(site["tables_by_contrast"])
    with pytest.raises(ValueError, match="not a sequence"):
        calibrate(_MapScorer(make), healthy, anomalous, points_by_sequence={"dwi": 0.0}, **options)


def test_the_operating_point_counts_findings_with_the_minimum_thickness_given():
    """Normal volumes whose detection map has two bright sheets two voxels thick (300-450 voxels, as CSF along a
    sulcus can be) and sick ones with a 5^3 cube lesion (125 voxels): no minimum volume separates them, so without a
    minimum thickness the search cannot find the lesions within the false-finding bound; with 3 mm (the sheet
    measures 2 mm, the cube 6 mm) every lesion is found and normal volumes stay quiet, and the card records it."""
    from napari_uad.calibration import calibrate

    shape = (24, 24, 24)
    lesion = np.zeros(shape, bool)
    lesion[12:17, 12:17, 12:17] = True

    def make(volume):
        rng = np.random.default_rng(int(volume.data[0, 0, 0]))
        nll = 0.1 * rng.normal(size=shape)
        if volume.data[1, 1, 1] > 0:
            nll[lesion] += 6.0
        else:
            nll[5:7, 4:19, 4:19] += 6.0
            nll[9:19, 20:22, 4:19] += 6.0
        return {"nll": nll.astype(np.float32)}

    healthy = [_coded_volume(shape, s, False) for s in range(6)]
    anomalous = [(_coded_volume(shape, 100 + s, True), lesion.astype(np.uint8)) for s in range(6)]
    plain = calibrate(_MapScorer(make), healthy, anomalous, maps=("nll",), detection_map="nll")
    thick = calibrate(_MapScorer(make), healthy, anomalous, maps=("nll",), detection_map="nll", min_thickness_mm=3.0)
    assert not (plain["operating_point"]["fp_target_met"] and plain["operating_point"]["validation"]["object_recall"] == 1)
    assert thick["operating_point"]["fp_target_met"] and thick["operating_point"]["validation"]["object_recall"] == 1.0
    assert thick["operating_point"]["validation"]["fp_objects_per_normal_scan"] == 0.0
    assert thick["min_thickness_mm"] == 3.0 and "min_thickness_mm" not in plain


def test_a_contrasts_operating_point_is_searched_on_its_own_scale():
    """A contrast whose detection map runs on a smaller scale (here: bright-fluid volumes, lesion and noise at a
    third of the dark-fluid ones', as a combined map of other components can be) has its point searched from its
    own Dice threshold down there, not from the pooled one, which lies above all its lesions: every bright-fluid
    lesion is found and fresh bright-fluid normals stay quiet at that point."""
    from napari_uad.calibration import calibrate
    from napari_uad.findings import label_components

    dark, bright = "dark_fluid", "bright_fluid"
    shape, lesion, _ = _cube_lesion_maps(5.0)

    def make(volume):
        _, nll = _cube_nll(volume, lesion, 5.0)
        scale = 0.3 if volume.metadata["contrast"] == bright else 1.0
        return {"nll": (scale * nll).astype(np.float32)}

    healthy, anomalous = _validation_by_contrast(shape, lesion, [(dark, 8), (bright, 8)])
    cal = calibrate(_MapScorer(make), healthy, anomalous, maps=("nll",))
    pooled, own = cal["operating_point"], cal["operating_point"]["by_contrast"][bright]
    assert own["threshold_best_dice"] <= own["threshold"] < 0.3 * 5.0 < pooled["threshold_best_dice"]
    assert own["fp_target_met"] and own["validation"]["object_recall"] == 1.0
    assert min(r["threshold"] for r in own["table"]) == own["threshold_best_dice"]
    sick = make(_coded_of_contrast(shape, 700, True, bright))["nll"]
    labels, _ = label_components(sick, own["threshold"], 1.0, own["min_volume_mm3"])
    assert labels[lesion].any()  # found at its contrast's point
    normals = [make(_coded_of_contrast(shape, 800 + s, False, bright))["nll"] for s in range(6)]
    assert np.mean([label_components(m, own["threshold"], 1.0, own["min_volume_mm3"])[1] for m in normals]) <= 1.5


def test_combined_map_tables_per_contrast_measure_a_scan_against_normals_of_its_own_contrast():
    """With ``tables_by_contrast`` each component of the combined map is measured against the healthy volumes of
    the scan's own recognised contrast (8 or more of them; a rarer contrast uses the pooled tables): a bright
    "CSF space" that every healthy bright-fluid volume has is no longer surprising there, so the operating point
    need not be raised to keep normal bright-fluid volumes quiet (smaller findings can be reported), and at that
    point it is the tables that keep them quiet. The tables are the quantiles of that contrast's healthy voxels
    (hand computation); without the option nothing changes."""
    from napari_uad.calibration import QUANTILE_LEVELS, calibrate, quantile_table
    from napari_uad.combined import combine, component_table, surprise
    from napari_uad.findings import label_components

    dark, bright = "dark_fluid", "bright_fluid"
    shape = (28, 28, 28)
    lesion = np.zeros(shape, bool)
    lesion[10:17, 10:17, 10:17] = True
    fluid = np.zeros(shape, bool)
    fluid[1:9, 18:27, 1:9] = True  # where a bright-fluid head's CSF is, in every one of them

    def make(volume):
        rng = np.random.default_rng(int(volume.data[0, 0, 0]))
        sick = lesion & (volume.data[1, 1, 1] > 0)
        maps = {m: rng.normal(size=shape) + 3.0 * sick for m in ("nll", "residual")}
        if volume.metadata["contrast"] == bright:
            maps["nll"] += 6.0 * fluid
        return {m: v.astype(np.float32) for m, v in maps.items()}

    def coded(seed, sick, contrast):
        return _coded_of_contrast(shape, seed, sick, contrast)

    healthy, anomalous = _validation_by_contrast(shape, lesion, [(dark, 16), (bright, 8), ("other", 3)], stride=20)
    maps = ("residual", "nll", "combined")
    pooled = calibrate(_MapScorer(make), healthy, anomalous, maps=maps, combined_components=("nll", "residual"))
    own = calibrate(_MapScorer(make), healthy, anomalous, maps=maps, combined_components=("nll", "residual"),
                    tables_by_contrast=True)
    assert "tables_by_contrast" not in pooled["combined"]
    tables = own["combined"]["tables_by_contrast"]
    assert set(tables) == {dark, bright} and set(tables[bright]) == {"nll", "residual"}
    bright_healthy = np.concatenate([make(v)["nll"].ravel() for v in healthy if v.metadata["contrast"] == bright])
    np.testing.assert_allclose(tables[bright]["nll"], quantile_table(bright_healthy, QUANTILE_LEVELS))
    assert component_table(own, "nll", "other")["quantiles"] == own["maps"]["nll"]["quantiles"]
    normal = make(coded(900, False, bright))
    expected = (surprise(normal["nll"], {"quantiles": tables[bright]["nll"], "levels": own["levels"]})
                + surprise(normal["residual"], {"quantiles": tables[bright]["residual"], "levels": own["levels"]})) / 2
    np.testing.assert_allclose(combine(normal, own, ("nll", "residual"), bright), expected, rtol=1e-6)
    assert own["maps"]["nll"] == pooled["maps"]["nll"]  # the single maps' own tables are the pooled ones

    def findings(cal, volumes, point):
        return [label_components(combine(make(v), cal, ("nll", "residual"), v.metadata["contrast"]), *point[:1],
                                 1.0, point[1])[1] for v in volumes]

    points = {name: (c["operating_point"]["threshold"], c["operating_point"]["min_volume_mm3"])
              for name, c in (("pooled", pooled), ("own", own))}
    assert points["own"][1] < points["pooled"][1]
    fresh_bright = [coded(700 + s, False, bright) for s in range(6)]
    quiet = np.mean(findings(own, fresh_bright, points["own"]))
    assert quiet <= 0.5 < np.mean(findings(pooled, fresh_bright, points["own"]))  # pooled tables there: the fluid
    for cal in (own, pooled):  # the lesions found at each calibration's own point
        assert min(findings(cal, [coded(800 + s, True, bright) for s in range(4)], points["own" if cal is own
                                                                                         else "pooled"])) >= 1


def test_combined_map_components_per_contrast_replace_a_map_that_fails_on_that_contrast():
    """Components given per recognised contrast: a bright-fluid scan's combined map is made of its own components
    (hand computation: the surprise of the one map that sees its lesions), other scans keep the pooled ones; the
    card records them and `combined_components` reads them; unknown maps are refused."""
    from napari_uad.calibration import calibrate
    from napari_uad.combined import all_components, combine, combined_components, surprise

    dark, bright = "dark_fluid", "bright_fluid"
    shape = (28, 28, 28)
    lesion = np.zeros(shape, bool)
    lesion[10:17, 10:17, 10:17] = True
    fluid = np.zeros(shape, bool)
    fluid[1:9, 18:27, 1:9] = True

    def make(volume):
        rng = np.random.default_rng(int(volume.data[0, 0, 0]))
        sick = lesion & (volume.data[1, 1, 1] > 0)
        maps = {m: rng.normal(size=shape) + 3.0 * sick for m in ("nll", "residual")}
        if volume.metadata["contrast"] == bright:  # nll fails there: bright fluid, lesion unseen
            maps["nll"] = rng.normal(size=shape) + 4.0 * fluid
        return {m: v.astype(np.float32) for m, v in maps.items()}

    healthy, anomalous = _validation_by_contrast(shape, lesion, [(dark, 8), (bright, 8)], stride=20)
    cal = calibrate(_MapScorer(make), healthy, anomalous, maps=("residual", "nll", "combined"),
                    combined_components=("nll", "residual"), components_by_contrast={bright: ("residual",)})
    assert cal["combined"]["components_by_contrast"] == {bright: ["residual"]}
    assert combined_components(cal, bright) == ("residual",) and combined_components(cal, dark) == ("nll", "residual")
    assert combined_components(cal) == ("nll", "residual") and set(all_components(cal)) == {"nll", "residual"}
    volume = _coded_of_contrast(shape, 900, True, bright)
    maps = make(volume)
    expected = surprise(maps["residual"], {"quantiles": cal["maps"]["residual"]["quantiles"], "levels": cal["levels"]})
    np.testing.assert_allclose(combine(maps, cal, combined_components(cal, bright), bright), expected)
    point = cal["operating_point"]
    found = combine(maps, cal, combined_components(cal, bright), bright) >= point["threshold"]
    pooled = combine(maps, cal, ("nll", "residual"), bright) >= point["threshold"]  # what the pooled ones would do
    assert (found & lesion).sum() > 0.5 * lesion.sum() > (pooled & lesion).sum()
    assert (found & fluid).mean() < (pooled & fluid).mean()
    with pytest.raises(ValueError, match="not among the calibrated maps"):
        calibrate(_MapScorer(make), healthy, anomalous, maps=("residual", "nll", "combined"),
                  combined_components=("nll", "residual"), components_by_contrast={bright: ("tissue",)})


def test_dark_channel_finds_a_lesion_darker_than_its_tissue_on_its_contrast_only():
    """A dark channel (``-tissue``: the signed tissue map negated, with E): a lesion darker than its tissue is found
    on a dark-fluid scan, whose combined map is the larger of the two channels' mean surprise (hand computation
    against the card's tables); the bright channel alone misses it; a bright-fluid scan keeps its bright channel;
    the card records the channel and the negated map's own table; a negated unsigned map is refused."""
    from napari_uad.calibration import calibrate
    from napari_uad.combined import all_components, combine, combined_components, dark_components, surprise

    dark, bright = "dark_fluid", "bright_fluid"
    shape = (28, 28, 28)
    lesion = np.zeros(shape, bool)
    lesion[10:17, 10:17, 10:17] = True

    def make(volume):
        rng = np.random.default_rng(int(volume.data[0, 0, 0]))
        sick = lesion & (volume.data[1, 1, 1] > 0)
        return {"tissue": (rng.normal(size=shape) - 4.0 * sick).astype(np.float32),  # darker than its tissue
                "E": (np.abs(rng.normal(size=shape)) + 2.0 * sick).astype(np.float32)}

    healthy, anomalous = _validation_by_contrast(shape, lesion, [(dark, 8), (bright, 8)], stride=20)
    cal = calibrate(_MapScorer(make), healthy, anomalous, maps=("E", "tissue", "combined"),
                    combined_components=("tissue", "E"), dark_by_contrast={dark: ("-tissue", "E")},
                    detection_map="combined")
    assert cal["combined"]["dark_components_by_contrast"] == {dark: ["-tissue", "E"]}
    assert dark_components(cal, dark) == ("-tissue", "E") and dark_components(cal, bright) == ()
    assert set(all_components(cal)) == {"tissue", "E"}  # what the scorer computes: the signed map itself
    assert cal["detection_map"] == "combined"
    assert cal["maps"]["-tissue"]["quantiles"] != cal["maps"]["tissue"]["quantiles"]  # its own healthy table

    def tab(name):
        return {"quantiles": cal["maps"][name]["quantiles"], "levels": cal["levels"]}

    point = cal["operating_point"]["by_contrast"].get(dark, cal["operating_point"])
    volume = _coded_of_contrast(shape, 900, True, dark)
    maps = make(volume)
    got = combine(maps, cal, combined_components(cal, dark), dark, dark=dark_components(cal, dark))
    brightside = (surprise(maps["tissue"], tab("tissue")) + surprise(maps["E"], tab("E"))) / 2
    darkside = (surprise(-maps["tissue"], tab("-tissue")) + surprise(maps["E"], tab("E"))) / 2
    np.testing.assert_allclose(got, np.maximum(brightside, darkside), rtol=1e-6)
    assert ((got >= point["threshold"]) & lesion).sum() > 0.5 * lesion.sum()
    assert ((brightside >= point["threshold"]) & lesion).sum() < 0.1 * lesion.sum()  # bright channel alone: missed
    other = _coded_of_contrast(shape, 901, True, bright)
    np.testing.assert_allclose(combine(make(other), cal, combined_components(cal, bright), bright,
                                       dark=dark_components(cal, bright)),
                               combine(make(other), cal, ("tissue", "E"), bright))
    with pytest.raises(ValueError, match="not among the calibrated maps"):
        calibrate(_MapScorer(make), healthy, anomalous, maps=("E", "tissue", "combined"),
                  combined_components=("tissue", "E"), dark_by_contrast={dark: ("-E", "tissue")})


def test_dark_channel_opening_drops_a_thin_dark_structure_and_keeps_a_dark_lesion():
    """With ``dark_opening_mm`` the dark channel is opened by a ball that wide before the combined map's maximum:
    a normal dark structure 2 voxels thin (a ventricle rim) no longer sets the healthy table -- the opened map's
    99.9th healthy percentile is lower than the plain one's -- nor reaches the opened card's threshold, while a dark
    lesion 7 voxels wide is still found; the card records the width; an opening without a dark channel is
    refused."""
    from napari_uad.calibration import calibrate
    from napari_uad.combined import combine, combined_components, dark_components, dark_opening_mm
    from napari_uad.postprocess import open_map

    dark = "dark_fluid"
    shape = (28, 28, 28)
    lesion = np.zeros(shape, bool)
    lesion[10:17, 10:17, 10:17] = True
    rim = np.zeros(shape, bool)
    rim[20:22, 8:14, 8:14] = True  # in every head: normal anatomy, rare among healthy voxels

    def make(volume):
        rng = np.random.default_rng(int(volume.data[0, 0, 0]))
        sick = lesion & (volume.data[1, 1, 1] > 0)
        return {"tissue": (rng.normal(size=shape) - 4.0 * sick - 6.0 * rim).astype(np.float32),
                "E": (np.abs(rng.normal(size=shape)) + 2.0 * sick).astype(np.float32)}

    healthy, anomalous = _validation_by_contrast(shape, lesion, [(dark, 8)], stride=20)
    options = dict(maps=("E", "tissue", "combined"), combined_components=("tissue", "E"),
                   dark_by_contrast={dark: ("-tissue",)}, detection_map="combined")
    plain = calibrate(_MapScorer(make), healthy, anomalous, **options)
    cal = calibrate(_MapScorer(make), healthy, anomalous, dark_opening_mm=3.0, **options)
    assert dark_opening_mm(cal) == 3.0 and dark_opening_mm(plain) == 0.0
    assert cal["maps"]["combined"]["threshold_fpr_0.1pct"] < plain["maps"]["combined"]["threshold_fpr_0.1pct"] - 0.5
    point = cal["operating_point"]["by_contrast"].get(dark, cal["operating_point"])
    plain_point = plain["operating_point"]["by_contrast"].get(dark, plain["operating_point"])
    brain = np.ones(shape, bool)

    def opened(volume):
        return combine(make(volume), cal, combined_components(cal, dark), dark, dark=dark_components(cal, dark),
                       open_dark=lambda m: open_map(m, brain, (1.0, 1.0, 1.0), 3.0))

    sick = opened(_coded_of_contrast(shape, 900, True, dark))
    normal = opened(_coded_of_contrast(shape, 901, False, dark))
    assert ((sick >= point["threshold"]) & lesion).sum() > 0.5 * lesion.sum()
    assert not ((normal >= point["threshold"]) & rim).any()
    unopened = combine(make(_coded_of_contrast(shape, 901, False, dark)), plain, ("tissue", "E"), dark,
                       dark=dark_components(plain, dark))
    assert ((unopened >= plain_point["threshold"]) & rim).any()  # what the opening is for
    with pytest.raises(ValueError, match="dark-channel opening"):
        calibrate(_MapScorer(make), healthy, anomalous, maps=("E", "tissue", "combined"),
                  combined_components=("tissue", "E"), detection_map="combined", dark_opening_mm=3.0)


def test_calibration_keeps_the_brains_box_only_and_writes_the_card_the_whole_grid_gives(monkeypatch):
    """A head's grid is mostly air around the brain: calibration keeps each validation volume's maps and masks on
    the box of its brain and lesion only, so a site can calibrate on many scans; the card it writes is the one it
    writes keeping the whole grids -- with a lesion on the brain's edge, other values in the air, a minimum finding
    thickness, a dark channel opened by a 3 mm ball and a median-filtered detection map."""
    from napari_uad import calibration
    from napari_uad.model_card import ScoringConfig
    from napari_uad.scoring import ScoreResult

    dark = "dark_fluid"
    shape = (34, 26, 42)
    brain = np.zeros(shape, bool)
    brain[9:25, 6:20, 13:30] = True
    lesion = np.zeros(shape, bool)
    lesion[9:16, 10:16, 19:25] = True  # on the brain's edge

    def make(volume):
        seed, sick = int(volume.metadata["seed"]), bool(volume.metadata["sick"])
        rng = np.random.default_rng(seed)
        signal = lesion & sick
        air = 9.0 * rng.normal(size=shape)
        return {"tissue": np.where(brain, rng.normal(size=shape) - 4.0 * signal, air).astype(np.float32),
                "E": np.where(brain, np.abs(rng.normal(size=shape)) + 2.0 * signal, -air).astype(np.float32)}

    def head(seed, sick):
        volume = _coded_of_contrast(shape, seed, sick, dark)
        volume.metadata.update(seed=seed, sick=sick, true_brain=brain)
        return volume

    healthy = [head(s, False) for s in range(8)]
    anomalous = [(head(100 + s, True), lesion.astype(np.uint8)) for s in range(8)]
    options = dict(maps=("E", "tissue", "combined"), combined_components=("tissue", "E"),
                   dark_by_contrast={dark: ("-tissue", "E")}, detection_map="combined", true_brain_masks=True,
                   min_thickness_mm=3.0, min_thickness_by_contrast={dark: 3.0}, dark_opening_mm=3.0)
    scorer = _MapScorer(make)
    scorer.card.scoring = ScoringConfig(detection_median_mm=3.0)
    cropped = calibration.calibrate(scorer, healthy, anomalous, **options)
    with monkeypatch.context() as m:
        m.setattr(calibration, "stored_box", lambda brain, truth=None: tuple(slice(0, n) for n in brain.shape))
        whole = calibration.calibrate(scorer, healthy, anomalous, **options)
    assert json.dumps(cropped, sort_keys=True) == json.dumps(whole, sort_keys=True)
    point = cropped["operating_point"]["by_contrast"][dark]
    assert point["validation"]["object_recall"] > 0 and point["min_thickness_mm"] == 3.0  # the rules did run

    # what is kept of a head: its brain's box, and its lesion's where that reaches outside the brain
    volume, truth = anomalous[0]
    result = ScoreResult(maps=make(volume), mask=brain, slice_scores=np.zeros(shape[2]), slice_kl=np.zeros(shape[2]),
                         slice_rec=np.zeros(shape[2]), volume_score=1.0, device="cpu", batch_size=1, contrast=dark)
    kept = calibration._Scored.of(volume, result, ("tissue", "E"), truth > 0, 0.0)
    assert kept.maps["tissue"].shape == kept.brain.shape == kept.truth.shape == (16, 14, 17)
    assert kept.brain.all() and kept.maps["E"].dtype == np.float16
    outside = np.zeros(shape, bool)
    outside[0, 0, 0] = True
    assert calibration.stored_box(brain, outside) == (slice(0, 25), slice(0, 20), slice(0, 30))


def test_true_brain_masks_keep_heads_whose_brain_extraction_would_fail():
    """Scored on their true brain masks, synthetic heads are no longer left out by the brain-mask check (which
    left out nearly every synthetic T2 head), and the scorer is given each volume's own mask."""
    from napari_uad.calibration import calibrate
    from napari_uad.io import Volume

    shape = (16, 16, 16)
    small = np.zeros(shape, bool)
    small[4:12, 4:12, 4:12] = True
    masks = []

    def volumes():
        out = []
        for seed in range(4):
            data = np.zeros(shape, np.float32)
            data[0, 0, 0] = seed + 1
            v = Volume.from_array(data, np.eye(4))
            v.metadata["true_brain"] = small  # the scorer's own extraction (everything) would disagree
            out.append(v)
        return out

    def make(v):
        return {"nll": np.random.default_rng(int(v.data[0, 0, 0])).normal(size=shape).astype(np.float32)}

    class Recording(_MapScorer):
        def score(self, volume, maps, mask=None, postprocess=True, tissue_classes=False):
            masks.append(mask)
            return super().score(volume, maps, mask, postprocess, tissue_classes)

    with pytest.raises(ValueError, match="brain mask matches its true brain"):
        calibrate(Recording(make), volumes(), maps=("nll",))
    assert all(m is None for m in masks)
    masks.clear()
    cal = calibrate(Recording(make), volumes(), maps=("nll",), true_brain_masks=True)
    assert cal["n_healthy_volumes"] == 4 and not cal["healthy_volumes_left_out"]["volumes"]
    assert len(masks) == 4 and all(m is small for m in masks)


def test_calibration_describes_the_median_filtered_detection_map_when_the_card_asks_for_it():
    """With ``detection_median_mm`` in the card, the detection map's healthy table, thresholds and operating point
    are of the filtered map the reviewer will see: about 1 % of filtered healthy voxels lie above its 1 % FPR
    threshold, while the raw noise, wider, would put far more above it; a faint lesion that the raw map cannot
    find at <= 1 false finding per normal volume is found in the filtered one."""
    from napari_uad.calibration import calibrate
    from napari_uad.model_card import ScoringConfig
    from napari_uad.postprocess import median_filter_map

    shape, lesion, make = _cube_lesion_maps(1.5)

    healthy, anomalous = _coded_validation(shape, lesion)
    plain = calibrate(_MapScorer(make), healthy, anomalous, maps=("nll", "residual"))
    scorer = _MapScorer(make)
    scorer.card.scoring = ScoringConfig(detection_median_mm=3.0)
    cal = calibrate(scorer, healthy, anomalous, maps=("nll", "residual"))
    entry = cal["maps"]["nll"]
    assert cal["detection_map"] == "nll" and entry["median_filter_mm"] == 3.0
    assert "median_filter_mm" not in cal["maps"]["residual"]
    brain = np.ones(shape, bool)
    raw = [make(v)["nll"] for v in healthy]
    filtered = [median_filter_map(m, brain, (1.0, 1.0, 1.0), 3.0) for m in raw]
    assert 0.005 < np.mean([(f > entry["threshold_fpr_1pct"]).mean() for f in filtered]) < 0.02
    assert np.mean([(m > entry["threshold_fpr_1pct"]).mean() for m in raw]) > 0.1
    point, before = cal["operating_point"]["validation"], plain["operating_point"]["validation"]
    assert before["object_recall"] < 1.0 and before["fp_objects_per_normal_scan"] <= 1.0
    assert point["object_recall"] == 1.0 and point["fp_objects_per_normal_scan"] <= 1.0


def test_site_calibration_on_normal_scans_sets_the_lowest_threshold_that_keeps_them_quiet():
    """Normal scans alone (a site's) keep the card's detection map and minimum volume; the threshold becomes the
    lowest candidate with <= 1 false-positive finding per normal scan, which a recount confirms, while the next
    lower candidate would give more."""
    from napari_uad.calibration import calibrate
    from napari_uad.findings import label_components

    shape = (28, 28, 28)

    def make(v):
        return {"nll": np.random.default_rng(int(v.data[0, 0, 0])).normal(size=shape).astype(np.float32)}

    healthy, _ = _coded_validation(shape, np.zeros(shape, bool))
    cal = calibrate(_MapScorer(make), healthy, maps=("nll",), detection_map="nll", min_volume_mm3=2.0)
    point = cal["operating_point"]
    assert cal["detection_map"] == "nll" and cal["min_volume_mm3"] == 2.0 and point["fp_target_met"]
    assert cal["maps"]["nll"]["threshold"] == point["threshold"] >= cal["maps"]["nll"]["threshold_fpr_1pct"]

    def fp_per_scan(threshold):
        return np.mean([label_components(make(v)["nll"], threshold, 1.0, 2.0)[1] for v in healthy])

    assert fp_per_scan(point["threshold"]) <= 1.0
    lower = [r["threshold"] for r in point["table"] if r["threshold"] < point["threshold"]]
    assert lower and fp_per_scan(max(lower)) > 1.0
    # the out-of-distribution reference: the largest fraction of a normal brain at or above the threshold (here
    # every brain voxel is in the calibration's sample, so it is exact)
    exact = max(float((make(v)["nll"] >= point["threshold"]).mean()) for v in healthy)
    assert cal["ood"]["max_fraction_above_threshold"]["nll"] == pytest.approx(exact)
    # the reference records whether the site's normals were contrast-enhanced, so its T1c scans are not flagged
    assert cal["ood"]["contrast_enhanced"] is False
    healthy[0].metadata["contrast_agent"] = "GADAVIST"
    assert calibrate(_MapScorer(make), healthy, maps=("nll",), detection_map="nll")["ood"]["contrast_enhanced"]


def test_calibration_leaves_out_healthy_heads_whose_brain_extraction_failed():
    """A synthetic head knows its true brain: when the pipeline's brain mask disagrees with it (here the
    scorer's mask is the whole image), the head is not a healthy reference and is left out, said so in the card."""
    from napari_uad.calibration import calibrate
    from napari_uad.io import Volume

    shape = (16, 16, 16)

    def volume(seed, true_brain):
        data = np.zeros(shape, np.float32)
        data[0, 0, 0] = seed + 1
        v = Volume.from_array(data, np.eye(4))
        v.metadata["true_brain"] = true_brain
        return v

    def make(v):
        return {"nll": np.random.default_rng(int(v.data[0, 0, 0])).normal(size=shape).astype(np.float32)}

    small = np.zeros(shape, bool)
    small[4:8, 4:8, 4:8] = True
    healthy = [volume(0, np.ones(shape, bool)), volume(1, small), volume(2, np.ones(shape, bool))]
    cal = calibrate(_MapScorer(make), healthy, maps=("nll",))
    assert cal["n_healthy_volumes"] == 2
    assert [v["index"] for v in cal["healthy_volumes_left_out"]["volumes"]] == [1]
    with pytest.raises(ValueError, match="1 left out"):
        calibrate(_MapScorer(make), [volume(3, small)], maps=("nll",))


def test_calibration_can_balance_strata_making_up_heads_left_out_within_their_own_stratum():
    """With a quota per stratum (the contrast), a head left out by the brain-mask check is replaced by the next
    head of the same stratum, heads of a full stratum are not scored, and reading the supply stops once every
    quota is met: a contrast on which brain extraction often fails still sets the operating point."""
    from napari_uad.calibration import calibrate
    from napari_uad.io import Volume

    shape = (16, 16, 16)
    small = np.zeros(shape, bool)
    small[4:8, 4:8, 4:8] = True
    scored: list[int] = []
    made: list[int] = []

    def supply():
        # strata in turn a, b, a, b, ...; every "b" head but the third fails its brain-mask check
        for seed in range(40):
            made.append(seed)
            stratum = "ab"[seed % 2]
            data = np.zeros(shape, np.float32)
            data[0, 0, 0] = seed + 1
            v = Volume.from_array(data, np.eye(4))
            v.metadata["stratum"] = stratum
            v.metadata["true_brain"] = small if stratum == "b" and seed not in (5, 9) else np.ones(shape, bool)
            yield v

    def make(v):
        scored.append(int(v.data[0, 0, 0]) - 1)
        return {"nll": np.random.default_rng(int(v.data[0, 0, 0])).normal(size=shape).astype(np.float32)}

    cal = calibrate(_MapScorer(make), supply(), maps=("nll",), healthy_quota={"a": 2, "b": 2})
    assert cal["n_healthy_volumes"] == 4
    assert cal["healthy_strata"] == {"quota": {"a": 2, "b": 2}, "kept": {"a": 2, "b": 2}}
    assert [v["index"] for v in cal["healthy_volumes_left_out"]["volumes"]] == [1, 3, 7]
    assert all(v["stratum"] == "b" for v in cal["healthy_volumes_left_out"]["volumes"])
    assert scored == [0, 1, 2, 3, 5, 7, 9]  # a-heads 4, 6, 8 skipped unscored; the supply read no further
    assert made[-1] == 9  # the quotas were met at head 9: no head after it was made
    # without the quota the same supply keeps every head that passes its check
    assert calibrate(_MapScorer(make), list(supply())[:10], maps=("nll",))["n_healthy_volumes"] == 7


def test_balance_contrasts_is_refused_without_label_map_heads(tmp_path, tiny_model_dir, capsys):
    from napari_uad.cli import main

    assert main(["calibrate", "--model", str(tiny_model_dir), "--data", str(tmp_path), "--balance-contrasts"]) == 2
    assert "--balance-contrasts needs --synthetic with --label-maps" in capsys.readouterr().err
    assert main(["calibrate", "--model", str(tiny_model_dir), "--data", str(tmp_path), "--true-brain-masks"]) == 2
    assert "--true-brain-masks needs --synthetic with --label-maps" in capsys.readouterr().err


def test_tables_by_tissue_find_a_lesion_that_looks_like_normal_fluid_to_the_model():
    """The model's error is as high in normal fluid as in a white-matter lesion (as on T2): measured against all
    healthy voxels of its contrast the lesion is ordinary, against the healthy white matter the template expects
    there it is not. A calibration with ``tables_by_tissue`` records a table per tissue class for that component and
    contrast (the fluid's far above the white matter's), its combined map equals the hand computation (the component
    against its voxel's class table, the other against its contrast's), and at its own operating point it finds
    most of the lesion on a fresh volume where the calibration without them, at its own point, finds little of it;
    scans of another contrast keep their tables."""
    from napari_uad.calibration import calibrate
    from napari_uad.combined import combine, surprise

    bright, dark = "bright_fluid", "dark_fluid"
    shape = (28, 28, 28)
    tissue = np.full(shape, 2, np.int8)  # white matter ...
    tissue[:, :, :10], tissue[:, :, 10:18] = 0, 1  # ... below it fluid and grey matter
    lesion = np.zeros(shape, bool)
    lesion[10:17, 10:17, 19:26] = True  # in white matter

    def make(volume):
        rng = np.random.default_rng(int(volume.data[0, 0, 0]))
        sick = lesion & (volume.data[1, 1, 1] > 0)
        return {"nll": (rng.normal(size=shape) + 3.0 * (tissue == 0) + 3.0 * sick).astype(np.float32),
                "residual": rng.normal(size=shape).astype(np.float32)}

    healthy, anomalous = _validation_by_contrast(shape, lesion, [(bright, 8), (dark, 8)], stride=20)
    options = dict(maps=("nll", "residual", "combined"), combined_components=("nll", "residual"),
                   detection_map="combined", tables_by_contrast=True)
    cal = calibrate(_MapScorer(make, lambda v: tissue), healthy, anomalous, tables_by_tissue={bright: ("nll",)},
                    **options)
    plain = calibrate(_MapScorer(make, lambda v: tissue), healthy, anomalous, **options)
    tables = cal["combined"]["tables_by_tissue"]
    assert set(tables) == {bright} and set(tables[bright]) == {"nll"} and "tables_by_tissue" not in plain["combined"]
    assert set(tables[bright]["nll"]) == {"csf", "gm", "wm"}
    levels = np.asarray(cal["levels"])
    median = {k: np.interp(0.5, levels, tables[bright]["nll"][k]) for k in ("csf", "wm")}
    assert median["csf"] > median["wm"] + 2.0
    volume = _coded_of_contrast(shape, 900, True, bright)
    maps = make(volume)
    got = combine(maps, cal, ("nll", "residual"), bright, classes=tissue)
    own = np.choose(tissue, [surprise(maps["nll"], {"quantiles": tables[bright]["nll"][k], "levels": cal["levels"]})
                             for k in ("csf", "gm", "wm")])
    other = surprise(maps["residual"], {"quantiles": cal["combined"]["tables_by_contrast"][bright]["residual"],
                                        "levels": cal["levels"]})
    np.testing.assert_allclose(got, (own + other) / 2, rtol=1e-5)
    unclassed = tissue.copy()
    unclassed[:3] = -1  # voxels without a class (no template there): measured against their contrast's table
    got = combine(maps, cal, ("nll", "residual"), bright, classes=unclassed)
    pooled = surprise(maps["nll"], {"quantiles": cal["combined"]["tables_by_contrast"][bright]["nll"],
                                    "levels": cal["levels"]})
    np.testing.assert_allclose(got[:3], ((pooled + other) / 2)[:3], rtol=1e-5)
    np.testing.assert_allclose(got[3:], ((own + other) / 2)[3:], rtol=1e-5)

    def found(card) -> float:
        point = card["operating_point"]["by_contrast"].get(bright, card["operating_point"])
        score = combine(maps, card, ("nll", "residual"), bright, classes=tissue)
        return float((score[lesion] >= point["threshold"]).mean())

    assert found(cal) > 0.5 and found(plain) < 0.3  # most of the lesion, against about a fifth
    np.testing.assert_allclose(combine(maps, cal, ("nll", "residual"), dark, classes=tissue),
                               combine(maps, plain, ("nll", "residual"), dark, classes=tissue))
