"""Training a ceVAE on normal scans (``shared/METHODS.md``).

Data: volumes go through the same IO and preprocessing as scoring (``prepare_volume``), then their
foreground slices are resampled onto the model grid once and kept in memory (float16).
Loss per slice (nats): KL + Rec_VAE + ce_weight * Rec_CE, where Rec is the Gaussian NLL summed over the
foreground pixels (dilated by 3 px; ``foreground_loss``; every pixel when it is off),
Rec_VAE reconstructs x from a sampled z, and Rec_CE reconstructs the clean x from g(mu_z(x_tilde)), x_tilde
being x with 1-3 random rectangles painted over with random values (one union mask; overlapping rectangles
never un-mask each other). Adam; augmentation (mirror, small rotation/scale, multiplicative brightness,
noise); beta-NLL weighting during training against a blurry mean (validation loss is the plain NLL);
held-out validation volumes; early stopping; checkpoints in safetensors + JSON (no pickle).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from .devices import machine_description, resolve_device
from .export import write_json
from .io import Volume, atomic_write
from .model import CeVAE, gaussian_nll, kl_per_slice
from .model_card import ModelCard, save_model
from .preprocessing import PipelineOptions, PreprocessingConfig, prepare_volume

__all__ = ["TrainConfig", "Trainer", "augment_batch", "calibrate_model", "context_encoding_batch", "loss_region",
           "label_head_slices", "label_head_volume", "map_in_workers", "model_slices", "read_scans", "scan_files", "slice_losses", "synthetic_anomaly_case",
           "synthetic_slices", "synthetic_volume", "train_model"]


@dataclass
class TrainConfig:
    """Optimisation settings (stored in the card's training record)."""

    epochs: int = 40
    batch_size: int = 32
    learning_rate: float = 3e-4
    ce_weight: float = 1.0
    patience: int = 6
    lr_patience: int = 4  # halve the learning rate after this many epochs without improvement (0 = never)
    steps_per_epoch: int | None = None  # None: one pass over the training slices
    max_minutes: float | None = None  # stop (and keep the best model) after this wall time
    min_foreground_fraction: float = 0.1
    foreground_loss: bool = True  # reconstruction terms over the (dilated) foreground only
    beta_nll: float = 0.5  # beta-NLL weighting (Seitzer et al. 2022); 0 = plain Gaussian NLL
    seed: int = 0


def model_slices(volume: Volume, preprocessing: PreprocessingConfig, size: int,
                 min_foreground_fraction: float = 0.1, options: PipelineOptions | None = None,
                 mask: np.ndarray | None = None) -> torch.Tensor:
    """Brain axial slices of a volume on the model grid, [N, 1, S, S] float16 (empty slices skipped), through
    the same preprocessing steps as scoring (``mask``: a known brain mask, canonical grid, instead of brain
    extraction)."""
    prepared = prepare_volume(volume, preprocessing, size, mask=mask, min_foreground_fraction=min_foreground_fraction,
                              options=options)
    ks = prepared.slices
    native = torch.from_numpy(np.ascontiguousarray(prepared.normalised[:, :, ks].transpose(2, 0, 1))).unsqueeze(1)
    return prepared.geometry.to_model(native, fill=preprocessing.background).to(torch.float16)


def context_encoding_batch(x: torch.Tensor, generator: torch.Generator, value_range: tuple[float, float]
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """x_tilde and the union mask [B, 1, S, S]: 1-3 rectangles per slice (sides S/10..S/3), random fill values.

    Rectangle parameters are drawn from ``generator`` (CPU); painting is vectorised on ``x``'s device, later
    rectangles over earlier ones."""
    b, _, h, w = x.shape
    lo, hi = value_range
    count = torch.randint(1, 4, (b,), generator=generator)
    rh = torch.randint(max(2, h // 10), max(3, h // 3), (b, 3), generator=generator)
    rw = torch.randint(max(2, w // 10), max(3, w // 3), (b, 3), generator=generator)
    r0 = (torch.rand(b, 3, generator=generator) * (h - rh + 1)).long()
    c0 = (torch.rand(b, 3, generator=generator) * (w - rw + 1)).long()
    value = lo + (hi - lo) * torch.rand(b, 3, generator=generator)
    active = torch.arange(3).view(1, 3) < count.view(b, 1)
    r0, r1, c0, c1, value, active = (t.to(x.device).view(b, 3, 1, 1)
                                     for t in (r0, r0 + rh, c0, c0 + rw, value, active))
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    x_tilde = x.clone()
    mask = torch.zeros_like(x, dtype=torch.bool)
    for k in range(3):
        rect = ((rows >= r0[:, k]) & (rows < r1[:, k]) & (cols >= c0[:, k]) & (cols < c1[:, k])
                & active[:, k]).unsqueeze(1)
        x_tilde = torch.where(rect, value[:, k].unsqueeze(1).to(x.dtype), x_tilde)
        mask |= rect
    return x_tilde, mask


def augment_batch(x: torch.Tensor, generator: torch.Generator, background: float, clip: tuple[float, float],
                  noise_generator: torch.Generator) -> torch.Tensor:
    """Mirror (left-right), rotation +-10 deg, scale 0.9-1.1, brightness x0.9-1.1, noise sd <= 0.05.

    Per-slice parameters come from ``generator`` (CPU); the per-pixel noise from ``noise_generator``, a
    generator on ``x``'s device."""
    b = x.shape[0]
    flip = torch.rand(b, generator=generator) < 0.5
    x = torch.where(flip.view(b, 1, 1, 1).to(x.device), x.flip(-2), x)
    angle = (torch.rand(b, generator=generator) * 2 - 1) * math.radians(10)
    scale = 0.9 + 0.2 * torch.rand(b, generator=generator)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, torch.zeros(b)], 1), torch.stack([sin, cos, torch.zeros(b)], 1)], 1)
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    x = F.grid_sample(x - background, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + background
    fg = x > background + 1e-3
    brightness = (0.9 + 0.2 * torch.rand(b, 1, 1, 1, generator=generator)).to(x.device)
    sd = (0.05 * torch.rand(b, 1, 1, 1, generator=generator)).to(x.device)
    noise = torch.randn(x.shape, generator=noise_generator, device=x.device) * sd
    x = torch.where(fg, x * brightness + noise, x)
    return x.clamp(*clip)


def loss_region(x: torch.Tensor, background: float, dilate: int = 3) -> torch.Tensor:
    """Pixels whose reconstruction counts: the foreground (x above the background value) dilated by
    ``dilate`` pixels, [B, 1, S, S] float. Scoring restricts every map to the foreground, so the constant
    background need not be modelled; leaving it out keeps the variance head from collapsing there."""
    fg = (x > background + 1e-3).float()
    return F.max_pool2d(fg, 2 * dilate + 1, stride=1, padding=dilate) if dilate > 0 else fg


def _nll_weight(log_var_x: torch.Tensor, region, beta: float):
    """Per-pixel weight of the NLL: the loss region times sigma^(2 beta) without gradient (beta-NLL).

    A Gaussian decoder trained on the plain NLL can explain every error with a large variance, which scales
    the mean's gradient by 1/sigma^2 and leaves the reconstruction blurry; beta-NLL (beta = 0.5) keeps the
    mean learning while the variance head still fits the error. beta = 0 is the plain NLL."""
    weight = 1.0 if region is None else region
    if beta > 0:
        weight = weight * torch.exp(beta * log_var_x.detach())
    return weight


def slice_losses(model: CeVAE, x: torch.Tensor, x_tilde: torch.Tensor | None, ce_weight: float,
                 sample: bool = True, region: torch.Tensor | None = None, beta: float = 0.0
                 ) -> dict[str, torch.Tensor]:
    """Per-slice loss terms [B] in nats: kl, rec (VAE branch), ce (context-encoding branch), total.

    ``region`` ([B, 1, S, S], 0/1) restricts the reconstruction sums (None: every pixel); ``beta`` > 0 weights
    the NLL as beta-NLL for training (validation and reports use beta = 0, the plain NLL)."""
    mu_x, log_var_x, mu_z, log_var_z = model(x, sample=sample)
    kl = kl_per_slice(mu_z, log_var_z)
    u, e = gaussian_nll(x, mu_x, log_var_x)
    rec = ((u + e) * _nll_weight(log_var_x, region, beta)).sum(dim=(1, 2, 3))
    total = kl + rec
    out = {"kl": kl, "rec": rec}
    if x_tilde is not None and ce_weight > 0:
        mu_ce, _ = model.encode(x_tilde)
        mu_x_ce, log_var_x_ce = model.decode(mu_ce)
        u, e = gaussian_nll(x, mu_x_ce, log_var_x_ce)
        out["ce"] = ((u + e) * _nll_weight(log_var_x_ce, region, beta)).sum(dim=(1, 2, 3))
        total = total + ce_weight * out["ce"]
    out["total"] = total
    return out


class Trainer:
    """Trains one model into ``out_dir`` (``model.safetensors`` + ``card.json``; ``checkpoint/`` to resume)."""

    def __init__(self, card: ModelCard, out_dir: str | Path, config: TrainConfig, device: str = "auto",
                 log: Callable[[str], None] = print):
        self.card, self.config, self.log = card, config, log
        self.out_dir = Path(out_dir)
        self.device = resolve_device(device)
        torch.manual_seed(config.seed)
        self.model = CeVAE(card.architecture).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.learning_rate)
        self.generator = torch.Generator().manual_seed(config.seed)  # per-slice parameters (CPU)
        self.noise_generator = torch.Generator(device=self.device).manual_seed(config.seed)  # per-pixel noise
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.state = {"epoch": 0, "step": 0, "best_val": None, "best_epoch": None, "bad_epochs": 0,
                      "history": [], "wall_seconds": 0.0}

    # -- data ----------------------------------------------------------------------------------------------
    def slices_of(self, volumes: Iterable[Volume]) -> torch.Tensor:
        pre, size = self.card.preprocessing, self.card.input_size
        parts = [model_slices(v, pre, size, self.config.min_foreground_fraction) for v in volumes]
        return torch.cat(parts) if parts else torch.empty(0, 1, size, size, dtype=torch.float16)

    # -- checkpoints ---------------------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / "checkpoint"

    def save_checkpoint(self) -> None:
        d = self.checkpoint_dir
        d.mkdir(parents=True, exist_ok=True)
        opt = self.optimizer.state_dict()
        tensors = {f"param.{k}": v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        for idx, st in opt["state"].items():
            for name, value in st.items():
                tensors[f"opt.{idx}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
        tensors["rng.generator"] = self.generator.get_state()
        tensors["rng.noise"] = self.noise_generator.get_state()
        tensors["rng.torch"] = torch.get_rng_state()
        with atomic_write(d / "checkpoint.safetensors") as tmp:
            save_file(tensors, str(tmp))
        write_json(d / "state.json", {**self.state, "param_groups": opt["param_groups"]})

    def load_checkpoint(self) -> bool:
        d = self.checkpoint_dir
        if not (d / "state.json").is_file():
            return False
        meta = json.loads((d / "state.json").read_text(encoding="utf-8"))
        tensors = load_file(str(d / "checkpoint.safetensors"))
        self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("param.")})
        opt_state: dict = {}
        for key, value in tensors.items():
            if key.startswith("opt."):
                _, idx, name = key.split(".", 2)
                opt_state.setdefault(int(idx), {})[name] = value.to(self.device) if name != "step" else value
        self.optimizer.load_state_dict({"state": opt_state, "param_groups": meta.pop("param_groups")})
        self.generator.set_state(tensors["rng.generator"])
        noise = tensors.get("rng.noise")
        if noise is not None and noise.numel() == self.noise_generator.get_state().numel():
            self.noise_generator.set_state(noise)
        else:  # saved on another kind of device (a CUDA generator's state cannot drive a CPU one, and back)
            self.noise_generator.manual_seed(self.config.seed + int(meta["step"]))
            self.log(f"checkpoint's per-pixel noise stream is from another device type: reseeded on "
                     f"{self.device.type} (seed {self.config.seed} + step {meta['step']})")
        torch.set_rng_state(tensors["rng.torch"])
        self.state.update(meta)
        return True

    # -- training ------------------------------------------------------------------------------------------
    def _batches(self, n: int, shuffle: bool) -> list[torch.Tensor]:
        order = torch.randperm(n, generator=self.generator) if shuffle else torch.arange(n)
        return list(order.split(self.config.batch_size))

    def validation_loss(self, val: torch.Tensor) -> float:
        """Mean per-slice loss on held-out slices: z = mu_z, fixed context-encoding masks (seeded)."""
        self.model.eval()
        gen = torch.Generator().manual_seed(12345)
        total, count = 0.0, 0
        with torch.no_grad():
            for idx in self._batches(len(val), shuffle=False):
                x = val[idx.to(val.device)].to(self.device).float()
                x_tilde, _ = context_encoding_batch(x, gen, self.card.preprocessing.clip)
                losses = slice_losses(self.model, x, x_tilde, self.config.ce_weight, sample=False,
                                      region=self._region(x))
                total += float(losses["total"].sum())
                count += len(idx)
        self.model.train()
        return total / max(count, 1)

    def _region(self, x: torch.Tensor) -> torch.Tensor | None:
        return loss_region(x, self.card.preprocessing.background) if self.config.foreground_loss else None

    def fit(self, train: torch.Tensor, val: torch.Tensor) -> dict:
        """Train until ``epochs``, early stopping or ``max_minutes``; writes the best model and its card."""
        cfg, pre = self.config, self.card.preprocessing
        if len(train) == 0 or len(val) == 0:
            raise ValueError("no training or validation slices (are the scans empty?)")
        if self.device.type == "cuda":  # float16 slices live on the GPU: no host-to-device copy per step
            train, val = train.to(self.device), val.to(self.device)
        self.model.train()
        start_epoch = self.state["epoch"]
        t_start = time.perf_counter()
        wall_before = self.state["wall_seconds"]
        steps = cfg.steps_per_epoch or math.ceil(len(train) / cfg.batch_size)
        stop_reason = "epochs"
        for epoch in range(start_epoch, cfg.epochs):
            t_epoch = time.perf_counter()
            batches = self._batches(len(train), shuffle=True)
            while len(batches) < steps:
                batches += self._batches(len(train), shuffle=True)
            sums = {key: torch.zeros((), device=self.device) for key in ("kl", "rec", "ce", "total")}
            for idx in batches[:steps]:
                x = train[idx.to(train.device)].to(self.device).float()
                x = augment_batch(x, self.generator, pre.background, pre.clip, self.noise_generator)
                x_tilde, _ = context_encoding_batch(x, self.generator, pre.clip)
                losses = slice_losses(self.model, x, x_tilde, cfg.ce_weight, region=self._region(x),
                                      beta=cfg.beta_nll)
                loss = losses["total"].mean()
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), 100.0)
                self.optimizer.step()
                self.state["step"] += 1
                for key in losses:
                    sums[key] += losses[key].detach().mean()
            val_loss = self.validation_loss(val)
            elapsed = time.perf_counter() - t_start
            self.state["wall_seconds"] = wall_before + elapsed
            self.state["epoch"] = epoch + 1
            record = {"epoch": epoch + 1, "step": self.state["step"], "val_loss": val_loss,
                      "seconds": time.perf_counter() - t_epoch,
                      "learning_rate": self.optimizer.param_groups[0]["lr"],
                      **{f"train_{k}": float(v) / steps for k, v in sums.items()}}
            self.state["history"].append(record)
            improved = self.state["best_val"] is None or val_loss < self.state["best_val"]
            if improved:
                self.state.update(best_val=val_loss, best_epoch=epoch + 1, bad_epochs=0)
                self._write_model()
            else:
                self.state["bad_epochs"] += 1
                if cfg.lr_patience > 0 and self.state["bad_epochs"] % cfg.lr_patience == 0:
                    for group in self.optimizer.param_groups:  # saved with the optimizer state: survives --resume
                        group["lr"] *= 0.5
                    self.log(f"no improvement for {self.state['bad_epochs']} epochs: learning rate halved to "
                             f"{self.optimizer.param_groups[0]['lr']:.3g}")
            self.save_checkpoint()
            per_epoch = elapsed / (epoch + 1 - start_epoch)
            eta = per_epoch * (cfg.epochs - epoch - 1)
            self.log(f"epoch {epoch + 1}/{cfg.epochs}  train {record['train_total']:.1f}  val {val_loss:.1f} "
                     f"{'(best)' if improved else ''}  {record['seconds']:.0f}s/epoch  ETA {eta / 60:.1f} min")
            if self.state["bad_epochs"] >= cfg.patience:
                stop_reason = f"early stopping (no improvement for {cfg.patience} epochs)"
                break
            if cfg.max_minutes is not None and elapsed + per_epoch > cfg.max_minutes * 60:
                stop_reason = f"time limit of {cfg.max_minutes} min"
                break
        self.state["stop_reason"] = stop_reason
        self.save_checkpoint()
        self._write_model(final=True)
        return self.state

    def _write_model(self, final: bool = False) -> None:
        """Save the current weights as the model (best so far); ``final`` only refreshes the card's record."""
        self.card.training.update({
            "config": asdict(self.config), "device": self.device.type, "machine": machine_description(),
            "epochs_run": self.state["epoch"],
            "best_epoch": self.state["best_epoch"], "best_val_loss_nats_per_slice": self.state["best_val"],
            "wall_seconds": round(self.state["wall_seconds"], 1), "stop_reason": self.state.get("stop_reason"),
            "history": self.state["history"],
        })
        if final:
            self.card.write(self.out_dir)
        else:
            save_model(self.model, self.card, self.out_dir)


