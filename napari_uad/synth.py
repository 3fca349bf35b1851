"""Synthetic brain MR: healthy volumes from the MNI152 2009 template and tissue maps (shipped with nilearn),
and MOOD-toy-style anomalies with exact ground-truth masks.

Healthy generator (SynthSeg-style domain randomisation): random affine + smooth elastic deformation of the
template and its GM/WM/CSF maps (CSF = brain - GM - WM), random tissue contrast (T1-, T2-, FLAIR-, PD-like or
fully random), per-tissue texture, smooth multiplicative bias field, Rician noise, blur or thick-slice
resolution loss, random global intensity scale. Skull-stripped: background is 0. World coordinates: RAS mm
(MNI space, cropped around the brain).

Anomaly generator: spheres, cubes, tumour-like lesions (dark core, bright rim, oedema), several small bright
blobs, irregular shapes; bright or dark relative to the brain's own intensity statistics. The mask is exactly
the set of voxels whose value was changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .preprocessing.template import load_atlas

__all__ = ["CONTRASTS", "ANOMALY_KINDS", "SynthCase", "load_atlas", "healthy_volume", "insert_anomaly",
           "synth_case", "bright_ball", "dark_ball"]

CONTRASTS = ("t1", "t2", "flair", "pd", "random")
ANOMALY_KINDS = ("sphere", "cube", "tumour", "blobs", "irregular")
# mean intensity of (CSF, GM, WM) per contrast, before jitter
_TISSUE_MEANS = {"t1": (0.25, 0.55, 0.8), "t2": (1.0, 0.6, 0.45), "flair": (0.15, 0.7, 0.55),
                 "pd": (0.8, 0.75, 0.6)}


def _smooth_field(rng: np.random.Generator, shape, coarse: int, amplitude: float) -> np.ndarray:
    """Smooth random field: normal noise on a coarse grid, trilinearly upsampled to ``shape``."""
    small = torch.from_numpy(rng.normal(0.0, amplitude, (1, 1, coarse, coarse, coarse)).astype(np.float32))
    return F.interpolate(small, size=tuple(shape), mode="trilinear", align_corners=True)[0, 0].numpy()


def _deform(atlas: dict, rng: np.random.Generator) -> dict:
    """Random affine (rotation +-8 deg, scale 0.9-1.1, shift +-4 mm) + elastic (<= ~3 mm) warp of all maps."""
    shape = atlas["brain"].shape
    angles = np.deg2rad(rng.uniform(-8, 8, 3))
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rot = (np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]]) @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
           @ np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]]))
    matrix = rot @ np.diag(rng.uniform(0.9, 1.1, 3))
    centre = (np.array(shape) - 1) / 2.0
    offset = centre - matrix @ centre + rng.uniform(-4, 4, 3)
    grid = np.indices(shape, dtype=np.float32).reshape(3, -1)
    coords = (matrix @ grid).astype(np.float32) + offset[:, None].astype(np.float32)
    for axis in range(3):
        coords[axis] += _smooth_field(rng, shape, 5, 1.5).ravel()
    # trilinear sampling of all maps at once: grid_sample wants (x, y, z) = (last, middle, first) axis, in [-1, 1]
    norm = [2.0 * coords[a] / (shape[a] - 1) - 1.0 for a in range(3)]
    grid_t = torch.from_numpy(np.stack(norm[::-1], axis=-1).reshape(1, *shape, 3))
    names = ("t1", "gm", "wm", "brain")
    stack = torch.from_numpy(np.stack([atlas[n] for n in names])[None])
    warped = F.grid_sample(stack, grid_t, mode="bilinear", padding_mode="zeros", align_corners=True)[0].numpy()
    return dict(zip(names, warped))


@dataclass
class SynthCase:
    """One synthetic scan: ``data`` (float32, voxel order of ``affine``), ``mask`` (uint8 ground truth, all
    zero for a normal scan), ``affine`` (voxel -> world RAS mm) and the parameters that made it."""

    data: np.ndarray
    mask: np.ndarray
    affine: np.ndarray
    params: dict = field(default_factory=dict)


def healthy_volume(seed: int, contrast: str | None = None, slice_thickness: float = 1.0) -> SynthCase:
    """A healthy, skull-stripped synthetic brain (1 mm, or 1 x 1 x ``slice_thickness`` mm)."""
    rng = np.random.default_rng(seed)
    atlas = load_atlas()
    warped = _deform(atlas, rng)
    brain = warped["brain"] > 0.5
    gm = np.clip(warped["gm"], 0, 1)
    wm = np.clip(warped["wm"], 0, 1)
    csf = np.clip(warped["brain"] - gm - wm, 0, 1)
    contrast = contrast or str(rng.choice(CONTRASTS))
    if contrast not in CONTRASTS:
        raise ValueError(f"unknown contrast {contrast!r}; choose from {', '.join(CONTRASTS)}")
    if contrast == "t1" and rng.random() < 0.5:  # the real template's T1 texture, gamma-jittered
        image = np.clip(warped["t1"], 0, None) ** rng.uniform(0.7, 1.4)
        means = None
    else:
        base = rng.uniform(0.05, 1.0, 3) if contrast == "random" else np.array(_TISSUE_MEANS[contrast])
        means = base * rng.uniform(0.85, 1.15, 3)
        texture = ndimage.gaussian_filter(rng.normal(0, 1, brain.shape).astype(np.float32), 1.0)
        image = sum(p * m for p, m in zip((csf, gm, wm), means)) * (1 + rng.uniform(0.02, 0.08) * texture)
    image = image.astype(np.float32)
    blur = rng.uniform(0, 1.0)
    if blur > 0.3:
        image = ndimage.gaussian_filter(image, blur)
    image *= np.exp(_smooth_field(rng, brain.shape, 4, 0.12))  # bias field, ~+-25 %
    sigma_rel = rng.uniform(0.005, 0.03)
    sigma = sigma_rel * float(image[brain].mean())
    noisy = np.sqrt((image + rng.normal(0, sigma, image.shape)) ** 2 + rng.normal(0, sigma, image.shape) ** 2)
    image = np.where(brain, noisy, 0.0).astype(np.float32) * np.float32(10 ** rng.uniform(0, 3))
    affine = atlas["affine"].copy()
    if slice_thickness > 1.0:
        step = int(round(slice_thickness))
        image = ndimage.gaussian_filter1d(image, step / 2.355, axis=2)[:, :, ::step]
        brain = brain[:, :, ::step]
        image[~brain] = 0.0
        affine[:3, 2] *= step
    params = {"seed": seed, "contrast": contrast, "tissue_means": None if means is None else means.tolist(),
              "blur_sigma_voxels": blur if blur > 0.3 else 0.0, "noise_sigma_rel": sigma_rel,
              "slice_thickness_mm": float(max(1.0, slice_thickness))}
    return SynthCase(data=image, mask=np.zeros(image.shape, np.uint8), affine=affine, params=params)


def _ball(shape, centre, radii) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)) <= 1.0


def _central_ball(data: np.ndarray, fraction: float, seed: int, level) -> tuple[np.ndarray, np.ndarray]:
    """(copy of the skull-stripped ``data`` (brain = data > 0) whose central ``fraction`` of brain voxels, by
    distance from the brain's centroid in voxels, is a textured ball at ``level(brain intensities)``, its mask)."""
    out = np.asarray(data, dtype=np.float32).copy()
    brain = out > 0
    r = np.sqrt(((np.indices(brain.shape) - np.argwhere(brain).mean(0)[:, None, None, None]) ** 2).sum(0))
    ball = brain & (r < np.quantile(r[brain], fraction))
    noise = np.random.default_rng(seed).standard_normal(int(ball.sum()))
    value = level(out[brain])
    out[ball] = np.maximum(value * (1 + 0.1 * noise), 1e-3 * value)  # stays > 0: still brain when stripped
    return out, ball


def bright_ball(data: np.ndarray, fraction: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A gross anomaly for the out-of-distribution guard: (copy of the skull-stripped ``data`` (brain = data > 0)
    whose central ``fraction`` of brain voxels, by distance from the brain's centroid in voxels, is replaced by a
    textured ball at 1.8 x the brain's 99th intensity percentile, its mask). ``data`` is not changed."""
    return _central_ball(data, fraction, seed, lambda brain: 1.8 * np.percentile(brain, 99))


def dark_ball(data: np.ndarray, fraction: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """:func:`bright_ball`'s dark twin: the ball at the brain's 1st intensity percentile (fluid-dark on T1 and
    FLAIR, darker than white matter on T2: a cavity, a large cyst, a haematoma on T2)."""
    return _central_ball(data, fraction, seed, lambda brain: np.percentile(brain, 1))


def insert_anomaly(case: SynthCase, seed: int, kind: str | None = None, brain: np.ndarray | None = None
                   ) -> SynthCase:
    """Insert one anomaly into a healthy case; returns a new case whose mask marks every changed voxel.

    ``brain``: where the anomaly may go (default: the non-zero voxels of a skull-stripped case)."""
    rng = np.random.default_rng(seed)
    kind = kind or str(rng.choice(ANOMALY_KINDS))
    if kind not in ANOMALY_KINDS:
        raise ValueError(f"unknown anomaly {kind!r}; choose from {', '.join(ANOMALY_KINDS)}")
    data = case.data.copy()
    brain = data > 0 if brain is None else brain
    spacing = np.sqrt((case.affine[:3, :3] ** 2).sum(0))
    values = data[brain]
    mean, std = float(values.mean()), float(values.std())
    noise = lambda n: rng.normal(0, 0.1 * std, n)  # noqa: E731 - lesion texture
    interior = ndimage.binary_erosion(brain, iterations=4)
    candidates = np.argwhere(interior if interior.any() else brain)
    centre = candidates[rng.integers(len(candidates))]
    radius_mm = rng.uniform(4, 14)
    radii = radius_mm / spacing
    sign = 1.0 if rng.random() < 0.6 else -1.0
    level = mean + sign * rng.uniform(1.5, 3.0) * std
    new = np.full(data.shape, np.nan, np.float32)
    if kind == "sphere":
        region = _ball(data.shape, centre, radii)
        new[region] = level
    elif kind == "cube":
        half = np.maximum(1, np.round(radii * 0.85)).astype(int)
        region = np.zeros(data.shape, bool)
        region[tuple(slice(max(0, c - h), c + h + 1) for c, h in zip(centre, half))] = True
        new[region] = level
    elif kind == "tumour":
        wobble = 1.0 + 0.15 * _smooth_field(rng, data.shape, 6, 1.0)
        grids = np.ogrid[tuple(slice(0, s) for s in data.shape)]
        dist = np.sqrt(sum(((g - c) * s) ** 2 for g, c, s in zip(grids, centre, spacing))) / wobble
        r_core, r_rim, r_oedema = radius_mm * 0.45, radius_mm * 0.7, radius_mm
        new[dist <= r_oedema] = mean + rng.uniform(1.0, 1.8) * std
        new[dist <= r_rim] = mean + rng.uniform(2.0, 3.0) * std
        new[dist <= r_core] = max(mean - rng.uniform(1.5, 2.5) * std, 0.05 * mean)
    elif kind == "blobs":
        for _ in range(int(rng.integers(3, 9))):
            c = candidates[rng.integers(len(candidates))]
            new[_ball(data.shape, c, rng.uniform(1.5, 4.0) / spacing)] = mean + rng.uniform(1.5, 3.0) * std
    else:  # irregular: thresholded smooth noise inside a ball
        field = _smooth_field(rng, data.shape, 12, 1.0)
        ball = _ball(data.shape, centre, radii)
        region = ball & (field > np.quantile(field[ball], 0.4))
        new[region] = level
    region = np.isfinite(new) & brain
    if not region.any():  # a dark/bright region entirely outside the brain cannot happen, but be safe
        return insert_anomaly(case, seed + 1, kind, brain)
    lesion = np.clip(new[region] + noise(int(region.sum())), 0.02 * mean, None).astype(np.float32)
    same = lesion == data[region]
    lesion[same] += np.float32(1e-3 * std)  # every masked voxel really changes
    data[region] = lesion
    mask = ((data != case.data) | (case.mask > 0)).astype(np.uint8)
    params = {**case.params, "anomaly": kind, "anomaly_seed": seed, "anomaly_centre_voxel": centre.tolist(),
              "anomaly_radius_mm": radius_mm, "anomaly_sign": "bright" if sign > 0 else "dark",
              "anomaly_voxels": int(mask.sum())}
    return SynthCase(data=data, mask=mask, affine=case.affine, params=params)


def synth_case(seed: int, anomaly: str | None = "any", contrast: str | None = None,
               slice_thickness: float = 1.0, n_anomalies: int = 1) -> SynthCase:
    """Healthy volume for ``seed`` with ``n_anomalies`` anomalies (none if ``anomaly`` is None; "any" = a random
    kind each). The mask marks every voxel changed by any of them."""
    case = healthy_volume(seed, contrast, slice_thickness)
    if anomaly is None:
        return case
    kinds = []
    for k in range(n_anomalies):
        case = insert_anomaly(case, seed + 7919 * (k + 1), None if anomaly == "any" else anomaly)
        kinds.append(case.params["anomaly"])
    if n_anomalies > 1:
        case.params["anomalies"] = kinds
    return case


def case_volume(case: SynthCase):
    """The case as a :class:`napari_uad.io.Volume` (MR), as if read from a file."""
    from .io import Volume

    return Volume.from_array(case.data, case.affine, modality="MR")


def volume_with_anomaly(volume, seed: int, brain: np.ndarray) -> tuple:
    """A copy of ``volume`` (a :class:`napari_uad.io.Volume`) with one toy anomaly (:func:`insert_anomaly`, seed
    ``seed``) inside ``brain`` (bool, canonical grid): (copy, anomaly mask (bool, canonical grid), the anomaly's
    parameters). ``volume`` is not changed."""
    from .io import Volume

    case = insert_anomaly(SynthCase(volume.data, np.zeros(volume.shape, np.uint8), volume.affine), seed, brain=brain)
    return Volume.from_array(case.data, case.affine, modality=volume.modality), case.mask > 0, case.params


def case_volume_mask(case: SynthCase) -> np.ndarray:
    """The case's ground-truth mask (bool) in the canonical grid of :func:`case_volume`."""
    from .io import Volume

    return Volume.from_array(case.mask, case.affine, allow_constant=True).data > 0


def _choices(text: str, allowed: tuple[str, ...], what: str) -> list[str] | None:
    if text in ("any", ""):
        return None
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = sorted(set(names) - set(allowed))
    if unknown:
        raise ValueError(f"unknown {what} {', '.join(unknown)}; choose from any, {', '.join(allowed)}")
    return names


def write_synth_case(out: Path, stem: str, data: np.ndarray, mask: np.ndarray, affine: np.ndarray,
                     int16: bool = False) -> None:
    """``out/scans/stem.nii.gz`` (float32, or int16 scaled to 0..4000) and ``out/masks/stem.nii.gz`` (uint8)."""
    from .io import write_image_file

    (out / "scans").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    if int16:
        data = np.round(data * (4000.0 / data.max())).astype(np.int16)
    write_image_file(out / "scans" / f"{stem}.nii.gz", data, affine)
    write_image_file(out / "masks" / f"{stem}.nii.gz", np.asarray(mask, np.uint8), affine)


def write_synth_dataset(out: Path | str, n: int, anomalies: str = "any", contrast: str = "any",
                        normal_fraction: float = 0.0, slice_thickness: float = 1.0, seed: int = 0,
                        lesions: int = 1, int16: bool = False, log=lambda m: None) -> list[dict]:
    """Write ``out/scans/S.nii.gz``, ``out/masks/S.nii.gz`` and ``out/synth.json``; scan i uses seed + i.

    ``int16`` stores scans as integers scaled to 0..4000 (as scanners do; smaller files)."""
    from .export import write_json

    if n < 1 or lesions < 1:
        raise ValueError("--n and --lesions must be at least 1")
    kinds = None if anomalies == "none" else _choices(anomalies, ANOMALY_KINDS, "anomaly")
    contrasts = _choices(contrast, CONTRASTS, "contrast")
    out = Path(out)
    records = []
    for i in range(n):
        s = seed + i
        rng = np.random.default_rng([s, 17])
        c = None if contrasts is None else str(rng.choice(contrasts))
        normal = anomalies == "none" or rng.random() < normal_fraction
        kind = None if normal else ("any" if kinds is None else str(rng.choice(kinds)))
        case = synth_case(s, kind, c, slice_thickness, n_anomalies=lesions)
        stem = f"synth_{s:05d}"
        write_synth_case(out, stem, case.data, case.mask, case.affine, int16)
        records.append({"stem": stem, "normal": normal, **case.params})
        log(f"{stem}: {case.params['contrast']}, {case.params.get('anomaly', 'normal')}")
    write_json(out / "synth.json", {"generator": "napari_uad.synth (MNI152 2009 template, nilearn)",
                                    "cases": records})
    return records
