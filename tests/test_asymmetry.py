"""The left-right asymmetry map (napari_uad.asymmetry): the mirror's geometry, a hand computation on a tiny
volume, the refinement of a misplaced plane, and the map through the scorer in the scan's own grid."""

import numpy as np
import pytest

from napari_uad.asymmetry import asymmetry_map, mirror_voxel_map, refine_mirror


def _template_affine():
    a = np.eye(4)
    a[:3, 3] = (-10.0, -20.0, -5.0)  # template voxel 10 lies on world x = 0
    return a


def test_mirror_voxel_map_reflects_across_template_midline_in_any_scan_grid():
    """A scan point at world x = +d of the template lands at x = -d, whatever the scan's voxel grid (here 2 mm,
    rotated) and the alignment between them; mirroring twice is the identity."""
    tpl = _template_affine()
    rot = np.eye(4)
    c, s = np.cos(0.3), np.sin(0.3)
    rot[:2, :2] = [[c, -s], [s, c]]
    scan_affine = rot @ np.diag([2.0, 2.0, 2.0, 1.0])
    scan_affine[:3, 3] = (3.0, -7.0, 1.0)
    template_to_scan = np.eye(4)
    template_to_scan[:3, 3] = (4.0, 0.0, 0.0)
    native_to_model = np.linalg.inv(tpl) @ np.linalg.inv(template_to_scan) @ scan_affine
    m = mirror_voxel_map(native_to_model, tpl)
    np.testing.assert_allclose(m @ m, np.eye(4), atol=1e-9)
    v = np.array([5.0, 3.0, 2.0, 1.0])
    world_tpl = np.linalg.inv(template_to_scan) @ scan_affine @ v
    world_tpl_mirror = np.linalg.inv(template_to_scan) @ scan_affine @ (m @ v)
    np.testing.assert_allclose(world_tpl_mirror[:3], [-world_tpl[0], world_tpl[1], world_tpl[2]], atol=1e-9)


def _symmetric_volume(n=(21, 12, 10), seed=0):
    """A volume symmetric about i = 10 (so about voxel 10 in the template of ``_template_affine``)."""
    rng = np.random.default_rng(seed)
    half = rng.normal(1.0, 0.1, (11, *n[1:]))
    return np.concatenate([half, half[-2::-1]], axis=0).astype(np.float32)


def test_asymmetry_is_the_hand_computed_z_on_a_tiny_volume():
    """No smoothing, no refinement: a = (x(v) - x(mirror v)) / (1.4826 MAD), 0 outside the brain and where the
    mirror leaves it; a bright voxel is positive, its mirror negative by the same amount."""
    data = _symmetric_volume()
    data += np.random.default_rng(1).normal(0, 0.01, data.shape).astype(np.float32)  # a little asymmetry
    data[3, 5, 5] += 1.0  # a "lesion" on one side
    brain = np.zeros(data.shape, bool)
    brain[1:20, 1:11, 1:9] = True
    brain[1, 1, 1] = False  # its mirror (19, 1, 1) has no partner in the brain
    mirror = np.diag([-1.0, 1.0, 1.0, 1.0])
    mirror[0, 3] = 20.0  # i -> 20 - i
    a = asymmetry_map(data, brain, mirror, sigma_mm=0.0, refine=False)

    valid = brain & brain[::-1]
    diff = (data - data[::-1])[valid]
    spread = 1.4826 * np.median(np.abs(diff - np.median(diff)))
    expected = np.zeros(data.shape, np.float32)
    expected[valid] = diff / spread
    np.testing.assert_allclose(a, expected, rtol=1e-4, atol=1e-4)
    assert a[19, 1, 1] == 0.0 and a[0, 5, 5] == 0.0
    assert a[3, 5, 5] > 10 and a[17, 5, 5] == pytest.approx(-a[3, 5, 5], rel=1e-4)
    assert np.unravel_index(np.argmax(a), a.shape) == (3, 5, 5)


def test_refinement_finds_the_brain_own_plane_when_the_template_plane_is_off():
    """A symmetric blob brain whose mirror plane is given 3 voxels off: the refined mirror maps the brain onto
    itself (the asymmetry of a symmetric scan falls to near nothing), and a lesion stays the map's maximum."""
    shape = (48, 40, 36)
    ii, jj, kk = np.indices(shape, dtype=np.float32)
    centre = np.array([23.5, 19.5, 17.5])
    r = np.sqrt(((ii - centre[0]) / 16) ** 2 + ((jj - centre[1]) / 14) ** 2 + ((kk - centre[2]) / 12) ** 2)
    brain = r <= 1.0
    data = (np.cos(6 * r) + 0.5 * np.cos(jj / 3.0) * np.cos(kk / 4.0)).astype(np.float32)  # symmetric in i
    data[10:14, 18:22, 16:20] += 3.0
    true_mirror = np.diag([-1.0, 1.0, 1.0, 1.0])
    true_mirror[0, 3] = 2 * centre[0]
    off = true_mirror.copy()
    off[0, 3] += 3.0
    smoothed = np.where(brain, data, 0).astype(np.float32)
    refined = refine_mirror(smoothed, off, (1.0, 1.0, 1.0))
    v = np.array([30.0, 20.0, 18.0, 1.0])
    assert np.linalg.norm((refined @ v - true_mirror @ v)[:3]) < 0.75  # was 3 voxels
    a_off = asymmetry_map(data, brain, off, refine=False)
    a_ref = asymmetry_map(data, brain, off, refine=True)
    lesion = np.zeros(shape, bool)
    lesion[10:14, 18:22, 16:20] = True
    assert np.unravel_index(np.argmax(a_ref), shape) in set(map(tuple, np.argwhere(lesion)))
    # the healthy brain's asymmetry (the map's unit) shrinks, so the lesion stands out further above it
    assert np.median(a_ref[lesion]) > 2 * np.median(a_off[lesion])


def test_asymmetry_is_zero_where_there_is_no_brain():
    data = np.ones((8, 8, 8), np.float32)
    assert not asymmetry_map(data, np.zeros(data.shape, bool), np.eye(4)).any()
