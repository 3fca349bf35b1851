"""The "Anomaly review" dock widget: score a scan in a worker thread, threshold, review and export findings.

It only orchestrates: scoring is :class:`napari_uad.scoring.Scorer`, findings, calibration and export are
:class:`napari_uad.session.ScoredScan`, review persistence is :class:`napari_uad.review.ReviewSession`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from qtpy.QtCore import QPointF, Qt, QTimer, Signal
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSlider,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ._worklist_panel import WorklistPanel
from .devices import available_devices
from .display import (
    CT_WINDOWS,
    MAP_COLORMAPS,
    RADIOLOGICAL_ORIENTATION,
    contrast_limits,
    image_layer_kwargs,
    layer_geometry,
    ras_to_display_world,
    to_display,
    volume_from_layer,
    window_limits,
)
from .model_card import ModelError, list_models, load_model
from .review import CATEGORIES, ReviewSession, load_settings, save_setting
from .ood import UNRELIABLE, check_input, check_result
from .preprocessing import SKULL_STRIP_MODES, PipelineOptions
from .scoring import DEFAULT_MAPS, GRADIENT_MAPS, MAP_NAMES, Scorer
from .session import SLIDER_STEPS, FindingsView, ScoredScan

__all__ = ["AnomalyReviewWidget"]

TAG_COLORS = {"unreviewed": "#bbbbbb", "TP": "#2ecc40", "FP": "#ff4136", "uncertain": "#ffdc00"}
TAG_KEYS = {"t": "TP", "f": "FP", "u": "uncertain"}
NAV_KEYS = {"next": "n", "previous": "p", "jump": "j"}  # next / previous finding, jump to the current one
TABLE_COLUMNS = ("id", "i", "j", "k", "x mm", "y mm", "z mm", "volume mm³", "max", "mean", "slices", "tag",
                 "category", "note")
BROWSE = "Browse for card.json…"


class SliceProfile(QWidget):
    """Per-slice anomaly score (KL + Rec) drawn as a line; clicking a slice emits its canonical index k."""

    slice_clicked = Signal(int)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("slice_profile")
        self.setMinimumHeight(70)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.scores = np.zeros(0)
        self.current = -1
        self.setToolTip("Per-slice anomaly score (ELBO); click to go to a slice")

    def set_scores(self, scores: np.ndarray) -> None:
        self.scores = np.asarray(scores, dtype=float)
        self.update()

    def set_current(self, k: int) -> None:
        self.current = k
        self.update()

    def _x(self, k: float) -> float:
        return 4 + (self.width() - 8) * k / max(1, len(self.scores) - 1)

    def paintEvent(self, event):  # noqa: N802 - Qt API
        painter = QPainter(self)
        painter.fillRect(self.rect(), QColor("#262930"))
        finite = np.isfinite(self.scores)
        if finite.sum() >= 2:
            lo, hi = self.scores[finite].min(), self.scores[finite].max()
            span = hi - lo if hi > lo else 1.0
            points = [QPointF(self._x(k), self.height() - 4 - (self.height() - 8) * (s - lo) / span)
                      for k, s in enumerate(self.scores) if np.isfinite(s)]
            painter.setPen(QPen(QColor("#ff851b"), 1.5))
            painter.drawPolyline(QPolygonF(points))
        if 0 <= self.current < len(self.scores):
            painter.setPen(QPen(QColor("#7fdbff"), 1))
            x = self._x(self.current)
            painter.drawLine(QPointF(x, 0), QPointF(x, self.height()))
        painter.end()

    def mousePressEvent(self, event):  # noqa: N802 - Qt API
        if len(self.scores):
            x = event.position().x() if hasattr(event, "position") else event.x()
            k = int(round((x - 4) / max(1, self.width() - 8) * (len(self.scores) - 1)))
            self.slice_clicked.emit(int(np.clip(k, 0, len(self.scores) - 1)))


class AnomalyReviewWidget(QWidget):
    """Dock widget; ``scoring_finished`` is emitted with True (layers added) or False (cancelled / failed)."""

    scoring_finished = Signal(bool)
    findings_changed = Signal(int)

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.scan: ScoredScan | None = None
        self.view: FindingsView | None = None
        self.review: ReviewSession | None = None
        self.pending_restore: ReviewSession | None = None
        self.current_row = -1
        self.image_layer = None
        self._worker = None
        self._cancelled = False
        self._build_ui()
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(120)
        self._debounce.timeout.connect(self.update_findings)
        self.viewer.layers.events.inserted.connect(self._refresh_image_layers)
        self.viewer.layers.events.removed.connect(self._refresh_image_layers)
        self._refresh_image_layers()
        self._bind_keys()

    # -- UI ----------------------------------------------------------------------------------------------------
    def _build_ui(self) -> None:
        layout = QVBoxLayout(self)
        self.worklist_panel = WorklistPanel(self)
        layout.addWidget(self.worklist_panel)
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
        self.window_selector = QComboBox(objectName="window_selector")
        self.window_selector.addItems(["MR (percentiles)"] + [f"CT {name}" for name in CT_WINDOWS])
        self.window_selector.setToolTip("Display window of the image; CT presets as level/width in HU")
        self.window_selector.activated.connect(self._on_window_selected)
        form.addRow("Window", self.window_selector)
        self.map_selector = QComboBox(objectName="map_selector")
        self.map_selector.addItems(MAP_NAMES)
        self.map_selector.currentTextChanged.connect(self._on_map_changed)
        form.addRow("Detection map", self.map_selector)
        layout.addLayout(form)

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

        self.gradient_toggle = QCheckBox("Also gradient maps (KL-grad, ELBO-grad, combi; slow)",
                                         objectName="gradient_toggle")
        layout.insertWidget(layout.indexOf(self.score_button), self.gradient_toggle)
        self.calibrated_toggle = QCheckBox("Show maps as healthy-voxel quantiles (0–1)",
                                           objectName="calibrated_toggle")
        self.calibrated_toggle.setEnabled(False)
        self.calibrated_toggle.toggled.connect(self._show_maps)
        layout.addWidget(self.calibrated_toggle)

        thr = QFormLayout()
        self.threshold_slider = QSlider(Qt.Orientation.Horizontal, objectName="threshold_slider")
        self.threshold_slider.setRange(0, SLIDER_STEPS)
        self.threshold_slider.valueChanged.connect(self._on_threshold_moved)
        self._exact_threshold: float | None = None  # the card's default, until the reviewer moves the slider
        self.threshold_label = QLabel("–", objectName="threshold_label")
        thr.addRow("Threshold", self.threshold_slider)
        thr.addRow("", self.threshold_label)
        self.min_volume_spinbox = QDoubleSpinBox(objectName="min_volume_spinbox")
        self.min_volume_spinbox.setRange(0, 1e6)
        self.min_volume_spinbox.setSuffix(" mm³")
        self.min_volume_spinbox.setDecimals(1)
        self.min_volume_spinbox.valueChanged.connect(self._schedule_update)
        thr.addRow("Min. volume", self.min_volume_spinbox)
        self.connectivity_selector = QComboBox(objectName="connectivity_selector")
        self.connectivity_selector.addItems(["26 (corners)", "18 (edges)", "6 (faces)"])
        self.connectivity_selector.currentIndexChanged.connect(self._schedule_update)
        thr.addRow("Connectivity", self.connectivity_selector)
        layout.addLayout(thr)

        self.profile = SliceProfile(self)
        self.profile.slice_clicked.connect(self.go_to_slice)
        layout.addWidget(QLabel("Per-slice anomaly profile (click to jump)"))
        layout.addWidget(self.profile)

        self.restore_button = QPushButton("", objectName="restore_button")
        self.restore_button.setVisible(False)
        self.restore_button.clicked.connect(self.restore_review)
        layout.addWidget(self.restore_button)

        self.findings_table = QTableWidget(0, len(TABLE_COLUMNS), objectName="findings_table")
        self.findings_table.setHorizontalHeaderLabels(TABLE_COLUMNS)
        self.findings_table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.findings_table.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        self.findings_table.setSelectionMode(QTableWidget.SelectionMode.SingleSelection)
        self.findings_table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.findings_table.verticalHeader().setVisible(False)
        self.findings_table.itemSelectionChanged.connect(self._on_row_selected)
        layout.addWidget(self.findings_table, stretch=1)

        nav = QHBoxLayout()
        self.prev_button = QPushButton("◀ Previous (P)", objectName="prev_button")
        self.prev_button.clicked.connect(lambda: self.select_finding(self.current_row - 1))
        self.next_button = QPushButton("Next (N) ▶", objectName="next_button")
        self.next_button.clicked.connect(lambda: self.select_finding(self.current_row + 1))
        nav.addWidget(self.prev_button)
        nav.addWidget(self.next_button)
        layout.addLayout(nav)

        tags = QHBoxLayout()
        self.tag_buttons = {}
        for key, tag in TAG_KEYS.items():
            button = QPushButton(f"{tag} ({key.upper()})", objectName=f"tag_{tag}_button")
            button.clicked.connect(lambda _=False, t=tag: self.tag_current(t))
            tags.addWidget(button)
            self.tag_buttons[tag] = button
        layout.addLayout(tags)
        review_form = QFormLayout()
        self.category_selector = QComboBox(objectName="category_selector")
        self.category_selector.addItems(CATEGORIES)
        self.category_selector.activated.connect(
            lambda _: self._edit_current(category=self.category_selector.currentText()))
        review_form.addRow("Category", self.category_selector)
        self.note_edit = QLineEdit(objectName="note_edit")
        self.note_edit.editingFinished.connect(lambda: self._edit_current(note=self.note_edit.text()))
        review_form.addRow("Note", self.note_edit)
        self.reviewer_edit = QLineEdit(load_settings().get("reviewer", ""), objectName="reviewer_edit")
        self.reviewer_edit.editingFinished.connect(lambda: save_setting("reviewer", self.reviewer_edit.text()))
        review_form.addRow("Reviewer", self.reviewer_edit)
        layout.addLayout(review_form)

        self.export_button = QPushButton("Export CSV…", objectName="export_button")
        self.export_button.clicked.connect(self._on_export_clicked)
        layout.addWidget(self.export_button)
        self._set_review_enabled(False)

    def _set_review_enabled(self, enabled: bool) -> None:
        for w in (self.threshold_slider, self.min_volume_spinbox, self.connectivity_selector, self.findings_table,
                  self.prev_button, self.next_button, self.category_selector, self.note_edit, self.export_button,
                  *self.tag_buttons.values()):
            w.setEnabled(enabled)

    def _bind_keys(self) -> None:
        """Review keys wherever the reviewer's focus is: on the canvas (napari key bindings) and anywhere in this
        widget, the findings table included (an event filter; text fields keep their letters)."""
        actions = {key: (lambda t=tag: self.tag_current(t, advance=True)) for key, tag in TAG_KEYS.items()}
        actions.update({NAV_KEYS["next"]: lambda: self.select_finding(self.current_row + 1),
                        NAV_KEYS["previous"]: lambda: self.select_finding(max(self.current_row - 1, 0)),
                        NAV_KEYS["jump"]: lambda: self.select_finding(max(self.current_row, 0))})
        self._key_actions = actions
        for key, action in actions.items():
            self.viewer.bind_key(key, lambda _viewer, a=action: a(), overwrite=True)
        for child in [self, *self.findChildren(QWidget)]:
            if not isinstance(child, QLineEdit):
                child.installEventFilter(self)

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt API
        """Review keys pressed while a control of this widget (not a text field) has the focus."""
        from qtpy.QtCore import QEvent

        if event.type() == QEvent.Type.KeyPress and not (event.modifiers() & ~Qt.KeyboardModifier.KeypadModifier):
            action = self._key_actions.get(event.text().lower()) if event.text() else None
            if action is not None and event.text().isalpha():
                action()
                return True
        return super().eventFilter(obj, event)

    def _refresh_image_layers(self, event=None) -> None:
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

    # -- scoring -----------------------------------------------------------------------------------------------
    @property
    def is_scoring(self) -> bool:
        return self._worker is not None

    def _on_score_clicked(self) -> None:
        if self.is_scoring:
            self.cancel_scoring()
        else:
            self.start_scoring()

    def _notify(self, message: str) -> None:
        from napari.utils.notifications import show_error

        show_error(message)

    def start_scoring(self) -> None:
        from napari.qt.threading import create_worker

        name = self.image_selector.currentText()
        if not name:
            self._notify("Open a 3D scan first (File > Open, or File > Open Sample > napari-uad).")
            return
        ref = self.model_selector.currentData()
        if ref is None:
            self._notify("Choose a model (bundled, or browse to a card.json).")
            return
        layer = self.viewer.layers[name]
        try:
            volume = volume_from_layer(layer.data, layer.metadata, layer.scale, layer.translate)
            model, card = load_model(ref)
            scorer = Scorer(model, card, device=self.device_selector.currentText(),
                            options=PipelineOptions(skull_strip=self.skull_strip_selector.currentText()))
            input_warnings = check_input(volume, card)  # refuses a scan of another modality
        except (ModelError, ValueError) as err:
            self._notify(str(err))
            return
        self.image_layer = layer
        self._cancelled = False
        wanted = set(DEFAULT_MAPS) | {card.detection_map}
        if self.gradient_toggle.isChecked():
            wanted |= set(GRADIENT_MAPS)
        maps = tuple(m for m in MAP_NAMES if m in wanted)

        def run():
            result = yield from scorer.iter_score(volume, maps)
            found, _ = check_result(result.mask, volume.voxel_volume_mm3, result.maps[card.detection_map],
                                    result.volume_score, card, card.detection_map)
            warnings = input_warnings + found
            return ScoredScan(volume, result, card, warnings + [UNRELIABLE] if warnings else [])

        worker = create_worker(run, _progress={"desc": f"Scoring {name}"})
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(self._on_scored)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_worker_finished)
        self._worker = worker
        self.score_button.setText("Cancel")
        self.score_button.setObjectName("score_button")
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

    def _on_error(self, err: Exception) -> None:
        self._notify(f"Scoring failed: {err}")
        self.scoring_finished.emit(False)

    def _on_worker_finished(self) -> None:
        self._worker = None
        self.score_button.setText("Score anomalies")
        if self._cancelled:
            self.progress_label.setText("cancelled")
            self.progress_bar.setValue(0)
            self.scoring_finished.emit(False)

    def show_scored(self, scan: ScoredScan, name: str) -> None:
        """Show an already scored scan (a cohort's: nothing is rescored) as image layer ``name`` with its maps
        and findings, replacing the layers of the scan shown before; its saved review is taken over."""
        image_kwargs = image_layer_kwargs(scan.volume, name=name)
        if self.image_layer is not None:
            old = self.image_layer.name
            for layer in [lyr for lyr in self.viewer.layers if lyr.name == old or lyr.name.startswith(old + " ")]:
                self.viewer.layers.remove(layer)
        self.image_layer = self.viewer.add_image(to_display(scan.volume.data), **image_kwargs)
        self.image_selector.setCurrentText(self.image_layer.name)
        self._cancelled = False
        self._on_scored(scan)
        self.progress_label.setText(f"precomputed by {scan.card.name} {scan.card.version} (cohort); not rescored")
        self.restore_review()

    def _on_scored(self, scan: ScoredScan) -> None:
        if self._cancelled:
            return
        self.scan = scan
        self.progress_label.setText(f"scored in {scan.result.seconds['total']:.1f} s on {scan.result.device}")
        self.ood_banner.setText("⚠ " + UNRELIABLE.capitalize() + ":\n• " +
                                "\n• ".join(w for w in scan.warnings if w != UNRELIABLE))
        self.ood_banner.setVisible(bool(scan.warnings))
        self._add_map_layers()
        map_name = scan.card.detection_map
        self.map_selector.blockSignals(True)
        self.map_selector.setCurrentText(map_name)
        self.map_selector.blockSignals(False)
        self.calibrated_toggle.setEnabled(scan.has_calibration)
        self.min_volume_spinbox.blockSignals(True)
        self.min_volume_spinbox.setValue(float(scan.card.calibration.get("min_volume_mm3", 0.0)))
        self.min_volume_spinbox.blockSignals(False)
        self._reset_threshold()
        self.profile.set_scores(scan.result.slice_scores)
        self._set_review_enabled(True)
        self.update_findings()
        self.scoring_finished.emit(True)

    # -- layers ------------------------------------------------------------------------------------------------
    def _layer_name(self, suffix: str) -> str:
        return f"{self.image_layer.name} {suffix}"

    def _geometry(self) -> dict:
        return {k: v for k, v in layer_geometry(self.scan.volume).items() if k != "axis_labels"}

    def _add_map_layers(self) -> None:
        for name in MAP_NAMES:  # layers of maps this scan was not scored for go (a previous scan's)
            if name not in self.scan.result.maps and self._layer_name(name) in self.viewer.layers:
                self.viewer.layers.remove(self._layer_name(name))
        self.map_selector.blockSignals(True)
        self.map_selector.clear()
        self.map_selector.addItems(list(self.scan.result.maps))
        self.map_selector.blockSignals(False)
        for name in self.scan.result.maps:
            data = to_display(self.scan.result.maps[name])
            layer_name = self._layer_name(name)
            if layer_name in self.viewer.layers:
                self.viewer.layers.remove(layer_name)
            self.viewer.add_image(data, name=layer_name, colormap=MAP_COLORMAPS[name], blending="additive",
                                  visible=False, contrast_limits=self._raw_limits(name),
                                  metadata={"napari_uad_map": name, **self.image_layer.metadata}, **self._geometry())
        mask_name = self._layer_name("brain mask")
        if mask_name in self.viewer.layers:
            self.viewer.layers.remove(mask_name)
        mask_layer = self.viewer.add_labels(to_display(self.scan.result.mask.astype(np.uint8)), name=mask_name,
                                            opacity=0.5, **self._geometry())
        mask_layer.contour = 1  # outline only: the reviewer sees what the model looked at
        self._camera().orientation2d = RADIOLOGICAL_ORIENTATION
        self.viewer.layers.selection.active = self.image_layer

    def _camera(self):
        scene = getattr(self.viewer, "scene", None)  # napari >= 0.9 moved the camera to viewer.scene
        return scene.camera if scene is not None else self.viewer.camera

    def _raw_limits(self, name: str) -> tuple[float, float]:
        """Display range of a raw map: foreground median (black; at least 0, the background) to 99.9th pct."""
        values = self.scan.result.maps[name][self.scan.result.mask]
        if not values.size:
            return (0.0, 1.0)
        lo, hi = (float(v) for v in np.quantile(values, [0.5, 0.999]))
        lo = max(lo, 0.0)
        return (lo, hi if hi > lo else lo + 1.0)

    def _show_maps(self, calibrated: bool | None = None) -> None:
        """Show raw or calibrated maps; only the detection map visible."""
        if self.scan is None:
            return
        calibrated = self.calibrated_toggle.isChecked() if calibrated is None else calibrated
        for name in self.scan.result.maps:
            layer = self.viewer.layers[self._layer_name(name)]
            if calibrated and self.scan.has_calibration:
                layer.data = to_display(self.scan.calibrated(name))
                layer.contrast_limits = (0.9, 1.0)
            else:
                layer.data = to_display(self.scan.result.maps[name])
                layer.contrast_limits = self._raw_limits(name)
            layer.visible = name == self.map_selector.currentText()

    def _on_map_changed(self, name: str) -> None:
        if self.scan is None:
            return
        self._show_maps()
        self._reset_threshold()
        self.update_findings()

    def _reset_threshold(self) -> None:
        name = self.map_selector.currentText()
        self._exact_threshold = self.scan.default_threshold(name)
        self.threshold_slider.blockSignals(True)
        self.threshold_slider.setValue(self.scan.position_of(name, self._exact_threshold))
        self.threshold_slider.blockSignals(False)
        self._show_maps()

    @property
    def threshold(self) -> float:
        """Raw detection threshold: exactly the card's default (same findings as `napari-uad score`) until the
        slider is moved, then the slider position."""
        if self._exact_threshold is not None:
            return self._exact_threshold
        return self.scan.threshold_at(self.map_selector.currentText(), self.threshold_slider.value())

    def _on_threshold_moved(self, *_) -> None:
        self._exact_threshold = None
        self._schedule_update()

    @property
    def connectivity(self) -> int:
        return 3 - self.connectivity_selector.currentIndex()

    def _schedule_update(self, *_) -> None:
        if self.scan is not None:
            self._debounce.start()

    def update_findings(self) -> None:
        """Recompute findings for the current settings; refresh labels, tag points, table and review session."""
        if self.scan is None:
            return
        self._debounce.stop()
        name = self.map_selector.currentText()
        thr = self.threshold
        q = self.scan.quantile_of(name, thr)
        self.threshold_label.setText(f"{thr:.4g}" + ("" if q is None else f"  (healthy-voxel FPR {1 - q:.2%})"))
        self.view = self.scan.findings(name, thr, self.min_volume_spinbox.value(), self.connectivity)
        labels_name = self._layer_name("findings")
        labels = to_display(self.view.labels)
        if labels_name in self.viewer.layers:
            self.viewer.layers[labels_name].data = labels
        else:
            self.viewer.add_labels(labels, name=labels_name, opacity=0.6,
                                   metadata=dict(self.image_layer.metadata), **self._geometry())
        key = self.scan.review_key(self.view)
        if self.review is None or self.review.key != key:
            self.review = ReviewSession(key=key, scan_path=str(self.scan.volume.path or ""))
            saved = ReviewSession.find(key)
            self.pending_restore = saved if saved is not None and saved.n_reviewed else None
            self.restore_button.setVisible(self.pending_restore is not None)
            if self.pending_restore is not None:
                self.restore_button.setText(f"Restore saved review ({self.pending_restore.n_reviewed} tagged, "
                                            f"{self.pending_restore.key.digest[:8]})")
        self._refresh_points()
        self._fill_table()
        self.current_row = -1
        self.findings_changed.emit(len(self.view.findings))

    def restore_review(self) -> None:
        """Take over the saved review session offered for this scan and settings."""
        if self.pending_restore is not None:
            self.review = self.pending_restore
            self.pending_restore = None
            self.restore_button.setVisible(False)
            self._refresh_points()
            self._fill_table()

    def _tag_of(self, finding_id: int) -> dict:
        return self.review.reviews.get(finding_id, {}) if self.review else {}

    def _refresh_points(self) -> None:
        name = self._layer_name("finding tags")
        ids = [f.finding_id for f in self.view.findings]
        tags = [self._tag_of(i).get("tag", "unreviewed") for i in ids]
        points = self.view.centroids_canonical[:, ::-1] if ids else np.zeros((0, 3))
        colors = [TAG_COLORS[t] for t in tags] or "white"
        features = {"id": np.array(ids, dtype=int), "tag": np.array(tags, dtype=object)}
        if name in self.viewer.layers:
            layer = self.viewer.layers[name]
            layer.data = points
            layer.features = features
            layer.face_color = colors
            layer.refresh()
        else:
            self.viewer.add_points(points, name=name, features=features, face_color=colors, size=6,
                                   border_width=0, text={"string": "{id} {tag}", "color": "white", "size": 9,
                                                         "anchor": "upper_left"},
                                   out_of_slice_display=False, **self._geometry())
            self.viewer.layers.selection.active = self.image_layer

    def _fill_table(self) -> None:
        table = self.findings_table
        table.blockSignals(True)
        table.setRowCount(len(self.view.findings))
        for row, f in enumerate(self.view.findings):
            review = self._tag_of(f.finding_id)
            values = (f.finding_id, *(f"{v:.1f}" for v in f.centroid_ijk), *(f"{v:.1f}" for v in f.centroid_xyz_mm),
                      f"{f.volume_mm3:.1f}", f"{f.max_score:.4g}", f"{f.mean_score:.4g}",
                      f"{f.first_slice}–{f.last_slice}", review.get("tag", "unreviewed"),
                      review.get("category", ""), review.get("note", ""))
            for col, value in enumerate(values):
                item = QTableWidgetItem(str(value))
                if col == TABLE_COLUMNS.index("tag"):
                    item.setForeground(QColor(TAG_COLORS[str(value)]))
                table.setItem(row, col, item)
        table.blockSignals(False)

    # -- navigation and review ---------------------------------------------------------------------------------
    def _on_row_selected(self) -> None:
        rows = self.findings_table.selectionModel().selectedRows()
        if rows:
            self.select_finding(rows[0].row())

    def select_finding(self, row: int) -> None:
        """Make finding ``row`` current: select it, move to its slice and centre the camera on it."""
        if self.view is None or not self.view.findings:
            return
        row = int(np.clip(row, 0, len(self.view.findings) - 1))
        self.current_row = row
        finding = self.view.findings[row]
        self.findings_table.blockSignals(True)
        self.findings_table.selectRow(row)
        self.findings_table.blockSignals(False)
        world = ras_to_display_world(finding.centroid_xyz_mm)
        self.viewer.dims.set_point(0, world[0])
        self._camera().center = tuple(world[1:]) if self.viewer.dims.ndisplay == 2 else tuple(world)
        labels_name = self._layer_name("findings")
        if labels_name in self.viewer.layers:
            self.viewer.layers[labels_name].selected_label = finding.finding_id
        self.profile.set_current(int(round(self.view.centroids_canonical[row][2])))
        review = self._tag_of(finding.finding_id)
        self.category_selector.setCurrentText(review.get("category", ""))
        self.note_edit.setText(review.get("note", ""))

    def go_to_slice(self, k: int) -> None:
        """Show canonical axial slice k."""
        if self.scan is None:
            return
        world_z = float(self.scan.volume.canonical_to_world([[0, 0, k]])[0][2])
        self.viewer.dims.set_point(0, world_z)
        self.profile.set_current(k)

    def _edit_current(self, **fields: str) -> None:
        if self.view is None or not (0 <= self.current_row < len(self.view.findings)):
            return
        finding_id = self.view.findings[self.current_row].finding_id
        self.review.update(finding_id, reviewer=self.reviewer_edit.text(), **fields)  # saved at once
        row = self.current_row
        self._refresh_points()
        self._fill_table()
        self.findings_table.blockSignals(True)
        self.findings_table.selectRow(row)
        self.findings_table.blockSignals(False)

    def tag_current(self, tag: str, advance: bool = True) -> None:
        """Tag the current finding (first one if none is current) and, by default, move to the next."""
        if self.view is None or not self.view.findings:
            return
        if self.current_row < 0:
            self.select_finding(0)
        self._edit_current(tag=tag)
        if advance and self.current_row < len(self.view.findings) - 1:
            self.select_finding(self.current_row + 1)
        self.worklist_panel.refresh()  # the scan's review status in an open worklist

    # -- export ------------------------------------------------------------------------------------------------
    def _on_export_clicked(self) -> None:
        default = Path.home() / f"{self.image_layer.name if self.image_layer else 'scan'}.findings.csv"
        path, _ = QFileDialog.getSaveFileName(self, "Export reviewed findings", str(default), "CSV (*.csv)")
        if path:
            try:
                self.export_csv(path)
            except (OSError, ValueError) as err:
                self._notify(f"Export failed: {err}")

    def export_csv(self, path: str | Path) -> Path:
        """Write the reviewed findings (one row per finding, the CLI's schema) atomically to ``path``."""
        if self.scan is None or self.view is None:
            raise ValueError("nothing to export: score a scan first")
        return self.scan.export_csv(path, self.view, self.review)