def map_in_workers(fn: Callable, items: Iterable, workers: int = 1) -> Iterable:
    """``fn(item)`` for each item, in order; in ``workers`` spawned processes when ``workers`` > 1 (``fn`` must
    be a module-level function). Each result depends only on its item, so the output is the same either way."""
    if workers <= 1:
        yield from map(fn, items)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=torch.set_num_threads, initargs=(1,)) as pool:
        yield from pool.map(fn, items)


SYNTHETIC_OPTIONS = PipelineOptions(skull_strip="off")
"""Synthetic brains are brain-only by construction: the foreground is the brain (no deepbet run)."""


def synthetic_volume(seed: int) -> Volume:
    """Synthetic healthy brain ``seed`` as a Volume (module level, so worker processes can run it)."""
    from .synth import case_volume, healthy_volume

    return case_volume(healthy_volume(seed))


def synthetic_slices(seed: int, preprocessing: PreprocessingConfig, size: int,
                     min_foreground_fraction: float = 0.1) -> torch.Tensor:
    """Training slices ([N, 1, S, S] float16, model grid) of synthetic healthy brain ``seed`` (brain-only by
    construction, so brain extraction is off)."""
    return model_slices(synthetic_volume(seed), preprocessing, size, min_foreground_fraction, SYNTHETIC_OPTIONS)


