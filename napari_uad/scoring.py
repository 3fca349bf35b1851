"""Slice-by-slice anomaly scoring of a volume with a ceVAE (maps in the volume's canonical voxel grid).

Pipeline per volume: the preprocessing steps (``preprocessing``: brain extraction, bias correction,
normalisation, alignment to the card's template space) -> axial slices of the model grid resampled to the
model input (``SliceGeometry``) -> batched model passes -> maps resampled back to the scan's own canonical grid,
zero outside the brain mask.

Maps (``shared/METHODS.md``), per pixel, from one deterministic forward pass with z = mu_z:
    residual = |x - mu_x|          U = 0.5 log(2 pi sigma_x^2)        E = (x - mu_x)^2 / (2 sigma_x^2)
    nll = U + E                    signed_residual = x - mu_x         z = (x - mu_x) / sigma_x  (E = z^2 / 2)
(signed maps: positive where the scan is brighter than the model expects, as lesions on FLAIR/T2 are)
and from SmoothGrad (mean of |gradient| over n noisy copies of x, each slice with its own seeded noise,
then a Gaussian filter against checkerboard artefacts):
    kl_grad = |d KL / d x|         elbo_grad = |d (KL + Rec) / d x| (Rec: Gaussian NLL summed over pixels)
    combi = residual * kl_grad
and, without the model, ``tissue``: each voxel against its own tissue class in the same scan (``tissue``; the
mask's voxels at a skull-stripped scan's background value, ``mask.background_holes``, are no tissue: 0);
``asymmetry``: each voxel against its mirror across the midsagittal plane in the same scan (``asymmetry``);
``combined``: the mean healthy-quantile surprise of the maps the card's calibration chose (``combined``).
Slice scores: KL + Rec (nats; Rec summed over the slice's foreground pixels in model space). Volume score:
mean of the top-k slice scores. No map is normalised over a batch, so results do not depend on batch size.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable, Generator, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch

from .devices import free_memory_bytes, is_out_of_memory, resolve_device
from .io import Volume
from .mask import background_holes, dice as mask_dice
from .model import CeVAE, gaussian_nll, kl_per_slice
from .model_card import ModelCard, settings_key
from .preprocessing import PipelineOptions, PreparedVolume, iter_prepare_volume
from .slices import SliceGeometry, gaussian_blur2d
from .combined import (COMBINED, all_components, combine, combined_components, dark_components, dark_opening_mm,
                       tissue_tables)
from .postprocess import ball_opener, median_filter_map, median_footprint
from .tissue import hypointense_thickness_mm, prior_classes, scan_contrast, tissue_outliers
from .asymmetry import asymmetry_map

__all__ = ["default_maps", "DEFAULT_MAPS", "GRADIENT_MAPS", "MAP_NAMES", "MODEL_FREE_MAPS", "Progress", "ScoreResult", "Scorer", "ScoringCancelled",
           "parse_maps"]

MAP_NAMES: tuple[str, ...] = ("residual", "signed_residual", "U", "E", "z", "nll", "tissue", "asymmetry", COMBINED,
                               "kl_grad", "elbo_grad", "combi")
MODEL_FREE_MAPS: tuple[str, ...] = ("tissue", "asymmetry", COMBINED)
"""Not a model output: ``tissue`` from the scan and the aligned template alone (``napari_uad.tissue``),
``asymmetry`` from the scan and its mirror across the aligned template's midsagittal plane
(``napari_uad.asymmetry``),
``combined`` from other maps and the card's calibration (``napari_uad.combined``)."""
GRADIENT_MAPS: tuple[str, ...] = ("kl_grad", "elbo_grad", "combi")
"""SmoothGrad maps: ~80 % of the CPU time and below chance on the held-out set (docs/RESULTS.md): only when asked."""
DEFAULT_MAPS: tuple[str, ...] = tuple(m for m in MAP_NAMES if m not in GRADIENT_MAPS)
_REFERENCE_SIZE = 128  # grad_smoothing_sigma is given in pixels at this input size


