"""Tissue-conditional intensity outliers: each voxel against the intensity distribution of the tissue that the
aligned template says should be there, in the same scan (no training; Van Leemput et al. 2001, as cited in
Zimmerer's thesis).

Model: a three-class (CSF, GM, WM) Gaussian mixture whose per-voxel weights are the template's tissue priors
p_c(v), fitted to the brain's intensities by EM (Van Leemput's outlier-robust variant: voxels far from every
class do not move the class statistics). The map is the voxel's negative log-likelihood under its own mixture,

    nll(v) = -log sum_c p_c(v) N(x_v; mu_c, sigma_c) + log max_c N(mu_c; mu_c, sigma_c)     (>= 0 for typical voxels)

signed by whether x_v lies above or below the mixture's expected intensity sum_c r_c(v) mu_c (r: posteriors):
positive = hyperintense for its tissue (a lesion on FLAIR/T2), negative = hypointense. The scale is set by the
scan's own tissue contrasts, so scanners and contrasts do not need calibrating against each other.

Settings (``TissueSettings``, stored in the model card's scoring block; chosen on validation heads,
``benchmarks/tissue_priors.py``): the priors can be smoothed (Gaussian, mm) and floored before use, since an
affine alignment does not put a subject's sulci and ventricles where the template has them; and each class can
be measured against its own peak (``class_peak``: nll = -log sum_c p_c(v) exp(-z_c^2 / 2), so a wide class such
as CSF on T2 is not an outlier merely for being wide).

Partial volume (``partial_volume``): a voxel on a tissue boundary holds a mixture of two tissues, so its
intensity lies between theirs (GM/CSF in sulci, WM/CSF along the ventricles) and is an outlier for either pure
class. With the setting, a voxel is modelled as two sub-voxels drawn independently from the priors: pure class c
with weight p_c^2, a mix of classes a and b with weight 2 p_a p_b and intensity m + e, the mixture's mean m
uniform between mu_a and mu_b and e ~ N(0, s_ab^2), s_ab^2 = (sigma_a^2 + sigma_b^2) / 3 (the average variance of
alpha y_a + (1 - alpha) y_b over alpha uniform in (0, 1)); its density is the closed form
[Phi((x - lo) / s) - Phi((x - hi) / s)] / (hi - lo). The pure classes are fitted from their own
responsibilities, so boundary voxels no longer widen them (after Van Leemput et al. 2003, "A unifying framework
for partial volume segmentation of brain MR images", with the mixing fraction integrated out). The sign stays
that of x against the pure classes' expected intensity (a boundary voxel is not "hyperintense" merely for
matching its boundary).

Sign (``sign_from_prior``): by default the expectation is the posterior one above, so a voxel is measured against
the class that explains it best -- on T2 a white-matter lesion whose intensity lies between WM and CSF is
"explained" as improbable CSF and comes out hypointense. With the setting the expectation is the template's,
sum_c p_c(v) mu_c (what the tissue at this place should look like), so that lesion reads as hyperintense.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.special import log_ndtr, logsumexp

from .mask import bounding_box, smoothed_inside

__all__ = ["fit_tissue_mixture", "tissue_outlier_map", "tissue_outliers", "smooth_priors", "scan_contrast",
           "deformed_priors", "implausible_tissue_order", "hypointense_thickness_mm", "TissueSettings", "TISSUES",
           "CONTRASTS", "CONTRAST_RULES", "boundary_pairs", "PV_OUTSIDE_WEIGHT", "prior_classes"]

TISSUES = ("csf", "gm", "wm")
CONTRASTS = {"dark_fluid": "T1/FLAIR-like (dark fluid)", "bright_fluid": "T2/PD-weighted (bright fluid)"}
"""What ``scan_contrast`` tells apart from a scan's own tissue means, with the words a reviewer reads: the
contrasts a detection threshold may have to differ between (per-contrast operating points, ``calibration``).
T1 and FLAIR are not told apart: both have dark fluid and differ only in how grey and white matter compare,
which the fit does not reliably give (``benchmarks/contrast_recognition.py``, docs/RESULTS.md)."""
CONTRAST_RULES = ("fluid_brightest", "fluid_over_white")
"""How ``scan_contrast`` reads a scan's tissue means (``TissueSettings.contrast_rule``)."""
_OUTLIER_Z = 3.0  # voxels beyond 3 sigma of every class are left out of the class statistics
_PRIOR_FLOOR = 1e-3  # every class stays possible everywhere (the affine alignment is not exact)


