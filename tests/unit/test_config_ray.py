"""[engine] backend and [engine.ray]: the default stays local, and every bad key is named."""

from pathlib import Path

import pytest

from ct2pet_node.config import RayConfig, load_config
from ct2pet_node.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def test_embedded_default_runs_the_engine_locally() -> None:
    engine = load_config().engine
    assert engine.backend == "local"
    assert engine.ray == RayConfig()


def test_ray_backend_and_its_table_are_read(tmp_path: Path) -> None:
    engine = load_config(
        write(
            tmp_path,
            '[engine]\nbackend = "ray"\n[engine.ray]\naddress = "10.0.0.5:6380"\nactors = 4\n'
            'gpus_per_actor = 0\ncpus_per_actor = 0.5\nnamespace = "site-a"\nfallback = "local"\n',
        )
    ).engine
    assert engine.backend == "ray"
    assert engine.ray == RayConfig("10.0.0.5:6380", 4, 0.0, 0.5, "site-a", "local")
    assert engine.ray.jobs_at_once == 4  # jobs_in_flight unset: one job per actor


def test_jobs_in_flight_may_be_set_apart_from_the_actors(tmp_path: Path) -> None:
    ray = load_config(write(tmp_path, "[engine.ray]\nactors = 4\njobs_in_flight = 2\n")).engine.ray
    assert (ray.jobs_in_flight, ray.jobs_at_once) == (2, 2)


def test_bad_ray_values_are_each_reported_with_their_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[engine]\nbackend = "cluster"\n[engine.ray]\naddress = "head"\nactors = 0\n'
        'cpus_per_actor = 0\nfallback = "retry"\nworkers = 2\njobs_in_flight = 0\n',
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    text = "\n".join(caught.value.problems)
    for key in (
        "[engine] backend",
        "[engine.ray] address",
        "actors",
        "cpus_per_actor",
        "fallback",
        "workers",
        "jobs_in_flight",
    ):
        assert key in text
    assert len(caught.value.problems) == 7
