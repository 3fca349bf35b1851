"""Validation experiment: which maps, and which combinations of them, rank lesions first in each recognised contrast?

Usage: python benchmarks/maps_by_contrast.py [--model NAME|PATH] [--maps-dir DIR] [--val-maps 4] [--n 4]
       [--seed 300000] [--candidates LIST] [--dark-candidates LIST] [--median-mm LIST] [--out runs/maps_by_contrast.json]

``--n`` synthetic heads per clinical contrast (T1, T2, FLAIR, PD taken in turn as calibration takes them), each with
one disease-like lesion (tumour, MS, infarct, haemorrhage; ``synth_lesions``), made from the held-out *validation*
label maps (the last --val-maps maps; never the tumour test cases) and scored on their true brain masks, as a
skull-stripped scan. Groups: the contrast the scan's own tissue fit recognises (``ScoreResult.contrast``: dark or
bright fluid, which is what a card's per-contrast settings can use) and the generator's contrast family. For each
group, pixel AP / AUROC (sklearn; brain voxels of the group's heads pooled) of every single map the card scores
without gradients, and of the mean healthy-quantile surprise (``combined.combine`` with the card's tables) of every
pair and triple of the maps that have a healthy table. The card's combined map is the scorer's own (its components,
tables and dark channel for the scan's settings key, the card's post-processing); ``--median-mm``: also that map
3D-median-filtered at each width (world mm, ``postprocess.median_filter_map``); ``--dark-candidates``: other bright and
dark channels for the scans whose recognised contrast has a dark channel in the card (``BRIGHT|DARK``, each a
+-joined list, ``-NAME`` a signed map negated, every one with a healthy table in the card; other scans keep the
card's combined map; like the combinations above, against the contrast's tables only: a card's tissue-class tables
and dark-channel opening are not applied, so compare such a card's own map with care). Prints one JSON line per
group and
candidate; writes all rows to --out (``--candidates``: only these, e.g. ``asymmetry,tissue+asymmetry``, besides
the card's combined map; ``--candidates none``: only the card's). A measurement to choose from on validation
data; nothing here changes a card.
"""

from __future__ import annotations

import json
from itertools import combinations

import numpy as np

from _validation import heads_in_turn, pooled_rows, validation_args  # noqa: E402

SINGLES = ("residual", "signed_residual", "E", "z", "nll", "tissue", "asymmetry")
COMPONENTS = ("tissue", "E", "nll", "z", "asymmetry", "signed_residual")  # candidates for the combinations


def _options(parser) -> None:
    parser.add_argument("--seed", type=int, default=300_000, help="seed of the first head")
    parser.add_argument("--candidates", default=None, metavar="LIST",
                        help="comma-separated maps or +-joined combinations (default: every single map, pair and "
                             "triple; none: only the card's combined map)")
    parser.add_argument("--dark-candidates", default="", metavar="LIST",
                        help="comma-separated BRIGHT|DARK channel pairs, e.g. 'tissue+E+asymmetry|-tissue+-z', for "
                             "the scans whose contrast has a dark channel in the card")
    parser.add_argument("--median-mm", default="", metavar="LIST",
                        help="widths (mm) of a 3D median filter applied to the card's combined map, each an extra "
                             "candidate")


def main() -> None:
    args, setup = validation_args(__doc__.splitlines()[0], 4, "maps_by_contrast.json", _options, scorer=True)
    if setup is None:
        return
    scorer, card, files = setup
    from napari_uad.combined import COMBINED, base_map, combine, combined_components, dark_components
    from napari_uad.io import Volume
    from napari_uad.postprocess import median_filter_map

    tables = card.calibration.get("maps", {})
    components = tuple(m for m in COMPONENTS if m in tables)
    candidates = ([(m,) for m in SINGLES] + [c for size in (2, 3) for c in combinations(components, size)]
                  if args.candidates is None else [] if args.candidates == "none"
                  else [tuple(c.split("+")) for c in args.candidates.split(",")])
    medians = [float(v) for v in args.median_mm.split(",") if v.strip()]
    unknown = {m for c in candidates for m in c if m not in SINGLES or (len(c) > 1 and m not in components)}
    if unknown:
        raise SystemExit(f"--candidates: {', '.join(sorted(unknown))}: not among {', '.join(SINGLES)} (combinations "
                         f"of {', '.join(components)})")
    channels = [tuple(tuple(side.split("+")) for side in pair.split("|")) for pair in args.dark_candidates.split(",")
                if pair.strip()]
    missing = {m for pair in channels for side in pair for m in side if m not in tables or base_map(m) not in SINGLES}
    if any(len(pair) != 2 for pair in channels):
        raise SystemExit("--dark-candidates: each candidate is BRIGHT|DARK, two +-joined lists of maps")
    if missing:
        raise SystemExit(f"--dark-candidates: {', '.join(sorted(missing))}: not a scored map with a healthy table "
                         "in the card")
    card_combined = combined_components(card.calibration)
    if channels and not card_combined:
        raise SystemExit("--dark-candidates: the card has no combined map to compare them with")
    heads: list[dict] = []
    for i, path, head in heads_in_turn(files, 4 * args.n, args.seed, lesion=lambda i: "any"):
        volume = Volume.from_array(head.data, head.affine, modality="MR")
        result = scorer.score(volume, SINGLES + ((COMBINED,) if card_combined else ()), mask=head.brain)
        brain, family = head.brain, head.params["contrast_family"]
        maps = {m: result.maps[m][brain].astype(np.float32) for m in SINGLES}
        values = {c: maps[c[0]] if len(c) == 1 else combine(maps, card.calibration, c) for c in candidates}
        if card_combined:
            values[(COMBINED,)] = result.maps[COMBINED][brain]
            for width in medians:
                values[(COMBINED, f"median {width:g} mm")] = median_filter_map(
                    result.maps[COMBINED], result.mask, volume.spacing, width)[brain]
        for bright, dark in channels:
            values[("channels", bright, dark)] = (
                combine(maps, card.calibration, bright, result.contrast, dark=dark)
                if dark_components(card.calibration, result.contrast) else values[(COMBINED,)])
        truth = head.lesion[brain] > 0
        heads.append({"family": family, "contrast": result.contrast, "truth": truth, "values": values})
        print(json.dumps({"seed": args.seed + i, "label_map": path.name, "family": family,
                          "recognised_contrast": result.contrast, "lesion_voxels": int(truth.sum())}), flush=True)
    groups = {f"recognised {c}": [h for h in heads if h["contrast"] == c] for c in sorted({h["contrast"] for h in heads
                                                                                          if h["contrast"]})}
    groups.update({f"family {f}": [h for h in heads if h["family"] == f] for f in sorted({h["family"] for h in heads})})
    groups["all"] = heads

    def name(candidate: tuple) -> str:
        if candidate[0] == "channels":
            return f"bright {' + '.join(candidate[1])} | dark {' + '.join(candidate[2])}"
        if candidate[0] == COMBINED:
            return f"combined (the card's{'' if len(candidate) == 1 else ', ' + candidate[1]})"
        return " + ".join(candidate)

    rows = pooled_rows(groups, name)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": f"{card.name} {card.version}", "n_per_contrast": args.n,
                                    "seed": args.seed, "label_maps": [p.name for p in files], "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
