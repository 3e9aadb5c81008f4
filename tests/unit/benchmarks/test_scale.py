"""The pure parts of benchmarks/scale.py: actor counts, speed-up and efficiency, table and chart."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from conftest import REPO_ROOT
from PIL import Image

from ct2pet_node.training.charts import PANEL_SIZE


@pytest.fixture(scope="module")
def scale() -> ModuleType:
    path = REPO_ROOT / "benchmarks" / "scale.py"
    spec = importlib.util.spec_from_file_location("scale_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _point(actors: int, seconds: float, **extra: Any) -> dict[str, Any]:
    return {"actors": actors, "studies": 2, "slices_per_study": 32, "seconds": seconds, **extra}


def test_actor_counts_are_sorted_once_and_nonsense_is_refused(scale: ModuleType) -> None:
    assert scale.parse_actors("4, 1,2,2") == [1, 2, 4]
    for bad in ("", "0,1", "two"):
        with pytest.raises(SystemExit):
            scale.parse_actors(bad)


def test_speedup_and_efficiency_are_against_the_fewest_actors(scale: ModuleType) -> None:
    # Measured out of order: 4 actors took 25 s, 1 actor 80 s, 2 actors 50 s for 2 studies each.
    points = scale.scaling([_point(4, 25.0), _point(1, 80.0), _point(2, 50.0)])
    assert [p["actors"] for p in points] == [1, 2, 4]
    one, two, four = points
    assert one["seconds_per_study"] == 40.0 and one["studies_per_hour"] == pytest.approx(90.0)
    assert one["slices_per_second"] == pytest.approx(64 / 80)
    assert (one["speedup"], one["efficiency"]) == (1.0, 1.0)
    assert two["speedup"] == pytest.approx(1.6) and two["efficiency"] == pytest.approx(0.8)
    assert four["speedup"] == pytest.approx(3.2) and four["efficiency"] == pytest.approx(0.8)
    # Without a 1-actor point, the growth is counted from the fewest measured.
    base_two = scale.scaling([_point(2, 50.0), _point(4, 25.0)])
    assert base_two[1]["speedup"] == pytest.approx(2.0) and base_two[1]["efficiency"] == pytest.approx(1.0)
    assert scale.scaling([]) == []


def _report(scale: ModuleType) -> dict[str, Any]:
    return {
        "model_id": "demo-1",
        "machine": "box (2 CPUs)",
        "study": {"source": "synthetic", "slices": 32, "chunk_slices": 8, "chunks": 4},
        "steps": 3,
        "studies": 2,
        "jobs_in_flight": 1,
        "points": scale.scaling(
            [
                _point(1, 80.0, actor_slices_per_second=[0.8]),
                _point(2, 50.0, actor_slices_per_second=[0.6, 0.7]),
            ]
        ),
    }


def test_the_table_has_a_row_per_actor_count_with_every_figure(scale: ModuleType) -> None:
    text = scale.markdown(_report(scale))
    lines = text.splitlines()
    assert lines[0].startswith("demo-1 on box (2 CPUs): studies of 32 slices (4 chunks of 8), 3 steps")
    assert lines[2] == (
        "| actors | s / study | studies / h | slices / s | speed-up | efficiency | per-actor slices / s |"
    )
    assert lines[4] == "| 1 | 40.0 | 90.0 | 0.80 | 1.00x | 100% | 0.80 |"
    assert lines[5] == "| 2 | 25.0 | 144.0 | 1.28 | 1.60x | 80% | 0.60, 0.70 |"


def test_the_chart_is_two_panels_wide(scale: ModuleType, tmp_path: Path) -> None:
    path = scale.draw_chart(_report(scale), tmp_path / "out" / "scale.png")
    with Image.open(path) as image:
        assert image.size[0] == 2 * PANEL_SIZE[0] and image.size[1] > PANEL_SIZE[1]
