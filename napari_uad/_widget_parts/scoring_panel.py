"""Scoring panel: which image, model, device and brain extraction; Score/Cancel in a worker thread; progress and
the out-of-distribution banner. Emits ``scored`` with the ScoredScan; no display or review here."""

from __future__ import annotations

import math
from pathlib import Path

from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..devices import available_devices
from ..display import CT_WINDOWS, contrast_limits, volume_from_layer, window_limits
from ..model_card import ModelError, list_models, load_model
from ..ood import UNRELIABLE, check_input, check_score
from ..preprocessing import SKULL_STRIP_MODES, PipelineOptions
from ..scoring import GRADIENT_MAPS, MAP_NAMES, Scorer, default_maps
from ..sequence import AUTO, SEQUENCES, parse_sequence
from ..session import ScoredScan
from ..tissue import CONTRASTS

__all__ = ["ScoringPanel", "BROWSE"]

BROWSE = "Browse for card.json…"


class ScoringPanel(QWidget):
    """``scored(layer, ScoredScan)`` when a run finishes; ``finished(False)`` when it is cancelled or fails."""

    scored = Signal(object, object)
    finished = Signal(bool)

    def __init__(self, viewer, notify):
        super().__init__()
        self.viewer = viewer
        self.notify = notify
        self._worker = None
        self._cancelled = False
        self._layer = None
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        form = QFormLayout()
        self.image_selector = QComboBox(objectName="image_selector")
        form.addRow("Image", self.image_selector)
        self.model_selector = QComboBox(objectName="model_selector")
        for name, path in list_models().items():
            self.model_selector.addItem(name, str(path))
        self.model_selector.addItem(BROWSE, None)
        self.model_selector.activated.connect(self._on_model_activated)
        form.addRow("Model", self.model_selector)
        self.device_selector = QComboBox(objectName="device_selector")
        self.device_selector.addItems(["auto"] + available_devices())
        form.addRow("Device", self.device_selector)
        self.skull_strip_selector = QComboBox(objectName="skull_strip_selector")
        self.skull_strip_selector.addItems(SKULL_STRIP_MODES)
        self.skull_strip_selector.setToolTip("Brain extraction: auto = only scans that still have skull and scalp; "
                                             "on = always; off = the scan's foreground is the brain")
        form.addRow("Skull strip", self.skull_strip_selector)
        self.sequence_selector = QComboBox(objectName="sequence_selector")
        self.sequence_selector.addItems([AUTO, *SEQUENCES.values()])
        self.sequence_selector.setToolTip("MR sequence: the model's settings for it apply where its card has some; "
                                          "auto = what the file declares (DICOM header, BIDS name), else what the "
                                          "scan's contrast reads as")
        form.addRow("Sequence", self.sequence_selector)
        self.window_selector = QComboBox(objectName="window_selector")
        self.window_selector.addItems(["MR (percentiles)"] + [f"CT {name}" for name in CT_WINDOWS])
        self.window_selector.setToolTip("Display window of the image; CT presets as level/width in HU")
        self.window_selector.activated.connect(self._on_window_selected)
        form.addRow("Window", self.window_selector)
        layout.addLayout(form)
        self.gradient_toggle = QCheckBox("Also gradient maps (KL-grad, ELBO-grad, combi; slow)",
                                         objectName="gradient_toggle")
        layout.addWidget(self.gradient_toggle)
        self.score_button = QPushButton("Score anomalies", objectName="score_button")
        self.score_button.clicked.connect(self._on_score_clicked)
        layout.addWidget(self.score_button)
        self.progress_bar = QProgressBar(objectName="progress_bar")
        self.progress_bar.setFormat("%p%")
        self.progress_label = QLabel("", objectName="progress_label")
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.progress_label)
        self.ood_banner = QLabel("", objectName="ood_banner")
        self.ood_banner.setWordWrap(True)
        self.ood_banner.setStyleSheet("background-color: #b03a2e; color: white; padding: 6px; font-weight: bold;")
        self.ood_banner.setVisible(False)
        layout.addWidget(self.ood_banner)

    # -- choices -----------------------------------------------------------------------------------------------
    def refresh_image_layers(self, event=None) -> None:
        from napari.layers import Image

        current = self.image_selector.currentText()
        names = [layer.name for layer in self.viewer.layers if isinstance(layer, Image) and layer.ndim == 3
                 and "napari_uad_map" not in layer.metadata]
        self.image_selector.clear()
        self.image_selector.addItems(names)
        if current in names:
            self.image_selector.setCurrentText(current)

    def _on_window_selected(self, index: int) -> None:
        """Apply a display window to the chosen image layer (CT presets, or robust MR percentiles)."""
        name = self.image_selector.currentText()
        if not name:
            return
        layer = self.viewer.layers[name]
        text = self.window_selector.itemText(index)
        if text.startswith("CT "):
            layer.contrast_limits = window_limits(*CT_WINDOWS[text[3:]])
        else:
            volume = volume_from_layer(layer.data, layer.metadata, layer.scale, layer.translate)
            volume.modality = "MR"
            layer.contrast_limits = contrast_limits(volume)

    def _on_model_activated(self, index: int) -> None:
        if self.model_selector.itemText(index) != BROWSE:
            return
        path, _ = QFileDialog.getOpenFileName(self, "Model card", str(Path.home()), "Model card (card.json)")
        if path:
            self.add_model(path)

    def add_model(self, path: str) -> None:
        """Add a model (directory or card.json) to the selector and select it."""
        p = Path(path)
        directory = p.parent if p.name.endswith(".json") else p
        self.model_selector.insertItem(self.model_selector.count() - 1, directory.name, str(directory))
        self.model_selector.setCurrentIndex(self.model_selector.count() - 2)

    # -- the run -----------------------------------------------------------------------------------------------
    @property
    def is_scoring(self) -> bool:
        return self._worker is not None

    def _on_score_clicked(self) -> None:
        if self.is_scoring:
            self.cancel_scoring()
        else:
            self.start_scoring()

    def start_scoring(self) -> None:
        from napari.qt.threading import create_worker

        name = self.image_selector.currentText()
        if not name:
            self.notify("Open a 3D scan first (File > Open, or File > Open Sample > napari-uad).")
            return
        ref = self.model_selector.currentData()
        if ref is None:
            self.notify("Choose a model (bundled, or browse to a card.json).")
            return
        layer = self.viewer.layers[name]
        try:
            volume = volume_from_layer(layer.data, layer.metadata, layer.scale, layer.translate)
            chosen = parse_sequence(self.sequence_selector.currentText())
            if chosen:
                volume.metadata.update(sequence=chosen, sequence_source="chosen in the widget")
            model, card = load_model(ref)
            scorer = Scorer(model, card, device=self.device_selector.currentText(),
                            options=PipelineOptions(skull_strip=self.skull_strip_selector.currentText()))
            input_warnings = check_input(volume, card)  # refuses a scan of another modality
        except (ModelError, ValueError) as err:
            self.notify(str(err))
            return
        self._layer = layer
        self._cancelled = False
        wanted = set(default_maps(card)) | {card.detection_map}
        if self.gradient_toggle.isChecked():
            wanted |= set(GRADIENT_MAPS)
        maps = tuple(m for m in MAP_NAMES if m in wanted)

        def run():
            result = yield from scorer.iter_score(volume, maps)
            found, _ = check_score(result, volume.voxel_volume_mm3, card, card.detection_map)
            warnings = input_warnings + found
            return ScoredScan(volume, result, card, warnings + [UNRELIABLE] if warnings else [])

        worker = create_worker(run, _progress={"desc": f"Scoring {name}"})
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(lambda scan, w=worker: self._on_returned(w, scan))
        worker.errored.connect(lambda err, w=worker: self._on_error(w, err))
        worker.finished.connect(lambda w=worker: self._on_worker_finished(w))
        self._worker = worker
        self.score_button.setText("Cancel")
        self.progress_bar.setValue(0)
        self.progress_label.setText("starting…")
        self.ood_banner.setVisible(False)
        worker.start()

    def cancel_scoring(self) -> None:
        if self._worker is not None:
            self._cancelled = True
            self._worker.quit()
            self.progress_label.setText("cancelling…")

    def _on_progress(self, step) -> None:
        if step.stage != "model":
            self.progress_bar.setValue(0)
            self.progress_label.setText(f"preprocessing: {step.stage.replace('_', ' ')}…")
            return
        self.progress_bar.setMaximum(max(1, step.total))
        self.progress_bar.setValue(step.done)
        eta = "" if step.eta_s is None else f", about {math.ceil(step.eta_s)} s left"
        self.progress_label.setText(f"{step.done}/{step.total} slices on {step.device}{eta}")
        pbar = getattr(self._worker, "pbar", None)
        if pbar is not None:
            pbar.total = step.total
            pbar.update(step.done - pbar.n)

    def _release(self, worker) -> bool:
        """The panel is free for the next run as soon as ``worker`` has a result (not only when its thread ends,
        which can come after the next click); True if ``worker`` was the current run."""
        if self._worker is not worker:
            return False
        self._worker = None
        self.score_button.setText("Score anomalies")
        return True

    def _on_returned(self, worker, scan: ScoredScan) -> None:
        if not self._release(worker):
            return
        if self._cancelled:
            self._show_cancelled()
            return
        result = scan.result
        contrast = CONTRASTS.get(result.contrast)  # what the scan's own tissue fit says it is
        declared = SEQUENCES.get(result.sequence)
        self.progress_label.setText(
            f"scored in {result.seconds['total']:.1f} s on {result.device}"
            + (f"; read as {contrast}" if contrast else "")
            + (f"; declared {declared} ({scan.volume.metadata.get('sequence_source', 'file')})" if declared else "")
            + (f": {declared} settings" if declared and result.settings == result.sequence else ""))
        self.scored.emit(self._layer, scan)

    def _on_error(self, worker, err: Exception) -> None:
        if self._release(worker):
            self.notify(f"Scoring failed: {err}")
            self.finished.emit(False)

    def _on_worker_finished(self, worker) -> None:
        if self._release(worker) and self._cancelled:  # cancelled: the run ended without a result
            self._show_cancelled()

    def _show_cancelled(self) -> None:
        self.progress_label.setText("cancelled")
        self.progress_bar.setValue(0)
        self.finished.emit(False)

    def show_warnings(self, warnings: list[str]) -> None:
        """The red banner with the out-of-distribution guard's lines (hidden when there are none)."""
        self.ood_banner.setText("⚠ " + UNRELIABLE.capitalize() + ":\n• " +
                                "\n• ".join(w for w in warnings if w != UNRELIABLE))
        self.ood_banner.setVisible(bool(warnings))
