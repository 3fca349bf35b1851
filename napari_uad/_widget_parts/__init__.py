"""Parts of the review widget, one job each (see ``napari_uad._widget``)."""

from __future__ import annotations


def row_table(columns, name: str):
    """A read-only QTableWidget of whole-row single selection with ``columns`` headers (findings, worklist)."""
    from qtpy.QtWidgets import QHeaderView, QTableWidget

    table = QTableWidget(0, len(columns), objectName=name)
    table.setHorizontalHeaderLabels(columns)
    table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
    table.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
    table.setSelectionMode(QTableWidget.SelectionMode.SingleSelection)
    table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
    table.verticalHeader().setVisible(False)
    return table
