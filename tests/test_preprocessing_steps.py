"""The preprocessing pipeline on brains: skull-stripped detection, brain extraction, geometry round trips,
switching steps off, one code path for training and scoring, and the out-of-distribution guard."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from napari_uad.io import Volume, read_volume
from napari_uad.preprocessing import (
    BrainExtractionError,
    PipelineOptions,
    PreprocessingConfig,
    brain_mask,
    check_brain_mask,
    prepare_volume,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
BRAIN_MODEL = PreprocessingConfig(skull_strip=True, bias_correction=True, template="mni152-2009")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


@pytest.fixture(scope="module")
def brain() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A synthetic T1-like brain at 2 mm (skull-stripped: zero background), its mask and affine (RAS)."""
    from napari_uad.synth import case_volume, healthy_volume

    v = case_volume(healthy_volume(3, contrast="t1"))
    data = v.data[::2, ::2, ::2].copy()
    affine = v.affine @ np.diag([2.0, 2.0, 2.0, 1.0])
    return data, data > 0, affine


def make_head(data: np.ndarray, mask: np.ndarray, seed: int = 0) -> np.ndarray:
    """The brain wrapped in CSF, a dark skull and bright scalp (voxel shells of 2 mm), noise around."""
    rng = np.random.default_rng(seed)
    pad = 12
    d = np.pad(data, pad)
    m = np.pad(mask, pad)
    dist = ndimage.distance_transform_edt(~m)
    level = float(np.median(data[mask]))
    head = d.copy()
    head[(dist > 0) & (dist <= 1.5)] = 0.3 * level  # CSF
    head[(dist > 1.5) & (dist <= 4)] = 0.05 * level  # skull
    head[(dist > 4) & (dist <= 7)] = 1.3 * level  # scalp (fat)
    noise = np.abs(rng.normal(0, 0.03 * level, head.shape))
    return (head + noise).astype(np.float32)


def test_stripped_brain_is_recognised_and_kept(brain):
    data, mask, affine = brain
    found = brain_mask(data, affine, mode="auto")
    assert found.skull_stripped is True and found.method == "foreground"
    assert found.coverage >= 0.85
    np.testing.assert_array_equal(found.mask, ndimage.binary_fill_holes(mask) | found.mask)
    off = brain_mask(data, affine, mode="off")
    assert off.method == "foreground" and off.skull_stripped is None


def test_synthetic_head_is_brain_extracted(brain):
    data, mask, affine = brain
    head = make_head(data, mask)
    shifted = affine.copy()
    shifted[:3, 3] -= affine[:3, :3] @ [12, 12, 12]
    found = brain_mask(head, shifted, mode="auto")
    assert found.skull_stripped is False and found.method == "deepbet"
    truth = np.pad(mask, 12)
    assert dice(found.mask, truth) > 0.85
    assert not (found.mask & (ndimage.distance_transform_edt(~truth) > 4)).any()  # no scalp kept


def test_mask_is_never_silently_empty_or_everything():
    with pytest.raises(BrainExtractionError, match="empty"):
        check_brain_mask(np.zeros((8, 8, 8), bool))
    with pytest.raises(BrainExtractionError, match="whole image"):
        check_brain_mask(np.ones((8, 8, 8), bool))
    blank = np.zeros((70, 70, 70), np.float32)
    blank[30:33, 30:33, 30:33] = 1.0  # a few voxels, no head: deepbet finds no brain
    with pytest.raises(BrainExtractionError, match="empty"):
        brain_mask(blank, np.eye(4), mode="on")


GEOMETRIES = {
    "RAS": np.eye(3),
    "LPS": np.diag([-1.0, -1.0, 1.0]),
    "permuted": np.array([[0.0, 1, 0], [0, 0, 1], [1, 0, 0]]),
}


def _oblique(degrees: float) -> np.ndarray:
    t = np.deg2rad(degrees)
    return np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])