def synthetic_anomaly_case(seed: int) -> tuple[Volume, np.ndarray]:
    """Synthetic brain ``seed`` with one toy anomaly: the Volume and its ground-truth mask (canonical grid)."""
    from .synth import case_volume, case_volume_mask, synth_case

    case = synth_case(seed)
    return case_volume(case), case_volume_mask(case)


def _head_args(item: tuple) -> tuple[str, int, str | None, bool]:
    """(label map path, seed[, contrast family[, normal variants]]) -> (path, seed, family or None: drawn per
    head, normal variants or not)."""
    path, seed, *rest = item
    return path, seed, rest[0] if rest else None, bool(rest[1]) if len(rest) > 1 else False


def label_head_volume(item: tuple) -> tuple[Volume, np.ndarray]:
    """Synthetic head (label map path, seed[, contrast family]) as a Volume and its brain mask (canonical
    grid); without a family it is drawn (training's domain randomisation)."""
    from .synth_labels import label_head

    path, seed, family, variants = _head_args(item)
    head = label_head(path, seed, family=family, normal_variants=variants)
    volume = Volume.from_array(head.data, head.affine, modality="MR")
    volume.metadata["true_brain"] = head.brain  # lets calibration leave out heads whose brain extraction failed
    volume.metadata["stratum"] = head.params["contrast_family"]  # lets calibration balance the contrasts
    return volume, head.brain


