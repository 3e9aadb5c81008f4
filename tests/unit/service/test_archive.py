"""``convert --recursive``'s reading and deciding: an archive's files -> series -> the node's verdict -> summary."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from ctfactory import PATIENT_ID, PATIENT_NAME, make_ct_series, series_uid_for
from studyfactory import make_pet_series, make_structured_report

from ct2pet_node.config import load_config
from ct2pet_node.dicom.headers import read_slice_header
from ct2pet_node.errors import InputError
from ct2pet_node.service.archive import (
    ArchiveSummary,
    SeriesOutcome,
    SeriesState,
    group_series,
    is_dicom_file,
    plan_series,
    scan_archive,
    without_paths,
)

OTHER_STUDY = "1.2.826.0.1.3680043.8.498.4242"


def _archive(root: Path) -> None:
    """Two studies: a good CT split over two folders, a short CT, a tilted CT, a PET, a report, a text file."""
    paths = make_ct_series(root / "DOE^JOHN" / "ct-a", n=8, name="good", rows=32, cols=32)
    (root / "DOE^JOHN" / "ct-b").mkdir()
    for path in paths[4:]:
        shutil.move(path, root / "DOE^JOHN" / "ct-b" / path.name)
    make_ct_series(root / "DOE^JOHN" / "short", n=3, name="short", rows=32, cols=32)
    make_pet_series(root / "DOE^JOHN" / "pet", n=4)
    make_structured_report(root / "DOE^JOHN" / "sr")
    make_ct_series(root / "second" / "tilted", n=8, name="tilted", rows=32, cols=32, tilt_degrees=15)
    make_ct_series(root / "second" / "other", n=6, name="other", rows=32, cols=32, study_uid=OTHER_STUDY)
    (root / "second" / "notes.txt").write_text("not DICOM")
    (root / "empty-file").write_bytes(b"")


def test_a_scan_groups_by_series_across_folders_and_counts_the_files_it_skips(tmp_path: Path) -> None:
    _archive(tmp_path)

    scan = scan_archive(tmp_path, read_slice_header)

    found = {s.series_uid: s for s in scan.series}
    assert set(found) == {series_uid_for(n) for n in ("good", "short", "pet", "tilted", "other")}
    assert found[series_uid_for("good")].files == 8
    assert found[series_uid_for("other")].study_uid == OTHER_STUDY
    assert (scan.not_dicom, scan.not_image) == (2, 1)  # the text and the empty file; the report
    order = [(s.study_uid, s.series_uid) for s in scan.series]
    assert order == sorted(order)


def test_a_scan_of_a_missing_folder_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a directory"):
        scan_archive(tmp_path / "absent", read_slice_header)


def test_a_file_is_dicom_only_with_the_part_10_preamble(tmp_path: Path) -> None:
    [dicom] = make_ct_series(tmp_path, n=1, rows=8, cols=8)
    (tmp_path / "short").write_bytes(b"DICM")
    (tmp_path / "late").write_bytes(b"\0" * 128 + b"DICX")
    assert is_dicom_file(dicom)
    assert not is_dicom_file(tmp_path / "short")
    assert not is_dicom_file(tmp_path / "late")
    assert not is_dicom_file(tmp_path / "absent")


def test_grouping_keeps_one_series_per_uid_in_study_then_series_order(tmp_path: Path) -> None:
    a = [read_slice_header(p) for p in make_ct_series(tmp_path / "a", n=2, name="a", rows=8, cols=8)]
    b = [
        read_slice_header(p)
        for p in make_ct_series(tmp_path / "b", n=3, name="b", rows=8, cols=8, study_uid="1.2.3")
    ]

    grouped = group_series([a[0], b[0], a[1], b[1], b[2]])

    assert [(s.study_uid, s.series_uid, len(s.headers)) for s in grouped] == [
        ("1.2.3", series_uid_for("b"), 3),
        (a[0].study_uid, series_uid_for("a"), 2),
    ]


def test_each_series_is_planned_as_the_router_decides_with_non_ct_skipped(tmp_path: Path) -> None:
    _archive(tmp_path)
    rules = dataclasses.replace(load_config().routing, min_slices=5)

    planned = {
        p.found.series_uid: p for p in plan_series(scan_archive(tmp_path, read_slice_header).series, rules)
    }

    good = planned[series_uid_for("good")]
    assert good.state is SeriesState.PENDING and good.qualified is not None and good.slices == 8
    short = planned[series_uid_for("short")]
    assert short.state is SeriesState.REFUSED and "3 slice(s), at least 5" in (short.reason or "")
    tilted = planned[series_uid_for("tilted")]
    assert tilted.state is SeriesState.REFUSED and "gantry tilt 15.0°" in (tilted.reason or "")
    pet = planned[series_uid_for("pet")]
    assert pet.state is SeriesState.SKIPPED and "modality is PT, not CT" in (pet.reason or "")
    assert all(p.qualified is None and p.slices == 0 for p in (short, tilted, pet))


def test_the_summary_counts_states_and_gives_each_refusal_its_reason() -> None:
    summary = ArchiveSummary(
        "model-x",
        "local cpu",
        not_dicom=2,
        not_image=1,
        outcomes=(
            SeriesOutcome("1.1", "9.9", 8, 8, SeriesState.CONVERTED, output_dir="9.9/1.1"),
            SeriesOutcome("1.2", "9.9", 3, 0, SeriesState.REFUSED, reason="series has 3 slice(s)"),
            SeriesOutcome("1.3", "9.9", 6, 6, SeriesState.ALREADY_CONVERTED, output_dir="9.9/1.3"),
        ),
    )

    data = summary.as_json()
    assert data["counts"] == {
        "pending": 0,
        "converted": 1,
        "already converted": 1,
        "refused": 1,
        "skipped": 0,
        "failed": 0,
    }
    assert data["skipped_files"] == {"not_dicom": 2, "not_an_image": 1}
    assert data["series"][1] == {  # type: ignore[index]
        "series_uid": "1.2",
        "study_uid": "9.9",
        "files": 3,
        "slices": 0,
        "state": "refused",
        "reason": "series has 3 slice(s)",
        "output_dir": None,
    }
    json.dumps(data)
    text = summary.as_text().splitlines()
    assert text[0] == "3 series (1 converted, 1 already converted, 1 refused); model model-x on local cpu"
    assert "REFUSED study 9.9 series 1.2 (3 files): series has 3 slice(s)" in text
    assert "ALREADY CONVERTED study 9.9 series 1.3 (6 files) -> 9.9/1.3" in text


def test_reasons_lose_the_file_paths_that_may_name_the_patient(tmp_path: Path) -> None:
    [path] = make_ct_series(tmp_path / PATIENT_NAME / PATIENT_ID, n=1, rows=8, cols=8)
    header = read_slice_header(path)

    reason = without_paths(f"{path}: cannot be decoded; resend it", [header])

    assert reason == f"instance {header.sop_instance_uid}: cannot be decoded; resend it"
    assert PATIENT_NAME not in reason and PATIENT_ID not in reason
