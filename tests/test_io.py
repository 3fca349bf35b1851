"""Volume IO: every format round-trips onto the same world points, for LPS, RAS, permuted and anisotropic grids."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from napari_uad.io import Volume, VolumeError, read_volume, write_image_file, write_like

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def affine_for(kind: str) -> np.ndarray:
    """voxel -> RAS mm affines of the grids the project must handle."""
    a = np.eye(4)
    if kind == "RAS":
        a[:3, :3] = np.diag([1.0, 1.0, 1.0])
    elif kind == "LPS":
        a[:3, :3] = np.diag([-1.0, -1.0, 1.0])
    elif kind == "permuted":  # array axes are (S, R, P): a sagittal-first, flipped acquisition
        a[:3, :3] = np.array([[0, 1.0, 0], [0, 0, -1.0], [1.0, 0, 0]])
    elif kind == "aniso":  # 1 x 1 x 3 mm, LPI
        a[:3, :3] = np.diag([-1.0, -1.0, -3.0])
    elif kind == "oblique":
        t = np.deg2rad(10)
        a[:3, :3] = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 2.0]])
    a[:3, 3] = [-20.0, 15.0, -7.5]
    return a


def marker_volume(shape=(12, 14, 10)) -> tuple[np.ndarray, tuple[int, int, int]]:
    data = np.random.default_rng(1).uniform(10, 20, shape).astype(np.float32)
    marker = (3, 9, 6)
    data[marker] = 1000.0
    return data, marker


def save_as(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    if path.suffix == ".mhd":  # MetaImage header + raw, through SimpleITK
        lps = LPS_TO_RAS @ affine
        sp = np.sqrt((lps[:3, :3] ** 2).sum(0))
        img = sitk.GetImageFromArray(data.transpose(2, 1, 0).copy())
        img.SetSpacing(sp.tolist())
        img.SetOrigin(lps[:3, 3].tolist())
        img.SetDirection((lps[:3, :3] / sp).ravel().tolist())
        sitk.WriteImage(img, str(path))
        return path
    return write_image_file(path, data, affine)


def world_of_max(path: Path) -> np.ndarray:
    """World RAS mm of the brightest voxel, read back independently with nibabel (NIfTI outputs)."""
    img = nib.load(str(path))
    ijk = np.unravel_index(np.argmax(np.asarray(img.dataobj)), img.shape)
    return nib.affines.apply_affine(img.affine, ijk)


@pytest.mark.parametrize("kind", ["RAS", "LPS", "permuted", "aniso", "oblique"])
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".mha", ".mhd"])
def test_round_trip_lands_on_same_world_points(tmp_path, kind, suffix):
    data, marker = marker_volume()
    affine = affine_for(kind)
    src = save_as(tmp_path / f"scan{suffix}", data, affine)
    before = src.read_bytes()
    vol = read_volume(src)
    # canonical orientation, reached without resampling
    if kind != "oblique":
        assert vol.axcodes == ("R", "A", "S")
    assert sorted(vol.shape) == sorted(data.shape)
    np.testing.assert_allclose(np.sort(vol.data.ravel()), np.sort(data.ravel()))
    # the marker sits at the same world point in the canonical volume
    expected_world = nib.affines.apply_affine(affine, marker)
    c_ijk = np.unravel_index(np.argmax(vol.data), vol.shape)
    np.testing.assert_allclose(vol.canonical_to_world(c_ijk)[0], expected_world, atol=1e-4)
    np.testing.assert_allclose(vol.canonical_to_original_index(c_ijk)[0], marker, atol=1e-6)
    # spacing in mm along canonical axes
    expected_spacing = sorted(np.sqrt((affine[:3, :3] ** 2).sum(0)))
    np.testing.assert_allclose(sorted(vol.spacing), expected_spacing, atol=1e-5)
    # a map written from the canonical grid lands on the same world points, in the original grid
    out = write_like(vol, vol.data * 2.0, tmp_path / "map.nii.gz")
    written = nib.load(str(out))
    assert written.shape == data.shape
    np.testing.assert_allclose(written.affine, affine, atol=1e-4)
    np.testing.assert_allclose(np.asarray(written.dataobj), data * 2.0, rtol=1e-6)
    np.testing.assert_allclose(world_of_max(out), expected_world, atol=1e-4)
    assert src.read_bytes() == before  # input untouched


def test_sitk_world_convention_matches(tmp_path):
    """An LPS NRRD's physical point (ITK) equals our RAS world point with x, y negated."""
    data, marker = marker_volume()
    src = write_image_file(tmp_path / "scan.nrrd", data, affine_for("aniso"))
    img = sitk.ReadImage(str(src))
    lps_point = np.array(img.TransformIndexToPhysicalPoint(tuple(int(v) for v in marker)))
    vol = read_volume(src)
    c_ijk = np.unravel_index(np.argmax(vol.data), vol.shape)
    np.testing.assert_allclose(vol.canonical_to_world(c_ijk)[0], lps_point * [-1, -1, 1], atol=1e-4)


