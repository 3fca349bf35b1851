"""Score maps against hand-computed formulas, batch-size invariance, determinism, cancellation, model cards."""

from __future__ import annotations

import json
import math
import threading

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_uad.io import Volume
from napari_uad.model import CeVAE
from napari_uad.model_card import ModelError, load_model, resolve_model
from napari_uad.preprocessing import normalise_intensity
from napari_uad.scoring import MAP_NAMES, Scorer, ScoringCancelled, parse_maps
from napari_uad.slices import gaussian_blur2d

from .conftest import head_phantom, make_tiny_model


def test_gaussian_terms_by_hand():
    from napari_uad.model import gaussian_nll, kl_per_slice

    x, mu, log_var = torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([0.0])
    u, e = gaussian_nll(x, mu, log_var)
    assert u.item() == pytest.approx(0.5 * math.log(2 * math.pi))
    assert e.item() == pytest.approx(0.5)
    u, e = gaussian_nll(torch.tensor([3.0]), torch.tensor([1.0]), torch.tensor([math.log(4.0)]))
    assert u.item() == pytest.approx(0.5 * math.log(2 * math.pi * 4.0))
    assert e.item() == pytest.approx(4.0 / 8.0)
    kl = kl_per_slice(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, math.log(2.0)]]))
    assert kl.item() == pytest.approx(0.5 * (1.0 + 0.0 + (2.0 - math.log(2.0) - 1.0)))


def test_gaussian_blur_matches_scipy():
    img = torch.rand(1, 1, 20, 24)
    ours = gaussian_blur2d(img, (1.5, 1.5), (4, 4))[0, 0].numpy()
    ref = ndimage.gaussian_filter(img[0, 0].numpy().astype(np.float64), 1.5, mode="mirror", truncate=4 / 1.5)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def _hand_gradients(ref_model, card, x, k):
    """Per noisy copy (SmoothGrad, the scorer's seeded noise for slice k): dKL/dx and d(KL + Rec)/dx."""
    std = card.scoring.smoothgrad_noise * card.preprocessing.value_range
    gen = torch.Generator().manual_seed(card.scoring.seed * 1_000_003 + k)
    noise = torch.randn((card.scoring.smoothgrad_samples, 1, *x.shape[2:]), generator=gen) * std
    kl_grads, elbo_grads = [], []
    for t in range(card.scoring.smoothgrad_samples):
        xn = (x + noise[t]).requires_grad_(True)
        m, lv = ref_model.encode(xn)
        kl = 0.5 * (m**2 + lv.exp() - lv - 1).sum()
        mx, lvx = ref_model.decode(m)
        rec = (0.5 * (math.log(2 * math.pi) + lvx) + (xn - mx) ** 2 / (2 * lvx.exp())).sum()
        kl_grads.append(torch.autograd.grad(kl, xn, retain_graph=True)[0])
        elbo_grads.append(torch.autograd.grad(kl + rec, xn)[0])
    return torch.stack(kl_grads), torch.stack(elbo_grads)


@pytest.mark.parametrize("reduction", ["abs_mean", "positive"])
def test_gradient_reductions_and_brain_only_match_hand_computation(tmp_path, reduction):
    """The card's grad_reduction / grad_brain_only variants of KL-grad, by hand: identity geometry, gradient
    zeroed outside the brain, then the Gaussian (sigma 3 px at 128 -> 0.75 px at 32, radius 1)."""
    import dataclasses

    make_tiny_model(tmp_path, margin=0.0, samples=3, sigma=3.0)
    model, card = load_model(tmp_path)
    card.scoring = dataclasses.replace(card.scoring, grad_reduction=reduction, grad_brain_only=True)
    vol = Volume.from_array(head_phantom((32, 32, 3), lesion=True), np.eye(4))
    mask = np.ones(vol.shape, bool)  # bounding box = the whole slice, so the slice geometry is the identity
    mask[:10, :12, :] = False
    result = Scorer(model, card, device="cpu").score(vol, ("kl_grad",), mask=mask)
    x_all = normalise_intensity(vol.data, mask, card.preprocessing)
    for k in range(vol.shape[2]):
        kl_grads, _ = _hand_gradients(model, card, torch.tensor(x_all[:, :, k])[None, None], k)
        mean = kl_grads.mean(dim=0)[0, 0].numpy().astype(np.float64)
        reduced = (np.abs(mean) if reduction == "abs_mean" else np.maximum(mean, 0.0)) * mask[:, :, k]
        expected = ndimage.gaussian_filter(reduced, 0.75, mode="mirror", truncate=1 / 0.75) * mask[:, :, k]
        np.testing.assert_allclose(result.maps["kl_grad"][:, :, k], expected, rtol=2e-4, atol=1e-6)
    with pytest.raises(ValueError, match="grad_reduction 'median'"):
        dataclasses.replace(card.scoring, grad_reduction="median")


