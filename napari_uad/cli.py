"""Command line: ``napari-uad score`` (and the subcommands added by later modules).

Errors a user can cause (bad input files, unknown models or devices) are reported as one line each,
``napari-uad: error: <file>: <problem>``, never as a traceback.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from . import __version__

__all__ = ["main", "build_parser"]


def _add_score_parser(sub) -> None:
    from .scoring import MAP_NAMES

    p = sub.add_parser(
        "score",
        help="score scans and write heatmaps, findings labels, findings CSV and a JSON report",
        description="Score one or more scans slice by slice with a ceVAE and write, for each input with stem S, "
                    "into --out: S.<map>.nii.gz per map, S.labels.nii.gz (findings), S.findings.csv and S.json. "
                    "All volumes are written in the input's own voxel grid and affine.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="scan files (.nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd) or DICOM series directories")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output directory (created if needed)")
    p.add_argument("--model", default=None, metavar="NAME|PATH",
                   help="bundled or user model name, model directory or card.json (default: the bundled "
                        "cevae-brain-mr)")
    p.add_argument("--maps", default=",".join(MAP_NAMES), metavar="LIST",
                   help=f"comma-separated maps to write (default: all = {','.join(MAP_NAMES)})")
    p.add_argument("--detection-map", default=None, metavar="MAP",
                   help="map thresholded into findings (default: the model card's calibrated detection map)")
    p.add_argument("--mask", type=Path, default=None, metavar="FILE",
                   help="foreground mask in the scan's grid (default: automatic Otsu/background mask)")
    p.add_argument("--modality", choices=("MR", "CT"), default=None,
                   help="override the modality (default: DICOM tag, else guessed from the intensity range)")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    p.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help="slices per batch (default: chosen from free memory)")
    p.add_argument("--threshold", type=float, default=None, metavar="T",
                   help="detection threshold in raw score units of the detection map (default: the card's "
                        "calibrated threshold)")
    p.add_argument("--min-volume-mm3", type=float, default=None, metavar="V",
                   help="drop findings smaller than V mm^3 (default: the card's value, else 0)")
    p.add_argument("--connectivity", type=int, choices=(1, 2, 3), default=3,
                   help="voxel connectivity of findings: 1 faces, 2 edges, 3 corners (default: 3)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_score)


def _add_train_parser(sub) -> None:
    p = sub.add_parser(
        "train", help="train a ceVAE on normal scans (or on synthetic healthy brains) and calibrate it",
        description="Train a ceVAE (Gaussian decoder + context encoding) on normal scans and write "
                    "model.safetensors + card.json into --out, loadable with `napari-uad score --model DIR`. "
                    "Checkpoints go to DIR/checkpoint (continue with --resume).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", metavar="DIR_OR_GLOB",
                     help="normal scans: a directory (all supported files in it) or a glob pattern")
    src.add_argument("--synthetic", action="store_true",
                     help="train on synthetic healthy brains made from the MNI152 template (napari_uad.synth)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="model directory to write")
    p.add_argument("--name", default=None, help="model name (default: the --out directory name)")
    p.add_argument("--modality", choices=("MR", "CT"), default="MR", help="modality of the training scans")
    p.add_argument("--contrast", default="any", help="contrast the model is meant for, recorded in the card")
    p.add_argument("--epochs", type=int, default=40, help="maximum epochs (default 40)")
    p.add_argument("--batch-size", type=int, default=32, help="slices per training step (default 32)")
    p.add_argument("--learning-rate", type=float, default=3e-4, help="Adam learning rate (default 3e-4)")
    p.add_argument("--ce-weight", type=float, default=1.0, help="weight of the context-encoding loss (default 1)")
    p.add_argument("--patience", type=int, default=6, help="early stopping patience in epochs (default 6)")
    p.add_argument("--steps-per-epoch", type=int, default=None, help="default: one pass over the slices")
    p.add_argument("--max-minutes", type=float, default=None, help="stop after this wall time, keep the best")
    p.add_argument("--input-size", type=int, choices=(64, 128), default=128, help="model slice size (default 128)")
    p.add_argument("--latent", type=int, default=256, help="latent dimension (default 256)")
    p.add_argument("--channels", default="16,32,64,128,256",
                   help="encoder feature maps per stride-2 layer (default 16,32,64,128,256)")
    p.add_argument("--n-volumes", type=int, default=40, help="--synthetic: number of volumes (default 40)")
    p.add_argument("--val-fraction", type=float, default=0.15, help="share of volumes held out (default 0.15)")
    p.add_argument("--calibration-volumes", type=int, default=6,
                   help="synthetic healthy + anomalous volumes each for calibration (default 6; 0 = skip)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--resume", action="store_true", help="continue from --out/checkpoint")
    p.set_defaults(func=_cmd_train)


def _add_synth_parser(sub) -> None:
    from .synth import ANOMALY_KINDS, CONTRASTS

    p = sub.add_parser(
        "synth", help="write synthetic brain MR scans (healthy or with toy anomalies) and ground-truth masks",
        description="Write DIR/scans/S.nii.gz and DIR/masks/S.nii.gz (all-zero for normal scans) made from the "
                    "MNI152 2009 template with random deformation, contrast, bias, noise and resolution, plus "
                    "DIR/synth.json with every case's parameters.")
    p.add_argument("--out", required=True, type=Path, metavar="DIR")
    p.add_argument("--n", type=int, required=True, help="number of scans")
    p.add_argument("--anomalies", default="any",
                   help=f"none, any, or a comma list of {','.join(ANOMALY_KINDS)} (default any)")
    p.add_argument("--contrast", default="any", help=f"any, or a comma list of {','.join(CONTRASTS)}")
    p.add_argument("--normal-fraction", type=float, default=0.0,
                   help="share of scans left normal when anomalies are requested (default 0)")
    p.add_argument("--lesions", type=int, default=1, help="anomalies per abnormal scan (default 1)")
    p.add_argument("--int16", action="store_true", help="store scans as int16 scaled to 0..4000 (smaller files)")
    p.add_argument("--slice-thickness", type=float, default=1.0, help="axial slice thickness in mm (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first scan; scan i uses seed + i")
    p.set_defaults(func=_cmd_synth)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-uad",
        description="Unsupervised anomaly detection in MR/CT volumes with a context-encoding VAE: score scans "
                    "headless, train models, evaluate them. The napari plugin offers the same in a review widget.",
    )
    parser.add_argument("--version", action="version", version=f"napari-uad {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_score_parser(sub)
    _add_train_parser(sub)
    _add_synth_parser(sub)
    return parser


class CliError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def _stem(path: Path) -> str:
    from .io import ITK_SUFFIXES, NIFTI_SUFFIXES

    name = path.name
    for suffix in sorted(NIFTI_SUFFIXES + ITK_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _cmd_score(args: argparse.Namespace) -> int:
    from .io import VolumeError
    from .model_card import ModelError, load_model
    from .scoring import MAP_NAMES, Scorer, parse_maps
    from .pipeline import ScoreJob

    try:
        maps = parse_maps(args.maps)
    except ValueError as err:
        raise CliError(str(err)) from err
    inputs = [Path(p) for p in args.inputs]
    stems = [_stem(p) for p in inputs]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise CliError(f"several inputs share the output stem {', '.join(dupes)}; score them into separate --out dirs")
    try:
        model, card = load_model(args.model)
        scorer = Scorer(model, card, device=args.device, batch_size=args.batch_size)
    except (ModelError, ValueError) as err:
        raise CliError(str(err)) from err
    detection_map = args.detection_map or card.detection_map
    if detection_map not in MAP_NAMES:
        raise CliError(f"unknown detection map {detection_map!r}; choose from {', '.join(MAP_NAMES)}")
    threshold = args.threshold if args.threshold is not None else card.default_threshold(detection_map)
    if threshold is None:
        raise CliError(f"model {card.name!r} has no calibrated threshold for {detection_map}; pass --threshold")
    min_volume = args.min_volume_mm3
    if min_volume is None:
        min_volume = float(card.calibration.get("min_volume_mm3", 0.0))
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CliError(f"{args.out}: cannot create output directory ({err.strerror})") from err

    job = ScoreJob(scorer=scorer, maps=maps, detection_map=detection_map, threshold=threshold,
                   min_volume_mm3=min_volume, connectivity=args.connectivity)
    failures = 0
    for path, stem in zip(inputs, stems):
        try:
            _score_one(job, path, stem, args)
        except (VolumeError, ValueError) as err:
            failures += 1
            msg = str(err) if str(err).startswith(str(path)) else f"{path}: {err}"
            print(f"napari-uad: error: {msg}", file=sys.stderr)
    n_ok = len(inputs) - failures
    print(f"scored {n_ok} of {len(inputs)} input(s) into {args.out}", file=sys.stderr)
    return 1 if failures else 0


def _score_one(job, path: Path, stem: str, args: argparse.Namespace) -> None:
    """Score one input into a private staging directory, then move the finished files into --out."""
    from tqdm import tqdm

    outputs_in = {p.resolve() for p in [path] + ([args.mask] if args.mask else []) if p.exists()}
    staging = Path(tempfile.mkdtemp(prefix=f".{stem}.", suffix=".partial", dir=args.out))
    try:
        bar = None

        def progress(step) -> None:
            nonlocal bar
            if args.quiet:
                return
            if bar is None:
                bar = tqdm(desc=stem, total=step.total, unit="slice", file=sys.stderr)
            bar.n = step.done
            bar.refresh()

        try:
            written = job.run(path, staging, stem, mask_path=args.mask, modality=args.modality, progress=progress)
        finally:
            if bar is not None:
                bar.close()
        targets = [args.out / f.name for f in written]
        clash = [t for t in targets if t.resolve() in outputs_in]
        if clash:
            raise ValueError(f"output {clash[0]} would overwrite an input; choose another --out")
        for f, target in zip(written, targets):
            f.replace(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _cmd_train(args: argparse.Namespace) -> int:
    from .io import VolumeError
    from .model import ArchitectureConfig
    from .model_card import ModelCard, ModelError, ScoringConfig
    from .train import TrainConfig, train_model

    try:
        channels = tuple(int(c) for c in args.channels.split(","))
        arch = ArchitectureConfig(input_size=args.input_size, channels=channels, latent=args.latent)
    except ValueError as err:
        raise CliError(f"bad architecture: {err}") from err
    card = ModelCard(name=args.name or args.out.name, version="1.0.0", modality=args.modality,
                     contrast=args.contrast, architecture=arch, scoring=ScoringConfig(seed=args.seed),
                     description="ceVAE with Gaussian decoder trained with napari-uad train")
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                         ce_weight=args.ce_weight, patience=args.patience, steps_per_epoch=args.steps_per_epoch,
                         max_minutes=args.max_minutes, seed=args.seed)
    try:
        train_model(card, args.out, config, data=args.data, synthetic_volumes=args.n_volumes if args.synthetic
                    else 0, val_fraction=args.val_fraction, calibration_volumes=args.calibration_volumes,
                    device=args.device, resume=args.resume, command=" ".join(["napari-uad"] + sys.argv[1:]),
                    log=lambda m: print(m, file=sys.stderr, flush=True))
    except (ModelError, VolumeError, ValueError) as err:
        raise CliError(str(err)) from err
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from .synth import write_synth_dataset

    try:
        write_synth_dataset(args.out, n=args.n, anomalies=args.anomalies, contrast=args.contrast,
                            normal_fraction=args.normal_fraction, slice_thickness=args.slice_thickness,
                            seed=args.seed, lesions=args.lesions, int16=args.int16, log=lambda m: print(m, file=sys.stderr))
    except ValueError as err:
        raise CliError(str(err)) from err
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except CliError as err:
        print(f"napari-uad: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("napari-uad: interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