def label_head_slices(item: tuple, preprocessing: PreprocessingConfig, size: int,
                      min_foreground_fraction: float = 0.1) -> torch.Tensor:
    """Training slices of the synthetic head (label map path, seed): its known brain mask replaces brain
    extraction (the other steps run as for a scan)."""
    volume, brain = label_head_volume(item)
    return model_slices(volume, preprocessing, size, min_foreground_fraction, mask=brain)


def label_head_volume_only(item: tuple) -> Volume:
    return label_head_volume(item)[0]


def label_head_anomaly_case(item: tuple) -> tuple[Volume, np.ndarray]:
    """Synthetic head with one anomaly inside its brain: a disease-like lesion (tumour, MS, infarct,
    haemorrhage; ``synth_lesions``) for even seeds, a toy shape (``synth.insert_anomaly``) for odd ones. Returns
    the Volume and the anomaly mask (canonical grid)."""
    from .synth import volume_with_anomaly
    from .synth_labels import label_head

    path, seed, family, variants = _head_args(item)
    if seed % 2 == 0:
        head = label_head(path, seed, family=family, lesion="any", normal_variants=variants)
        volume, brain, lesion = Volume.from_array(head.data, head.affine, modality="MR"), head.brain, head.lesion
        contrast = head.params["contrast_family"]
    else:
        healthy, brain = label_head_volume(item)
        volume, lesion = volume_with_anomaly(healthy, seed + 7919, brain)[:2]
        contrast = healthy.metadata["stratum"]
    volume.metadata.update(true_brain=brain, stratum=contrast)  # as for the healthy heads
    return volume, lesion


