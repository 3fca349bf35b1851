"""Benchmark: time of one findings update (threshold -> labels -> measured findings) on a 1 mm brain volume.

This is the work the review widget does when the threshold slider or minimum volume changes (target <= 150 ms).
Score map: the residual map of the sample scan scored by the bundled model if present, else a smooth random
field inside the MNI152 brain (197 x 233 x 189). Usage: python benchmarks/bench_findings.py [--repeats 10]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    from nilearn.datasets import load_mni152_template
    from scipy import ndimage

    from napari_uad.findings import find_findings
    from napari_uad.io import Volume
    from napari_uad.mask import foreground_mask

    img = load_mni152_template(resolution=1)
    volume = Volume.from_array(np.asarray(img.dataobj, dtype=np.float32), img.affine)
    mask = foreground_mask(volume.data)
    rng = np.random.default_rng(0)
    field = ndimage.gaussian_filter(rng.normal(size=volume.shape).astype(np.float32), 2.0)
    score = np.where(mask, field / field.std(), 0.0).astype(np.float32)
    results = {}
    for quantile in (0.99, 0.999, 0.9999):
        threshold = float(np.quantile(score[mask], quantile))
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            labels, findings = find_findings(score, volume, threshold, min_volume_mm3=10.0)
            times.append(time.perf_counter() - t)
        results[f"q{quantile}"] = {"threshold": threshold, "n_findings": len(findings),
                                   "ms_median": round(1000 * float(np.median(times)), 1),
                                   "ms_max": round(1000 * float(np.max(times)), 1)}
    print(json.dumps({"volume_shape": list(volume.shape), "results": results}))


if __name__ == "__main__":
    main()
