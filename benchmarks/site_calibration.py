"""Benchmark: wall time and peak memory of the README's "adapt the model to your scanner" calibration.

Usage: python benchmarks/site_calibration.py [--model cevae-brain-mr-heads] [--normals runs/normals]
       [--toy-anomalies 1] [--work runs/site-cal] [--device cpu]

Makes the normal scans if ``--normals`` has none: 10 synthetic 1 mm T1 heads with skull standing in for a site's
normal scans (``synth_labels.label_head`` on the 4 held-out label maps in turn, seeds 300000-300009, family t1;
stored as int16 NIfTI, intensities scaled to 0-3000, in the heads' RAS+ grid). Then copies the model to ``--work``
(a fresh copy each run: calibrate rewrites the card it is given), runs ``napari-uad calibrate --model COPY --data
NORMALS [--toy-anomalies K] --device D`` as a child process and prints one JSON line: wall seconds, the child's
peak resident memory (MB, ``getrusage(RUSAGE_CHILDREN)``), and the operating point it wrote.
Results: docs/BENCHMARKS.md ("Site calibration").
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SEEDS = range(300000, 300010)
SHARED_MAPS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "synthseg_label_maps"


def make_normals(directory: Path, label_maps: Path) -> None:
    """The 10 normal heads (module docstring) as ``directory/normal_SEED.nii.gz``."""
    import nibabel as nib

    from napari_uad.synth_labels import label_head, label_map_files

    held_out = label_map_files(label_maps)[-4:]
    directory.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(SEEDS):
        head = label_head(held_out[i % len(held_out)], seed, family="t1")
        data = np.round(head.data / max(float(head.data.max()), 1e-6) * 3000.0).astype(np.int16)
        nib.save(nib.Nifti1Image(data, head.affine), str(directory / f"normal_{seed}.nii.gz"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cevae-brain-mr-heads")
    parser.add_argument("--normals", default="runs/normals")
    parser.add_argument("--label-maps", default=str(SHARED_MAPS))
    parser.add_argument("--toy-anomalies", type=int, default=1)
    parser.add_argument("--work", default="runs/site-cal")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from napari_uad.model_card import resolve_model

    normals = Path(args.normals)
    if not (normals.is_dir() and any(normals.glob("*.nii.gz"))):
        if not Path(args.label_maps).is_dir():
            sys.exit(f"{args.label_maps}: no label maps to make the normal scans from (give --label-maps)")
        make_normals(normals, Path(args.label_maps))
    work = Path(args.work)
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(resolve_model(args.model), work)
    command = [sys.executable, "-m", "napari_uad.cli", "calibrate", "--model", str(work), "--data", str(normals),
               "--device", args.device]
    if args.toy_anomalies:
        command += ["--toy-anomalies", str(args.toy_anomalies)]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    card = json.loads((work / "card.json").read_text())
    point = card["calibration"].get("operating_point", {})
    print(json.dumps({"machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "model": args.model,
                      "scans": len(list(normals.glob("*.nii.gz"))), "toy_anomalies": args.toy_anomalies,
                      "wall_s": round(wall, 1),
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
                      "threshold": point.get("threshold"), "min_volume_mm3": point.get("min_volume_mm3"),
                      "validation": point.get("validation")}))


if __name__ == "__main__":
    main()