def write_dicom_series(directory: Path, data: np.ndarray, modality: str = "MR", extra_tags: tuple = ()) -> Path:
    """A DICOM series written by SimpleITK (axial LPS slices, 1 x 1 x 2.5 mm); ``extra_tags``: more (tag, value)
    pairs on every slice."""
    directory.mkdir()
    img = sitk.GetImageFromArray(data.transpose(2, 1, 0).astype(np.int16).copy())
    img.SetSpacing((1.0, 1.0, 2.5))
    img.SetOrigin((10.0, -5.0, 30.0))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(img.GetDepth()):
        sl = img[:, :, z]
        point = img.TransformIndexToPhysicalPoint((0, 0, z))
        for tag, value in [("0008|0060", modality), ("0020|000d", "1.2.826.0.1.3680043.2.1125.1"),
                           ("0020|000e", "1.2.826.0.1.3680043.2.1125.2"), ("0020|0013", str(z + 1)),
                           ("0020|0052", "1.2.826.0.1.3680043.2.1125.4"), ("0010|0020", "PHANTOM01"),
                           ("0020|0032", "\\".join(f"{c:f}" for c in point)),
                           ("0020|0037", "1\\0\\0\\0\\1\\0"), ("0028|0030", "1\\1"), ("0018|0050", "2.5"),
                           ("0008|0016", "1.2.840.10008.5.1.4.1.1.4"),
                           ("0008|0018", f"1.2.826.0.1.3680043.2.1125.3.{z + 1}"), *extra_tags]:
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(directory / f"slice{z:03d}.dcm"))
        writer.Execute(sl)
    return directory


def test_dicom_series(tmp_path):
    data, marker = marker_volume()
    series = write_dicom_series(tmp_path / "dicom", data, modality="CT")
    vol = read_volume(series)
    assert vol.modality == "CT"  # from the DICOM tag, not from the intensities
    np.testing.assert_allclose(vol.spacing, [1.0, 1.0, 2.5], atol=1e-4)
    c_ijk = np.unravel_index(np.argmax(vol.data), vol.shape)
    lps = np.array([10.0, -5.0, 30.0]) + np.array(marker) * [1.0, 1.0, 2.5]
    np.testing.assert_allclose(vol.canonical_to_world(c_ijk)[0], lps * [-1, -1, 1], atol=1e-3)
    out = write_like(vol, vol.data, tmp_path / "map.nii.gz")
    np.testing.assert_allclose(world_of_max(out), lps * [-1, -1, 1], atol=1e-3)