@pytest.mark.parametrize("name", ["RAS", "LPS", "permuted", "oblique", "anisotropic"])
def test_alignment_round_trips_onto_the_scans_own_grid(brain, name):
    """Brain and intensities go to the template grid and come back onto the scan's voxels unchanged (up to
    interpolation), whatever the file's orientation, voxel size or obliquity."""
    data, mask, affine = brain
    if name == "anisotropic":  # 2 x 2 x 6 mm: thick slices
        data, mask = data[:, :, ::3], mask[:, :, ::3]
        affine = affine @ np.diag([1.0, 1.0, 3.0, 1.0])
    ras = affine.copy()
    rot = _oblique(12.0) if name == "oblique" else GEOMETRIES.get(name, np.eye(3))
    if name in ("LPS", "permuted"):  # store the same voxels in another array order
        order = {"LPS": (0, 1, 2), "permuted": (2, 0, 1)}[name]
        stored = np.transpose(data, np.argsort(order)) if name == "permuted" else data[::-1, ::-1, :]
        vol = Volume.from_array(stored, _reorder_affine(ras, data.shape, name))
    else:
        a = ras.copy()
        a[:3, :3] = rot @ ras[:3, :3]
        vol = Volume.from_array(data, a)
    config = PreprocessingConfig(template="mni152-2009")
    prepared = prepare_volume(vol, config, 64, options=PipelineOptions(skull_strip="off"))
    assert prepared.aligned and prepared.normalised.shape == prepared.mask.shape
    back = prepared.to_native(np.stack([prepared.mask.astype(np.float32), prepared.normalised]))
    native_brain = prepared.brain
    assert dice(back[0] > 0.5, native_brain) > 0.95
    inner = ndimage.binary_erosion(native_brain, iterations=2)
    direct = prepare_volume(vol, PreprocessingConfig(), 64, options=PipelineOptions(skull_strip="off")).normalised
    r = np.corrcoef(back[1][inner], direct[inner])[0, 1]
    assert r > (0.8 if name == "anisotropic" else 0.9)


def _reorder_affine(ras: np.ndarray, shape, name: str) -> np.ndarray:
    """Affine of the re-stored array (see the test) so that it shows the same anatomy in world RAS."""
    if name == "LPS":
        flip = np.eye(4)
        flip[0, 0] = flip[1, 1] = -1
        flip[0, 3], flip[1, 3] = shape[0] - 1, shape[1] - 1
        return ras @ flip
    perm = np.zeros((4, 4))
    perm[3, 3] = 1
    # stored index (a, b, c) = original (j?, ...): stored = transpose(data, argsort((2, 0, 1))) -> axes (1, 2, 0)
    axes = np.argsort((2, 0, 1))
    for stored_axis, original_axis in enumerate(axes):
        perm[original_axis, stored_axis] = 1
    return ras @ perm


def test_every_step_can_be_switched_off(brain):
    data, mask, affine = brain
    vol = Volume.from_array(data, affine)
    off = PipelineOptions(skull_strip="off", bias_correction=False, alignment=False, normalisation=False)
    prepared = prepare_volume(vol, BRAIN_MODEL, 64, options=off)
    steps = {s["step"]: s for s in prepared.steps}
    assert list(steps) == ["brain_extraction", "bias_correction", "normalisation", "alignment", "slicing"]
    assert steps["brain_extraction"]["settings"]["method"] == "foreground"
    assert steps["bias_correction"]["skipped"] == "switched off"
    assert steps["alignment"]["skipped"] == "switched off"
    assert steps["normalisation"]["settings"]["method"] == "none (clip only)"
    assert not prepared.aligned
    np.testing.assert_array_equal(prepared.normalised[mask], np.clip(data[mask], -3, 3))
    on = prepare_volume(vol, BRAIN_MODEL, 64, options=PipelineOptions(skull_strip="off"))
    assert on.aligned and all("skipped" not in s for s in on.steps)
    assert all(s["seconds"] >= 0 for s in on.steps)


def test_training_and_scoring_run_the_same_steps(brain, tiny_model_dir, monkeypatch):
    """train.model_slices and Scorer.score both go through preprocessing.steps (one code path)."""
    import napari_uad.preprocessing.steps as steps
    from napari_uad.model_card import load_model
    from napari_uad.scoring import Scorer
    from napari_uad.train import model_slices

    calls = []
    real = steps.n4_correct
    monkeypatch.setattr(steps, "n4_correct", lambda *a, **k: calls.append("n4") or real(*a, **k))
    data, mask, affine = brain
    vol = Volume.from_array(data, affine)
    config = PreprocessingConfig(bias_correction=True, template="mni152-2009")
    x = model_slices(vol, config, 32, options=PipelineOptions(skull_strip="off"))
    model, card = load_model(tiny_model_dir)
    card.preprocessing = config
    result = Scorer(model, card, device="cpu", options=PipelineOptions(skull_strip="off")).score(vol, ("residual",))
    assert calls == ["n4", "n4"]
    assert x.shape[1:] == (1, 32, 32) and result.maps["residual"].shape == vol.shape
    assert [s["step"] for s in result.preprocessing][3] == "alignment" and "skipped" not in result.preprocessing[3]


