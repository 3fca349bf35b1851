"""Shared by the validation experiments: the held-out label maps and the model to score them with."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NamedTuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def validation_parser(description: str, n: int) -> argparse.ArgumentParser:
    """--model, --maps-dir (default ../shared/data/synthseg_label_maps), --val-maps 4, --n."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default=None)
    parser.add_argument("--maps-dir", type=Path, default=ROOT.parent / "shared" / "data" / "synthseg_label_maps")
    parser.add_argument("--val-maps", type=int, default=4)
    parser.add_argument("--n", type=int, default=n)
    return parser


def validation_setup(args: argparse.Namespace):
    """(model, card, the last --val-maps label maps), or None (with a message) where ../shared is absent."""
    import torch

    from napari_uad.model_card import load_model
    from napari_uad.synth_labels import label_map_files

    if not args.maps_dir.is_dir():
        print(f"{args.maps_dir}: not found; nothing to measure")
        return None
    torch.manual_seed(0)
    model, card = load_model(args.model)
    return model, card, label_map_files(args.maps_dir)[-args.val_maps:]


def validation_args(description: str, n: int, out: str, options=lambda parser: None, scorer: bool = False):
    """Parse the shared options, a script's own (``options(parser)`` adds them) and --out (default runs/OUT), and
    set up: (args, validation_setup(args)), or with ``scorer`` (args, validation_scorer(args))."""
    parser = validation_parser(description, n)
    options(parser)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / out)
    args = parser.parse_args()
    return args, (validation_scorer if scorer else validation_setup)(args)


def validation_scorer(args: argparse.Namespace):
    """(CPU scorer of the model, its card, the validation label maps), or None where ../shared is absent."""
    setup = validation_setup(args)
    if setup is None:
        return None
    from napari_uad.scoring import Scorer

    model, card, files = setup
    return Scorer(model, card, device="cpu"), card, files


def heads_in_turn(files: list[Path], count: int, seed: int, families: tuple[str, ...] | None = None,
                  lesion=lambda i: None, normal_variants: bool = True, only: list[int] | None = None):
    """Yield (i, label map path, synthetic head) for i in 0..count-1 (or for i in ``only``: just those heads,
    the others not made): map ``files[i % len(files)]``, contrast family taken in turn as calibration takes them
    (``synth_labels.family_in_turn``; ``families`` default: the clinical ones, () = drawn per head), seed
    ``seed + i``, lesion kind ``lesion(i)`` (None: healthy)."""
    from napari_uad.synth_labels import CLINICAL_FAMILIES, family_in_turn, label_head

    families = CLINICAL_FAMILIES if families is None else families
    for i in (range(count) if only is None else only):
        path = files[i % len(files)]
        yield i, path, label_head(path, seed + i, family=family_in_turn(i, len(files), families),
                                  lesion=lesion(i), normal_variants=normal_variants)


def normal_and_lesion_heads(files: list[Path], n: int, seed: int, families: tuple[str, ...]):
    """(heads, kind_of): ``n`` normal heads per family in ``families`` (seeds ``seed``+) then ``n`` lesion heads per
    family (seeds ``seed`` + 50 000+, lesion kinds in turn), each as (is lesion head, i, label map path, head),
    made lazily (``heads_in_turn``); ``kind_of(i)``: the lesion kind of lesion head i."""
    from itertools import chain

    from napari_uad.synth_lesions import LESION_KINDS

    kind_of = lambda i: LESION_KINDS[(i // len(families)) % len(LESION_KINDS)]  # noqa: E731
    count = n * len(families)
    heads = chain(((False, *h) for h in heads_in_turn(files, count, seed, families)),
                  ((True, *h) for h in heads_in_turn(files, count, seed + 50_000, families, lesion=kind_of)))
    return heads, kind_of


def skull_stripped(head):
    """A synthetic head as a skull-stripped MR scan: its true brain on a zero background (``io.Volume``)."""
    from napari_uad.io import Volume

    return Volume.from_array(np.where(head.brain, head.data, 0).astype(head.data.dtype), head.affine, modality="MR")


class FittedTissue(NamedTuple):
    """A scan's tissue fit on its true brain mask: the signed tissue map and the brain mask (the scan's canonical
    grid), its voxel size (mm) and the fit's CSF, GM, WM means (standardised units)."""

    tissue: np.ndarray
    brain: np.ndarray
    spacing: tuple[float, float, float]
    means: np.ndarray


def fitted_tissue(card, data, affine, brain) -> FittedTissue:
    """The tissue fit of a scan given as an array in the voxel order of ``affine`` with its true brain mask: the
    card's preprocessing on that mask, the mixture fitted as the tissue map fits it (no model pass)."""
    from napari_uad.io import Volume
    from napari_uad.preprocessing import prepare_volume
    from napari_uad.tissue import tissue_outliers

    volume = Volume.from_array(data, affine, modality="MR")
    prepared = prepare_volume(volume, card.preprocessing, card.input_size, mask=brain)
    tissue, means = tissue_outliers(prepared.standardised, prepared.brain, prepared.tissue_priors(), volume.spacing,
                                    card.scoring.tissue())
    return FittedTissue(tissue, prepared.brain, volume.spacing, means)


def pooled_rows(groups: dict[str, list[dict]], name=str) -> list[dict]:
    """Pixel AP / AUROC (sklearn) of every candidate in each group, over its heads' brain voxels pooled.

    groups: group name -> heads, each a dict with "truth" (bool per brain voxel) and "values" (candidate -> score
    per brain voxel, the same candidates in every head); ``name(candidate)`` -> the row's candidate text. Groups
    with no lesion voxel are left out. Prints one JSON line per row and returns the rows."""
    import json

    from sklearn.metrics import average_precision_score, roc_auc_score

    rows = []
    for group, members in groups.items():
        if not members:
            continue
        truth = np.concatenate([h["truth"] for h in members])
        if not truth.any() or truth.all():
            continue
        for candidate in members[0]["values"]:
            scores = np.concatenate([h["values"][candidate] for h in members]).astype(np.float64)
            row = {"group": group, "heads": len(members), "candidate": name(candidate),
                   "ap": round(float(average_precision_score(truth, scores)), 4),
                   "auroc": round(float(roc_auc_score(truth, scores)), 4)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows
