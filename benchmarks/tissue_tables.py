"""Validation experiment: do the model's maps rank lesions when each voxel is measured against the healthy voxels of
its own tissue class?

Usage: python benchmarks/tissue_tables.py [--model NAME|PATH] [--maps-dir DIR] [--val-maps 4] [--n 4]
       [--families t2,pd,t1,flair] [--seed 790000] [--out runs/tissue_tables.json]

Why: on fluid-bright scans (T2, PD) the model's error maps (E, nll) are at chance (docs/RESULTS.md, "False findings
on normal validation heads, by contrast"): normal CSF has as high an error as a lesion. The card's healthy tables
measure a voxel against every healthy brain voxel of the scan's contrast (``combined``); here each voxel is also
measured against the healthy voxels of the tissue the aligned template says should be at its place (CSF, GM, WM:
the template priors in the scan's canonical grid, smoothed by the card's ``tissue`` prior sigma), hard (the class
with the largest prior) or soft (the priors' weighted mean of the three classes' quantiles); or, needing no
healthy tables by class, against the *same scan's* voxels of its class (``MAP|scan``: (v - median) / IQR of the
class, then the pooled table).

Heads: ``--n`` healthy heads per family (seeds ``--seed``+, the tables) and ``--n`` heads with one disease-like lesion
per family (seeds ``--seed`` + 70 000 +, lesion kinds in turn), from the held-out *validation* label maps (never the
tumour test cases), skull-stripped on their true brains and scored like such a scan. Tables are built per
recognised contrast (``ScoreResult.contrast``) from that contrast's healthy heads, as the card's per-contrast
tables are. Candidates: each map as it is (its ranking is that of any single table), ``MAP|class``, ``MAP|soft``
and ``MAP|scan``, and the mean surprise (``combined.surprise``'s -log10(1 - q), capped at ``MAX_SURPRISE``) of each with
the asymmetry map. Pixel AP / AUROC (sklearn) over the brain voxels of the lesion heads, pooled per recognised
contrast and per family. One JSON line per group and candidate; all rows to --out. A measurement to choose from
on validation data; nothing here changes a card.
"""

from __future__ import annotations

import json

import numpy as np

from _validation import heads_in_turn, pooled_rows, validation_args  # noqa: E402

MODEL_MAPS = ("E", "nll")
MAPS = MODEL_MAPS + ("asymmetry", "tissue")
CLASSED = MODEL_MAPS + ("tissue",)  # the maps measured by tissue class
_SAMPLE = 200_000  # healthy voxels kept per table (evenly spaced in sorted order: the quantiles are unchanged)


def _options(parser) -> None:
    parser.add_argument("--seed", type=int, default=790_000, help="seed of the first healthy head")
    parser.add_argument("--families", default="t2,pd,t1,flair")


def _table(values: np.ndarray) -> np.ndarray:
    """Sorted healthy values (at most ``_SAMPLE``, evenly spaced in order)."""
    values = np.sort(np.asarray(values, np.float64))
    if values.size > _SAMPLE:
        values = values[np.linspace(0, values.size - 1, _SAMPLE).round().astype(int)]
    return values


