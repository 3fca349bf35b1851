"""Device check on real anatomy: the bundled model scores the same synthetic heads on the CPU and on a GPU, and
everything the reviewer sees must agree beyond float tolerance -- every map, the recognised contrast, the
operating point taken from the card for it, and the findings.

Usage: python benchmarks/device_check.py [--model NAME|PATH] [--maps-dir DIR] [--val-maps 4] [--n 4]
       [--device cuda] [--amp] [--out runs/device_check.json]

Heads from the held-out validation label maps (seeds 800000+, one per clinical contrast in turn, normal variants,
every other one with a disease-like lesion), scored on their true brain masks (no brain extraction, so the check
needs no deepbet). Per head and map: the largest absolute difference relative to the map's range in the brain;
the contrasts; the thresholds; the findings' count on each device and the Dice of their union masks. Exit code 1
when a contrast or threshold differs, or the findings' Dice is below 0.99.
"""

from __future__ import annotations

import json
import time

import numpy as np

from _validation import heads_in_turn, validation_args  # noqa: E402


def main() -> int:
    def options(parser) -> None:
        parser.add_argument("--device", default="cuda")
        parser.add_argument("--amp", action="store_true",
                            help="the GPU in mixed precision (Scorer amp=True; default: float32, as scoring runs)")

    args, setup = validation_args(__doc__.splitlines()[0], 4, "device_check.json", options)
    if setup is None:
        return 0
    model, card, files = setup
    import torch

    from napari_uad.findings import card_findings
    from napari_uad.io import Volume
    from napari_uad.mask import dice
    from napari_uad.scoring import DEFAULT_MAPS, Scorer, parse_maps

    if args.device != "cpu" and not torch.cuda.is_available():
        print(f"{args.device}: not available; nothing to compare")
        return 0
    maps = parse_maps(set(DEFAULT_MAPS) | {card.detection_map})
    from napari_uad.model_card import load_model

    # one model per device: a Scorer moves its model to its device
    scorers = {"cpu": Scorer(model, card, device="cpu"), args.device: Scorer(load_model(args.model)[0], card,
                                                                             device=args.device, amp=args.amp)}
    rows, ok = [], True
    for i, _, head in heads_in_turn(files, args.n, 800_000, lesion=lambda i: "any" if i % 2 else None):
        seed = 800_000 + i
        volume = Volume.from_array(head.data, head.affine, modality="MR")
        out, found = {}, {}
        for d, scorer in scorers.items():
            t0 = time.perf_counter()
            result = scorer.score(volume, maps, head.brain)
            labels, findings, threshold, _ = card_findings(result, volume, card)
            out[d] = result
            found[d] = {"contrast": result.contrast, "threshold": threshold, "findings": len(findings),
                        "mask": labels > 0, "seconds": round(time.perf_counter() - t0, 2)}
        a, b = out["cpu"], out[args.device]
        brain = a.mask
        diffs = {m: float(np.abs(a.maps[m] - b.maps[m])[brain].max() / (np.ptp(a.maps[m][brain]) or 1.0))
                 for m in maps}
        fa, fb = found["cpu"], found[args.device]
        union_dice = 1.0 if not (fa["mask"].any() or fb["mask"].any()) else float(dice(fa["mask"], fb["mask"]))
        same = fa["contrast"] == fb["contrast"] and fa["threshold"] == fb["threshold"] and union_dice >= 0.99
        ok &= same
        row = {"seed": seed, "family": head.params["contrast_family"], "lesion": bool(i % 2),
               "max_relative_map_difference": {m: round(v, 6) for m, v in diffs.items()},
               **{d: {k: v for k, v in f.items() if k != "mask"} for d, f in found.items()},
               "findings_dice": round(union_dice, 4), "agree": same}
        rows.append(row)
        print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": f"{card.name} {card.version}", "device": args.device, "amp": args.amp,
                                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                                    "torch": torch.__version__, "rows": rows, "all_agree": ok}, indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
