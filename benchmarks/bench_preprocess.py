"""Benchmark: seconds per preprocessing step for a 1 mm 256^3 head (brain extraction, N4, normalisation,
alignment to MNI152, slicing), with the bundled model's preprocessing settings.

Usage: python benchmarks/bench_preprocess.py [--device cpu|cuda] [--repeats N] [--shared DIR]

The head is the real T1 head of ../shared/data/real_heads (176x238x169, 1 mm, with skull) centred in a 256^3
grid (zero padding, as a scanner's field of view would be); without ../shared, the bundled sample brain padded
the same way (then brain extraction sees a skull-stripped scan). The first run loads deepbet and the template
and is reported separately; the median of the following runs is the steady state of a cohort worker.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def head_256(shared: Path):
    from napari_uad.io import Volume, read_volume
    from napari_uad.resources import sample_data_dir

    source = shared / "data" / "real_heads" / "t1_head_with_skull.nii.gz"
    name = source.name if source.exists() else "sample_brain.nii.gz (no ../shared)"
    vol = read_volume(source if source.exists() else sample_data_dir() / "sample_brain.nii.gz")
    data = np.zeros((256, 256, 256), np.float32)
    lo = [(256 - s) // 2 for s in vol.shape]
    data[lo[0]:lo[0] + vol.shape[0], lo[1]:lo[1] + vol.shape[1], lo[2]:lo[2] + vol.shape[2]] = vol.data
    affine = vol.affine.copy()
    affine[:3, 3] -= affine[:3, :3] @ np.asarray(lo, dtype=np.float64)
    return Volume.from_array(data, affine), name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    args = parser.parse_args()
    from napari_uad.model_card import ModelCard, resolve_model
    from napari_uad.preprocessing import PipelineOptions, prepare_volume

    card = ModelCard.read(resolve_model(None) / "card.json")
    volume, name = head_256(args.shared)
    options = PipelineOptions(device=args.device)
    runs = []
    for _ in range(1 + args.repeats):
        t = time.perf_counter()
        prepared = prepare_volume(volume, card.preprocessing, card.input_size, options=options)
        runs.append((time.perf_counter() - t, {s["step"]: s["seconds"] for s in prepared.steps}))
    steady = runs[1:]
    print(json.dumps({
        "benchmark": "preprocess 256^3 1 mm head", "scan": name, "device": args.device,
        "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
        "first_run_s": round(runs[0][0], 2), "median_s": round(statistics.median(r[0] for r in steady), 2),
        "median_step_s": {k: round(statistics.median(r[1][k] for r in steady), 2) for k in steady[0][1]},
        "brain_extraction": prepared.steps[0]["settings"]["method"],
    }))


if __name__ == "__main__":
    main()
