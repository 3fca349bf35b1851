"""Validation experiment: why are KL-grad / ELBO-grad below chance, and does a variant fix them?

Usage: python benchmarks/gradient_maps.py [--model NAME|PATH] [--maps-dir DIR] [--val-maps 4] [--n 4]
       [--out runs/gradient_maps.json]

Synthetic heads with a disease-like lesion (tumour, MS, infarct, haemorrhage; ``synth_lesions``) made from the
held-out *validation* label maps (the last --val-maps maps, seeds 300000+; never the tumour test cases), scored
with their known brain mask (the other preprocessing steps as for a scan). For each gradient variant of the
card's scoring settings (``ScoringConfig.grad_reduction``, ``grad_brain_only``, ``grad_smoothing_sigma``) the
gradient maps are computed and compared by pixel AUROC / AP (sklearn; brain voxels of all heads pooled) with the
non-gradient maps of the same heads. Prints one JSON line per variant and map; writes all rows to --out.
"""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np

from _validation import validation_args  # noqa: E402
VARIANTS = (  # (grad_reduction, grad_brain_only, grad_smoothing_sigma)
    ("mean_abs", False, 3.0),  # the thesis' definition (the default)
    ("mean_abs", True, 3.0),
    ("abs_mean", True, 3.0),
    ("positive", True, 3.0),
    ("positive", True, 0.0),
)
GRADIENT = ("kl_grad", "elbo_grad", "combi")
BASELINE = ("residual", "signed_residual", "E", "z", "nll", "tissue")


def main() -> None:
    args, setup = validation_args(__doc__.splitlines()[0], n=4, out="gradient_maps.json")
    if setup is None:
        return
    model, card, files = setup
    from sklearn.metrics import average_precision_score, roc_auc_score

    from napari_uad.io import Volume
    from napari_uad.scoring import Scorer
    from napari_uad.synth_labels import label_head

    heads = [label_head(files[i % len(files)], 300_000 + 2 * i, lesion="any") for i in range(args.n)]
    truth = np.concatenate([h.lesion[h.brain] for h in heads])
    rows = []

    def report(name: str, values: list[np.ndarray], variant: dict, seconds: float) -> None:
        scores = np.concatenate(values).astype(np.float64)
        row = {"map": name, **variant, "auroc": round(float(roc_auc_score(truth, scores)), 4),
               "ap": round(float(average_precision_score(truth, scores)), 4), "seconds_per_head": round(seconds, 1),
               "lesion_fraction": round(float(truth.mean()), 5)}
        rows.append(row)
        print(json.dumps(row), flush=True)

    for v, (reduction, brain_only, sigma) in enumerate(VARIANTS):
        card.scoring = dataclasses.replace(card.scoring, grad_reduction=reduction, grad_brain_only=brain_only,
                                           grad_smoothing_sigma=sigma)
        scorer = Scorer(model, card, device="cpu")
        maps = GRADIENT + (BASELINE if v == 0 else ())
        values: dict[str, list[np.ndarray]] = {m: [] for m in maps}
        t = time.perf_counter()
        for head in heads:
            result = scorer.score(Volume.from_array(head.data, head.affine, modality="MR"), maps, mask=head.brain)
            for m in maps:
                values[m].append(result.maps[m][head.brain])
        seconds = (time.perf_counter() - t) / len(heads)
        variant = {"grad_reduction": reduction, "grad_brain_only": brain_only, "grad_smoothing_sigma": sigma}
        for m in maps:
            report(m, values[m], variant if m in GRADIENT else {}, seconds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": f"{card.name} {card.version}", "n_heads": args.n,
                                    "label_maps": [p.name for p in files], "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
