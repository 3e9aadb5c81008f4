"""``convert``: the node's checks, engine and writer on a folder, with no network."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Unpack

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from ctfactory import make_ct_series, series_uid_for
from fakes import FakeModel

from ct2pet_node.cli import main
from ct2pet_node.config import Config, load_config
from ct2pet_node.domain.request import TranslationRequest
from ct2pet_node.errors import EngineError, InputError
from ct2pet_node.service.convert import convert_folder


class FakeTranslator(FakeModel):
    def __init__(self, value: float | None = None) -> None:
        self.value = value
        self.progress_calls: list[tuple[int, int]] = []

    def translate_region(self, hu: np.ndarray, **request: Unpack[TranslationRequest]) -> np.ndarray:
        if (progress := request.get("progress")) is not None:
            progress(hu.shape[0], hu.shape[0])
        out = np.clip((hu + 1000.0) / 2000.0, 0.0, 1.0).astype(np.float32)
        if self.value is not None:
            out[:] = self.value
        return out


def _config(min_slices: int = 5) -> Config:
    config = load_config()
    return dataclasses.replace(
        config,
        routing=dataclasses.replace(config.routing, min_slices=min_slices),
        output=dataclasses.replace(config.output, series=("secondary-capture", "pet")),
    )


def test_good_series_are_written_and_bad_ones_refused_with_their_reason(tmp_path: Path) -> None:
    make_ct_series(tmp_path / "in" / "good", n=8, name="good", rows=32, cols=32)
    make_ct_series(tmp_path / "in" / "tilted", n=8, name="tilted", rows=32, cols=32, tilt_degrees=15)
    (tmp_path / "in" / "notes.txt").write_text("not DICOM")
    progress: list[tuple[str, int, int, int]] = []

    def factory(series_uid: str, slices: int) -> Callable[[int, int], None]:
        return lambda done, total: progress.append((series_uid, slices, done, total))

    results = {
        r.series_uid: r
        for r in convert_folder(_config(), tmp_path / "in", tmp_path / "out", FakeTranslator(), factory)
    }

    good, tilted = results[series_uid_for("good")], results[series_uid_for("tilted")]
    assert good.refused is None and good.slices == 8
    assert [w.kind for w in good.written] == ["secondary-capture", "pet"]
    for written in good.written:
        assert len(written.paths) == 8
        assert {p.parent for p in written.paths} == {tmp_path / "out" / good.series_uid / written.kind}
        assert {str(pydicom.dcmread(p).SeriesInstanceUID) for p in written.paths} == {written.series_uid}
    assert progress == [(good.series_uid, 8, 8, 8)]
    assert tilted.written == () and "tilt" in (tilted.refused or "").lower()
    assert not (tmp_path / "out" / tilted.series_uid).exists()


def test_converting_again_replaces_rather_than_adds(tmp_path: Path) -> None:
    make_ct_series(tmp_path / "in", n=6, rows=32, cols=32)
    first = convert_folder(_config(), tmp_path / "in", tmp_path / "out", FakeTranslator())
    second = convert_folder(_config(), tmp_path / "in", tmp_path / "out", FakeTranslator())
    assert [w.series_uid for w in first[0].written] == [w.series_uid for w in second[0].written]
    assert len(list((tmp_path / "out").rglob("*.dcm"))) == 2 * 6


def test_an_empty_folder_and_non_finite_output_are_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no DICOM files found"):
        convert_folder(_config(), tmp_path / "empty", tmp_path / "out", FakeTranslator())
    make_ct_series(tmp_path / "in", n=6, rows=32, cols=32)
    with pytest.raises(EngineError, match="NaN or infinite"):
        convert_folder(_config(), tmp_path / "in", tmp_path / "out", FakeTranslator(value=np.inf))
    assert not list((tmp_path / "out").rglob("*.dcm"))


def _toml_config(tmp_path: Path, weights: Path) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(
        f"[node]\ndata_dir = {json.dumps(str(tmp_path / 'data'))}\n"
        f"[routing]\nmin_slices = 5\n"
        f'[engine]\nweights = {json.dumps(str(weights))}\ndevice = "cpu"\nsteps = 3\n'
        '[output]\nseries = ["secondary-capture", "pet"]\n'
    )
    return path


@pytest.mark.usefixtures("restore_logging")
def test_cli_convert_writes_files_with_the_tiny_model(tmp_path: Path, tiny_weights: Path) -> None:
    make_ct_series(tmp_path / "ct", n=6, rows=32, cols=32)
    config = _toml_config(tmp_path, tiny_weights)

    result = CliRunner().invoke(
        main, ["--log-json", "convert", "--config", str(config), str(tmp_path / "ct"), str(tmp_path / "out")]
    )

    assert result.exit_code == 0, result.output
    series_dir = tmp_path / "out" / series_uid_for("ct")
    for kind in ("secondary-capture", "pet"):
        assert f"wrote 6 {kind} instances to {series_dir / kind}" in result.output
        assert len(list((series_dir / kind).glob("*.dcm"))) == 6
    pet = pydicom.dcmread(next((series_dir / "pet").glob("*.dcm")))
    assert str(pet.SeriesDescription).startswith("SYNTHETIC PET")


@pytest.mark.usefixtures("restore_logging")
def test_cli_convert_prints_refusal_reasons_and_fails_when_nothing_qualifies(
    tmp_path: Path, tiny_weights: Path
) -> None:
    make_ct_series(tmp_path / "ct", n=3, name="short", rows=32, cols=32)
    config = _toml_config(tmp_path, tiny_weights)

    result = CliRunner().invoke(
        main, ["--log-json", "convert", "--config", str(config), str(tmp_path / "ct"), str(tmp_path / "out")]
    )

    assert result.exit_code == 1, result.output
    assert f"REFUSED {series_uid_for('short')}: series has 3 slice(s), at least 5 are needed" in result.output
    assert not list(tmp_path.glob("out/**/*.dcm"))


@pytest.mark.usefixtures("restore_logging")
def test_cli_convert_without_weights_says_how_to_get_them(tmp_path: Path) -> None:
    make_ct_series(tmp_path / "ct", n=6, rows=32, cols=32)
    config = _toml_config(tmp_path, tmp_path / "no-weights")

    result = CliRunner().invoke(
        main, ["--log-json", "convert", "--config", str(config), str(tmp_path / "ct"), str(tmp_path / "out")]
    )

    assert result.exit_code == 2
    assert "no weights at" in result.output and "ct2pet-node weights import" in result.output
