"""Benchmark: seconds and peak RSS to score a 1 mm brain volume (MNI152 2009, 197x233x189): default maps or all.

Usage: python benchmarks/bench_score.py [--model NAME|PATH] [--device cpu|cuda|auto] [--repeats N] [--maps all]
Without --model the bundled model is used if present, else a randomly initialised model with the default
architecture (the speed does not depend on the weights). Prints one JSON line per device.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time

import numpy as np
import torch


def load_benchmark_model(ref: str | None):
    from napari_uad.model import ArchitectureConfig, CeVAE
    from napari_uad.model_card import ModelCard, ModelError, load_model, save_model

    try:
        return load_model(ref)
    except ModelError:
        if ref is not None:
            raise
    torch.manual_seed(0)
    directory = tempfile.mkdtemp()
    save_model(CeVAE(ArchitectureConfig()), ModelCard(name="random-default-arch", version="0"), directory)
    return load_model(directory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--maps", choices=("default", "all"), default="default",
                        help="the card's default maps (what `score` writes) or every map incl. the gradient maps")
    args = parser.parse_args()

    from nilearn.datasets import load_mni152_template

    from napari_uad.io import Volume
    from napari_uad.scoring import MAP_NAMES, Scorer, default_maps

    img = load_mni152_template(resolution=1)
    volume = Volume.from_array(np.asarray(img.dataobj, dtype=np.float32), img.affine)
    model, card = load_benchmark_model(args.model)
    scorer = Scorer(model, card, device=args.device, batch_size=args.batch_size)
    maps = MAP_NAMES if args.maps == "all" else default_maps(card)
    times = []
    for _ in range(args.repeats + 1):  # first run warms up allocator / kernels
        if scorer.device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        result = scorer.score(volume, maps)
        if scorer.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({
        "volume_shape": list(volume.shape), "model": card.name, "input_size": card.input_size,
        "maps": list(maps), "smoothgrad_samples": card.scoring.smoothgrad_samples,
        "device": scorer.device.type, "batch_size": result.batch_size, "torch_threads": torch.get_num_threads(),
        "seconds_runs": [round(t, 3) for t in times[1:]], "seconds_best": round(min(times[1:]), 3),
        "stage_seconds_last": {k: round(v, 3) for k, v in result.seconds.items()},
        "peak_rss_mb": round(peak_rss_mb, 1),
        "gpu": torch.cuda.get_device_name() if scorer.device.type == "cuda" else None,
        "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
