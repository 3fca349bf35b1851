"""The MR sequence a scan declares: from its DICOM header, its BIDS name or sidecar, or the user.

A scan's own tissue fit tells fluid-bright (T2, PD) from fluid-dark (T1, FLAIR) scans, but not T1 from FLAIR
(``tissue.scan_contrast``; docs/RESULTS.md, "Which contrasts can be recognised"). The scanner knows: a DICOM
series says what it is (Series Description, Protocol Name, the inversion time of a fluid-attenuated inversion
recovery), a BIDS file says it in its suffix (``_T1w``, ``_T2w``, ``_FLAIR``, ``_PDw``), and a radiologist knows what
they opened. A card may hold settings (operating point, combined-map components) for a declared sequence
(``model_card.settings_key``); a scan that declares none, or whose declared sequence the card has no settings for,
is scored with the settings of the contrast its tissue fit recognises.

Sequence keys: "t1" (T1-weighted, with or without contrast agent), "flair" (T2-FLAIR), "t2", "pd".
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

__all__ = ["SEQUENCES", "SEQUENCE_FLUID", "parse_sequence", "sequence_from_text", "sequence_from_dicom_tags",
           "sequence_from_bids", "sequence_mismatch", "settings_label", "AUTO"]

SEQUENCES = {"t1": "T1", "flair": "FLAIR", "t2": "T2", "pd": "PD"}
"""Declared sequence -> the word a reviewer reads."""
SEQUENCE_FLUID = {"t1": "dark_fluid", "flair": "dark_fluid", "t2": "bright_fluid", "pd": "bright_fluid"}
"""Declared sequence -> the contrast its fluid gives (``tissue.CONTRASTS``)."""
AUTO = "auto"

_ALIASES = {
    "t1": "t1", "t1w": "t1", "t1c": "t1", "t1ce": "t1", "t1gd": "t1", "t1-gd": "t1", "t1+c": "t1", "mprage": "t1",
    "flair": "flair", "t2flair": "flair", "t2-flair": "flair", "t2_flair": "flair",
    "t2": "t2", "t2w": "t2", "pd": "pd", "pdw": "pd",
}
_FLAIR_INVERSION_MS = 1500.0  # fluid is nulled at TI ~ 2000-2500 ms at 1.5-3 T; a T1 MPRAGE's TI is ~ 800-1100 ms


def parse_sequence(text: str | None) -> str | None:
    """A user's sequence word (case-insensitive: T1, T1w, T1c, MPRAGE, FLAIR, T2-FLAIR, T2, T2w, PD, PDw, or
    "auto") -> its key, None for "auto" or an empty value. Raises ValueError naming the choices otherwise."""
    if text is None or not text.strip() or text.strip().lower() == AUTO:
        return None
    key = _ALIASES.get(text.strip().lower().replace(" ", ""))
    if key is None:
        raise ValueError(f"unknown sequence {text!r}; use auto, T1 (T1w, T1c, MPRAGE), FLAIR, T2 or PD")
    return key


def sequence_from_text(text: str) -> str | None:
    """The sequence a DICOM Series Description / Protocol Name (or any such label) names, or None when it names
    none or one this tool has no key for (T2*, SWI, DWI, ...). FLAIR is read first ("T2 FLAIR" is FLAIR) unless
    the label says T1 ("T1 FLAIR" is T1-weighted)."""
    words = re.sub(r"[^A-Z0-9*]+", " ", text.upper()).split()
    joined = " ".join(words)
    has = lambda *names: any(n in words for n in names)  # noqa: E731
    t1 = has("T1", "T1W", "T1C", "T1CE", "T1GD", "MPRAGE", "MP2RAGE", "SPGR", "BRAVO", "TFE", "T1FLAIR")
    if re.search(r"FLAIR|DARK ?FLUID", joined) and not t1:
        return "flair"
    if has("SWI", "DWI", "ADC", "TRACE", "T2*", "T2STAR", "GRE", "EPI", "DTI", "PERFUSION", "ASL"):
        return None
    if t1:
        return "t1"
    if has("PD", "PDW", "PROTON"):
        return "pd"
    if has("T2", "T2W", "TSE2", "T2TSE", "T2FSE"):
        return "t2"
    return None


def sequence_from_dicom_tags(tags: Mapping[str, str]) -> str | None:
    """The sequence a DICOM series' tags declare (keys as SimpleITK names them, e.g. "0008|103e"): its Series
    Description (0008,103E) or Protocol Name (0018,1030), else an inversion-recovery series (Scanning Sequence
    0018,0020 contains IR) with inversion time (0018,0082) >= 1500 ms, which nulls fluid: FLAIR. None otherwise."""
    for tag in ("0008|103e", "0018|1030", "0018|0024"):
        found = sequence_from_text(tags.get(tag, "") or "")
        if found:
            return found
    try:
        inversion = float((tags.get("0018|0082") or "").strip() or "nan")
    except ValueError:
        inversion = float("nan")
    if "IR" in (tags.get("0018|0020") or "").upper().replace("\\", " ").split() and inversion >= _FLAIR_INVERSION_MS:
        return "flair"
    return None


_BIDS_SUFFIX = {"T1w": "t1", "T2w": "t2", "FLAIR": "flair", "PDw": "pd"}


def sequence_from_bids(path: Path, stem: str) -> str | None:
    """The sequence a BIDS-named file declares: its suffix (``sub-01_FLAIR.nii.gz``), else its JSON sidecar's
    SeriesDescription or ProtocolName; None when neither says. ``stem``: the file's name without its image
    suffix. An unreadable sidecar says nothing (the image is still read)."""
    suffix = stem.rsplit("_", 1)[-1] if "_" in stem else ""
    if suffix in _BIDS_SUFFIX:
        return _BIDS_SUFFIX[suffix]
    sidecar = path.with_name(stem + ".json")
    if not sidecar.is_file():
        return None
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict):
        return None
    found = (sequence_from_text(meta[key]) for key in ("SeriesDescription", "ProtocolName")
             if isinstance(meta.get(key), str))
    return next((s for s in found if s), None)


def sequence_mismatch(sequence: str | None, contrast: str | None) -> str | None:
    """Why a scan's declared ``sequence`` cannot be believed, or None: its fluid, as its tissue fit recognises it
    (``contrast``: ``tissue.scan_contrast``), is not what that sequence gives (a "FLAIR" whose fluid is brighter
    than its tissue). Such a scan is scored with the settings of what it reads as."""
    from .tissue import CONTRASTS

    if sequence is None or contrast is None or SEQUENCE_FLUID[sequence] == contrast:
        return None
    return (f"the scan is declared {SEQUENCES[sequence]} but its fluid reads as {CONTRASTS[contrast]}: scored with "
            "the settings of what it reads as; check the sequence")


def settings_label(key: str | None) -> str | None:
    """The words a reviewer reads for a settings key (``ScoreResult.settings``): a recognised contrast's
    (``tissue.CONTRASTS``) or a declared sequence's (``SEQUENCES``); the key itself otherwise, None for None."""
    from .tissue import CONTRASTS

    return None if key is None else CONTRASTS.get(key) or SEQUENCES.get(key) or key
