"""Benchmark: wall time and peak memory of the README's "adapt the model to your scanner" calibration.

Usage: python benchmarks/site_calibration.py [--model NAME|PATH] [--maps-dir DIR] [--val-maps 4] [--n 10]
       [--normals runs/normals] [--toy-anomalies 1] [--work runs/site-cal] [--device cpu]

Makes the normal scans if ``--normals`` has none: ``--n`` synthetic 1 mm T1 heads with skull standing in for a
site's normal scans (``_validation.heads_in_turn`` on the held-out label maps, seeds 300000+, family t1, no normal
variants; stored as int16 NIfTI, intensities scaled to 0-3000, in the heads' RAS+ grid). Then copies the model to
``--work`` (a fresh copy each run: calibrate rewrites the card it is given), runs ``napari-uad calibrate --model
COPY --data NORMALS [--toy-anomalies K] --device D`` as a child process and prints one JSON line: wall seconds,
the child's peak resident memory (MB, ``getrusage(RUSAGE_CHILDREN)``), and the operating point it wrote.
Results: docs/BENCHMARKS.md ("Site calibration").
"""

from __future__ import annotations

import json
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _validation import heads_in_turn, validation_parser

SEED = 300000


def make_normals(directory: Path, files: list[Path], n: int) -> None:
    """The ``n`` normal heads (module docstring) from the label maps ``files`` as ``directory/normal_SEED.nii.gz``."""
    import nibabel as nib

    directory.mkdir(parents=True, exist_ok=True)
    for i, _, head in heads_in_turn(files, n, SEED, families=("t1",), normal_variants=False):
        data = np.round(head.data / max(float(head.data.max()), 1e-6) * 3000.0).astype(np.int16)
        nib.save(nib.Nifti1Image(data, head.affine), str(directory / f"normal_{SEED + i}.nii.gz"))


def main() -> None:
    parser = validation_parser(__doc__.splitlines()[0], n=10)
    parser.add_argument("--normals", default="runs/normals")
    parser.add_argument("--toy-anomalies", type=int, default=1)
    parser.add_argument("--work", default="runs/site-cal")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from napari_uad.model_card import resolve_model
    from napari_uad.synth_labels import label_map_files

    normals = Path(args.normals)
    if not (normals.is_dir() and any(normals.glob("*.nii.gz"))):
        if not args.maps_dir.is_dir():
            sys.exit(f"{args.maps_dir}: no label maps to make the normal scans from (give --maps-dir)")
        make_normals(normals, label_map_files(args.maps_dir)[-args.val_maps:], args.n)
    work = Path(args.work)
    if work.exists():
        shutil.rmtree(work)
    model = resolve_model(args.model)
    shutil.copytree(model, work)
    command = [sys.executable, "-m", "napari_uad.cli", "calibrate", "--model", str(work), "--data", str(normals),
               "--device", args.device]
    if args.toy_anomalies:
        command += ["--toy-anomalies", str(args.toy_anomalies)]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    card = json.loads((work / "card.json").read_text())
    point = card["calibration"].get("operating_point", {})
    print(json.dumps({"machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "model": str(model),
                      "scans": len(list(normals.glob("*.nii.gz"))), "toy_anomalies": args.toy_anomalies,
                      "wall_s": round(wall, 1),
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
                      "threshold": point.get("threshold"), "min_volume_mm3": point.get("min_volume_mm3"),
                      "validation": point.get("validation")}))


if __name__ == "__main__":
    main()
