"""Retention on a real job store, outbox, spool and results folder: what goes, what stays, what is noted."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from jobpaths import move_to

from ct2pet_node.config import Config, Destination, RetentionConfig, load_config
from ct2pet_node.domain.jobs import JobDetails, JobState
from ct2pet_node.domain.records import InstanceRecord
from ct2pet_node.domain.uids import AeTitle, SeriesUid, SopInstanceUid, StudyUid, Uid
from ct2pet_node.routing.delivery import AttemptDecision, EntryState
from ct2pet_node.routing.retention import SECONDS_PER_DAY
from ct2pet_node.service.retention import Retention
from ct2pet_node.spool.jobstore import JobStore
from ct2pet_node.spool.outbox import Outbox

FINISHED = 1_800_000_000.0
CT_BYTES = b"\0" * 1000


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclasses.dataclass
class Node:
    config: Config
    store: JobStore
    outbox: Outbox
    clock: Clock

    @property
    def data_dir(self) -> Path:
        return self.config.node.data_dir

    def retention(self) -> Retention:
        return Retention(self.config, self.store, self.outbox, clock=self.clock)

    def job(self, series: str, state: JobState, delivery: EntryState | None = EntryState.DELIVERED) -> int:
        """A job of two spooled instances walked to ``state``; DONE ones get results and an outbox entry."""
        for index in (1, 2):
            sop = f"{series}.{index}"
            path = self.data_dir / "spool" / "1.2" / series / f"{sop}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(CT_BYTES)
            self.store.record_instance(_record(series, sop, path))
        job = self.store.job_for_series(series)
        assert job is not None
        details = None
        if state is JobState.DONE:
            results = self.data_dir / "results" / str(job.id)
            (results / "pet").mkdir(parents=True)
            (results / "pet" / "1.dcm").write_bytes(b"\0" * 500)
            details = JobDetails(results_dir=results)
            if delivery is not None:
                self.outbox.enqueue(job.id, "pacs", [results / "pet" / "1.dcm"], FINISHED)
                if delivery is not EntryState.PENDING:
                    decision = AttemptDecision(delivery, 1, None, None)
                    self.outbox.mark_results(job.id, "pacs", [], decision, FINISHED)
        move_to(self.store, job.id, state, details=details)
        return job.id

    def spool_files(self, series: str) -> list[Path]:
        return sorted((self.data_dir / "spool" / "1.2" / series).glob("*.dcm"))


def _record(series: str, sop: str, path: Path) -> InstanceRecord:
    return InstanceRecord(
        sop_instance_uid=SopInstanceUid(sop),
        sop_class_uid=Uid("1.2.840.10008.5.1.4.1.1.2"),
        series_uid=SeriesUid(series),
        study_uid=StudyUid("1.2"),
        modality="CT",
        transfer_syntax_uid=Uid("1.2.840.10008.1.2.1"),
        calling_ae_title=AeTitle("SCANNER"),
        path=path,
        received_at=FINISHED,
    )


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    loaded = load_config()
    config = dataclasses.replace(
        loaded,
        node=dataclasses.replace(loaded.node, data_dir=tmp_path),
        destinations=(Destination("pacs", "PACS", "127.0.0.1", 104),),
        retention=RetentionConfig(spool_days=7, results_days=30, refused_days=7),
    )
    clock = Clock(FINISHED)
    store, outbox = JobStore.open(tmp_path, clock=clock), Outbox.open(tmp_path)
    yield Node(config, store, outbox, clock)
    outbox.close()
    store.close()


def _days_later(node: Node, days: float) -> None:
    node.clock.now = FINISHED + days * SECONDS_PER_DAY


def test_a_delivered_jobs_spool_and_results_go_and_its_record_stays_with_a_note(node: Node) -> None:
    job_id = node.job("1.2.3", JobState.DONE)
    results = node.data_dir / "results" / str(job_id)
    _days_later(node, 8)
    first = node.retention().apply()
    assert [(p.job_id, len(p.spool_files), p.results_dir) for p in first] == [(job_id, 2, None)]
    assert node.spool_files("1.2.3") == [] and not (node.data_dir / "spool" / "1.2").exists()
    assert results.is_dir()
    assert node.store.instances_of("1.2.3") == []  # a re-sent instance is processed again

    _days_later(node, 31)
    second = node.retention().apply()
    assert [(p.job_id, p.spool_files, p.results_dir) for p in second] == [(job_id, (), results)]
    assert not results.exists()
    job = node.store.get_job(job_id)
    assert job is not None and job.state is JobState.DONE and job.n_instances == 2
    assert job.updated_at == FINISHED  # the note does not restart the clock
    assert job.details.spool_purged_at == FINISHED + 8 * SECONDS_PER_DAY
    assert job.details.results_purged_at == FINISHED + 31 * SECONDS_PER_DAY
    assert job.details.purged is not None
    assert "received CT purged 2027-01-" in job.details.purged and "results purged" in job.details.purged
    assert node.retention().apply() == []  # nothing twice


@pytest.mark.parametrize("delivery", [EntryState.PENDING, EntryState.DEAD])
def test_an_undelivered_jobs_files_stay(node: Node, delivery: EntryState) -> None:
    job_id = node.job("1.2.3", JobState.DONE, delivery)
    _days_later(node, 365)
    assert node.retention().apply() == []
    assert len(node.spool_files("1.2.3")) == 2 and (node.data_dir / "results" / str(job_id)).is_dir()


@pytest.mark.parametrize("state", [JobState.RECEIVED, JobState.WAITING, JobState.SENDING, JobState.FAILED])
def test_a_job_in_progress_or_failed_keeps_its_files(node: Node, state: JobState) -> None:
    job_id = node.job("1.2.3", state)
    _days_later(node, 365)
    assert node.retention().apply() == []
    assert len(node.spool_files("1.2.3")) == 2
    job = node.store.get_job(job_id)
    assert job is not None and job.details.purged is None


def test_a_refused_series_spool_goes_after_refused_days(node: Node) -> None:
    job_id = node.job("1.2.3", JobState.REFUSED)
    _days_later(node, 6.9)
    assert node.retention().apply() == []
    _days_later(node, 7)
    assert [p.job_id for p in node.retention().apply()] == [job_id]
    assert node.spool_files("1.2.3") == []
    job = node.store.get_job(job_id)
    assert (
        job is not None
        and job.state is JobState.REFUSED
        and "received CT (2 files)" in str(job.details.purged)
    )


def test_a_series_with_a_newer_job_in_progress_keeps_its_spool(node: Node) -> None:
    first = node.job("1.2.3", JobState.DONE)
    node.store.record_instance(_record("1.2.3", "1.2.3.9", node.data_dir / "late.dcm"))  # a new generation
    _days_later(node, 365)
    purged = node.retention().apply()
    assert [(p.job_id, p.spool_files) for p in purged] == [(first, ())]  # its results only
    assert len(node.spool_files("1.2.3")) == 2


def test_a_dry_run_lists_what_would_go_and_removes_nothing(node: Node) -> None:
    done = node.job("1.2.3", JobState.DONE)
    refused = node.job("1.2.4", JobState.REFUSED)
    node.job("1.2.5", JobState.DONE, EntryState.PENDING)
    _days_later(node, 31)
    listed = node.retention().apply(dry_run=True)
    assert [(p.job_id, len(p.spool_files), p.results_dir is not None) for p in listed] == [
        (done, 2, True),
        (refused, 2, False),
    ]
    assert listed[0].bytes == 2 * len(CT_BYTES) + 500
    assert "job 1: spool (2 files) and results" in listed[0].describe()
    assert all(len(node.spool_files(s)) == 2 for s in ("1.2.3", "1.2.4", "1.2.5"))
    assert (node.data_dir / "results" / str(done)).is_dir()
    assert all(job.details.purged is None for job in node.store.list_jobs())
    assert [p.job_id for p in node.retention().apply()] == [done, refused]


def test_results_recorded_outside_the_results_folder_are_never_removed(node: Node, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    node.store.record_instance(_record("1.2.3", "1.2.3.1", node.data_dir / "spool" / "x.dcm"))
    move_to(node.store, 1, JobState.DONE, details=JobDetails(results_dir=elsewhere))
    _days_later(node, 365)
    node.retention().apply()
    assert elsewhere.is_dir()


def test_the_running_node_applies_retention_at_start_and_every_interval(node: Node) -> None:
    config = dataclasses.replace(
        node.config, retention=dataclasses.replace(node.config.retention, interval_minutes=0.05 / 60)
    )
    retention = Retention(config, node.store, node.outbox, clock=node.clock)
    node.job("1.2.3", JobState.DONE)
    _days_later(node, 8)
    retention.start()
    try:
        _wait_for(lambda: node.spool_files("1.2.3") == [])  # the pass at start
        node.job("1.2.4", JobState.REFUSED)  # finished "now": 8 days later, it is due
        _days_later(node, 16)
        _wait_for(lambda: node.spool_files("1.2.4") == [])  # a later pass
    finally:
        assert retention.stop(5)


def _wait_for(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.02)
    raise AssertionError("retention did not act in time")
