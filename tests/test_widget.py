"""The "Anomaly review" widget through a real napari viewer (needs a display; Xvfb is started by conftest)."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest

pytestmark = pytest.mark.gui
if not os.environ.get("DISPLAY"):
    pytest.skip("no display (install Xvfb)", allow_module_level=True)
napari = pytest.importorskip("napari")

from napari_uad._reader import get_reader  # noqa: E402
from napari_uad._widget_parts.findings_panel import TABLE_COLUMNS  # noqa: E402
from napari_uad.export import FINDINGS_COLUMNS  # noqa: E402
from napari_uad.io import write_image_file  # noqa: E402

from .conftest import head_phantom  # noqa: E402
from .test_io import affine_for  # noqa: E402


@pytest.fixture(autouse=True)
def private_home(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_UAD_HOME", str(tmp_path / "home"))


@pytest.fixture
def scan_path(tmp_path):
    return write_image_file(tmp_path / "phantom.nrrd", head_phantom((40, 44, 14)), affine_for("aniso"))


def open_scan(viewer, path):
    layers = get_reader(str(path))(str(path))
    for data, kwargs, kind in layers:
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    return viewer.layers[-1]


@pytest.fixture
def widget(make_napari_viewer, tiny_model_dir):
    from napari_uad._widget import AnomalyReviewWidget

    viewer = make_napari_viewer()
    w = AnomalyReviewWidget(viewer)
    viewer.window.add_dock_widget(w, name="Anomaly review")
    w.add_model(str(tiny_model_dir))
    w.device_selector.setCurrentText("cpu")
    return w


def score(qtbot, widget):
    with qtbot.waitSignal(widget.scoring_finished, timeout=60_000) as blocker:
        widget.score_button.click()
    return blocker.args[0]


def test_widgets_have_stable_object_names(widget):
    from qtpy.QtWidgets import QWidget

    for name in ("model_selector", "device_selector", "map_selector", "score_button", "threshold_slider",
                 "min_volume_spinbox", "findings_table", "export_button"):
        assert widget.findChild(QWidget, name) is not None, name
    import torch

    devices = [widget.device_selector.itemText(i) for i in range(widget.device_selector.count())]
    assert "cpu" in devices and ("cuda" in devices) == torch.cuda.is_available()


def test_score_threshold_tag_export(qtbot, widget, scan_path, tmp_path):
    viewer = widget.viewer
    image = open_scan(viewer, scan_path)
    widget.gradient_toggle.setChecked(True)  # the slow gradient maps only when asked
    assert score(qtbot, widget) is True
    names = [layer.name for layer in viewer.layers]
    for m in ("residual", "U", "E", "kl_grad", "combi", "nll"):
        assert f"phantom {m}" in names
        np.testing.assert_allclose(viewer.layers[f"phantom {m}"].scale, image.scale)
        np.testing.assert_allclose(viewer.layers[f"phantom {m}"].translate, image.translate)
    visible = [m for m in ("residual", "U", "E", "nll", "kl_grad", "elbo_grad", "combi")
               if viewer.layers[f"phantom {m}"].visible]
    assert visible == [widget.map_selector.currentText()]
    labels = viewer.layers["phantom findings"]
    # before the slider moves, the threshold is exactly the card's (as `napari-uad score` uses it)
    assert widget.threshold == widget.scan.default_threshold(widget.map_selector.currentText())

    # moving the threshold changes the findings table and the labels layer
    slider = widget.threshold_slider
    counts = {}
    for position in (slider.maximum() // 10, slider.maximum() // 2):
        slider.setValue(position)
        widget.update_findings()
        counts[position] = (widget.findings_table.rowCount(), int(labels.data.max()), int((labels.data > 0).sum()))
    low, high = counts.values()
    assert low[0] == low[1] and high[0] == high[1]
    assert low[2] > high[2]

    found = {}
    for position in range(0, slider.maximum(), 25):  # the setting with most findings, to have some to tag
        slider.setValue(position)
        widget.update_findings()
        found[position] = widget.findings_table.rowCount()
    slider.setValue(max(found, key=found.get))
    widget.update_findings()
    n = widget.findings_table.rowCount()
    assert n >= 3
    # each row shows its own finding's values under the right headers (tag and signal first, positions last)
    cell = {c: widget.findings_table.item(0, TABLE_COLUMNS.index(c)).text() for c in TABLE_COLUMNS}
    first = widget.view.findings[0]
    assert (cell["id"], cell["tag"], cell["signal"]) == (str(first.finding_id), "unreviewed", first.signal)
    assert (cell["volume mm³"], cell["x mm"]) == (f"{first.volume_mm3:.1f}", f"{first.centroid_xyz_mm[0]:.1f}")
    # tag two findings with the keyboard shortcuts (T = TP, then F = FP), moving on after each
    widget.select_finding(0)
    viewer.window._qt_viewer.canvas.native.setFocus()
    qtbot.keyClick(viewer.window._qt_viewer.canvas.native, "t")
    qtbot.keyClick(viewer.window._qt_viewer.canvas.native, "f")
    assert widget.review.reviews[1]["tag"] == "TP" and widget.review.reviews[2]["tag"] == "FP"
    assert widget.review.path.is_file()  # autosaved
    widget.select_finding(1)
    widget.category_selector.setCurrentText("imaging artefact")
    widget._edit_current(category="imaging artefact")

    out = tmp_path / "reviewed.csv"
    widget.export_csv(out)
    with open(out, newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == FINDINGS_COLUMNS
        rows = list(reader)
    assert len(rows) == n
    assert rows[0]["tag"] == "TP" and rows[1]["tag"] == "FP" and rows[1]["category"] == "imaging artefact"
    assert rows[2]["tag"] == "unreviewed" and rows[0]["reviewed_at"].endswith("Z")
    for row in rows:
        fid = int(row["finding_id"])
        voxels = np.argwhere(labels.data == fid)  # display-order voxel indices of the labels layer
        world = np.array([labels.data_to_world(v) for v in voxels]).mean(axis=0)  # napari world (z, y, x)
        np.testing.assert_allclose([float(row["centroid_z_mm"]), float(row["centroid_y_mm"]),
                                    float(row["centroid_x_mm"])], world, atol=1e-3)
        assert row["model_name"] == "tiny-test" and row["scan_path"].endswith("phantom.nrrd")
    # the same review as a 3D Slicer segmentation + markups, readable back with the tags
    from napari_uad.interop.slicer import read_segmentation_findings

    seg, mrk = widget.export_slicer(tmp_path / "reviewed.seg.nrrd")
    _, _, fields = read_segmentation_findings(seg)
    assert fields[1]["tag"] == "TP" and fields[2]["tag"] == "FP" and fields[2]["category"] == "imaging artefact"
    assert mrk.name == "reviewed.mrk.json" and mrk.is_file()


def test_cancel_leaves_no_layers(qtbot, widget, scan_path, monkeypatch):
    viewer = widget.viewer
    open_scan(viewer, scan_path)
    n_layers = len(viewer.layers)
    from napari_uad import scoring

    original = scoring.Scorer.iter_score

    def slow(self, *args, **kwargs):  # one slice per batch and a pause, so there is time to cancel
        import time

        self.requested_batch_size = 1
        gen = original(self, *args, **kwargs)
        try:
            step = next(gen)
            while True:
                time.sleep(0.05)
                yield step
                step = gen.send(None)
        except StopIteration as stop:
            return stop.value

    monkeypatch.setattr(scoring.Scorer, "iter_score", slow)
    with qtbot.waitSignal(widget.scoring_finished, timeout=60_000) as blocker:
        widget.score_button.click()
        qtbot.waitUntil(lambda: widget.progress_bar.value() >= 2, timeout=20_000)
        assert widget.score_button.text() == "Cancel"
        widget.score_button.click()
    assert blocker.args[0] is False
    assert len(viewer.layers) == n_layers
    assert widget.score_button.text() == "Score anomalies"


def test_review_session_restores_after_viewer_closed(qtbot, make_napari_viewer, tiny_model_dir, scan_path):
    from napari_uad._widget import AnomalyReviewWidget

    def session():
        viewer = make_napari_viewer()
        w = AnomalyReviewWidget(viewer)
        w.add_model(str(tiny_model_dir))
        open_scan(viewer, scan_path)
        assert score(qtbot, w)
        return viewer, w

    viewer, w = session()
    w.reviewer_edit.setText("dr. test")
    w.reviewer_edit.editingFinished.emit()
    w.select_finding(0)
    w.tag_current("uncertain", advance=False)
    w.note_edit.setText("check on follow-up")
    w.note_edit.editingFinished.emit()
    viewer.close()

    viewer2, w2 = session()
    assert w2.reviewer_edit.text() == "dr. test"  # remembered between sessions
    assert w2.restore_button.isVisible() or not w2.restore_button.isHidden()
    w2.restore_review()
    first = w2.view.findings[0].finding_id
    assert w2.review.reviews[first]["tag"] == "uncertain"
    assert w2.review.reviews[first]["note"] == "check on follow-up"
    assert w2.findings_table.item(0, TABLE_COLUMNS.index("tag")).text() == "uncertain"


@pytest.mark.parametrize("kind", ["RAS", "LPS", "permuted", "aniso"])
@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_reader_keeps_scale_and_orientation(make_napari_viewer, tmp_path, kind, suffix):
    from .test_io import marker_volume, save_as

    data, marker = marker_volume()
    affine = affine_for(kind)
    path = save_as(tmp_path / f"scan{suffix}", data, affine)
    viewer = make_napari_viewer()
    layer = open_scan(viewer, path)
    expected_world = affine[:3, :3] @ np.array(marker) + affine[:3, 3]  # RAS mm
    bright = np.unravel_index(np.argmax(layer.data), layer.data.shape)
    np.testing.assert_allclose(layer.data_to_world(bright), expected_world[::-1], atol=1e-4)
    assert sorted(layer.scale) == sorted(np.sqrt((affine[:3, :3] ** 2).sum(0)))


def test_writer_round_trip_in_source_grid(make_napari_viewer, tmp_path):
    import nibabel as nib

    from napari_uad._writer import write_labels

    from .test_io import marker_volume, save_as

    data, marker = marker_volume()
    path = save_as(tmp_path / "scan.nrrd", data, affine_for("permuted"))
    viewer = make_napari_viewer()
    layer = open_scan(viewer, path)
    labels = (layer.data > 500).astype(np.uint16)
    out = write_labels(str(tmp_path / "labels.nii.gz"), labels, {"metadata": layer.metadata,
                                                                  "scale": layer.scale,
                                                                  "translate": layer.translate})
    img = nib.load(out[0])
    assert img.shape == data.shape
    np.testing.assert_allclose(img.affine, affine_for("permuted"), atol=1e-5)
    assert tuple(np.argwhere(np.asarray(img.dataobj) > 0)[0]) == marker


def test_sample_data_opens_with_ground_truth(make_napari_viewer):
    from napari_uad._sample_data import sample_brain

    viewer = make_napari_viewer()
    for data, kwargs, kind in sample_brain():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    scan, truth = viewer.layers
    assert scan.data.shape == truth.data.shape and truth.data.max() == 1
    np.testing.assert_allclose(scan.scale, [1, 1, 1])


def test_brain_mask_layer_skull_strip_choice_and_ood_banner(qtbot, widget, scan_path, tmp_path):
    """The brain mask is shown as an outline layer on the scan's grid; the skull-strip choice reaches the
    scorer; a scan outside the card's calibration reference gets a visible banner, a normal one none."""
    viewer = widget.viewer
    image = open_scan(viewer, scan_path)
    widget.skull_strip_selector.setCurrentText("off")
    assert score(qtbot, widget) is True
    mask_layer = viewer.layers["phantom brain mask"]
    np.testing.assert_allclose(mask_layer.scale, image.scale)
    assert mask_layer.data.shape == image.data.shape and mask_layer.contour == 1
    assert widget.scan.result.preprocessing[0]["settings"]["mode"] == "off"
    # without the gradient toggle only the fast maps are computed, listed and shown
    from napari_uad.scoring import default_maps

    assert list(widget.scan.result.maps) == list(default_maps(widget.scan.card))
    assert [widget.map_selector.itemText(i) for i in range(widget.map_selector.count())] == list(widget.scan.result.maps)
    assert "phantom kl_grad" not in viewer.layers
    assert widget.ood_banner.isHidden() and widget.scan.warnings == []

    # the same scan against a card whose healthy brains were ten times larger: the banner speaks
    _add_edited_model(widget, tmp_path / "big-brains",
                      lambda card: card.calibration.update(ood={"brain_volume_ml": [1000.0, 1500.0]}))
    assert score(qtbot, widget) is True
    assert widget.scan.card.path == tmp_path / "big-brains" and not widget.ood_banner.isHidden()
    assert "differs from the model's training data" in widget.ood_banner.text()
    assert "brain volume" in widget.ood_banner.text()
    viewer.window._qt_window.grab().save(str(tmp_path / "banner.png"))


