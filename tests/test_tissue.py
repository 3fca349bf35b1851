"""The tissue-conditional outlier map against a hand computation on a tiny volume."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_uad.tissue import TissueSettings, fit_tissue_mixture, smooth_priors, tissue_outlier_map


def tiny_brain():
    """6 x 6 x 3 'brain': three slabs of CSF, GM and WM with exact priors and known intensities."""
    rng = np.random.default_rng(0)
    shape = (6, 6, 3)
    priors = np.zeros((3, *shape))
    for c in range(3):
        priors[c, :, :, c] = 1.0
    means, sds = np.array([10.0, 60.0, 80.0]), np.array([2.0, 3.0, 2.5])
    data = np.zeros(shape)
    for c in range(3):
        data[:, :, c] = means[c] + sds[c] * rng.standard_normal((6, 6))
    return data, np.ones(shape, bool), priors


def test_mixture_recovers_class_statistics_and_ignores_an_outlier():
    data, brain, priors = tiny_brain()
    clean_mu = np.array([data[:, :, c].mean() for c in range(3)])
    clean_sd = np.array([data[:, :, c].std() for c in range(3)])
    mu, sd = fit_tissue_mixture(data[brain], priors[:, brain])
    np.testing.assert_allclose(mu, clean_mu, rtol=1e-6)
    np.testing.assert_allclose(sd, clean_sd, rtol=1e-6)
    normal_wm = np.delete(data[:, :, 2].ravel(), 2 * 6 + 2)
    data[2, 2, 2] = 400.0  # a lesion in white matter: far from every class, it does not move WM's statistics
    mu2, sd2 = fit_tissue_mixture(data[brain], priors[:, brain])
    np.testing.assert_allclose(mu2[:2], clean_mu[:2], rtol=1e-6)
    assert mu2[2] == pytest.approx(normal_wm.mean(), rel=1e-6) and sd2[2] == pytest.approx(normal_wm.std(), rel=1e-6)


def test_map_equals_the_hand_computation():
    data, brain, priors = tiny_brain()
    data[2, 2, 2] = 400.0  # bright lesion in WM
    data[3, 3, 1] = 5.0  # dark lesion in GM
    out = tissue_outlier_map(data, brain, priors)
    mu, sd = fit_tissue_mixture(data[brain], priors[:, brain])
    p = np.maximum(priors, 1e-3)
    p /= p.sum(axis=0)
    for v in [(2, 2, 2), (3, 3, 1), (0, 0, 0)]:
        log_dens = np.log(p[(slice(None), *v)]) - 0.5 * ((data[v] - mu) / sd) ** 2 - np.log(np.sqrt(2 * np.pi) * sd)
        top = log_dens.max()
        log_mix = top + np.log(np.exp(log_dens - top).sum())
        nll = np.log(np.max(1 / (np.sqrt(2 * np.pi) * sd))) - log_mix
        expected = (np.exp(log_dens - log_mix) * mu).sum()
        assert out[v] == pytest.approx(np.sign(data[v] - expected) * max(nll, 0.0), rel=1e-5)
    assert out[2, 2, 2] > 100 and out[3, 3, 1] < -10  # bright lesion high, dark lesion negative
    typical = np.abs(np.delete(out.ravel(), [np.ravel_multi_index(v, out.shape) for v in [(2, 2, 2), (3, 3, 1)]]))
    assert typical.max() < 8  # normal voxels stay near zero


def test_outside_the_brain_is_zero_and_empty_brain_gives_zeros():
    data, brain, priors = tiny_brain()
    brain[:, :, 0] = False
    out = tissue_outlier_map(data, brain, priors)
    assert np.all(out[:, :, 0] == 0)
    assert not tissue_outlier_map(data, np.zeros_like(brain), priors).any()


def test_class_peak_measures_each_class_against_its_own_peak():
    """class_peak: nll = -log sum_c p_c exp(-z_c^2 / 2) by hand; a typical voxel of a wide class scores ~0
    (with the global peak it pays for the class's width), a bright lesion stays high."""
    data, brain, priors = tiny_brain()
    sds = np.array([6.0, 1.0, 1.0])  # CSF much wider than GM/WM, as on T2
    rng = np.random.default_rng(1)
    for c in range(3):
        data[:, :, c] = [30.0, 60.0, 80.0][c] + sds[c] * rng.standard_normal((6, 6))
    data[1, 1, 0] = 30.0  # CSF voxel exactly at CSF's mean
    data[2, 2, 2] = 400.0
    peak = tissue_outlier_map(data, brain, priors, settings=TissueSettings(class_peak=True))
    mu, sd = fit_tissue_mixture(data[brain], priors[:, brain])
    p = np.maximum(priors, 1e-3)
    p /= p.sum(axis=0)
    for v in [(1, 1, 0), (2, 2, 2), (4, 0, 1)]:
        terms = np.log(p[(slice(None), *v)]) - 0.5 * ((data[v] - mu) / sd) ** 2
        nll = -(terms.max() + np.log(np.exp(terms - terms.max()).sum()))
        assert abs(peak[v]) == pytest.approx(max(nll, 0.0), rel=1e-5, abs=1e-6)
    default = tissue_outlier_map(data, brain, priors)
    assert abs(peak[1, 1, 0]) < 0.1 < abs(default[1, 1, 0])  # the CSF voxel: no penalty for CSF's width
    assert peak[2, 2, 2] > 100


def test_prior_floor_and_smoothing_change_the_priors_as_stated():
    """The floor caps the penalty of a class the template rules out: a CSF-intensity voxel where the template
    says GM only scores at most -log(floor) (class_peak); smoothing uses sigma in mm over the grid's spacing."""
    data, brain, priors = tiny_brain()
    data[3, 3, 1] = data[:, :, 0].mean()  # CSF intensity in the GM slab
    strict = tissue_outlier_map(data, brain, priors, settings=TissueSettings(class_peak=True))
    loose = tissue_outlier_map(data, brain, priors, settings=TissueSettings(prior_floor=0.1, class_peak=True))
    assert abs(strict[3, 3, 1]) > 5  # floor 1e-3: far from GM, nearly impossible as CSF
    assert abs(loose[3, 3, 1]) <= -np.log(0.1 / 1.2) + 0.05  # at most -log of the renormalised floor
    spacing = (1.0, 2.0, 5.0)
    smoothed = smooth_priors(priors, spacing, 4.0)
    np.testing.assert_allclose(smoothed[1], ndimage.gaussian_filter(priors[1].astype(np.float32),
                                                                     (4.0, 2.0, 0.8)), rtol=1e-5)
    np.testing.assert_array_equal(smooth_priors(priors, spacing, 0.0), priors.astype(np.float32))
    via_settings = tissue_outlier_map(data, brain, priors, spacing, TissueSettings(prior_sigma_mm=4.0))
    by_hand = tissue_outlier_map(data, brain, smoothed, spacing, TissueSettings())
    np.testing.assert_allclose(via_settings, by_hand, rtol=1e-5)


def test_smoothing_only_the_brains_box_equals_smoothing_the_whole_grid():
    """The map smooths the priors only around the brain (the kernel's reach); inside the brain the result is the
    whole-grid smoothing's, on an anisotropic grid with the brain off-centre."""
    rng = np.random.default_rng(3)
    shape, spacing = (40, 36, 16), (1.0, 1.5, 4.0)
    priors = ndimage.gaussian_filter(rng.random((3, *shape)), (0, 2, 2, 1)).astype(np.float32)
    i, j, k = np.indices(shape)
    brain = ((i - 12) / 7.0) ** 2 + ((j - 20) / 9.0) ** 2 + ((k - 6) / 3.0) ** 2 <= 1
    data = rng.normal(50.0, 10.0, shape)
    settings = TissueSettings(prior_sigma_mm=4.0)
    boxed = tissue_outlier_map(data, brain, priors, spacing, settings)
    whole = tissue_outlier_map(data, brain, smooth_priors(priors, spacing, 4.0), spacing, TissueSettings())
    np.testing.assert_allclose(boxed, whole, rtol=1e-6, atol=1e-6)


def _pv_terms_by_hand(x: float, p: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """Mixture weight x density of each component at intensity x: pure classes p_c^2 N(x; mu_c, sd_c); pairs
    2 p_a p_b times the density of m + e, m uniform on [lo, hi] (the class means), e ~ N(0, (sd_a^2 + sd_b^2) / 3),
    by numerical integration over m."""
    def gauss(m, s):
        return np.exp(-0.5 * ((x - m) / s) ** 2) / (np.sqrt(2 * np.pi) * s)

    dens = [p[c] ** 2 * gauss(mu[c], sd[c]) for c in range(3)]
    for a, b in ((0, 1), (0, 2), (1, 2)):
        m = np.linspace(min(mu[a], mu[b]), max(mu[a], mu[b]), 200001)
        dens.append(2 * p[a] * p[b] * np.trapezoid(gauss(m, np.sqrt((sd[a] ** 2 + sd[b] ** 2) / 3)), m)
                    / (m[-1] - m[0]))
    return np.array(dens)


def boundary_brain():
    """6 x 6 x 4: slabs of CSF, a CSF/GM boundary (every voxel half CSF, half GM; priors 0.5 / 0.5, as smoothed
    template priors say there), GM and WM, with soft priors elsewhere too."""
    rng = np.random.default_rng(4)
    shape = (6, 6, 4)
    means, sds = np.array([10.0, 60.0, 80.0]), np.array([2.0, 3.0, 2.5])
    slab_priors = [(0.9, 0.1, 0.0), (0.5, 0.5, 0.0), (0.0, 0.9, 0.1), (0.0, 0.1, 0.9)]
    slab_mix = [(1.0, 0.0, 0.0), (0.5, 0.5, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)]
    priors, data = np.zeros((3, *shape)), np.zeros(shape)
    for k in range(4):
        priors[:, :, :, k] = np.asarray(slab_priors[k])[:, None, None]
        pure = means[:, None, None] + sds[:, None, None] * rng.standard_normal((3, 6, 6))
        data[:, :, k] = np.tensordot(slab_mix[k], pure, axes=1)
    return data, np.ones(shape, bool), priors


def test_partial_volume_map_equals_the_hand_computation():
    data, brain, priors = boundary_brain()
    data[2, 2, 3] = 400.0  # bright lesion in WM
    settings = TissueSettings(partial_volume=True)
    out = tissue_outlier_map(data, brain, priors, settings=settings)
    mu, sd = fit_tissue_mixture(data[brain], priors[:, brain], partial_volume=True)
    p = np.maximum(priors, 1e-3)
    p /= p.sum(axis=0)
    for v in [(1, 4, 1), (0, 0, 0), (5, 5, 2), (3, 1, 3)]:  # (densities in plain floats: no lesion here)
        dens = _pv_terms_by_hand(data[v], p[(slice(None), *v)], mu, sd)
        nll = np.log(np.max(1 / (np.sqrt(2 * np.pi) * sd))) - np.log(dens.sum())
        expected = (dens[:3] * mu).sum() / dens[:3].sum()  # the sign: against the pure classes
        assert out[v] == pytest.approx(np.sign(data[v] - expected) * max(nll, 0.0), rel=1e-5, abs=1e-6)
    assert out[2, 2, 3] > 100


def test_partial_volume_with_class_peak_equals_the_hand_computation():
    """Both settings: each component (pure class or two-class mixture) is measured against its own peak -- a
    pure class at its mean, a mixture at the middle of its two means -- so a boundary voxel that the broad CSF/GM
    mixture explains scores ~0 instead of its distance from the sharpest class's peak."""
    data, brain, priors = boundary_brain()
    data[2, 2, 3] = 400.0  # bright lesion in WM
    out = tissue_outlier_map(data, brain, priors, settings=TissueSettings(partial_volume=True, class_peak=True))
    plain = tissue_outlier_map(data, brain, priors, settings=TissueSettings(partial_volume=True))
    mu, sd = fit_tissue_mixture(data[brain], priors[:, brain], partial_volume=True)
    p = np.maximum(priors, 1e-3)
    p /= p.sum(axis=0)
    for v in [(1, 4, 1), (0, 0, 0), (5, 5, 2), (3, 1, 3)]:
        pv = p[(slice(None), *v)]
        dens = _pv_terms_by_hand(data[v], pv, mu, sd)
        peaks = [1 / (np.sqrt(2 * np.pi) * sd[c]) for c in range(3)]  # each component's own density at its peak
        peaks += [_pv_terms_by_hand((mu[a] + mu[b]) / 2, np.ones(3), mu, sd)[3 + i] / 2
                  for i, (a, b) in enumerate(((0, 1), (0, 2), (1, 2)))]
        nll = -np.log((dens / np.array(peaks)).sum())
        expected = (dens[:3] * mu).sum() / dens[:3].sum()
        assert out[v] == pytest.approx(np.sign(data[v] - expected) * max(nll, 0.0), rel=1e-4, abs=1e-4)
    boundary = np.zeros(brain.shape, bool)
    boundary[:, :, 1] = True
    assert np.abs(out[boundary]).max() < 1.0 < np.abs(plain[boundary]).max()  # the mixture's voxels are typical
    assert out[2, 2, 3] > 100


def test_partial_volume_keeps_the_pure_classes_narrow_and_a_lesion_stands_out():
    """Without the setting the CSF/GM boundary slab (intensities half way between CSF and GM) widens both classes
    (sd ~12 instead of 2 and 3), so a bright lesion in grey matter barely stands out; with it CSF and GM keep
    their own spread, the boundary voxels score like typical voxels of a 50-unit-wide mixture (~3) and the
    lesion scores 3x higher than without, far above every boundary voxel."""
    data, brain, priors = boundary_brain()
    data[3, 3, 2] = 92.0  # bright lesion in GM (GM 60 +- 3, WM 80 +- 2.5)
    mu, sd = fit_tissue_mixture(data[brain], priors[:, brain], partial_volume=True)
    assert sd[0] < 2.5 and sd[1] < 3.5  # CSF's and GM's own spread (2, 3), not the boundary's
    _, sd_plain = fit_tissue_mixture(data[brain], priors[:, brain])
    assert sd_plain[0] > 8 and sd_plain[1] > 8
    plain = tissue_outlier_map(data, brain, priors)
    pv = tissue_outlier_map(data, brain, priors, settings=TissueSettings(partial_volume=True))
    assert pv[3, 3, 2] > 3 * plain[3, 3, 2] > 0
    assert np.abs(pv[:, :, 1]).max() < 4 < 0.25 * pv[3, 3, 2]


def test_partial_volume_only_at_a_boundary_of_its_two_tissues_equals_the_hand_computation():
    """pv_boundary_mm: a voxel of the CSF/GM boundary slab (pure CSF and pure GM voxels 1 mm away) is explained by
    the mixture as before; the centre of a thick block of in-between intensity deep in white matter (no voxel
    called pure CSF or GM within 1 mm, white matter 3 mm away) is scored with every pair's weight x 1e-3 -- by
    hand -- and stands far above where mixtures explain everything."""
    from napari_uad.tissue import PV_OUTSIDE_WEIGHT

    rng = np.random.default_rng(7)
    shape = (10, 10, 13)  # (smaller, the block's 125 voxels would widen white matter's fitted spread)
    means, sds = np.array([10.0, 60.0, 80.0]), np.array([2.0, 3.0, 2.5])
    slab = [0, 0, None, 1, 1, 1] + [2] * 7  # CSF, CSF/GM boundary, GM, WM along k
    priors, data = np.full((3, *shape), 0.0), np.zeros(shape)
    for k, c in enumerate(slab):
        mix = np.array([0.5, 0.5, 0.0]) if c is None else np.eye(3)[c]
        priors[:, :, :, k] = (mix * 0.8 + 0.2 / 3)[:, None, None]
        data[:, :, k] = np.tensordot(mix, means[:, None, None] + sds[:, None, None] * rng.standard_normal((3, 10, 10)),
                                     axes=1)
    data[1:6, 1:6, 8:13] = 35.0 + rng.standard_normal((5, 5, 5))  # half way between CSF and GM, in WM
    brain = np.ones(shape, bool)
    plain = tissue_outlier_map(data, brain, priors, settings=TissueSettings(partial_volume=True))
    gated = tissue_outlier_map(data, brain, priors, settings=TissueSettings(partial_volume=True, pv_boundary_mm=1.0))
    mu, sd = fit_tissue_mixture(data[brain], priors[:, brain], partial_volume=True)
    p = np.maximum(priors, 1e-3)
    p /= p.sum(axis=0)

    def by_hand(v, gated_pairs):  # pairs in the order CSF/GM, CSF/WM, GM/WM
        dens = _pv_terms_by_hand(data[v], p[(slice(None), *v)], mu, sd)
        dens[3:] *= np.where(gated_pairs, PV_OUTSIDE_WEIGHT, 1.0)
        nll = np.log(np.max(1 / (np.sqrt(2 * np.pi) * sd))) - np.log(dens.sum())
        return np.sign(data[v] - (dens[:3] * mu).sum() / dens[:3].sum()) * max(nll, 0.0)

    # the boundary: CSF and GM 1 mm away explain it as their mixture; white matter is 4 mm away
    assert gated[3, 3, 2] == pytest.approx(by_hand((3, 3, 2), [False, True, True]), rel=1e-4)
    assert gated[3, 3, 2] == pytest.approx(plain[3, 3, 2], abs=0.2)
    assert gated[3, 3, 10] == pytest.approx(by_hand((3, 3, 10), [True, True, True]), rel=1e-4)
    assert abs(gated[3, 3, 10]) > abs(plain[3, 3, 10]) + 5


def test_sign_from_prior_reads_a_t2_like_white_matter_lesion_as_hyperintense():
    """T2-like contrast (CSF 100, GM 60, WM 40): a WM lesion at 80 lies between WM and CSF. The posterior sign
    explains it as improbable CSF (expected ~100) and calls it hypointense; against the priors' expectation
    sum_c p_c mu_c (~WM here) it is hyperintense. The magnitude is the same nll either way."""
    data, brain, priors = tiny_brain()
    rng = np.random.default_rng(5)
    for c, (m, sd) in enumerate([(100.0, 4.0), (60.0, 3.0), (40.0, 2.5)]):
        data[:, :, c] = m + sd * rng.standard_normal((6, 6))
    data[2, 2, 2] = 80.0
    posterior = tissue_outlier_map(data, brain, priors)
    prior = tissue_outlier_map(data, brain, priors, settings=TissueSettings(sign_from_prior=True))
    assert posterior[2, 2, 2] < -5 and prior[2, 2, 2] == pytest.approx(-posterior[2, 2, 2])
    mu, _ = fit_tissue_mixture(data[brain], priors[:, brain])
    p = np.maximum(priors, 1e-3)
    p /= p.sum(axis=0)
    expected = np.tensordot(mu, p, axes=1)  # the template's expectation at every voxel
    np.testing.assert_array_equal(np.sign(prior[brain]), np.sign((data - expected)[brain]) * (prior[brain] != 0))


@pytest.mark.parametrize("means, contrast", [((20.0, 55.0, 80.0), "dark_fluid"), ((10.0, 70.0, 55.0), "dark_fluid"),
                                             ((100.0, 60.0, 45.0), "bright_fluid"),
                                             ((85.0, 75.0, 60.0), "bright_fluid")])
def test_the_scans_contrast_is_read_from_its_own_tissue_fit(means, contrast):
    """T1 and FLAIR (dark fluid), T2 and PD (fluid brightest): the synthetic contrast families' class means,
    fitted back from a tiny brain and recognised."""
    from napari_uad.tissue import CONTRASTS, scan_contrast, tissue_outliers

    data, brain, priors = tiny_brain()
    for c in range(3):  # the tiny brain's slabs moved to this contrast's class means
        data[:, :, c] += means[c] - data[:, :, c].mean()
    out, fitted = tissue_outliers(data, brain, priors)
    np.testing.assert_allclose(fitted, means, rtol=1e-4)  # PD's close classes share a little via the prior floor
    np.testing.assert_array_equal(out, tissue_outlier_map(data, brain, priors))
    assert scan_contrast(fitted) == contrast and contrast in CONTRASTS
    assert tissue_outliers(data, np.zeros_like(brain), priors)[1] is None  # no brain: no fit, no contrast


@pytest.mark.parametrize("means, brightest, over_white", [
    ((-1.57, -0.50, 1.40), "dark_fluid", "dark_fluid"),     # T1: fluid < grey < white
    ((-2.00, 1.00, 0.50), "dark_fluid", "dark_fluid"),      # FLAIR: fluid nulled, grey over white
    ((2.12, 0.21, -1.08), "bright_fluid", "bright_fluid"),  # T2 on its true brain (validation head 690004)
    ((0.41, 0.47, -0.91), "dark_fluid", "bright_fluid"),    # the same head as scored: the mask's edge errors
    ((0.30, 0.60, -0.90), "dark_fluid", "bright_fluid"),    # PD with fluid between the tissues (WM < CSF < GM)
])
def test_contrast_rules_read_fluid_against_both_tissues_or_white_matter_only(means, brightest, over_white):
    """``scan_contrast``'s two rules on fitted CSF / GM / WM means: "fluid_brightest" (the default: fluid above
    both tissues) and "fluid_over_white" (fluid above white matter), which a card chooses
    (``scoring.tissue_contrast_rule``); an unknown rule is refused, in the settings too."""
    from napari_uad.model_card import ScoringConfig
    from napari_uad.tissue import scan_contrast

    assert scan_contrast(np.array(means)) == brightest
    assert scan_contrast(np.array(means), "fluid_brightest") == brightest
    assert scan_contrast(np.array(means), "fluid_over_white") == over_white
    with pytest.raises(ValueError, match="fluid_brightest, fluid_over_white"):
        scan_contrast(np.array(means), "fluid_darkest")
    with pytest.raises(ValueError, match="contrast_rule 'x'"):
        TissueSettings(contrast_rule="x")
    with pytest.raises(ValueError, match="contrast_rule 'x'"):
        ScoringConfig(tissue_contrast_rule="x")
    assert ScoringConfig(tissue_contrast_rule="fluid_over_white").tissue().contrast_rule == "fluid_over_white"


def test_fluid_floor_explains_fluid_where_the_template_expects_tissue_on_t2_only():
    """On a fluid-bright (T2-like) brain, fluid where the priors say white matter (a subject's larger ventricle)
    reads as strongly hyperintense tissue; with ``fluid_floor`` it is explained as CSF, while a lesion between
    tissue and fluid still stands out more than that fluid. A fluid-dark (T1-like) brain is left unchanged."""
    from napari_uad.tissue import tissue_outliers

    data, brain, priors = tiny_brain()
    t2 = data.copy()
    for c, mean in enumerate((100.0, 60.0, 45.0)):
        t2[:, :, c] += mean - t2[:, :, c].mean()
    t2[0:2, 0:3, 2] = t2[0:2, 0:3, 0]  # CSF in the "white matter" slab (a subject's larger ventricle)
    t2[4, 4, 2] = 75.0  # a lesion, between white matter and fluid
    plain, means = tissue_outliers(t2, brain, priors, settings=TissueSettings(partial_volume=True))
    floored, _ = tissue_outliers(t2, brain, priors, settings=TissueSettings(partial_volume=True, fluid_floor=0.3))
    assert scan_contrast_of(means) == "bright_fluid"
    fluid = np.zeros(brain.shape, bool)
    fluid[0:2, 0:3, 2] = True
    assert np.median(plain[fluid]) > 4.5 and np.median(plain[fluid]) > plain[4, 4, 2]  # fluid outranks the lesion
    assert np.median(floored[fluid]) < 3.2 and floored[4, 4, 2] > np.median(floored[fluid])  # and no longer does
    # the same fluid volume of a T1-like brain (fluid dark) is untouched by the setting
    t1 = data.copy()
    t1[0:2, 0:3, 2] = 10.0
    np.testing.assert_array_equal(tissue_outlier_map(t1, brain, priors, settings=TissueSettings(fluid_floor=0.3)),
                                  tissue_outlier_map(t1, brain, priors))


def scan_contrast_of(means):
    from napari_uad.tissue import scan_contrast

    return scan_contrast(means)


def _shell_brain(ventricle_mm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """48^3 grid (1 mm): a 20 mm ball of brain -- CSF ventricle of radius ``ventricle_mm``, WM to 13 mm, GM to
    17 mm, CSF to 20 mm -- as hard class probabilities [3, ...], with the ball and the radius grid."""
    g = np.indices((48, 48, 48)).astype(float) - 23.5
    r = np.sqrt((g**2).sum(axis=0))
    brain = r < 20
    csf = (r < ventricle_mm) | ((r >= 17) & brain)
    wm = (r >= ventricle_mm) & (r < 13)
    gm = (r >= 13) & (r < 17)
    return np.stack([csf, gm, wm]).astype(float), brain, r


def test_deformed_priors_follow_a_larger_ventricle_and_keep_the_lesion():
    """A T2-like brain whose ventricle is 7 mm wide where the aligned template has 4 mm: without deformation the
    3 mm rim of fluid reads as hyperintense white matter (what a lesion looks like on T2); with the priors deformed
    onto the scan (``deform_mm``) it is explained as CSF, while a lesion no class explains stands out more."""
    from napari_uad.tissue import tissue_outliers

    priors, brain, r = _shell_brain(4.0)
    truth, _, _ = _shell_brain(7.0)
    rng = np.random.default_rng(0)
    data = np.where(brain, (truth * np.array([100.0, 60.0, 45.0])[:, None, None, None]).sum(axis=0)
                    + rng.normal(0.0, 3.0, brain.shape), 0.0)
    g = np.indices(brain.shape) - 23.5
    lesion = (g[0] ** 2 + (g[1] - 10) ** 2 + g[2] ** 2) < 2.5**2
    data[lesion] = 160.0
    rim = (r >= 4.5) & (r < 6.5)
    plain, _ = tissue_outliers(data, brain, priors, settings=TissueSettings(partial_volume=True))
    deformed, means = tissue_outliers(data, brain, priors, settings=TissueSettings(partial_volume=True, deform_mm=3.0))
    assert plain[rim].mean() > 4.0  # the rim of fluid is an outlier for the white matter the template put there
    assert abs(deformed[rim].mean()) < 1.0 and deformed[lesion].mean() > plain[lesion].mean() > 10.0
    np.testing.assert_allclose(means, [100.0, 60.0, 45.0], atol=1.0)  # WM no longer widened by the rim of fluid
    again, _ = tissue_outliers(data, brain, priors, settings=TissueSettings(partial_volume=True, deform_mm=3.0))
    np.testing.assert_array_equal(again, deformed)  # deterministic


def test_deformable_registration_recovers_a_shift_in_voxels_of_an_anisotropic_grid():
    """A ball moved by 4 mm along i and 5 mm (one slice) along k on a 1 x 1 x 5 mm grid: the displacement at the
    fixed ball's centre points to the moving ball's centre, in voxels of that grid."""
    from napari_uad.preprocessing.alignment import register_deformable

    g = np.indices((40, 40, 12)).astype(float)

    def ball(ci, ck):
        return (((g[0] - ci) ** 2 + (g[1] - 20) ** 2 + ((g[2] - ck) * 5.0) ** 2) < 8.0**2).astype(np.float32)

    d = register_deformable(ball(18, 6), ball(22, 7), (1.0, 1.0, 5.0), smoothing_mm=3.0, iterations=60)
    assert d.shape == (3, 40, 40, 12)
    np.testing.assert_allclose(d[:, 18, 20, 6], [4.0, 0.0, 1.0], atol=0.6)


def test_hypointense_thickness_is_the_inscribed_radius_in_mm():
    """Hand computation: a 7-voxel cube at -5 in a brain of 0s; its centre is 4 voxels from the nearest voxel
    outside it, i.e. 4 mm on a 1 mm grid and on a 1 x 1 x 2 mm grid (the fine axes are nearer), 8 mm on 2 mm."""
    from napari_uad.tissue import hypointense_thickness_mm

    tissue = np.zeros((21, 21, 21), np.float32)
    brain = np.zeros(tissue.shape, bool)
    brain[2:19, 2:19, 2:19] = True
    tissue[7:14, 7:14, 7:14] = -5.0
    assert hypointense_thickness_mm(tissue, brain, (1.0, 1.0, 1.0)) == pytest.approx(4.0)
    assert hypointense_thickness_mm(tissue, brain, (1.0, 1.0, 2.0)) == pytest.approx(4.0)
    assert hypointense_thickness_mm(tissue, brain, (2.0, 2.0, 2.0)) == pytest.approx(8.0)
    # only voxels at or below -level count; nothing hypointense -> 0
    assert hypointense_thickness_mm(tissue, brain, (1.0, 1.0, 1.0), level=6.0) == 0.0
    assert hypointense_thickness_mm(np.zeros_like(tissue), brain, (1.0, 1.0, 1.0)) == 0.0
    # outside the brain nothing counts, and the brain's edge is a boundary even where it meets the grid's edge
    assert hypointense_thickness_mm(np.full(tissue.shape, -5.0, np.float32), np.ones(tissue.shape, bool),
                                    (1.0, 1.0, 1.0)) == pytest.approx(11.0)
    assert hypointense_thickness_mm(tissue, np.zeros(tissue.shape, bool), (1.0, 1.0, 1.0)) == 0.0


def test_a_thin_hypointense_shell_is_thin_and_smoothing_closes_holes_in_a_thick_region():
    """A healthy head's hypointense voxels form shells (fluid where the template expects cortex); a cavity is a
    thick region whose noise may leave single voxels above the level."""
    from napari_uad.tissue import hypointense_thickness_mm

    shape, spacing = (40, 40, 40), (1.0, 1.0, 1.0)
    brain = np.zeros(shape, bool)
    brain[2:38, 2:38, 2:38] = True
    r = np.sqrt(((np.indices(shape) - 19.5) ** 2).sum(0))
    shell = np.where(brain & (r > 14) & (r <= 16), -5.0, 0.0).astype(np.float32)
    assert hypointense_thickness_mm(shell, brain, spacing) <= 1.5
    cavity = np.where(r <= 12, -5.0, 0.0).astype(np.float32)
    holes = cavity.copy()
    holes[::4, ::4, ::4] = 0.0  # every 64th voxel not hypointense
    thick = hypointense_thickness_mm(cavity, brain, spacing)
    assert 11.0 <= thick <= 12.5
    # raw: the farthest point from a lattice of holes 4 voxels apart is a cell's centre, 2 sqrt(3) mm away
    assert hypointense_thickness_mm(holes, brain, spacing) == pytest.approx(2 * np.sqrt(3))
    assert hypointense_thickness_mm(holes, brain, spacing, smoothing_mm=2.0) >= thick - 2.5


def test_prior_classes_are_the_tissue_of_the_largest_smoothed_prior():
    """Each brain voxel gets the class of its largest prior (0 CSF, 1 GM, 2 WM) after the settings' smoothing, in
    the brain's grid; outside the brain -1. A lesion's intensity does not enter: only the template decides."""
    from napari_uad.tissue import prior_classes

    data, brain, priors = tiny_brain()
    brain[0, 0, :] = False
    classes = prior_classes(priors, brain)
    expected = np.broadcast_to(np.arange(3, dtype=np.int8), brain.shape).copy()
    expected[~brain] = -1
    np.testing.assert_array_equal(classes, expected)
    assert classes.dtype == np.int8
    spacing, settings = (1.0, 1.0, 1.0), TissueSettings(prior_sigma_mm=1.5)
    smoothed = smooth_priors(priors, spacing, 1.5)
    by_hand = np.where(brain, smoothed.argmax(axis=0), -1)
    np.testing.assert_array_equal(prior_classes(priors, brain, spacing, settings), by_hand)
    assert (prior_classes(np.zeros_like(priors), np.zeros_like(brain)) == -1).all()