def test_maps_match_hand_computation_on_tiny_model(tmp_path):
    """With an identity slice geometry (32 x 32 slices, no margin, full mask) and no smoothing, every map is
    exactly the METHODS.md formula applied to the model's outputs."""
    make_tiny_model(tmp_path, margin=0.0, samples=3, sigma=0.0)
    model, card = load_model(tmp_path)
    # a combined map of z and nll: quantile tables a calibration could have written
    levels = [0.0, 0.5, 0.9, 0.99, 0.999, 1.0]
    card.calibration = {"levels": levels, "maps": {"z": {"quantiles": [-4.0, 0.0, 1.0, 2.0, 3.0, 4.0]},
                                                   "nll": {"quantiles": [-3.0, -1.0, 0.0, 1.0, 2.0, 8.0]}},
                        "combined": {"components": ["z", "nll"]}}
    data = head_phantom((32, 32, 4), lesion=True)
    vol = Volume.from_array(data, np.diag([1.0, 1.0, 2.0, 1.0]))
    mask = np.ones(vol.shape, bool)
    result = Scorer(model, card, device="cpu", batch_size=3).score(vol, MAP_NAMES, mask=mask)

    ref_model = CeVAE(card.architecture)
    ref_model.load_state_dict(model.state_dict())
    x_all = normalise_intensity(vol.data, mask, card.preprocessing)
    for k in range(vol.shape[2]):
        x = torch.tensor(x_all[:, :, k])[None, None]
        with torch.no_grad():
            mu_z, lv_z = ref_model.encode(x)
            mu_x, lv_x = ref_model.decode(mu_z)
        residual = (x - mu_x).abs()
        sigma2 = torch.exp(lv_x)
        u = 0.5 * torch.log(2 * math.pi * sigma2)
        e = (x - mu_x) ** 2 / (2 * sigma2)
        kl_grads, elbo_grads = _hand_gradients(ref_model, card, x, k)
        kl_g, elbo_g = kl_grads.abs().mean(dim=0), elbo_grads.abs().mean(dim=0)
        z = (x - mu_x) / torch.sqrt(sigma2)

        def surprise(values, quantiles):  # -log10(1 - healthy quantile), capped at 5
            q = np.interp(values.numpy().astype(np.float64), quantiles, levels)
            return torch.tensor(np.minimum(-np.log10(np.maximum(1 - q, 1e-5)), 5.0))

        combined = (surprise(z, card.calibration["maps"]["z"]["quantiles"])
                    + surprise(u + e, card.calibration["maps"]["nll"]["quantiles"])) / 2
        expected = {"residual": residual, "signed_residual": x - mu_x, "U": u, "E": e, "z": z, "nll": u + e,
                    "combined": combined, "kl_grad": kl_g, "elbo_grad": elbo_g, "combi": residual * kl_g}
        for name, ref in expected.items():
            np.testing.assert_allclose(result.maps[name][:, :, k], ref[0, 0].numpy(), rtol=2e-4, atol=1e-5,
                                       err_msg=f"{name} slice {k}")
        kl_slice = 0.5 * (mu_z**2 + lv_z.exp() - lv_z - 1).sum().item()
        assert result.slice_kl[k] == pytest.approx(kl_slice, rel=1e-4)
        assert result.slice_scores[k] == pytest.approx(kl_slice + (u + e).sum().item(), rel=1e-4)
    top = np.sort(result.slice_scores)[::-1][: card.scoring.top_k_slices]
    assert result.volume_score == pytest.approx(top.mean())


@pytest.fixture(scope="module")
def phantom_volume():
    return Volume.from_array(head_phantom((40, 44, 12)), np.diag([-1.0, 1.2, 3.0, 1.0]))


def test_maps_are_zero_outside_foreground(tiny_model_dir, phantom_volume):
    model, card = load_model(tiny_model_dir)
    result = Scorer(model, card, device="cpu").score(phantom_volume)
    assert set(result.maps) == set(MAP_NAMES)
    for name, m in result.maps.items():
        assert m.shape == phantom_volume.shape and m.dtype == np.float32
        assert np.all(m[~result.mask] == 0), name
        assert np.all(np.isfinite(m)), name
        if name not in ("tissue", "asymmetry", "combined", "signed_residual", "z"):
            assert m[result.mask].max() > 0, name
        if name in ("signed_residual", "z"):  # signed: brighter and darker than expected
            assert m[result.mask].max() > 0 > m[result.mask].min(), name
    # the tiny model has no template space: the tissue map cannot be made, and the result says so
    assert not result.maps["tissue"].any() and any("tissue map not computed" in w for w in result.warnings)
    assert not result.maps["asymmetry"].any() and any("asymmetry map not computed" in w for w in result.warnings)
    # nor a calibrated combined map
    assert not result.maps["combined"].any() and any("combined map not computed" in w for w in result.warnings)
    empty = ~result.mask.any(axis=(0, 1))
    assert np.all(np.isnan(result.slice_scores[empty])) and np.all(np.isfinite(result.slice_scores[~empty]))