def test_contrast_enhanced_scan_gets_the_banner(qtbot, widget, tmp_path):
    """A scan opened through the reader whose BIDS name says it is contrast-enhanced: the fact survives the
    layer and the banner names it (the same phantom without it is quiet: test above)."""
    path = write_image_file(tmp_path / "sub-01_ce-gd_T1w.nii.gz", head_phantom((40, 44, 14)), affine_for("aniso"))
    open_scan(widget.viewer, path)
    widget.skull_strip_selector.setCurrentText("off")
    assert score(qtbot, widget) is True
    banner = widget.ood_banner
    assert not banner.isHidden() and "contrast-enhanced scan (agent: gd)" in banner.text()
    # on a short window every control keeps the height it needs and the whole warning is readable: the dock
    # scrolls instead of squeezing them
    window = widget.viewer.window._qt_window
    window.show()
    window.resize(1000, 650)
    qtbot.waitExposed(window)
    qtbot.wait(200)
    controls = [banner, widget.image_selector, widget.model_selector, widget.score_button, widget.threshold_slider,
                widget.export_button]
    assert all(c.height() >= c.minimumSizeHint().height() for c in controls), [
        (c.objectName(), c.height(), c.minimumSizeHint().height()) for c in controls]
    assert banner.height() >= banner.heightForWidth(banner.width())
    widget.viewer.window._qt_window.grab().save(str(tmp_path / "contrast-banner.png"))