def default_maps(card: ModelCard) -> tuple[str, ...]:
    """The maps a model writes unless asked otherwise: ``DEFAULT_MAPS`` less ``combined`` when its card defines
    none, and, when its card holds a healthy-quantile calibration, less the maps that calibration lacks (a card
    calibrated before a map existed)."""
    cal = card.calibration
    maps = [m for m in DEFAULT_MAPS if m != COMBINED or combined_components(cal)]
    if "levels" in cal:
        maps = [m for m in maps if m in cal.get("maps", {})]
    return tuple(maps)


class ScoringCancelled(Exception):
    """Raised by :meth:`Scorer.score` when the cancel flag is set; nothing is returned."""


def parse_maps(text: str | Iterable[str] | None) -> tuple[str, ...]:
    """'residual,E' or an iterable of names -> validated tuple in canonical order; None -> all maps."""
    if text is None:
        return MAP_NAMES
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    unknown = sorted(set(names) - set(MAP_NAMES))
    if unknown or not names:
        raise ValueError(f"unknown map(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(MAP_NAMES)}")
    return tuple(n for n in MAP_NAMES if n in names)


@dataclass
class Progress:
    """Progress of one scoring run: ``done`` of ``total`` axial slices, or a preprocessing step.

    stage: "model" while slices are scored, else the name of the preprocessing step about to run.
    """

    done: int
    total: int
    elapsed_s: float
    batch_size: int
    device: str
    stage: str = "model"

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0

    @property
    def eta_s(self) -> float | None:
        return None if self.done == 0 else self.elapsed_s / self.done * (self.total - self.done)


@dataclass
class ScoreResult:
    """Maps and scores of one volume.

    maps: name -> float32 array in the volume's canonical grid (i, j, k), zero outside ``mask``.
    mask: brain mask used (canonical grid).
    slice_scores: per canonical axial slice k, KL + Rec in nats (NaN where the slice has no brain);
        ``slice_kl`` and ``slice_rec`` are its parts. When the scan was aligned to a template, slices are cut
        in the template grid and each canonical k gets the highest-scoring template slice through it.
    volume_score: mean of the top-k slice scores (of the model grid's slices).
    preprocessing: the records of the preprocessing steps (``PreparedVolume.steps``).
    contrast: the scan's contrast recognised from its tissue fit (``tissue.scan_contrast``: "dark_fluid" or
        "bright_fluid"), which picks the card's operating point and the combined map's healthy tables; None where
        the tissue map was not computed.
    tissue_means: the tissue fit's CSF, GM and WM means (standardised intensity units) that ``contrast`` was
        read from, which the out-of-distribution guard checks for an order no MR contrast has
        (``tissue.implausible_tissue_order``); None where the tissue map was not computed.
    hypointense_mm: how thick (largest inscribed radius, world mm) the thickest region darker than its tissue is
        (``tissue.hypointense_thickness_mm``), which the guard checks for a large dark anomaly that the detection
        map does not score; None where the tissue map was not computed.
    sequence: the MR sequence the scan declares (``volume.metadata["sequence"]``: DICOM header, BIDS name or the
        user; a key of ``sequence.SEQUENCES``), None where it declares none.
    settings: the key of the card's per-scan settings used (``model_card.settings_key``): the declared sequence
        where the card has settings for it, else ``contrast``; operating points, combined-map components and
        tables are looked up with it.
    tissue_classes: the tissue the aligned template expects at each brain voxel (``tissue.prior_classes``: int8,
        0 CSF, 1 GM, 2 WM, -1 outside the brain; canonical grid), where the combined map measured a component by
        tissue class (``combined.tissue_tables``) or the scorer was asked to keep them (calibration); else None.
    """

    maps: dict[str, np.ndarray]
    mask: np.ndarray
    slice_scores: np.ndarray
    slice_kl: np.ndarray
    slice_rec: np.ndarray
    volume_score: float
    device: str
    batch_size: int
    seconds: dict[str, float] = field(default_factory=dict)
    template_brain_dice: float | None = None  # brain mask vs the aligned template's brain (None: not aligned)
    postprocessing: dict = field(default_factory=dict)  # what was done to the detection map (empty: nothing)
    warnings: list[str] = field(default_factory=list)
    preprocessing: list[dict] = field(default_factory=list)
    contrast: str | None = None
    tissue_means: tuple[float, float, float] | None = None
    hypointense_mm: float | None = None
    sequence: str | None = None
    settings: str | None = None
    tissue_classes: np.ndarray | None = None