SITE_ANOMALY_SEED = 700_000


def site_anomaly_cases(scorer, scans: list[Volume], per_scan: int, seed: int = SITE_ANOMALY_SEED
                       ) -> Iterator[tuple[Volume, np.ndarray]]:
    """``per_scan`` copies of each normal scan with one toy anomaly (``synth.insert_anomaly``: a random kind, bright
    or dark) inside the brain mask the scorer's preprocessing finds; copy c of scan i uses seed ``seed + 1000 i +
    c``. Yields (copy, anomaly mask) pairs in the canonical grid, one at a time (memory); the scans themselves are
    not changed."""
    from .synth import volume_with_anomaly

    for i, scan in enumerate(scans):
        brain = scorer.brain(scan)
        for c in range(per_scan):
            yield volume_with_anomaly(scan, seed + 1000 * i + c, brain)[:2]


def _label_items(files: list[Path], seeds: Iterable[int], families: tuple[str, ...] = (),
                 normal_variants: bool = False) -> list[tuple]:
    """(label map, seed, family, normal variants) per seed: maps and families taken in turn
    (``synth_labels.family_in_turn``; family None = drawn per head)."""
    from .synth_labels import family_in_turn

    files = list(files)
    return [(str(files[s % len(files)]), s, family_in_turn(i, len(files), families), normal_variants)
            for i, s in enumerate(seeds)]


