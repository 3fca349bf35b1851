"""MOOD challenge I/O: pixel maps in [0, 1] with the input file names, and ``<file>.txt`` sample scores in [0, 1].

Pixel: the model's detection map as healthy-voxel quantiles (the card's calibration), zero outside the
foreground, written with the input's file name, shape and affine. Sample: the healthy-voxel quantile of the
99.99th percentile of the raw detection map inside the foreground (monotone in how extreme the most anomalous
voxels are; only its ranking matters for the MOOD sample-level AP).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .calibration import to_quantile
from .io import VolumeError, read_volume, write_like
from .scoring import Scorer

__all__ = ["score_mood"]


def score_mood(scorer: Scorer, in_dir: Path, out_dir: Path, mode: str, log=print) -> int:
    """Score every .nii/.nii.gz in ``in_dir`` into ``out_dir``; returns the number of failed inputs."""
    card = scorer.card
    name = card.detection_map
    cal = card.calibration
    if "levels" not in cal or "quantiles" not in cal.get("maps", {}).get(name, {}):
        raise ValueError(f"model {card.name!r} has no calibration for {name}; MOOD output needs one")
    table = {"quantiles": cal["maps"][name]["quantiles"], "levels": cal["levels"]}
    files = sorted(p for p in Path(in_dir).iterdir() if p.name.endswith((".nii.gz", ".nii")))
    if not files:
        raise ValueError(f"{in_dir}: no .nii/.nii.gz files")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    failures = 0
    for path in files:
        try:
            volume = read_volume(path)
            result = scorer.score(volume, (name,))
        except (VolumeError, ValueError) as err:
            log(f"napari-uad: error: {err}")
            failures += 1
            continue
        raw = result.maps[name]
        if mode == "pixel":
            q = to_quantile(raw, table)
            q[~result.mask] = 0.0
            write_like(volume, q, Path(out_dir) / path.name)
        else:
            extreme = float(np.quantile(raw[result.mask], 0.9999))
            value = float(to_quantile(np.array([extreme]), table)[0])
            (Path(out_dir) / f"{path.name}.txt").write_text(f"{value:.8f}\n", encoding="utf-8")
        log(f"{path.name}: done")
    return failures