def test_heatmap_colours_raw_and_as_healthy_quantiles(qtbot, widget, scan_path, tmp_path):
    """With a calibrated card the detection map is shown black up to the healthy 99th percentile and bright from
    the detection threshold; the quantile toggle shows every map as healthy-voxel quantiles on the same range, only
    the detection map visible, and switching back restores the raw map."""
    levels = [0.0, 0.5, 0.99, 1.0]

    def calibrated(card):
        for name in ("residual", "signed_residual", "U", "E", "z", "nll", "tissue"):
            card.calibration.setdefault("maps", {}).setdefault(name, {}).update(quantiles=[0.0, 0.05, 0.3, 2.0])
        card.calibration["levels"] = levels
        card.calibration["maps"]["residual"].update(threshold=0.8, threshold_fpr_1pct=0.3)

    _add_edited_model(widget, tmp_path / "calibrated", calibrated)
    open_scan(widget.viewer, scan_path)
    assert score(qtbot, widget) is True and widget.scan.has_calibration
    layer = widget.viewer.layers["phantom residual"]
    raw = widget.scan.result.maps["residual"]
    low, high = layer.contrast_limits
    # the lesion makes the scan's 99.9th percentile the top, above the threshold
    assert low == 0.3 and high == pytest.approx(np.quantile(raw[widget.scan.result.mask].astype(np.float64), 0.999))
    assert high > 0.8
    widget.calibrated_toggle.setChecked(True)
    assert tuple(layer.contrast_limits) == (0.99, 1.0) and layer.visible
    assert 0.0 <= layer.data.min() and layer.data.max() <= 1.0 and layer.data.max() > 0.99  # the lesion
    assert not widget.viewer.layers["phantom nll"].visible
    widget.calibrated_toggle.setChecked(False)
    np.testing.assert_array_equal(layer.data, raw.transpose(2, 1, 0))
    assert tuple(layer.contrast_limits) == (low, high)


