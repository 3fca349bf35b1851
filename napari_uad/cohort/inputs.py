"""Which scans a cohort holds: a directory (searched recursively), a glob, or a CSV manifest.

Every scan becomes a :class:`CohortItem` with a unique ``id`` (the output stem of its files) and the manifest
columns that are carried into the cohort's outputs (``subject``, ``session``).
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from dataclasses import dataclass, field
from glob import glob
from pathlib import Path

from ..io import ITK_SUFFIXES, NIFTI_SUFFIXES, file_stem
from ..sequence import parse_sequence

__all__ = ["CohortItem", "CARRIED_COLUMNS", "discover", "is_dicom_file"]

CARRIED_COLUMNS = ("subject", "session")
_SCAN_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES


@dataclass(frozen=True)
class CohortItem:
    """One scan of a cohort: ``id`` (output stem), ``path`` (file or DICOM series directory), carried columns,
    and the MR sequence a manifest declares for it (``sequence.SEQUENCES`` key; None: none declared)."""

    id: str
    path: Path
    columns: dict[str, str] = field(default_factory=dict)
    sequence: str | None = None


def is_dicom_file(path: Path) -> bool:
    """A DICOM Part 10 file: 'DICM' at byte 128 (the standard's preamble)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _scan_tree(root: Path) -> list[Path]:
    """Scan files and DICOM series directories (>= 2 DICOM files) under ``root``, sorted."""
    found: list[Path] = []
    for directory, subdirs, files in os.walk(root):
        subdirs.sort()
        here = Path(directory)
        dicom = [f for f in files if not f.lower().endswith(_SCAN_SUFFIXES) and is_dicom_file(here / f)]
        if len(dicom) >= 2:
            found.append(here)
        found += [here / f for f in files if f.lower().endswith(_SCAN_SUFFIXES)]
    return sorted(found)


def _unique_ids(paths: list[Path], root: Path | None) -> list[str]:
    """File stems; where two scans share one, their path below ``root`` (parts joined by '_') instead."""
    stems = [file_stem(p) for p in paths]
    counts = Counter(stems)
    ids = []
    for p, stem in zip(paths, stems):
        if counts[stem] > 1 and root is not None:
            rel = p.relative_to(root)
            stem = "_".join([*rel.parent.parts, file_stem(p)])
        ids.append(stem)
    return ids


def _read_manifest(path: Path) -> list[CohortItem]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or "path" not in reader.fieldnames:
            raise ValueError(f"{path}: a cohort manifest needs a 'path' column (found: "
                             f"{', '.join(reader.fieldnames or []) or 'no header'})")
        rows = list(reader)
    items = []
    for n, row in enumerate(rows, start=2):
        if not (row.get("path") or "").strip():
            raise ValueError(f"{path}: line {n} has an empty 'path'")
        scan = Path(row["path"].strip())
        scan = scan if scan.is_absolute() else path.parent / scan
        scan_id = (row.get("id") or "").strip() or file_stem(scan)
        try:
            sequence = parse_sequence(row.get("sequence"))
        except ValueError as err:
            raise ValueError(f"{path}: line {n}: {err}") from None
        items.append(CohortItem(scan_id, scan, {c: (row.get(c) or "").strip() for c in CARRIED_COLUMNS
                                                if c in row}, sequence))
    return items


def discover(spec: str | os.PathLike) -> list[CohortItem]:
    """The scans of a directory (recursive), a glob pattern, or a CSV manifest (``path`` column; optional
    ``id``, ``subject``, ``session``, ``sequence``: T1, FLAIR, T2, PD or empty; relative paths are relative to the
    manifest). ValueError when there are no scans, two share an id, or a sequence is unknown."""
    p = Path(spec)
    if p.is_file() and p.suffix.lower() == ".csv":
        items = _read_manifest(p)
    else:
        if p.is_dir():
            paths, root = _scan_tree(p), p
        else:
            paths = sorted(Path(f) for f in glob(str(spec), recursive=True))
            root = Path(os.path.commonpath([str(f.parent) for f in paths])) if paths else None
        items = [CohortItem(i, f) for i, f in zip(_unique_ids(paths, root), paths)]
    if not items:
        raise ValueError(f"{spec}: no scans found (.nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd, DICOM series "
                         "directories, or a CSV manifest with a 'path' column)")
    dupes = sorted(k for k, v in Counter(i.id for i in items).items() if v > 1)
    if dupes:
        raise ValueError(f"{spec}: several scans share the id {', '.join(dupes[:5])}; give each a unique 'id'")
    return items
