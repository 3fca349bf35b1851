"""Metrics on hand-made cases with known answers; `napari-uad evaluate` end to end; MOOD I/O."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from napari_uad import cli
from napari_uad.metrics import dice, object_counts, object_metrics, pixel_metrics, sample_metrics
from napari_uad.scoring import DEFAULT_MAPS


def test_pixel_metrics_perfect_inverted_constant():
    truth = np.array([0, 0, 0, 1, 1, 0, 0, 1], bool)
    perfect = truth.astype(float)
    m = pixel_metrics([perfect], [truth], threshold=0.5)
    assert m["pixel_ap"] == 1.0 and m["pixel_auroc"] == 1.0 and m["dice_at_threshold"] == 1.0
    assert m["best_dice"] == 1.0
    inverted = pixel_metrics([1 - perfect], [truth])
    assert inverted["pixel_auroc"] == 0.0
    assert inverted["pixel_ap"] == pytest.approx(truth.mean())  # AP of the worst ranking = prevalence
    constant = pixel_metrics([np.zeros(8)], [truth])
    assert constant["pixel_auroc"] == 0.5 and constant["pixel_ap"] == pytest.approx(truth.mean())


def test_pooled_and_per_scan_ap_disagree_when_lesion_sizes_differ():
    big_t = np.r_[np.ones(90), np.zeros(910)].astype(bool)
    big_s = np.r_[np.full(90, 0.9), np.zeros(910)]
    small_t = np.r_[np.ones(2), np.zeros(998)].astype(bool)
    small_s = np.r_[np.zeros(2), np.full(998, 0.1)]  # the small lesion is missed
    m = pixel_metrics([big_s, small_s], [big_t, small_t])
    assert m["pixel_ap"] > 0.9  # dominated by the big lesion
    assert m["pixel_ap_per_scan"] == pytest.approx((1.0 + 0.002) / 2, abs=0.01)


def test_dice():
    assert dice(np.array([1, 1, 0], bool), np.array([1, 0, 0], bool)) == pytest.approx(2 / 3)
    assert dice(np.zeros(3, bool), np.zeros(3, bool)) == 1.0


def _cube(shape, lo, hi):
    a = np.zeros(shape, bool)
    a[tuple(slice(l, h) for l, h in zip(lo, hi))] = True
    return a


def test_object_split_counts_once_and_size_rule_at_boundary():
    shape = (30, 30, 30)
    truth = _cube(shape, (5, 5, 5), (15, 15, 13))  # 10 x 10 x 8 = 800 voxels
    # exactly half the volume, centre inside: TP (ratio 0.5 is allowed)
    half = _cube(shape, (5, 5, 5), (15, 15, 9)).astype(np.uint16)
    c = object_counts(half, truth)
    assert (c.tp_pred, c.detected_true, c.fp) == (1, 1, 0)
    # just under half: not a TP (and so a false positive)
    under = _cube(shape, (5, 5, 5), (15, 15, 9))
    under[5, 5, 5] = False
    c = object_counts(under.astype(np.uint16), truth)
    assert (c.tp_pred, c.detected_true, c.fp) == (0, 0, 1)
    # exactly twice the volume: TP; just over twice: not
    double = _cube(shape, (5, 5, 5), (15, 15, 21)).astype(np.uint16)
    assert object_counts(double, truth).tp_pred == 1
    over_labels = _cube(shape, (5, 5, 5), (15, 15, 21)).astype(np.uint16)
    over_labels[15, 5:15, 5:21] = 1  # 160 more voxels in the same component: 1760 > 1600
    assert object_counts(over_labels, truth).tp_pred == 0
    # one object split into two matching halves: recall counts it once, both parts are TPs
    split = np.zeros(shape, np.uint16)
    split[_cube(shape, (5, 5, 5), (15, 10, 13))] = 1
    split[_cube(shape, (5, 10, 5), (15, 15, 13))] = 2
    c = object_counts(split, truth)
    assert (c.n_pred, c.tp_pred, c.detected_true) == (2, 2, 1)
    # same size, overlapping the object, but centre of mass outside it: FP
    shifted = _cube(shape, (12, 12, 10), (22, 22, 18)).astype(np.uint16)
    assert (shifted.astype(bool) & truth).any()
    c = object_counts(shifted, truth)
    assert (c.tp_pred, c.fp) == (0, 1)
    m = object_metrics([object_counts(split, truth), object_counts(np.zeros(shape, np.uint16), np.zeros(shape))])
    assert m["object_recall"] == 1.0 and m["fp_objects_per_normal_scan"] == 0.0


def test_sample_metrics():
    m = sample_metrics([0.9, 0.8, 0.2, 0.1], [True, True, False, False])
    assert m["sample_ap"] == 1.0 and m["fpr_at_95tpr"] == 0.0
    m = sample_metrics([0.1, 0.2, 0.8, 0.9], [True, True, False, False])
    assert m["fpr_at_95tpr"] == 1.0


@pytest.fixture(scope="module")
def scored_set(tmp_path_factory, tiny_model_dir):
    """Three small synthetic scans (one normal) scored by the tiny model."""
    root = tmp_path_factory.mktemp("evalset")
    from napari_uad.io import write_image_file

    from .conftest import head_phantom

    (root / "scans").mkdir()
    (root / "gt").mkdir()
    for i, lesion in enumerate([True, True, False]):
        data = head_phantom((36, 40, 12), seed=i, lesion=lesion)
        affine = np.diag([1.0, 1.0, 2.5, 1.0])
        write_image_file(root / "scans" / f"case{i}.nii.gz", data, affine)
        truth = (data > 300).astype(np.uint8)
        write_image_file(root / "gt" / f"case{i}.nii.gz", truth, affine)
    scans = sorted(str(p) for p in (root / "scans").iterdir())
    assert cli.main(["score", *scans, "--out", str(root / "pred"), "--model", str(tiny_model_dir), "--quiet"]) == 0
    return root


def test_evaluate_end_to_end(scored_set, tmp_path):
    out = tmp_path / "report"
    assert cli.main(["evaluate", "--pred", str(scored_set / "pred"), "--gt", str(scored_set / "gt"), "--out",
                     str(out)]) == 0
    for name in ("report.md", "metrics.csv", "per_scan.csv", "pr_curves.png", "roc_curves.png", "summary.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["n_scans"] == 3 and summary["n_normal"] == 1 and summary["pooling"] == "exact"
    keys = {"pixel_ap", "pixel_ap_per_scan", "pixel_auroc", "dice_at_threshold", "best_dice", "object_recall",
            "object_precision", "fp_objects_per_scan", "fp_objects_per_normal_scan", "sample_ap", "fpr_at_95tpr"}
    assert set(summary["maps"]) == set(DEFAULT_MAPS) - {"combined"}  # what score wrote (gradient maps only when asked;
    # no combined map: the test model's card defines none)
    for entry in summary["maps"].values():
        assert keys <= set(entry)
        assert 0.0 <= entry["pixel_ap"] <= 1.0 and 0.0 <= entry["pixel_auroc"] <= 1.0
    # the lesions are the brightest voxels: the intensity baseline separates them perfectly
    assert summary["baselines"]["intensity"]["pixel_auroc"] == pytest.approx(1.0)
    # per-scan equalisation maps every scan's brightest voxels to 1, also in the normal scan: close, not perfect
    assert 0.99 < summary["baselines"]["histeq"]["pixel_auroc"] < 1.0
    # a subsampled run estimates the same AUROC and says that it subsampled
    sub = cli.main(["evaluate", "--pred", str(scored_set / "pred"), "--gt", str(scored_set / "gt"), "--out",
                    str(tmp_path / "sub"), "--max-negatives-per-scan", "3000"])
    assert sub == 0
    s2 = json.loads((tmp_path / "sub" / "summary.json").read_text(encoding="utf-8"))
    assert "subsampled" in s2["pooling"]
    assert s2["maps"]["residual"]["pixel_auroc"] == pytest.approx(summary["maps"]["residual"]["pixel_auroc"],
                                                                  abs=0.05)


def test_evaluate_errors_are_clear(scored_set, tmp_path, capsys):
    gt = tmp_path / "gt"
    gt.mkdir()
    assert cli.main(["evaluate", "--pred", str(scored_set / "pred"), "--gt", str(gt)]) == 2
    assert "no ground truth for case0" in capsys.readouterr().err
    for i in range(3):
        nib.save(nib.Nifti1Image(np.zeros((36, 40, 11), np.uint8), np.diag([1.0, 1.0, 2.5, 1.0])),
                 str(gt / f"case{i}.nii.gz"))
    assert cli.main(["evaluate", "--pred", str(scored_set / "pred"), "--gt", str(gt)]) == 2
    err = capsys.readouterr().err
    assert "does not match" in err and "Traceback" not in err
    assert str(gt / "case0.nii.gz") in err  # the mismatched ground-truth file is named


def test_mood_pixel_and_sample_outputs(tmp_path, tiny_model_dir):
    from napari_uad.io import write_image_file
    from napari_uad.model_card import ModelCard

    from .conftest import head_phantom, make_tiny_model

    model_dir = tmp_path / "model"
    make_tiny_model(model_dir)
    card = ModelCard.read(model_dir / "card.json")
    levels = [0.0, 0.5, 0.9, 0.99, 1.0]
    card.calibration = {"levels": levels, "detection_map": "residual",
                        "maps": {"residual": {"quantiles": [0.0, 0.3, 0.8, 1.5, 4.0], "threshold": 1.0}}}
    card.write(model_dir)
    (tmp_path / "in").mkdir()
    data = head_phantom((36, 40, 12))
    write_image_file(tmp_path / "in" / "toy_1.nii.gz", data, np.diag([1.0, 1.0, 2.0, 1.0]))
    assert cli.main(["score", "--mood-pixel", str(tmp_path / "in"), str(tmp_path / "pix"), "--model",
                     str(model_dir)]) == 0
    assert cli.main(["score", "--mood-sample", str(tmp_path / "in"), str(tmp_path / "smp"), "--model",
                     str(model_dir)]) == 0
    img = nib.load(str(tmp_path / "pix" / "toy_1.nii.gz"))
    pix = np.asarray(img.dataobj)
    assert img.shape == data.shape and pix.min() >= 0.0 and pix.max() <= 1.0 and pix.max() > 0
    value = float((tmp_path / "smp" / "toy_1.nii.gz.txt").read_text(encoding="utf-8"))
    assert 0.0 <= value <= 1.0
    # a model without calibration cannot produce MOOD maps: clear error
    assert cli.main(["score", "--mood-pixel", str(tmp_path / "in"), str(tmp_path / "x"), "--model",
                     str(tiny_model_dir)]) == 2