def _add_edited_model(widget, directory, edit) -> None:
    """The widget's current model with ``edit(card)`` applied, written (card + weights) to ``directory`` and
    added to the widget's model list (selected)."""
    import shutil

    from napari_uad.model_card import ModelCard

    card_path = widget.model_selector.currentData()
    card = ModelCard.read(card_path if str(card_path).endswith(".json") else f"{card_path}/card.json")
    edit(card)
    directory.mkdir()
    card.write(directory)
    shutil.copy(f"{card.path}/{card.weights_file}", directory / card.weights_file)
    widget.add_model(str(directory))


def test_threshold_label_says_what_the_setting_meant_on_validation(qtbot, widget, scan_path, tmp_path):
    """With a card that carries its operating-point table, the label under the slider tells the reviewer the
    validation false findings per normal scan and the share of lesions found for the current setting; moving
    below every tabulated setting drops that line rather than guessing."""
    table = [{"threshold": 0.5, "min_volume_mm3": 0.0, "fp_objects_per_normal_scan": 6.0, "object_recall": 0.9},
             {"threshold": 1.0, "min_volume_mm3": 0.0, "fp_objects_per_normal_scan": 0.8, "object_recall": 0.25}]
    _add_edited_model(widget, tmp_path / "with-table",
                      lambda card: card.calibration.update(operating_point={"table": table},
                                                           validation_set="8 healthy + 8 synthetic heads"))
    open_scan(widget.viewer, scan_path)
    assert score(qtbot, widget) is True
    widget.map_selector.setCurrentText("residual")
    widget.update_findings()
    assert widget.threshold == 1.0
    text = widget.threshold_label.text()
    assert "on synthetic validation scans (≥ 1, ≥ 0 mm³): 0.8 false findings per normal scan, 25% of lesions found" in text
    assert widget.threshold_label.toolTip() == "Validation set of the model card: 8 healthy + 8 synthetic heads"
    widget.threshold_slider.setValue(0)
    widget.update_findings()
    assert "false findings" not in widget.threshold_label.text() and not widget.threshold_label.toolTip()


