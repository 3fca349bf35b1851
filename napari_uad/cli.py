"""Command line: ``napari-uad score`` (and the subcommands added by later modules).

Errors a user can cause (bad input files, unknown models or devices) are reported as one line each,
``napari-uad: error: <file>: <problem>``, never as a traceback.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from . import __version__
from .resources import DEFAULT_MODEL

__all__ = ["main", "build_parser"]


def _add_score_parser(sub) -> None:
    p = sub.add_parser(
        "score",
        usage="napari-uad score INPUT... --out DIR [options]\n"
              "       napari-uad score (--mood-pixel IN_DIR OUT_DIR | --mood-sample IN_DIR OUT_DIR) [options]",
        help="score scans and write heatmaps, findings labels, findings CSV and a JSON report",
        description="Score one or more scans slice by slice with a ceVAE and write, for each input with stem S, "
                    "into --out: S.<map>.nii.gz per map, S.labels.nii.gz (findings), S.findings.csv and S.json. "
                    "All volumes are written in the input's own voxel grid and affine.",
    )
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="scan files (.nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd) or DICOM series directories")
    p.add_argument("--out", type=Path, metavar="DIR", help="output directory (created if needed)")
    p.add_argument("--mood-pixel", nargs=2, type=Path, metavar=("IN_DIR", "OUT_DIR"),
                   help="MOOD challenge format: for every NIfTI in IN_DIR write the calibrated detection map "
                        "(healthy-voxel quantiles, [0, 1]) to OUT_DIR with the same file name and grid")
    p.add_argument("--mood-sample", nargs=2, type=Path, metavar=("IN_DIR", "OUT_DIR"),
                   help="MOOD challenge format: for every NIfTI in IN_DIR write OUT_DIR/<file>.txt with a sample "
                        "score in [0, 1]")
    _add_job_options(p)
    p.add_argument("--mask", type=Path, default=None, metavar="FILE",
                   help="brain mask in the scan's grid (default: automatic brain extraction / background mask)")
    p.add_argument("--modality", choices=("MR", "CT"), default=None,
                   help="override the modality (default: DICOM tag, else guessed from the intensity range)")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    p.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help="slices per batch (default: chosen from free memory)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_score)


def _add_job_options(p: argparse.ArgumentParser) -> None:
    """Options of the scoring job, shared by ``score`` and ``cohort``."""
    from .scoring import DEFAULT_MAPS, GRADIENT_MAPS, MAP_NAMES

    p.add_argument("--model", default=None, metavar="NAME|PATH",
                   help="bundled or user model name, model directory or card.json (default: the bundled "
                        f"{DEFAULT_MODEL})")
    p.add_argument("--maps", default=None, metavar="LIST",
                   help=f"comma-separated maps to write, of {','.join(MAP_NAMES)} (default: {','.join(DEFAULT_MAPS)}, "
                        "less those the model's card has not calibrated; the gradient maps "
                        f"{','.join(GRADIENT_MAPS)} take most of the time: ask for them)")
    p.add_argument("--detection-map", default=None, metavar="MAP",
                   help="map thresholded into findings (default: the model card's calibrated detection map)")
    p.add_argument("--threshold", type=float, default=None, metavar="T",
                   help="detection threshold in raw score units of the detection map (default: the card's "
                        "calibrated threshold)")
    p.add_argument("--min-volume-mm3", type=float, default=None, metavar="V",
                   help="drop findings smaller than V mm^3 (default: the card's value, else 0)")
    p.add_argument("--min-thickness-mm", type=float, default=None, metavar="D",
                   help="drop findings thinner than D mm (the diameter of the largest ball a finding holds: a "
                        "sheet along a sulcus or a ventricle rim is thin; default: the card's value, else 0)")
    p.add_argument("--edge-margin-mm", type=float, default=None, metavar="M",
                   help="findings keep M mm from the brain mask's surface, where reconstruction errors gather "
                        "(default: the card's value, else 0)")
    p.add_argument("--sequence", default=None, metavar="SEQ",
                   help="the MR sequence of every input: T1 (T1w, T1c, MPRAGE), FLAIR, T2 or PD; the card's settings "
                        "for it apply where it has some (default: auto = what each scan's DICOM header or BIDS name "
                        "declares, else what its tissue contrast reads as)")
    p.add_argument("--connectivity", type=int, choices=(1, 2, 3), default=3,
                   help="voxel connectivity of findings: 1 faces, 2 edges, 3 corners (default: 3)")
    p.add_argument("--force", action="store_true",
                   help="score a scan whose modality is not the model's (e.g. CT with an MR model) instead of "
                        "refusing it; the results carry a warning")
    p.add_argument("--export", action="append", default=[], choices=("slicer", "dicom-seg"),
                   help="also write the findings for other tools (repeatable): slicer = S.seg.nrrd (3D Slicer "
                        "segmentation, one segment per finding) and S.mrk.json (markups point list at the centroids, "
                        "LPS); dicom-seg = S.seg.dcm, a DICOM Segmentation over the input DICOM series")
    _add_preprocessing_options(p)


def _add_cohort_parser(sub) -> None:
    p = sub.add_parser(
        "cohort", help="score a whole cohort on Dask (resumable) and write a ranked worklist",
        description="Score every scan of INPUTS on a Dask cluster, each exactly as `score` does, into DIR/scans/, "
                    "then write DIR/cohort.csv (one row per scan, most anomalous first), DIR/cohort_findings.csv "
                    "and DIR/cohort.json. Rerunning the same command skips scans whose outputs are complete.")
    p.add_argument("inputs", metavar="INPUTS",
                   help="a directory (searched recursively for scans and DICOM series), a glob pattern (quote "
                        "it), or a CSV manifest with a 'path' column (optional id, subject, session, sequence)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory (created if needed)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="an existing Dask scheduler (tcp://host:8786); default: a LocalCluster on this machine")
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help="LocalCluster workers (default: one per GPU, else one per 2 CPU cores)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto (GPUs when there are any), cpu or cuda (default: auto)")
    _add_job_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_cohort)


def _cmd_cohort(args: argparse.Namespace) -> int:
    from .model_card import CARD_FILE, ModelCard, ModelError, resolve_model
    from .scoring import default_maps, parse_maps

    from .cohort import JobSpec, discover, run_cohort
    from .sequence import parse_sequence
    from .cohort.cluster import plan_local_cluster

    try:
        items = discover(args.inputs)
        model_dir = str(resolve_model(args.model).resolve())
        maps = default_maps(ModelCard.read(Path(model_dir) / CARD_FILE)) if args.maps is None else parse_maps(args.maps)
        plan = None if args.scheduler else plan_local_cluster(args.workers, args.device)
        device = plan.device if plan else ("cpu" if args.device == "auto" else args.device)
        spec = JobSpec(model=model_dir, maps=maps, device=device, torch_threads=plan.torch_threads if plan else 1,
                       detection_map=args.detection_map, threshold=args.threshold,
                       min_volume_mm3=args.min_volume_mm3, edge_margin_mm=args.edge_margin_mm,
                       min_thickness_mm=args.min_thickness_mm, sequence=parse_sequence(args.sequence),
                       connectivity=args.connectivity, force=args.force,
                       options=_pipeline_options(args).to_dict(), command=args.command_line,
                       exports=tuple(args.export))
        _writable_out_dir(args.out)
        summary = run_cohort(items, args.out, spec, args.scheduler, plan, command=args.command_line, log=_log,
                             show_progress=not args.quiet)
    except (ModelError, ValueError) as err:
        raise CliError(str(err)) from err
    except OSError as err:
        raise CliError(f"{args.out}: {err.strerror or err}") from err
    t = summary["totals"]
    print(f"cohort: {t['scored']} scored, {t['skipped_complete']} already complete, {t['failed']} failed of "
          f"{t['scans']} scans into {args.out.resolve()} ({summary['throughput_scans_per_minute']} scans/min)",
          file=sys.stderr)
    return 1 if t["failed"] else 0


def _add_preprocessing_options(p: argparse.ArgumentParser) -> None:
    from .preprocessing import SKULL_STRIP_MODES

    g = p.add_argument_group("preprocessing (the steps the model card asks for; switch off what you did yourself)")
    g.add_argument("--skull-strip", choices=SKULL_STRIP_MODES, default="auto",
                   help="brain extraction (deepbet): auto = only for scans that still have skull and scalp, "
                        "on = always, off = never (default: auto)")
    g.add_argument("--no-bias-correction", dest="bias_correction", action="store_false",
                   help="skip N4 bias-field correction")
    g.add_argument("--no-alignment", dest="alignment", action="store_false",
                   help="skip alignment to the model's template space (score the scan's own axial slices)")
    g.add_argument("--no-normalisation", dest="normalisation", action="store_false",
                   help="skip intensity standardisation (the scan is already in the model's range)")


def _pipeline_options(args: argparse.Namespace):
    from .preprocessing import PipelineOptions

    return PipelineOptions(skull_strip=args.skull_strip, bias_correction=args.bias_correction,
                           alignment=args.alignment, normalisation=args.normalisation)


def _add_workers_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help="--synthetic: processes generating volumes (default 0 = one per CPU core, at most 16)")


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
    src.add_argument("--label-maps", metavar="DIR",
                     help="train on synthetic heads made from the whole-head label maps in DIR (SynthSeg-style, "
                          "napari_uad.synth_labels); the last --val-maps maps are kept for validation and "
                          "calibration")
    p.add_argument("--val-maps", type=int, default=4,
                   help="--label-maps: label maps held out for validation and calibration (default 4)")
    p.add_argument("--normal-variants", action="store_true",
                   help="label-map heads get the periventricular rim and the choroid plexus (normal anatomy the "
                        "label maps lack; napari_uad.synth_variants)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="model directory to write")
    p.add_argument("--name", default=None, help="model name (default: the --out directory name)")
    p.add_argument("--modality", choices=("MR", "CT"), default="MR", help="modality of the training scans")
    p.add_argument("--contrast", default="any", help="contrast the model is meant for, recorded in the card")
    p.add_argument("--epochs", type=int, default=40, help="maximum epochs (default 40)")
    p.add_argument("--batch-size", type=int, default=32, help="slices per training step (default 32)")
    p.add_argument("--learning-rate", type=float, default=3e-4, help="Adam learning rate (default 3e-4)")
    p.add_argument("--ce-weight", type=float, default=1.0, help="weight of the context-encoding loss (default 1)")
    p.add_argument("--patience", type=int, default=6, help="early stopping patience in epochs (default 6)")
    p.add_argument("--lr-patience", type=int, default=4,
                   help="halve the learning rate after this many epochs without improvement (default 4; 0 = never)")
    p.add_argument("--steps-per-epoch", type=int, default=None, help="default: one pass over the slices")
    p.add_argument("--max-minutes", type=float, default=None, help="stop after this wall time, keep the best")
    p.add_argument("--input-size", type=int, choices=(64, 128), default=128, help="model slice size (default 128)")
    p.add_argument("--latent", type=int, default=256, help="latent dimension (default 256)")
    p.add_argument("--channels", default="16,32,64,128,256",
                   help="encoder feature maps per stride-2 layer (default 16,32,64,128,256)")
    p.add_argument("--log-var-clamp", default="-9,3", metavar="LO,HI",
                   help="clamp range of the decoder's log-variance (default -9,3)")
    p.add_argument("--beta-nll", type=float, default=0.5,
                   help="beta of the beta-NLL training loss (default 0.5; 0 = plain Gaussian NLL)")
    p.add_argument("--whole-slice-loss", action="store_true",
                   help="reconstruction loss over every pixel instead of the dilated foreground")
    p.add_argument("--n-volumes", type=int, default=40, help="--synthetic: number of volumes (default 40)")
    p.add_argument("--val-fraction", type=float, default=0.15, help="share of volumes held out (default 0.15)")
    p.add_argument("--calibration-volumes", type=int, default=6,
                   help="synthetic healthy + anomalous volumes each for calibration (default 6; 0 = skip)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    _add_workers_option(p)
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--resume", action="store_true", help="continue from --out/checkpoint")
    p.add_argument("--init-from", metavar="MODEL", default=None,
                   help="fine-tune: start from this model's weights (bundled name, directory or card.json); its "
                        "architecture and preprocessing are kept, the architecture options are ignored")
    p.set_defaults(func=_cmd_train)


def _add_calibrate_parser(sub) -> None:
    p = sub.add_parser(
        "calibrate", help="recalibrate a model's card (quantile tables, thresholds, detection map, minimum volume)",
        description="Score validation volumes with a model and rewrite the calibration in its card.json "
                    "(weights untouched): synthetic healthy + toy-anomaly brains (--synthetic N: best-Dice "
                    "thresholds, default detection map and minimum finding volume), or your own normal scans "
                    "(--data: healthy-voxel quantiles and 1 % / 0.1 % FPR thresholds).")
    p.add_argument("--model", required=True, metavar="NAME_OR_DIR", help="model to calibrate (its card is rewritten)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--synthetic", type=int, metavar="N", help="N healthy and N toy-anomaly synthetic brains")
    src.add_argument("--data", metavar="DIR_OR_GLOB", help="normal scans: a directory or a glob pattern")
    p.add_argument("--label-maps", metavar="DIR", default=None,
                   help="--synthetic: make the volumes as synthetic heads from the last --val-maps label maps in "
                        "DIR (the validation maps of a model trained with train --label-maps DIR)")
    p.add_argument("--val-maps", type=int, default=4, help="--label-maps: how many of the last maps (default 4)")
    p.add_argument("--normal-variants", action="store_true",
                   help="label-map heads get the periventricular rim and the choroid plexus (normal anatomy the "
                        "label maps lack; napari_uad.synth_variants)")
    p.add_argument("--balance-contrasts", action="store_true",
                   help="--label-maps: keep --synthetic / 4 healthy heads of each clinical contrast, making up "
                        "those left out by the brain-mask check with further heads of the same contrast (up to "
                        "3 x --synthetic heads are made)")
    p.add_argument("--true-brain-masks", action="store_true",
                   help="--label-maps: score each head on its true brain mask, as a skull-stripped scan, instead of "
                        "brain-extracting it (no head is left out for a failed extraction)")
    p.add_argument("--tables-by-contrast", action="store_true",
                   help="--synthetic: the combined map measures each scan against the healthy heads of its own "
                        "recognised contrast (dark or bright fluid), where the calibration has enough of them")
    p.add_argument("--combined-by-contrast", default=None, metavar="SPEC",
                   help="--synthetic: the combined map's components per recognised contrast, e.g. "
                        "'bright_fluid=asymmetry;dark_fluid=tissue,E' (other scans: --combined or the chosen ones)")
    p.add_argument("--dark-by-contrast", default=None, metavar="SPEC",
                   help="--synthetic: a dark channel of the combined map per recognised contrast, -NAME being the "
                        "signed map NAME (signed_residual, z, tissue, asymmetry) negated, e.g. "
                        "'dark_fluid=-tissue,E,-asymmetry': a scan of that contrast "
                        "scores the larger of the two channels' mean surprise (napari_uad.combined)")
    p.add_argument("--dark-opening-mm", type=float, default=0.0, metavar="MM",
                   help="--synthetic with --dark-by-contrast: open the dark channel by a ball this wide (world mm) "
                        "before the combined map's maximum, so thin dark shells (ventricle rims, sulcal CSF) lose "
                        "their values; the card's tables and points are then of the opened map (default 0: none)")
    p.add_argument("--tables-by-tissue", default=None, metavar="SPEC",
                   help="--synthetic: per recognised contrast, combined-map components measured against the healthy "
                        "voxels of the tissue the aligned template expects at each voxel (CSF, GM, WM), e.g. "
                        "'bright_fluid=nll': the model's error in normal fluid no longer hides a lesion in white matter")
    p.add_argument("--min-thickness-by-contrast", default=None, metavar="SPEC",
                   help="--synthetic: a minimum finding thickness (mm) per recognised contrast, e.g. "
                        "'dark_fluid=4': thinner findings are dropped when its operating point is searched and "
                        "when its scans are scored")
    p.add_argument("--points-by-sequence", default=None, metavar="SPEC",
                   help="--synthetic: an operating point of its own for scans declared a sequence, with its minimum "
                        "finding thickness (mm), e.g. 'flair=3;t1=3': searched on the validation heads of that "
                        "contrast family, scored with the combined map of the contrast its fluid gives")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    _add_workers_option(p)
    p.add_argument("--seed", type=int, default=0, help="seed offset of the synthetic volumes (default 0)")
    p.add_argument("--maps", default=None, metavar="LIST",
                   help="calibrate only these maps (default: all; the gradient maps take most of the time)")
    p.add_argument("--detection-map", default=None, metavar="NAME",
                   help="--synthetic: make NAME the default detection map instead of the best-Dice map (a choice "
                        "made on other validation data, e.g. benchmarks/real_anatomy.py)")
    p.add_argument("--combined", default=None, metavar="LIST",
                   help="--synthetic: the combined map's components (comma list) instead of the best-Dice pair or "
                        "triple")
    p.add_argument("--toy-anomalies", type=int, default=0, metavar="K",
                   help="--data: also K copies of each normal scan with one toy anomaly, so the operating point "
                        "(threshold and minimum finding volume) is searched for recall on your own anatomy within "
                        "<= 1 false finding per normal scan (default 0: lowest threshold within that bound)")
    p.set_defaults(func=_cmd_calibrate)


def _add_synth_parser(sub) -> None:
    from .synth import ANOMALY_KINDS, CONTRASTS

    p = sub.add_parser(
        "synth", help="write synthetic brain MR scans (healthy or with toy anomalies) and ground-truth masks",
        description="Write DIR/scans/S.nii.gz and DIR/masks/S.nii.gz (all-zero for normal scans) made from the "
                    "MNI152 2009 template with random deformation, contrast, bias, noise and resolution, plus "
                    "DIR/synth.json with every case's parameters.")
    p.add_argument("--out", required=True, type=Path, metavar="DIR",
                   help="output directory (scans/, masks/, synth.json; created if needed)")
    p.add_argument("--n", type=int, required=True, help="number of scans")
    p.add_argument("--anomalies", default="any",
                   help=f"none, any, or a comma list of {','.join(ANOMALY_KINDS)} (default any)")
    p.add_argument("--contrast", default="any",
                   help=f"any, or a comma list of {','.join(CONTRASTS)}; with --label-maps: contrast families taken "
                        "in turn, any (drawn per head, fully random included), clinical (t1,t2,flair,pd) or a "
                        "comma list of t1,t2,flair,pd,random")
    p.add_argument("--normal-fraction", type=float, default=0.0,
                   help="share of scans left normal when anomalies are requested (default 0)")
    p.add_argument("--lesions", type=int, default=1, help="anomalies per abnormal scan (default 1)")
    p.add_argument("--int16", action="store_true", help="store scans as int16 scaled to 0..4000 (smaller files)")
    p.add_argument("--slice-thickness", type=float, default=None,
                   help="axial slice thickness in mm (default 1; with --label-maps drawn per head: 1-6 mm)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first scan; scan i uses seed + i")
    p.add_argument("--label-maps", default=None, metavar="DIR",
                   help="make whole heads with skull from these label maps instead (napari_uad.synth_labels), "
                        "with disease-like lesions: --anomalies none, any, or a comma list of "
                        "tumour,ms,infarct,haemorrhage")
    p.add_argument("--val-maps", type=int, default=None, metavar="K",
                   help="with --label-maps: use only the last K maps (the ones train/calibrate hold out)")
    p.add_argument("--normal-variants", action="store_true",
                   help="with --label-maps: heads get the periventricular rim and the choroid plexus (normal "
                        "anatomy the label maps lack; napari_uad.synth_variants)")
    p.set_defaults(func=_cmd_synth)


def _add_demo_parser(sub) -> None:
    p = sub.add_parser(
        "demo", help="open the bundled sample scan in napari with the Anomaly review widget (headless: score it)",
        description="With a display and napari installed: open the sample brain scan, dock the Anomaly review "
                    "widget and start scoring. Without a display (or with --headless): score the sample scan "
                    "like `napari-uad score` into --out and print the findings.")
    p.add_argument("--out", type=Path, default=Path("napari-uad-demo"), metavar="DIR",
                   help="output directory when headless (default: ./napari-uad-demo)")
    p.add_argument("--model", default=None, help="model name or path (default: the bundled model)")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda or mps (default: auto)")
    p.add_argument("--headless", action="store_true", help="never open a window")
    p.set_defaults(func=_cmd_demo)


def _add_evaluate_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="pixel, object and sample metrics of score outputs against ground truth, with a report",
        description="Read `napari-uad score` outputs (S.<map>.nii.gz, S.labels.nii.gz, S.json) from --pred and "
                    "ground-truth masks S.nii.gz (all zero for normal scans) from --gt, matched by stem, and "
                    "report per map: pixel AP (pooled, MOOD) and per-scan AP, AUROC, Dice at the threshold and best "
                    "Dice (upper bound), object recall/precision/false positives (centre of mass inside a "
                    "ground-truth object, volumes within 2x), sample AP and FPR at 95% TPR; plus raw-intensity and "
                    "histogram-equalised baselines. Writes report.md, metrics.csv, per_scan.csv, PR/ROC PNGs and "
                    "summary.json into --out.")
    p.add_argument("--pred", required=True, type=Path, metavar="DIR", help="napari-uad score output directory")
    p.add_argument("--gt", required=True, type=Path, metavar="DIR", help="ground-truth masks S.nii.gz")
    p.add_argument("--maps", default=None, help="comma-separated maps (default: those in the outputs)")
    p.add_argument("--masks", type=Path, default=None, metavar="DIR",
                   help="foreground masks S.nii.gz (default: the automatic mask of each scan)")
    p.add_argument("--threshold-from", default="card", metavar="card|VALUE",
                   help="thresholds for Dice and objects: the model card's per-map thresholds recorded in S.json "
                        "(default) or one value for every map")
    p.add_argument("--out", type=Path, default=None, metavar="REPORT_DIR", help="report directory")
    p.add_argument("--max-negatives-per-scan", type=int, default=500_000,
                   help="above this many healthy voxels a scan's negatives are subsampled (seeded, weighted; "
                        "default: 500000)")
    p.set_defaults(func=_cmd_evaluate)


def _has_display() -> bool:
    import os

    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-uad",
        description="Unsupervised anomaly detection in MR/CT volumes with a context-encoding VAE: score scans "
                    "headless, train models, evaluate them. The napari plugin offers the same in a review widget.",
    )
    parser.add_argument("--version", action="version", version=f"napari-uad {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_score_parser(sub)
    _add_cohort_parser(sub)
    _add_train_parser(sub)
    _add_calibrate_parser(sub)
    _add_synth_parser(sub)
    _add_demo_parser(sub)
    _add_evaluate_parser(sub)
    return parser


class CliError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def _cmd_score(args: argparse.Namespace) -> int:
    from .io import VolumeError, file_stem
    from .model_card import ModelError, load_model
    from .pipeline import ScoreJob
    from .scoring import Scorer, default_maps, parse_maps

    mood = [(mode, dirs) for mode, dirs in (("pixel", args.mood_pixel), ("sample", args.mood_sample)) if dirs]
    if mood:
        return _score_mood(args, mood)
    if not args.inputs or args.out is None:
        raise CliError("score needs INPUT... and --out DIR (or --mood-pixel / --mood-sample IN_DIR OUT_DIR)")
    try:
        maps = None if args.maps is None else parse_maps(args.maps)
    except ValueError as err:
        raise CliError(str(err)) from err
    inputs = [Path(p) for p in args.inputs]
    stems = [file_stem(p) for p in inputs]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise CliError(f"several inputs share the output stem {', '.join(dupes)}; score them into separate --out dirs")
    try:
        model, card = load_model(args.model)
        scorer = Scorer(model, card, device=args.device, batch_size=args.batch_size, options=_pipeline_options(args))
    except (ModelError, ValueError) as err:
        raise CliError(str(err)) from err
    maps = default_maps(card) if maps is None else maps
    try:
        job = ScoreJob.from_card(scorer, maps, args.detection_map, args.threshold, args.min_volume_mm3,
                                 args.edge_margin_mm, args.connectivity, args.force, log=_log,
                                 command=args.command_line, exports=tuple(args.export),
                                 min_thickness_mm=args.min_thickness_mm, sequence=args.sequence)
    except ValueError as err:
        raise CliError(str(err)) from err
    created = _writable_out_dir(args.out)
    failures = 0
    try:
        for path, stem in zip(inputs, stems):
            try:
                _score_one(job, path, stem, args)
            except (VolumeError, ValueError) as err:
                failures += 1
                msg = str(err) if str(err).startswith(str(path)) else f"{path}: {err}"
                print(f"napari-uad: error: {msg}", file=sys.stderr)
            except OSError as err:
                failures += 1
                print(f"napari-uad: error: {path}: cannot write results to {args.out} ({err.strerror or err})",
                      file=sys.stderr)
    finally:  # interrupted, terminated or all failed: a directory this run made stays only if it holds results
        if created and args.out.is_dir() and not any(args.out.iterdir()):
            args.out.rmdir()
    n_ok = len(inputs) - failures
    print(f"scored {n_ok} of {len(inputs)} input(s) into {args.out}", file=sys.stderr)
    return 1 if failures else 0


def _score_mood(args: argparse.Namespace, mood: list) -> int:
    from .model_card import ModelError, load_model
    from .mood import score_mood
    from .scoring import Scorer

    try:
        model, card = load_model(args.model)
        scorer = Scorer(model, card, device=args.device, batch_size=args.batch_size)
        failures = 0
        for mode, (in_dir, out_dir) in mood:
            if not in_dir.is_dir():
                raise CliError(f"{in_dir}: not a directory")
            failures += score_mood(scorer, in_dir, out_dir, mode, log=_log)
    except (ModelError, ValueError) as err:
        raise CliError(str(err)) from err
    return 1 if failures else 0


def _writable_out_dir(out: Path) -> bool:
    """Create ``out`` if needed and check that files can be written there (CliError otherwise); True when this
    call created it (so a run that writes nothing can remove it again)."""
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise CliError(f"{out}: cannot write to the output directory ({err.strerror or err})") from err
    return created


def _score_one(job, path: Path, stem: str, args: argparse.Namespace) -> None:
    """Score one input into --out (atomically: ``ScoreJob.run_into``), with a progress bar unless --quiet."""
    from tqdm import tqdm

    bar = None

    def progress(step) -> None:
        nonlocal bar
        if args.quiet:
            return
        if step.stage != "model":
            _log(f"{stem}: {step.stage.replace('_', ' ')}")
            return
        if bar is None:
            bar = tqdm(desc=stem, total=step.total, unit="slice", file=sys.stderr)
        bar.n = step.done
        bar.refresh()

    try:
        job.run_into(path, args.out, stem, mask_path=args.mask, modality=args.modality, progress=progress)
    finally:
        if bar is not None:
            bar.close()


def _cmd_train(args: argparse.Namespace) -> int:
    from .io import VolumeError
    from .model import ArchitectureConfig
    from .model_card import ModelCard, ModelError, ScoringConfig
    from .train import TrainConfig, train_model

    try:
        channels = tuple(int(c) for c in args.channels.split(","))
        lo, hi = (float(v) for v in args.log_var_clamp.split(","))
        arch = ArchitectureConfig(input_size=args.input_size, channels=channels, latent=args.latent,
                                  log_var_clamp=(lo, hi))
    except ValueError as err:
        raise CliError(f"bad architecture: {err}") from err
    from .preprocessing import PreprocessingConfig

    # brain MR models expect brain-only, bias-corrected input aligned to the MNI152 template
    pre = PreprocessingConfig(skull_strip=True, bias_correction=True, template="mni152-2009") \
        if args.modality == "MR" else PreprocessingConfig()
    init = None
    if args.init_from and not args.resume:
        from .model_card import load_model

        try:
            source, source_card = load_model(args.init_from)
        except ModelError as err:
            raise CliError(str(err)) from err
        init = (source.state_dict(), {"name": source_card.name, "version": source_card.version,
                                      "sha256": source_card.weights_sha256})
        arch, pre = source_card.architecture, source_card.preprocessing  # fine-tuning keeps the model's design
    card = ModelCard(name=args.name or args.out.name, version="1.0.0", modality=args.modality,
                     contrast=args.contrast, architecture=arch, scoring=ScoringConfig(seed=args.seed),
                     preprocessing=pre,
                     description="ceVAE with Gaussian decoder trained with napari-uad train")
    if init is not None:  # choices that normal scans cannot make again come with the model being fine-tuned
        card.calibration = {k: source_card.calibration[k] for k in
                            ("detection_map", "min_volume_mm3", "edge_margin_mm", "edge_margin_selection")
                            if k in source_card.calibration}
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                         ce_weight=args.ce_weight, patience=args.patience, lr_patience=args.lr_patience,
                         steps_per_epoch=args.steps_per_epoch,
                         max_minutes=args.max_minutes, foreground_loss=not args.whole_slice_loss, beta_nll=args.beta_nll,
                         seed=args.seed)
    try:
        train_model(card, args.out, config, data=args.data,
                    synthetic_volumes=args.n_volumes if args.synthetic or args.label_maps else 0,
                    label_maps=args.label_maps, val_maps=args.val_maps,
                    val_fraction=args.val_fraction, calibration_volumes=args.calibration_volumes,
                    device=args.device, resume=args.resume, command=args.command_line,
                    workers=_workers(args.workers), init=init, normal_variants=args.normal_variants,
                    log=_log)
    except (ModelError, VolumeError, ValueError) as err:
        raise CliError(str(err)) from err
    return 0


def _log(message: str) -> None:
    """Progress and skip messages of the commands: stderr, so stdout stays for results."""
    print(message, file=sys.stderr, flush=True)


def _contrast_spec(spec: str, option: str, form: str, valid: Callable[[str], bool],
                   keys: tuple[str, ...] | None = None) -> Iterator[tuple[str, str]]:
    """(key, value) of each part of 'KEY=VALUE;KEY=VALUE', the keys recognised contrasts (``tissue.CONTRASTS``)
    unless ``keys`` are given; CliError '``option``: PART is not ``form``' for a part whose key is not one of them or
    whose value is not ``valid``."""
    from .tissue import CONTRASTS

    keys = tuple(CONTRASTS) if keys is None else keys
    for part in spec.split(";"):
        key, _, value = part.partition("=")
        if key.strip() not in keys or not valid(value):
            raise CliError(f"{option}: {part!r} is not {form} (choices: {', '.join(keys)})")
        yield key.strip(), value


def _components_by_contrast(spec: str | None, option: str = "--combined-by-contrast"
                            ) -> dict[str, tuple[str, ...]] | None:
    """'CONTRAST=MAP,MAP;CONTRAST=MAP' -> {contrast: maps}; CliError naming the problem. ``-NAME`` (a signed map
    negated) only for ``--dark-by-contrast``."""
    from .combined import NEGATED, SIGNED_MAPS, base_map
    from .scoring import parse_maps

    if not spec:
        return None
    out = {}
    for contrast, names in _contrast_spec(spec, option, "CONTRAST=MAPS", lambda v: bool(v.strip())):
        listed = [n.strip() for n in names.split(",") if n.strip()]
        negated = [n for n in listed if n.startswith(NEGATED)]
        if negated and option != "--dark-by-contrast":
            raise CliError(f"{option}: {', '.join(negated)}: a negated map belongs to --dark-by-contrast")
        wrong = [n for n in negated if base_map(n) not in SIGNED_MAPS]
        if wrong:
            raise CliError(f"{option}: {', '.join(wrong)}: only a signed map can be negated "
                           f"({', '.join(SIGNED_MAPS)})")
        if len(negated) < len(listed):
            parse_maps([n for n in listed if n not in negated])  # ValueError naming an unknown map
        out[contrast] = tuple(dict.fromkeys(listed)) if negated else parse_maps(listed)
    return out


def _millimetres_by_key(spec: str | None, option: str, key_word: str, keys: tuple[str, ...] | None = None
                       ) -> dict[str, float] | None:
    """'KEY=MM;KEY=MM' -> {key: mm} (``_contrast_spec``'s keys); CliError naming the problem."""
    def millimetres(value: str) -> bool:
        try:
            return 0.0 <= float(value) < float("inf")
        except ValueError:
            return False

    if not spec:
        return None
    return {key: float(value) for key, value in
            _contrast_spec(spec, option, f"{key_word}=MM with MM >= 0", millimetres, keys)}


def _thickness_by_contrast(spec: str | None) -> dict[str, float] | None:
    """'CONTRAST=MM;CONTRAST=MM' -> {contrast: mm}; CliError naming the problem."""
    return _millimetres_by_key(spec, "--min-thickness-by-contrast", "CONTRAST")


def _thickness_by_sequence(spec: str | None) -> dict[str, float] | None:
    """'SEQUENCE=MM;SEQUENCE=MM' (``sequence.SEQUENCES``) -> {sequence: mm}; CliError naming the problem."""
    from .sequence import SEQUENCES

    return _millimetres_by_key(spec, "--points-by-sequence", "SEQUENCE", tuple(SEQUENCES))


def _workers(requested: int) -> int:
    return requested if requested > 0 else min(16, os.cpu_count() or 1)


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from .io import VolumeError
    from .model_card import CARD_FILE, ModelCard, ModelError, resolve_model
    from .train import calibrate_model, read_scans, scan_files

    from .scoring import parse_maps

    try:
        maps = parse_maps(args.maps)
        directory = resolve_model(args.model)  # calibrate_model verifies the weights before scoring
        if args.toy_anomalies < 0:
            raise CliError("--toy-anomalies must be >= 0")
        for option, given in (("--balance-contrasts", args.balance_contrasts),
                              ("--true-brain-masks", args.true_brain_masks),
                              ("--tables-by-contrast", args.tables_by_contrast),
                              ("--combined-by-contrast", args.combined_by_contrast),
                              ("--dark-by-contrast", args.dark_by_contrast),
                              ("--tables-by-tissue", args.tables_by_tissue),
                              ("--min-thickness-by-contrast", args.min_thickness_by_contrast),
                              ("--points-by-sequence", args.points_by_sequence),
                              ("--dark-opening-mm", args.dark_opening_mm)):
            if given and not (args.synthetic is not None and args.label_maps):
                raise CliError(f"{option} needs --synthetic with --label-maps (synthetic heads of known contrast "
                               "and brain)")
        if args.synthetic is not None:
            if args.synthetic < 1:
                raise CliError("--synthetic needs at least 1 volume")
            if args.toy_anomalies:
                raise CliError("--toy-anomalies needs --data (synthetic validation has its own anomalies)")
            label_maps = None
            if args.label_maps:
                from .synth_labels import label_map_files

                label_maps = label_map_files(args.label_maps)[-args.val_maps:]
            calibrate_model(directory, synthetic_volumes=args.synthetic, seed=args.seed, device=args.device,
                            workers=_workers(args.workers), command=args.command_line, label_maps=label_maps,
                            maps=maps, normal_variants=args.normal_variants, detection_map=args.detection_map,
                            combined=parse_maps(args.combined) if args.combined else (),
                            balance_contrasts=args.balance_contrasts, true_brain_masks=args.true_brain_masks,
                            tables_by_contrast=args.tables_by_contrast,
                            combined_by_contrast=_components_by_contrast(args.combined_by_contrast),
                            dark_by_contrast=_components_by_contrast(args.dark_by_contrast, "--dark-by-contrast"),
                            tables_by_tissue=_components_by_contrast(args.tables_by_tissue, "--tables-by-tissue"),
                            min_thickness_by_contrast=_thickness_by_contrast(args.min_thickness_by_contrast),
                            points_by_sequence=_thickness_by_sequence(args.points_by_sequence),
                            dark_opening_mm=args.dark_opening_mm, log=_log)
        else:
            if args.detection_map or args.combined:
                raise CliError("--detection-map and --combined need --synthetic (normal scans keep the card's)")
            modality = ModelCard.read(directory / CARD_FILE).modality
            scans = read_scans(scan_files(args.data), modality, _log)
            if not scans:
                raise CliError(f"{args.data}: no usable scans")
            calibrate_model(directory, held_out=scans, device=args.device, command=args.command_line, maps=maps,
                            toy_anomalies=args.toy_anomalies,
                            log=_log)
    except (ModelError, VolumeError, ValueError) as err:
        raise CliError(str(err)) from err
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from .synth import write_synth_dataset

    try:
        if args.label_maps:
            from .synth_labels import label_map_files, parse_families, write_label_head_dataset

            files = label_map_files(args.label_maps)
            if args.val_maps is not None:
                if not 1 <= args.val_maps <= len(files):
                    raise ValueError(f"--val-maps {args.val_maps}: {args.label_maps} has {len(files)} label maps")
                files = files[-args.val_maps:]
            write_label_head_dataset(args.out, files, n=args.n, anomalies=args.anomalies,
                                     normal_fraction=args.normal_fraction, slice_thickness=args.slice_thickness,
                                     seed=args.seed, int16=args.int16, families=parse_families(args.contrast),
                                     normal_variants=args.normal_variants, log=_log)
            return 0
        write_synth_dataset(args.out, n=args.n, anomalies=args.anomalies, contrast=args.contrast,
                            normal_fraction=args.normal_fraction, slice_thickness=args.slice_thickness or 1.0,
                            seed=args.seed, lesions=args.lesions, int16=args.int16, log=_log)
    except ValueError as err:
        raise CliError(str(err)) from err
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from .evaluate import evaluate
    from .io import VolumeError
    from .scoring import parse_maps

    try:
        maps = None if args.maps is None else parse_maps(args.maps)
        threshold = args.threshold_from if args.threshold_from == "card" else float(args.threshold_from)
    except ValueError as err:
        raise CliError(f"bad --maps or --threshold-from: {err}") from err
    for d in (args.pred, args.gt):
        if not d.is_dir():
            raise CliError(f"{d}: not a directory")
    try:
        summary = evaluate(args.pred, args.gt, maps, args.masks, threshold, args.out,
                           args.max_negatives_per_scan, log=_log)
    except (VolumeError, ValueError) as err:
        raise CliError(str(err)) from err
    print(json.dumps({m: {k: v for k, v in e.items() if k in ("pixel_ap", "pixel_auroc", "object_recall")}
                      for m, e in {**summary["maps"], **summary["baselines"]}.items()}, indent=1))
    return 0


def _print_demo_result(out: Path, truth_path: Path) -> None:
    """What the headless demo wrote, and its findings against the sample's ground truth."""
    import csv

    import numpy as np

    from .io import read_volume
    from .metrics import finding_overlaps

    print(f"results in {out}:")
    for f in sorted(out.iterdir()):
        print(f"  {f.name}")
    with open(out / "sample_brain.findings.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    labels = read_volume(out / "sample_brain.labels.nii.gz", allow_constant=True).data.astype(np.int64)
    overlaps, n_true = finding_overlaps(labels, read_volume(truth_path, allow_constant=True).data)
    found = {v for v in overlaps.values() if v}
    print(f"{len(rows)} finding(s); the sample has {n_true} inserted lesions (ground truth {truth_path.name}), "
          f"{len(found)} of them found:")
    by_id = {int(r["finding_id"]): r for r in rows}
    for fid, r in by_id.items():
        verdict = f"true positive (lesion {overlaps[fid]})" if overlaps.get(fid) else "false positive"
        print(f"  #{fid}: {float(r['volume_mm3']):.0f} mm3 at RAS ({float(r['centroid_x_mm']):.1f}, "
              f"{float(r['centroid_y_mm']):.1f}, {float(r['centroid_z_mm']):.1f}) mm, max {r['detection_map']} "
              f"{float(r['max_score']):.3g}: {verdict}")


def _cmd_demo(args: argparse.Namespace) -> int:
    from ._sample_data import SAMPLE_MASK, SAMPLE_SCAN
    from .resources import sample_data_dir

    directory = sample_data_dir()
    if directory is None or not (directory / SAMPLE_SCAN).is_file():
        raise CliError("the bundled sample scan is missing from this installation")
    scan = directory / SAMPLE_SCAN
    gui = not args.headless and _has_display()
    if gui:
        try:
            import napari  # noqa: F401
        except ImportError:
            print("napari is not installed (pip install 'napari-uad[napari,qt]'): running headless", file=sys.stderr)
            gui = False
    if not gui:
        out = args.out.resolve()
        print(f"no display: scoring {scan} headless into {out}", file=sys.stderr)
        code = main(["score", str(scan), "--out", str(out), "--device", args.device]
                    + (["--model", args.model] if args.model else []))
        if code == 0:
            _print_demo_result(out, directory / SAMPLE_MASK)
        return code
    import napari

    from ._sample_data import sample_brain
    from ._widget import AnomalyReviewWidget
    from .model_card import ModelError, resolve_model

    viewer = napari.Viewer(title="napari-uad demo")
    for data, kwargs, kind in sample_brain():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    widget = AnomalyReviewWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Anomaly review", area="right")
    if args.model:
        try:
            widget.add_model(str(resolve_model(args.model)))
        except ModelError as err:
            raise CliError(str(err)) from err
    widget.device_selector.setCurrentText(args.device)
    widget.start_scoring()
    napari.run()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.command_line = shlex.join(["napari-uad", *argv])  # as recorded in model cards
    previous = _terminate_like_interrupt()
    try:
        code = args.func(args)
    except CliError as err:
        print(f"napari-uad: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("napari-uad: interrupted", file=sys.stderr)
        return 130
    except _Terminated:
        print("napari-uad: terminated", file=sys.stderr)
        return 143
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return code


class _Terminated(BaseException):
    """SIGTERM (timeout, Slurm, Kubernetes), raised where the program is so that cleanups run as on Ctrl-C."""


def _terminate_like_interrupt():
    """Route SIGTERM to :class:`_Terminated` (main thread only); returns the previous handler or None."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise _Terminated()

    return signal.signal(signal.SIGTERM, handler)


if __name__ == "__main__":
    sys.exit(main())
