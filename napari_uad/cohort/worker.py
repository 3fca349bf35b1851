"""What runs on a Dask worker: the model loaded once (a worker plugin) and one scan scored per task.

Each task scores one scan with ``ScoreJob.run_into`` (the code path of ``napari-uad score``, atomic) into the
cohort's ``scans/`` directory, unless that scan's outputs are already complete for the same scan bytes, model
and settings. It returns the scan's row of ``cohort.csv``; a scan that fails becomes a row with its one-line
reason, never an exception that would stop the cohort.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from distributed.diagnostics.plugin import WorkerPlugin

from ..io import file_sha256
from .inputs import CARRIED_COLUMNS, CohortItem

__all__ = ["JobSpec", "ModelPlugin", "PLUGIN_NAME", "ROW_COLUMNS", "score_item", "row_from_outputs",
           "outputs_complete"]

PLUGIN_NAME = "napari-uad-model"
ROW_COLUMNS = ("rank", "id", *CARRIED_COLUMNS, "path", "status", "error", "volume_score",
               "volume_score_healthy_quantile", "n_findings", "largest_finding_mm3", "max_finding_score",
               "ood_warnings", "seconds", "device", "worker")


@dataclass(frozen=True)
class JobSpec:
    """Everything a worker needs to build the scoring job (picklable; shipped to every worker once).

    model: model directory (absolute); unset scoring settings come from its card (``ScoreJob.from_card``).
    device: "cpu", "cuda" (each worker takes GPU worker_index % n_gpus) or "auto"; torch_threads per worker.
    """

    model: str
    maps: tuple[str, ...]
    device: str = "cpu"
    torch_threads: int = 1
    detection_map: str | None = None
    threshold: float | None = None
    min_volume_mm3: float | None = None
    min_thickness_mm: float | None = None
    edge_margin_mm: float | None = None
    connectivity: int = 3
    force: bool = False
    options: dict = field(default_factory=dict)  # PipelineOptions fields
    command: str = ""  # the cohort command line, recorded in each S.json
    exports: tuple[str, ...] = ()  # extra findings formats (ScoreJob.exports)
    sequence: str | None = None  # every scan's declared MR sequence (ScoreJob.sequence); None: each scan's own

    def build(self, device: str):
        """The ScoreJob (model loaded, weights verified)."""
        from ..model_card import load_model
        from ..pipeline import ScoreJob
        from ..preprocessing import PipelineOptions
        from ..scoring import Scorer

        model, card = load_model(self.model)
        scorer = Scorer(model, card, device=device, options=PipelineOptions(**self.options))
        return ScoreJob.from_card(scorer, self.maps, self.detection_map, self.threshold, self.min_volume_mm3,
                                  self.edge_margin_mm, self.connectivity, self.force, command=self.command,
                                  exports=self.exports, min_thickness_mm=self.min_thickness_mm,
                                  sequence=self.sequence)


def _worker_device(spec: JobSpec, worker_name) -> str:
    import torch

    if spec.device == "cpu" or (spec.device == "auto" and not torch.cuda.is_available()):
        return "cpu"
    n = torch.cuda.device_count()
    index = int(worker_name) if str(worker_name).isdigit() else 0
    return f"cuda:{index % max(n, 1)}"


class ModelPlugin(WorkerPlugin):
    """Loads the model once per worker (``setup``) and keeps the ScoreJob for that worker's tasks."""

    name = PLUGIN_NAME

    def __init__(self, spec: JobSpec):
        self.spec = spec
        self.job = None
        self.device = "cpu"

    def setup(self, worker) -> None:
        self.device = _worker_device(self.spec, worker.name)
        self.job = self.spec.build(self.device)


def outputs_complete(out: Path, item: CohortItem, model_sha256: str, spec: JobSpec, job=None) -> bool:
    """True when ``out/<id>.json`` records this scan's bytes, this model and these settings."""
    report_path = out / f"{item.id}.json"
    if not report_path.is_file():
        return False
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
        same = (report["model"]["sha256"] == model_sha256 and report["maps"] == list(spec.maps)
                and (job is None or (report["detection_map"] == job.detection_map
                                     and report.get("sequence") == (item.sequence or job.sequence
                                                                    or report.get("sequence"))
                                     and report["threshold"] == job.operating_point(
                                         report.get("settings", report.get("contrast")))[0])))
        return same and all((out / f"{item.id}.{m}.nii.gz").is_file() for m in spec.maps) and \
            report["scan"]["sha256"] == file_sha256(item.path)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def row_from_outputs(out: Path, item: CohortItem, healthy_scores: list[float]) -> dict:
    """The cohort.csv row of a scored scan, from its ``<id>.json`` and ``<id>.findings.csv``."""
    report = json.loads((out / f"{item.id}.json").read_text(encoding="utf-8"))
    with open(out / f"{item.id}.findings.csv", newline="", encoding="utf-8") as fh:
        findings = list(csv.DictReader(fh))
    score = report["sample_scores"]["volume"]
    quantile = (sum(h <= score for h in healthy_scores) / len(healthy_scores)) if healthy_scores and \
        score is not None else None
    return {**_base_row(item), "status": "done", "volume_score": score,
            "volume_score_healthy_quantile": quantile, "n_findings": len(findings),
            "largest_finding_mm3": max((float(f["volume_mm3"]) for f in findings), default=0.0),
            "max_finding_score": max((float(f["max_score"]) for f in findings), default=None),
            "ood_warnings": " | ".join(report["out_of_distribution"]["warnings"]),
            "seconds": round(report["seconds"]["total"], 2), "device": report["device"]}


def _base_row(item: CohortItem) -> dict:
    return {"id": item.id, **{c: item.columns.get(c, "") for c in CARRIED_COLUMNS}, "path": str(item.path)}


def score_item(item: CohortItem, out: str, healthy_scores: list[float]) -> dict:
    """Dask task: score one scan (or reuse its complete outputs) and return its cohort.csv row."""
    from distributed import get_worker

    from ..io import VolumeError
    from ..model_card import ModelError

    import torch

    worker = get_worker()
    plugin: ModelPlugin = worker.plugins[PLUGIN_NAME]
    job, out_dir = plugin.job, Path(out)
    # torch's OpenMP thread count applies per calling thread, so it is set here, in the thread that runs the
    # task (on a scheduler the user started, workers may have OMP_NUM_THREADS=1; cluster.worker_environment)
    torch.set_num_threads(max(1, plugin.spec.torch_threads))
    t0 = time.perf_counter()
    try:
        if outputs_complete(out_dir, item, job.scorer.card.weights_sha256, plugin.spec, job):
            row = row_from_outputs(out_dir, item, healthy_scores)
            row["reused"] = True  # complete from an earlier run: not rescored
        else:
            for stale in out_dir.glob(f".{item.id}.*.partial"):  # left by a killed run
                shutil.rmtree(stale, ignore_errors=True)
            job.run_into(item.path, out_dir, item.id, sequence=item.sequence)
            row = row_from_outputs(out_dir, item, healthy_scores)
    except (VolumeError, ModelError, ValueError, OSError) as err:
        message = str(err) if str(err).startswith(str(item.path)) else f"{item.path}: {err}"
        row = {**_base_row(item), "status": "failed", "error": message.splitlines()[0],
               "seconds": round(time.perf_counter() - t0, 2), "device": plugin.device}
    row["worker"] = str(worker.name)
    return row
