"""Synthetic heads from label maps: deterministic per seed, brain mask = the brain labels, contrast families
keep their tissue order. Uses a small hand-made label map (no ../shared needed) and, where present, a real one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_uad.io import write_image_file
from napari_uad.synth_labels import HOMOLOGUES, TISSUE_CLASSES, label_head, label_map_files

SHARED_MAPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "synthseg_label_maps"


@pytest.fixture(scope="module")
def toy_label_map(tmp_path_factory) -> Path:
    """Nested ellipsoids: scalp (511) > skull (507) > CSF (24) > cortex (3) > white matter (2) > ventricle (4)."""
    shape = (64, 72, 60)
    i, j, k = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt(i**2 + j**2 + k**2)
    labels = np.zeros(shape, np.float32)
    for radius, lab in ((0.95, 511), (0.85, 507), (0.75, 24), (0.7, 3), (0.55, 2), (0.2, 4)):
        labels[r < radius] = lab
    directory = tmp_path_factory.mktemp("maps")
    write_image_file(directory / "toy_seg.nii.gz", labels, np.diag([2.0, 2.0, 2.0, 1.0]))
    return directory / "toy_seg.nii.gz"


def test_deterministic_per_seed_and_different_across_seeds(toy_label_map):
    a, b, c = (label_head(toy_label_map, s) for s in (5, 5, 6))
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(a.brain, b.brain)
    assert a.params == b.params and not np.array_equal(a.data, c.data)


def test_brain_mask_is_the_brain_labels_and_the_head_keeps_skull(toy_label_map):
    head = label_head(toy_label_map, 1, family="t1", slice_thickness=1.0)
    labels = head.labels
    np.testing.assert_array_equal(head.brain, (labels > 0) & (labels < 500))
    assert (labels >= 500).sum() > 0.3 * head.brain.sum()  # skull and scalp are there
    assert head.data.shape == labels.shape == head.brain.shape and head.data.dtype == np.float32


@pytest.mark.parametrize("family, order", [("t1", ("csf", "gm", "wm")), ("t2", ("wm", "gm", "csf")),
                                           ("flair", ("csf", "wm", "gm"))])
def test_contrast_families_keep_tissue_order(toy_label_map, family, order):
    head = label_head(toy_label_map, 2, family=family, slice_thickness=1.0)
    means = {name: float(np.median(head.data[np.isin(head.labels, labs)])) for name, labs in TISSUE_CLASSES.items()
             if np.isin(head.labels, labs).any()}
    assert [means[n] for n in order] == sorted(means[n] for n in order)


def test_unknown_family_is_refused(toy_label_map):
    with pytest.raises(ValueError, match="unknown contrast family"):
        label_head(toy_label_map, 0, family="dwi")


@pytest.mark.parametrize("family", ["t1", "t2", "flair", "pd"])
def test_both_sides_of_a_brain_and_all_its_csf_share_one_intensity(family):
    """A real brain's left and right putamen (cortex, white matter, ...) have one intensity, and its ventricles
    and sulci hold one fluid; drawing them apart would make every normal head asymmetric (and every asymmetry
    map fire on it) and its ventricles outliers of their own tissue."""
    from napari_uad.synth_labels import _label_means

    present = np.array([0, *sorted(set(HOMOLOGUES) | set(HOMOLOGUES.values()) | set(TISSUE_CLASSES["csf"])), 16,
                        507], np.int16)
    means, _ = _label_means(present, family, np.random.default_rng(3))
    for right, left in HOMOLOGUES.items():
        assert means[right] == means[left]
    assert len({means[lab] for lab in TISSUE_CLASSES["csf"]}) == 1
    assert len({means[left] for left in HOMOLOGUES.values()}) > 10  # structures still differ from each other
    random_means, _ = _label_means(present, "random", np.random.default_rng(3))
    assert any(random_means[r] != random_means[le] for r, le in HOMOLOGUES.items())  # full randomisation stays


@pytest.mark.skipif(not SHARED_MAPS.is_dir(), reason="../shared/data not present")
def test_real_label_map_gives_an_adult_brain():
    head = label_head(label_map_files(SHARED_MAPS)[0], 0)
    assert 1000 < head.brain.sum() / 1000 < 2000  # 1 mm voxels: ml


def test_training_slices_of_a_head_use_its_brain_mask_and_the_scoring_steps(toy_label_map):
    """The head's known brain mask replaces brain extraction; bias correction, normalisation and alignment run
    as for a scan (one code path)."""
    from napari_uad.preprocessing import PreprocessingConfig
    from napari_uad.train import label_head_slices

    config = PreprocessingConfig(bias_correction=True)
    x = label_head_slices((str(toy_label_map), 3), config, 32)
    assert x.shape[1:] == (1, 32, 32) and x.dtype.is_floating_point and len(x) > 10
    assert float(x.min()) == config.background  # background outside the brain, not the skull's intensity


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_MAPS.is_dir(), reason="../shared/data not present")
def test_train_cli_on_label_maps_holds_out_validation_maps(tmp_path, monkeypatch):
    """train --label-maps: training heads come from the first maps, validation and calibration heads (through
    brain extraction, like a scan) from the held-out last maps only."""
    import json

    from napari_uad import cli

    maps = tmp_path / "maps"
    maps.mkdir()
    for f in label_map_files(SHARED_MAPS)[:3]:
        (maps / f.name).symlink_to(f)
    out = tmp_path / "model"
    args = ["train", "--label-maps", str(maps), "--val-maps", "1", "--out", str(out), "--n-volumes", "3",
            "--val-fraction", "0.34", "--epochs", "1", "--steps-per-epoch", "2", "--input-size", "64",
            "--channels", "8,16", "--latent", "8", "--calibration-volumes", "1", "--device", "cpu",
            "--batch-size", "8", "--workers", "1"]
    assert cli.main(args) == 0
    card = json.loads((out / "card.json").read_text(encoding="utf-8"))
    names = sorted(f.name for f in maps.iterdir())
    assert card["training"]["train_label_maps"] == names[:2] and card["training"]["val_label_maps"] == names[2:]
    assert names[2] in card["calibration"]["validation_set"] and names[0] not in card["calibration"]["validation_set"]
    assert card["preprocessing"]["template"] == "mni152-2009" and card["preprocessing"]["skull_strip"] is True


@pytest.mark.parametrize("kind", ["ms", "infarct", "haemorrhage", "tumour"])
def test_lesions_are_deterministic_inside_the_brain_and_change_only_their_region(toy_label_map, kind):
    """The ground truth is the lesion-labelled voxels, inside the brain; the head is the same as the healthy one
    of the same seed except where the lesion (blurred by partial volume) is, or, for a tumour, its mass effect."""
    from scipy import ndimage

    healthy = label_head(toy_label_map, 4, family="flair", slice_thickness=1.0)
    a = label_head(toy_label_map, 4, family="flair", slice_thickness=1.0, lesion=kind)
    b = label_head(toy_label_map, 4, family="flair", slice_thickness=1.0, lesion=kind)
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(a.lesion, b.lesion)
    assert a.params["lesion"] == kind and a.lesion.any() and not (a.lesion & ~a.brain).any()
    np.testing.assert_array_equal(a.lesion, a.labels >= 900)
    reach = 6 if kind != "tumour" else int(2.5 * a.params["radius_mm"]) + 6  # mass effect up to 2.5 radii
    region = ndimage.binary_dilation(a.lesion, iterations=reach)
    np.testing.assert_array_equal(a.data[~region], healthy.data[~region])
    assert np.abs(a.data[a.lesion] - healthy.data[a.lesion]).mean() > 0.05 * healthy.data[healthy.brain].mean()


def test_flair_lesions_are_bright_and_t1_haemorrhage_is_bright(toy_label_map):
    for kind, family in (("ms", "flair"), ("haemorrhage", "t1")):
        head = label_head(toy_label_map, 8, family=family, slice_thickness=1.0, lesion=kind)
        wm = head.labels == 2
        assert np.median(head.data[head.lesion]) > np.median(head.data[wm]), (kind, family)


def test_synth_cli_writes_label_map_heads_with_lesion_masks(toy_label_map, tmp_path):
    """synth --label-maps: whole heads from the (last --val-maps) label maps, masks = the inserted lesions,
    normal heads with an empty mask, deterministic per seed; bad kinds are one clear error."""
    import json

    from napari_uad import cli
    from napari_uad.io import read_volume

    args = ["synth", "--label-maps", str(toy_label_map.parent), "--val-maps", "1", "--n", "3",
            "--normal-fraction", "0.34", "--anomalies", "tumour,ms", "--seed", "40"]
    assert cli.main([*args, "--out", str(tmp_path / "a")]) == 0
    assert cli.main([*args, "--out", str(tmp_path / "b")]) == 0
    cases = json.loads((tmp_path / "a" / "synth.json").read_text())["cases"]
    assert [c["stem"] for c in cases] == ["head_000040", "head_000041", "head_000042"]
    for case in cases:
        stem = case["stem"]
        mask = read_volume(tmp_path / "a" / "masks" / f"{stem}.nii.gz", allow_constant=True).data
        again = read_volume(tmp_path / "b" / "scans" / f"{stem}.nii.gz").data
        np.testing.assert_array_equal(read_volume(tmp_path / "a" / "scans" / f"{stem}.nii.gz").data, again)
        head = label_head(toy_label_map, case["seed"], lesion=None if case["normal"] else case["lesion"])
        np.testing.assert_array_equal(mask > 0, head.lesion)
        assert (mask.any() != case["normal"]) and case["label_map"] == toy_label_map.name
    assert cli.main(["synth", "--label-maps", str(toy_label_map.parent), "--n", "1", "--anomalies", "sphere",
                     "--out", str(tmp_path / "c")]) == 2
    # --contrast clinical: the scanner-like families in turn, never the training-only "random"
    assert cli.main([*args, "--contrast", "clinical", "--out", str(tmp_path / "d")]) == 0
    cases = json.loads((tmp_path / "d" / "synth.json").read_text())["cases"]
    assert [c["contrast_family"] for c in cases] == ["t1", "t2", "flair"]
    assert cli.main([*args, "--contrast", "t1,ct", "--out", str(tmp_path / "e")]) == 2
    assert not (tmp_path / "e").exists()
    # --normal-variants: the heads get the rim and choroid plexus, recorded per case; the masks stay the lesions
    assert cli.main([*args, "--normal-variants", "--out", str(tmp_path / "f")]) == 0
    cases = json.loads((tmp_path / "f" / "synth.json").read_text())["cases"]
    assert all(c["normal_variants"] is not None for c in cases)
    head = label_head(toy_label_map, cases[0]["seed"], lesion=None if cases[0]["normal"] else cases[0]["lesion"],
                      normal_variants=True)
    stem = cases[0]["stem"]
    np.testing.assert_array_equal(read_volume(tmp_path / "f" / "masks" / f"{stem}.nii.gz",
                                              allow_constant=True).data > 0, head.lesion)


def test_calibration_heads_have_clinical_contrasts_spread_over_the_maps(toy_label_map):
    """Calibration (thresholds, out-of-distribution reference) is for real scans: its heads take the clinical
    contrast families in turn, never the training-only "random" one, and each label map gets several."""
    from napari_uad.synth_labels import CLINICAL_FAMILIES
    from napari_uad.train import _label_items, label_head_volume

    files = [Path(f"map{k}.nii.gz") for k in range(4)]
    items = _label_items(files, range(100_000, 100_008), CLINICAL_FAMILIES)
    assert {family for _, _, family, _ in items} == set(CLINICAL_FAMILIES)
    for k in range(4):
        assert len({family for path, _, family, _ in items if path == str(files[k])}) == 2
    volume, _ = label_head_volume((str(toy_label_map), 3, "flair"))
    assert np.array_equal(volume.data, label_head(toy_label_map, 3, family="flair").data)
    # calibrate --normal-variants: the items carry the switch to the heads
    items = _label_items([toy_label_map], [3], ("flair",), normal_variants=True)
    volume, _ = label_head_volume(items[0])
    assert np.array_equal(volume.data, label_head(toy_label_map, 3, family="flair", normal_variants=True).data)
    assert not np.array_equal(volume.data, label_head(toy_label_map, 3, family="flair").data)


def test_normal_variants_change_only_their_voxels_and_are_not_lesions(toy_label_map):
    """The periventricular rim (78/79) takes white matter along the ventricle, the choroid plexus (31/63) lies
    inside the ventricle; the rest of the head is what it is without them (their own random stream), and they
    are normal anatomy: inside the brain, not in the lesion mask."""
    from scipy import ndimage

    from napari_uad.synth_variants import CHOROID_LABELS, RIM_LABELS, VARIANT_LABELS

    plain = label_head(toy_label_map, 9, family="flair", slice_thickness=1.0, normal_variants=False)
    head = label_head(toy_label_map, 9, family="flair", slice_thickness=1.0, normal_variants=True)
    changed = plain.labels != head.labels
    assert np.array_equal(changed, np.isin(head.labels, VARIANT_LABELS))
    rim, plexus = np.isin(head.labels, RIM_LABELS), np.isin(head.labels, CHOROID_LABELS)
    assert head.params["normal_variants"]["periventricular_rim"] == rim.any()
    assert plexus.any() and np.isin(plain.labels[plexus], (4, 43)).all()
    if rim.any():
        assert np.isin(plain.labels[rim], (2, 41)).all()
        lining, cap = head.params["normal_variants"]["rim_78_mm"]
        distance = ndimage.distance_transform_edt(plain.labels != 4, sampling=2.0)  # toy map: 2 mm voxels
        assert distance[rim].max() <= (lining + cap) * 1.4 + 1e-6
    reach = ndimage.binary_dilation(changed, np.ones((3, 3, 3), bool), iterations=6)  # blur: sigma <= 1.2 voxels
    np.testing.assert_array_equal(head.data[~reach], plain.data[~reach])
    np.testing.assert_array_equal(head.brain, plain.brain)
    assert not head.lesion.any()


def test_normal_variants_look_as_on_a_scanner(toy_label_map):
    """FLAIR: the rim a little brighter than white matter, the choroid plexus bright in dark CSF; T1: the rim a
    little darker than white matter. Most heads have a rim, some none."""
    from napari_uad.synth_variants import CHOROID_LABELS, RIM_LABELS

    heads = (label_head(toy_label_map, s, family="flair", slice_thickness=1.0, normal_variants=True)
             for s in range(12))
    with_rim = [head.params["normal_variants"]["periventricular_rim"] for head in heads]
    assert 6 <= sum(with_rim) < 12
    seed = with_rim.index(True)
    flair = label_head(toy_label_map, seed, family="flair", slice_thickness=1.0, normal_variants=True)
    t1 = label_head(toy_label_map, seed, family="t1", slice_thickness=1.0, normal_variants=True)
    for head, brighter in ((flair, True), (t1, False)):
        rim = np.median(head.data[np.isin(head.labels, RIM_LABELS)])
        wm = np.median(head.data[head.labels == 2])
        assert (rim > wm) == brighter
    csf = np.median(flair.data[flair.labels == 4])
    assert np.median(flair.data[np.isin(flair.labels, CHOROID_LABELS)]) > 2 * csf


@pytest.mark.skipif(not SHARED_MAPS.is_dir(), reason="../shared/data not present")
def test_real_head_has_a_choroid_plexus_in_each_atrium():
    from napari_uad.synth_variants import CHOROID_LABELS

    plain = label_head(label_map_files(SHARED_MAPS)[-1], 3, family="flair", slice_thickness=1.0,
                       normal_variants=False)
    head = label_head(label_map_files(SHARED_MAPS)[-1], 3, family="flair", slice_thickness=1.0,
                      normal_variants=True)
    for label, ventricle in zip(CHOROID_LABELS, (4, 43)):
        plexus = head.labels == label
        assert 20 < plexus.sum() < 2000  # a glomus of 3-6.5 mm radius, 1 mm voxels
        assert (plain.labels[plexus] == ventricle).all()