# -- real scans (skip where ../shared is absent) -------------------------------------------------------------
@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data not present")
@pytest.mark.parametrize("name, stripped", [("real_heads/t1_head_with_skull.nii.gz", False),
                                            ("real_heads/flair_brain.nii.gz", True)])
def test_real_scans_skull_stripped_detection(name, stripped):
    vol = read_volume(SHARED / name)
    found = brain_mask(vol.data, vol.affine, mode="auto")
    assert found.skull_stripped is stripped
    brain_ml = found.mask.sum() * vol.voxel_volume_mm3 / 1000
    assert 800 < brain_ml < 1900


def test_alignment_is_deterministic(brain):
    """Same scan, same transform: registration sampling is seeded (results never depend on the run)."""
    from napari_uad.preprocessing.alignment import register_to_template
    from napari_uad.preprocessing.template import load_atlas

    data, mask, affine = brain
    atlas = load_atlas()
    shifted = affine.copy()
    shifted[:3, 3] += [4.0, -3.0, 2.0]
    first = register_to_template(mask, shifted, atlas["brain"] > 0.5, atlas["affine"])
    second = register_to_template(mask, shifted, atlas["brain"] > 0.5, atlas["affine"])
    np.testing.assert_array_equal(first, second)
    # the shift of the scan is found again (the brain was made in template space)
    np.testing.assert_allclose(first[:3, 3] - [4.0, -3.0, 2.0], register_to_template(
        mask, affine, atlas["brain"] > 0.5, atlas["affine"])[:3, 3], atol=1.0)


def test_tissue_map_flags_a_bright_lesion_in_an_aligned_brain(brain, tiny_model_dir):
    """Through the scorer: the template's tissue priors come onto the scan's grid and a bright blob in white
    matter stands out of its tissue's intensity distribution; the rest of the brain stays low."""
    from napari_uad.model_card import load_model
    from napari_uad.scoring import Scorer

    data, mask, affine = brain
    data = data.copy()
    i, j, k = np.indices(data.shape)
    centre = np.array(np.nonzero(mask)).mean(axis=1).astype(int) + [6, 0, 4]  # deep white matter
    blob = ((i - centre[0]) ** 2 + (j - centre[1]) ** 2 + (k - centre[2]) ** 2 <= 9) & mask
    data[blob] = 2.5 * np.percentile(data[mask], 99)
    model, card = load_model(tiny_model_dir)
    card.preprocessing = PreprocessingConfig(template="mni152-2009")
    result = Scorer(model, card, device="cpu", options=PipelineOptions(skull_strip="off")).score(
        Volume.from_array(data, affine), ("tissue",))
    tissue = result.maps["tissue"]
    assert np.median(tissue[blob]) > 10
    assert np.quantile(np.abs(tissue[mask & ~blob]), 0.99) < np.median(tissue[blob]) / 2