def test_a_scan_of_a_contrast_with_its_own_operating_point_opens_at_that_point(qtbot, widget, scan_path, tmp_path,
                                                                              monkeypatch):
    """A card with a T2 operating point: a scan recognised as T2 opens with the slider, minimum volume and
    validation line of that point (as `napari-uad score` finds), not the pooled ones."""
    from napari_uad.scoring import Scorer

    own = {"threshold": 1.5, "min_volume_mm3": 30.0, "min_thickness_mm": 2.5,
           "table": [{"threshold": 1.5, "min_volume_mm3": 30.0, "fp_objects_per_normal_scan": 0.5,
                      "object_recall": 0.4}]}
    _add_edited_model(widget, tmp_path / "per-contrast",
                      lambda card: card.calibration.update(operating_point={"by_contrast": {"bright_fluid": own}},
                                                           validation_set="8 synthetic heads"))
    iter_score = Scorer.iter_score

    def as_t2(self, *args, **kwargs):  # the tiny model has no template space: say the tissue fit found T2
        result = yield from iter_score(self, *args, **kwargs)
        result.contrast = result.settings = "bright_fluid"
        return result

    monkeypatch.setattr(Scorer, "iter_score", as_t2)
    open_scan(widget.viewer, scan_path)
    assert score(qtbot, widget) is True
    widget.map_selector.setCurrentText("residual")
    widget.update_findings()
    assert widget.threshold == 1.5 and widget.findings_panel.min_volume_spinbox.value() == 30.0
    assert widget.findings_panel.min_thickness_spinbox.value() == 2.5 and widget.view.min_thickness_mm == 2.5
    assert widget.scan.review_key(widget.view).min_thickness_mm == 2.5
    thin = {f.finding_id for f in widget.view.findings}
    widget.findings_panel.min_thickness_spinbox.setValue(0.0)
    widget.update_findings()
    assert widget.view.min_thickness_mm == 0.0 and len(widget.view.findings) >= len(thin)
    assert widget.scoring_panel.progress_label.text().endswith("; read as T2/PD-weighted (bright fluid)")
    text = widget.threshold_label.text()
    assert ("synthetic validation scans, T2/PD-weighted (bright fluid) like this scan (≥ 1.5, ≥ 30 mm³, thickness ≥ 2.5 "
            "mm): 0.5 false findings") in text


