"""napari-uad cohort: inputs, cluster sizing, ranking, and end to end on a LocalCluster of 2 processes."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_uad import cli
from napari_uad.cohort import discover, rank_rows
from napari_uad.cohort.cluster import plan_local_cluster
from napari_uad.io import Volume, write_image_file
from napari_uad.model_card import load_model
from napari_uad.train import TrainConfig, Trainer

from .conftest import head_phantom, make_tiny_model

AFFINE = np.diag([1.0, 1.0, 3.0, 1.0])


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory) -> Path:
    """A tiny model trained briefly on healthy phantoms: phantoms with a lesion score higher than without."""
    directory = tmp_path_factory.mktemp("cohort_model")
    make_tiny_model(directory)
    model, card = load_model(directory)
    trainer = Trainer(card, directory, TrainConfig(epochs=8, steps_per_epoch=10, batch_size=16, learning_rate=3e-3),
                      device="cpu", log=lambda m: None)
    trainer.model.load_state_dict(model.state_dict())
    healthy = [Volume.from_array(head_phantom((40, 44, 14), seed=s, lesion=False), AFFINE) for s in range(10, 14)]
    trainer.fit(trainer.slices_of(healthy[:3]), trainer.slices_of(healthy[3:]))
    return directory


@pytest.fixture
def cohort_dir(tmp_path) -> Path:
    """normal_a, normal_b (no lesion), sick_a, sick_b (bright lesion) in nested folders, and a broken file."""
    root = tmp_path / "cohort"
    for i, (name, lesion) in enumerate((("normal_a", False), ("sick_a", True), ("normal_b", False),
                                        ("sick_b", True))):
        _write(root / f"site{i % 2}" / f"{name}.nii.gz", head_phantom((40, 44, 14), seed=i, lesion=lesion), AFFINE)
    (root / "broken.nii.gz").write_bytes(b"not a scan")
    return root


def _write(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image_file(path, data, affine)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_discover_directory_glob_manifest_and_dicom_series(tmp_path):
    root = tmp_path / "d"
    for sub in ("a", "b"):
        _write(root / sub / "t1.nii.gz", head_phantom((8, 8, 8)), np.eye(4))
    _write(root / "a" / "flair.nrrd", head_phantom((8, 8, 8)), np.eye(4))
    series = root / "dicom" / "series1"
    series.mkdir(parents=True)
    for n in range(3):  # DICOM Part 10 files: 128-byte preamble + 'DICM'
        (series / f"IM{n}").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)
    (root / "notes.txt").write_text("not a scan")
    items = discover(root)
    assert [i.id for i in items] == ["flair", "a_t1", "b_t1", "series1"]  # shared stems get their folder
    assert {i.id: i.path for i in items}["series1"] == series
    assert len(discover(str(root / "*" / "t1.nii.gz"))) == 2
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,id,subject,session,sequence\nd/a/t1.nii.gz,s1,sub-01,ses-1,T1w\n"
                        "d/b/t1.nii.gz,s2,sub-02,,\n")
    items = discover(manifest)
    assert [(i.id, i.columns["subject"], i.columns["session"]) for i in items] == [("s1", "sub-01", "ses-1"),
                                                                                    ("s2", "sub-02", "")]
    assert [i.sequence for i in items] == ["t1", None]  # declared per scan; empty: the scan's own declaration
    (tmp_path / "seq.csv").write_text("path,sequence\nd/a/t1.nii.gz,DWI\n")
    with pytest.raises(ValueError, match=r"seq.csv: line 2: unknown sequence 'DWI'"):
        discover(tmp_path / "seq.csv")
    assert items[0].path == tmp_path / "d" / "a" / "t1.nii.gz"
    (tmp_path / "bad.csv").write_text("file\nx.nii.gz\n")
    with pytest.raises(ValueError, match="needs a 'path' column"):
        discover(tmp_path / "bad.csv")
    (tmp_path / "dup.csv").write_text("path,id\na.nii.gz,x\nb.nii.gz,x\n")
    with pytest.raises(ValueError, match="share the id x"):
        discover(tmp_path / "dup.csv")
    with pytest.raises(ValueError, match="no scans found"):
        discover(tmp_path / "nothing_here")


def test_local_cluster_plan_never_oversubscribes():
    assert plan_local_cluster(None, "auto", cores=2, gpus=0) == plan_local_cluster(0, "cpu", cores=2, gpus=0)
    plan = plan_local_cluster(None, "auto", cores=16, gpus=0)
    assert (plan.n_workers, plan.torch_threads, plan.device) == (8, 2, "cpu")
    plan = plan_local_cluster(2, "cpu", cores=2, gpus=0)
    assert plan.n_workers * plan.torch_threads <= 2
    plan = plan_local_cluster(None, "auto", cores=16, gpus=2)
    assert (plan.n_workers, plan.device, plan.resources) == (2, "cuda", {"GPU": 1})
    with pytest.raises(ValueError, match="no CUDA GPU"):
        plan_local_cluster(None, "cuda", cores=2, gpus=0)
    with pytest.raises(ValueError, match="this machine has 2 CPU cores"):
        plan_local_cluster(3, "cpu", cores=2, gpus=0)


def test_local_cluster_workers_get_the_planned_threads_and_glibcs_allocator():
    """Dask's defaults (1 OpenMP thread, MALLOC_TRIM_THRESHOLD_) made every scan ~40 % slower in a worker than
    in `score`; the LocalCluster's workers start with the plan's threads and without the trim threshold."""
    import os

    from napari_uad.cohort.cluster import connect

    plan = plan_local_cluster(1, "cpu")
    client, cluster = connect(None, plan)
    try:
        env = client.submit(lambda: {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                                    "MALLOC_TRIM_THRESHOLD_")}, pure=False).result()
    finally:
        client.close()
        cluster.close()
    threads = str(plan.torch_threads)
    assert env == {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "MALLOC_TRIM_THRESHOLD_": None}


def test_rank_puts_the_most_anomalous_first_and_failures_last():
    rows = [{"id": "a", "status": "done", "volume_score": 5.0, "volume_score_healthy_quantile": 0.5},
            {"id": "b", "status": "failed", "volume_score": None, "volume_score_healthy_quantile": None},
            {"id": "c", "status": "done", "volume_score": 9.0, "volume_score_healthy_quantile": 1.0},
            {"id": "d", "status": "done", "volume_score": 7.0, "volume_score_healthy_quantile": 1.0}]
    assert [(r["rank"], r["id"]) for r in rank_rows(rows)] == [(1, "c"), (2, "d"), (3, "a"), (4, "b")]


def test_cohort_matches_score_ranks_sick_first_and_records_the_bad_scan(tmp_path, trained_model, cohort_dir,
                                                                        capsys):
    out = tmp_path / "out"
    code = cli.main(["cohort", str(cohort_dir), "--out", str(out), "--model", str(trained_model), "--workers", "2",
                     "--device", "cpu", "--quiet", "--maps", "residual,nll"])
    assert code == 1  # one scan failed; the others finished
    rows = _rows(out / "cohort.csv")
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4", "5"]
    assert {r["id"] for r in rows[:2]} == {"sick_a", "sick_b"}  # abnormal above normal
    assert {r["id"] for r in rows[2:4]} == {"normal_a", "normal_b"}
    assert rows[4]["id"] == "broken" and rows[4]["status"] == "failed" and "broken.nii.gz" in rows[4]["error"]
    assert "broken.nii.gz" in capsys.readouterr().err
    assert {r["worker"] for r in rows[:4]} <= {"0", "1"}
    summary = json.loads((out / "cohort.json").read_text())
    assert summary["totals"] == {"scans": 5, "scored": 4, "skipped_complete": 0, "failed": 1}
    assert summary["settings"]["workers"] == 2 and summary["model"]["sha256"]
    # every file is what `score` writes for the same scan (float tolerance: the workers run 1 torch thread)
    single = tmp_path / "single"
    assert cli.main(["score", str(cohort_dir / "site1" / "sick_a.nii.gz"), "--out", str(single), "--model",
                     str(trained_model), "--quiet", "--maps", "residual,nll", "--device", "cpu"]) == 0
    names = sorted(p.name for p in single.iterdir())
    assert names == sorted(p.name for p in (out / "scans").iterdir() if p.name.startswith("sick_a."))
    for name in names:
        if name.endswith(".nii.gz"):
            np.testing.assert_allclose(nib.load(out / "scans" / name).get_fdata(),
                                       nib.load(single / name).get_fdata(), rtol=1e-5, atol=1e-6, err_msg=name)
    ours, theirs = _rows(out / "scans" / "sick_a.findings.csv"), _rows(single / "sick_a.findings.csv")
    assert [(r["finding_id"], r["voxel_count"]) for r in ours] == [(r["finding_id"], r["voxel_count"]) for r in theirs]
    for a, b in zip(ours, theirs):
        assert float(a["max_score"]) == pytest.approx(float(b["max_score"]), rel=1e-5)
    findings = _rows(out / "cohort_findings.csv")
    assert sum(int(r["n_findings"]) for r in rows[:4]) == len(findings)


def test_manifest_columns_are_carried_and_a_rerun_rescores_nothing(tmp_path, trained_model, cohort_dir):
    manifest = tmp_path / "cohort.csv"
    manifest.write_text("path,id,subject,session\n"
                        f"{cohort_dir / 'site0' / 'normal_a.nii.gz'},P1,sub-01,ses-a\n"
                        f"{cohort_dir / 'site1' / 'sick_a.nii.gz'},P2,sub-02,ses-b\n")
    out = tmp_path / "out"
    args = ["cohort", str(manifest), "--out", str(out), "--model", str(trained_model), "--workers", "1",
            "--device", "cpu", "--quiet", "--maps", "residual"]
    assert cli.main(args) == 0
    rows = {r["id"]: r for r in _rows(out / "cohort.csv")}
    assert (rows["P1"]["subject"], rows["P1"]["session"], rows["P2"]["subject"]) == ("sub-01", "ses-a", "sub-02")
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "scans").iterdir()}
    assert cli.main(args) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / "scans").iterdir()} == stamps
    assert json.loads((out / "cohort.json").read_text())["totals"]["skipped_complete"] == 2
    # another threshold is another result: rescored
    assert cli.main([*args, "--threshold", "0.5"]) == 0
    assert json.loads((out / "cohort.json").read_text())["totals"]["scored"] == 2
    # so is another declared sequence; each scan's report says what it was declared and by whom
    assert cli.main([*args, "--threshold", "0.5", "--sequence", "FLAIR"]) == 0
    summary = json.loads((out / "cohort.json").read_text())
    assert summary["totals"]["scored"] == 2 and summary["settings"]["sequence"] == "flair"
    report = json.loads((out / "scans" / "P1.json").read_text())
    assert (report["sequence"], report["sequence_source"]) == ("flair", "--sequence")


def test_killed_cohort_resumes_without_rescoring_finished_scans(tmp_path, trained_model, cohort_dir):
    (cohort_dir / "broken.nii.gz").unlink()
    out = tmp_path / "out"
    args = [sys.executable, "-m", "napari_uad.cli", "cohort", str(cohort_dir), "--out", str(out), "--model",
            str(trained_model), "--workers", "1", "--device", "cpu", "--quiet", "--maps", "residual"]
    proc = subprocess.Popen(args, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / "scans").glob("*.json")):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # client, scheduler and worker processes
    proc.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in (out / "scans").glob("*.json")}
    assert finished and not (out / "cohort.csv").exists()
    assert not [p for p in (out / "scans").iterdir() if p.name.startswith(".") and not p.name.endswith(".partial")]
    assert cli.main(args[3:]) == 0
    rows = _rows(out / "cohort.csv")
    assert len(rows) == 4 and all(r["status"] == "done" for r in rows)
    assert not list((out / "scans").glob(".*"))  # the killed run's staging directory is gone
    assert all((out / "scans" / name).stat().st_mtime_ns == t for name, t in finished.items())
    totals = json.loads((out / "cohort.json").read_text())["totals"]
    assert totals["skipped_complete"] >= len(finished) and totals["scored"] == 4 - totals["skipped_complete"]


@pytest.fixture(scope="module")
def scored_cohort(tmp_path_factory, trained_model) -> Path:
    """A cohort of two sick and two normal phantoms scored with --threshold low enough for several findings."""
    root = tmp_path_factory.mktemp("worklist")
    for i, (name, lesion) in enumerate((("normal_a", False), ("sick_a", True), ("sick_b", True), ("normal_b", False))):
        _write(root / "scans_in" / f"{name}.nii.gz", head_phantom((40, 44, 14), seed=i, lesion=lesion), AFFINE)
    assert cli.main(["cohort", str(root / "scans_in"), "--out", str(root / "out"), "--model", str(trained_model),
                     "--workers", "1", "--device", "cpu", "--quiet", "--maps", "residual,nll",
                     "--detection-map", "residual", "--threshold", "0.6"]) == 0
    return root / "out"


def test_worklist_opens_scans_from_their_files_in_rank_order(scored_cohort, monkeypatch, tmp_path):
    from napari_uad.cohort.worklist import Worklist

    monkeypatch.setenv("NAPARI_UAD_HOME", str(tmp_path / "home"))
    worklist = Worklist(scored_cohort)
    assert [e.id for e in worklist.entries][:2] in (["sick_a", "sick_b"], ["sick_b", "sick_a"])
    assert worklist.current.rank == 1
    scan = worklist.open()
    r = worklist.report(worklist.current)
    # the precomputed maps in the scan's canonical grid, and the same findings as the cohort wrote
    from napari_uad.io import read_volume

    stored = read_volume(scored_cohort / "scans" / f"{worklist.current.id}.residual.nii.gz", allow_constant=True)
    np.testing.assert_array_equal(scan.result.maps["residual"], stored.data)
    assert scan.card.detection_map == "residual" and scan.default_threshold("residual") == r["threshold"]
    view = scan.findings("residual", scan.default_threshold("residual"),
                         scan.card.calibration["min_volume_mm3"], 3)
    assert len(view.findings) == r["n_findings"] > 0
    assert scan.review_key(view) == worklist.review_key(worklist.current)
    assert worklist.status(worklist.current) == "in review"  # opened
    assert worklist.status(worklist.entries[2]) == "not reviewed"


def test_worklist_status_position_and_export_survive_a_restart(scored_cohort, monkeypatch, tmp_path):
    from napari_uad.cohort.worklist import Worklist
    from napari_uad.review import ReviewSession

    monkeypatch.setenv("NAPARI_UAD_HOME", str(tmp_path / "home"))
    worklist = Worklist(scored_cohort)
    worklist.go_to(0)
    first = worklist.current
    scan = worklist.open()
    view = scan.findings("residual", scan.default_threshold("residual"), scan.card.calibration["min_volume_mm3"])
    session = ReviewSession(key=scan.review_key(view), scan_path=str(first.path))
    session.update(view.findings[0].finding_id, reviewer="dr x", tag="TP", category="reference finding")
    assert worklist.status(first) == "in review"
    for f in view.findings[1:]:
        session.update(f.finding_id, reviewer="dr x", tag="FP")
    assert worklist.status(first) == "done"  # every finding tagged
    second = worklist.move(+1)
    worklist.mark_done(second)
    assert worklist.move(+10).rank == len(worklist.entries) and worklist.move(-10).rank == 1
    worklist.move(+1)
    # a new reviewer session (napari restarted) resumes at the same scan with the same statuses
    again = Worklist(scored_cohort)
    assert again.current.id == second.id
    assert [again.status(e) for e in again.entries[:2]] == ["done", "done"]
    exported = _rows(again.export_reviewed(tmp_path / "reviewed.csv"))
    assert len(exported) == len(view.findings) and {r["scan_path"] for r in exported} == {str(first.path)}
    assert exported[0]["tag"] == "TP" and exported[0]["category"] == "reference finding"
    assert exported[0]["reviewer"] == "dr x"
    with pytest.raises(ValueError, match="not a cohort"):
        Worklist(tmp_path)


def test_a_scan_scored_at_its_contrasts_own_threshold_counts_as_complete(tmp_path, tiny_model_dir):
    """Rerunning a cohort must not rescore a T2 scan because its threshold (the card's T2 point) differs from
    the pooled one; a report at any other threshold is not complete."""
    from types import SimpleNamespace

    from napari_uad.cohort.inputs import CohortItem
    from napari_uad.cohort.worker import outputs_complete
    from napari_uad.io import file_sha256
    from napari_uad.pipeline import ScoreJob
    from napari_uad.scoring import Scorer

    model, card = load_model(tiny_model_dir)
    card.calibration["operating_point"] = {"by_contrast": {"bright_fluid": {"threshold": 2.5, "min_volume_mm3": 0.0}}}
    job = ScoreJob.from_card(Scorer(model, card, device="cpu"), ("residual",))
    scan = tmp_path / "scan.nii.gz"
    write_image_file(scan, head_phantom(), np.eye(4))
    out = tmp_path / "out"
    out.mkdir()
    write_image_file(out / "s.residual.nii.gz", head_phantom(), np.eye(4))
    item, spec = CohortItem("s", scan), SimpleNamespace(maps=("residual",))

    def complete(contrast, threshold):
        report = {"model": {"sha256": card.weights_sha256}, "maps": ["residual"], "detection_map": "residual",
                  "threshold": threshold, "contrast": contrast, "scan": {"sha256": file_sha256(scan)}}
        (out / "s.json").write_text(json.dumps(report))
        return outputs_complete(out, item, card.weights_sha256, spec, job)

    assert complete("bright_fluid", 2.5) and complete("dark_fluid", 1.0) and complete(None, 1.0)
    assert not complete("bright_fluid", 1.0) and not complete("dark_fluid", 2.5)
