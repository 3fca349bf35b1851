"""The README demo's check with any model: score the bundled sample scan as `napari-uad demo --headless` does and
count its lesions found and false findings against the ground truth shipped beside it.

Usage: python benchmarks/sample_check.py [--model NAME|PATH] [--out DIR]
Passes (exit 0) as tests/test_bundled_model.py asks of the bundled model: 3 lesions, >= 2 found, <= 1 false
finding, no out-of-distribution warning. Prints one JSON line. Changes no card.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np


def main() -> int:
    from napari_uad.cli import main as cli_main
    from napari_uad.metrics import finding_overlaps
    from napari_uad.model_card import DEFAULT_MODEL
    from napari_uad.resources import sample_data_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model name or path (default: the bundled one)")
    parser.add_argument("--out", type=Path, default=None, help="keep the outputs here (default: a temporary dir)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="sample_check-"))
    scan = sample_data_dir() / "sample_brain.nii.gz"
    if cli_main(["score", str(scan), "--out", str(out), "--device", "cpu", "--model", str(args.model)]) != 0:
        return 1
    found_labels = np.asarray(nib.load(str(out / "sample_brain.labels.nii.gz")).dataobj).astype(np.int64)
    truth = np.asarray(nib.load(str(sample_data_dir() / "sample_brain_mask.nii.gz")).dataobj)
    overlaps, n_lesions = finding_overlaps(found_labels, truth)
    hits = {lesion for lesion in overlaps.values() if lesion}
    n_false = sum(1 for lesion in overlaps.values() if not lesion)
    warnings = json.loads((out / "sample_brain.json").read_text())["warnings"]
    passes = n_lesions == 3 and len(hits) >= 2 and n_false <= 1 and not warnings
    print(json.dumps({"model": str(args.model), "lesions": n_lesions, "found": len(hits), "false": n_false,
                      "warnings": warnings, "passes": passes}))
    return 0 if passes else 1


if __name__ == "__main__":
    sys.exit(main())
