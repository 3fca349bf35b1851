"""Findings: components, ordering, minimum volume, connectivity and positions in the source file's grid."""

import numpy as np
import pytest

from napari_uad.findings import component_thickness, find_findings, label_components
from napari_uad.io import Volume


def test_components_ordered_by_peak_and_small_ones_dropped():
    score = np.zeros((20, 20, 10), np.float32)
    score[2:5, 2:5, 2:5] = 1.0  # 27 voxels, peak 1
    score[10:12, 10:12, 5:7] = 3.0  # 8 voxels, peak 3
    score[15, 15, 1] = 5.0  # 1 voxel, peak 5
    labels, n = label_components(score, 0.5, voxel_volume_mm3=2.0, min_volume_mm3=4.0)
    assert n == 2  # the single voxel (2 mm^3) is dropped
    assert labels[10, 10, 5] == 1 and labels[3, 3, 3] == 2 and labels[15, 15, 1] == 0
    assert labels.dtype == np.uint16


def test_thickness_is_the_diameter_of_the_largest_ball_a_finding_holds_and_thin_ones_can_be_dropped():
    """A slab 3 voxels thick measures 4 mm across at 1 mm voxels (its middle voxel lies 2 mm from the outside) and
    a 6-voxel cube 6 mm; with 2 mm voxels along the slab's thin axis the slab measures 8 mm. A minimum thickness
    drops the slab and keeps the cube, whatever its volume; it needs the voxel size."""
    score = np.zeros((30, 30, 30), np.float32)
    score[4:7, 5:25, 5:25] = 1.0  # slab: 3 x 20 x 20 voxels (1 200)
    score[15:21, 15:21, 15:21] = 2.0  # cube: 6 x 6 x 6 voxels (216)
    labels, n = label_components(score, 0.5, 1.0)
    assert n == 2 and labels[18, 18, 18] == 1 and labels[5, 10, 10] == 2
    assert component_thickness(labels, (1.0, 1.0, 1.0)).tolist() == [6.0, 4.0]
    assert component_thickness(labels, (2.0, 1.0, 1.0)).tolist() == [6.0, 8.0]
    assert component_thickness(np.zeros((3, 3, 3), np.uint16), (1.0, 1.0, 1.0)).size == 0
    kept, n = label_components(score, 0.5, 1.0, min_volume_mm3=100.0, min_thickness_mm=5.0, spacing=(1, 1, 1))
    assert n == 1 and kept[18, 18, 18] == 1 and not kept[5].any()
    assert label_components(score, 0.5, 1.0, min_thickness_mm=5.0, spacing=(2, 1, 1))[1] == 2
    with pytest.raises(ValueError, match="spacing"):
        label_components(score, 0.5, 1.0, min_thickness_mm=5.0)
    # find_findings takes the voxel size from the volume
    volume = Volume.from_array(score + 1.0, np.diag([2.0, 1.0, 1.0, 1.0]))
    assert len(find_findings(score, volume, 0.5, min_thickness_mm=5.0)[1]) == 2
    volume = Volume.from_array(score + 1.0, np.eye(4))
    assert len(find_findings(score, volume, 0.5, min_thickness_mm=5.0)[1]) == 1


def test_connectivity():
    score = np.zeros((5, 5, 5), np.float32)
    score[1, 1, 1] = score[2, 2, 2] = 1.0  # touch at a corner only
    assert label_components(score, 0.5, 1.0, connectivity=3)[1] == 1
    assert label_components(score, 0.5, 1.0, connectivity=1)[1] == 2
    with pytest.raises(ValueError):
        label_components(score, 0.5, 1.0, connectivity=4)


def test_finding_positions_in_original_grid_and_world():
    # stored as L-P-I with 1 x 1 x 3 mm: canonical RAS flips every axis
    affine = np.diag([-1.0, -1.0, -3.0, 1.0])
    affine[:3, 3] = [50.0, 60.0, 30.0]
    data = np.ones((10, 12, 8), np.float32)
    data[0, 0, 0] = 2.0
    vol = Volume.from_array(data, affine)
    score = np.zeros(vol.shape, np.float32)
    canonical_blob = (slice(1, 3), slice(4, 6), slice(2, 5))
    score[canonical_blob] = 2.0
    labels, findings = find_findings(score, vol, 1.0)
    (f,) = findings
    assert f.voxel_count == 12 and f.volume_mm3 == pytest.approx(36.0)
    original = np.zeros(vol.shape, np.float32)
    original[canonical_blob] = 1
    stored = vol.to_original(original)
    np.testing.assert_allclose(f.centroid_ijk, np.argwhere(stored).mean(0))
    np.testing.assert_allclose(f.centroid_xyz_mm, affine[:3, :3] @ np.argwhere(stored).mean(0) + affine[:3, 3])
    ks = np.argwhere(stored)[:, 2]
    assert (f.first_slice, f.last_slice) == (ks.min(), ks.max())


