"""A scored scan under review (Qt-free): maps, calibrated maps, findings at a threshold, review and export.

The napari widget keeps one :class:`ScoredScan` and only orchestrates; every computation lives here or in
the core modules, so it is tested without Qt. Arrays are in the volume's canonical grid (i, j, k).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .calibration import to_quantile, validation_rates
from .export import findings_rows, write_findings_csv
from .findings import Finding, find_findings, interior
from .io import Volume
from .model_card import ModelCard
from .review import ReviewKey, ReviewSession
from .scoring import ScoreResult

__all__ = ["ScoredScan", "FindingsView", "SLIDER_STEPS"]

SLIDER_STEPS = 1000


@dataclass
class FindingsView:
    """Findings of one threshold setting: labels (canonical grid), findings ordered by id, canonical centroids."""

    labels: np.ndarray
    findings: list[Finding]
    centroids_canonical: np.ndarray
    detection_map: str
    threshold: float
    min_volume_mm3: float
    connectivity: int
    min_thickness_mm: float = 0.0


@dataclass
class ScoredScan:
    """One scored scan in the widget; ``warnings``: the out-of-distribution guard's lines (empty: none)."""

    volume: Volume
    result: ScoreResult
    card: ModelCard
    warnings: list[str] = field(default_factory=list)
    _calibrated: dict[str, np.ndarray] = field(default_factory=dict)
    _sha256: str | None = None
    _allowed: np.ndarray | None = None

    @property
    def scan_sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = self.volume.sha256()
        return self._sha256

    @property
    def has_calibration(self) -> bool:
        """True when the card holds healthy-voxel quantile tables for every map."""
        cal = self.card.calibration
        return "levels" in cal and all("quantiles" in cal.get("maps", {}).get(m, {}) for m in self.result.maps)

    def calibrated(self, name: str) -> np.ndarray:
        """Map as healthy-voxel quantiles (0-1), zero outside the foreground (needs card calibration)."""
        if name not in self._calibrated:
            table = dict(self.card.calibration["maps"][name], levels=self.card.calibration["levels"])
            q = to_quantile(self.result.maps[name], table)
            q[~self.result.mask] = 0.0
            self._calibrated[name] = q
        return self._calibrated[name]

    def quantile_of(self, name: str, raw: float) -> float | None:
        """Healthy-voxel quantile of a raw score, or None without calibration."""
        if not self.has_calibration or name not in self.card.calibration["maps"]:
            return None
        entry = self.card.calibration["maps"][name]
        return float(np.interp(raw, entry["quantiles"], self.card.calibration["levels"]))

    def validation_rates(self, name: str, threshold: float, min_volume_mm3: float) -> dict | None:
        """The card's validation false findings per normal scan and object recall for this setting (see
        :func:`napari_uad.calibration.validation_rates`), or None."""
        return validation_rates(self.card.calibration, name, threshold, min_volume_mm3, self.result.settings)

    # -- threshold slider <-> raw threshold -----------------------------------------------------------------
    def threshold_range(self, name: str) -> tuple[float, float]:
        """Raw-score range the slider spans: 0 to the map's maximum in this scan (or the card threshold)."""
        values = self.result.maps[name]
        hi = float(values.max())
        card_thr = self.card.default_threshold(name, self.result.settings)
        if card_thr is not None:
            hi = max(hi, 1.05 * card_thr)
        return 0.0, hi if hi > 0 else 1.0

    def threshold_at(self, name: str, position: int) -> float:
        lo, hi = self.threshold_range(name)
        return lo + (hi - lo) * position / SLIDER_STEPS

    def position_of(self, name: str, threshold: float) -> int:
        lo, hi = self.threshold_range(name)
        return int(round(np.clip((threshold - lo) / (hi - lo), 0, 1) * SLIDER_STEPS))

    def default_threshold(self, name: str) -> float:
        """The card's calibrated threshold (its point for this scan's settings key where it has one, as
        ``napari-uad score``), else the 99.9th percentile of the map in the foreground."""
        thr = self.card.default_threshold(name, self.result.settings)
        if thr is None:
            thr = float(np.quantile(self.result.maps[name][self.result.mask], 0.999))
        return thr

    @property
    def default_min_volume(self) -> float:
        """The card's minimum finding volume (mm^3) for this scan's settings key (as ``napari-uad score``)."""
        return self.card.default_min_volume(self.result.settings)

    @property
    def default_min_thickness(self) -> float:
        """The card's minimum finding thickness (world mm) for this scan's settings key (as ``napari-uad
        score``)."""
        return self.card.default_min_thickness(self.result.settings)

    # -- findings -------------------------------------------------------------------------------------------
    @property
    def allowed(self) -> np.ndarray:
        """Where findings may lie: the brain mask less the card's edge margin (as ``napari-uad score``)."""
        if self._allowed is None:
            margin = float(self.card.calibration.get("edge_margin_mm", 0.0))
            self._allowed = interior(self.result.mask, self.volume.spacing, margin)
        return self._allowed

    def findings(self, name: str, threshold: float, min_volume_mm3: float, connectivity: int = 3,
                 min_thickness_mm: float = 0.0) -> FindingsView:
        """Findings of map ``name`` at these settings (threshold in raw map units, volume mm^3, thickness mm)."""
        labels, findings = find_findings(self.result.maps[name], self.volume, threshold, min_volume_mm3,
                                         connectivity, self.allowed, signed=self.result.maps.get("tissue"),
                                         min_thickness_mm=min_thickness_mm)
        world = np.array([f.centroid_xyz_mm for f in findings]).reshape(-1, 3)
        inv = np.linalg.inv(self.volume.affine)
        canonical = world @ inv[:3, :3].T + inv[:3, 3]
        return FindingsView(labels, findings, canonical, name, threshold, min_volume_mm3, connectivity,
                            min_thickness_mm)

    def review_key(self, view: FindingsView) -> ReviewKey:
        return ReviewKey(scan_sha256=self.scan_sha256, model_name=self.card.name, model_version=self.card.version,
                         model_sha256=self.card.weights_sha256, detection_map=view.detection_map,
                         threshold=round(float(view.threshold), 9), min_volume_mm3=float(view.min_volume_mm3),
                         connectivity=int(view.connectivity), min_thickness_mm=float(view.min_thickness_mm))

    def _rows(self, view: FindingsView, review: ReviewSession | None) -> list[dict]:
        return findings_rows(view.findings, scan_path="" if self.volume.path is None else str(self.volume.path),
                             scan_sha256=self.scan_sha256, model_name=self.card.name,
                             model_version=self.card.version, model_sha256=self.card.weights_sha256,
                             detection_map=view.detection_map, threshold=view.threshold,
                             min_volume_mm3=view.min_volume_mm3, reviews=None if review is None else review.reviews,
                             min_thickness_mm=view.min_thickness_mm)

    def _refuse_scan_path(self, path: Path) -> None:
        if self.volume.path is not None and path.resolve() == Path(self.volume.path).resolve():
            raise ValueError(f"{path}: refusing to overwrite the scan")

    def export_csv(self, path: str | Path, view: FindingsView, review: ReviewSession | None) -> Path:
        """Write the reviewed findings CSV atomically; refuses to write over the scan itself."""
        path = Path(path)
        self._refuse_scan_path(path)
        return write_findings_csv(path, self._rows(view, review))

    def export_slicer(self, path: str | Path, view: FindingsView, review: ReviewSession | None) -> list[Path]:
        """The reviewed findings for 3D Slicer: ``path`` (``X.seg.nrrd``, segments coloured by tag) and
        ``X.mrk.json`` beside it (``napari_uad.interop.slicer``), in the scan's own geometry."""
        from .interop.slicer import write_markups, write_segmentation

        path = Path(path)
        if not path.name.endswith(".seg.nrrd"):
            raise ValueError(f"{path}: a Slicer segmentation file name ends with .seg.nrrd")
        self._refuse_scan_path(path)
        rows = self._rows(view, review)
        markups = path.with_name(path.name[: -len(".seg.nrrd")] + ".mrk.json")
        return [write_segmentation(path, self.volume, view.labels, rows), write_markups(markups, rows)]

    def export_dicom_seg(self, path: str | Path, view: FindingsView, review: ReviewSession | None) -> Path:
        """The reviewed findings as a DICOM Segmentation over the scan's DICOM series (``interop.dicom_seg``)."""
        from . import __version__
        from .interop.dicom_seg import write_dicom_seg

        path = Path(path)
        self._refuse_scan_path(path)
        return write_dicom_seg(path, self.volume, view.labels, self._rows(view, review), self.card.name,
                               self.card.version, __version__)
