"""Synthetic heads from whole-head label maps of real subjects (SynthSeg-style domain randomisation).

The label maps (FreeSurfer numbering: brain structures 2-60, CSF 24, extra-cerebral tissues >= 500; e.g. the 20
SynthSeg training maps in ``../shared/data/synthseg_label_maps``) give real anatomical variety; everything
else is random per volume (Billot et al. 2023): a random affine + elastic deformation of the labels, one mean
intensity per label drawn around a contrast family (T1, T2, FLAIR, PD: tissue classes keep their usual order)
or fully at random, per-label texture, partial-volume blur, a smooth multiplicative bias field, resolution
loss along one axis (thick slices), Rician noise and a global scale. The head keeps skull and scalp; the brain
mask (every label < 500 but background) comes with it, so training feeds the model exactly what the
preprocessing makes of a real head. Grid: the label map's own 1 mm grid in canonical RAS+ order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .synth import _smooth_field

__all__ = ["LabelHead", "label_head", "label_map_files", "load_label_map", "write_label_head_dataset", "TISSUE_CLASSES",
           "HOMOLOGUES", "same_intensity_group", "CONTRAST_FAMILIES", "CLINICAL_FAMILIES", "family_in_turn",
           "parse_families"]

CONTRAST_FAMILIES = ("t1", "t2", "flair", "pd", "random")
CLINICAL_FAMILIES = ("t1", "t2", "flair", "pd")  # what a scanner makes; "random" only widens training
# FreeSurfer labels by tissue class; anything else below 500 counts as deep grey matter, >= 500 extra-cerebral
TISSUE_CLASSES = {
    "wm": (2, 7, 16, 28, 41, 46, 60, 85),
    "gm": (3, 8, 17, 18, 42, 47, 53, 54),
    "csf": (4, 5, 14, 15, 24, 43, 44, 72),
}
# right-hemisphere FreeSurfer label -> its left homologue (cerebrum, cerebellum, deep nuclei, vessel, choroid
# plexus, white-matter hypointensities, and the SynthSeg maps' extra pairs 136/163, 137/164): a brain's two sides
# share one intensity per structure, as on a real scan; only the bias field and the noise differ between them
HOMOLOGUES = {41: 2, 42: 3, 43: 4, 44: 5, 46: 7, 47: 8, 49: 10, 50: 11, 51: 12, 52: 13, 53: 17, 54: 18, 57: 25,
              58: 26, 60: 28, 62: 30, 63: 31, 163: 136, 164: 137}
# mean intensity of (CSF, GM, WM, deep GM) per contrast family before per-label jitter
_FAMILY_MEANS = {"t1": (0.2, 0.55, 0.8, 0.65), "t2": (1.0, 0.6, 0.45, 0.5), "flair": (0.1, 0.7, 0.55, 0.6),
                 "pd": (0.85, 0.75, 0.6, 0.7)}


@dataclass
class LabelHead:
    """One synthetic head: ``data`` (float32), ``brain`` (bool brain mask), ``labels`` (int16, deformed; lesion
    labels >= 900), ``affine`` (voxel -> world RAS mm), all in one canonical RAS+ grid, and its parameters."""

    data: np.ndarray
    brain: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    params: dict = field(default_factory=dict)
    lesion: np.ndarray | None = None  # ground truth of an inserted lesion (bool), None for a healthy head


def label_map_files(directory: str | Path) -> list[Path]:
    """The label maps (``*.nii``/``*.nii.gz``) of a directory, sorted by name; ValueError if there are none."""
    files = sorted(p for p in Path(directory).iterdir() if p.name.endswith((".nii", ".nii.gz")))
    if not files:
        raise ValueError(f"{directory}: no label maps (.nii, .nii.gz) found")
    return files


@lru_cache(maxsize=4)
def load_label_map(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Label map (int16, canonical RAS+ order) cropped to the head + 4 voxels, and its voxel -> RAS affine."""
    from .io import read_volume

    vol = read_volume(path, allow_constant=True)
    labels = np.rint(vol.data).astype(np.int16)
    idx = np.argwhere(labels > 0)
    lo = np.maximum(idx.min(0) - 4, 0)
    hi = np.minimum(idx.max(0) + 5, labels.shape)
    affine = vol.affine.copy()
    affine[:3, 3] = vol.affine[:3, :3] @ lo + vol.affine[:3, 3]
    return labels[tuple(slice(a, b) for a, b in zip(lo, hi))], affine


