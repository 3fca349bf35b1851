"""Review sessions: a reviewer's tags, categories and notes per finding, saved to disk on every edit.

A session is keyed by what makes finding ids meaningful: the scan's sha256, the model (name, version,
sha256), the detection map, threshold, minimum volume and connectivity. It lives in
``$NAPARI_UAD_HOME/reviews/<key>.json`` (default ``~/.napari-uad``), written atomically after each edit,
so killing napari mid-review loses nothing. Reviewer name and other preferences live in ``settings.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .export import utc_now, write_json

__all__ = ["TAGS", "CATEGORIES", "ReviewKey", "ReviewSession", "app_home", "load_settings", "save_setting"]

TAGS = ("unreviewed", "TP", "FP", "uncertain")
# review categories of the thesis' population study (radiologist review of detections)
CATEGORIES = ("", "reference finding", "imaging artefact", "brain-extraction failure", "not medically relevant",
              "other medical condition")


def app_home() -> Path:
    """Per-user directory of napari-uad state: ``$NAPARI_UAD_HOME`` or ``~/.napari-uad``."""
    return Path(os.environ.get("NAPARI_UAD_HOME", Path.home() / ".napari-uad")).expanduser()


def load_settings() -> dict:
    path = app_home() / "settings.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def save_setting(name: str, value) -> None:
    """Remember one preference (e.g. the reviewer's name) between sessions."""
    home = app_home()
    home.mkdir(parents=True, exist_ok=True)
    write_json(home / "settings.json", {**load_settings(), name: value})


@dataclass(frozen=True)
class ReviewKey:
    """What a set of finding ids depends on."""

    scan_sha256: str
    model_name: str
    model_version: str
    model_sha256: str
    detection_map: str
    threshold: float
    min_volume_mm3: float
    connectivity: int
    min_thickness_mm: float = 0.0

    @property
    def digest(self) -> str:
        fields = asdict(self)
        if not fields["min_thickness_mm"]:
            del fields["min_thickness_mm"]  # reviews saved before the setting existed keep their digest
        text = json.dumps(fields, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:24]


@dataclass
class ReviewSession:
    """Reviews of one scan's findings; ``reviews[finding_id]`` holds tag, category, note, reviewer, reviewed_at."""

    key: ReviewKey
    scan_path: str = ""
    reviews: dict[int, dict] = field(default_factory=dict)
    created_at: str = field(default_factory=utc_now)

    @property
    def path(self) -> Path:
        return app_home() / "reviews" / f"{self.key.digest}.json"

    @classmethod
    def find(cls, key: ReviewKey) -> "ReviewSession | None":
        """The saved session for ``key``, or None."""
        path = app_home() / "reviews" / f"{key.digest}.json"
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return cls(key=key, scan_path=d.get("scan_path", ""), created_at=d.get("created_at", ""),
                   reviews={int(k): v for k, v in d.get("reviews", {}).items()})

    @property
    def n_reviewed(self) -> int:
        return sum(1 for r in self.reviews.values() if r.get("tag", "unreviewed") != "unreviewed")

    def update(self, finding_id: int, reviewer: str = "", **fields: str) -> dict:
        """Set tag / category / note of one finding, stamp reviewer and UTC time, save at once."""
        unknown = set(fields) - {"tag", "category", "note"}
        if unknown:
            raise ValueError(f"unknown review field(s) {sorted(unknown)}")
        if "tag" in fields and fields["tag"] not in TAGS:
            raise ValueError(f"unknown tag {fields['tag']!r}; choose from {', '.join(TAGS)}")
        if "category" in fields and fields["category"] not in CATEGORIES:
            raise ValueError(f"unknown category {fields['category']!r}")
        entry = self.reviews.setdefault(int(finding_id), {"tag": "unreviewed", "category": "", "note": ""})
        entry.update(fields)
        entry["reviewer"] = reviewer
        entry["reviewed_at"] = utc_now()
        self.save()
        return entry

    def save(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return write_json(self.path, {"key": asdict(self.key), "scan_path": self.scan_path,
                                      "created_at": self.created_at, "saved_at": utc_now(),
                                      "reviews": {str(k): v for k, v in sorted(self.reviews.items())}})
