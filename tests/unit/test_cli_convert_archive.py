"""``ct2pet-node convert --recursive`` and ``--ray`` from the command line, with the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest
from click.testing import CliRunner
from ctfactory import PATIENT_ID, PATIENT_NAME, STUDY_UID, make_ct_series, series_uid_for
from studyfactory import make_pet_series

from ct2pet_node.cli import main
from ct2pet_node.cli.convert import _with_options
from ct2pet_node.config import load_config


def _toml_config(tmp_path: Path, weights: Path) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(
        f"[node]\ndata_dir = {json.dumps(str(tmp_path / 'data'))}\n"
        "[routing]\nmin_slices = 5\n"
        f'[engine]\nweights = {json.dumps(str(weights))}\ndevice = "cpu"\nsteps = 3\n'
        '[output]\nseries = ["secondary-capture", "pet"]\n'
    )
    return path


def _convert(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--log-json", "convert", *args])
    return result.exit_code, result.output


@pytest.mark.usefixtures("restore_logging")
def test_recursive_convert_writes_each_study_and_series_and_prints_each_refusal(
    tmp_path: Path, tiny_weights: Path
) -> None:
    make_ct_series(tmp_path / "in" / PATIENT_NAME / "ct", n=6, name="good", rows=32, cols=32)
    make_ct_series(tmp_path / "in" / PATIENT_ID / "short", n=3, name="short", rows=32, cols=32)
    make_pet_series(tmp_path / "in" / PATIENT_ID / "pet", n=4)
    config = _toml_config(tmp_path, tiny_weights)

    code, output = _convert(
        "--recursive", "--config", str(config), str(tmp_path / "in"), str(tmp_path / "out")
    )

    assert code == 0, output
    series_dir = tmp_path / "out" / STUDY_UID / series_uid_for("good")
    for kind in ("secondary-capture", "pet"):
        files = sorted((series_dir / kind).glob("*.dcm"))
        assert len(files) == 6
    assert str(pydicom.dcmread(files[0]).SeriesDescription).startswith("SYNTHETIC PET")
    assert f"CONVERTED study {STUDY_UID} series {series_uid_for('good')} (6 files)" in output
    assert (
        f"REFUSED study {STUDY_UID} series {series_uid_for('short')} (3 files): series has 3 slice(s)"
        in output
    )
    assert (
        f"SKIPPED study {STUDY_UID} series {series_uid_for('pet')} (4 files): series modality is PT" in output
    )
    assert f"summary: {tmp_path / 'out' / 'summary.json'}" in output
    assert "translating 6 slices" in output  # off a TTY, the bar shows its label only
    assert PATIENT_NAME not in output and PATIENT_ID not in output

    code, output = _convert(
        "--recursive", "--config", str(config), str(tmp_path / "in"), str(tmp_path / "out")
    )

    assert code == 0, output
    assert f"ALREADY CONVERTED study {STUDY_UID} series {series_uid_for('good')}" in output
    assert "translating" not in output  # nothing left to translate: no bar


@pytest.mark.usefixtures("restore_logging")
def test_recursive_convert_fails_when_no_series_qualifies(tmp_path: Path, tiny_weights: Path) -> None:
    make_ct_series(tmp_path / "in", n=3, name="short", rows=32, cols=32)
    config = _toml_config(tmp_path, tiny_weights)

    code, output = _convert(
        "--recursive", "--config", str(config), str(tmp_path / "in"), str(tmp_path / "out")
    )

    assert code == 1, output
    assert "1 series (1 refused)" in output
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["counts"]["refused"] == 1


@pytest.mark.usefixtures("restore_logging")
def test_a_ray_address_that_is_not_host_and_port_is_refused_before_any_work(tmp_path: Path) -> None:
    make_ct_series(tmp_path / "in", n=6, rows=32, cols=32)

    code, output = _convert(
        "--recursive", "--ray", "head-without-port", str(tmp_path / "in"), str(tmp_path / "out")
    )

    assert code == 2
    assert "--ray 'head-without-port'" in output and "host:port" in output
    assert not (tmp_path / "out").exists()


def test_ray_overrides_the_backend_and_address_and_keeps_the_other_ray_settings() -> None:
    config = load_config()

    changed = _with_options(config, None, 4, None, "10.0.0.5:6380")

    assert changed.engine.backend == "ray"
    assert changed.engine.ray.address == "10.0.0.5:6380"
    assert changed.engine.ray.actors == config.engine.ray.actors
    assert changed.engine.ray.fallback == config.engine.ray.fallback
    assert changed.engine.steps == 4
    assert _with_options(config, None, None, None, None).engine == config.engine
