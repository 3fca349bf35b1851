"""The cohort worklist panel of the review widget: ranked scans, next/previous scan, status, export.

Only orchestration: the worklist itself (order, status, position, export) is ``napari_uad.cohort.worklist``;
showing a scan and reviewing its findings is the review widget's (``AnomalyWidget.show_scored``).
"""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import (
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QTableWidgetItem,
    QVBoxLayout,
)

from ..cohort.worklist import Worklist
from . import row_table

__all__ = ["WorklistPanel", "WORKLIST_COLUMNS"]

WORKLIST_COLUMNS = ("rank", "scan", "status", "findings", "healthy quantile")


class WorklistPanel(QGroupBox):
    """'Cohort worklist' box: open a cohort.csv, go through its scans in rank order."""

    def __init__(self, owner):
        super().__init__("Cohort worklist", objectName="worklist_panel")
        self.owner = owner  # the AnomalyWidget that shows and reviews a scan
        self.worklist: Worklist | None = None
        layout = QVBoxLayout(self)
        self.open_button = QPushButton("Open worklist (cohort.csv)…", objectName="open_worklist_button")
        self.open_button.clicked.connect(self._on_open_clicked)
        layout.addWidget(self.open_button)
        self.label = QLabel("", objectName="worklist_label")
        layout.addWidget(self.label)
        self.table = row_table(WORKLIST_COLUMNS, "worklist_table")
        self.table.setMinimumHeight(130)
        self.table.setMaximumHeight(200)
        self.table.cellDoubleClicked.connect(lambda row, _col: self.open_scan(row))
        layout.addWidget(self.table)
        nav = QHBoxLayout()
        self.prev_scan_button = QPushButton("◀ Previous scan", objectName="prev_scan_button")
        self.prev_scan_button.clicked.connect(lambda: self.step(-1))
        self.next_scan_button = QPushButton("Next scan ▶", objectName="next_scan_button")
        self.next_scan_button.clicked.connect(lambda: self.step(+1))
        self.done_button = QPushButton("Mark done", objectName="mark_done_button")
        self.done_button.clicked.connect(self.mark_done)
        for b in (self.prev_scan_button, self.next_scan_button, self.done_button):
            nav.addWidget(b)
        layout.addLayout(nav)
        self.export_all_button = QPushButton("Export all reviewed findings…", objectName="export_all_button")
        self.export_all_button.clicked.connect(self._on_export_clicked)
        layout.addWidget(self.export_all_button)
        self._set_enabled(False)

    def _set_enabled(self, enabled: bool) -> None:
        """Until a worklist is open only its button shows, so the findings table below keeps the room."""
        for w in (self.table, self.prev_scan_button, self.next_scan_button, self.done_button,
                  self.export_all_button, self.label):
            w.setEnabled(enabled)
            w.setVisible(enabled)

    def _on_open_clicked(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Cohort worklist", str(Path.home()), "Cohort (cohort.csv)")
        if path:
            self.open_worklist(path)

    def open_worklist(self, path: str | Path) -> None:
        """Load a cohort and open the scan the reviewer was at (the first, the first time)."""
        try:
            self.worklist = Worklist(path)
        except (OSError, ValueError) as err:
            self.owner._notify(str(err))
            return
        self._set_enabled(True)
        self.open_scan(self.worklist.index)

    def open_scan(self, index: int) -> None:
        """Show scan ``index`` of the ranking with its precomputed maps and findings."""
        wl = self.worklist
        entry = wl.go_to(index)
        try:
            scan = wl.open(entry)
        except (OSError, ValueError) as err:
            self.owner._notify(str(err))
            return
        self.owner.show_scored(scan, name=entry.id)
        self.refresh()

    def step(self, delta: int) -> None:
        if self.worklist is not None:
            self.open_scan(min(max(self.worklist.index + delta, 0), len(self.worklist.entries) - 1))

    def mark_done(self) -> None:
        if self.worklist is not None:
            self.worklist.mark_done()
            self.refresh()

    def refresh(self) -> None:
        """Table of scans with their current review status; the current scan selected."""
        wl = self.worklist
        if wl is None:
            return
        self.table.setRowCount(len(wl.entries))
        for r, entry in enumerate(wl.entries):
            quantile = entry.row.get("volume_score_healthy_quantile") or ""
            values = (str(entry.rank), entry.id, wl.status(entry), entry.row.get("n_findings", ""),
                      f"{float(quantile):.2f}" if quantile else "–")
            for c, text in enumerate(values):
                self.table.setItem(r, c, QTableWidgetItem(text))
        self.table.blockSignals(True)
        self.table.selectRow(wl.index)
        self.table.blockSignals(False)
        done = sum(wl.status(e) == "done" for e in wl.entries)
        self.label.setText(f"scan {wl.index + 1} of {len(wl.entries)} ({wl.current.id}); {done} done")

    def _on_export_clicked(self) -> None:
        if self.worklist is None:
            return
        default = str(self.worklist.directory / "cohort_reviewed_findings.csv")
        path, _ = QFileDialog.getSaveFileName(self, "Export reviewed findings", default, "CSV (*.csv)")
        if path:
            self.export_all(path)

    def export_all(self, path: str | Path) -> Path | None:
        try:
            written = self.worklist.export_reviewed(path)
        except (OSError, ValueError) as err:
            self.owner._notify(str(err))
            return None
        self.label.setText(f"exported reviewed findings to {written}")
        return written