def calibrate_model(model_dir: str | Path, synthetic_volumes: int = 0, held_out: Iterable[Volume] = (),
                    seed: int = 0, device: str = "auto", workers: int = 1, command: str = "",
                    label_maps: list[Path] | None = None, maps: tuple[str, ...] | None = None,
                    normal_variants: bool = False, detection_map: str | None = None,
                    combined: tuple[str, ...] = (), toy_anomalies: int = 0, balance_contrasts: bool = False,
                    true_brain_masks: bool = False, tables_by_contrast: bool = False,
                    combined_by_contrast: dict[str, tuple[str, ...]] | None = None,
                    dark_by_contrast: dict[str, tuple[str, ...]] | None = None,
                    tables_by_tissue: dict[str, tuple[str, ...]] | None = None,
                    min_thickness_by_contrast: dict[str, float] | None = None,
                    points_by_sequence: dict[str, float] | None = None, dark_opening_mm: float = 0.0,
                    log: Callable[[str], None] = print) -> ModelCard:
    """Calibrate the model in ``model_dir`` and rewrite its card (weights untouched).

    ``synthetic_volumes`` > 0: that many synthetic healthy and as many toy-anomaly brains (seeds from
    100000 + ``seed`` and 100500 + ``seed``), giving best-Dice thresholds and the default detection map; with
    ``label_maps`` (validation label maps, never trained on) these are synthetic heads made from them and go
    through brain extraction like a scan. Otherwise the ``held_out`` normal scans give the healthy-voxel
    quantiles and FPR thresholds only, unless ``toy_anomalies`` > 0: then that many copies of each normal scan get
    one toy anomaly (``site_anomaly_cases``) and the card's detection map gets a searched operating point (best
    recall within the false-finding bound, minimum volume included) on the site's own anatomy; the detection map
    and combined components stay the card's. ``maps``: the maps to calibrate (default: all). ``normal_variants``: the
    label-map heads get the periventricular rim and choroid plexus (``synth_variants``). ``detection_map`` /
    ``combined`` (synthetic only): the default detection map and the combined map's components, chosen on other
    validation data, instead of by this set's Dice (``calibration.calibrate``). ``balance_contrasts`` (label
    maps only): keep ``synthetic_volumes`` / 4 healthy heads per clinical contrast, heads left out by the
    brain-mask check made up by further heads of their contrast (seeds continue; at most 3 x as many made).
    ``true_brain_masks`` (label maps only): every head is scored on its true brain mask, as a skull-stripped scan
    (``calibration.calibrate``). ``tables_by_contrast`` (synthetic only): the combined map gets healthy tables per
    recognised contrast (``calibration.calibrate``); a recalibration on normal scans makes them again, from those
    scans, where the card has them. ``combined_by_contrast`` (synthetic only): recognised contrast -> the combined
    map's components for scans of it (chosen on other validation data); a recalibration on normal scans keeps the
    card's. ``dark_by_contrast`` (synthetic only): recognised contrast -> the combined map's dark channel for scans
    of it (``napari_uad.combined``; ``-NAME`` = a signed map negated); a recalibration on normal scans keeps the
    card's and tables it on those scans. ``tables_by_tissue`` (synthetic only): recognised contrast -> combined-map
    components measured against healthy tables per tissue class (``napari_uad.combined``); a recalibration on normal
    scans keeps the card's and tables them on those scans. ``min_thickness_by_contrast`` (synthetic only): recognised contrast -> the
    minimum finding thickness (mm) its operating point counts findings with (chosen on other validation data); a
    recalibration keeps the card's (per contrast where it searches points per contrast, i.e. with toy anomalies;
    the pooled value always). ``points_by_sequence`` (synthetic label-map heads only): declared sequence -> the
    minimum finding thickness (mm) of an operating point of its own (``calibration.calibrate``); a recalibration
    on normal scans makes none, and drops the card's settings for declared sequences (a declared scan then gets
    its recognised contrast's). ``dark_opening_mm`` (synthetic only): the dark channel opened by a ball that wide
    (world mm; ``napari_uad.combined``); a recalibration on normal scans keeps the card's."""
    from .calibration import calibrate
    from .combined import COMBINED, combined_components, contrast_tables
    from .combined import dark_opening_mm as card_dark_opening_mm
    from .model_card import load_model
    from .model_card import min_thickness_by_contrast as thickness_by_contrast
    from .scoring import MAP_NAMES, Scorer
    from .synth_labels import CLINICAL_FAMILIES

    if synthetic_volumes <= 0 and (detection_map or combined or dark_by_contrast or tables_by_tissue
                                   or min_thickness_by_contrast or points_by_sequence or dark_opening_mm):
        raise ValueError("a detection map or combined components can be given only with synthetic validation volumes "
                         "(normal scans keep the card's)")
    if "combined" in combined:
        raise ValueError("the combined map cannot be one of its own components")
    if (balance_contrasts or true_brain_masks) and not (synthetic_volumes > 0 and label_maps):
        raise ValueError("balancing the contrasts or true brain masks need synthetic heads from label maps "
                         "(--synthetic, --label-maps)")
    if toy_anomalies and synthetic_volumes > 0:
        raise ValueError("toy anomalies are put into your own normal scans; synthetic validation has its own")
    model, card = load_model(model_dir, device="cpu")
    # the detection map and combined components the calibration will use must be among the maps it calibrates
    needed = ((detection_map,) if detection_map else ()) + ((*combined, "combined") if combined else ())
    if toy_anomalies:
        needed += (card.detection_map, *combined_components(card.calibration))
    calibrated = tuple(maps or MAP_NAMES)
    missing = [m for m in dict.fromkeys(needed) if m not in calibrated]
    if missing:
        raise ValueError(f"{', '.join(missing)}: not among the maps to calibrate ({', '.join(calibrated)})")
    options = SYNTHETIC_OPTIONS if synthetic_volumes > 0 and not label_maps else None
    scorer = Scorer(model, card, device=device, options=options)
    if synthetic_volumes > 0:
        base = 100_000 + seed
        healthy_seeds, anomalous_seeds = range(base, base + synthetic_volumes), range(base + 500,
                                                                                       base + 500 + synthetic_volumes)
        quota = None
        if label_maps:
            # clinical contrasts only: thresholds and the out-of-distribution reference are for real scans
            if balance_contrasts:  # a supply three times as long, made one head at a time (worker processes
                # would make all of it): calibrate reads only what each contrast needs
                healthy_seeds = range(base, base + 3 * synthetic_volumes)
                share, extra = divmod(synthetic_volumes, len(CLINICAL_FAMILIES))
                quota = {f: share + (i < extra) for i, f in enumerate(CLINICAL_FAMILIES)}
            healthy = map_in_workers(label_head_volume_only, _label_items(label_maps, healthy_seeds, CLINICAL_FAMILIES,
                                                                          normal_variants), 1 if quota else workers)
            anomalous = map_in_workers(label_head_anomaly_case, _label_items(label_maps, anomalous_seeds,
                                                                             CLINICAL_FAMILIES, normal_variants),
                                       workers)
            source = (f"synthetic heads ({'/'.join(CLINICAL_FAMILIES)} contrasts in turn"
                      f"{', normal variants: periventricular rim, choroid plexus' if normal_variants else ''}) "
                      f"from validation label maps {', '.join(p.name for p in label_maps)}")
        else:
            healthy = map_in_workers(synthetic_volume, healthy_seeds, workers)
            anomalous = map_in_workers(synthetic_anomaly_case, anomalous_seeds, workers)
            source = "synthetic volumes"
    previous = card.calibration
    # the edge margin is chosen by its own validation experiment (benchmarks/edge_margin.py): kept
    kept = ["edge_margin_mm", "edge_margin_selection"]
    if synthetic_volumes > 0:
        card.calibration = calibrate(scorer, healthy, anomalous, log=log, detection_map=detection_map,
                                     healthy_quota=quota, true_brain_masks=true_brain_masks,
                                     tables_by_contrast=tables_by_contrast,
                                     components_by_contrast=combined_by_contrast,
                                     dark_by_contrast=dark_by_contrast, tables_by_tissue=tables_by_tissue,
                                     min_thickness_by_contrast=min_thickness_by_contrast,
                                     points_by_sequence=points_by_sequence, dark_opening_mm=dark_opening_mm,
                                     combined_components=tuple(combined),
                                     edge_margin_mm=float(previous.get("edge_margin_mm", 0.0)),
                                     **({"maps": maps} if maps else {}))
        kinds = "disease-like (even seeds) or toy (odd) anomaly" if label_maps else "toy-anomaly"
        balanced = ((", healthy heads balanced by contrast after the brain-mask check" if balance_contrasts else "")
                    + (", scored on their true brain masks" if true_brain_masks else ""))
        card.calibration["validation_set"] = (f"{synthetic_volumes} healthy + {synthetic_volumes} {kinds} "
                                              f"{source}{balanced}, seeds from {base}")
        card.calibration["validation_source"] = "synthetic"
    else:
        held_out = list(held_out)
        anomalous = site_anomaly_cases(scorer, held_out, toy_anomalies) if toy_anomalies > 0 else ()
        previous_combined = _contrast_settings_only(previous.get(COMBINED) or {})
        card.calibration = calibrate(scorer, held_out, anomalous, log=log,
                                     combined_components=combined_components(previous),
                                     tables_by_contrast=bool(contrast_tables(previous)),
                                     components_by_contrast=previous_combined.get("components_by_contrast"),
                                     dark_by_contrast=previous_combined.get("dark_components_by_contrast"),
                                     tables_by_tissue={c: tuple(t) for c, t in
                                                       (previous_combined.get("tables_by_tissue") or {}).items()},
                                     dark_opening_mm=card_dark_opening_mm(previous),
                                     edge_margin_mm=float(previous.get("edge_margin_mm", 0.0)),
                                     detection_map=previous.get("detection_map"),
                                     min_volume_mm3=float(previous.get("min_volume_mm3", 0.0)),
                                     min_thickness_mm=float(previous.get("min_thickness_mm", 0.0)),
                                     min_thickness_by_contrast=_contrast_settings_only(
                                         thickness_by_contrast(previous)),
                                     **({"maps": maps} if maps else {}))
        if toy_anomalies > 0:
            card.calibration["validation_set"] = (
                f"{len(held_out)} held-out user scans + {len(held_out) * toy_anomalies} copies of them with one toy "
                f"anomaly each (napari_uad.synth.insert_anomaly, seeds from {SITE_ANOMALY_SEED})")
            kept += ["detection_map"]  # the card's map and components, with an operating point searched here
        else:
            card.calibration["validation_set"] = f"{len(held_out)} held-out user scans (no anomalies)"
            # normal scans alone cannot choose a detection map, its components or minimum volume: keep the card's
            kept += ["detection_map", "min_volume_mm3"]
            if COMBINED in previous:  # its components; its tables per contrast are this calibration's, as the pooled
                fresh = {k: v for k, v in (card.calibration.get(COMBINED) or {}).items() if k.startswith("tables")}
                card.calibration[COMBINED] = {**{k: v for k, v in previous_combined.items()
                                                 if not k.startswith("tables")}, **fresh}
        card.calibration["validation_source"] = "site"
    for key in kept:
        if key in previous:
            card.calibration[key] = previous[key]
    card.calibration["command"] = command
    card.write(model_dir)
    log(f"calibrated: detection map {card.detection_map}, threshold {card.default_threshold():.4g}, "
        f"minimum volume {card.calibration.get('min_volume_mm3', 0):g} mm3")
    return card