def test_a_declared_sequence_opens_at_the_cards_point_for_it(qtbot, widget, scan_path, tmp_path):
    """Choosing the scan's sequence (FLAIR) where the card has settings for it: the slider, minimum volume and
    validation line are that sequence's point (its table counted on dark-fluid validation scans, as the card
    says), and the status line says the sequence was declared and its settings used; auto declares nothing."""
    own = {"threshold": 1.25, "min_volume_mm3": 40.0, "table_contrast": "dark_fluid",
           "table": [{"threshold": 1.25, "min_volume_mm3": 40.0, "fp_objects_per_normal_scan": 0.25,
                      "object_recall": 0.3}]}
    _add_edited_model(widget, tmp_path / "per-sequence",
                      lambda card: card.calibration.update(operating_point={"by_contrast": {"flair": own}},
                                                           validation_set="8 synthetic heads"))
    open_scan(widget.viewer, scan_path)
    assert widget.scoring_panel.sequence_selector.currentText() == "auto"
    widget.scoring_panel.sequence_selector.setCurrentText("FLAIR")
    assert score(qtbot, widget) is True
    widget.map_selector.setCurrentText("residual")
    widget.update_findings()
    assert widget.threshold == 1.25 and widget.findings_panel.min_volume_spinbox.value() == 40.0
    assert widget.scan.result.settings == "flair"
    assert widget.scoring_panel.progress_label.text().endswith("; declared FLAIR (chosen in the widget): FLAIR "
                                                               "settings")
    assert "T1/FLAIR-like (dark fluid) like this scan (≥ 1.25, ≥ 40 mm³): 0.2 false findings" in \
        widget.threshold_label.text()
    widget.scoring_panel.sequence_selector.setCurrentText("auto")
    assert score(qtbot, widget) is True
    assert widget.scan.result.sequence is None and widget.threshold != 1.25


