"""The fetch selection rule and the ``POST /fetch`` request: CT only, ``--series`` narrows, none says so."""

from __future__ import annotations

import pytest

from ct2pet_node.domain.fetch import FetchOutcome, FetchRecord, FetchRequest, FoundSeries, select_series
from ct2pet_node.domain.uids import SeriesUid, StudyUid
from ct2pet_node.errors import InputError

STUDY = StudyUid("1.2.3")


def _series(uid: str, modality: str, number: int | None = None, study: str = STUDY) -> FoundSeries:
    return FoundSeries(StudyUid(study), SeriesUid(uid), modality, number, 10)


def test_only_ct_series_of_the_study_are_taken_in_series_number_order() -> None:
    found = [
        _series("1.2.3.9", "CT", 3),
        _series("1.2.3.1", "PT", 1),
        _series("1.2.3.2", "ct", 2),
        _series("1.2.3.5", "CT", None),
        _series("1.2.4.1", "CT", 1, study="1.2.4"),  # a source that ignored the study key
    ]
    assert [s.series_uid for s in select_series(STUDY, found)] == ["1.2.3.2", "1.2.3.9", "1.2.3.5"]


def test_series_narrows_to_one_ct_series() -> None:
    found = [_series("1.2.3.1", "CT", 1), _series("1.2.3.2", "CT", 2), _series("1.2.3.3", "SR", 3)]
    assert [s.series_uid for s in select_series(STUDY, found, SeriesUid("1.2.3.2"))] == ["1.2.3.2"]
    with pytest.raises(InputError, match=r"series 1\.2\.3\.3 of study 1\.2\.3 is SR, not CT"):
        select_series(STUDY, found, SeriesUid("1.2.3.3"))
    with pytest.raises(InputError, match=r"series 1\.2\.3\.7 of study 1\.2\.3 is not in it"):
        select_series(STUDY, found, SeriesUid("1.2.3.7"))


def test_a_study_without_ct_names_what_it_has() -> None:
    found = [_series("1.2.3.1", "PT"), _series("1.2.3.2", "SR"), _series("1.2.3.3", "PT")]
    with pytest.raises(InputError, match=r"study 1\.2\.3 has no CT series \(found: PT, SR\)"):
        select_series(STUDY, found)
    with pytest.raises(InputError, match=r"has no CT series \(found: no series\)"):
        select_series(STUDY, [])


def test_found_series_refuse_bad_uids() -> None:
    with pytest.raises(InputError, match="SeriesInstanceUID"):
        FoundSeries(STUDY, SeriesUid("../etc"), "CT")


def test_requests_come_from_json_with_reasons_for_what_is_wrong() -> None:
    asked = FetchRequest.from_json({"source": "pacs", "study": "1.2.3", "series": "1.2.3.4", "dry_run": True})
    assert asked == FetchRequest("pacs", STUDY, SeriesUid("1.2.3.4"), True)
    assert FetchRequest.from_json({"source": "pacs", "study": "1.2.3"}).dry_run is False
    with pytest.raises(InputError, match="required strings"):
        FetchRequest.from_json({"source": "pacs"})
    with pytest.raises(InputError, match=r"unknown keys \['patient'\]"):
        FetchRequest.from_json({"source": "pacs", "study": "1.2.3", "patient": "x"})
    with pytest.raises(InputError, match="study 'not a uid'"):
        FetchRequest.from_json({"source": "pacs", "study": "not a uid"})
    with pytest.raises(InputError, match="dry_run"):
        FetchRequest.from_json({"source": "pacs", "study": "1.2.3", "dry_run": "yes"})
    with pytest.raises(InputError, match="JSON object"):
        FetchRequest.from_json(["pacs"])


def test_the_answer_lists_uids_counts_and_jobs() -> None:
    taken = (_series("1.2.3.1", "CT", 2),)
    outcome = FetchOutcome(FetchRequest("pacs", STUDY), "C-GET", taken, {"1.2.3.1": 10}, {"1.2.3.1": 4})
    assert outcome.to_json() == {
        "source": "pacs",
        "study_uid": "1.2.3",
        "dry_run": False,
        "method": "C-GET",
        "series": [
            {
                "study_uid": "1.2.3",
                "series_uid": "1.2.3.1",
                "modality": "CT",
                "series_number": 2,
                "instances": 10,
                "received": 10,
                "job_id": 4,
            }
        ],
    }


def test_a_fetch_record_says_what_came_of_it_and_survives_json() -> None:
    study = StudyUid("1.2.826.0.1.3680043.10.9")
    found = FoundSeries(study, SeriesUid("1.2.826.0.1.3680043.10.9.1"), "CT", 2, 247)
    outcome = FetchOutcome(
        FetchRequest("pacs", study), "C-MOVE", (found,), {found.series_uid: 247}, {found.series_uid: 7}
    )
    record = FetchRecord.of(100.0, outcome)
    assert record.describe() == f"study {study} from pacs by C-MOVE: 1 CT series, 247 instances, jobs 7"
    assert FetchRecord.from_json(record.to_json()) == record
    failed = FetchRecord(101.0, "pacs", study, "C-MOVE", error="source pacs: cannot connect")
    assert failed.describe().endswith("failed: source pacs: cannot connect")
    dry = FetchRecord.of(
        102.0, FetchOutcome(FetchRequest("pacs", study, dry_run=True), "C-MOVE", (found,), {})
    )
    assert dry.describe().endswith("(dry run): 1 CT series found") and dry.instances == 0
