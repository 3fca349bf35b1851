"""Validation experiment for the out-of-distribution guard's tissue-fit check (``tissue.implausible_tissue_order``):
how often does a scan's tissue fit put grey matter below both fluid and white matter?

Usage: python benchmarks/tissue_order.py [--model NAME|PATH] [--maps-dir DIR] [--val-maps 4] [--n 8]
       [--n-lesion 8] [--sets label,label-lesion,mni,mni-lesion,ball,dark] [--seed 720000]
       [--out runs/tissue_order.json] [--scans FILE ...]
       python benchmarks/tissue_order.py --analyse runs/tissue_order.json   (the contrast-rule table again)

Sets (each head prepared with the card's preprocessing on its true brain mask, its tissue mixture fitted as the
tissue map fits it; no model pass):
  label        healthy heads from the held-out *validation* label maps, --n per clinical contrast, seeds --seed+
  label-lesion validation label heads with a lesion, --n-lesion per kind (tumour, MS, infarct, haemorrhage),
               seeds --seed+10000+
  mni          healthy MNI-template brains (``synth.healthy_volume``), --n per contrast, seeds --seed+20000+
  mni-lesion   MNI-template brains with an anomaly (``synth.synth_case``), --n per contrast, seeds --seed+30000+
  ball         the gross anomaly the check is for: healthy label heads (--n per contrast, seeds --seed-20000+) and
               the sample brain's generator (seed 2026, each contrast) with the central 30 % of the brain a
               bright ball (``synth.bright_ball``)
  dark         the same label heads with a dark ball instead (``synth.dark_ball``: at the brain's 1st intensity
               percentile), and the sample brain's generator with seeds 2026-2029 (one per contrast, as the
               numbers in docs/RESULTS.md were measured)
Prints a line per head (family, fitted CSF / GM / WM means in standardised units, class order, implausible, and
the share of the brain whose signed tissue map is <= -2 and <= -3: hypointense for its tissue) and per set the
number of heads the order check fires on, the class orders seen and the range of the hypointense shares; and, per
set and family, how many heads each of ``tissue.CONTRAST_RULES`` reads as the family's fluid (T1, FLAIR: dark; T2,
PD: bright), which ``--analyse`` prints again from a JSON this script wrote.
--scans: also check these scan files as ``napari-uad score`` does (brain extraction where needed), e.g. the real
test scans: reported, never used to choose anything.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from _validation import fitted_tissue, heads_in_turn, validation_args  # noqa: E402

SETS = ("label", "label-lesion", "mni", "mni-lesion", "ball", "dark")
HYPO_LEVELS = (2, 3)  # the share of the brain whose signed tissue map is <= -level (hypointense for its tissue)


def _cases(name: str, files, args):
    """Yield (family, data, affine, true brain mask) of a set's heads."""
    from napari_uad.synth import bright_ball, dark_ball, healthy_volume, synth_case
    from napari_uad.synth_labels import CLINICAL_FAMILIES
    from napari_uad.synth_lesions import LESION_KINDS

    ball = {"ball": bright_ball, "dark": dark_ball}.get(name)  # the gross anomaly of the set, if any
    if name in ("label", "ball", "dark"):
        seed = args.seed if name == "label" else args.seed - 20_000
        for _, _, head in heads_in_turn(files, args.n * len(CLINICAL_FAMILIES), seed):
            data = np.where(head.brain, head.data, 0).astype(np.float32)
            if ball is not None:
                data, _ = ball(data, 0.3)
            yield head.params["contrast_family"], data, head.affine, head.brain
    if name == "label-lesion":
        count = args.n_lesion * len(LESION_KINDS)
        for _, _, head in heads_in_turn(files, count, args.seed + 10_000,
                                        lesion=lambda i: LESION_KINDS[i % len(LESION_KINDS)]):
            yield head.params["contrast_family"], head.data, head.affine, head.brain
    if name in ("mni", "mni-lesion", "ball", "dark"):
        seeds = {"mni": args.seed + 20_000, "mni-lesion": args.seed + 30_000, "ball": 2026, "dark": 2026}
        count = 1 if name in ("ball", "dark") else args.n
        for i in range(count * len(CLINICAL_FAMILIES)):
            family = CLINICAL_FAMILIES[i % len(CLINICAL_FAMILIES)]
            seed = seeds[name] + (0 if name == "ball" else i)  # "dark": 2026 + i (module docstring)
            case = (synth_case(seed, "any", contrast=family) if name == "mni-lesion"
                    else healthy_volume(seed, contrast=family))
            data = np.asarray(case.data, np.float32)
            if ball is not None:
                data, _ = ball(data, 0.3)
            yield family, data, case.affine, np.asarray(case.data) > 0


