"""Quality benchmark of a model on held-out synthetic brains (never used in training or calibration).

Held-out set: ``--abnormal`` scans with toy anomalies (one to three each, all kinds, contrasts cycling
t1/t2/flair/pd/random, every fourth scan with 3 mm slices) and ``--normal`` healthy scans, from seeds
starting at 900000 (training uses 0..N, calibration 100000+). Every map of the model is compared with two
baselines: the normalised intensity (bright = anomalous) and its absolute value (|z|, bright or dark).

Usage: python benchmarks/bench_quality.py [--model NAME|PATH] [--abnormal 12] [--normal 6] [--json OUT]
Prints a Markdown table (pixel AP pooled and per scan, AUROC, Dice at the card threshold, best Dice, object
recall/precision/FP per normal scan, sample AP, FPR at 95 % TPR) and writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--abnormal", type=int, default=12)
    parser.add_argument("--normal", type=int, default=6)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from napari_uad.findings import label_components
    from napari_uad.metrics import object_counts, object_metrics, pixel_metrics, sample_metrics
    from napari_uad.model_card import load_model
    from napari_uad.preprocessing import prepare_volume
    from napari_uad.scoring import MAP_NAMES, Scorer
    from napari_uad.synth import CONTRASTS, case_volume, synth_case
    from napari_uad.train import case_volume_mask

    model, card = load_model(args.model)
    scorer = Scorer(model, card, device=args.device)
    min_volume = float(card.calibration.get("min_volume_mm3", 0.0))
    methods = list(MAP_NAMES) + ["baseline_intensity", "baseline_abs_intensity"]
    scores = {m: [] for m in methods}
    volume_scores = {m: [] for m in methods}
    counts = {m: [] for m in methods}
    truths, abnormal, elbo_scores, cases = [], [], [], []
    t0 = time.perf_counter()
    n = args.abnormal + args.normal
    for i in range(n):
        seed = 900_000 + i
        is_abnormal = i < args.abnormal
        thickness = 3.0 if i % 4 == 3 else 1.0
        case = synth_case(seed, "any" if is_abnormal else None, CONTRASTS[i % len(CONTRASTS)], thickness,
                          n_anomalies=1 + i % 3)
        volume = case_volume(case)
        truth = case_volume_mask(case)
        result = scorer.score(volume, MAP_NAMES)
        fg = result.mask
        normalised = prepare_volume(volume, card.preprocessing, card.input_size, fg).normalised
        maps = dict(result.maps)
        maps["baseline_intensity"] = np.where(fg, normalised, normalised.min())
        maps["baseline_abs_intensity"] = np.where(fg, np.abs(normalised), 0.0)
        for m in methods:
            scores[m].append(maps[m][fg].astype(np.float32))
            volume_scores[m].append(float(np.quantile(maps[m][fg], 0.999)))
            thr = card.default_threshold(m) if m in MAP_NAMES else None
            if thr is not None:
                labels, _ = label_components(maps[m], thr, volume.voxel_volume_mm3, min_volume)
                counts[m].append(object_counts(labels, truth))
        truths.append(truth[fg])
        abnormal.append(is_abnormal)
        elbo_scores.append(result.volume_score)
        cases.append({"seed": seed, "contrast": case.params["contrast"], "slice_thickness_mm": thickness,
                      "anomalies": case.params.get("anomalies", [case.params.get("anomaly")]) if is_abnormal else [],
                      "anomaly_voxels": int(case.mask.sum())})
        print(f"scan {i + 1}/{n} scored ({time.perf_counter() - t0:.0f} s)", flush=True)

    rows = {}
    for m in methods:
        thr = card.default_threshold(m) if m in MAP_NAMES else None
        row = pixel_metrics(scores[m], truths, thr)
        row.update(object_metrics(counts[m]) if counts[m] else {})
        row.update(sample_metrics(volume_scores[m], abnormal))
        rows[m] = row
    rows["elbo_sample_score"] = sample_metrics(elbo_scores, abnormal)
    summary = {"model": {"name": card.name, "version": card.version, "sha256": card.weights_sha256},
               "detection_map": card.detection_map, "min_volume_mm3": min_volume, "n_abnormal": args.abnormal,
               "n_normal": args.normal, "cases": cases, "metrics": rows, "seconds": time.perf_counter() - t0,
               "device": scorer.device.type, "machine": platform.machine(),
               "sample_score_rule": "maps: 99.9th percentile of the map in the foreground; elbo: card rule"}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(summary, fh, indent=2)

    def f(v):
        return "–" if v is None else f"{v:.3f}"

    print("\n| map | pixel AP | AP per scan | AUROC | Dice@thr | best Dice | obj. recall | obj. precision "
          "| FP obj./normal scan | sample AP | FPR@95%TPR |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for m in methods:
        r = rows[m]
        print(f"| {m} | {f(r['pixel_ap'])} | {f(r['pixel_ap_per_scan'])} | {f(r['pixel_auroc'])} | "
              f"{f(r['dice_at_threshold'])} | {f(r['best_dice'])} | {f(r.get('object_recall'))} | "
              f"{f(r.get('object_precision'))} | {f(r.get('fp_objects_per_normal_scan'))} | {f(r['sample_ap'])} | "
              f"{f(r['fpr_at_95tpr'])} |")
    e = rows["elbo_sample_score"]
    print(f"\nsample level with the ELBO volume score: AP {f(e['sample_ap'])}, FPR@95%TPR {f(e['fpr_at_95tpr'])}")


if __name__ == "__main__":
    main()
