"""The tissue-conditional outlier map against a hand computation on a tiny volume."""

from __future__ import annotations

import numpy as np
import pytest

from napari_uad.tissue import fit_tissue_mixture, tissue_outlier_map


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
