"""Retention's rules on values: which files of which job may go, and the disk-space warning."""

from __future__ import annotations

import dataclasses

import pytest

from ct2pet_node.config import RetentionConfig
from ct2pet_node.domain.jobs import JobState
from ct2pet_node.routing.delivery import EntryState
from ct2pet_node.routing.retention import SECONDS_PER_DAY, JobFiles, decide_purge, disk_warning

POLICY = RetentionConfig(spool_days=7, results_days=30, refused_days=2)
FINISHED = 1_800_000_000.0


def _job(state: JobState = JobState.DONE, **changes: object) -> JobFiles:
    job = JobFiles(
        job_id=1,
        state=state,
        finished_at=FINISHED,
        delivery=EntryState.DELIVERED,
        latest_of_series=True,
        spool_kept=True,
        results_kept=True,
    )
    return dataclasses.replace(job, **changes)


def _after(days: float) -> float:
    return FINISHED + days * SECONDS_PER_DAY


def test_a_delivered_job_loses_its_spool_then_its_results() -> None:
    assert not decide_purge(_job(), POLICY, _after(6.9)).anything
    at_week = decide_purge(_job(), POLICY, _after(7))
    assert (at_week.spool, at_week.results) == (True, False)
    at_month = decide_purge(_job(), POLICY, _after(30))
    assert (at_month.spool, at_month.results) == (True, True)
    assert "spool_days 7" in at_month.why and "done 30.0 days ago" in at_month.why


def test_a_done_job_without_outbox_entry_counts_as_delivered() -> None:
    # No destination configured: nothing to wait for.
    assert decide_purge(_job(delivery=None), POLICY, _after(30)).results


@pytest.mark.parametrize("delivery", [EntryState.PENDING, EntryState.SENDING, EntryState.DEAD])
def test_an_undelivered_job_keeps_everything(delivery: EntryState) -> None:
    decision = decide_purge(_job(delivery=delivery), POLICY, _after(365))
    assert not decision.anything and "not yet delivered" in decision.why


@pytest.mark.parametrize(
    "state", [JobState.RECEIVED, JobState.WAITING, JobState.PROCESSING, JobState.SENDING, JobState.FAILED]
)
def test_jobs_in_progress_or_failed_keep_everything(state: JobState) -> None:
    decision = decide_purge(_job(state), POLICY, _after(365))
    assert not decision.anything and state.value in decision.why


def test_a_refused_series_loses_its_spool_after_refused_days() -> None:
    refused = _job(JobState.REFUSED, delivery=None, results_kept=False)
    assert not decide_purge(refused, POLICY, _after(1.9)).spool
    decision = decide_purge(refused, POLICY, _after(2))
    assert (decision.spool, decision.results) == (True, False)


def test_only_the_latest_job_of_a_series_decides_its_spool() -> None:
    older = decide_purge(_job(latest_of_series=False), POLICY, _after(30))
    assert (older.spool, older.results) == (False, True)


def test_forever_keeps_and_zero_lets_go_at_once() -> None:
    forever = RetentionConfig(spool_days=None, results_days=None, refused_days=None)
    assert not decide_purge(_job(), forever, _after(10_000)).anything
    assert "forever" in decide_purge(_job(), forever, _after(1)).why
    at_once = RetentionConfig(spool_days=0, results_days=0, refused_days=0)
    assert decide_purge(_job(), at_once, FINISHED).spool and decide_purge(_job(), at_once, FINISHED).results


def test_what_was_purged_already_is_not_purged_again() -> None:
    assert not decide_purge(_job(spool_kept=False, results_kept=False), POLICY, _after(60)).anything


def test_disk_warning_comes_well_before_the_watermark() -> None:
    assert disk_warning(20_000, 1024, 10_240) is None
    early = disk_warning(9_000, 1024, 10_240)
    assert early is not None and "warn_free_mb" in early and "purge" in early
    refusing = disk_warning(1000, 1024, 10_240)
    assert refusing is not None and "0xA700" in refusing and "min_free_mb" in refusing
    assert disk_warning(5_000, 1024, 0) is None  # 0: no early warning