def _contrast_settings_only(settings: dict) -> dict:
    """A card's per-scan settings (``calibration.combined``'s ``*_by_contrast`` and ``tables_by_tissue`` entries, or
    a mapping keyed by contrast) without those keyed by a declared sequence (``sequence.SEQUENCES``): a recalibration on a site's
    normal scans searches no point per sequence, so the sequences' settings (made on synthetic validation heads)
    would no longer match their point."""
    from .sequence import SEQUENCES

    keyed = lambda k: k.endswith("_by_contrast") or k == "tables_by_tissue"  # noqa: E731
    return {k: ({c: v for c, v in value.items() if c not in SEQUENCES} if keyed(k) else value)
            for k, value in settings.items() if k not in SEQUENCES}


def read_scans(files: Iterable[Path], modality: str, log: Callable[[str], None] = print) -> list[Volume]:
    """Every usable scan of ``files`` (see :func:`scan_files`), read through the scoring IO; unusable files are
    reported through ``log`` and skipped."""
    from .io import VolumeError, read_volume

    usable: list[Volume] = []
    for f in files:
        try:
            usable.append(read_volume(f, modality=modality))
        except VolumeError as err:
            log(f"skipping {err}")
    return usable


def scan_files(data: str) -> list[Path]:
    """Supported scan files of a directory or a glob pattern, sorted; ValueError if there are none."""
    from glob import glob

    from .io import ITK_SUFFIXES, NIFTI_SUFFIXES

    p = Path(data)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.name.lower().endswith(NIFTI_SUFFIXES + ITK_SUFFIXES))
    else:
        files = sorted(Path(f) for f in glob(data))
    if not files:
        raise ValueError(f"{data}: no scans found (.nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd)")
    return files


