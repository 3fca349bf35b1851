"""Qt-free display rules: the colour range of a score map; what a layer carries back into its volume."""

from __future__ import annotations

import numpy as np
import pytest

from napari_uad.calibration import quantile_table
from napari_uad.display import map_limits


def test_map_limits_light_one_percent_of_a_healthy_brain_and_saturate_at_the_threshold():
    rng = np.random.default_rng(0)
    healthy = rng.normal(size=200_000)
    entry = {"threshold_fpr_1pct": float(np.quantile(healthy, 0.99)), "threshold": 4.0,
             "quantiles": quantile_table(healthy).tolist()}
    scan = rng.normal(size=100_000)  # a healthy scan: its 99.9th percentile is below the threshold
    lo, hi = map_limits(scan, entry)
    assert (lo, hi) == (entry["threshold_fpr_1pct"], 4.0)
    assert (scan > lo).mean() == pytest.approx(0.01, abs=0.002)  # about 1 % of it shows any colour
    lesion = np.r_[scan, np.full(1000, 9.0)]  # a scan brighter than the threshold keeps its own top visible
    assert map_limits(lesion, entry) == (lo, pytest.approx(np.quantile(lesion, 0.999)))


def test_map_limits_without_calibration_and_on_an_empty_brain():
    values = np.arange(-50.0, 951.0)
    assert map_limits(values) == (450.0, pytest.approx(np.quantile(values, 0.999)))
    assert map_limits(np.full(10, -3.0)) == (0.0, 1.0)  # all below the background: the range stays valid
    assert map_limits(np.array([])) == (0.0, 1.0)


def test_a_layer_carries_the_scans_declarations_back_into_its_volume(tmp_path):
    """A scan opened through the plugin's reader keeps what its file declared (sequence and where it was read,
    contrast agent) when the widget rebuilds the volume from the layer, so scoring it in napari uses the same
    settings as `napari-uad score`."""
    from napari_uad.display import image_layer_kwargs, to_display, volume_from_layer
    from napari_uad.io import read_volume, write_image_file

    data = np.random.default_rng(0).random((8, 9, 10)).astype(np.float32)
    volume = read_volume(write_image_file(tmp_path / "sub-01_ce-gd_FLAIR.nii.gz", data, np.diag([1, 1, 2, 1.0])))
    assert volume.metadata == {"contrast_agent": "gd", "sequence": "flair", "sequence_source": "BIDS name"}
    kwargs = image_layer_kwargs(volume)
    back = volume_from_layer(to_display(volume.data), kwargs["metadata"], kwargs["scale"], kwargs["translate"])
    assert back.metadata == volume.metadata
    np.testing.assert_array_equal(back.data, volume.data)
    plain = read_volume(write_image_file(tmp_path / "scan.nii.gz", data, np.eye(4)))
    kwargs = image_layer_kwargs(plain)
    assert volume_from_layer(to_display(plain.data), kwargs["metadata"]).metadata == {}
