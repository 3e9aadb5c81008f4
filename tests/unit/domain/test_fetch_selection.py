"""The fetch selection rule and the ``POST /fetch`` request: CT only, ``--series`` narrows, none says so."""

from __future__ import annotations

import pytest

from ct2pet_node.domain.fetch import FetchOutcome, FetchRequest, FoundSeries, select_series
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