def test_card_tissue_settings_reach_the_tissue_map(brain, tiny_model_dir, tmp_path):
    """The card's scoring block sets the tissue map (prior smoothing in mm over the scan's spacing, floor, class
    peak, deformation of the priors, mixtures only at boundaries); they survive saving the card, and a card
    without them keeps the first definition."""
    import dataclasses

    from napari_uad.mask import background_holes
    from napari_uad.model_card import ScoringConfig, load_model, save_model
    from napari_uad.scoring import Scorer
    from napari_uad.tissue import TissueSettings, tissue_outlier_map

    data, mask, affine = brain
    model, card = load_model(tiny_model_dir)
    card.preprocessing = PreprocessingConfig(template="mni152-2009")
    assert ScoringConfig().tissue() == TissueSettings()  # an old card: the map's first definition
    card.scoring = dataclasses.replace(card.scoring, tissue_prior_sigma_mm=5.0, tissue_prior_floor=0.05,
                                       tissue_class_peak=True, tissue_partial_volume=True, tissue_deform_mm=3.0,
                                       tissue_pv_boundary_mm=2.0)
    save_model(model, card, tmp_path / "m")
    model, card = load_model(tmp_path / "m")
    assert card.scoring.tissue() == TissueSettings(5.0, 0.05, True, True, deform_mm=3.0, pv_boundary_mm=2.0)
    options = PipelineOptions(skull_strip="off")
    volume = Volume.from_array(data, affine)
    got = Scorer(model, card, device="cpu", options=options).score(volume, ("tissue",)).maps["tissue"]
    prepared = prepare_volume(volume, card.preprocessing, card.input_size, options=options)
    # without skull stripping the "brain" is the whole grid; its background voxels hold no tissue and are left out
    tissue_brain = prepared.brain & ~background_holes(volume.data, prepared.brain)
    assert tissue_brain.sum() < prepared.brain.sum()
    expected = tissue_outlier_map(prepared.standardised, tissue_brain, prepared.tissue_priors(), (2.0, 2.0, 2.0),
                                  TissueSettings(5.0, 0.05, True, True, deform_mm=3.0, pv_boundary_mm=2.0))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    first = tissue_outlier_map(prepared.standardised, tissue_brain, prepared.tissue_priors())
    assert np.abs(got - first).max() > 0.1


def test_card_contrast_rule_decides_the_recognised_contrast(brain, tiny_model_dir, tmp_path, monkeypatch):
    """``scoring.tissue_contrast_rule`` survives saving the card and is the rule the scorer reads the scan's
    tissue fit with (so it decides which per-contrast settings a scan gets); an old card reads by the first rule."""
    import dataclasses

    from napari_uad import scoring
    from napari_uad.model_card import ScoringConfig, load_model, save_model
    from napari_uad.scoring import Scorer
    from napari_uad.tissue import scan_contrast

    data, mask, affine = brain
    model, card = load_model(tiny_model_dir)
    card.preprocessing = PreprocessingConfig(template="mni152-2009")
    rules_used = []
    monkeypatch.setattr(scoring, "scan_contrast", lambda means, rule: rules_used.append(rule) or
                        scan_contrast(means, rule))
    options = PipelineOptions(skull_strip="off")
    for rule in ("fluid_over_white", "fluid_brightest"):
        card.scoring = dataclasses.replace(card.scoring, tissue_contrast_rule=rule)
        save_model(model, card, tmp_path / rule)
        model, card = load_model(tmp_path / rule)
        assert card.scoring.tissue().contrast_rule == rule
        result = Scorer(model, card, device="cpu", options=options).score(Volume.from_array(data, affine),
                                                                          ("tissue",))
        assert rules_used[-1] == rule and result.contrast == scan_contrast(np.array(result.tissue_means), rule)
    assert rules_used == ["fluid_over_white", "fluid_brightest"]
    old_card = card.scoring.to_dict()
    del old_card["tissue_contrast_rule"]  # a card written before the setting existed
    assert ScoringConfig(**old_card).tissue().contrast_rule == "fluid_brightest"


