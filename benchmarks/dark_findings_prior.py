"""Validation experiment: where do a model's hypointense false findings on normal heads lie, in terms of the aligned
template's fluid (CSF) prior?

Usage: python benchmarks/dark_findings_prior.py [--model NAME|PATH] [--maps-dir DIR] [--val-maps 4] [--n 3]
       [--seed 600000] [--family flair] [--out runs/dark_findings_prior.json]

The normal heads of ``benchmarks/fp_by_contrast.py`` (--n per clinical contrast from the held-out validation label
maps, seeds from --seed; only those of --family scored), presented skull-stripped (true brain, zero background), each
scored with the card's default maps and its findings made as ``napari-uad score`` makes them. For every finding:
its signal (hyper-/hypointense), volume, mean signed tissue map, and the template's CSF prior over its voxels (the
prior the tissue map fits with, in the scan's grid, before the card's smoothing). A dark false finding at a low
CSF prior is the subject's own fluid where the template expects tissue -- what a cavity also looks like. Prints a
line per finding and writes them to --out (JSON).
"""

from __future__ import annotations

import json

import numpy as np

from _validation import heads_in_turn, validation_args  # noqa: E402


def main() -> None:
    def options(parser) -> None:
        parser.add_argument("--seed", type=int, default=600_000)
        parser.add_argument("--family", default="flair", help="the contrast family of the heads scored")

    args, setup = validation_args(__doc__.splitlines()[0], 3, "dark_findings_prior.json", options, scorer=True)
    if setup is None:
        return
    scorer, card, files = setup
    from napari_uad.findings import card_findings
    from napari_uad.io import Volume
    from napari_uad.preprocessing import prepare_volume
    from napari_uad.synth_labels import CLINICAL_FAMILIES

    rows = []
    for i, path, head in heads_in_turn(files, args.n * len(CLINICAL_FAMILIES), args.seed):
        if head.params["contrast_family"] != args.family:
            continue
        volume = Volume.from_array(np.where(head.brain, head.data, 0).astype(head.data.dtype), head.affine,
                                   modality="MR")
        result = scorer.score(volume)
        labels, findings, _, _ = card_findings(result, volume, card)
        csf = prepare_volume(volume, card.preprocessing, card.input_size).tissue_priors()[0]
        for f in findings:
            inside = labels == f.finding_id
            rows.append({"seed": args.seed + i, "label_map": path.name, "finding": f.finding_id, "signal": f.signal,
                         "volume_mm3": round(f.volume_mm3, 1),
                         "tissue_mean": round(float(result.maps["tissue"][inside].mean()), 3),
                         "csf_prior_mean": round(float(csf[inside].mean()), 4),
                         "csf_prior_above_half": round(float((csf[inside] > 0.5).mean()), 3)})
            print(json.dumps(rows[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": f"{card.name} {card.version}", "family": args.family,
                                    "seeds_from": args.seed, "findings": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
