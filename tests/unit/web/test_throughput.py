"""Throughput per hour from the job store's times, and its SVG."""

from __future__ import annotations

from ct2pet_node.domain.jobs import Job, JobDetails, JobState
from ct2pet_node.domain.uids import SeriesUid, StudyUid
from ct2pet_node.web.throughput import HOUR, bars_svg, hours_of_work, job_phases, phases_svg

NOW = 1_800_000_000.0


def _job(
    job_id: int, study: str, written_ago: float | None, slices: int, state: JobState = JobState.DONE
) -> Job:
    written = None if written_ago is None else NOW - written_ago
    details = JobDetails(phase_seconds=(("waiting", 10.0), ("translate", 20.0)), written_at=written)
    updated = NOW if written is None else written + 4.0
    return Job(
        job_id,
        StudyUid(study),
        SeriesUid(f"{study}.{job_id}"),
        state,
        None,
        slices,
        (),
        0.0,
        updated,
        0.0,
        details=details,
    )


def test_jobs_count_in_the_hour_their_results_were_written() -> None:
    jobs = [
        _job(1, "1.1", 30 * 60, 100),  # last hour
        _job(2, "1.1", 40 * 60, 50),  # last hour, same study
        _job(3, "1.2", 2.5 * HOUR, 80),  # three hours ago
        _job(4, "1.3", 13 * HOUR, 999),  # before the window
        _job(5, "1.4", None, 999, JobState.PROCESSING),  # not written yet
    ]
    hours = hours_of_work(jobs, NOW, 12)
    assert len(hours) == 12 and hours[-1].start == NOW - HOUR
    assert (hours[-1].studies, hours[-1].series, hours[-1].slices) == (1, 2, 150)
    assert (hours[-3].studies, hours[-3].slices) == (1, 80)
    assert sum(hour.slices for hour in hours) == 230
    assert dict(hours[-1].mean_phase_seconds) == {"waiting": 10.0, "translate": 20.0, "deliver": 4.0}


def test_delivery_counts_only_for_a_delivered_job() -> None:
    assert job_phases(_job(1, "1.1", 60, 1)) == {"waiting": 10.0, "translate": 20.0, "deliver": 4.0}
    assert "deliver" not in job_phases(_job(1, "1.1", 60, 1, JobState.SENDING))


def test_charts_are_self_contained_svg_with_one_bar_per_hour() -> None:
    hours = hours_of_work([_job(1, "1.1", 60, 100)], NOW, 6)
    svg = bars_svg("slices per hour", hours, "slices")
    assert svg.startswith("<svg") and svg.endswith("</svg>") and svg.count("<rect") == 6
    assert "100 slices" in svg and "href" not in svg
    stacked = phases_svg("time per phase", hours)
    assert stacked.count("<rect") == 3  # waiting, translate, deliver of the one busy hour
