"""``convert --recursive``'s run: each good series translated once, into place atomically, resumable."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from ctfactory import PATIENT_ID, PATIENT_NAME, STUDY_UID, make_ct_series, series_uid_for
from fakes import FakeModel
from studyfactory import make_pet_series

from ct2pet_node.config import Config, load_config
from ct2pet_node.domain.model_grid import ModelFrame
from ct2pet_node.errors import EngineError, EngineUnavailable, InputError
from ct2pet_node.service.archive_run import (
    MARKER_NAME,
    PARTIAL_SUFFIX,
    SUMMARY_JSON,
    SUMMARY_TEXT,
    convert_archive,
    wait_for_engine,
)


class CountingTranslator(FakeModel):
    """A linear fake that remembers which regions it translated; ``fail_on`` slice counts raise."""

    def __init__(self, fail_on: int | None = None, unavailable_on: int | None = None) -> None:
        self.calls: list[int] = []
        self.fail_on = fail_on
        self.unavailable_on = unavailable_on

    def translate_region(
        self,
        hu: np.ndarray,
        kvp: float | None = None,
        steps: int | None = None,
        eta: float | None = None,
        seed: int | None = None,
        progress: Callable[[int, int], None] | None = None,
        first_slice_index: int = 0,
    ) -> np.ndarray:
        self.calls.append(hu.shape[0])
        if hu.shape[0] == self.fail_on:
            raise EngineError("the engine broke on purpose")
        if hu.shape[0] == self.unavailable_on:
            raise EngineUnavailable("engine cluster 10.0.0.5:6379 unreachable since 04:00")
        for done in range(1, 4):
            if progress is not None:
                progress(done, 3)
        return np.clip((hu + 1000.0) / 2000.0 + (seed or 0) * 1e-3, 0.0, 1.0).astype(np.float32)


class HalvingTranslator(CountingTranslator):
    """A model whose matrix is half the CT's (16 pixels of 1.8 mm): its output is smaller than its input."""

    frame = ModelFrame(16, 1.8)

    def translate_region(self, hu: np.ndarray, *args: Any, **kwargs: Any) -> np.ndarray:
        return super().translate_region(hu, *args, **kwargs)[:, ::2, ::2]


class SpreadTranslator(HalvingTranslator):
    """A translator that spreads chunks (as the Ray one does) and yields them last first."""

    def translate_chunks(
        self,
        region_hu: np.ndarray,
        chunks: Sequence[range],
        *,
        kvp: float | None,
        steps: int | None,
        eta: float | None,
        seed: int | None,
        first_slice_index: int = 0,
    ) -> Iterator[tuple[range, np.ndarray]]:
        for chunk in reversed(chunks):
            yield chunk, self.translate_region(region_hu[chunk.start : chunk.stop], seed=seed)


class Bar:
    def __init__(self) -> None:
        self.total: int | None = None
        self.seen: list[float] = []

    def begin(self, total_slices: int) -> None:
        self.total = total_slices

    def update(self, done_slices: float) -> None:
        self.seen.append(done_slices)


def _config(seed: int = 0) -> Config:
    config = load_config()
    return dataclasses.replace(
        config,
        routing=dataclasses.replace(config.routing, min_slices=5),
        engine=dataclasses.replace(config.engine, seed=seed),
        output=dataclasses.replace(config.output, series=("secondary-capture", "pet")),
    )


def _archive(root: Path) -> None:
    make_ct_series(root / PATIENT_NAME / "a", n=6, name="a", rows=32, cols=32)
    make_ct_series(root / PATIENT_NAME / "b", n=7, name="b", rows=32, cols=32)
    make_ct_series(root / PATIENT_ID / "short", n=3, name="short", rows=32, cols=32)
    make_pet_series(root / PATIENT_ID / "pet", n=4)
    (root / "index.html").write_text("<html></html>")


def _series_dir(out: Path, name: str) -> Path:
    return out / STUDY_UID / series_uid_for(name)


def _summary(out: Path) -> dict[str, dict[str, object]]:
    data = json.loads((out / SUMMARY_JSON).read_text())
    return {row["series_uid"]: row for row in data["series"]}