def rule_table(rows: list[dict]) -> list[dict]:
    """Per set and family: heads, and heads each contrast rule reads as the family's fluid
    (``sequence.SEQUENCE_FLUID``: the contrast a T1, FLAIR, T2 or PD scan's fluid gives)."""
    from napari_uad.sequence import SEQUENCE_FLUID
    from napari_uad.tissue import CONTRAST_RULES, scan_contrast

    table: dict = {}
    for row in rows:
        if row["family"] not in SEQUENCE_FLUID:
            continue
        entry = table.setdefault((row["set"], row["family"]), {"set": row["set"], "family": row["family"], "heads": 0,
                                                               **{rule: 0 for rule in CONTRAST_RULES}})
        entry["heads"] += 1
        for rule in CONTRAST_RULES:
            entry[rule] += scan_contrast(np.array(row["means_csf_gm_wm"]), rule) == SEQUENCE_FLUID[row["family"]]
    return list(table.values())


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--analyse":
        for line in rule_table(json.loads(Path(sys.argv[2]).read_text())["rows"]):
            print(json.dumps(line))
        return

    def options(parser) -> None:
        parser.add_argument("--n-lesion", type=int, default=8)
        parser.add_argument("--sets", default=",".join(SETS))
        parser.add_argument("--seed", type=int, default=720_000)
        parser.add_argument("--scans", nargs="*", type=Path, default=[])

    args, setup = validation_args(__doc__.splitlines()[0], 8, "tissue_order.json", options)
    if setup is None:
        return
    model, card, files = setup
    from napari_uad.tissue import implausible_tissue_order

    def order(means) -> str:
        return "<".join("CSF GM WM".split()[c] for c in np.argsort(means))

    summary, rows = {}, []
    for name in [s for s in args.sets.split(",") if s]:
        if name not in SETS:
            raise SystemExit(f"unknown set {name!r}; choose from {', '.join(SETS)}")
        fired, orders = Counter(), Counter()
        for family, data, affine, brain in _cases(name, files, args):
            fit = fitted_tissue(card, data, affine, brain)
            tissue, means = fit.tissue[fit.brain], fit.means
            why = implausible_tissue_order(means)
            row = {"set": name, "family": family, "means_csf_gm_wm": [round(float(m), 3) for m in means],
                   "order": order(means), "implausible": why is not None,
                   **{f"hypointense_{level}": round(float((tissue <= -level).mean()), 5) for level in HYPO_LEVELS}}
            rows.append(row)
            orders[row["order"]] += 1
            fired[family] += int(row["implausible"])
            print(json.dumps(row), flush=True)
        heads = sum(orders.values())
        shares = {f"hypointense_{level}": [r[f"hypointense_{level}"] for r in rows if r["set"] == name]
                  for level in HYPO_LEVELS}
        summary[name] = {"heads": heads, "fired": sum(fired.values()), "fired_by_family": dict(fired),
                         "orders": dict(orders), **{k: {"min": min(v), "max": max(v)} for k, v in shares.items()}}
        print(json.dumps({name: summary[name]}), flush=True)
    for line in rule_table(rows):
        print(json.dumps({"contrast_rules": line}), flush=True)
    scans = []
    if args.scans:
        from napari_uad.io import read_volume
        from napari_uad.scoring import Scorer

        scorer = Scorer(model, card, device="cpu")
        for path in args.scans:
            means = scorer.score(read_volume(path), ("tissue",)).tissue_means
            scans.append({"scan": str(path), "means_csf_gm_wm": [round(m, 3) for m in means],
                          "order": order(means), "implausible": implausible_tissue_order(means) is not None})
            print(json.dumps(scans[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": f"{card.name} {card.version}", "seed": args.seed, "summary": summary,
                                    "rows": rows, "scans": scans}, indent=1) + "\n")


if __name__ == "__main__":
    main()