def test_findings_say_whether_they_are_brighter_or_darker_than_their_tissue():
    """A finding's signal is the sign of the signed tissue map's mean over it: hyperintense, hypointense, or blank
    without a tissue map; it reaches the findings CSV row."""
    from napari_uad.export import findings_rows

    data = np.ones((20, 20, 10), np.float32)
    data[0, 0, 0] = 2.0
    vol = Volume.from_array(data, np.eye(4))
    score = np.zeros(vol.shape, np.float32)
    tissue = np.zeros(vol.shape, np.float32)
    score[2:5, 2:5, 2:5] = score[12:15, 12:15, 5:8] = 3.0
    tissue[2:5, 2:5, 2:5] = 4.0  # brighter than its tissue
    tissue[12:15, 12:15, 5:8] = -4.0  # darker ...
    tissue[12, 12, 5] = 30.0  # ... with one bright voxel, outweighed by the mean over the finding
    _, findings = find_findings(score, vol, 1.0, signed=tissue)
    by_place = {tuple(round(v) for v in f.centroid_ijk[:2]): f.signal for f in findings}
    assert by_place == {(3, 3): "hyperintense", (13, 13): "hypointense"}
    assert {f.signal for f in find_findings(score, vol, 1.0)[1]} == {""}
    rows = findings_rows(findings, scan_path="s.nii.gz", scan_sha256="0", model_name="m", model_version="1",
                         model_sha256="0", detection_map="combined", threshold=1.0, min_volume_mm3=0.0)
    assert sorted(r["signal"] for r in rows) == ["hyperintense", "hypointense"]


def test_edge_margin_keeps_findings_away_from_the_brain_surface():
    """interior() measures the margin in world mm (anisotropic voxels honoured); find_findings only labels
    voxels it allows, so a blob on the brain's surface goes and a deep one stays."""
    import numpy as np

    from napari_uad.findings import find_findings, interior
    from napari_uad.io import Volume

    brain = np.zeros((40, 40, 20), bool)
    brain[5:35, 5:35, 2:18] = True
    deep = interior(brain, (1.0, 1.0, 3.0), 4.0)
    assert deep[20, 20, 10] and not deep[7, 20, 10]  # 2 mm in-plane from the surface
    assert not deep[20, 20, 2] and deep[20, 20, 3]  # 3 mm and 6 mm (3 mm slices) from the outside
    assert interior(brain, (1, 1, 3), 0.0) is brain
    score = np.zeros(brain.shape, np.float32)
    score[5:8, 18:22, 8:11] = 5.0  # on the surface
    score[18:22, 18:22, 8:11] = 5.0  # deep
    volume = Volume.from_array(score, np.diag([1.0, 1.0, 3.0, 1.0]))
    labels, findings = find_findings(score, volume, 1.0)
    assert len(findings) == 2
    labels, findings = find_findings(score, volume, 1.0, allowed=deep)
    assert len(findings) == 1 and labels[20, 20, 9] == 1 and labels[6, 20, 9] == 0


def test_card_findings_use_the_cards_point_for_the_scans_contrast_and_its_edge_margin():
    """``card_findings`` is what `napari-uad score` finds without options: the card's detection map at the point
    of the scan's recognised contrast (the pooled one otherwise), no finding within the edge margin of the brain
    mask's surface."""
    from types import SimpleNamespace

    from napari_uad.findings import card_findings
    from napari_uad.model_card import ModelCard

    card = ModelCard(name="t", version="0")
    card.calibration = {"detection_map": "combined", "maps": {"combined": {"threshold": 2.0}}, "min_volume_mm3": 0.0,
                        "edge_margin_mm": 3.0,
                        "operating_point": {"by_contrast": {"bright_fluid": {"threshold": 4.0, "min_volume_mm3": 8.0},
                                                            "dark_fluid": {"threshold": 2.0, "min_volume_mm3": 0.0,
                                                                           "min_thickness_mm": 4.0}}}}
    brain = np.zeros((30, 30, 30), bool)
    brain[2:28, 2:28, 2:28] = True
    score = np.zeros(brain.shape, np.float32)
    score[10:13, 10:13, 10:13] = 3.0  # 27 mm^3, between the two thresholds
    score[18:20, 18:20, 18:20] = 5.0  # 8 mm^3, above both
    score[2:5, 14:17, 14:17] = 5.0  # on the brain's surface: inside the 3 mm edge margin
    volume = Volume.from_array(brain.astype(np.float32), np.eye(4))
    # dark fluid: the 2-voxel cube (2 mm thick) is thinner than its point's 4 mm; the 3-voxel one (4 mm) stays
    for contrast, threshold, expected in ((None, 2.0, 2), ("dark_fluid", 2.0, 1), ("bright_fluid", 4.0, 1)):
        result = SimpleNamespace(maps={"combined": score}, mask=brain, contrast=contrast, settings=contrast)
        labels, findings, used, min_volume = card_findings(result, volume, card)
        assert used == threshold and len(findings) == expected and labels.max() == expected
        assert not labels[2:5].any()
        assert min_volume == (8.0 if contrast == "bright_fluid" else 0.0)