def train_model(card: ModelCard, out: str | Path, config: TrainConfig, data: str | None = None,
                synthetic_volumes: int = 0, val_fraction: float = 0.15, calibration_volumes: int = 6,
                label_maps: str | None = None, val_maps: int = 4, init: tuple[dict, dict] | None = None,
                device: str = "auto", resume: bool = False, command: str = "", workers: int = 1,
                normal_variants: bool = False, log: Callable[[str], None] = print) -> ModelCard:
    """Gather volumes (user scans through the scoring IO, or synthetic healthy brains), split by volume,
    train, then calibrate on synthetic validation volumes (brain MR) or on the held-out scans.

    ``label_maps``: a directory of whole-head label maps; with ``synthetic_volumes`` heads are made from all but
    the last ``val_maps`` maps (training) and from those (validation, calibration), never mixed.
    ``workers`` > 1 generates synthetic volumes in that many processes (same volumes, faster).
    ``init``: (state dict, description) of a model to fine-tune from (same architecture); ignored on resume.
    ``normal_variants``: label-map heads (training, validation, calibration) get the periventricular rim and the
    choroid plexus (``synth_variants``)."""
    from .model_card import CARD_FILE

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if resume:
        if not (out / "checkpoint" / "state.json").is_file():
            raise ValueError(f"{out / 'checkpoint'}: no checkpoint to resume from")
        card = ModelCard.read(out / CARD_FILE)
    trainer = Trainer(card, out, config, device, log)
    if resume:
        trainer.load_checkpoint()
        log(f"resuming after epoch {trainer.state['epoch']}")
    t0 = time.perf_counter()
    calibration_maps = None
    if synthetic_volumes and label_maps:
        from .synth_labels import label_map_files

        files = label_map_files(label_maps)
        if len(files) <= val_maps or val_maps < 1:
            raise ValueError(f"{label_maps}: {len(files)} label maps; need more than --val-maps {val_maps}")
        train_files, calibration_maps = files[:-val_maps], files[-val_maps:]
        n_val = max(1, round(val_fraction * synthetic_volumes))
        seeds = list(range(config.seed, config.seed + synthetic_volumes))
        items = (_label_items(train_files, seeds[:-n_val], normal_variants=normal_variants)
                 + _label_items(calibration_maps, seeds[-n_val:], normal_variants=normal_variants))
        make = partial(label_head_slices, preprocessing=card.preprocessing, size=card.input_size,
                       min_foreground_fraction=config.min_foreground_fraction)
        per_volume = list(map_in_workers(make, items, workers))
        train, val = torch.cat(per_volume[:-n_val]), torch.cat(per_volume[-n_val:])
        described = {"source": f"synthetic heads from label maps in {label_maps} (napari_uad.synth_labels)",
                     "train_label_maps": [p.name for p in train_files],
                     "val_label_maps": [p.name for p in calibration_maps],
                     "train_seeds": [seeds[0], seeds[-n_val - 1]], "val_seeds": [seeds[-n_val], seeds[-1]],
                     "normal_variants": normal_variants}
        held_out: list[Volume] = []
    elif synthetic_volumes:
        n_val = max(1, round(val_fraction * synthetic_volumes))
        seeds = list(range(config.seed, config.seed + synthetic_volumes))
        train_seeds, val_seeds = seeds[:-n_val], seeds[-n_val:]
        make = partial(synthetic_slices, preprocessing=card.preprocessing, size=card.input_size,
                       min_foreground_fraction=config.min_foreground_fraction)
        per_volume = list(map_in_workers(make, seeds, workers))
        train, val = torch.cat(per_volume[:-n_val]), torch.cat(per_volume[-n_val:])
        described = {"source": "synthetic healthy brains (napari_uad.synth, MNI152 2009 template via nilearn)",
                     "train_seeds": [train_seeds[0], train_seeds[-1]], "val_seeds": [val_seeds[0], val_seeds[-1]]}
        held_out: list[Volume] = []
    else:
        files = scan_files(data)
        usable = read_scans(files, card.modality, log)
        if len(usable) < 2:
            raise ValueError(f"{data}: need at least 2 usable scans (1 for validation), found {len(usable)}")
        order = np.random.default_rng(config.seed).permutation(len(usable))
        n_val = max(1, round(val_fraction * len(usable)))
        held_out = [usable[i] for i in order[-n_val:]]
        train = trainer.slices_of(usable[i] for i in order[:-n_val])
        val = trainer.slices_of(held_out)
        described = {"source": f"user scans: {data}", "n_files": len(files), "n_usable": len(usable)}
    card = trainer.card
    earlier = card.training.get("commands", [card.training["command"]] if "command" in card.training else [])
    card.training.update({**described, "command": command, "commands": [*earlier, command],
                          "n_train_slices": len(train),
                          "n_val_slices": len(val), "data_seconds": round(time.perf_counter() - t0, 1)})
    log(f"{len(train)} training slices, {len(val)} validation slices on {trainer.device.type}")
    if init is not None and not resume:
        trainer.model.load_state_dict(init[0])
        initial = trainer.validation_loss(val)
        card.training.update({"init_from": init[1], "initial_val_loss_nats_per_slice": initial})
        log(f"fine-tuning from {init[1]['name']} {init[1]['version']}: validation loss before training {initial:.1f}")
    trainer.fit(train, val)
    if calibration_volumes > 0:
        card = calibrate_model(out, synthetic_volumes=calibration_volumes if synthetic_volumes else 0,
                               held_out=held_out, seed=config.seed, device=device, workers=workers,
                               label_maps=calibration_maps, normal_variants=normal_variants,
                               command=command, log=log)
    return card
