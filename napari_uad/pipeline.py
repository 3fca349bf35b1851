"""One scan from file to result files: read -> OOD check -> preprocess + score -> findings -> write (Qt-free).

Used by the CLI (``score``) and reused per scan by every caller that writes result files."""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__
from .export import findings_rows, utc_now, write_findings_csv, write_json
from .findings import find_findings, interior
from .io import read_volume, write_like
from .mask import load_mask
from .ood import UNRELIABLE, check_input, check_score
from .scoring import MAP_NAMES, Progress, Scorer, parse_maps
from .sequence import SEQUENCES, parse_sequence

__all__ = ["EXPORT_FORMATS", "ScoreJob", "environment"]

EXPORT_FORMATS = ("slicer", "dicom-seg")


def environment() -> dict:
    """Python, torch and CUDA versions and the platform, as recorded in S.json."""
    import platform

    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "platform": platform.platform()}


@dataclass
class ScoreJob:
    """Settings shared by every scan of one ``napari-uad score`` run.

    threshold: detection threshold in raw units of ``detection_map``; min_volume_mm3: smallest finding kept;
    min_thickness_mm: thinnest finding kept (world mm, ``findings.component_thickness``).
    Each came from the card where ``*_from_card``: the card's point for the scan's settings key (its declared
    sequence where the card has settings for it, else its recognised contrast: ``ScoreResult.settings``) then
    replaces it once the scan is scored (``ModelCard.contrast_point``).
    sequence: the MR sequence every scan of the run is declared to be (``sequence.SEQUENCES``; ``--sequence``),
    replacing what a scan's DICOM header or BIDS name declares; None: each scan's own declaration, if any.
    """

    scorer: Scorer
    maps: tuple[str, ...]
    detection_map: str
    threshold: float
    min_volume_mm3: float = 0.0
    connectivity: int = 3
    force: bool = False
    edge_margin_mm: float = 0.0  # findings keep this distance (mm) from the brain mask's surface
    log: Callable[[str], None] | None = None  # receives one line per out-of-distribution warning
    command: str = ""  # the command line, recorded in S.json
    exports: tuple[str, ...] = ()  # extra formats: "slicer" (S.seg.nrrd + S.mrk.json), "dicom-seg" (S.seg.dcm)
    threshold_from_card: bool = False
    min_volume_from_card: bool = False
    min_thickness_mm: float = 0.0
    min_thickness_from_card: bool = False
    sequence: str | None = None

    @classmethod
    def from_card(cls, scorer: Scorer, maps: tuple[str, ...], detection_map: str | None = None,
                  threshold: float | None = None, min_volume_mm3: float | None = None,
                  edge_margin_mm: float | None = None, connectivity: int = 3, force: bool = False,
                  log: Callable[[str], None] | None = None, command: str = "",
                  exports: tuple[str, ...] = (), min_thickness_mm: float | None = None,
                  sequence: str | None = None) -> "ScoreJob":
        """A job whose unset settings come from the model card (detection map, its calibrated threshold, minimum
        volume and thickness, edge margin); ValueError with a one-line reason when one is missing or invalid."""
        card = scorer.card
        threshold_from_card, min_volume_from_card = threshold is None, min_volume_mm3 is None
        detection_map = detection_map or card.detection_map
        if detection_map not in MAP_NAMES:
            raise ValueError(f"unknown detection map {detection_map!r}; choose from {', '.join(MAP_NAMES)}")
        if threshold is None:
            threshold = card.default_threshold(detection_map)
            if threshold is None:
                raise ValueError(f"model {card.name!r} has no calibrated threshold for {detection_map}; "
                                 "pass --threshold")
        if not math.isfinite(threshold):
            raise ValueError(f"--threshold must be a finite number, not {threshold}")
        if min_volume_mm3 is None:
            min_volume_mm3 = float(card.calibration.get("min_volume_mm3", 0.0))
        if not 0.0 <= min_volume_mm3 < float("inf"):
            raise ValueError(f"--min-volume-mm3 must be a finite number >= 0, not {min_volume_mm3}")
        min_thickness_from_card = min_thickness_mm is None
        if min_thickness_mm is None:
            min_thickness_mm = card.default_min_thickness()
        if not 0.0 <= min_thickness_mm < float("inf"):
            raise ValueError(f"--min-thickness-mm must be a finite number >= 0, not {min_thickness_mm}")
        unknown = sorted(set(exports) - set(EXPORT_FORMATS))
        if unknown:
            raise ValueError(f"unknown export format(s) {', '.join(unknown)}; choose from {', '.join(EXPORT_FORMATS)}")
        if edge_margin_mm is None:
            edge_margin_mm = float(card.calibration.get("edge_margin_mm", 0.0))
        if not 0.0 <= edge_margin_mm < float("inf"):
            raise ValueError(f"--edge-margin-mm must be a finite number >= 0, not {edge_margin_mm}")
        return cls(scorer=scorer, maps=maps, detection_map=detection_map, threshold=threshold,
                   min_volume_mm3=min_volume_mm3, connectivity=connectivity, force=force,
                   edge_margin_mm=edge_margin_mm, log=log, command=command, exports=tuple(exports),
                   threshold_from_card=threshold_from_card, min_volume_from_card=min_volume_from_card,
                   min_thickness_mm=min_thickness_mm, min_thickness_from_card=min_thickness_from_card,
                   sequence=parse_sequence(sequence))

    def operating_point(self, contrast: str | None) -> tuple[float, float]:
        """(threshold, minimum volume mm^3) for a scan whose settings key (``ScoreResult.settings``: recognised
        contrast or declared sequence) is ``contrast``: the settings given, and for those taken from the card the
        card's point for that key (its pooled point where it has none)."""
        card = self.scorer.card
        threshold = card.default_threshold(self.detection_map, contrast) if self.threshold_from_card else None
        own = self.detection_map == card.detection_map and self.min_volume_from_card
        return (self.threshold if threshold is None else threshold,
                card.default_min_volume(contrast) if own else self.min_volume_mm3)

    def min_thickness(self, contrast: str | None) -> float:
        """Thinnest finding kept (world mm) for a scan whose settings key is ``contrast``: the value given, else
        the card's for that key (its pooled one where it has none; 0 for another map than the card's)."""
        card = self.scorer.card
        if not self.min_thickness_from_card:
            return self.min_thickness_mm
        return card.default_min_thickness(contrast) if self.detection_map == card.detection_map else 0.0

    def sources(self, contrast: str | None) -> dict[str, str]:
        """Where the threshold, the minimum volume and the minimum thickness of a scan whose settings key is
        ``contrast`` (recognised contrast or declared sequence) came from (recorded in S.json)."""
        card = self.scorer.card
        own = card.contrast_point(contrast) is not None and self.detection_map == card.detection_map
        key = "sequence" if contrast in SEQUENCES else "contrast"
        source = f"card, this scan's {key}" if own else "card, pooled"
        return {"threshold": source if self.threshold_from_card else "given",
                "min_volume_mm3": source if self.min_volume_from_card else "given",
                "min_thickness_mm": source if self.min_thickness_from_card else "given"}

    def run(self, path: Path, out_dir: Path, stem: str, mask_path: Path | None = None, modality: str | None = None,
            progress: Callable[[Progress], None] | None = None, sequence: str | None = None) -> list[Path]:
        """Score ``path`` and write S.<map>.nii.gz, S.labels.nii.gz, S.brainmask.nii.gz, S.findings.csv and
        S.json into ``out_dir``. ``sequence``: this scan's declared MR sequence (a cohort manifest's column; a key
        of ``sequence.SEQUENCES``), before the job's ``sequence`` and what the file itself declares.

        Returns the written files. Volumes are written in the input's original grid and affine. A scan of
        another modality than the model's raises ``ModalityMismatch`` unless ``force``.
        """
        t0 = time.perf_counter()
        volume = read_volume(path, modality=modality)
        if sequence or self.sequence:
            volume.metadata.update(sequence=sequence or self.sequence,
                                   sequence_source="cohort manifest" if sequence else "--sequence")
        mask = load_mask(mask_path, volume) if mask_path is not None else None
        t_read = time.perf_counter() - t0
        card = self.scorer.card
        ood_warnings = check_input(volume, card, self.force)
        result = self.scorer.score(volume, parse_maps(set(self.maps) | {self.detection_map}), mask, progress)
        found, ood_facts = check_score(result, volume.voxel_volume_mm3, card, self.detection_map)
        ood_warnings += found
        if ood_warnings:
            ood_warnings.append(UNRELIABLE)
            for warning in ood_warnings:
                (self.log or (lambda m: None))(f"napari-uad: warning: {path}: {warning}")
        t1 = time.perf_counter()
        threshold, min_volume = self.operating_point(result.settings)
        min_thickness = self.min_thickness(result.settings)
        labels, findings = find_findings(result.maps[self.detection_map], volume, threshold, min_volume,
                                         self.connectivity,
                                         interior(result.mask, volume.spacing, self.edge_margin_mm),
                                         signed=result.maps.get("tissue"), min_thickness_mm=min_thickness)
        t_findings = time.perf_counter() - t1
        t2 = time.perf_counter()
        model = f"{card.name} {card.version}"
        written = [write_like(volume, result.maps[name], out_dir / f"{stem}.{name}.nii.gz",
                              description=f"napari-uad map {name}; {model}") for name in self.maps]
        written.append(write_like(volume, labels, out_dir / f"{stem}.labels.nii.gz", dtype=np.uint16,
                                  description=f"napari-uad findings ({self.detection_map} >= {threshold:.4g}); "
                                              f"{model}"))
        written.append(write_like(volume, result.mask, out_dir / f"{stem}.brainmask.nii.gz", dtype=np.uint8,
                                  description=f"napari-uad brain mask; {model}"))
        scan_sha = volume.sha256()
        rows = findings_rows(findings, scan_path=str(Path(path).resolve()), scan_sha256=scan_sha,
                             model_name=card.name, model_version=card.version, model_sha256=card.weights_sha256,
                             detection_map=self.detection_map, threshold=threshold, min_volume_mm3=min_volume,
                             min_thickness_mm=min_thickness)
        written.append(write_findings_csv(out_dir / f"{stem}.findings.csv", rows))
        if "slicer" in self.exports:
            from .interop.slicer import write_markups, write_segmentation

            written.append(write_segmentation(out_dir / f"{stem}.seg.nrrd", volume, labels, rows))
            written.append(write_markups(out_dir / f"{stem}.mrk.json", rows))
        if "dicom-seg" in self.exports and findings:
            from .interop.dicom_seg import write_dicom_seg

            written.append(write_dicom_seg(out_dir / f"{stem}.seg.dcm", volume, labels, rows, card.name,
                                           card.version, __version__))
        seconds = {"read": t_read, **result.seconds, "findings": t_findings, "write": time.perf_counter() - t2}
        report = {
            "napari_uad_version": __version__,
            "created_utc": utc_now(),
            "command": self.command,
            "environment": environment(),
            "scan": {"path": str(Path(path).resolve()), "sha256": scan_sha, "shape": list(volume.original_shape),
                     "spacing_mm": volume.spacing, "orientation": "".join(volume.original_axcodes),
                     "modality": volume.modality},
            "model": {"name": card.name, "version": card.version, "sha256": card.weights_sha256},
            "device": result.device,
            "batch_size": result.batch_size,
            "maps": list(self.maps),
            "detection_map": self.detection_map,
            "threshold": threshold,
            "card_thresholds": {m: card.default_threshold(m, result.settings) for m in self.maps},
            "min_volume_mm3": min_volume,
            "min_thickness_mm": min_thickness,
            "contrast": result.contrast,
            "sequence": result.sequence,
            "sequence_source": volume.metadata.get("sequence_source") if result.sequence else None,
            "settings": result.settings,
            "operating_point": self.sources(result.settings),
            "edge_margin_mm": self.edge_margin_mm,
            "connectivity": self.connectivity,
            "n_findings": len(findings),
            "sample_scores": {
                "volume": result.volume_score,
                "volume_rule": f"mean of the top {card.scoring.top_k_slices} slice scores",
                "slice_axis": "canonical axial index k (inferior to superior); null = no brain",
                "slice": result.slice_scores,
                "slice_kl": result.slice_kl,
                "slice_rec": result.slice_rec,
            },
            "preprocessing": result.preprocessing,
            "postprocessing": result.postprocessing,
            "out_of_distribution": {"warnings": ood_warnings, **ood_facts},
            "warnings": result.warnings + ood_warnings,
            "seconds": seconds,
        }
        report["seconds"]["total"] = time.perf_counter() - t0
        written.append(write_json(out_dir / f"{stem}.json", report))
        return written

    def run_into(self, path: Path, out_dir: Path, stem: str, mask_path: Path | None = None,
                 modality: str | None = None, progress: Callable[[Progress], None] | None = None,
                 sequence: str | None = None) -> list[Path]:
        """:meth:`run` into a private staging directory inside ``out_dir``, then move the finished files into
        ``out_dir``: a crash or an error leaves no partial output, only complete ones (the JSON last)."""
        protected = {Path(p).resolve() for p in (path, mask_path) if p is not None and Path(p).exists()}
        staging = Path(tempfile.mkdtemp(prefix=f".{stem}.", suffix=".partial", dir=out_dir))
        try:
            written = self.run(path, staging, stem, mask_path=mask_path, modality=modality, progress=progress,
                               sequence=sequence)
            targets = [out_dir / f.name for f in written]
            clash = [t for t in targets if t.resolve() in protected]
            if clash:
                raise ValueError(f"output {clash[0]} would overwrite an input; choose another --out")
            for f, target in zip(written, targets):  # the JSON (written last) marks the scan complete
                f.replace(target)
            return targets
        finally:
            shutil.rmtree(staging, ignore_errors=True)
