"""Start-up recovery and the sender's verdicts: the job moves outside the router and the engine."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from jobpaths import move_to

from ct2pet_node.domain.jobs import JobDetails, JobState
from ct2pet_node.domain.records import InstanceRecord
from ct2pet_node.domain.uids import AeTitle, SeriesUid, SopInstanceUid, StudyUid, Uid
from ct2pet_node.routing.delivery import AttemptDecision, EntryState
from ct2pet_node.service.recovery import SendingOutcome, decide_sending, recover_jobs, settle_delivery
from ct2pet_node.spool.jobstore import JobStore
from ct2pet_node.spool.outbox import Outbox

RESULTS = Path("/data/results/1")


@pytest.mark.parametrize(
    ("delivery", "files", "destinations", "expected"),
    [
        (EntryState.DELIVERED, False, True, SendingOutcome(JobState.DONE)),
        (EntryState.DEAD, True, True, SendingOutcome(JobState.FAILED, reason="delivery failed")),
        (EntryState.PENDING, True, True, SendingOutcome(None)),
        (EntryState.SENDING, True, True, SendingOutcome(None)),
        (None, True, True, SendingOutcome(None, resubmit=True)),
        (
            None,
            True,
            False,
            SendingOutcome(JobState.DONE, delivery="no destination configured: results stay in results_dir"),
        ),
    ],
)
def test_decide_sending(
    delivery: EntryState | None, files: bool, destinations: bool, expected: SendingOutcome
) -> None:
    assert decide_sending(delivery, RESULTS, files, destinations) == expected


def test_results_gone_fail_the_job_saying_where_they_were_looked_for() -> None:
    outcome = decide_sending(None, RESULTS, False, True)
    assert outcome.target is JobState.FAILED
    assert f"results missing after restart (looked in {RESULTS})" in (outcome.reason or "")
    assert "no results folder was recorded" in (decide_sending(None, None, False, True).reason or "")


class Stores:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.store = JobStore.open(data_dir)
        self.outbox = Outbox.open(data_dir)
        self.submitted: list[tuple[int, list[str]]] = []

    def job(self, series: str, state: JobState, with_files: bool = False) -> int:
        self.store.record_instance(
            InstanceRecord(
                sop_instance_uid=SopInstanceUid(f"{series}.1"),
                sop_class_uid=Uid("1.2.840.10008.5.1.4.1.1.2"),
                series_uid=SeriesUid(series),
                study_uid=StudyUid("1.2.3"),
                modality="CT",
                transfer_syntax_uid=Uid("1.2.840.10008.1.2.1"),
                calling_ae_title=AeTitle("SCANNER"),
                path=self.data_dir / f"{series}.dcm",
                received_at=1.0,
            )
        )
        job = self.store.job_for_series(series)
        assert job is not None
        results = self.data_dir / "results" / str(job.id)
        if with_files:
            (results / "pet").mkdir(parents=True)
            (results / "pet" / "a.dcm").write_bytes(b"")
        move_to(self.store, job.id, state, details=JobDetails(results_dir=results))
        return job.id

    def submit(self, job_id: int, paths: Sequence[Path]) -> bool:
        self.submitted.append((job_id, [p.name for p in paths]))
        return True

    def state(self, job_id: int) -> JobState:
        job = self.store.get_job(job_id)
        assert job is not None
        return job.state


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[Stores]:
    opened = Stores(tmp_path / "data")
    yield opened
    opened.outbox.close()
    opened.store.close()


def test_recovery_moves_each_job_a_crash_left_half_way(stores: Stores) -> None:
    received = stores.job("1.1", JobState.RECEIVED)
    waiting = stores.job("1.2", JobState.WAITING)
    processing = stores.job("1.3", JobState.PROCESSING)
    delivered = stores.job("1.4", JobState.SENDING)
    dead = stores.job("1.5", JobState.SENDING)
    pending = stores.job("1.6", JobState.SENDING)
    lost_in_between = stores.job("1.7", JobState.SENDING, with_files=True)
    files_gone = stores.job("1.8", JobState.SENDING)
    for job_id in (delivered, dead, pending):
        stores.outbox.enqueue(job_id, "pacs", [stores.data_dir / "x.dcm"], 1.0)
    stores.outbox.mark_results(
        delivered, "pacs", [], AttemptDecision(EntryState.DELIVERED, 1, None, None), 2.0
    )
    stores.outbox.mark_results(dead, "pacs", [], AttemptDecision(EntryState.DEAD, 1, None, "refused"), 2.0)

    recover_jobs(stores.store, stores.outbox, stores.submit, destinations_configured=True)

    assert stores.state(received) is JobState.RECEIVED and stores.state(waiting) is JobState.WAITING
    assert stores.state(processing) is JobState.WAITING
    assert stores.store.get_job(processing).details.recovered_from is JobState.PROCESSING  # type: ignore[union-attr]
    assert stores.state(delivered) is JobState.DONE
    assert stores.state(dead) is JobState.FAILED
    assert stores.state(pending) is JobState.SENDING
    assert stores.state(lost_in_between) is JobState.SENDING
    assert stores.submitted == [(lost_in_between, ["a.dcm"])]
    assert stores.state(files_gone) is JobState.FAILED


def test_the_senders_verdicts_settle_sending_jobs_and_are_ignored_elsewhere(stores: Stores) -> None:
    done = stores.job("2.1", JobState.SENDING)
    failed = stores.job("2.2", JobState.SENDING)
    settle_delivery(stores.store, done, None)
    settle_delivery(stores.store, failed, "delivery to pacs failed: refused")
    assert stores.state(done) is JobState.DONE
    job = stores.store.get_job(failed)
    assert job is not None and job.state is JobState.FAILED
    assert job.reason == "delivery failed: delivery to pacs failed: refused"
    settle_delivery(stores.store, failed, None)  # a second destination's late verdict
    assert stores.state(failed) is JobState.FAILED
