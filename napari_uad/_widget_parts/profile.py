"""The per-slice anomaly profile: one line over the axial slices; a click goes to a slice."""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QPointF, Signal
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

__all__ = ["SliceProfile"]


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
