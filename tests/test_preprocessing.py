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


def test_background_holes_are_the_filled_voxels_at_the_background_value():
    """A skull-stripped scan's mask fills enclosed background; those voxels hold no tissue (the tissue fit leaves
    them out). A head with skull has no constant background, so nothing is a hole."""
    from napari_uad.mask import background_holes

    data = head_phantom(lesion=False)
    data[18:22, 20:24, 10:14] = 0.0  # background enclosed by the brain
    mask = foreground_mask(data)
    holes = background_holes(data, mask)
    assert mask[19, 21, 11] and holes.sum() == 4 * 4 * 4 and holes[18:22, 20:24, 10:14].all()
    assert not (holes & (data != 0)).any()
    rng = np.random.default_rng(0)
    noisy = data + rng.uniform(1, 8, data.shape).astype(np.float32)  # no constant background
    assert not background_holes(noisy, foreground_mask(noisy)).any()


@pytest.mark.parametrize("shift", [0, 12])
def test_hole_filling_matches_the_whole_volume_computation(shift):
    """Hole filling works inside the foreground's bounding box; it must equal filling the whole volume,
    also when the head touches the image border (shift 12 pushes it off the edge)."""
    from scipy import ndimage

    data = np.roll(head_phantom(shape=(48, 52, 30), lesion=False), shift, axis=0)
    if shift:
        data[:shift] = 0.0
    data[20:26, 22:28, 12:18] = 0.0  # closed cavity: a 3D hole
    data[30:34, 10:14, 5:25] = 0.0  # tunnel through the last axis: open in 3D, a hole in each axial slice
    data[14:17, 24:27, :] = 0.0  # channel open at both ends of the last axis
    top = int(np.flatnonzero((data != 0).any(axis=(0, 1)))[-1]) + 1
    data[8:44, 8:44, top] = 100.0  # a slab on top of the head (the last occupied axial slice) ...
    data[12:16, 12:16, top] = 0.0  # ... with a hole that only the slice-wise filling closes
    mask = foreground_mask(data)
    reference = ndimage.binary_fill_holes(data != 0)
    for k in range(reference.shape[2]):
        reference[:, :, k] = ndimage.binary_fill_holes(reference[:, :, k])
    np.testing.assert_array_equal(mask, reference)
    assert mask[22, 24, 14] and mask[32, 12, 10] and mask[13, 13, top]


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