def _grid_variant(data: np.ndarray, affine: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """The same brain stored another way: LPS (i, j reversed), permuted axes, oblique (rotated 20 degrees about
    the superior axis) or anisotropic (every other axial slice: 2 x 2 x 4 mm)."""
    a = affine.copy()
    if kind == "LPS":
        flip = np.eye(4)
        flip[:2, :2] = -np.eye(2)
        flip[:2, 3] = np.array(data.shape[:2]) - 1
        return data[::-1, ::-1].copy(), a @ flip
    if kind == "permuted":  # array axes (k, i, j)
        return np.ascontiguousarray(data.transpose(2, 0, 1)), a[:, [2, 0, 1, 3]]
    if kind == "oblique":
        c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
        rot = np.eye(4)
        rot[:2, :2] = [[c, -s], [s, c]]
        return data, rot @ a
    if kind == "aniso":
        return data[:, :, ::2].copy(), a @ np.diag([1.0, 1.0, 2.0, 1.0])
    return data, a


@pytest.mark.parametrize("kind", ["RAS", "LPS", "permuted", "oblique", "aniso"])
def test_asymmetry_map_flags_a_one_sided_lesion_in_any_grid(brain, tiny_model_dir, kind):
    """Through the scorer: the mirror comes from the alignment to the (symmetric) template, so in every storage
    of the scan a bright blob in one hemisphere is the map's top and its healthy mirror reads darker; the map
    lands on the scan's own grid."""
    from napari_uad.model_card import load_model
    from napari_uad.scoring import Scorer

    data, mask, affine = brain
    data = data.copy()
    i, j, k = np.indices(data.shape)
    centre = np.array(np.nonzero(mask)).mean(axis=1).astype(int) + [9, 0, 4]  # right hemisphere
    blob = ((i - centre[0]) ** 2 + (j - centre[1]) ** 2 + (k - centre[2]) ** 2 <= 9) & mask
    data[blob] = 2.5 * np.percentile(data[mask], 99)
    stored, stored_affine = _grid_variant(data, affine, kind)
    blob_stored = _grid_variant(blob, affine, kind)[0]
    model, card = load_model(tiny_model_dir)
    card.preprocessing = PreprocessingConfig(template="mni152-2009")
    volume = Volume.from_array(stored, stored_affine)
    result = Scorer(model, card, device="cpu", options=PipelineOptions(skull_strip="off")).score(volume, ("asymmetry",))
    a = volume.to_original(result.maps["asymmetry"])
    assert a.shape == stored.shape
    assert np.median(a[blob_stored]) > 2.5
    assert blob_stored[np.unravel_index(np.argmax(a), a.shape)]
    assert np.quantile(a[(volume.to_original(result.mask) > 0) & ~blob_stored], 0.99) < np.median(a[blob_stored])
    assert a.min() < -2.5  # the blob's healthy mirror: darker than its other side


def test_the_cards_asymmetry_smoothing_reaches_the_map(brain, tiny_model_dir):
    """The asymmetry map smooths the scan by the card's ``scoring.asymmetry_sigma_mm`` (default: the map's first
    2 mm): the same scan scored under two settings gives two different maps, each reproducible; a setting outside
    (0, 20] mm is refused with the field named."""
    import dataclasses

    from napari_uad.model_card import ScoringConfig, load_model
    from napari_uad.scoring import Scorer

    data, _, affine = brain
    volume = Volume.from_array(data, affine)
    model, card = load_model(tiny_model_dir)
    card.preprocessing = PreprocessingConfig(template="mni152-2009")
    assert card.scoring.asymmetry_sigma_mm == 2.0
    maps = {}
    for sigma in (2.0, 6.0, 6.0):
        card.scoring = dataclasses.replace(card.scoring, asymmetry_sigma_mm=sigma)
        result = Scorer(model, card, device="cpu", options=PipelineOptions(skull_strip="off")).score(volume,
                                                                                                  ("asymmetry",))
        maps.setdefault(sigma, []).append(result.maps["asymmetry"])
    assert np.array_equal(*maps[6.0])
    assert np.abs(maps[6.0][0] - maps[2.0][0]).max() > 0.1
    with pytest.raises(ValueError, match="asymmetry_sigma_mm"):
        ScoringConfig(asymmetry_sigma_mm=0.0)


@pytest.mark.parametrize("family, contrast", [("t1", "dark_fluid"), ("flair", "dark_fluid"),
                                             ("t2", "bright_fluid")])
def test_score_uses_the_cards_operating_point_for_the_scans_recognised_contrast(family, contrast, tiny_model_dir,
                                                                                 tmp_path):
    """A synthetic brain of each contrast is recognised from its own tissue fit, and `napari-uad score`'s
    findings use the card's operating point for that contrast (the pooled one where the card has none); a
    threshold given on the command line is kept whatever the contrast. The report says which was used."""
    import json

    from napari_uad.io import write_like
    from napari_uad.model_card import load_model
    from napari_uad.pipeline import ScoreJob
    from napari_uad.scoring import Scorer
    from napari_uad.synth import case_volume, healthy_volume

    v = case_volume(healthy_volume(5, contrast=family))
    volume = Volume.from_array(v.data[::2, ::2, ::2].copy(), v.affine @ np.diag([2.0, 2.0, 2.0, 1.0]))
    path = write_like(volume, volume.data, tmp_path / f"{contrast}.nii.gz")
    model, card = load_model(tiny_model_dir)
    card.preprocessing = PreprocessingConfig(template="mni152-2009")
    own = {"bright_fluid": {"threshold": 7.0, "min_volume_mm3": 50.0, "min_thickness_mm": 3.0}}
    card.calibration = {"detection_map": "tissue", "min_volume_mm3": 10.0, "maps": {"tissue": {"threshold": 5.0}},
                        "operating_point": {"threshold": 5.0, "min_volume_mm3": 10.0, "by_contrast": own}}
    scorer = Scorer(model, card, device="cpu", options=PipelineOptions(skull_strip="off"))
    reports = []
    for threshold in (None, 4.0):
        job = ScoreJob.from_card(scorer, ("tissue",), threshold=threshold)
        job.run(path, tmp_path, f"{contrast}-{threshold}")
        reports.append(json.loads((tmp_path / f"{contrast}-{threshold}.json").read_text()))
    card_point, given = reports
    expected = own.get(contrast, {"threshold": 5.0, "min_volume_mm3": 10.0})
    assert card_point["contrast"] == given["contrast"] == contrast
    assert (card_point["threshold"], card_point["min_volume_mm3"], card_point["min_thickness_mm"]) == (
        expected["threshold"], expected["min_volume_mm3"], expected.get("min_thickness_mm", 0.0))
    source = "card, this scan's contrast" if contrast in own else "card, pooled"
    assert card_point["operating_point"] == {"threshold": source, "min_volume_mm3": source, "min_thickness_mm": source}
    assert given["threshold"] == 4.0 and given["operating_point"] == {"threshold": "given", "min_volume_mm3": source,
                                                                      "min_thickness_mm": source}
    assert given["min_volume_mm3"] == expected["min_volume_mm3"]


def test_scorer_combined_map_takes_the_cards_dark_channel(brain, tiny_model_dir):
    """A card with a dark channel for the scan's recognised contrast: the scorer's combined map is the voxelwise
    larger of the bright channel's mean surprise (tissue, asymmetry) and the dark channel's (the two maps negated,
    each against its own table), as computed by hand from the scorer's own tissue and asymmetry maps; where the
    scan is darker than its tissue the dark channel is what scores; with the card's ``dark_opening_mm`` the dark
    channel is opened by that ball first (``postprocess.open_map``) and the thin dark voxels lose their values."""
    from napari_uad.model_card import load_model
    from napari_uad.postprocess import open_map
    from napari_uad.scoring import Scorer

    data, mask, affine = brain
    model, card = load_model(tiny_model_dir)
    card.preprocessing = PreprocessingConfig(template="mni152-2009")
    levels = [0.0, 0.5, 0.9, 0.99, 0.999, 1.0]
    tables = {"tissue": [-20.0, 0.0, 1.0, 2.0, 3.0, 20.0], "-tissue": [-20.0, 0.0, 0.5, 1.0, 1.5, 20.0],
              "asymmetry": [-5.0, 0.0, 0.2, 0.4, 0.6, 5.0], "-asymmetry": [-5.0, 0.0, 0.3, 0.5, 0.7, 5.0]}
    channel = ["-tissue", "-asymmetry"]
    card.calibration = {"levels": levels, "maps": {m: {"quantiles": q} for m, q in tables.items()},
                        "combined": {"components": ["tissue", "asymmetry"],
                                     "dark_components_by_contrast": {"dark_fluid": channel, "bright_fluid": channel}}}
    volume = Volume.from_array(data, affine)
    result = Scorer(model, card, device="cpu").score(volume, ("tissue", "asymmetry", "combined"), mask=mask)
    assert result.contrast in ("dark_fluid", "bright_fluid")

    def surprise(values, name):  # -log10(1 - healthy quantile), capped at 5
        q = np.interp(values.astype(np.float64), tables[name], levels)
        return np.minimum(-np.log10(np.maximum(1 - q, 1e-5)), 5.0)

    t, a = result.maps["tissue"], result.maps["asymmetry"]
    bright = (surprise(t, "tissue") + surprise(a, "asymmetry")) / 2
    dark = (surprise(-t, "-tissue") + surprise(-a, "-asymmetry")) / 2
    inside = result.mask
    np.testing.assert_allclose(result.maps["combined"][inside], np.maximum(bright, dark)[inside], atol=1e-5)
    assert (dark[inside] > bright[inside] + 0.5).sum() > 10  # the dark channel carries those voxels
    # with the card's dark opening: the dark channel opened by a 6 mm ball in the scan's 2 mm grid (19 voxels),
    # then the maximum
    card.calibration["combined"]["dark_opening_mm"] = 6.0
    opened = Scorer(model, card, device="cpu").score(volume, ("combined",), mask=mask)
    by_hand = np.maximum(bright, open_map(dark, inside, volume.spacing, 6.0))
    np.testing.assert_allclose(opened.maps["combined"][inside], by_hand[inside], atol=1e-5)
    assert ((result.maps["combined"] - opened.maps["combined"])[inside] > 0.3).sum() > 10  # thin dark voxels lowered


def test_scorer_measures_a_component_by_the_tissue_the_template_expects(brain, tiny_model_dir):
    """A card with healthy tables per tissue class for the scan's contrast (``combined.tables_by_tissue``): the
    scorer's combined map measures that component at each brain voxel against the table of the tissue the aligned
    template expects there (``tissue.prior_classes`` of the smoothed priors), the others against their contrast's
    table -- as computed by hand from the scorer's own maps; the classes are reported; a card without such tables
    computes none unless asked to (as calibration does)."""
    from napari_uad.model_card import load_model
    from napari_uad.scoring import Scorer
    from napari_uad.tissue import prior_classes

    data, mask, affine = brain
    model, card = load_model(tiny_model_dir)
    card.preprocessing = PreprocessingConfig(template="mni152-2009")
    levels = [0.0, 0.5, 0.9, 0.99, 0.999, 1.0]
    tables = {"tissue": [-20.0, 0.0, 1.0, 2.0, 3.0, 20.0], "asymmetry": [-5.0, 0.0, 0.2, 0.4, 0.6, 5.0]}
    by_class = {"csf": [-5.0, 0.5, 1.0, 1.5, 2.0, 5.0], "gm": [-5.0, 0.0, 0.1, 0.2, 0.3, 5.0],
                "wm": [-5.0, -0.1, 0.0, 0.05, 0.1, 5.0]}
    card.calibration = {"levels": levels, "maps": {m: {"quantiles": q} for m, q in tables.items()},
                        "combined": {"components": ["tissue", "asymmetry"]}}
    volume = Volume.from_array(data, affine)
    plain = Scorer(model, card, device="cpu").score(volume, ("tissue", "asymmetry", "combined"), mask=mask)
    assert plain.tissue_classes is None
    # as calibration asks: the classes kept although the card does not use them
    asked = Scorer(model, card, device="cpu").score(volume, ("tissue",), mask=mask, tissue_classes=True)
    card.calibration["combined"]["tables_by_tissue"] = {c: {"asymmetry": by_class}
                                                        for c in ("dark_fluid", "bright_fluid")}
    result = Scorer(model, card, device="cpu").score(volume, ("tissue", "asymmetry", "combined"), mask=mask)
    prepared = prepare_volume(volume, card.preprocessing, card.input_size, mask=mask)
    classes = prior_classes(prepared.tissue_priors(), result.mask, volume.spacing, card.scoring.tissue())
    np.testing.assert_array_equal(result.tissue_classes, classes)
    np.testing.assert_array_equal(asked.tissue_classes, classes)
    inside = result.mask
    assert set(np.unique(classes[inside])) == {0, 1, 2} and (classes[~inside] == -1).all()

    def surprise(values, table):  # -log10(1 - healthy quantile), capped at 5
        q = np.interp(values.astype(np.float64), table, levels)
        return np.minimum(-np.log10(np.maximum(1 - q, 1e-5)), 5.0)

    t, a = result.maps["tissue"], result.maps["asymmetry"]
    own = np.choose(np.clip(classes, 0, 2), [surprise(a, by_class[k]) for k in ("csf", "gm", "wm")])
    np.testing.assert_allclose(result.maps["combined"][inside], ((surprise(t, tables["tissue"]) + own) / 2)[inside],
                               atol=1e-5)
    assert np.abs(result.maps["combined"] - plain.maps["combined"])[inside].max() > 0.1
