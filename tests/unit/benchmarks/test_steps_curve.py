"""The pure parts of benchmarks/steps_curve.py: run plan, seed aggregation, table and chart.

The chart primitives are tested in tests/unit/training/test_charts.py.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from conftest import REPO_ROOT
from PIL import Image

from ct2pet_node.training.charts import COLOURS, GREY, PANEL_SIZE


@pytest.fixture(scope="module")
def steps_curve() -> ModuleType:
    path = REPO_ROOT / "benchmarks" / "steps_curve.py"
    spec = importlib.util.spec_from_file_location("steps_curve_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def _run(steps: int, eta: float, seed: int, mae: float | None, ssim: float = 0.95) -> dict[str, Any]:
    mean = {
        "mae_suv": mae,
        "psnr_db": 37.0 + seed,
        "ssim": ssim,
        "suv_mean_error": -0.3,
        "suv_max_error": 1.0,
    }
    return {"steps": steps, "eta": eta, "seed": seed, "seconds_per_slice": 2.0 + seed, "mean": mean}


def test_eta_zero_runs_once_and_eta_one_once_per_seed(steps_curve: ModuleType) -> None:
    runs = steps_curve.plan([50, 10], [1.0, 0.0], [0, 1, 2])
    assert runs == [
        *[(50, 1.0, s) for s in (0, 1, 2)],
        *[(10, 1.0, s) for s in (0, 1, 2)],
        (50, 0.0, 0),
        (10, 0.0, 0),
    ]


def test_aggregate_gives_mean_and_spread_over_seeds(steps_curve: ModuleType) -> None:
    runs = [_run(50, 1.0, 0, 0.10), _run(50, 1.0, 1, 0.14), _run(50, 0.0, 0, None)]
    stochastic, deterministic = steps_curve.aggregate(runs)
    assert stochastic["seeds"] == [0, 1]
    assert stochastic["mean"]["mae_suv"] == pytest.approx(0.12)
    assert (stochastic["min"]["mae_suv"], stochastic["max"]["mae_suv"]) == (0.10, 0.14)
    assert stochastic["std"]["mae_suv"] == pytest.approx(np.std([0.10, 0.14], ddof=1))
    assert stochastic["seconds_per_slice"] == pytest.approx(2.5)
    assert deterministic["mean"]["mae_suv"] is None
    assert deterministic["std"]["psnr_db"] == 0.0


def _report(steps_curve: ModuleType, baseline: dict[str, float] | None) -> dict[str, Any]:
    runs = [_run(s, 1.0, seed, 0.1 + 0.01 * seed + 1 / s) for s in (200, 20) for seed in (0, 1)]
    runs += [_run(s, 0.0, 0, 0.1 + 1 / s, ssim=0.94) for s in (200, 20)]
    return {
        "model_id": "m",
        "study": "1.2.3",
        "slices": [120, 160],
        "image_size": 128,
        "seeds": [0, 1],
        "device": "cpu",
        "torch": "x",
        "command": "python benchmarks/steps_curve.py",
        "weights_default": {"steps": 50, "eta": 0.0},
        "curve": steps_curve.aggregate(runs),
        "baseline": baseline,
    }


def test_table_has_a_row_per_point_spread_only_over_seeds_and_the_baseline(steps_curve: ModuleType) -> None:
    baseline = {
        "mae_suv": 0.13,
        "psnr_db": 36.7,
        "ssim": 0.905,
        "suv_mean_error": -0.34,
        "suv_max_error": -3.7,
    }
    rows = [
        line for line in steps_curve.markdown(_report(steps_curve, baseline)).splitlines() if line[:2] == "| "
    ]
    assert len(rows) == 2 + 4 + 1  # header, rule, (200, 20) x (eta 1, eta 0), baseline
    assert rows[2].startswith("| 200 | 1 | 0.1100 [0.1050, 0.1150] |")
    assert rows[4].startswith("| 200 | 0 | 0.1050 | ")
    assert rows[-1].startswith("| HU lookup | - | 0.1300 | 36.70 | 0.9050 |")


def test_chart_draws_both_etas_and_the_baseline(steps_curve: ModuleType, tmp_path: Path) -> None:
    baseline = {"mae_suv": 0.13, "psnr_db": 36.7, "ssim": 0.905}
    path = steps_curve.draw_chart(_report(steps_curve, baseline), tmp_path / "curve.png")
    with Image.open(path) as image:
        assert image.size == (3 * PANEL_SIZE[0], 30 + PANEL_SIZE[1] + 30)
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    colours = {tuple(int(v) for v in p) for p in np.unique(pixels, axis=0)}
    assert {COLOURS[0], COLOURS[1], GREY} <= colours