def _native_slice_profile(prepared: PreparedVolume, slice_kl: np.ndarray, slice_rec: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Per-slice KL and Rec of the model grid -> per canonical axial slice k of the scan: each k gets the parts
    of the highest-scoring model slice whose brain centre lies in it (NaN where none does)."""
    nk_native = prepared.native_shape[2]
    kl = np.full(nk_native, np.nan)
    rec = np.full(nk_native, np.nan)
    to_scan = np.linalg.inv(prepared.native_to_model)
    total = slice_kl + slice_rec
    for k in np.flatnonzero(np.isfinite(total)):
        ii, jj = np.nonzero(prepared.mask[:, :, k])
        centre = np.array([ii.mean(), jj.mean(), k, 1.0])
        kn = int(round((to_scan @ centre)[2]))
        if 0 <= kn < nk_native and not total[k] <= (kl[kn] + rec[kn]):
            kl[kn], rec[kn] = slice_kl[k], slice_rec[k]
    return kl, rec


class Scorer:
    """Scores volumes with one model.

    Args:
        model, card: from :func:`napari_uad.model_card.load_model`.
        device: "auto" (cuda -> mps -> cpu), or an explicit device.
        batch_size: slices per batch; None chooses from free memory.
        amp: mixed precision (bfloat16/float16 autocast) on GPUs; ignored on CPU. Off by default: in float32 a
            GPU's maps agree with the CPU's to 0.2 % of their range and its findings exactly, where mixed precision
            moved maps by up to 10 % at a voxel; it bought no speed, since scoring time goes to preprocessing
            (``benchmarks/device_check.py``, docs/BENCHMARKS.md).
        options: per-run preprocessing switches (skull strip auto/on/off, steps off); brain extraction runs on
            the scoring device.
    """

    def __init__(self, model: CeVAE, card: ModelCard, device: str | torch.device = "auto",
                 batch_size: int | None = None, amp: bool = False, options: PipelineOptions | None = None):
        self.card = card
        self.device = resolve_device(device)
        base = options or PipelineOptions()
        self.options = PipelineOptions(**{**base.to_dict(), "device": self.device.type})
        self.model = model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch size must be >= 1, not {batch_size}")
        self.requested_batch_size = batch_size
        self.amp = amp

    # -- public API --------------------------------------------------------------------------------------
    def score(self, volume: Volume, maps: Iterable[str] | None = None, mask: np.ndarray | None = None,
              progress: Callable[[Progress], None] | None = None,
              cancel: threading.Event | Callable[[], bool] | None = None, postprocess: bool = True,
              tissue_classes: bool = False) -> ScoreResult:
        """Score a volume; ``progress`` is called after every batch; a set ``cancel`` raises ScoringCancelled.
        ``postprocess=False`` leaves the detection map as the model made it (calibration filters it itself);
        ``tissue_classes=True`` keeps the template's tissue class of each brain voxel in the result even where the
        card does not use it (calibration tables components by it)."""
        is_cancelled = cancel.is_set if isinstance(cancel, threading.Event) else (cancel or (lambda: False))
        gen = self.iter_score(volume, maps, mask, postprocess=postprocess, tissue_classes=tissue_classes)
        try:
            while True:
                if is_cancelled():
                    gen.close()
                    raise ScoringCancelled("scoring cancelled")
                step = next(gen)
                if progress is not None:
                    progress(step)
        except StopIteration as stop:
            return stop.value

    def brain(self, volume: Volume) -> np.ndarray:
        """The brain mask this scorer's preprocessing finds for ``volume`` (bool, canonical grid): its brain
        extraction step alone (no bias correction, alignment or model pass)."""
        from .preprocessing import brain_extraction_mode, brain_mask

        mode = brain_extraction_mode(self.card.preprocessing, self.options)
        return brain_mask(volume.data, volume.affine, mode, self.options.device).mask

    def iter_score(self, volume: Volume, maps: Iterable[str] | None = None, mask: np.ndarray | None = None,
                   postprocess: bool = True, tissue_classes: bool = False) -> Generator[Progress, None, ScoreResult]:
        """Generator form of :meth:`score`: yields a :class:`Progress` per batch, returns the ScoreResult.

        Stopping the iteration early (``close()``) cancels the run; nothing is kept.
        """
        maps = parse_maps(maps)
        components = all_components(self.card.calibration) if COMBINED in maps else ()
        computed = tuple(m for m in MAP_NAMES if m in maps or m in components)
        seconds: dict[str, float] = {}
        t0 = time.perf_counter()
        steps = iter_prepare_volume(volume, self.card.preprocessing, self.card.input_size, mask,
                                    options=self.options)
        while True:
            try:
                stage = next(steps)
            except StopIteration as stop:
                prepared: PreparedVolume = stop.value
                break
            yield Progress(0, 0, time.perf_counter() - t0, 0, self.device.type, stage=stage)
        normalised, mask, geometry = prepared.normalised, prepared.mask, prepared.geometry
        seconds["preprocess"] = time.perf_counter() - t0

        t1 = time.perf_counter()
        ni, nj, nk = normalised.shape
        model_maps = tuple(m for m in computed if m not in MODEL_FREE_MAPS)
        out = {name: np.zeros((ni, nj, nk), dtype=np.float32) for name in model_maps}
        slice_kl = np.full(nk, np.nan)
        slice_rec = np.full(nk, np.nan)
        todo = prepared.slices
        batch_size = self.requested_batch_size or self._auto_batch_size()
        notes: list[str] = []
        done = 0
        yield Progress(0, len(todo), 0.0, batch_size, self.device.type)
        while done < len(todo):
            ks = todo[done:done + batch_size]
            try:
                native, kl, rec = self._score_slices(normalised, mask, ks, geometry, model_maps)
            except (torch.cuda.OutOfMemoryError, RuntimeError) as err:
                if self.device.type == "cpu" or not is_out_of_memory(err):
                    raise
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                if batch_size > 1:
                    batch_size = max(1, batch_size // 2)
                    note = f"{self.device.type} out of memory: retrying with batch size {batch_size}"
                else:
                    note = f"{self.device.type} out of memory at batch size 1: continuing on cpu"
                    self.device = torch.device("cpu")
                    self.model.to(self.device)
                warnings.warn(note, RuntimeWarning, stacklevel=2)
                notes.append(note)
                continue
            for c, name in enumerate(model_maps):
                out[name][:, :, ks] = native[:, c].transpose(1, 2, 0)
            slice_kl[ks], slice_rec[ks] = kl, rec
            done += len(ks)
            yield Progress(done, len(todo), time.perf_counter() - t1, batch_size, self.device.type)
        seconds["model"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        if prepared.aligned and model_maps:
            native = prepared.to_native(np.stack([out[name] for name in model_maps]))
            out = {name: native[c] for c, name in enumerate(model_maps)}
        brain = prepared.brain
        contrast = tissue_means = hypointense_mm = None
        if "tissue" in computed:
            priors = prepared.tissue_priors()
            if priors is None:
                notes.append("tissue map not computed (all zero): it needs the template alignment of a brain model")
                out["tissue"] = np.zeros(brain.shape, np.float32)
            else:
                tissue_brain = brain & ~background_holes(volume.data, brain)  # filled holes hold no tissue
                settings = self.card.scoring.tissue()
                out["tissue"], means = tissue_outliers(prepared.standardised, tissue_brain, priors, volume.spacing,
                                                       settings)
                if means is not None:
                    contrast = scan_contrast(means, settings.contrast_rule)
                    tissue_means = tuple(float(m) for m in means)
                    hypointense_mm = hypointense_thickness_mm(out["tissue"], tissue_brain, volume.spacing)
        if "asymmetry" in computed:
            mirror = prepared.midsagittal_mirror()
            if mirror is None:
                notes.append("asymmetry map not computed (all zero): it needs the template alignment of a brain "
                             "model")
                out["asymmetry"] = np.zeros(brain.shape, np.float32)
            else:
                out["asymmetry"] = asymmetry_map(prepared.standardised, brain, mirror, volume.spacing,
                                                 self.card.scoring.asymmetry_sigma_mm)
        sequence = volume.metadata.get("sequence")
        settings = settings_key(self.card.calibration, contrast, sequence)
        classes = None
        if tissue_classes or (COMBINED in maps and tissue_tables(self.card.calibration, settings)):
            priors = prepared.tissue_priors()
            if priors is not None:
                classes = prior_classes(priors, brain, volume.spacing, self.card.scoring.tissue())
        if COMBINED in maps:
            if components:
                cal = self.card.calibration
                out[COMBINED] = combine(out, cal, combined_components(cal, settings), settings,
                                        dark=dark_components(cal, settings), classes=classes,
                                        open_dark=ball_opener(brain, volume.spacing, dark_opening_mm(cal)))
            else:
                notes.append("combined map not computed (all zero): the model card's calibration has none")
                out[COMBINED] = np.zeros(brain.shape, np.float32)
        out = {name: out[name] for name in maps}
        for name in maps:
            out[name][~brain] = 0.0
        t3 = time.perf_counter()
        done_post = self._postprocess(out, brain, volume.spacing) if postprocess else {}
        seconds["postprocess"] = time.perf_counter() - t3
        slice_scores = slice_kl + slice_rec
        valid = np.sort(slice_scores[np.isfinite(slice_scores)])[::-1]
        volume_score = float(valid[: self.card.scoring.top_k_slices].mean()) if valid.size else float("nan")
        if prepared.aligned:
            slice_kl, slice_rec = _native_slice_profile(prepared, slice_kl, slice_rec)
            slice_scores = slice_kl + slice_rec
        template_brain = prepared.template_brain()
        template_dice = None if template_brain is None else mask_dice(brain, template_brain)
        seconds["to_native"] = time.perf_counter() - t2 - seconds["postprocess"]
        seconds["total"] = time.perf_counter() - t0
        return ScoreResult(maps=out, mask=brain, slice_scores=slice_scores, slice_kl=slice_kl, slice_rec=slice_rec,
                           volume_score=volume_score, device=self.device.type, batch_size=batch_size,
                           seconds=seconds, warnings=notes, preprocessing=prepared.steps,
                           template_brain_dice=template_dice, postprocessing=done_post, contrast=contrast,
                           tissue_means=tissue_means, hypointense_mm=hypointense_mm, sequence=sequence,
                           settings=settings, tissue_classes=classes)

    # -- internals ---------------------------------------------------------------------------------------
    def _postprocess(self, out: dict[str, np.ndarray], brain: np.ndarray, spacing) -> dict:
        """The card's median filter on its detection map (in place, scan grid; ``napari_uad.postprocess``);
        returns what was done (empty when nothing)."""
        size_mm = float(self.card.scoring.detection_median_mm)
        name = self.card.calibration.get("detection_map")
        if not size_mm > 0 or name not in out:
            return {}
        out[name] = median_filter_map(out[name], brain, spacing, size_mm)
        return {"map": name, "median_filter_mm": size_mm,
                "footprint_voxels": list(median_footprint(spacing, size_mm))}

    def _autocast(self):
        if not self.amp or self.device.type != "cuda":
            return nullcontext()
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)

    def _auto_batch_size(self) -> int:
        """Slices per batch from free memory: activations of (1 + n SmoothGrad copies) x forward+backward."""
        cfg = self.card.architecture
        s2 = cfg.input_size**2
        act = s2 * (3 + 2 * sum(c / 4 ** (i + 1) for i, c in enumerate(cfg.channels)) + cfg.channels[0] + 2)
        per_slice = act * 4 * 3 * (1 + self.card.scoring.smoothgrad_samples)
        budget = 0.5 * free_memory_bytes(self.device)
        cap = 512 if self.device.type == "cuda" else 32
        return int(max(1, min(cap, budget // per_slice)))

    def _noise(self, ks: np.ndarray) -> torch.Tensor:
        """SmoothGrad noise [n, B, 1, S, S], drawn on the CPU per slice index: same for any batch or device."""
        sc = self.card.scoring
        size = self.card.input_size
        std = sc.smoothgrad_noise * self.card.preprocessing.value_range
        draws = []
        for k in ks:
            gen = torch.Generator().manual_seed(int(sc.seed) * 1_000_003 + int(k))
            draws.append(torch.randn((sc.smoothgrad_samples, 1, size, size), generator=gen) * std)
        return torch.stack(draws, dim=1)

    def _score_slices(self, normalised: np.ndarray, mask: np.ndarray, ks: np.ndarray, geometry: SliceGeometry,
                      maps: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Maps of slices ``ks`` resampled to native ([B, n_maps, ni, nj]) and per-slice KL and Rec."""
        dev = self.device
        bg = self.card.preprocessing.background
        native = torch.from_numpy(np.ascontiguousarray(normalised[:, :, ks].transpose(2, 0, 1))).unsqueeze(1)
        native_mask = torch.from_numpy(np.ascontiguousarray(mask[:, :, ks].transpose(2, 0, 1))).unsqueeze(1)
        x = geometry.to_model(native.to(dev), fill=bg)
        fg = (geometry.to_model(native_mask.to(dev, torch.float32), fill=0.0) > 0.5).float()

        with torch.no_grad(), self._autocast():
            mu_z, log_var_z = self.model.encode(x)
            mu_x, log_var_x = self.model.decode(mu_z)
        mu_x, log_var_x = mu_x.float(), log_var_x.float()
        u, e = gaussian_nll(x, mu_x, log_var_x)
        kl = kl_per_slice(mu_z.float(), log_var_z.float())
        rec = ((u + e) * fg).sum(dim=(1, 2, 3))
        signed = x - mu_x
        model_maps = {"residual": signed.abs(), "signed_residual": signed, "U": u, "E": e,
                      "z": signed * torch.exp(-0.5 * log_var_x), "nll": u + e}
        if {"kl_grad", "elbo_grad", "combi"} & set(maps):
            model_maps.update(self._smoothgrad(x, ks, fg, need_elbo="elbo_grad" in maps))
            model_maps["combi"] = model_maps["residual"] * model_maps["kl_grad"]
        if not maps:  # only model-free maps asked for: the pass still gives the slice scores
            return np.zeros((len(ks), 0, *geometry.native_shape), np.float32), kl.cpu().numpy(), rec.cpu().numpy()
        stacked = torch.cat([model_maps[name] for name in maps], dim=1)
        back = geometry.to_native(stacked)
        return back.cpu().numpy(), kl.cpu().numpy(), rec.cpu().numpy()

    def _smoothgrad(self, x: torch.Tensor, ks: np.ndarray, fg: torch.Tensor, need_elbo: bool
                    ) -> dict[str, torch.Tensor]:
        """SmoothGrad dKL/dx (and d(KL+Rec)/dx) over the noisy copies, reduced per the card's
        ``grad_reduction`` (default mean |g|), optionally brain only, smoothed; each [B, 1, S, S]."""
        sc = self.card.scoring
        n, b = sc.smoothgrad_samples, x.shape[0]
        noisy = (x.unsqueeze(0) + self._noise(ks).to(x.device)).reshape(n * b, *x.shape[1:])
        noisy.requires_grad_(True)
        with torch.enable_grad():
            with self._autocast():
                mu_z, log_var_z = self.model.encode(noisy)
                if need_elbo:
                    mu_x, log_var_x = self.model.decode(mu_z)
            kl = kl_per_slice(mu_z.float(), log_var_z.float()).sum()
            g_kl = torch.autograd.grad(kl, noisy, retain_graph=need_elbo)[0]
            if need_elbo:
                u, e = gaussian_nll(noisy, mu_x.float(), log_var_x.float())
                g_rec = torch.autograd.grad((u + e).sum(), noisy)[0]
        sigma = self.card.scoring.grad_smoothing_sigma * self.card.input_size / _REFERENCE_SIZE
        radius = max(1, int(round(sigma)))  # reference: 7x7 window for sigma 3 at 128 px

        def smooth(g: torch.Tensor) -> torch.Tensor:
            g = g.float().reshape(n, b, *x.shape[1:])
            if sc.grad_reduction == "mean_abs":
                reduced = g.abs().mean(dim=0)
            elif sc.grad_reduction == "abs_mean":
                reduced = g.mean(dim=0).abs()
            else:
                reduced = g.mean(dim=0).clamp_min(0.0)
            if sc.grad_brain_only:
                reduced = reduced * fg
            return gaussian_blur2d(reduced, (sigma, sigma), (radius, radius)) if sigma > 0 else reduced

        result = {"kl_grad": smooth(g_kl)}
        if need_elbo:
            result["elbo_grad"] = smooth(g_kl + g_rec)
        return result
