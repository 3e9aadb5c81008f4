"""The HU-bin -> mean SUV baseline: fitting, gaps, clamping and its file beside the weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ct2pet_node.errors import WeightsError
from ct2pet_node.training.baseline import BASELINE_FILE, fit_hu_baseline, load_baseline, save_baseline


def _pairs() -> tuple[np.ndarray, np.ndarray]:
    hu = np.array([[-1000.0, -1000.0, 40.0, 40.0], [600.0, 600.0, 45.0, 35.0]])
    suv = np.array([[0.0, 0.0, 1.0, 2.0], [0.2, 0.4, 3.0, 0.0]])
    return hu, suv


def test_each_bin_predicts_its_training_mean() -> None:
    hu, suv = _pairs()
    baseline = fit_hu_baseline(hu, suv, bin_width_hu=16.0)
    # 35, 40, 40 and 45 HU share the 32..48 bin: (2 + 1 + 3 + 0) / 4.
    np.testing.assert_allclose(baseline.predict(np.array([-1000.0, 40.0, 600.0])), [0.0, 1.5, 0.3])
    assert baseline.predict(hu).dtype == np.float32
    assert baseline.predict(hu).shape == hu.shape


def test_empty_bins_take_the_nearest_populated_bin() -> None:
    hu, suv = _pairs()
    baseline = fit_hu_baseline(hu, suv, bin_width_hu=16.0)
    assert baseline.predict(np.array([-100.0]))[0] == pytest.approx(1.5)  # nearer 40 than -1000
    assert baseline.predict(np.array([-900.0]))[0] == pytest.approx(0.0)
    assert baseline.predict(np.array([2000.0]))[0] == pytest.approx(0.3)


def test_values_outside_the_range_fall_in_the_end_bins() -> None:
    baseline = fit_hu_baseline(np.array([-3024.0, 5000.0]), np.array([0.5, 7.0]))
    np.testing.assert_allclose(baseline.predict(np.array([-5000.0, 9999.0])), [0.5, 7.0])


def test_round_trip_through_the_weights_folder(tmp_path: Path) -> None:
    hu, suv = _pairs()
    baseline = fit_hu_baseline(hu, suv)
    path = save_baseline(baseline, tmp_path)
    assert path.name == BASELINE_FILE
    loaded = load_baseline(tmp_path)
    probe = np.linspace(-1100, 3100, 57)
    np.testing.assert_array_equal(loaded.predict(probe), baseline.predict(probe))
    assert json.loads(path.read_text())["units"] == "SUVbw"


def test_missing_or_malformed_baseline_is_a_weights_error(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="does not exist"):
        load_baseline(tmp_path)
    (tmp_path / BASELINE_FILE).write_text(json.dumps({"kind": "hu_bin_mean_suv", "bin_edges_hu": [0, 1]}))
    with pytest.raises(WeightsError, match="malformed"):
        load_baseline(tmp_path)


def test_fit_refuses_mismatched_arrays() -> None:
    with pytest.raises(ValueError, match="equal"):
        fit_hu_baseline(np.zeros(3), np.zeros(4))