@dataclass(frozen=True)
class TissueSettings:
    """How the template priors and the likelihood are used (the defaults are the map's first definition).

    prior_sigma_mm: Gaussian smoothing of the priors in the scan's grid (world mm; 0 = none).
    prior_floor: smallest prior probability of any class anywhere (before renormalising).
    class_peak: measure each class against its own peak density (width-invariant) instead of the mixture's
        global peak.
    partial_volume: add the two-tissue mixtures of boundary voxels to the model (module docstring).
    sign_from_prior: sign against the priors' expected intensity instead of the posterior one (module docstring).
    fluid_floor: on a fluid-bright scan (``scan_contrast`` "bright_fluid": T2 or PD), the CSF prior is at least this
        everywhere in the brain before renormalising, and the mixture is refitted: fluid where the affinely
        aligned template expects tissue (a subject's wider sulci, larger or asymmetric ventricles) is then
        explained as CSF instead of reading as hyperintense tissue, which on T2 is what a lesion looks like.
        Fluid-dark scans (T1, FLAIR) are unchanged. 0 = off.
    deform_mm: after the first fit, the priors are deformed onto the scan's own tissue (``deformed_priors``: a
        demons registration, each update smoothed by this many mm) and the mixture is refitted, so the priors
        follow a subject's sulci and ventricles beyond what the affine alignment reaches. 0 = off.
    pv_boundary_mm: with ``partial_volume``, a two-tissue mixture explains a voxel only where both tissues are
        near (``boundary_pairs``: a voxel the fit calls pure of each class within this many mm, at least one voxel
        step): a boundary is thin, and a thick region of in-between intensity -- oedema between grey matter and
        fluid on T2, a lesion between fluid and grey matter on T1 -- is not partial volume. Elsewhere the
        mixture's weight is multiplied by ``PV_OUTSIDE_WEIGHT``. 0 = off (mixtures explain any voxel).
    contrast_rule: how the fitted means tell the scan's contrast (``scan_contrast``; a key of ``CONTRAST_RULES``).
    """

    prior_sigma_mm: float = 0.0
    prior_floor: float = _PRIOR_FLOOR
    class_peak: bool = False
    partial_volume: bool = False
    sign_from_prior: bool = False
    fluid_floor: float = 0.0
    deform_mm: float = 0.0
    pv_boundary_mm: float = 0.0
    contrast_rule: str = "fluid_brightest"

    def __post_init__(self):
        if self.contrast_rule not in CONTRAST_RULES:
            raise ValueError(f"contrast_rule {self.contrast_rule!r}: choose from {', '.join(CONTRAST_RULES)}")


def smooth_priors(priors: np.ndarray, spacing: tuple[float, float, float], sigma_mm: float) -> np.ndarray:
    """Priors [3, ...] smoothed by a Gaussian of ``sigma_mm`` world mm (voxel sigma = mm / spacing), float32."""
    priors = np.asarray(priors, dtype=np.float32)
    if sigma_mm <= 0:
        return priors
    sigma = sigma_mm / np.asarray(spacing, np.float64)
    return np.stack([ndimage.gaussian_filter(c, sigma) for c in priors])


_TRUNCATE = 4.0  # scipy's gaussian_filter default: the kernel reaches int(4 sigma + 0.5) voxels


def _brain_box(brain: np.ndarray, spacing, sigma_mm: float) -> tuple[slice, ...]:
    """The brain's bounding box grown by the smoothing kernel's reach (clipped to the grid): smoothing this box
    gives the brain's voxels exactly the values that smoothing the whole grid would (separable kernel)."""
    return bounding_box(brain, [int(_TRUNCATE * sigma_mm / float(d) + 0.5) if sigma_mm > 0 else 0 for d in spacing])