def test_each_good_series_is_written_once_under_study_and_series_and_refusals_listed(tmp_path: Path) -> None:
    _archive(tmp_path / "in")
    translator, bar = CountingTranslator(), Bar()

    summary = convert_archive(_config(), tmp_path / "in", tmp_path / "out", translator, bar)

    assert sorted(translator.calls) == [6, 7]
    assert bar.total == 13 and bar.seen[-1] == 13 and bar.seen == sorted(bar.seen)
    rows = _summary(tmp_path / "out")
    for name, slices in (("a", 6), ("b", 7)):
        series_dir = _series_dir(tmp_path / "out", name)
        assert rows[series_uid_for(name)]["state"] == "converted"
        assert rows[series_uid_for(name)]["output_dir"] == f"{STUDY_UID}/{series_uid_for(name)}"
        marker = json.loads((series_dir / MARKER_NAME).read_text())
        assert [o["kind"] for o in marker["outputs"]] == ["secondary-capture", "pet"]
        for output in marker["outputs"]:
            files = sorted((series_dir / output["kind"]).glob("*.dcm"))
            assert len(files) == output["files"] == slices
            assert str(pydicom.dcmread(files[0]).SeriesInstanceUID) == output["series_uid"]
    short, pet = rows[series_uid_for("short")], rows[series_uid_for("pet")]
    assert (short["state"], short["files"], short["output_dir"]) == ("refused", 3, None)
    assert "series has 3 slice(s), at least 5 are needed" in str(short["reason"])
    assert pet["state"] == "skipped" and "not CT" in str(pet["reason"])
    assert summary.counts()["converted"] == 2 and (summary.not_dicom, summary.not_image) == (1, 0)
    assert not list((tmp_path / "out").rglob(f"*{PARTIAL_SUFFIX}"))
    text = (tmp_path / "out" / SUMMARY_TEXT).read_text()
    assert f"REFUSED study {STUDY_UID} series {series_uid_for('short')} (3 files): series has 3" in text
    for written in (tmp_path / "out" / SUMMARY_JSON, tmp_path / "out" / SUMMARY_TEXT):
        assert PATIENT_NAME not in written.read_text() and PATIENT_ID not in written.read_text()


def test_a_rerun_keeps_finished_series_untouched_and_says_so(tmp_path: Path) -> None:
    _archive(tmp_path / "in")
    convert_archive(_config(), tmp_path / "in", tmp_path / "out", CountingTranslator())
    files = sorted(_series_dir(tmp_path / "out", "a").rglob("*"))
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in files}
    again = CountingTranslator()

    convert_archive(_config(), tmp_path / "in", tmp_path / "out", again, Bar())

    assert again.calls == []
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in files} == before
    rows = _summary(tmp_path / "out")
    assert rows[series_uid_for("a")]["state"] == rows[series_uid_for("b")]["state"] == "already converted"
    assert rows[series_uid_for("short")]["state"] == "refused"


def test_what_an_interrupted_run_left_is_redone_from_nothing(tmp_path: Path) -> None:
    _archive(tmp_path / "in")
    convert_archive(_config(), tmp_path / "in", tmp_path / "out", CountingTranslator())
    a, b = _series_dir(tmp_path / "out", "a"), _series_dir(tmp_path / "out", "b")
    uids = {p.name for p in a.rglob("*.dcm")}
    # a: killed while writing (a partial folder, no finished one); b: a folder without its marker.
    a.rename(a.with_name(a.name + PARTIAL_SUFFIX))
    (a.with_name(a.name + PARTIAL_SUFFIX) / "pet" / "stale.dcm").write_bytes(b"half")
    (b / MARKER_NAME).unlink()
    (b / "pet" / "stale.dcm").write_bytes(b"half")
    again = CountingTranslator()

    convert_archive(_config(), tmp_path / "in", tmp_path / "out", again)

    assert sorted(again.calls) == [6, 7]
    assert {p.name for p in a.rglob("*.dcm")} == uids  # deterministic output UIDs: the same files
    assert not list((tmp_path / "out").rglob("stale.dcm"))
    assert not list((tmp_path / "out").rglob(f"*{PARTIAL_SUFFIX}"))
    assert (a / MARKER_NAME).is_file() and (b / MARKER_NAME).is_file()
    assert {row["state"] for row in _summary(tmp_path / "out").values()} == {
        "converted",
        "refused",
        "skipped",
    }


def test_other_sampling_settings_redo_a_finished_series(tmp_path: Path) -> None:
    make_ct_series(tmp_path / "in", n=6, name="a", rows=32, cols=32)
    convert_archive(_config(seed=0), tmp_path / "in", tmp_path / "out", CountingTranslator())
    again = CountingTranslator()

    convert_archive(_config(seed=7), tmp_path / "in", tmp_path / "out", again)

    assert again.calls == [6]
    assert _summary(tmp_path / "out")[series_uid_for("a")]["state"] == "converted"
    marker = json.loads((_series_dir(tmp_path / "out", "a") / MARKER_NAME).read_text())
    assert marker["settings"]["seed"] == 7


