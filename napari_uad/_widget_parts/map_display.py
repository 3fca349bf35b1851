"""Map display: the detection-map selector, raw or calibrated (healthy-quantile) maps, one heatmap layer per
map over the scan (only the chosen one visible) and the brain mask as an outline."""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QCheckBox, QComboBox, QFormLayout, QVBoxLayout, QWidget

from ..display import (MAP_COLORMAPS, QUANTILE_LIMITS, RADIOLOGICAL_ORIENTATION, layer_geometry, map_limits,
                       to_display)
from ..scoring import MAP_NAMES
from ..session import ScoredScan

__all__ = ["MapDisplay"]


class MapDisplay(QWidget):
    """``map_changed(name)`` when the reviewer picks another detection map."""

    map_changed = Signal(str)

    def __init__(self, viewer):
        super().__init__()
        self.viewer = viewer
        self.scan: ScoredScan | None = None
        self.image_layer = None
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        form = QFormLayout()
        self.map_selector = QComboBox(objectName="map_selector")
        self.map_selector.addItems(MAP_NAMES)
        self.map_selector.currentTextChanged.connect(self._on_map_changed)
        form.addRow("Detection map", self.map_selector)
        layout.addLayout(form)
        self.calibrated_toggle = QCheckBox("Show maps as healthy-voxel quantiles (0–1)",
                                           objectName="calibrated_toggle")
        self.calibrated_toggle.setEnabled(False)
        self.calibrated_toggle.toggled.connect(self.show_maps)
        layout.addWidget(self.calibrated_toggle)

    @property
    def current(self) -> str:
        return self.map_selector.currentText()

    def layer_name(self, suffix: str) -> str:
        return f"{self.image_layer.name} {suffix}"

    def geometry(self) -> dict:
        """scale/translate/affine of the scan's layers (world = RAS mm, display order)."""
        return {k: v for k, v in layer_geometry(self.scan.volume).items() if k != "axis_labels"}

    def camera(self):
        scene = getattr(self.viewer, "scene", None)  # napari >= 0.9 moved the camera to viewer.scene
        return scene.camera if scene is not None else self.viewer.camera

    def show_scan(self, scan: ScoredScan, image_layer) -> None:
        """One layer per map of ``scan`` over ``image_layer`` (replacing a previous scan's), the brain-mask
        outline, the card's detection map selected; radiological orientation."""
        self.scan, self.image_layer = scan, image_layer
        for name in MAP_NAMES:  # layers of maps this scan was not scored for go (a previous scan's)
            if name not in scan.result.maps and self.layer_name(name) in self.viewer.layers:
                self.viewer.layers.remove(self.layer_name(name))
        self.map_selector.blockSignals(True)
        self.map_selector.clear()
        self.map_selector.addItems(list(scan.result.maps))
        self.map_selector.setCurrentText(scan.card.detection_map)
        self.map_selector.blockSignals(False)
        post = scan.result.postprocessing
        for name in scan.result.maps:
            layer_name = self.layer_name(name)
            if layer_name in self.viewer.layers:
                self.viewer.layers.remove(layer_name)
            metadata = {"napari_uad_map": name, **image_layer.metadata,
                        **({"napari_uad_postprocessing": post} if post.get("map") == name else {})}
            self.viewer.add_image(to_display(scan.result.maps[name]), name=layer_name, colormap=MAP_COLORMAPS[name],
                                  blending="additive", visible=False, contrast_limits=self.raw_limits(name),
                                  metadata=metadata, **self.geometry())
        mask_name = self.layer_name("brain mask")
        if mask_name in self.viewer.layers:
            self.viewer.layers.remove(mask_name)
        mask_layer = self.viewer.add_labels(to_display(scan.result.mask.astype(np.uint8)), name=mask_name,
                                            opacity=0.5, **self.geometry())
        mask_layer.contour = 1  # outline only: the reviewer sees what the model looked at
        self.camera().orientation2d = RADIOLOGICAL_ORIENTATION
        self.viewer.layers.selection.active = image_layer
        self.calibrated_toggle.setEnabled(scan.has_calibration)

    def raw_limits(self, name: str) -> tuple[float, float]:
        """Display range of a raw map (``display.map_limits``, with the card's calibration of the map)."""
        entry = (self.scan.card.calibration.get("maps") or {}).get(name)
        return map_limits(self.scan.result.maps[name][self.scan.result.mask], entry)

    def show_maps(self, calibrated: bool | None = None) -> None:
        """Show raw or calibrated maps; only the detection map visible."""
        if self.scan is None:
            return
        calibrated = self.calibrated_toggle.isChecked() if calibrated is None else calibrated
        for name in self.scan.result.maps:
            layer = self.viewer.layers[self.layer_name(name)]
            if calibrated and self.scan.has_calibration:
                layer.data = to_display(self.scan.calibrated(name))
                layer.contrast_limits = QUANTILE_LIMITS
            else:
                layer.data = to_display(self.scan.result.maps[name])
                layer.contrast_limits = self.raw_limits(name)
            layer.visible = name == self.current

    def _on_map_changed(self, name: str) -> None:
        if self.scan is not None:
            self.show_maps()
            self.map_changed.emit(name)
