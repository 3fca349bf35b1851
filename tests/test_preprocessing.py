"""Foreground mask, intensity normalisation and the slice geometry between native and model grids."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_uad.mask import constant_background_value, foreground_mask
from napari_uad.preprocessing import PreprocessingConfig, normalise_intensity
from napari_uad.slices import SliceGeometry

from .conftest import head_phantom


def test_mask_on_zscored_volume_with_negative_constant_background():
    data = head_phantom(lesion=False)
    inside = data > 0
    z = (data - data[inside].mean()) / data[inside].std()
    z[~inside] = -4.2  # constant negative background as left by z-scoring pipelines
    assert constant_background_value(z) == pytest.approx(-4.2)
    mask = foreground_mask(z)
    assert mask.sum() == inside.sum()  # dark tissue inside (z < 0) is kept, not cut by Otsu


def test_mask_otsu_on_noisy_background_keeps_largest_component_and_fills_holes():
    rng = np.random.default_rng(0)
    data = head_phantom(lesion=False) + rng.uniform(0, 8, (40, 44, 24)).astype(np.float32)
    data[data > 120] = 110.0
    truth = head_phantom(lesion=False) > 0
    data[18:22, 20:24, 10:14] = 2.0  # dark hole inside the head
    data[1:3, 1:3, 1:3] = 140.0  # bright speck outside: not the largest component
    mask = foreground_mask(data)
    assert mask[19, 21, 11]  # hole filled
    assert not mask[1, 1, 1]
    dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
    assert dice > 0.97


def test_zscore_normalisation_inside_mask():
    data = head_phantom(lesion=False)
    mask = data > 0
    cfg = PreprocessingConfig(clip=(-3.0, 3.0))
    out = normalise_intensity(data, mask, cfg)
    assert out.dtype == np.float32
    assert np.all(out[~mask] == -3.0)
    assert abs(out[mask].mean()) < 0.05 and abs(out[mask].std() - 1) < 0.1


def test_window_normalisation_for_ct():
    data = np.linspace(-1000, 1000, 1000, dtype=np.float32).reshape(10, 10, 10)
    cfg = PreprocessingConfig(normalisation="window", window=(0.0, 80.0), clip=(-1.0, 1.0))
    out = normalise_intensity(data, np.ones_like(data, bool), cfg)
    assert out.min() == -1.0 and out.max() == 1.0
    inside = (data >= 0) & (data <= 80)
    np.testing.assert_allclose(out[inside], -1.0 + data[inside] / 40.0, atol=1e-6)


@pytest.fixture
def geometry():
    mask = np.zeros((70, 50, 5), bool)
    mask[8:62, 5:45, 1:4] = True
    return SliceGeometry.from_mask(mask, spacing=(0.8, 1.2), size=32, margin=0.05)


def test_geometry_coordinate_maps_are_exact_inverses(geometry):
    u, v = np.meshgrid(np.arange(-3.0, 35.0, 0.7), np.arange(-2.0, 33.0, 1.3))
    i, j = geometry.model_to_native(u, v)
    u2, v2 = geometry.native_to_model(i, j)
    np.testing.assert_allclose(u2, u, atol=1e-10)
    np.testing.assert_allclose(v2, v, atol=1e-10)
    # square field of view in mm, covering the foreground box with the margin
    assert geometry.pixel_mm * 32 == pytest.approx(max(54 * 0.8, 40 * 1.2) * 1.1)


def test_slice_resize_round_trip_reproduces_smooth_slices(geometry):
    ii, jj = np.meshgrid(np.arange(70.0), np.arange(50.0), indexing="ij")
    ramp = torch.tensor((0.02 * ii * 0.8 - 0.03 * jj * 1.2)[None, None], dtype=torch.float32)
    back = geometry.to_native(geometry.to_model(ramp))
    assert back.shape == ramp.shape
    inner = (slice(None), slice(None), slice(12, 58), slice(8, 42))  # away from the field-of-view border
    np.testing.assert_allclose(back[inner].numpy(), ramp[inner].numpy(), atol=2e-3)


def test_slice_resize_keeps_blob_in_place(geometry):
    ii, jj = np.meshgrid(np.arange(70.0), np.arange(50.0), indexing="ij")
    blob = np.exp(-(((ii - 40.3) * 0.8) ** 2 + ((jj - 17.6) * 1.2) ** 2) / (2 * 4.0**2))
    x = torch.tensor(blob[None, None], dtype=torch.float32)
    model = geometry.to_model(x)[0, 0].numpy()
    uu, vv = np.meshgrid(np.arange(32.0), np.arange(32.0), indexing="ij")
    com_model = np.array([(uu * model).sum(), (vv * model).sum()]) / model.sum()
    i, j = geometry.model_to_native(*com_model)
    assert abs(i - 40.3) < 0.3 and abs(j - 17.6) < 0.3
    back = geometry.to_native(geometry.to_model(x))[0, 0].numpy()
    com_back = np.array([(ii * back).sum(), (jj * back).sum()]) / back.sum()
    np.testing.assert_allclose(com_back, [40.3, 17.6], atol=0.1)


def test_to_model_fills_outside_native_slice():
    full = SliceGeometry.from_mask(np.ones((70, 50, 2), bool), spacing=(1.0, 1.0), size=32, margin=0.05)
    out = full.to_model(torch.zeros(1, 1, 70, 50), fill=-3.0)[0, 0]
    assert out[0, 0] == pytest.approx(-3.0)  # corner of the square field of view lies outside the 70 x 50 slice
    assert out[16, 16] == pytest.approx(0.0, abs=1e-6)
