"""Review panel: tag buttons, category, note, reviewer name, the offer to restore a saved review, export."""

from __future__ import annotations

from qtpy.QtCore import Signal
from qtpy.QtWidgets import QComboBox, QFormLayout, QHBoxLayout, QLineEdit, QPushButton, QVBoxLayout, QWidget

from ..review import CATEGORIES, ReviewSession, load_settings, save_setting

__all__ = ["ReviewPanel", "TAG_KEYS"]

TAG_KEYS = {"t": "TP", "f": "FP", "u": "uncertain"}


class ReviewPanel(QWidget):
    """``tagged(tag)``, ``edited(field, value)`` (category or note), ``restore_clicked``, ``export_clicked``."""

    tagged = Signal(str)
    edited = Signal(str, str)
    restore_clicked = Signal()
    export_clicked = Signal()

    def __init__(self):
        super().__init__()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.restore_button = QPushButton("", objectName="restore_button")
        self.restore_button.setVisible(False)
        self.restore_button.clicked.connect(self.restore_clicked)
        layout.addWidget(self.restore_button)
        tags = QHBoxLayout()
        self.tag_buttons = {}
        for key, tag in TAG_KEYS.items():
            button = QPushButton(f"{tag} ({key.upper()})", objectName=f"tag_{tag}_button")
            button.clicked.connect(lambda _=False, t=tag: self.tagged.emit(t))
            tags.addWidget(button)
            self.tag_buttons[tag] = button
        layout.addLayout(tags)
        form = QFormLayout()
        self.category_selector = QComboBox(objectName="category_selector")
        self.category_selector.addItems(CATEGORIES)
        self.category_selector.activated.connect(
            lambda _: self.edited.emit("category", self.category_selector.currentText()))
        form.addRow("Category", self.category_selector)
        self.note_edit = QLineEdit(objectName="note_edit")
        self.note_edit.editingFinished.connect(lambda: self.edited.emit("note", self.note_edit.text()))
        form.addRow("Note", self.note_edit)
        self.reviewer_edit = QLineEdit(load_settings().get("reviewer", ""), objectName="reviewer_edit")
        self.reviewer_edit.editingFinished.connect(lambda: save_setting("reviewer", self.reviewer_edit.text()))
        form.addRow("Reviewer", self.reviewer_edit)
        layout.addLayout(form)
        self.export_button = QPushButton("Export CSV / Slicer…", objectName="export_button")
        self.export_button.clicked.connect(self.export_clicked)
        layout.addWidget(self.export_button)

    def controls(self) -> tuple[QWidget, ...]:
        return (self.category_selector, self.note_edit, self.export_button, *self.tag_buttons.values())

    @property
    def reviewer(self) -> str:
        return self.reviewer_edit.text()

    def show_finding(self, review: dict) -> None:
        """Category and note of the current finding."""
        self.category_selector.setCurrentText(review.get("category", ""))
        self.note_edit.setText(review.get("note", ""))

    def offer_restore(self, saved: ReviewSession | None) -> None:
        self.restore_button.setVisible(saved is not None)
        if saved is not None:
            self.restore_button.setText(f"Restore saved review ({saved.n_reviewed} tagged, {saved.key.digest[:8]})")
