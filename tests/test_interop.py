"""Findings for 3D Slicer: segmentation (.seg.nrrd via slicerio) and markups (.mrk.json), in the scan's geometry."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_uad import cli
from napari_uad.io import LPS_TO_RAS, write_image_file

from .conftest import head_phantom
from .test_io import affine_for

slicerio = pytest.importorskip("slicerio")
SCHEMA = Path(__file__).parent / "fixtures" / "slicer_markups_v1.0.3_subset.schema.json"


def _score(tmp_path, tiny_model_dir, kind: str, suffix: str = ".nii.gz") -> tuple[Path, list[dict]]:
    scan = write_image_file(tmp_path / f"scan_{kind}{suffix}", head_phantom((40, 44, 14)), affine_for(kind))
    out = tmp_path / f"out_{kind}"
    assert cli.main(["score", str(scan), "--out", str(out), "--model", str(tiny_model_dir), "--quiet",
                     "--threshold", "0.8", "--maps", "residual", "--detection-map", "residual",
                     "--export", "slicer"]) == 0
    with open(out / f"scan_{kind}.findings.csv", newline="") as fh:
        return out, list(csv.DictReader(fh))


@pytest.mark.parametrize("kind", ["LPS", "RAS", "permuted", "aniso", "oblique"])
def test_segmentation_and_markups_round_trip_in_the_scans_geometry(tmp_path, tiny_model_dir, kind):
    out, rows = _score(tmp_path, tiny_model_dir, kind)
    assert rows, "the phantom should give findings at this threshold"
    labels_img = nib.load(str(out / f"scan_{kind}.labels.nii.gz"))
    labels = np.asarray(labels_img.dataobj)
    seg = slicerio.read_segmentation(str(out / f"scan_{kind}.seg.nrrd"))
    # the same grid as the labels (and the scan): Slicer's ijk -> LPS matrix is the scan's affine in LPS
    np.testing.assert_allclose(seg["ijkToLPS"], LPS_TO_RAS @ labels_img.affine, atol=1e-5)
    assert [s["name"] for s in seg["segments"]] == [f"finding {r['finding_id']}" for r in rows]
    for segment, row in zip(seg["segments"], rows):
        mask = np.asarray(seg["voxels"]) == segment["labelValue"]
        np.testing.assert_array_equal(mask, labels == int(row["finding_id"]))  # same voxels per finding
        assert segment["color"] == pytest.approx([1.0, 0.5, 0.0])  # unreviewed: orange
        assert float(segment["tags"]["napari-uad.max_score"]) == pytest.approx(float(row["max_score"]))
        assert segment["tags"]["napari-uad.tag"] == "unreviewed"
    markups = json.loads((out / f"scan_{kind}.mrk.json").read_text())
    import jsonschema

    jsonschema.validate(markups, json.loads(SCHEMA.read_text()))
    points = markups["markups"][0]["controlPoints"]
    assert [p["label"] for p in points] == [f"finding {r['finding_id']}" for r in rows]
    for p, r in zip(points, rows):  # the CSV's RAS centroid, in LPS
        ras = [float(r["centroid_x_mm"]), float(r["centroid_y_mm"]), float(r["centroid_z_mm"])]
        np.testing.assert_allclose(p["position"], [-ras[0], -ras[1], ras[2]], atol=1e-6)


def test_reviewed_segmentation_reads_back_with_its_tags(tmp_path, tiny_model_dir):
    """A review (tags, a note with Slicer's separators in it) survives .seg.nrrd, and the plugin's reader opens it
    over the scan with the findings' reviews."""
    from napari_uad._reader import get_reader
    from napari_uad.interop.slicer import read_segmentation_findings, write_segmentation
    from napari_uad.io import read_volume

    out, rows = _score(tmp_path, tiny_model_dir, "LPS")
    scan = read_volume(tmp_path / "scan_LPS.nii.gz")
    labels = read_volume(out / "scan_LPS.labels.nii.gz", allow_constant=True).data
    rows[0].update(tag="TP", category="reference finding", note="enhancing | rim: 5 mm", signal="hypointense")
    if len(rows) > 1:
        rows[1].update(tag="FP")
    path = write_segmentation(tmp_path / "reviewed.seg.nrrd", scan, labels, rows)
    back, affine, fields = read_segmentation_findings(path)
    np.testing.assert_array_equal(back, np.asarray(nib.load(str(out / "scan_LPS.labels.nii.gz")).dataobj))
    np.testing.assert_allclose(affine, scan.original_affine, atol=1e-5)
    first = int(rows[0]["finding_id"])
    assert fields[first]["tag"] == "TP" and fields[first]["note"] == "enhancing | rim: 5 mm"
    assert fields[first]["signal"] == "hypointense"
    from napari_uad.interop.slicer import write_markups

    points = json.loads(write_markups(tmp_path / "reviewed.mrk.json", rows).read_text())["markups"][0]["controlPoints"]
    assert "hypointense" in points[0]["description"] and "TP" in points[0]["description"]
    seg = slicerio.read_segmentation(str(path))
    assert seg["segments"][0]["color"] == pytest.approx([1.0, 0.0, 0.0])  # TP: red
    reader = get_reader(str(path))
    (data, kwargs, kind), = reader(str(path))
    assert kind == "labels" and int(data.max()) == max(int(r["finding_id"]) for r in rows)
    tags = dict(zip(kwargs["features"]["index"], kwargs["features"]["tag"]))
    assert tags[first] == "TP"
    image_kwargs = get_reader(str(tmp_path / "scan_LPS.nii.gz"))(str(tmp_path / "scan_LPS.nii.gz"))[0][1]
    np.testing.assert_allclose(kwargs["scale"], image_kwargs["scale"])  # over the scan
    np.testing.assert_allclose(kwargs["translate"], image_kwargs["translate"])


def test_dicom_seg_references_the_source_series_and_matches_the_labels(tmp_path, tiny_model_dir):
    """--export dicom-seg on a DICOM series input: a DICOM Segmentation that references every source SOP instance,
    one segment per finding (algorithm = the model), frames equal to the findings labels."""
    hd = pytest.importorskip("highdicom")
    import pydicom

    from .test_io import write_dicom_series

    series = write_dicom_series(tmp_path / "series", (head_phantom((40, 44, 14)) * 10).astype(np.int16))
    out = tmp_path / "out"
    assert cli.main(["score", str(series), "--out", str(out), "--model", str(tiny_model_dir), "--quiet",
                     "--threshold", "0.8", "--maps", "residual", "--detection-map", "residual",
                     "--export", "dicom-seg"]) == 0
    with open(out / "series.findings.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows
    seg = hd.seg.segread(str(out / "series.seg.dcm"))
    sources = [pydicom.dcmread(str(f)) for f in sorted(series.iterdir())]
    uids = {ds.SOPInstanceUID for ds in sources}
    referenced = {ref.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence
                  for ref in s.ReferencedInstanceSequence}
    assert referenced == uids and seg.ReferencedSeriesSequence[0].SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert [d.SegmentLabel for d in seg.SegmentSequence] == [f"finding {r['finding_id']}" for r in rows]
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("tiny-test", "0.0.1")
    # frames per source slice, segments combined into a label map, against the labels NIfTI (same grid)
    labels = np.asarray(nib.load(str(out / "series.labels.nii.gz")).dataobj)  # (column, row, slice)
    order = sorted(sources, key=lambda ds: float(ds.ImagePositionPatient[2]))
    pixels = seg.get_pixels_by_source_instance([ds.SOPInstanceUID for ds in order], combine_segments=True)
    expected = np.zeros(labels.shape[::-1], np.int64)  # segment numbers 1..n in the order of the CSV rows
    for n, r in enumerate(rows, start=1):
        expected[labels.transpose(2, 1, 0) == int(r["finding_id"])] = n
    np.testing.assert_array_equal(pixels, expected)
    # a NIfTI input cannot have a DICOM SEG: one line, the scan fails
    scan = write_image_file(tmp_path / "scan.nii.gz", head_phantom((40, 44, 14)), affine_for("RAS"))
    assert cli.main(["score", str(scan), "--out", str(tmp_path / "o2"), "--model", str(tiny_model_dir), "--quiet",
                     "--threshold", "0.8", "--export", "dicom-seg"]) == 1


def test_reviewed_scan_exports_dicom_seg_with_tag_colours(tmp_path, tiny_model_dir, monkeypatch):
    """The widget's reviewed export path (ScoredScan.export_dicom_seg): the reviewer's TP is red in the SEG."""
    hd = pytest.importorskip("highdicom")
    from napari_uad.io import read_volume
    from napari_uad.model_card import load_model
    from napari_uad.review import ReviewSession
    from napari_uad.scoring import Scorer
    from napari_uad.session import ScoredScan

    from .test_io import write_dicom_series

    monkeypatch.setenv("NAPARI_UAD_HOME", str(tmp_path / "home"))
    series = write_dicom_series(tmp_path / "series", (head_phantom((40, 44, 14)) * 10).astype(np.int16))
    volume = read_volume(series)
    model, card = load_model(tiny_model_dir)
    scan = ScoredScan(volume, Scorer(model, card, device="cpu").score(volume, ("residual",)), card)
    view = scan.findings("residual", 0.8, 0.0)
    review = ReviewSession(key=scan.review_key(view))
    review.update(view.findings[0].finding_id, tag="TP")
    seg = hd.seg.segread(str(scan.export_dicom_seg(tmp_path / "reviewed.seg.dcm", view, review)))
    colours = [hd.color.CIELabColor.from_dicom_value(d.RecommendedDisplayCIELabValue).to_rgb()
               for d in seg.SegmentSequence]
    assert colours[0] == pytest.approx((255, 0, 0), abs=2) and len(colours) == len(view.findings)
    with pytest.raises(ValueError, match="needs a DICOM series"):
        nifti = read_volume(write_image_file(tmp_path / "s.nii.gz", head_phantom((40, 44, 14)), np.eye(4)))
        other = ScoredScan(nifti, Scorer(model, card, device="cpu").score(nifti, ("residual",)), card)
        other.export_dicom_seg(tmp_path / "x.dcm", other.findings("residual", 0.8, 0.0), None)