def test_results_do_not_depend_on_batch_size_and_are_deterministic(tiny_model_dir, phantom_volume):
    runs = []
    for batch in (1, 4, 64, 4):
        model, card = load_model(tiny_model_dir)
        runs.append(Scorer(model, card, device="cpu", batch_size=batch).score(phantom_volume))
    for other in runs[1:]:
        for name in MAP_NAMES:
            np.testing.assert_allclose(other.maps[name], runs[0].maps[name], rtol=1e-4, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(other.slice_scores, runs[0].slice_scores, rtol=1e-5)
    for name in MAP_NAMES:  # same batch size twice: bit-identical
        np.testing.assert_array_equal(runs[1].maps[name], runs[3].maps[name])


def test_progress_and_cancellation(tiny_model_dir, phantom_volume):
    model, card = load_model(tiny_model_dir)
    scorer = Scorer(model, card, device="cpu", batch_size=2)
    steps = []
    scorer.score(phantom_volume, ("residual",), progress=steps.append)
    assert steps[0].done == 0 and steps[-1].done == steps[-1].total
    assert [s.done for s in steps] == sorted(s.done for s in steps) and len(steps) > 3
    assert steps[-1].eta_s == 0

    cancel = threading.Event()
    seen = []

    def progress(step):
        seen.append(step)
        if step.done >= 2:
            cancel.set()

    with pytest.raises(ScoringCancelled):
        scorer.score(phantom_volume, progress=progress, cancel=cancel)
    assert seen[-1].done == 2  # stopped right after the batch during which cancel was requested


def test_parse_maps():
    assert parse_maps("E,residual") == ("residual", "E")
    assert parse_maps(None) == MAP_NAMES
    with pytest.raises(ValueError, match="unknown map"):
        parse_maps("residual,bogus")


def test_unknown_or_missing_device_is_a_clear_error(tiny_model_dir):
    model, card = load_model(tiny_model_dir)
    with pytest.raises(ValueError, match="unknown device"):
        Scorer(model, card, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="not available"):
            Scorer(model, card, device="cuda")


def test_card_verifies_weights_sha256(tmp_path):
    make_tiny_model(tmp_path)
    model, card = load_model(tmp_path / "card.json")
    assert card.name == "tiny-test" and not model.training
    weights = tmp_path / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF
    weights.write_bytes(bytes(blob))
    with pytest.raises(ModelError, match="does not match the card"):
        load_model(tmp_path)


def test_card_architecture_mismatch_is_reported(tmp_path):
    make_tiny_model(tmp_path)
    d = json.loads((tmp_path / "card.json").read_text(encoding="utf-8"))
    d["architecture"]["latent"] = 8
    (tmp_path / "card.json").write_text(json.dumps(d))
    with pytest.raises(ModelError, match="do not fit the card"):
        load_model(tmp_path)


def test_unknown_model_name_lists_known_models(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_UAD_MODELS", str(tmp_path))
    make_tiny_model(tmp_path / "my-model")
    assert resolve_model("my-model") == tmp_path / "my-model"
    with pytest.raises(ModelError, match="my-model"):
        resolve_model("nope")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_matches_cpu(tiny_model_dir, phantom_volume):
    """The default scorer on a GPU (float32) gives the CPU's maps within float tolerance."""
    model, card = load_model(tiny_model_dir)
    cpu = Scorer(model, card, device="cpu").score(phantom_volume)
    model, card = load_model(tiny_model_dir)
    gpu = Scorer(model, card, device="cuda").score(phantom_volume)
    for name in MAP_NAMES:
        np.testing.assert_allclose(gpu.maps[name], cpu.maps[name], rtol=1e-3, atol=1e-4, err_msg=name)


def test_out_of_memory_halves_the_batch_then_falls_back_to_cpu(tiny_model_dir, phantom_volume, monkeypatch):
    """Simulated GPU OOM: the scorer retries with smaller batches, then continues on the CPU with a warning,
    and the result equals a plain CPU run."""
    model, card = load_model(tiny_model_dir)
    reference = Scorer(model, card, device="cpu", batch_size=4).score(phantom_volume, ("residual", "kl_grad"))
    model, card = load_model(tiny_model_dir)
    scorer = Scorer(model, card, device="cpu", batch_size=8)
    scorer.device = torch.device("cuda")  # pretend; the patched batch function fails like a full GPU would
    real = Scorer._score_slices
    tried = []

    def fake(self, normalised, mask, ks, geometry, maps):
        tried.append((self.device.type, len(ks)))
        if self.device.type == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, normalised, mask, ks, geometry, maps)

    monkeypatch.setattr(Scorer, "_score_slices", fake)
    with pytest.warns(RuntimeWarning, match="out of memory"):
        result = scorer.score(phantom_volume, ("residual", "kl_grad"))
    assert [t for t in tried if t[0] == "cuda"] == [("cuda", 8), ("cuda", 4), ("cuda", 2), ("cuda", 1)]
    assert result.device == "cpu" and len(result.warnings) == 4
    for name in ("residual", "kl_grad"):
        np.testing.assert_allclose(result.maps[name], reference.maps[name], rtol=1e-4, atol=1e-6)
