"""``napari-uad score`` end to end: outputs in the input's grid, CSV schema, bad inputs, no partial files."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest

from napari_uad import cli, model_card
from napari_uad.export import FINDINGS_COLUMNS
from napari_uad.io import write_image_file
from napari_uad.scoring import DEFAULT_MAPS

# the tiny test model's default maps: its card defines no combined map
TINY_MAPS = tuple(m for m in DEFAULT_MAPS if m != "combined")

from .conftest import head_phantom
from .test_io import _bad_inputs, affine_for


@pytest.fixture
def scan(tmp_path):
    """An LPS, 1 x 1 x 3 mm (aniso) phantom with a bright lesion, as NRRD (ITK convention)."""
    return write_image_file(tmp_path / "patient01.nrrd", head_phantom((40, 44, 14)), affine_for("aniso"))


def run_cli(*args) -> int:
    return cli.main([str(a) for a in args])


def test_score_end_to_end(tmp_path, tiny_model_dir, scan, capsys):
    out = tmp_path / "out"
    before = scan.read_bytes()
    code = run_cli("score", scan, "--out", out, "--model", tiny_model_dir, "--threshold", "0.8",
                   "--min-volume-mm3", "6", "--quiet")
    assert code == 0, capsys.readouterr().err
    expected = {f"patient01.{m}.nii.gz" for m in TINY_MAPS} | {
        "patient01.labels.nii.gz", "patient01.brainmask.nii.gz", "patient01.findings.csv", "patient01.json"}
    assert {p.name for p in out.iterdir()} == expected
    assert scan.read_bytes() == before

    labels_img = nib.load(str(out / "patient01.labels.nii.gz"))
    assert labels_img.shape == (40, 44, 14)  # the input's own grid
    np.testing.assert_allclose(labels_img.affine, affine_for("aniso"), atol=1e-4)
    assert labels_img.get_data_dtype() == np.uint16
    labels = np.asarray(labels_img.dataobj)
    residual = np.asarray(nib.load(str(out / "patient01.residual.nii.gz")).dataobj)
    assert residual.dtype == np.float32

    with open(out / "patient01.findings.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == FINDINGS_COLUMNS
        rows = list(reader)
    assert len(rows) == labels.max() >= 1
    for row in rows:
        fid = int(row["finding_id"])
        voxels = np.argwhere(labels == fid)
        assert int(row["voxel_count"]) == len(voxels)
        assert float(row["volume_mm3"]) == pytest.approx(len(voxels) * 3.0)
        assert float(row["volume_mm3"]) >= 6
        centre = voxels.mean(axis=0)
        np.testing.assert_allclose([float(row[c]) for c in ("centroid_i", "centroid_j", "centroid_k")], centre,
                                   atol=1e-6)
        world = nib.affines.apply_affine(labels_img.affine, centre)
        np.testing.assert_allclose([float(row[c]) for c in ("centroid_x_mm", "centroid_y_mm", "centroid_z_mm")],
                                   world, atol=1e-4)
        assert (int(row["first_slice"]), int(row["last_slice"])) == (voxels[:, 2].min(), voxels[:, 2].max())
        assert float(row["max_score"]) == pytest.approx(residual[labels == fid].max(), rel=1e-5)
        assert row["tag"] == "unreviewed" and row["detection_map"] == "residual"
        assert row["scan_path"].endswith("patient01.nrrd") and len(row["scan_sha256"]) == 64
    assert [float(r["max_score"]) for r in rows] == sorted((float(r["max_score"]) for r in rows), reverse=True)

    report = json.loads((out / "patient01.json").read_text(encoding="utf-8"))
    assert report["model"]["name"] == "tiny-test" and len(report["model"]["sha256"]) == 64
    assert report["threshold"] == 0.8 and report["device"] == "cpu" and report["maps"] == list(TINY_MAPS)
    assert len(report["sample_scores"]["slice"]) == 14 and report["sample_scores"]["volume"] > 0
    assert {"read", "preprocess", "model", "findings", "write", "total"} <= set(report["seconds"])
    # provenance: version, command line, UTC time, torch/CUDA; NIfTI headers say what each file is
    from napari_uad import __version__

    assert report["napari_uad_version"] == __version__ and report["command"].startswith("napari-uad score ")
    assert report["created_utc"].endswith("Z") and report["environment"]["torch"]
    assert "cuda" in report["environment"]
    descrip = nib.load(str(out / "patient01.residual.nii.gz")).header["descrip"].tobytes().rstrip(b"\0").decode()
    assert descrip == "napari-uad map residual; tiny-test 0.0.1"


def test_score_subset_of_maps_and_card_threshold(tmp_path, tiny_model_dir, scan):
    out = tmp_path / "out"
    assert run_cli("score", scan, "--out", out, "--model", tiny_model_dir, "--maps", "E,U", "--quiet") == 0
    names = {p.name for p in out.iterdir()}
    assert "patient01.E.nii.gz" in names and "patient01.residual.nii.gz" not in names
    assert json.loads((out / "patient01.json").read_text(encoding="utf-8"))["threshold"] == 1.0  # the card's calibrated value


def test_bad_inputs_each_get_one_line_and_others_are_still_scored(tmp_path, tiny_model_dir, scan, capsys):
    (tmp_path / "bad_inputs").mkdir()
    bad = _bad_inputs(tmp_path / "bad_inputs")
    out = tmp_path / "out"
    originals = {p: p.read_bytes() for p, _ in bad.values() if p.is_file()}
    inputs = [p for p, _ in bad.values()] + [scan]
    code = run_cli("score", *inputs, "--out", out, "--model", tiny_model_dir, "--threshold", "0.8", "--quiet")
    err = capsys.readouterr().err
    assert code == 1
    error_lines = [line for line in err.splitlines() if line.startswith("napari-uad: error:")]
    assert len(error_lines) == len(bad)
    for path, problem in bad.values():
        assert any(str(path) in line and problem in line for line in error_lines), (path, problem)
    assert "Traceback" not in err
    # only the good scan produced files; no partial or hidden staging files are left
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"patient01.{m}.nii.gz" for m in TINY_MAPS] + ["patient01.labels.nii.gz", "patient01.brainmask.nii.gz",
                                                         "patient01.findings.csv", "patient01.json"])
    for path, content in originals.items():
        assert path.read_bytes() == content


def test_mask_option(tmp_path, tiny_model_dir, scan):
    mask = np.zeros((40, 44, 14), np.uint8)
    mask[5:35, 5:40, 2:12] = 1
    mask_path = write_image_file(tmp_path / "mask.nii.gz", mask, affine_for("aniso"))
    out = tmp_path / "out"
    assert run_cli("score", scan, "--out", out, "--model", tiny_model_dir, "--maps", "residual", "--mask",
                   mask_path, "--quiet") == 0
    residual = np.asarray(nib.load(str(out / "patient01.residual.nii.gz")).dataobj)
    assert np.all(residual[mask == 0] == 0) and residual[mask == 1].min() > 0

    wrong = write_image_file(tmp_path / "wrong.nii.gz", mask[:, :, :10], affine_for("aniso"))
    assert run_cli("score", scan, "--out", tmp_path / "o2", "--model", tiny_model_dir, "--mask", wrong,
                   "--quiet") == 1
    assert not (tmp_path / "o2").exists()  # nothing written, and the directory this run made is gone


def test_usage_errors_are_one_line(tmp_path, tiny_model_dir, scan, capsys, monkeypatch):
    assert run_cli("score", scan, "--out", tmp_path / "o", "--model", tmp_path / "nowhere") == 2
    assert run_cli("score", scan, "--out", tmp_path / "o", "--model", tiny_model_dir, "--maps", "x") == 2
    assert run_cli("score", scan, "--out", tmp_path / "o", "--model", tiny_model_dir, "--device", "tpu") == 2
    # the default (bundled) model missing from an installation: a clear message, not a traceback
    monkeypatch.setattr(model_card, "bundled_models_dir", lambda: tmp_path / "empty")
    monkeypatch.setenv("NAPARI_UAD_MODELS", str(tmp_path / "empty"))
    assert run_cli("score", scan, "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "bundled model is missing" in err
    assert all(line.startswith("napari-uad: error:") for line in err.strip().splitlines())


def test_help_explains_every_option():
    text = subprocess.run([sys.executable, "-m", "napari_uad.cli", "score", "--help"], capture_output=True,
                          text=True, check=True).stdout
    for option in ("--out", "--model", "--maps", "--mask", "--device", "--batch-size", "--threshold",
                   "--min-volume-mm3", "--detection-map", "--connectivity", "--modality"):
        assert option in text
    top = subprocess.run([sys.executable, "-m", "napari_uad.cli", "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert "score" in top


def test_demo_headless_scores_the_bundled_sample(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "demo"
    assert run_cli("demo", "--headless", "--model", tiny_model_dir, "--out", out) == 0
    assert (out / "sample_brain.findings.csv").is_file() and (out / "sample_brain.nll.nii.gz").is_file()
    assert not (out / "sample_brain.combi.nii.gz").exists()  # gradient maps only when asked for
    assert not (out / "sample_brain.combined.nii.gz").exists()  # the tiny model's card defines no combined map
    printed = capsys.readouterr().out
    assert f"results in {out.resolve()}:" in printed and "  sample_brain.findings.csv" in printed
    assert "the sample has 3 inserted lesions" in printed  # compared with the ground truth it ships


def test_help_texts_are_complete(capsys):
    """Every option of every command explains itself; no unformatted '%%'."""
    for command in ("score", "cohort", "train", "calibrate", "synth", "demo", "evaluate"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        text = capsys.readouterr().out
        assert "%%" not in text, command
        parser = cli.build_parser()
        sub = next(a for a in parser._actions if a.dest == "command").choices[command]
        bare = [a.option_strings for a in sub._actions if a.option_strings and not a.help]
        assert not bare, (command, bare)


def test_calibrate_help_names_the_maps_a_dark_channel_can_negate():
    """The help of --dark-by-contrast lists exactly the signed maps calibration accepts as -NAME."""
    from napari_uad.combined import SIGNED_MAPS

    sub = next(a for a in cli.build_parser()._actions if a.dest == "command").choices["calibrate"]
    action = next(a for a in sub._actions if a.dest == "dark_by_contrast")
    assert f"({', '.join(SIGNED_MAPS)})" in " ".join(action.help.split())


def test_ct_scan_refused_by_mr_model_unless_forced(tmp_path, tiny_model_dir, capsys):
    """A CT volume (HU) given to the MR model: one line naming the file, exit 1, no files; --force scores it
    with a warning on stderr and in S.json."""
    ct = (head_phantom((40, 44, 14)) * 8.0 - 1024.0).astype(np.int16)
    scan = write_image_file(tmp_path / "ct.nii.gz", ct, affine_for("RAS"))
    before = scan.read_bytes()
    out = tmp_path / "out"
    assert run_cli("score", scan, "--out", out, "--model", tiny_model_dir, "--quiet") == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1 and str(scan) in lines[0] and "CT scan, but model 'tiny-test' is made for MR" in lines[0]
    assert "Traceback" not in err and not out.exists() and scan.read_bytes() == before
    assert run_cli("score", scan, "--out", out, "--model", tiny_model_dir, "--quiet", "--force") == 0
    err = capsys.readouterr().err
    assert f"napari-uad: warning: {scan}: CT scan scored by the MR model 'tiny-test' (forced)" in err
    report = json.loads((out / "ct.json").read_text())
    assert any("forced" in w for w in report["warnings"]) and report["out_of_distribution"]["warnings"]


def test_contrast_enhanced_scan_is_scored_with_a_visible_warning(tmp_path, tiny_model_dir, capsys):
    """A scan whose BIDS name says it is contrast-enhanced: scored, with the warning on stderr and in S.json."""
    scan = write_image_file(tmp_path / "sub-01_ce-gd_T1w.nii.gz", head_phantom((40, 44, 14)), affine_for("RAS"))
    out = tmp_path / "out"
    assert run_cli("score", scan, "--out", out, "--model", tiny_model_dir, "--quiet") == 0
    assert f"napari-uad: warning: {scan}: contrast-enhanced scan (agent: gd)" in capsys.readouterr().err
    report = json.loads((out / "sub-01_ce-gd_T1w.json").read_text())
    assert any("contrast-enhanced" in w for w in report["out_of_distribution"]["warnings"])


def test_gradient_maps_only_when_asked(tmp_path, tiny_model_dir, scan):
    out = tmp_path / "out"
    assert run_cli("score", scan, "--out", out, "--model", tiny_model_dir, "--quiet") == 0
    assert not any(f".{m}." in p.name for p in out.iterdir() for m in ("kl_grad", "elbo_grad", "combi"))
    assert run_cli("score", scan, "--out", out, "--model", tiny_model_dir, "--quiet", "--maps", "nll,kl_grad") == 0
    assert (out / "patient01.kl_grad.nii.gz").is_file()


def test_edge_margin_is_applied_recorded_and_checked(tmp_path, tiny_model_dir, scan, capsys):
    out = tmp_path / "out"
    assert run_cli("score", scan, "--out", out, "--model", tiny_model_dir, "--quiet", "--threshold", "0.5",
                   "--edge-margin-mm", "3") == 0
    report = json.loads((out / "patient01.json").read_text())
    assert report["edge_margin_mm"] == 3.0
    labels = nib.load(str(out / "patient01.labels.nii.gz")).get_fdata() > 0
    brain = nib.load(str(out / "patient01.brainmask.nii.gz")).get_fdata() > 0
    from scipy import ndimage

    depth = ndimage.distance_transform_edt(brain, sampling=nib.load(str(out / "patient01.labels.nii.gz")).header.get_zooms())
    assert labels.any() and depth[labels].min() > 3.0  # no labelled voxel within 3 mm of the brain's surface
    capsys.readouterr()
    assert run_cli("score", scan, "--out", out, "--model", tiny_model_dir, "--edge-margin-mm", "-1") == 2
    assert "--edge-margin-mm must be a finite number >= 0" in capsys.readouterr().err


def test_threshold_and_min_volume_must_be_finite(tmp_path, tiny_model_dir, scan, capsys):
    for option, value in (("--threshold", "nan"), ("--threshold", "inf"), ("--min-volume-mm3", "nan"),
                          ("--min-volume-mm3", "-1"), ("--min-thickness-mm", "-1"), ("--min-thickness-mm", "inf")):
        assert run_cli("score", scan, "--out", tmp_path / "out", "--model", tiny_model_dir, option, value) == 2
        err = capsys.readouterr().err
        assert f"{option} must be a finite number" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_a_minimum_thickness_drops_thinner_findings_and_is_recorded(tmp_path, tiny_model_dir, scan):
    """--min-thickness-mm: the same run with a thickness no finding reaches has no findings, and S.json records
    the value (0 and where it came from when not given)."""
    for thickness, out in ((None, tmp_path / "plain"), ("50", tmp_path / "thick")):
        extra = () if thickness is None else ("--min-thickness-mm", thickness)
        assert run_cli("score", scan, "--out", out, "--model", tiny_model_dir, "--threshold", "0.8", *extra,
                       "--quiet") == 0
    plain, thick = (json.loads((tmp_path / d / "patient01.json").read_text()) for d in ("plain", "thick"))
    assert plain["n_findings"] > 0 and thick["n_findings"] == 0
    assert (plain["min_thickness_mm"], thick["min_thickness_mm"]) == (0.0, 50.0)
    assert (plain["operating_point"]["min_thickness_mm"], thick["operating_point"]["min_thickness_mm"]) == (
        "card, pooled", "given")
    with open(tmp_path / "plain" / "patient01.findings.csv", newline="") as fh:
        assert {row["min_thickness_mm"] for row in csv.DictReader(fh)} == {"0.0"}


def test_an_unknown_sequence_is_one_line_and_leaves_nothing(tmp_path, tiny_model_dir, scan, capsys):
    for command in ("score", "cohort"):
        assert run_cli(command, scan, "--out", tmp_path / "out", "--model", tiny_model_dir, "--sequence", "DWI",
                       "--quiet") == 2
        err = capsys.readouterr().err
        assert err.strip().splitlines() == ["napari-uad: error: unknown sequence 'DWI'; use auto, T1 (T1w, T1c, "
                                            "MPRAGE), FLAIR, T2 or PD"]
    assert not (tmp_path / "out").exists()


def test_when_every_input_fails_no_output_directory_is_left(tmp_path, tiny_model_dir, capsys):
    (tmp_path / "bad.nii.gz").write_bytes(b"junk")
    assert run_cli("score", tmp_path / "bad.nii.gz", tmp_path / "missing.nii.gz", "--out", tmp_path / "out",
                   "--model", tiny_model_dir, "--quiet") == 1
    assert not (tmp_path / "out").exists()
    assert capsys.readouterr().err.count("napari-uad: error:") == 2


@pytest.mark.skipif(not hasattr(os, "geteuid") or (os.geteuid() == 0 and not shutil.which("setpriv")),
                    reason="needs a non-root user or setpriv to drop root's file-permission override")
def test_read_only_output_directory_is_one_line(tmp_path, tiny_model_dir, scan):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    cmd = [sys.executable, "-m", "napari_uad.cli", "score", str(scan), "--out", str(out), "--model",
           str(tiny_model_dir), "--quiet"]
    if os.geteuid() == 0:
        cmd = ["setpriv", "--inh-caps=-dac_override", "--bounding-set=-dac_override", *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    out.chmod(0o755)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"napari-uad: error: {out}: cannot write to the output directory (Permission denied)"


def test_sigterm_cleans_up_like_ctrl_c(tmp_path, tiny_model_dir, scan):
    """SIGTERM (timeout, Slurm, Kubernetes) in the middle of a scan: exit 143, no staging directory, no output."""
    out = tmp_path / "out"
    slow = ("import sys, time; import napari_uad.scoring as s; orig = s.Scorer.score; "
            "s.Scorer.score = lambda *a, **k: (time.sleep(60), orig(*a, **k))[1]; "
            "from napari_uad.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.Popen([sys.executable, "-c", slow, "score", str(scan), "--out", str(out), "--model",
                             str(tiny_model_dir), "--quiet"], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not (out.is_dir() and list(out.glob(".*.partial"))):
        time.sleep(0.1)
    assert list(out.glob(".*.partial")), "the scan never started"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "napari-uad: terminated" in err and "Traceback" not in err
    assert not out.exists()  # made by this run and left empty: removed