def test_cohort_worklist_review_next_scan_resume_and_export(qtbot, make_napari_viewer, tiny_model_dir, tmp_path):
    """A cohort.csv opens as a ranked worklist: each scan with its precomputed maps and findings (no rescoring),
    tags saved as they happen, next scan replaces the previous one's layers, a new session resumes where the
    reviewer stopped, and all reviewed findings export to one CSV."""
    from napari_uad import cli
    from napari_uad._widget import AnomalyReviewWidget

    scans = tmp_path / "scans_in"
    scans.mkdir()
    for i in range(3):
        write_image_file(scans / f"case{i}.nii.gz", head_phantom((40, 44, 14), seed=i), affine_for("aniso"))
    out = tmp_path / "cohort"
    assert cli.main(["cohort", str(scans), "--out", str(out), "--model", str(tiny_model_dir), "--workers", "1",
                     "--device", "cpu", "--quiet", "--maps", "residual,nll", "--threshold", "0.8"]) == 0
    with open(out / "cohort.csv", newline="") as fh:
        ranked = list(csv.DictReader(fh))

    viewer = make_napari_viewer()
    w = AnomalyReviewWidget(viewer)
    w.worklist_panel.open_worklist(out / "cohort.csv")
    first = ranked[0]["id"]
    assert w.image_layer.name == first and f"{first} residual" in viewer.layers
    assert w.findings_table.rowCount() == int(ranked[0]["n_findings"]) > 0
    assert w.worklist_panel.table.rowCount() == 3
    assert w.worklist_panel.table.item(0, 2).text() == "in review"
    for _ in range(w.findings_table.rowCount()):
        w.tag_current("TP")
    assert w.worklist_panel.table.item(0, 2).text() == "done"
    w.worklist_panel.next_scan_button.click()
    second = ranked[1]["id"]
    assert w.image_layer.name == second and not [lyr for lyr in viewer.layers if lyr.name.startswith(first)]
    viewer.close()

    viewer2 = make_napari_viewer()  # napari restarted: the worklist resumes at the second scan
    w2 = AnomalyReviewWidget(viewer2)
    w2.worklist_panel.open_worklist(out)
    assert w2.image_layer.name == second
    assert [w2.worklist_panel.table.item(r, 2).text() for r in range(3)] == ["done", "in review", "not reviewed"]
    exported = w2.worklist_panel.export_all(tmp_path / "all_reviewed.csv")
    with open(exported, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == int(ranked[0]["n_findings"]) and all(r["tag"] == "TP" for r in rows)
    if os.environ.get("NAPARI_UAD_SCREENSHOTS"):
        viewer2.window.add_dock_widget(w2, name="Anomaly review")
        viewer2.screenshot(os.path.join(os.environ["NAPARI_UAD_SCREENSHOTS"], "worklist.png"), canvas_only=False)


def test_review_keys_work_with_the_focus_in_the_table_the_widget_or_the_canvas(qtbot, widget, scan_path):
    """Click a row, press T: tagged and on to the next; N / P / J move between findings; a text field keeps its
    letters. Real key events, sent to whatever has the focus."""
    from qtpy.QtCore import Qt

    viewer = widget.viewer
    viewer.window.add_dock_widget(widget, name="Anomaly review")
    open_scan(viewer, scan_path)
    assert score(qtbot, widget) is True
    slider = widget.threshold_slider
    counts = {}
    for position in range(0, slider.maximum(), 25):  # the setting with most findings, to have some to move over
        slider.setValue(position)
        widget.update_findings()
        counts[position] = widget.findings_table.rowCount()
    slider.setValue(max(counts, key=counts.get))
    widget.update_findings()
    table = widget.findings_table
    assert table.rowCount() >= 3
    viewer.window._qt_window.show()
    table.setFocus()
    qtbot.mouseClick(table.viewport(), Qt.MouseButton.LeftButton,
                     pos=table.visualRect(table.model().index(0, 0)).center())
    assert widget.current_row == 0
    qtbot.keyClick(table, Qt.Key.Key_T)
    first = widget.view.findings[0].finding_id
    assert widget.review.reviews[first]["tag"] == "TP" and widget.current_row == 1
    qtbot.keyClick(table, Qt.Key.Key_N)
    assert widget.current_row == 2
    qtbot.keyClick(table, Qt.Key.Key_P)
    assert widget.current_row == 1
    qtbot.keyClick(widget.threshold_slider, Qt.Key.Key_F)  # focus elsewhere in the widget
    assert widget.review.reviews[widget.view.findings[1].finding_id]["tag"] == "FP" and widget.current_row == 2
    qtbot.keyClick(widget.note_edit, Qt.Key.Key_U)  # typing a note: a letter, not a tag
    assert widget.note_edit.text() == "u" and widget.view.findings[2].finding_id not in widget.review.reviews
    canvas = viewer.window._qt_viewer.canvas.native
    qtbot.keyClick(canvas, Qt.Key.Key_U)  # on the canvas: napari's key binding
    assert widget.review.reviews[widget.view.findings[2].finding_id]["tag"] == "uncertain"


REVIEW_CHILD = r"""
import sys, time
import numpy as np
from qtpy.QtWidgets import QApplication
import napari
from napari_uad._widget import AnomalyReviewWidget
from napari_uad._reader import get_reader

scan, model = sys.argv[1], sys.argv[2]
viewer = napari.Viewer(show=False)
for data, kwargs, kind in get_reader(scan)(scan):
    getattr(viewer, f"add_{kind}")(data, **kwargs)
w = AnomalyReviewWidget(viewer)
w.add_model(model)
w.device_selector.setCurrentText("cpu")
done = []
w.scoring_finished.connect(done.append)
w.start_scoring()
while not done:
    QApplication.processEvents()
    time.sleep(0.01)
counts = {}
for position in range(0, w.threshold_slider.maximum(), 25):
    w.threshold_slider.setValue(position)
    w.update_findings()
    counts[position] = len(w.view.findings)
w.threshold_slider.setValue(max(counts, key=counts.get))
w.update_findings()
w.tag_current("TP")
w.tag_current("FP")
print("TAGGED", w.review.path, [f.finding_id for f in w.view.findings[:2]], flush=True)
while True:  # mid-review: the parent kills this process now
    QApplication.processEvents()
    time.sleep(0.05)
"""


def test_kill_9_mid_review_loses_no_tag(tmp_path, tiny_model_dir, scan_path):
    """napari killed with SIGKILL right after two tags: both are on disk, in a session a restart restores."""
    import json
    import signal
    import subprocess
    import sys

    env = {**os.environ, "NAPARI_UAD_HOME": str(tmp_path / "home")}
    proc = subprocess.Popen([sys.executable, "-c", REVIEW_CHILD, str(scan_path), str(tiny_model_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    line = ""
    for line in proc.stdout:
        if line.startswith("TAGGED"):
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert line.startswith("TAGGED"), "the child never got to review"
    _, path, ids = line.split(" ", 2)
    first, second = json.loads(ids)
    saved = json.loads(open(path.strip()).read())["reviews"]
    assert saved[str(first)]["tag"] == "TP" and saved[str(second)]["tag"] == "FP"


def test_median_filtered_detection_map_is_shown_and_labelled(qtbot, widget, scan_path, tmp_path):
    """A card with a median filter on its detection map: the layer shows the filtered map (what the findings
    threshold) and says so in its metadata; the other maps' layers do not."""
    import dataclasses

    def with_median(card):
        card.scoring = dataclasses.replace(card.scoring, detection_median_mm=3.0)

    _add_edited_model(widget, tmp_path / "median", with_median)
    open_scan(widget.viewer, scan_path)
    assert score(qtbot, widget) is True
    layers = {layer.metadata.get("napari_uad_map"): layer for layer in widget.viewer.layers
              if "napari_uad_map" in layer.metadata}
    post = layers["residual"].metadata["napari_uad_postprocessing"]
    assert post["map"] == "residual" and post["median_filter_mm"] == 3.0
    assert all("napari_uad_postprocessing" not in layer.metadata for name, layer in layers.items() if name != "residual")
