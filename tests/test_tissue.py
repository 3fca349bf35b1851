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
