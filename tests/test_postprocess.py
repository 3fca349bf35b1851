"""The detection map's median filter (napari_uad.postprocess) and the scorer applying the card's setting."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_uad.io import Volume
from napari_uad.model_card import ScoringConfig, load_model
from napari_uad.postprocess import ball_footprint, median_filter_map, median_footprint, open_map
from napari_uad.scoring import Scorer

from .conftest import head_phantom


def test_footprint_is_an_odd_number_of_voxels_about_the_width_in_mm():
    assert median_footprint((1.0, 1.0, 1.0), 3.0) == (3, 3, 3)
    assert median_footprint((1.0, 1.0, 5.0), 3.0) == (3, 3, 1)  # thick slices: not filtered across them
    assert median_footprint((0.5, 0.5, 2.0), 3.0) == (7, 7, 1)
    assert median_footprint((1.0, 1.0, 1.0), 0.0) == (1, 1, 1)


def test_median_removes_a_single_voxel_and_keeps_a_lesion_by_hand():
    """3 x 3 x 3 on a 1 mm grid: a lone bright voxel is the median of 26 zeros and itself -> 0; the centre of a
    5^3 block keeps its value; a voxel at the block's corner sees 8 of 27 block voxels -> 0; outside the brain
    stays 0 although the block reaches it."""
    values = np.zeros((16, 16, 16), np.float32)
    values[3, 3, 3] = 9.0
    values[6:11, 6:11, 6:11] = 4.0
    brain = np.ones(values.shape, bool)
    brain[:, :, 10:] = False
    values[~brain] = 0.0
    out = median_filter_map(values, brain, (1.0, 1.0, 1.0), 3.0)
    assert out[3, 3, 3] == 0.0
    assert out[8, 8, 8] == 4.0 and out[7, 7, 7] == 4.0
    assert out[6, 6, 6] == 0.0
    assert not out[~brain].any()
    # a face voxel of the block: 18 of its 27 neighbours inside the block (and the brain) -> the block value
    assert out[6, 8, 8] == 4.0
    # at the brain's edge the outside counts as 0: the slice k=9 sees 9 zeros beyond it, 18 block voxels
    assert out[8, 8, 9] == 4.0 and out[6, 8, 9] == 0.0


def test_median_on_the_brains_box_equals_the_whole_grid_and_respects_spacing():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(30, 28, 12)).astype(np.float32)
    brain = np.zeros(values.shape, bool)
    brain[6:22, 5:20, 3:9] = True
    values[~brain] = 0.0
    spacing = (1.0, 1.0, 5.0)
    out = median_filter_map(values, brain, spacing, 3.0)
    whole = ndimage.median_filter(values, size=(3, 3, 1), mode="constant", cval=0.0)
    np.testing.assert_array_equal(out[brain], whole[brain])
    assert not out[~brain].any()
    # on the 5 mm axis nothing is mixed: each slice is filtered on its own
    one_slice = ndimage.median_filter(values[:, :, 5], size=(3, 3), mode="constant", cval=0.0)
    np.testing.assert_array_equal(out[:, :, 5][brain[:, :, 5]], one_slice[brain[:, :, 5]])
    np.testing.assert_array_equal(median_filter_map(values, brain, spacing, 0.0), values)


def test_scorer_filters_the_cards_detection_map_only_and_says_so(tiny_model_dir):
    """A card with ``detection_median_mm`` gets its detection map median-filtered in the scan's grid (the same
    values as filtering the raw map by hand); other maps are untouched; the result records it;
    ``postprocess=False`` gives the raw map (calibration)."""
    volume = Volume.from_array(head_phantom((40, 44, 12)), np.diag([-1.0, 1.0, 3.0, 1.0]))
    model, card = load_model(tiny_model_dir)
    card.scoring = ScoringConfig(**{**card.scoring.to_dict(), "detection_median_mm": 3.0})
    scorer = Scorer(model, card, device="cpu")
    maps = ("residual", "nll")
    raw = scorer.score(volume, maps, postprocess=False)
    post = scorer.score(volume, maps)
    assert raw.postprocessing == {}
    assert post.postprocessing == {"map": "residual", "median_filter_mm": 3.0, "footprint_voxels": [3, 3, 1]}
    expected = median_filter_map(raw.maps["residual"], raw.mask, volume.spacing, 3.0)
    np.testing.assert_allclose(post.maps["residual"], expected, rtol=1e-6, atol=1e-7)
    assert not np.allclose(post.maps["residual"], raw.maps["residual"])
    np.testing.assert_allclose(post.maps["nll"], raw.maps["nll"], rtol=1e-6, atol=1e-7)


def test_card_rejects_a_negative_median_width():
    with pytest.raises(ValueError, match="detection_median_mm"):
        ScoringConfig(detection_median_mm=-1.0)


def test_ball_footprint_is_round_in_world_mm():
    """A 3 mm ball: the 19 voxels within 1.5 mm on a 1 mm grid (no corners); on 1 x 1 x 5 mm slices a flat disc
    (5 mm away is outside the ball); 0 mm: one voxel."""
    assert ball_footprint((1.0, 1.0, 1.0), 3.0).sum() == 19 and not ball_footprint((1.0, 1.0, 1.0), 3.0)[0, 0, 0]
    disc = ball_footprint((1.0, 1.0, 5.0), 3.0)
    assert disc.shape == (3, 3, 1) and disc.sum() == 9
    assert ball_footprint((1.0, 1.0, 1.0), 0.0).shape == (1, 1, 1)


def test_opening_drops_a_thin_region_keeps_a_thick_one_by_hand():
    """On a hand-made map: a 6 mm cube at 3 keeps 3 at its centre; a 2 mm thick slab at 2 and a single voxel at 5
    vanish with a 3 mm ball; a 4 mm slab keeps its value; no voxel rises; outside the brain stays 0; the brain's box
    gives what the whole grid gives; 0 mm changes nothing inside the brain."""
    values = np.zeros((24, 24, 24), np.float32)
    brain = np.zeros(values.shape, bool)
    brain[1:23, 1:23, 1:23] = True
    values[3:9, 3:9, 3:9] = 3.0
    values[12:14, 3:20, 3:20] = 2.0  # 2 voxels thick
    values[16:20, 3:20, 3:20] = 1.0  # 4 voxels thick
    values[5, 15, 15] = 5.0
    opened = open_map(values, brain, (1.0, 1.0, 1.0), 3.0)
    assert opened[5, 5, 5] == 3.0 and opened[12:14].max() == 0.0 and opened[5, 15, 15] == 0.0
    assert opened[17, 10, 10] == 1.0 and (opened <= values).all() and (opened[~brain] == 0).all()
    whole = ndimage.grey_opening(np.where(brain, values, 0), footprint=ball_footprint((1, 1, 1), 3.0),
                                 mode="constant", cval=0.0)
    np.testing.assert_array_equal(opened, np.where(brain, whole, 0))
    np.testing.assert_array_equal(open_map(values, brain, (1.0, 1.0, 1.0), 0.0), np.where(brain, values, 0))
    # on 5 mm slices the ball does not reach across slices: a region one slice thick keeps its values
    flat = np.zeros((12, 12, 5), np.float32)
    flat[3:9, 3:9, 2] = 2.0
    assert open_map(flat, np.ones(flat.shape, bool), (1.0, 1.0, 5.0), 3.0)[5, 5, 2] == 2.0
