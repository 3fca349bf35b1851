"""The MR sequence a scan declares (DICOM header, BIDS name, the user) and the card settings it selects."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_uad.io import Volume, read_volume, write_image_file, write_like
from napari_uad.model_card import settings_key
from napari_uad.sequence import (
    parse_sequence,
    sequence_from_dicom_tags,
    sequence_from_text,
    sequence_mismatch,
    settings_label,
)

from .test_io import marker_volume, write_dicom_series


@pytest.mark.parametrize("text, key", [("FLAIR", "flair"), ("t2-flair", "flair"), ("T1c", "t1"), ("mprage", "t1"),
                                       ("T1w", "t1"), ("T2", "t2"), ("PDw", "pd"), ("auto", None), ("", None),
                                       (None, None)])
def test_user_sequence_words(text, key):
    assert parse_sequence(text) == key


def test_unknown_sequence_word_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match=r"unknown sequence 'DWI'; use auto, T1 .*FLAIR, T2 or PD"):
        parse_sequence("DWI")


@pytest.mark.parametrize("description, key", [
    ("AX T2 FLAIR", "flair"), ("t2_tirm_tra_dark-fluid", "flair"), ("T1 FLAIR SAG", "t1"),
    ("t1_mprage_sag_p2_iso", "t1"), ("AX T1 POST GD", "t1"), ("SAG 3D BRAVO", "t1"), ("t2_tse_tra", "t2"),
    ("PD_TSE", "pd"), ("Ax T2* GRE", None), ("SWI", None), ("DWI b1000", None), ("localizer", None)])
def test_series_descriptions(description, key):
    """What clinical series descriptions name: FLAIR before T2, T1-FLAIR is T1, T2* / SWI / DWI are none of ours."""
    assert sequence_from_text(description) == key


def test_inversion_recovery_with_long_inversion_time_is_flair():
    """Without a description an inversion-recovery series that nulls fluid (TI >= 1500 ms) is FLAIR; a T1
    inversion-prepared one (TI ~ 900 ms) says nothing by itself."""
    assert sequence_from_dicom_tags({"0018|0020": "SE\\IR", "0018|0082": "2500"}) == "flair"
    assert sequence_from_dicom_tags({"0018|0020": "GR\\IR", "0018|0082": "900"}) is None
    assert sequence_from_dicom_tags({"0018|0020": "SE", "0018|0082": "2500"}) is None
    assert sequence_from_dicom_tags({"0018|0020": "SE\\IR", "0018|0082": "not a number"}) is None
    assert sequence_from_dicom_tags({"0008|103e": "AX T1 SE", "0018|0020": "SE\\IR", "0018|0082": "2500"}) == "t1"


def test_sequence_is_read_from_the_dicom_header_and_bids_names(tmp_path):
    data, _ = marker_volume()
    flair = read_volume(write_dicom_series(tmp_path / "flair", data, extra_tags=(("0008|103e", "AX T2 FLAIR"),)))
    assert (flair.metadata["sequence"], flair.metadata["sequence_source"]) == ("flair", "DICOM header")
    ir = read_volume(write_dicom_series(tmp_path / "ir", data, extra_tags=(("0018|0020", "SE\\IR"),
                                                                           ("0018|0082", "2200"))))
    assert ir.metadata["sequence"] == "flair"
    assert "sequence" not in read_volume(write_dicom_series(tmp_path / "plain", data)).metadata
    for name, key in (("sub-01_FLAIR", "flair"), ("sub-01_ses-1_T2w", "t2"), ("sub-01_ce-gd_T1w", "t1"),
                      ("sub-01_PDw", "pd")):
        vol = read_volume(write_image_file(tmp_path / f"{name}.nii.gz", data, np.eye(4)))
        assert (vol.metadata["sequence"], vol.metadata["sequence_source"]) == (key, "BIDS name")
    scan = write_image_file(tmp_path / "scan.nii.gz", data, np.eye(4))
    assert "sequence" not in read_volume(scan).metadata
    (tmp_path / "scan.json").write_text(json.dumps({"SeriesDescription": "t2_tse_tra"}))
    assert read_volume(scan).metadata["sequence"] == "t2"  # a sidecar's series description
    (tmp_path / "scan.json").write_text("{not json")
    assert "sequence" not in read_volume(scan).metadata  # an unreadable sidecar says nothing; the scan is read


CALIBRATION = {"operating_point": {"threshold": 5.0, "by_contrast": {"dark_fluid": {"threshold": 3.0},
                                                                     "flair": {"threshold": 2.0}}},
               "combined": {"components_by_contrast": {"pd": ["asymmetry"]}}}


@pytest.mark.parametrize("contrast, sequence, key", [
    ("dark_fluid", None, "dark_fluid"),       # nothing declared: the recognised contrast's settings
    ("dark_fluid", "flair", "flair"),         # declared and the card has settings for it
    ("dark_fluid", "t1", "dark_fluid"),       # declared, the card has none for it: the recognised contrast's
    ("bright_fluid", "pd", "pd"),             # components of its own count as settings
    ("bright_fluid", "flair", "bright_fluid"),  # its fluid contradicts the declaration: not believed
    (None, "flair", "flair"),                 # no tissue fit to contradict it
])
def test_settings_key(contrast, sequence, key):
    assert settings_key(CALIBRATION, contrast, sequence) == key


def test_a_contradicted_declaration_is_said_in_words():
    why = sequence_mismatch("flair", "bright_fluid")
    assert why.startswith("the scan is declared FLAIR but its fluid reads as T2/PD-weighted (bright fluid)")
    assert sequence_mismatch("flair", "dark_fluid") is None and sequence_mismatch(None, "dark_fluid") is None
    assert settings_label("flair") == "FLAIR" and settings_label("dark_fluid").startswith("T1/FLAIR-like")


@pytest.fixture(scope="module")
def flair_scan(tmp_path_factory):
    """A synthetic FLAIR-like brain at 2 mm written as NIfTI (its tissue fit reads it as dark fluid)."""
    from napari_uad.synth import case_volume, healthy_volume

    v = case_volume(healthy_volume(5, contrast="flair"))
    volume = Volume.from_array(v.data[::2, ::2, ::2].copy(), v.affine @ np.diag([2.0, 2.0, 2.0, 1.0]))
    return write_like(volume, volume.data, tmp_path_factory.mktemp("flair") / "brain.nii.gz")


def test_score_uses_the_declared_sequences_settings(flair_scan, tiny_model_dir, tmp_path):
    """`napari-uad score --sequence FLAIR`: the card's FLAIR point sets the threshold, S.json records the
    sequence, where it came from and the settings used; declared T1 (no settings of its own) takes the recognised
    contrast's point; declared T2 on a dark-fluid scan is not believed, and the report warns about it."""
    from napari_uad.model_card import load_model
    from napari_uad.pipeline import ScoreJob
    from napari_uad.preprocessing import PipelineOptions, PreprocessingConfig
    from napari_uad.scoring import Scorer

    model, card = load_model(tiny_model_dir)
    card.preprocessing = PreprocessingConfig(template="mni152-2009")
    own = {"dark_fluid": {"threshold": 7.0, "min_volume_mm3": 50.0},
           "flair": {"threshold": 6.0, "min_volume_mm3": 20.0, "min_thickness_mm": 2.0}}
    card.calibration = {"detection_map": "tissue", "min_volume_mm3": 10.0, "maps": {"tissue": {"threshold": 5.0}},
                        "operating_point": {"threshold": 5.0, "min_volume_mm3": 10.0, "by_contrast": own}}
    scorer = Scorer(model, card, device="cpu", options=PipelineOptions(skull_strip="off"))
    reports = {}
    for declared in ("FLAIR", "T1", "T2", None):
        ScoreJob.from_card(scorer, ("tissue",), sequence=declared).run(flair_scan, tmp_path, f"s-{declared}")
        reports[declared] = json.loads((tmp_path / f"s-{declared}.json").read_text())
    flair = reports["FLAIR"]
    assert (flair["contrast"], flair["sequence"], flair["sequence_source"], flair["settings"]) == (
        "dark_fluid", "flair", "--sequence", "flair")
    assert (flair["threshold"], flair["min_volume_mm3"], flair["min_thickness_mm"]) == (6.0, 20.0, 2.0)
    assert flair["operating_point"]["threshold"] == "card, this scan's sequence"
    for declared in ("T1", "T2", None):
        assert reports[declared]["settings"] == "dark_fluid" and reports[declared]["threshold"] == 7.0
    assert reports[None]["sequence"] is None
    warned = lambda r: any("declared T2 but its fluid reads as" in w for w in r["out_of_distribution"]["warnings"])  # noqa: E731
    assert warned(reports["T2"]) and not any(warned(reports[d]) for d in ("FLAIR", "T1", None))
    with pytest.raises(ValueError, match="unknown sequence"):
        ScoreJob.from_card(scorer, ("tissue",), sequence="DWI")


def test_a_real_scanners_series_header():
    """A Siemens series header shipped with pydicom: its Series Description names no sequence, its Protocol Name
    (t1_vibe_fs_tra_bh_dyn) says T1."""
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("examples_overlay.dcm"), stop_before_pixels=True)
    tags = {"0008|103e": str(ds.SeriesDescription), "0018|1030": str(ds.ProtocolName)}
    assert sequence_from_text(tags["0008|103e"]) is None
    assert sequence_from_dicom_tags(tags) == "t1"
