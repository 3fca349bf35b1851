"""Where bundled models and sample data live: inside an installed wheel or in the source checkout."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["bundled_models_dir", "user_models_dir", "sample_data_dir"]

_PACKAGE = Path(__file__).resolve().parent
DEFAULT_MODEL = "cevae-brain-mr-heads"  # the bundled model used when none is named


def _bundled(name: str) -> Path | None:
    for candidate in (_PACKAGE / "_bundled" / name, _PACKAGE.parent / name):  # wheel, then checkout
        if candidate.is_dir():
            return candidate
    return None


def bundled_models_dir() -> Path | None:
    """Directory of the models shipped with the package (``models/`` of the repository)."""
    return _bundled("models")


def sample_data_dir() -> Path | None:
    """Directory of the bundled sample scan (``sample_data/`` of the repository)."""
    return _bundled("sample_data")


def user_models_dir() -> Path:
    """Directory searched for user-trained models: ``$NAPARI_UAD_MODELS`` or ``~/.napari-uad/models``."""
    return Path(os.environ.get("NAPARI_UAD_MODELS", Path.home() / ".napari-uad" / "models")).expanduser()