def test_contrast_agent_is_read_from_dicom_and_bids(tmp_path):
    """The scan says it is contrast-enhanced: the DICOM Contrast/Bolus Agent tag, a BIDS sidecar's
    ContrastBolusIngredient or the BIDS ``ce-`` entity end up in ``metadata["contrast_agent"]``; plain scans and
    an unreadable sidecar carry none."""
    data, _ = marker_volume()
    enhanced = read_volume(write_dicom_series(tmp_path / "t1c", data, extra_tags=(("0018|0010", "GADAVIST"),)))
    assert enhanced.metadata["contrast_agent"] == "GADAVIST"
    assert "contrast_agent" not in read_volume(write_dicom_series(tmp_path / "t1", data)).metadata
    for i, none in enumerate(("", "NONE", "no")):  # an empty tag (type 2) or a word for none: not enhanced
        series = write_dicom_series(tmp_path / f"t1-{i}", data, extra_tags=(("0018|0010", none),))
        assert "contrast_agent" not in read_volume(series).metadata
    bids = write_image_file(tmp_path / "sub-01_ce-gd_T1w.nii.gz", data, np.eye(4))
    assert read_volume(bids).metadata["contrast_agent"] == "gd"
    (tmp_path / "sub-01_ce-gd_T1w.json").write_text('{"ContrastBolusIngredient": "GADOLINIUM"}')
    assert read_volume(bids).metadata["contrast_agent"] == "GADOLINIUM"  # the sidecar names the agent
    plain = write_image_file(tmp_path / "sub-01_T1w.nii.gz", data, np.eye(4))
    assert "contrast_agent" not in read_volume(plain).metadata
    (tmp_path / "sub-01_T1w.json").write_text("{not json")
    assert "contrast_agent" not in read_volume(plain).metadata
    (tmp_path / "sub-01_T1w.json").write_text('{"ContrastBolusIngredient": "GADOLINIUM"}')
    assert read_volume(plain).metadata["contrast_agent"] == "GADOLINIUM"
    assert "contrast_agent" not in read_volume(write_image_file(tmp_path / "space-T1w.nii.gz", data,
                                                                np.eye(4))).metadata


def test_pydicom_single_file_is_rejected(tmp_path):
    pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    directory = tmp_path / "one"
    directory.mkdir()
    (directory / "ct.dcm").write_bytes(Path(get_testdata_file("CT_small.dcm")).read_bytes())
    with pytest.raises(VolumeError, match="single DICOM slice"):
        read_volume(directory)


