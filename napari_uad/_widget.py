"""The "Anomaly review" dock widget: parts with one job each (``_widget_parts``), wired together here.

- ``ScoringPanel``: image, model, device, brain extraction; scoring in a worker thread; progress; OOD banner.
- ``MapDisplay``: detection-map choice, raw/calibrated heatmap layers, brain-mask outline.
- ``FindingsPanel``: threshold, minimum volume, connectivity, slice profile, findings table, previous/next.
- ``ReviewPanel``: tags, category, note, reviewer, restore offer, export.
- ``WorklistPanel``: a cohort's ranked worklist (``napari_uad.cohort.worklist``).

This module only orchestrates: findings, calibration and export are computed by ``ScoredScan`` (``session``);
reviews are saved by ``ReviewSession`` at every edit. Layers are in napari world coordinates (z, y, x) = RAS mm.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtCore import QEvent, Qt, Signal
from qtpy.QtWidgets import QFileDialog, QFrame, QLineEdit, QScrollArea, QVBoxLayout, QWidget

from ._widget_parts.findings_panel import TAG_COLORS, FindingsPanel
from ._widget_parts.map_display import MapDisplay
from ._widget_parts.review_panel import TAG_KEYS, ReviewPanel
from ._widget_parts.scoring_panel import ScoringPanel
from ._widget_parts.worklist_panel import WorklistPanel
from .display import image_layer_kwargs, ras_to_display_world, to_display
from .review import ReviewSession
from .session import FindingsView, ScoredScan

__all__ = ["AnomalyReviewWidget", "NAV_KEYS", "TAG_KEYS"]

NAV_KEYS = {"next": "n", "previous": "p", "jump": "j"}  # next / previous finding, jump to the current one
CSV_FILTER = "Findings CSV (*.csv)"
SLICER_FILTER = "3D Slicer segmentation + markups (*.seg.nrrd)"
DICOM_SEG_FILTER = "DICOM SEG over the source series (*.dcm)"
# controls of the parts, reachable as attributes of the widget (stable names for scripts and tests)
_PART_CONTROLS = {
    "scoring_panel": ("image_selector", "model_selector", "device_selector", "skull_strip_selector",
                      "window_selector", "gradient_toggle", "score_button", "progress_bar", "progress_label",
                      "ood_banner"),
    "map_display": ("map_selector", "calibrated_toggle"),
    "findings_panel": ("threshold_slider", "threshold_label", "min_volume_spinbox", "min_thickness_spinbox",
                       "connectivity_selector", "profile", "findings_table", "prev_button", "next_button"),
    "review_panel": ("restore_button", "tag_buttons", "category_selector", "note_edit", "reviewer_edit",
                     "export_button"),
}


class _VerticalScroll(QScrollArea):
    """Scrolls its content up and down only: asks for the content's width (plus the scroll bar), and asks again
    whenever the content's layout changes."""

    def __init__(self, parent: QWidget):
        super().__init__(parent)
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)

    def setWidget(self, widget: QWidget) -> None:  # noqa: N802 (Qt's name)
        super().setWidget(widget)
        widget.installEventFilter(self)

    def eventFilter(self, watched, event) -> bool:  # noqa: N802
        if watched is self.widget() and event.type() == QEvent.LayoutRequest:
            self.updateGeometry()
        return super().eventFilter(watched, event)

    def _with_content_width(self, hint, content_width: int):
        hint.setWidth(content_width + self.verticalScrollBar().sizeHint().width() + 2 * self.frameWidth())
        return hint

    def sizeHint(self):  # noqa: N802
        hint = super().sizeHint()
        return hint if self.widget() is None else self._with_content_width(hint, self.widget().sizeHint().width())

    def minimumSizeHint(self):  # noqa: N802
        hint = super().minimumSizeHint()
        return (hint if self.widget() is None
                else self._with_content_width(hint, self.widget().minimumSizeHint().width()))


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
        # the parts sit in a scroll area: on a short screen the dock scrolls instead of squeezing a control (or
        # the out-of-distribution banner's text) below the height it needs
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        scroll = _VerticalScroll(self)
        body = QWidget(scroll)
        layout = QVBoxLayout(body)
        self.worklist_panel = WorklistPanel(self)
        self.scoring_panel = ScoringPanel(napari_viewer, self._notify)
        self.map_display = MapDisplay(napari_viewer)
        self.findings_panel = FindingsPanel()
        self.review_panel = ReviewPanel()
        for part in (self.worklist_panel, self.scoring_panel, self.map_display, self.findings_panel,
                     self.review_panel):
            layout.addWidget(part, stretch=1 if part is self.findings_panel else 0)
        scroll.setWidget(body)
        outer.addWidget(scroll)
        for part, names in _PART_CONTROLS.items():
            for name in names:
                setattr(self, name, getattr(getattr(self, part), name))
        self._connect()
        self._set_review_enabled(False)
        napari_viewer.layers.events.inserted.connect(self.scoring_panel.refresh_image_layers)
        napari_viewer.layers.events.removed.connect(self.scoring_panel.refresh_image_layers)
        self.scoring_panel.refresh_image_layers()
        self._bind_keys()

    def _connect(self) -> None:
        self.scoring_panel.scored.connect(self._on_scored)
        self.scoring_panel.finished.connect(self.scoring_finished)
        self.map_display.map_changed.connect(self._on_map_changed)
        fp = self.findings_panel
        fp.settings_changed.connect(self.update_findings)
        fp.row_selected.connect(self.select_finding)
        fp.step.connect(lambda d: self.select_finding(max(self.current_row + d, 0)))
        fp.slice_clicked.connect(self.go_to_slice)
        rp = self.review_panel
        rp.tagged.connect(lambda tag: self.tag_current(tag))
        rp.edited.connect(lambda field, value: self._edit_current(**{field: value}))
        rp.restore_clicked.connect(self.restore_review)
        rp.export_clicked.connect(self._on_export_clicked)

    def _set_review_enabled(self, enabled: bool) -> None:
        for w in (*self.findings_panel.controls(), *self.review_panel.controls()):
            w.setEnabled(enabled)

    def _notify(self, message: str) -> None:
        from napari.utils.notifications import show_error

        show_error(message)

    # -- keys --------------------------------------------------------------------------------------------------
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
        if event.type() == QEvent.Type.KeyPress and not (event.modifiers() & ~Qt.KeyboardModifier.KeypadModifier):
            action = self._key_actions.get(event.text().lower()) if event.text() else None
            if action is not None and event.text().isalpha():
                action()
                return True
        return super().eventFilter(obj, event)

    # -- scoring (delegated) ------------------------------------------------------------------------------------
    def add_model(self, path: str) -> None:
        self.scoring_panel.add_model(path)

    def start_scoring(self) -> None:
        self.scoring_panel.start_scoring()

    def cancel_scoring(self) -> None:
        self.scoring_panel.cancel_scoring()

    @property
    def is_scoring(self) -> bool:
        return self.scoring_panel.is_scoring

    # -- a scored scan ---------------------------------------------------------------------------------------
    def _on_scored(self, layer, scan: ScoredScan) -> None:
        self.image_layer, self.scan = layer, scan
        self.scoring_panel.show_warnings(scan.warnings)
        self.map_display.show_scan(scan, layer)
        self.findings_panel.set_minimum_size(scan.default_min_volume, scan.default_min_thickness)
        self.findings_panel.reset(scan, self.map_display.current)
        self.map_display.show_maps()
        self.findings_panel.profile.set_scores(scan.result.slice_scores)
        self._set_review_enabled(True)
        self.update_findings()
        self.scoring_finished.emit(True)

    def show_scored(self, scan: ScoredScan, name: str) -> None:
        """Show an already scored scan (a cohort's: nothing is rescored) as image layer ``name`` with its maps
        and findings, replacing the layers of the scan shown before; its saved review is taken over."""
        if self.image_layer is not None:
            old = self.image_layer.name
            for layer in [lyr for lyr in self.viewer.layers if lyr.name == old or lyr.name.startswith(old + " ")]:
                self.viewer.layers.remove(layer)
        layer = self.viewer.add_image(to_display(scan.volume.data), **image_layer_kwargs(scan.volume, name=name))
        self.scoring_panel.image_selector.setCurrentText(layer.name)
        self._on_scored(layer, scan)
        self.scoring_panel.progress_label.setText(f"precomputed by {scan.card.name} {scan.card.version} "
                                                  "(cohort); not rescored")
        self.restore_review()

    def _on_map_changed(self, name: str) -> None:
        self.findings_panel.reset(self.scan, name)
        self.map_display.show_maps()
        self.update_findings()

    @property
    def threshold(self) -> float:
        """Raw detection threshold of the current map (the card's exact default until the slider moves)."""
        return self.findings_panel.threshold(self.scan, self.map_display.current)

    @property
    def connectivity(self) -> int:
        return self.findings_panel.connectivity

    def update_findings(self) -> None:
        """Recompute findings for the current settings; refresh labels, tag points, table and review session."""
        if self.scan is None:
            return
        self.findings_panel.flush()
        name = self.map_display.current
        thr = self.threshold
        min_volume = self.findings_panel.min_volume_spinbox.value()
        min_thickness = self.findings_panel.min_thickness_spinbox.value()
        self.findings_panel.show_threshold(thr, self.scan.quantile_of(name, thr),
                                           self.scan.validation_rates(name, thr, min_volume), min_thickness)
        self.view = self.scan.findings(name, thr, min_volume, self.connectivity, min_thickness)
        labels_name = self.map_display.layer_name("findings")
        labels = to_display(self.view.labels)
        if labels_name in self.viewer.layers:
            self.viewer.layers[labels_name].data = labels
        else:
            self.viewer.add_labels(labels, name=labels_name, opacity=0.6,
                                   metadata=dict(self.image_layer.metadata), **self.map_display.geometry())
        key = self.scan.review_key(self.view)
        if self.review is None or self.review.key != key:
            self.review = ReviewSession(key=key, scan_path=str(self.scan.volume.path or ""))
            saved = ReviewSession.find(key)
            self.pending_restore = saved if saved is not None and saved.n_reviewed else None
            self.review_panel.offer_restore(self.pending_restore)
        self._refresh_points()
        self.findings_panel.fill(self.view, self._tag_of)
        self.current_row = -1
        self.findings_changed.emit(len(self.view.findings))

    # -- review ----------------------------------------------------------------------------------------------
    def restore_review(self) -> None:
        """Take over the saved review session offered for this scan and settings."""
        if self.pending_restore is not None:
            self.review = self.pending_restore
            self.pending_restore = None
            self.review_panel.offer_restore(None)
            self._refresh_points()
            self.findings_panel.fill(self.view, self._tag_of)

    def _tag_of(self, finding_id: int) -> dict:
        return self.review.reviews.get(finding_id, {}) if self.review else {}

    def _refresh_points(self) -> None:
        """The tag of every finding as a labelled point at its centroid."""
        name = self.map_display.layer_name("finding tags")
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
                                   out_of_slice_display=False, **self.map_display.geometry())
            self.viewer.layers.selection.active = self.image_layer

    def select_finding(self, row: int) -> None:
        """Make finding ``row`` current: select it, move to its slice and centre the camera on it."""
        if self.view is None or not self.view.findings:
            return
        row = int(np.clip(row, 0, len(self.view.findings) - 1))
        self.current_row = row
        finding = self.view.findings[row]
        self.findings_panel.select_row(row)
        world = ras_to_display_world(finding.centroid_xyz_mm)
        self.viewer.dims.set_point(0, world[0])
        camera = self.map_display.camera()
        camera.center = tuple(world[1:]) if self.viewer.dims.ndisplay == 2 else tuple(world)
        labels_name = self.map_display.layer_name("findings")
        if labels_name in self.viewer.layers:
            self.viewer.layers[labels_name].selected_label = finding.finding_id
        self.findings_panel.profile.set_current(int(round(self.view.centroids_canonical[row][2])))
        self.review_panel.show_finding(self._tag_of(finding.finding_id))

    def go_to_slice(self, k: int) -> None:
        """Show canonical axial slice k."""
        if self.scan is None:
            return
        world_z = float(self.scan.volume.canonical_to_world([[0, 0, k]])[0][2])
        self.viewer.dims.set_point(0, world_z)
        self.findings_panel.profile.set_current(k)

    def _edit_current(self, **fields: str) -> None:
        if self.view is None or not (0 <= self.current_row < len(self.view.findings)):
            return
        finding_id = self.view.findings[self.current_row].finding_id
        self.review.update(finding_id, reviewer=self.review_panel.reviewer, **fields)  # saved at once
        row = self.current_row
        self._refresh_points()
        self.findings_panel.fill(self.view, self._tag_of)
        self.findings_panel.select_row(row)

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
        filters = [CSV_FILTER, SLICER_FILTER]
        if self.scan is not None and self.scan.volume.path is not None and Path(self.scan.volume.path).is_dir():
            filters.append(DICOM_SEG_FILTER)  # the scan came from a DICOM series
        path, chosen = QFileDialog.getSaveFileName(self, "Export reviewed findings", str(default), ";;".join(filters))
        if path:
            try:
                if chosen == DICOM_SEG_FILTER or path.endswith(".dcm"):
                    self.export_dicom_seg(path)
                elif chosen == SLICER_FILTER or path.endswith(".seg.nrrd"):
                    self.export_slicer(path if path.endswith(".seg.nrrd") else
                                       str(Path(path).with_suffix("")) + ".seg.nrrd")
                else:
                    self.export_csv(path)
            except (OSError, ValueError) as err:
                self._notify(f"Export failed: {err}")

    def export_dicom_seg(self, path: str | Path) -> Path:
        """The reviewed findings as a DICOM Segmentation over the scan's DICOM series."""
        if self.scan is None or self.view is None:
            raise ValueError("nothing to export: score a scan first")
        return self.scan.export_dicom_seg(path, self.view, self.review)

    def export_slicer(self, path: str | Path) -> list[Path]:
        """The reviewed findings as a 3D Slicer segmentation (``path``, .seg.nrrd) and markups (.mrk.json)."""
        if self.scan is None or self.view is None:
            raise ValueError("nothing to export: score a scan first")
        return self.scan.export_slicer(path, self.view, self.review)

    def export_csv(self, path: str | Path) -> Path:
        """Write the reviewed findings (one row per finding, the CLI's schema) atomically to ``path``."""
        if self.scan is None or self.view is None:
            raise ValueError("nothing to export: score a scan first")
        return self.scan.export_csv(path, self.view, self.review)
