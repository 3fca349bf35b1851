"""Benchmark: seconds for the model-free maps of one 1 mm head: the tissue map with its first definition and with
the default model card's settings (3.2.0: template priors smoothed by 4 mm), with the card's settings and the
priors deformed onto the scan (``deform_mm`` 3, not a card default), and the asymmetry map with and without the
refinement of the template's midsagittal plane.

Usage: python benchmarks/bench_tissue.py [--repeats N] [--shared DIR]

The head is bench_preprocess's 256^3 head (the real T1 head of ../shared, or the bundled sample brain without
it), prepared once with the default model's preprocessing; then only ``tissue_outlier_map`` and
``asymmetry_map`` are timed (median of --repeats runs each). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from bench_preprocess import ROOT, head_256  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    args = parser.parse_args()
    from napari_uad.asymmetry import asymmetry_map
    from napari_uad.model_card import load_model
    from napari_uad.preprocessing import prepare_volume
    from napari_uad.tissue import TissueSettings, tissue_outlier_map

    _, card = load_model(None)
    volume, name = head_256(args.shared)
    prepared = prepare_volume(volume, card.preprocessing, card.input_size)
    priors = prepared.tissue_priors()
    row = {"head": name, "shape": list(volume.shape), "brain_voxels": int(prepared.brain.sum()),
           "model": f"{card.name} {card.version}", "machine": platform.processor() or platform.machine(),
           "torch_threads": torch.get_num_threads()}
    variants = (("first_definition", TissueSettings()), ("card", card.scoring.tissue()),
                ("card_deformed_3mm", dataclasses.replace(card.scoring.tissue(), deform_mm=3.0)))
    for label, settings in variants:
        row[f"seconds_{label}"] = round(statistics.median(
            _seconds(tissue_outlier_map, prepared.standardised, prepared.brain, priors, volume.spacing, settings)
            for _ in range(args.repeats)), 2)
        row[f"settings_{label}"] = dataclasses.asdict(settings)
    mirror = prepared.midsagittal_mirror()
    for label, refine in (("asymmetry", True), ("asymmetry_template_plane", False)):
        row[f"seconds_{label}"] = round(statistics.median(
            _seconds(asymmetry_map, prepared.standardised, prepared.brain, mirror, volume.spacing, refine=refine)
            for _ in range(args.repeats)), 2)
    print(json.dumps(row))


def _seconds(fn, *args, **kwargs) -> float:
    t = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