def _quantile(values: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Each value's empirical quantile among a table's healthy values, in [0, 1]."""
    if table.size == 0:
        return np.full(values.shape, 0.5)
    return np.searchsorted(table, values, side="right") / table.size


def _within_scan(values: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Each voxel's value against the same scan's voxels of its tissue class: (v - median) / IQR (float32)."""
    out = np.zeros(values.shape, np.float32)
    for c in np.unique(classes):
        inside = classes == c
        lo, mid, hi = np.percentile(values[inside], (25, 50, 75))
        out[inside] = (values[inside] - mid) / max(hi - lo, 1e-6)
    return out


def _surprise(q: np.ndarray) -> np.ndarray:
    from napari_uad.combined import MAX_SURPRISE

    return np.minimum(-np.log10(np.maximum(1.0 - q, 10.0**-MAX_SURPRISE)), MAX_SURPRISE)


def main() -> None:
    args, setup = validation_args(__doc__.splitlines()[0], 4, "tissue_tables.json", _options, scorer=True)
    if setup is None:
        return
    scorer, card, files = setup
    from napari_uad.io import Volume
    from napari_uad.preprocessing import prepare_volume
    from napari_uad.synth_lesions import LESION_KINDS
    from napari_uad.tissue import smooth_priors

    families = tuple(args.families.split(","))
    sigma = card.scoring.tissue().prior_sigma_mm
    kind_of = lambda i: LESION_KINDS[(i // len(families)) % len(LESION_KINDS)]  # noqa: E731
    count = args.n * len(families)
    heads = [(False, *h) for h in heads_in_turn(files, count, args.seed, families)]
    heads += [(True, *h) for h in heads_in_turn(files, count, args.seed + 70_000, families, lesion=kind_of)]
    scanned: list[dict] = []
    for lesion, i, path, head in heads:
        data = np.where(head.brain, head.data, 0).astype(head.data.dtype)
        volume = Volume.from_array(data, head.affine, modality="MR")
        result = scorer.score(volume, MAPS, mask=head.brain)
        prepared = prepare_volume(volume, card.preprocessing, card.input_size, mask=head.brain)
        brain = result.mask > 0
        priors = smooth_priors(prepared.tissue_priors(), volume.spacing, sigma)[:, brain].astype(np.float64)
        priors = np.maximum(priors, 1e-6)
        priors /= priors.sum(axis=0, keepdims=True)
        truth = head.lesion[brain] > 0 if lesion else np.zeros(int(brain.sum()), bool)
        maps = {m: result.maps[m][brain].astype(np.float32) for m in MAPS}
        maps.update({f"{m}|scan": _within_scan(maps[m], priors.argmax(axis=0)) for m in CLASSED})
        scanned.append({"lesion": lesion, "family": head.params["contrast_family"], "contrast": result.contrast,
                        "maps": maps,
                        "priors": priors.astype(np.float32), "truth": truth})
        print(json.dumps({"seed": args.seed + (70_000 if lesion else 0) + i, "label_map": path.name,
                          "family": scanned[-1]["family"], "contrast": result.contrast,
                          "lesion": head.params.get("lesion") if lesion else None,
                          "lesion_voxels": int(truth.sum())}), flush=True)

    tables: dict[str, dict] = {}
    for contrast in sorted({s["contrast"] for s in scanned}):
        healthy = [s for s in scanned if not s["lesion"] and s["contrast"] == contrast]
        if not healthy:
            continue
        tables[contrast] = {}
        for m in (*MAPS, *(f"{m}|scan" for m in CLASSED)):
            values = np.concatenate([s["maps"][m] for s in healthy])
            classes = np.concatenate([s["priors"].argmax(axis=0) for s in healthy])
            tables[contrast][m] = {"pooled": _table(values), "class": [_table(values[classes == c]) for c in range(3)]}

    def candidates(s: dict) -> dict[str, np.ndarray]:
        t = tables[s["contrast"]]
        out = {m: s["maps"][m].astype(np.float64) for m in MAPS}
        pooled = {m: _surprise(_quantile(s["maps"][m], t[m]["pooled"])) for m in MAPS}
        hard_class = s["priors"].argmax(axis=0)
        for m in CLASSED:
            per_class = np.stack([_quantile(s["maps"][m], t[m]["class"][c]) for c in range(3)])
            hard = _surprise(np.take_along_axis(per_class, hard_class[None], axis=0)[0])
            soft = _surprise((s["priors"] * per_class).sum(axis=0))
            out[f"{m}|class"], out[f"{m}|soft"] = hard, soft
            out[f"{m}|scan"] = s["maps"][f"{m}|scan"].astype(np.float64)
            out[f"{m}+asymmetry"] = (pooled[m] + pooled["asymmetry"]) / 2
            out[f"{m}|class+asymmetry"] = (hard + pooled["asymmetry"]) / 2
            out[f"{m}|soft+asymmetry"] = (soft + pooled["asymmetry"]) / 2
            scan = _surprise(_quantile(s["maps"][f"{m}|scan"], t[f"{m}|scan"]["pooled"]))
            out[f"{m}|scan+asymmetry"] = (scan + pooled["asymmetry"]) / 2
        return out

    lesion_heads = [dict(s, values=candidates(s)) for s in scanned if s["lesion"] and s["contrast"] in tables]
    groups = {f"recognised {c}": [s for s in lesion_heads if s["contrast"] == c] for c in tables}
    groups.update({f"family {f}": [s for s in lesion_heads if s["family"] == f] for f in families})
    rows = pooled_rows(groups)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": card.name, "version": card.version, "seed": args.seed, "n": args.n,
                                    "families": families, "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
