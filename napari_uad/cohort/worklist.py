"""A cohort's ranked worklist for review (Qt-free): open each scan with its precomputed maps, track status.

The worklist is DIR/cohort.csv (written by ``napari-uad cohort``) in rank order, failed scans left out. A scan
opens from its files in DIR/scans/ (no rescoring) as a :class:`~napari_uad.session.ScoredScan` whose detection
map, threshold, minimum volume and edge margin are the ones it was scored with, so the findings and their ids
are those of ``S.findings.csv`` and the review session is the one the widget saves (``ReviewSession``).

Per-scan review status: "not reviewed" (no tag yet), "in review" (opened, or some findings tagged), "done" (every
finding tagged, or marked done). The position and the marks live in DIR/worklist.json, saved on every change, so a
reviewer can stop and resume where they left off.
"""

from __future__ import annotations

import copy
import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..export import FINDINGS_COLUMNS, UNREVIEWED, utc_now, write_findings_csv, write_json
from ..io import read_volume
from ..model_card import ModelCard, ModelError
from ..review import ReviewKey, ReviewSession
from ..scoring import ScoreResult
from ..session import ScoredScan

__all__ = ["Worklist", "WorklistEntry", "STATUSES"]

STATUSES = ("not reviewed", "in review", "done")
_STATE_FILE = "worklist.json"


@dataclass(frozen=True)
class WorklistEntry:
    """One scan of the worklist: its cohort.csv row."""

    rank: int
    id: str
    path: Path
    row: dict