def test_a_failed_series_is_listed_with_its_reason_and_the_others_still_convert(tmp_path: Path) -> None:
    _archive(tmp_path / "in")

    convert_archive(_config(), tmp_path / "in", tmp_path / "out", CountingTranslator(fail_on=6))

    rows = _summary(tmp_path / "out")
    failed = rows[series_uid_for("a")]
    assert (failed["state"], failed["reason"], failed["output_dir"]) == (
        "failed",
        "the engine broke on purpose",
        None,
    )
    assert not _series_dir(tmp_path / "out", "a").exists()
    assert not list((tmp_path / "out").rglob(f"*{PARTIAL_SUFFIX}"))
    assert rows[series_uid_for("b")]["state"] == "converted"


def test_an_engine_that_goes_away_stops_the_run_and_keeps_what_was_finished(tmp_path: Path) -> None:
    _archive(tmp_path / "in")  # a (6 slices) sorts after or before b: one of them finishes first or not

    with pytest.raises(EngineUnavailable):
        convert_archive(_config(), tmp_path / "in", tmp_path / "out", CountingTranslator(unavailable_on=7))

    rows = _summary(tmp_path / "out")
    assert rows[series_uid_for("b")]["state"] == "pending"
    assert not _series_dir(tmp_path / "out", "b").exists()
    finished_a = (_series_dir(tmp_path / "out", "a") / MARKER_NAME).is_file()
    assert rows[series_uid_for("a")]["state"] == ("converted" if finished_a else "pending")


def test_a_spreading_translator_gets_chunks_and_writes_what_one_region_would(tmp_path: Path) -> None:
    make_ct_series(tmp_path / "in", n=40, name="long", rows=32, cols=32)
    spread = SpreadTranslator()
    convert_archive(_config(), tmp_path / "in", tmp_path / "spread", spread)
    convert_archive(_config(), tmp_path / "in", tmp_path / "whole", HalvingTranslator())

    assert sorted(spread.calls) == [8, 16, 16]
    for kind in ("secondary-capture", "pet"):
        spread_files = sorted((_series_dir(tmp_path / "spread", "long") / kind).glob("*.dcm"))
        whole_files = sorted((_series_dir(tmp_path / "whole", "long") / kind).glob("*.dcm"))
        assert [p.name for p in spread_files] == [p.name for p in whole_files]
        for left, right in zip(spread_files, whole_files, strict=True):
            assert np.array_equal(pydicom.dcmread(left).pixel_array, pydicom.dcmread(right).pixel_array)


def test_results_written_inside_the_archive_are_not_read_as_part_of_it(tmp_path: Path) -> None:
    make_ct_series(tmp_path / "archive" / "ct", n=6, name="a", rows=32, cols=32)
    convert_archive(_config(), tmp_path / "archive", tmp_path / "archive" / "results", CountingTranslator())

    summary = convert_archive(
        _config(), tmp_path / "archive", tmp_path / "archive" / "results", CountingTranslator()
    )

    assert [(o.series_uid, o.state.value) for o in summary.outcomes] == [
        (series_uid_for("a"), "already converted")
    ]
    assert (summary.not_dicom, summary.not_image) == (0, 0)


def test_a_folder_without_dicom_images_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "readme.txt").write_text("nothing here")
    with pytest.raises(InputError, match="no DICOM image found"):
        convert_archive(_config(), tmp_path / "in", tmp_path / "out", CountingTranslator())


class AwayCluster(FakeModel):
    def __init__(self, ready_after: int | None) -> None:
        self.asked = 0
        self.ready_after = ready_after

    def ready(self) -> bool:
        self.asked += 1
        return self.ready_after is not None and self.asked > self.ready_after

    def cluster_status(self, waiting: int) -> str:
        return "engine cluster 10.0.0.5:6379 unreachable since start, 0 jobs waiting"


def test_the_run_waits_for_a_cluster_to_connect_and_gives_up_saying_what_to_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("ct2pet_node.service.archive_run.ENGINE_POLL_SECONDS", 0.0)
    coming = AwayCluster(ready_after=3)
    wait_for_engine(coming, timeout=5.0)  # type: ignore[arg-type]
    assert coming.asked == 4

    with pytest.raises(
        EngineUnavailable, match=r"10\.0\.0\.5:6379 unreachable .* run the same command again"
    ):
        wait_for_engine(AwayCluster(ready_after=None), timeout=0.05)  # type: ignore[arg-type]
