"""Evaluation parts: the pair, its preparation from the sample, scoring with a loaded pipeline, the report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import REPO_ROOT

from ct2pet_node.engine import Pipeline, load_pipeline
from ct2pet_node.errors import InputError
from ct2pet_node.training.evaluate import (
    METRIC_DEFINITIONS,
    METRIC_NAMES,
    evaluate_arrays,
    score,
    synthesise,
)
from ct2pet_node.training.evaluation_pair import EvaluationPair, load_evaluation_pair, parse_slices

DEMO = REPO_ROOT / "weights" / "demo"
STEPS = 3  # the fewest the linear schedule takes: plumbing, not quality


@pytest.fixture(scope="module")
def demo() -> Pipeline:
    return load_pipeline(DEMO, device="cpu")


@pytest.fixture(scope="module")
def demo_report() -> dict[str, Any]:
    report: dict[str, Any] = json.loads((DEMO / "report" / "metrics.json").read_text(encoding="utf-8"))
    return report


def _pair(first_index: int, size: int = 128) -> EvaluationPair:
    """One body-like slice: soft tissue (40 HU, SUV 1) in a disc, air around."""
    y, x = np.mgrid[:size, :size]
    disc = (y - size / 2) ** 2 + (x - size / 2) ** 2 < (size / 3) ** 2
    hu = np.where(disc, 40.0, -1000.0).astype(np.float32)[None]
    suv = disc.astype(np.float32)[None]
    return EvaluationPair(hu, suv, disc[None], 25.0, first_index, "1.2.3")


def test_slices_parse_half_open_and_refuse_what_is_outside() -> None:
    assert parse_slices("120:160", 247) == (120, 160)
    assert parse_slices(":5", 10) == (0, 5) and parse_slices("5:", 10) == (5, 10)
    assert parse_slices(None, 10) == (0, 10)
    for bad in ("5", "a:b", "8:8", "0:11"):
        with pytest.raises(InputError, match="--slices"):
            parse_slices(bad, 10)


def test_pair_refuses_unpaired_arrays_and_a_bad_range() -> None:
    good = _pair(0, size=8)
    with pytest.raises(InputError, match="paired"):
        EvaluationPair(good.hu, good.suv[:, :4], good.body, 25.0)
    with pytest.raises(InputError, match="positive range"):
        EvaluationPair(good.hu, good.suv, good.body, 0.0)
    with pytest.raises(InputError, match="slice index"):
        EvaluationPair(good.hu, good.suv, good.body, 25.0, first_index=-1)
    assert _pair(130, size=8).indices == [130]


def test_definitions_cover_every_metric_and_cannot_be_changed() -> None:
    assert set(METRIC_NAMES) <= set(METRIC_DEFINITIONS)
    with pytest.raises(TypeError):
        METRIC_DEFINITIONS["mae_suv"] = "changed"  # type: ignore[index]


@pytest.mark.slow
def test_sample_pair_is_prepared_as_the_demo_report_was(
    sample_dir: Path, demo_report: dict[str, Any]
) -> None:
    pair = load_evaluation_pair(DEMO, sample_dir / "CT", sample_dir / "PT", "130:132")
    assert pair.hu.shape == pair.suv.shape == pair.body.shape == (2, 128, 128)
    assert (pair.first_index, pair.indices, pair.study) == (130, [130, 131], demo_report["study"])
    assert pair.data_range == demo_report["data_range_suv"]
    # The HU baseline needs no sampling: its figures on these slices must be the report's exactly.
    from ct2pet_node.training.baseline import load_baseline

    summary = pair.summarise(load_baseline(DEMO).predict(pair.hu))
    expected = [s for s in demo_report["baseline"]["per_slice"] if s["slice"] in (130, 131)]
    assert summary["per_slice"] == expected


@pytest.mark.slow
def test_noise_follows_the_slice_index_in_the_study(demo: Pipeline) -> None:
    # The node translates the whole study at once: same CT twice, slices 0 and 1 of it.
    study = demo(np.concatenate([_pair(0).hu] * 2), steps=STEPS, eta=1.0, seed=0)
    slice_one = synthesise(demo, _pair(1), steps=STEPS, eta=1.0, seed=0)[0]
    # Batch size changes float32 rounding only (~1e-4 SUV); the noise of another slice, far more.
    assert np.abs(slice_one - study[1]).max() < 1e-3
    assert np.abs(slice_one - study[0]).max() > 1e-2


@pytest.mark.slow
def test_synthesise_refuses_a_pair_made_for_another_model(demo: Pipeline) -> None:
    with pytest.raises(InputError, match="do not fit model"):
        synthesise(demo, _pair(0, size=64), steps=STEPS)
    other_range = EvaluationPair(_pair(0).hu, _pair(0).suv, _pair(0).body, 10.0)
    with pytest.raises(InputError, match="do not fit model"):
        synthesise(demo, other_range, steps=STEPS)


@pytest.mark.slow
def test_report_with_a_loaded_pipeline_matches_score_and_keeps_its_keys(
    demo: Pipeline, demo_report: dict[str, Any], tmp_path: Path
) -> None:
    pair = _pair(7)
    report = evaluate_arrays(
        demo,
        pair.hu,
        pair.suv,
        tmp_path,
        body=pair.body,
        first_index=7,
        steps=STEPS,
        seed=0,
        progress=False,
        baseline_dir=DEMO,
    )
    assert list(report) == list(demo_report)  # metrics.json keeps its keys, in order
    assert report["sampling"] == {"steps": STEPS, "eta": demo.default_eta, "seed": 0}
    assert report["definitions"] == dict(METRIC_DEFINITIONS)
    assert report["baseline"] is not None
    assert json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8")) == report
    scored = score(demo, pair, steps=STEPS, seed=0)  # eta 0 (the demo's own): deterministic
    assert {k: scored[k] for k in ("mean", "volume", "per_slice")} == report["model"]
    assert (scored["steps"], scored["eta"], scored["seed"]) == (STEPS, demo.default_eta, 0)
    assert scored["seconds"] > 0