class Worklist:
    """The ranked scans of a cohort directory, the current position and each scan's review status."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        table = self.directory / "cohort.csv" if self.directory.is_dir() else self.directory
        if table.is_file():
            self.directory = table.parent
        else:
            raise ValueError(f"{table}: not a cohort (no cohort.csv; run napari-uad cohort first)")
        with open(table, newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.DictReader(fh) if r.get("status") == "done"]
        if not rows:
            raise ValueError(f"{table}: no scored scans in this cohort")
        self.entries = [WorklistEntry(int(r["rank"]), r["id"], Path(r["path"]), r)
                        for r in sorted(rows, key=lambda r: int(r["rank"]))]
        state_path = self.directory / _STATE_FILE
        try:
            self.state = json.loads(state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self.state = {"current": self.entries[0].id, "marks": {}}
        if self.state.get("current") not in {e.id for e in self.entries}:
            self.state["current"] = self.entries[0].id

    # -- position ---------------------------------------------------------------------------------------------
    @property
    def index(self) -> int:
        return next(i for i, e in enumerate(self.entries) if e.id == self.state["current"])

    @property
    def current(self) -> WorklistEntry:
        return self.entries[self.index]

    def move(self, step: int) -> WorklistEntry:
        """Go ``step`` scans down (+) or up (-) the ranking (clamped); saved at once."""
        return self.go_to(min(max(self.index + step, 0), len(self.entries) - 1))

    def go_to(self, index: int) -> WorklistEntry:
        self.state["current"] = self.entries[index].id
        self._save()
        return self.current

    def _save(self) -> None:
        write_json(self.directory / _STATE_FILE, {**self.state, "saved_at": utc_now()})

    # -- one scan's files ---------------------------------------------------------------------------------------
    def report(self, entry: WorklistEntry) -> dict:
        return json.loads((self.directory / "scans" / f"{entry.id}.json").read_text(encoding="utf-8"))

    def card(self) -> ModelCard:
        """The card of the cohort's model (cohort.json), checked against the weights it names."""
        cohort = json.loads((self.directory / "cohort.json").read_text(encoding="utf-8"))
        card = ModelCard.read(Path(cohort["model"]["path"]) / "card.json")
        if card.weights_sha256 != cohort["model"]["sha256"]:
            raise ModelError(f"{cohort['model']['path']}: model weights differ from the ones this cohort was "
                             "scored with")
        return card

    def review_key(self, entry: WorklistEntry) -> ReviewKey:
        """The key of the review session the widget saves for this scan at its cohort settings."""
        r = self.report(entry)
        return ReviewKey(scan_sha256=r["scan"]["sha256"], model_name=r["model"]["name"],
                         model_version=r["model"]["version"], model_sha256=r["model"]["sha256"],
                         detection_map=r["detection_map"], threshold=round(float(r["threshold"]), 9),
                         min_volume_mm3=float(r["min_volume_mm3"]), connectivity=int(r["connectivity"]),
                         min_thickness_mm=float(r.get("min_thickness_mm", 0.0)))

    def open(self, entry: WorklistEntry | None = None, card: ModelCard | None = None) -> ScoredScan:
        """The scan with its precomputed maps, brain mask and slice scores (canonical grid; nothing rescored).

        Its card is the cohort's, set to the detection map, threshold, minimum volume and edge margin the scan
        was scored with. Marks the scan "in review" unless it is done."""
        entry = entry or self.current
        r = self.report(entry)
        scans = self.directory / "scans"
        volume = read_volume(entry.path, modality=r["scan"]["modality"])
        if volume.sha256() != r["scan"]["sha256"]:
            raise ValueError(f"{entry.path}: the scan changed since it was scored (sha256 differs); rescore it")
        maps = {m: read_volume(scans / f"{entry.id}.{m}.nii.gz", allow_constant=True).data.astype(np.float32)
                for m in r["maps"]}
        mask = read_volume(scans / f"{entry.id}.brainmask.nii.gz", allow_constant=True).data > 0
        scores = r["sample_scores"]
        as_array = (lambda key: np.array([np.nan if v is None else v for v in scores[key]], dtype=float))
        result = ScoreResult(maps=maps, mask=mask, slice_scores=as_array("slice"), slice_kl=as_array("slice_kl"),
                             slice_rec=as_array("slice_rec"), volume_score=float(scores["volume"]),
                             device=r["device"], batch_size=r["batch_size"], seconds=r["seconds"],
                             warnings=r["warnings"], preprocessing=r["preprocessing"])
        card = copy.deepcopy(card or self.card())
        det = r["detection_map"]
        card.calibration["maps"] = {**card.calibration.get("maps", {}),
                                    det: {**card.calibration.get("maps", {}).get(det, {}),
                                          "threshold": float(r["threshold"])}}
        card.calibration.update(detection_map=det, min_volume_mm3=float(r["min_volume_mm3"]),
                                min_thickness_mm=float(r.get("min_thickness_mm", 0.0)),
                                edge_margin_mm=float(r["edge_margin_mm"]))
        # the point the scan was scored at (its contrast's, where the card has one) is the card's only one here
        card.calibration["operating_point"] = {**(card.calibration.get("operating_point") or {}), "by_contrast": {}}
        if self.state["marks"].get(entry.id) != "done":
            self.state["marks"][entry.id] = "in review"
            self._save()
        return ScoredScan(volume=volume, result=result, card=card,
                          warnings=list(r["out_of_distribution"]["warnings"]), _sha256=r["scan"]["sha256"])

    # -- status and export ----------------------------------------------------------------------------------
    def _findings(self, entry: WorklistEntry) -> list[dict]:
        with open(self.directory / "scans" / f"{entry.id}.findings.csv", newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))

    def mark_done(self, entry: WorklistEntry | None = None, done: bool = True) -> None:
        entry = entry or self.current
        self.state["marks"][entry.id] = "done" if done else "in review"
        self._save()

    def status(self, entry: WorklistEntry) -> str:
        """'not reviewed', 'in review' or 'done' (see the module docstring)."""
        if self.state["marks"].get(entry.id) == "done":
            return "done"
        session = ReviewSession.find(self.review_key(entry))
        tagged = 0 if session is None else session.n_reviewed
        n = len(self._findings(entry))
        if n and tagged >= n:
            return "done"
        return "in review" if tagged or entry.id in self.state["marks"] else "not reviewed"

    def export_reviewed(self, path: str | Path) -> Path:
        """Every finding of every scan with at least one tag, with its review fields (findings CSV schema)."""
        rows = []
        for entry in self.entries:
            session = ReviewSession.find(self.review_key(entry))
            if session is None or not session.n_reviewed:
                continue
            for row in self._findings(entry):
                review = session.reviews.get(int(row["finding_id"]), {})
                row.update(tag=review.get("tag") or UNREVIEWED,
                           **{k: review.get(k, "") for k in ("category", "note", "reviewer", "reviewed_at")})
                rows.append({c: row.get(c, "") for c in FINDINGS_COLUMNS})
        return write_findings_csv(path, rows)