def _deform_labels(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random rotation (+-10 deg), scale (0.9-1.1), shift (+-5 mm) and elastic warp (<= ~3 mm), nearest label."""
    shape = labels.shape
    angles = np.deg2rad(rng.uniform(-10, 10, 3))
    c, s = np.cos(angles), np.sin(angles)
    rot = (np.array([[1, 0, 0], [0, c[0], -s[0]], [0, s[0], c[0]]])
           @ np.array([[c[1], 0, s[1]], [0, 1, 0], [-s[1], 0, c[1]]])
           @ np.array([[c[2], -s[2], 0], [s[2], c[2], 0], [0, 0, 1]]))
    matrix = rot @ np.diag(rng.uniform(0.9, 1.1, 3))
    centre = (np.array(shape) - 1) / 2.0
    offset = centre - matrix @ centre + rng.uniform(-5, 5, 3)
    coords = (matrix @ np.indices(shape, dtype=np.float32).reshape(3, -1)).astype(np.float32)
    coords += offset[:, None].astype(np.float32)
    for axis in range(3):
        coords[axis] += _smooth_field(rng, shape, 5, 1.5).ravel()
    norm = [2.0 * coords[a] / (shape[a] - 1) - 1.0 for a in range(3)]
    grid = torch.from_numpy(np.stack(norm[::-1], axis=-1).reshape(1, *shape, 3))
    x = torch.from_numpy(labels.astype(np.float32))[None, None]
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=True)[0, 0].numpy().astype(
        np.int16)


def same_intensity_group(label: int) -> int | str:
    """Labels that a real scan shows with one intensity: every CSF space ("csf": one fluid, ventricles and sulci
    alike) and a structure with its other-hemisphere homologue (``HOMOLOGUES``: the left label); else itself."""
    return "csf" if label in TISSUE_CLASSES["csf"] else HOMOLOGUES.get(label, label)


def _representatives(labels, family: str) -> dict[int, int]:
    """Each label -> the first of ``labels`` (in their order) in its ``same_intensity_group``, whose intensity and
    texture it takes; itself in the "random" family (every label drawn on its own)."""
    if family == "random":
        return {lab: lab for lab in labels}
    first: dict = {}
    return {lab: first.setdefault(same_intensity_group(lab), lab) for lab in labels}


def _label_means(present: np.ndarray, family: str, rng: np.random.Generator) -> tuple[dict[int, float], dict]:
    """One mean intensity per (anatomical) label: around its tissue class' mean for a contrast family
    (x0.9-1.1 per class, x0.95-1.05 per label: classes keep their order; the labels of one
    ``same_intensity_group`` share the first one's), or uniform in [0.02, 1] per label for "random" (SynthSeg's
    full randomisation, a training augmentation); extra-cerebral labels are random in every family. Also returns
    the class means (csf, gm, wm, deep)."""
    means = {}
    class_of = {lab: name for name, labs in TISSUE_CLASSES.items() for lab in labs}
    base = dict(zip(("csf", "gm", "wm", "deep"), _FAMILY_MEANS.get(family, (0.5, 0.5, 0.5, 0.5))))
    jitter = {name: rng.uniform(0.9, 1.1) for name in base}
    for lab in present:
        lab = int(lab)
        if lab == 0 or lab >= 900:  # background; lesion labels get theirs from synth_lesions
            continue
        if family == "random" or lab >= 500:
            means[lab] = float(rng.uniform(0.02, 1.0))
        else:
            name = class_of.get(lab, "deep")
            means[lab] = float(base[name] * jitter[name] * rng.uniform(0.95, 1.05))
    # every label was drawn all the same, so the rest of the head keeps its draws
    means = {lab: means[first] for lab, first in _representatives(means, family).items()}
    return means, {name: base[name] * jitter[name] for name in base}


def label_head(path: str | Path, seed: int, family: str | None = None, slice_thickness: float | None = None,
               lesion: str | None = None, normal_variants: bool = False) -> LabelHead:
    """A synthetic head from the label map at ``path`` (deterministic per seed).

    family: contrast family (default: drawn); slice_thickness: mm of resolution loss along a random axis
    (default: drawn, 1-6 mm, half of the heads keep 1 mm); lesion: a kind of ``synth_lesions.LESION_KINDS``
    ("any": drawn) inserted before the intensities are drawn (``LabelHead.lesion`` is its mask);
    normal_variants: draw the periventricular rim and the choroid plexus (``synth_variants``; normal anatomy, not
    part of the lesion mask) from their own random stream, so the rest of the head is the same without them
    (off by default: heads made before they existed stay reproducible).
    """
    from .synth_lesions import LESION_KINDS, insert_lesion, lesion_means
    from .synth_variants import insert_normal_variants, variant_means

    rng = np.random.default_rng(seed)
    labels0, affine = load_label_map(str(path))
    labels = _deform_labels(labels0, rng)
    family = family or str(rng.choice(CONTRAST_FAMILIES))
    if family not in CONTRAST_FAMILIES:
        raise ValueError(f"unknown contrast family {family!r}; choose from {', '.join(CONTRAST_FAMILIES)}")
    means, tissue = _label_means(np.unique(labels), family, rng)  # of the healthy anatomy
    lesion_params: dict = {}
    if lesion is not None:
        lesion_rng = np.random.default_rng([seed, 911])  # its own stream: the head's other draws stay as they were
        kind = str(lesion_rng.choice(LESION_KINDS)) if lesion == "any" else lesion
        labels, lesion_params = insert_lesion(labels, kind, lesion_rng)
    present = np.unique(labels)
    extra = lesion_means(family, tissue, lesion_rng, lesion_params.get("stage")) if lesion is not None else {}
    variants: dict = {}
    variant_params: dict = {}
    if normal_variants:
        variant_rng = np.random.default_rng([seed, 313])
        labels, variant_params = insert_normal_variants(labels, affine, variant_rng)  # where lesions left tissue
        variants = variant_means(family, tissue, variant_rng)
    lut = np.zeros(max(int(present.max()), *means, *extra, *variants) + 1, np.float32)
    stds = np.zeros_like(lut)
    for lab, m in means.items():
        lut[lab] = m
        stds[lab] = m * rng.uniform(0.01, 0.06)
    for lab, first in _representatives(means, family).items():  # one texture per intensity group, like its mean
        stds[lab] = stds[first]
    for lab, m in extra.items():  # from the lesion's own stream
        lut[lab] = m
        stds[lab] = m * lesion_rng.uniform(0.02, 0.08)
    for lab, m in variants.items():  # from the variants' own stream
        lut[lab] = m
        stds[lab] = m * variant_rng.uniform(0.01, 0.06)
    image = lut[labels] + stds[labels] * rng.normal(0, 1, labels.shape).astype(np.float32)
    blur = float(rng.uniform(0.3, 1.2))  # partial volume
    image = ndimage.gaussian_filter(image, blur)
    image *= np.exp(_smooth_field(rng, labels.shape, 4, 0.15))  # bias field, ~+-30 %
    if slice_thickness is None:
        slice_thickness = 1.0 if rng.random() < 0.5 else float(rng.uniform(2.0, 6.0))
    axis = int(rng.integers(3))
    if slice_thickness > 1.0:
        image = ndimage.gaussian_filter1d(image, slice_thickness / 2.355, axis=axis)
    level = float(np.mean(list(means.values())))  # anatomy's mean intensity: a lesion does not change the noise
    sigma = float(rng.uniform(0.005, 0.04)) * level
    image = np.sqrt((image + rng.normal(0, sigma, image.shape)) ** 2 + rng.normal(0, sigma, image.shape) ** 2)
    image = (image * np.float32(10 ** rng.uniform(0, 3))).astype(np.float32)
    lesion_mask = labels >= 900
    brain = ((labels > 0) & (labels < 500)) | lesion_mask
    brain = ndimage.binary_fill_holes(brain)
    params = {"label_map": Path(path).name, "seed": seed, "contrast_family": family, "blur_sigma_voxels": blur,
              "slice_thickness_mm": slice_thickness, "thick_axis": axis if slice_thickness > 1.0 else None,
              "noise_sigma": sigma, "normal_variants": variant_params or None, **lesion_params}
    return LabelHead(data=image, brain=brain, labels=labels, affine=affine, params=params, lesion=lesion_mask)


def family_in_turn(i: int, n_files: int, families: tuple[str, ...]) -> str | None:
    """Contrast family of head i when heads take ``n_files`` label maps in turn: the families in turn, shifted
    by one whenever the (map, family) pairs would repeat, so that a map does not always get the same family
    (None: drawn per head)."""
    if not families:
        return None
    return families[(i + i // math.lcm(max(n_files, 1), len(families))) % len(families)]


def parse_families(text: str) -> tuple[str, ...]:
    """"any" -> () (drawn per head, "random" included), "clinical" -> CLINICAL_FAMILIES, else a comma list of
    CONTRAST_FAMILIES; ValueError naming the unknown ones."""
    if text == "any":
        return ()
    if text == "clinical":
        return CLINICAL_FAMILIES
    names = tuple(f.strip() for f in text.split(",") if f.strip())
    unknown = sorted(set(names) - set(CONTRAST_FAMILIES))
    if unknown or not names:
        raise ValueError(f"unknown contrast family {', '.join(unknown) or '(none given)'} for label-map heads; "
                         f"choose any, clinical, or from {', '.join(CONTRAST_FAMILIES)}")
    return names


def write_label_head_dataset(out: Path | str, files: list[Path], n: int, anomalies: str = "any",
                             normal_fraction: float = 0.0, slice_thickness: float | None = None, seed: int = 0,
                             int16: bool = False, families: tuple[str, ...] = (), normal_variants: bool = False,
                             log=lambda m: None) -> list[dict]:
    """``out/scans``, ``out/masks`` and ``out/synth.json`` of ``n`` whole heads (with skull) made from the label
    maps ``files`` in turn (head i: ``files[i % len(files)]``, seed + i), each normal or with one disease-like
    lesion (``anomalies``: none, any, or a comma list of ``synth_lesions.LESION_KINDS``; mask = the lesion).
    ``families``: contrast families taken in turn (``family_in_turn``); () draws one per head;
    ``normal_variants``: see ``label_head``."""
    from .export import write_json
    from .synth import write_synth_case
    from .synth_lesions import LESION_KINDS

    if n < 1:
        raise ValueError("--n must be at least 1")
    kinds = list(LESION_KINDS) if anomalies == "any" else [k.strip() for k in anomalies.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(LESION_KINDS)) if anomalies != "none" else []
    if unknown or not kinds:
        raise ValueError(f"unknown lesion kind(s) {', '.join(unknown) or '(none given)'} for label-map heads; "
                         f"choose from none, any, {', '.join(LESION_KINDS)}")
    out = Path(out)
    records = []
    for i in range(n):
        s = seed + i
        rng = np.random.default_rng([s, 17])
        normal = anomalies == "none" or rng.random() < normal_fraction
        kind = None if normal else str(rng.choice(kinds))
        head = label_head(files[i % len(files)], s, family=family_in_turn(i, len(files), families),
                          slice_thickness=slice_thickness, lesion=kind, normal_variants=normal_variants)
        stem = f"head_{s:06d}"
        write_synth_case(out, stem, head.data, head.lesion, head.affine, int16)
        records.append({"stem": stem, "normal": normal, **head.params})
        log(f"{stem}: {head.params['label_map']}, {head.params['contrast_family']}, {kind or 'normal'}")
    write_json(out / "synth.json", {"generator": "napari_uad.synth_labels (whole heads from label maps)",
                                    "label_maps": [p.name for p in files], "cases": records})
    return records