def test_modality_guess_from_intensity_range():
    affine = np.eye(4)
    ct = np.full((10, 10, 10), -1000.0, np.float32)
    ct[2:8, 2:8, 2:8] = 40.0
    assert Volume.from_array(ct, affine).modality == "CT"
    assert Volume.from_array(ct + 1024, affine).modality == "MR"
    assert Volume.from_array(ct, affine, modality="MR").modality == "MR"


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = marker_volume()[0]
    cases = {}
    cases["missing"] = (tmp_path / "missing.nii.gz", "file not found")
    p = tmp_path / "garbage.nii.gz"
    p.write_bytes(b"this is not a nifti file")
    cases["unreadable"] = (p, "cannot be read")
    full = write_image_file(tmp_path / "full.nii.gz", good, np.eye(4)).read_bytes()
    p = tmp_path / "truncated.nii.gz"
    p.write_bytes(full[: len(full) // 2])
    cases["truncated"] = (p, "cannot be read")
    nib.save(nib.Nifti1Image(good[:, :, 0], np.eye(4)), str(tmp_path / "flat.nii.gz"))
    cases["2d"] = (tmp_path / "flat.nii.gz", "is 2D")
    nib.save(nib.Nifti1Image(np.stack([good, good], -1), np.eye(4)), str(tmp_path / "series4d.nii.gz"))
    cases["4d"] = (tmp_path / "series4d.nii.gz", "4D/vector")
    vec = sitk.GetImageFromArray(np.stack([good, good, good], -1).transpose(2, 1, 0, 3).copy(), isVector=True)
    sitk.WriteImage(vec, str(tmp_path / "vector.mha"))
    cases["vector"] = (tmp_path / "vector.mha", "components per voxel")
    bad = good.copy()
    bad[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(bad, np.eye(4)), str(tmp_path / "nan.nii.gz"))
    cases["nan"] = (tmp_path / "nan.nii.gz", "NaN or Inf")
    bad[1, 1, 1] = np.inf
    nib.save(nib.Nifti1Image(bad, np.eye(4)), str(tmp_path / "inf.nii.gz"))
    cases["inf"] = (tmp_path / "inf.nii.gz", "NaN or Inf")
    nib.save(nib.Nifti1Image(np.full((8, 8, 8), 3.0, np.float32), np.eye(4)), str(tmp_path / "const.nii.gz"))
    cases["constant"] = (tmp_path / "const.nii.gz", "is constant")
    p = tmp_path / "scan.png"
    p.write_bytes(b"\x89PNG")
    cases["extension"] = (p, "unsupported file type")
    empty = tmp_path / "emptydir"
    empty.mkdir()
    cases["empty_dir"] = (empty, "without a DICOM series")
    return cases


@pytest.fixture
def bad_inputs(tmp_path):
    return _bad_inputs(tmp_path)


@pytest.mark.parametrize("case", ["missing", "unreadable", "truncated", "2d", "4d", "vector", "nan", "inf",
                                  "constant", "extension", "empty_dir"])
def test_bad_input_gives_one_line_error_naming_file(bad_inputs, case):
    path, problem = bad_inputs[case]
    with pytest.raises(VolumeError) as info:
        read_volume(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message and problem in message


def test_truncated_gzip_is_not_modified(tmp_path):
    good = marker_volume()[0]
    full = write_image_file(tmp_path / "full.nii.gz", good, np.eye(4)).read_bytes()
    p = tmp_path / "t.nii.gz"
    p.write_bytes(full[:-100])
    with pytest.raises(VolumeError):
        read_volume(p)
    assert p.read_bytes() == full[:-100]
    with pytest.raises(EOFError):
        gzip.decompress(p.read_bytes())


def test_dicom_series_with_a_missing_slice_is_refused(tmp_path):
    """20 slices, slice 10 deleted: the spacing would average to 1.056 x 2.5 mm and misplace everything below the
    gap; the reader refuses in one line naming the gap."""
    data = np.random.default_rng(0).integers(0, 1000, (16, 16, 20)).astype(np.int16)
    series = write_dicom_series(tmp_path / "dicom", data)
    (series / "slice010.dcm").unlink()
    with pytest.raises(VolumeError, match=r"not evenly spaced: 5 mm between slices 10 and 11 where the others are "
                                          r"2.5 mm apart") as err:
        read_volume(series)
    assert str(series) in str(err.value) and "\n" not in str(err.value)
    assert read_volume(write_dicom_series(tmp_path / "complete", data)).shape == (16, 16, 20)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_header_larger_than_the_file_is_refused_before_reading(tmp_path, suffix, monkeypatch):
    """A header claiming 1000^3 voxels over 10^3 voxels of data: one line, and the data is never read (no
    2 GB allocation first)."""
    import gzip

    import nibabel as nib

    header = nib.Nifti1Image(np.zeros((10, 10, 10), np.int16), np.eye(4)).header
    header.set_data_shape((1000, 1000, 1000))
    header.set_data_offset(352)  # single-file NIfTI-1: 348-byte header + 4-byte extension flag
    body = header.binaryblock + bytes(352 - len(header.binaryblock)) + bytes(2000)
    path = tmp_path / f"liar{suffix}"
    path.write_bytes(gzip.compress(body) if suffix == ".nii.gz" else body)
    monkeypatch.setattr(nib.Nifti1Image, "get_fdata", lambda *a, **k: pytest.fail("the data was read"))
    with pytest.raises(VolumeError, match="header claims 1000x1000x1000 voxels .* but the file holds 2352 bytes"):
        read_volume(path)