def _box_priors(priors: np.ndarray, brain: np.ndarray, spacing, settings: TissueSettings
                ) -> tuple[tuple[slice, ...], np.ndarray]:
    """The brain's box (``_brain_box``) and the priors on it [3, *box], smoothed by ``settings.prior_sigma_mm``."""
    box = _brain_box(brain, spacing, settings.prior_sigma_mm)
    return box, smooth_priors(np.stack([np.asarray(c)[box] for c in priors]), spacing, settings.prior_sigma_mm)


def _at_voxels(priors: np.ndarray, inside: np.ndarray, floor: float) -> np.ndarray:
    """Priors [3, N] at the voxels of ``inside``, floored and summing to 1 (float64)."""
    p = np.maximum(np.stack([np.asarray(c, dtype=np.float64)[inside] for c in priors]), max(floor, 1e-12))
    return p / p.sum(axis=0, keepdims=True)


def _expected_tissue(probabilities: np.ndarray) -> np.ndarray:
    """Tissue as one number per voxel, the same on any contrast: 0 = CSF, 1 = GM, 2 = WM, weighted by the class
    probabilities [3, ...] (priors or posteriors)."""
    return probabilities[1] + 2.0 * probabilities[2]


def deformed_priors(x: np.ndarray, brain: np.ndarray, priors: np.ndarray, spacing, mu: np.ndarray,
                    sigma: np.ndarray, smoothing_mm: float) -> np.ndarray:
    """Priors [3, *brain's box] deformed onto this scan's own tissue (scan grid, voxel units).

    x: intensities at the brain's voxels [N]; priors: [3, *box] on the box ``brain`` [*box] lies in; mu, sigma:
    the class statistics fitted with the affinely aligned priors. What the scan shows is each voxel's tissue
    (``_expected_tissue``) from the classes' likelihoods alone (flat prior); what the template expects is the
    same number from its priors. The template's is registered onto the scan's (``register_deformable``, each
    update smoothed by ``smoothing_mm``), so a subject's wider sulci and larger ventricles move the CSF prior to where the
    fluid is. Voxels that no class explains (beyond ``_OUTLIER_Z`` of every class: lesions) and everything outside
    the brain exert no force: there the scan's image is given the template's values.
    """
    from .preprocessing.alignment import register_deformable

    expected = _expected_tissue(np.asarray(priors, np.float64))
    z = (x[None, :] - mu[:, None]) / sigma[:, None]
    likelihood = np.exp(-0.5 * z**2 - np.log(sigma)[:, None])
    shown = _expected_tissue(likelihood / np.maximum(likelihood.sum(axis=0, keepdims=True), 1e-300))
    outlier = np.abs(z).min(axis=0) > _OUTLIER_Z
    moving = np.where(brain, expected, 0.0)
    fixed = moving.copy()  # outside the brain and at outliers: the template's own values, so no force
    fixed[brain] = np.where(outlier, moving[brain], shown)
    d = register_deformable(fixed.astype(np.float32), moving.astype(np.float32), spacing, smoothing_mm)
    points = np.indices(brain.shape, dtype=np.float32) + d
    return np.stack([ndimage.map_coordinates(np.asarray(c, np.float32), points, order=1, mode="nearest")
                     for c in priors])


_PAIRS = ((0, 1), (0, 2), (1, 2))  # CSF/GM, CSF/WM (ventricle walls), GM/WM
_LOG_SQRT_2PI = 0.5 * np.log(2 * np.pi)


