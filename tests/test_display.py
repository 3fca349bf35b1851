"""Qt-free display rules: the colour range of a score map."""

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
