"""Findings panel: threshold slider (starting at the card's exact threshold), minimum volume, connectivity, the
per-slice profile, the findings table and previous/next. It shows findings; it does not compute them."""

from __future__ import annotations

from qtpy.QtCore import Qt, QTimer, Signal
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSlider,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..sequence import settings_label
from ..session import SLIDER_STEPS, FindingsView, ScoredScan
from . import row_table
from .profile import SliceProfile

__all__ = ["FindingsPanel", "TABLE_COLUMNS", "TAG_COLORS"]

TAG_COLORS = {"unreviewed": "#bbbbbb", "TP": "#2ecc40", "FP": "#ff4136", "uncertain": "#ffdc00"}
# what the reviewer reads first (tag, signal, size, score, slices) is visible without scrolling; positions after
TABLE_COLUMNS = ("id", "tag", "signal", "volume mm³", "max", "mean", "slices", "category", "note", "i", "j", "k",
                 "x mm", "y mm", "z mm")


class FindingsPanel(QWidget):
    """``settings_changed`` (debounced) when threshold, minimum volume or connectivity change;
    ``row_selected(row)``, ``step(+1/-1)`` and ``slice_clicked(k)`` for navigation."""

    settings_changed = Signal()
    row_selected = Signal(int)
    step = Signal(int)
    slice_clicked = Signal(int)

    def __init__(self):
        super().__init__()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        thr = QFormLayout()
        self.threshold_slider = QSlider(Qt.Orientation.Horizontal, objectName="threshold_slider")
        self.threshold_slider.setRange(0, SLIDER_STEPS)
        self.threshold_slider.valueChanged.connect(self._on_threshold_moved)
        self._exact_threshold: float | None = None  # the card's default, until the reviewer moves the slider
        self.threshold_label = QLabel("–", objectName="threshold_label")
        self.threshold_label.setWordWrap(True)  # the validation line wraps instead of widening the dock
        thr.addRow("Threshold", self.threshold_slider)
        thr.addRow("", self.threshold_label)
        self.min_volume_spinbox = QDoubleSpinBox(objectName="min_volume_spinbox")
        self.min_volume_spinbox.setRange(0, 1e6)
        self.min_volume_spinbox.setSuffix(" mm³")
        self.min_volume_spinbox.setDecimals(1)
        self.min_volume_spinbox.valueChanged.connect(self._schedule)
        thr.addRow("Min. volume", self.min_volume_spinbox)
        self.min_thickness_spinbox = QDoubleSpinBox(objectName="min_thickness_spinbox")
        self.min_thickness_spinbox.setRange(0, 100)
        self.min_thickness_spinbox.setSuffix(" mm")
        self.min_thickness_spinbox.setDecimals(1)
        self.min_thickness_spinbox.setToolTip("drop findings thinner than this: the diameter of the largest ball a "
                                              "finding holds (a sheet along a sulcus or a ventricle rim is thin)")
        self.min_thickness_spinbox.valueChanged.connect(self._schedule)
        thr.addRow("Min. thickness", self.min_thickness_spinbox)
        self.connectivity_selector = QComboBox(objectName="connectivity_selector")
        self.connectivity_selector.addItems(["26 (corners)", "18 (edges)", "6 (faces)"])
        self.connectivity_selector.currentIndexChanged.connect(self._schedule)
        thr.addRow("Connectivity", self.connectivity_selector)
        layout.addLayout(thr)
        self.profile = SliceProfile(self)
        self.profile.slice_clicked.connect(self.slice_clicked)
        layout.addWidget(QLabel("Per-slice anomaly profile (click to jump)"))
        layout.addWidget(self.profile)
        self.findings_table = row_table(TABLE_COLUMNS, "findings_table")
        self.findings_table.itemSelectionChanged.connect(self._on_selection)
        layout.addWidget(self.findings_table, stretch=1)
        nav = QHBoxLayout()
        self.prev_button = QPushButton("◀ Previous (P)", objectName="prev_button")
        self.prev_button.clicked.connect(lambda: self.step.emit(-1))
        self.next_button = QPushButton("Next (N) ▶", objectName="next_button")
        self.next_button.clicked.connect(lambda: self.step.emit(+1))
        nav.addWidget(self.prev_button)
        nav.addWidget(self.next_button)
        layout.addLayout(nav)
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(120)
        self._debounce.timeout.connect(self.settings_changed)

    def controls(self) -> tuple[QWidget, ...]:
        return (self.threshold_slider, self.min_volume_spinbox, self.min_thickness_spinbox, self.connectivity_selector,
                self.findings_table,
                self.prev_button, self.next_button)

    # -- settings ---------------------------------------------------------------------------------------------
    def reset(self, scan: ScoredScan, map_name: str) -> None:
        """Slider at the card's exact threshold for ``map_name``."""
        self._exact_threshold = scan.default_threshold(map_name)
        self.threshold_slider.blockSignals(True)
        self.threshold_slider.setValue(scan.position_of(map_name, self._exact_threshold))
        self.threshold_slider.blockSignals(False)

    def set_minimum_size(self, volume_mm3: float, thickness_mm: float) -> None:
        """The minimum finding volume (mm^3) and thickness (mm), without recomputing the findings."""
        for box, v in ((self.min_volume_spinbox, volume_mm3), (self.min_thickness_spinbox, thickness_mm)):
            box.blockSignals(True)
            box.setValue(v)
            box.blockSignals(False)

    def threshold(self, scan: ScoredScan, map_name: str) -> float:
        """Raw detection threshold: exactly the card's default (same findings as `napari-uad score`) until the
        slider is moved, then the slider position."""
        if self._exact_threshold is not None:
            return self._exact_threshold
        return scan.threshold_at(map_name, self.threshold_slider.value())

    @property
    def connectivity(self) -> int:
        return 3 - self.connectivity_selector.currentIndex()

    def _on_threshold_moved(self, *_) -> None:
        self._exact_threshold = None
        self._schedule()

    def _schedule(self, *_) -> None:
        self._debounce.start()

    def flush(self) -> None:
        """A pending (debounced) change is handled now by the caller: drop the timer."""
        self._debounce.stop()

    # -- table ----------------------------------------------------------------------------------------------
    def show_threshold(self, threshold: float, quantile: float | None, rates: dict | None = None,
                       min_thickness_mm: float = 0.0) -> None:
        """The raw threshold, its healthy-voxel false-positive rate and, where the card has them, what a setting
        this permissive gave on the validation volumes (``ScoredScan.validation_rates``), with the minimum
        thickness those were counted with where it or the current one (``min_thickness_mm``) is set."""
        text = f"{threshold:.4g}" + ("" if quantile is None else f"  (healthy-voxel FPR {1 - quantile:.2%})")
        tip = ""
        if rates is not None and rates.get("fp_objects_per_normal_scan") is not None:
            contrast = settings_label(rates.get("contrast"))
            source = rates["source"] + (f", {contrast} like this scan" if contrast else "")
            counted = rates.get("table_min_thickness_mm", 0.0)
            thick = f", thickness ≥ {counted:g} mm" if counted or min_thickness_mm else ""
            text += (f"\non {source} (≥ {rates['threshold']:.3g}, ≥ {rates['min_volume_mm3']:g} mm³{thick}): "
                     f"{rates['fp_objects_per_normal_scan']:.1f} false findings per normal scan")
            if rates.get("object_recall") is not None:
                text += f", {rates['object_recall']:.0%} of lesions found"
            tip = f"Validation set of the model card: {rates.get('validation_set') or 'not recorded'}"
        self.threshold_label.setText(text)
        self.threshold_label.setToolTip(tip)

    def fill(self, view: FindingsView, review_of) -> None:
        """One row per finding; ``review_of(finding_id)`` -> its tag/category/note."""
        table = self.findings_table
        table.blockSignals(True)
        table.setRowCount(len(view.findings))
        for row, f in enumerate(view.findings):
            review = review_of(f.finding_id)
            values = (f.finding_id, review.get("tag", "unreviewed"), f.signal, f"{f.volume_mm3:.1f}",
                      f"{f.max_score:.4g}", f"{f.mean_score:.4g}", f"{f.first_slice}–{f.last_slice}",
                      review.get("category", ""), review.get("note", ""),
                      *(f"{v:.1f}" for v in f.centroid_ijk), *(f"{v:.1f}" for v in f.centroid_xyz_mm))
            for col, value in enumerate(values):
                item = QTableWidgetItem(str(value))
                if col == TABLE_COLUMNS.index("tag"):
                    item.setForeground(QColor(TAG_COLORS[str(value)]))
                table.setItem(row, col, item)
        table.blockSignals(False)

    def select_row(self, row: int) -> None:
        self.findings_table.blockSignals(True)
        self.findings_table.selectRow(row)
        self.findings_table.blockSignals(False)

    def _on_selection(self) -> None:
        rows = self.findings_table.selectionModel().selectedRows()
        if rows:
            self.row_selected.emit(rows[0].row())