def _log_diff_ndtr(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """log(Phi(u) - Phi(v)) for u > v, accurate in both tails (the upper tail through Phi(-v) - Phi(-u))."""
    upper = v > 0
    hi, lo = np.where(upper, -v, u), np.where(upper, -u, v)
    a, b = log_ndtr(hi), log_ndtr(lo)
    return a + np.log1p(-np.exp(b - a))


def _pair_log_density(x: np.ndarray, mu_a: float, sd_a: float, mu_b: float, sd_b: float, peak: bool
                      ) -> np.ndarray:
    """Log density of a two-class partial-volume voxel at ``x`` (module docstring); ``peak``: relative to the
    density's own peak (at the middle of the two means)."""
    lo, hi = min(mu_a, mu_b), max(mu_a, mu_b)
    s = float(np.sqrt((sd_a**2 + sd_b**2) / 3.0))
    width = max(hi - lo, 1e-3 * s)  # classes with equal means: a Gaussian of width s in effect
    log_density = _log_diff_ndtr((hi - x) / s, (lo - x) / s) - np.log(width)
    if peak:
        half = np.array(width / (2 * s))
        log_density = log_density - (_log_diff_ndtr(half, -half) - np.log(width))
    return log_density


def _component_terms(x: np.ndarray, p: np.ndarray, mu: np.ndarray, sigma: np.ndarray, partial_volume: bool,
                     peak: bool = False, pair_allowed: np.ndarray | None = None) -> np.ndarray:
    """Log weight plus log density of ``x`` per mixture component ([K, N]): the 3 pure classes, then with
    ``partial_volume`` the 3 class pairs. peak: each density measured against its own peak (for a pure class
    exp(-z^2 / 2)) instead of normalised. pair_allowed: [3, N] bool per pair of ``_PAIRS``; where False the
    pair's weight is multiplied by ``PV_OUTSIDE_WEIGHT`` (``boundary_pairs``)."""
    weight = 2.0 * np.log(p) if partial_volume else np.log(p)
    terms = [weight[c] - 0.5 * ((x - mu[c]) / sigma[c]) ** 2 - (0.0 if peak else np.log(sigma[c]) + _LOG_SQRT_2PI)
             for c in range(3)]
    if partial_volume:
        terms += [np.log(2.0) + np.log(p[a]) + np.log(p[b]) + _pair_log_density(x, mu[a], sigma[a], mu[b], sigma[b],
                                                                                 peak)
                  + (0.0 if pair_allowed is None else np.where(pair_allowed[k], 0.0, np.log(PV_OUTSIDE_WEIGHT)))
                  for k, (a, b) in enumerate(_PAIRS)]
    return np.stack(terms)


PV_OUTSIDE_WEIGHT = 1e-3  # a two-tissue mixture away from a boundary of its two tissues: this much less likely


def boundary_pairs(x: np.ndarray, p: np.ndarray, mu: np.ndarray, sigma: np.ndarray, inside: np.ndarray,
                   spacing, radius_mm: float) -> np.ndarray:
    """Where each class pair of ``_PAIRS`` may explain a voxel as partial volume ([3, N] bool over the voxels of
    ``inside``, the same order as ``x``): both classes have a voxel within ``radius_mm`` world mm (at least the
    largest voxel size, so neighbours always count) that the partial-volume mixture's posterior calls pure of
    that class (> 0.5). ``x``, ``p``, ``mu``, ``sigma``: as ``fit_tissue_mixture`` uses and returns them;
    ``inside``: bool mask of ``x``'s voxels in its grid; ``spacing``: that grid's voxel size in mm."""
    terms = _component_terms(x, p, mu, sigma, True)
    posterior = np.exp(terms - logsumexp(terms, axis=0, keepdims=True))
    radius = max(float(radius_mm), float(np.max(spacing)))
    near = []
    for c in range(3):
        pure = np.zeros(inside.shape, bool)
        pure[inside] = posterior[c] > 0.5
        if not pure.any():
            near.append(np.zeros(x.shape, bool))
            continue
        distance = ndimage.distance_transform_edt(~pure, sampling=np.asarray(spacing, np.float64))
        near.append(distance[inside] <= radius + 1e-6)
    return np.stack([near[a] & near[b] for a, b in _PAIRS])


def fit_tissue_mixture(x: np.ndarray, priors: np.ndarray, iterations: int = 8, partial_volume: bool = False
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Class means and standard deviations (each [3]) of intensities ``x`` [N] with per-voxel priors [3, N].

    EM with prior-weighted responsibilities; from the second iteration voxels whose smallest |z| exceeds
    ``_OUTLIER_Z`` get no weight (robust to lesions). With ``partial_volume`` the responsibilities include the
    class pairs' mixtures and each class is fitted from its pure responsibility only. Deterministic.
    """
    x = np.asarray(x, dtype=np.float64)
    p = np.maximum(np.asarray(priors, dtype=np.float64), _PRIOR_FLOOR)
    p = p / p.sum(axis=0, keepdims=True)
    r = p**2 / (p**2).sum(axis=0, keepdims=True) if partial_volume else p
    keep = np.ones(x.shape, bool)
    mu = sigma = None
    for it in range(iterations):
        w = r[:3] * keep
        total = w.sum(axis=1) + 1e-12
        mu = (w * x).sum(axis=1) / total
        sigma = np.sqrt((w * (x - mu[:, None]) ** 2).sum(axis=1) / total)
        sigma = np.maximum(sigma, 1e-3 * (np.abs(mu).max() + 1e-6))
        terms = _component_terms(x, p, mu, sigma, partial_volume)
        r = np.exp(terms - logsumexp(terms, axis=0, keepdims=True))
        keep = np.abs((x - mu[:, None]) / sigma[:, None]).min(axis=0) <= _OUTLIER_Z
    return mu, sigma


def scan_contrast(means: np.ndarray, rule: str = "fluid_brightest") -> str:
    """The scan's contrast (a key of ``CONTRASTS``) from its fitted CSF, GM, WM means (any intensity scale).

    ``rule`` (a key of ``CONTRAST_RULES``): "fluid_brightest" -- fluid brighter than both tissues ->
    "bright_fluid" (T2- or PD-weighted), else "dark_fluid" (T1, FLAIR); "fluid_over_white" -- fluid brighter than
    white matter -> "bright_fluid": T1 and FLAIR put fluid below white matter, T2 and PD above it, and grey
    matter's mean is left out, which an extracted brain mask's edge errors or a PD scan's fluid-grey overlap can
    push above the fluid's (docs/RESULTS.md, "Does a failed brain extraction reach the user?")."""
    csf, gm, wm = (float(m) for m in means)
    if rule not in CONTRAST_RULES:
        raise ValueError(f"contrast rule {rule!r}: choose from {', '.join(CONTRAST_RULES)}")
    return "bright_fluid" if csf > (max(gm, wm) if rule == "fluid_brightest" else wm) else "dark_fluid"


def implausible_tissue_order(means) -> str | None:
    """Why the fitted CSF, GM, WM means (any intensity scale) cannot be a structural brain MR's, or None.

    Grey matter's relaxation times and proton density lie between white matter's and fluid's, so on T1, T2 and PD
    weighting grey matter is between them, and on FLAIR (fluid nulled) it is the brightest: it is darker than both
    fluid and white matter on no clinical contrast. A fit that says so has been taken over by something else -- a
    large bright anomaly absorbed by the central classes (CSF and WM priors), enhancing vessels and choroid plexus
    pulling the CSF class up on a contrast-enhanced T1, or a scan that is not a structural brain MR. Chosen on
    validation heads (docs/RESULTS.md, "Out-of-distribution guard: the tissue fit")."""
    csf, gm, wm = (float(m) for m in means)
    if gm < min(csf, wm):
        return "grey matter darker than both fluid and white matter"
    return None


def hypointense_thickness_mm(tissue_map: np.ndarray, brain: np.ndarray, spacing: tuple[float, float, float],
                             level: float = 2.0, smoothing_mm: float = 0.0) -> float:
    """How thick the thickest region darker than its tissue is: the largest inscribed radius (world mm) of
    ``brain & (map <= -level)``, by the Euclidean distance transform in mm (the brain's outside and the grid's
    edge count as boundary). ``tissue_map``: the signed tissue map (``tissue_outlier_map``), same grid as the bool
    ``brain``; ``spacing``: voxel size in mm; ``smoothing_mm``: Gaussian sigma applied to the map first
    (brain-normalised, so the brain's edge is not pulled towards 0). 0.0 for an empty region.

    Healthy heads' hypointense voxels lie in thin shells (extracerebral fluid where the aligned template expects
    cortex, ventricle rims); a cavity or a large cyst is thick."""
    if not brain.any():
        return 0.0
    scores = smoothed_inside(tissue_map, brain, spacing, smoothing_mm) if smoothing_mm > 0 else tissue_map
    box = bounding_box(brain, (0, 0, 0))
    below = np.pad(brain[box] & (scores[box] <= -level), 1)  # the pad: the grid's edge is a boundary too
    if not below.any():
        return 0.0
    return float(ndimage.distance_transform_edt(below, sampling=np.asarray(spacing, np.float64)).max())


def prior_classes(priors: np.ndarray, brain: np.ndarray, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
                  settings: TissueSettings = TissueSettings()) -> np.ndarray:
    """The tissue the aligned template expects at each brain voxel: 0 = CSF, 1 = GM, 2 = WM (``TISSUES``), the class
    of the largest prior after the tissue map's smoothing (``settings.prior_sigma_mm``); -1 outside ``brain``.
    int8, the grid of ``brain``; ``priors``: [3, *brain.shape] in that grid; ``spacing``: its voxel size (mm).

    Where the template, not the scan, says what a voxel should be: a lesion in white matter stays "white matter"
    however CSF-like it looks (the tissue map's posterior would call it fluid)."""
    out = np.full(brain.shape, -1, np.int8)
    if not brain.any():
        return out
    box, smoothed = _box_priors(priors, brain, spacing, settings)
    inside = brain[box]
    out[box][inside] = np.argmax(np.stack([c[inside] for c in smoothed]), axis=0).astype(np.int8)
    return out


def tissue_outlier_map(data: np.ndarray, brain: np.ndarray, priors: np.ndarray,
                       spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
                       settings: TissueSettings = TissueSettings()) -> np.ndarray:
    """Signed tissue-conditional outlier score (float32, same grid as ``data``; 0 outside ``brain``).

    data: intensities (any scale: bias-corrected or normalised); brain: bool mask; priors: [3, *data.shape]
    template probabilities of CSF, GM, WM in the same grid (they need not sum to 1); spacing: the grid's voxel
    size in mm (for ``settings.prior_sigma_mm``).
    """
    return tissue_outliers(data, brain, priors, spacing, settings)[0]


def tissue_outliers(data: np.ndarray, brain: np.ndarray, priors: np.ndarray,
                    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
                    settings: TissueSettings = TissueSettings()) -> tuple[np.ndarray, np.ndarray | None]:
    """``tissue_outlier_map`` and the fitted class means (CSF, GM, WM; ``data``'s units; None for an empty
    brain), which ``scan_contrast`` reads."""
    out = np.zeros(data.shape, np.float32)
    if not brain.any():
        return out, None
    x = np.asarray(data, dtype=np.float64)[brain]
    box, smoothed = _box_priors(priors, brain, spacing, settings)
    p = _at_voxels(smoothed, brain[box], settings.prior_floor)
    pv = settings.partial_volume
    mu, sigma = fit_tissue_mixture(x, p, partial_volume=pv)
    if settings.deform_mm > 0:
        smoothed = deformed_priors(x, brain[box], smoothed, spacing, mu, sigma, settings.deform_mm)
        p = _at_voxels(smoothed, brain[box], settings.prior_floor)
        mu, sigma = fit_tissue_mixture(x, p, partial_volume=pv)
    if settings.fluid_floor > 0 and scan_contrast(mu, settings.contrast_rule) == "bright_fluid":
        p = p.copy()
        p[0] = np.maximum(p[0], settings.fluid_floor)
        p /= p.sum(axis=0, keepdims=True)
        mu, sigma = fit_tissue_mixture(x, p, partial_volume=pv)
    allowed = (boundary_pairs(x, p, mu, sigma, brain[box], spacing, settings.pv_boundary_mm)
               if pv and settings.pv_boundary_mm > 0 else None)
    terms = _component_terms(x, p, mu, sigma, pv, pair_allowed=allowed)  # log domain: no underflow
    log_mixture = logsumexp(terms, axis=0)
    if settings.class_peak:  # each component against its own peak: the weights sum to 1, so nll >= 0
        nll = -logsumexp(_component_terms(x, p, mu, sigma, pv, peak=True, pair_allowed=allowed), axis=0)
    else:
        log_best = np.max(-np.log(np.sqrt(2 * np.pi) * sigma))  # the densities' largest possible value
        nll = log_best - log_mixture
    if settings.sign_from_prior:  # the sign: against what the template expects here
        expected = (p * mu[:, None]).sum(axis=0)
    else:  # against the pure classes' posterior expectation
        expected = (np.exp(terms[:3] - logsumexp(terms[:3], axis=0)) * mu[:, None]).sum(axis=0)
    out[brain] = (np.sign(x - expected) * np.maximum(nll, 0.0)).astype(np.float32)
    return out, mu
