"""``jobs retry``: a failed engine job runs again, a dead-lettered delivery is replayed.

The stores are the real ones in tmp_path; the network is a scripted send
function behind the real sender, as a running node would have it.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from jobpaths import move_to

from ct2pet_node.config import Config, Destination, load_config
from ct2pet_node.domain.jobs import JobDetails, JobState
from ct2pet_node.domain.records import InstanceRecord
from ct2pet_node.domain.uids import AeTitle, SeriesUid, SopInstanceUid, StudyUid, Uid
from ct2pet_node.errors import InputError
from ct2pet_node.routing.delivery import InstanceResult, RetrySchedule, TransferProblem
from ct2pet_node.service.recovery import settle_delivery
from ct2pet_node.service.retry import retry_job
from ct2pet_node.service.sender import Sender
from ct2pet_node.spool.jobstore import JobStore
from ct2pet_node.spool.outbox import Outbox

PACS = Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=4242)


class Peer:
    """The destination: unreachable until ``up`` is set, then it stores everything."""

    def __init__(self) -> None:
        self.up = False

    def __call__(
        self, destination: Destination, calling_ae: str, paths: Sequence[Path], cancel: threading.Event
    ) -> list[InstanceResult]:
        if self.up:
            return [InstanceResult(p, p.stem, 0x0000, None) for p in paths]
        return [
            InstanceResult(p, None, None, TransferProblem.UNREACHABLE, "connection refused") for p in paths
        ]


@pytest.fixture
def config(tmp_path: Path) -> Config:
    loaded = load_config()
    return dataclasses.replace(
        loaded, node=dataclasses.replace(loaded.node, data_dir=tmp_path / "data"), destinations=(PACS,)
    )


@pytest.fixture
def store(config: Config) -> Iterator[JobStore]:
    with JobStore.open(config.node.data_dir) as opened:
        opened.record_instance(
            InstanceRecord(
                sop_instance_uid=SopInstanceUid("1.2.3.4.1"),
                sop_class_uid=Uid("1.2.840.10008.5.1.4.1.1.2"),
                series_uid=SeriesUid("1.2.3.4"),
                study_uid=StudyUid("1.2.3"),
                modality="CT",
                transfer_syntax_uid=Uid("1.2.840.10008.1.2.1"),
                calling_ae_title=AeTitle("SCANNER"),
                path=config.node.data_dir / "in.dcm",
                received_at=1.0,
            )
        )
        yield opened


@pytest.fixture
def outbox(config: Config) -> Iterator[Outbox]:
    opened = Outbox.open(config.node.data_dir)
    yield opened
    opened.close()


def _node_sender(outbox: Outbox, store: JobStore, peer: Peer) -> Sender:
    """The running node's sender, wired to the job store as the node wires it."""
    return Sender(
        outbox,
        [PACS],
        "CT2PET",
        send=peer,
        schedule=RetrySchedule((0.0,), max_attempts=1),
        on_job_delivered=lambda job_id: settle_delivery(store, job_id, None),
        on_job_dead=lambda job_id, reason: settle_delivery(store, job_id, reason),
    )


def _dead_lettered_job(config: Config, store: JobStore, sender: Sender) -> int:
    results = config.node.data_dir / "results" / "1"
    (results / "pet").mkdir(parents=True)
    (results / "pet" / "1.dcm").write_bytes(b"")
    move_to(store, 1, JobState.SENDING, details=JobDetails(results_dir=results))
    assert sender.submit(1, [results / "pet" / "1.dcm"])
    sender.run_once()
    job = store.get_job(1)
    assert job is not None and job.state is JobState.FAILED and "connection refused" in (job.reason or "")
    return job.id


def test_a_dead_letter_is_replayed_and_the_delivery_settles_the_job(
    config: Config, store: JobStore, outbox: Outbox
) -> None:
    peer = Peer()
    sender = _node_sender(outbox, store, peer)
    job_id = _dead_lettered_job(config, store, sender)
    peer.up = True

    assert retry_job(config, job_id) == f"job {job_id}: 1 dead-lettered delivery(ies) queued again"
    assert store.get_job(job_id).state is JobState.SENDING  # type: ignore[union-attr]
    sender.run_once()
    assert store.get_job(job_id).state is JobState.DONE  # type: ignore[union-attr]


def test_a_delivery_settling_while_the_retry_revives_it_ends_in_done(
    config: Config, store: JobStore, outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    peer = Peer()
    sender = _node_sender(outbox, store, peer)
    job_id = _dead_lettered_job(config, store, sender)
    peer.up = True
    revive = Outbox.retry

    def revive_and_deliver_at_once(self: Outbox, job: int, now: float, destination: str | None = None) -> int:
        # The node's sender picks the revived entry up before `jobs retry` takes its next step.
        revived = revive(self, job, now, destination)
        sender.run_once()
        return revived

    monkeypatch.setattr(Outbox, "retry", revive_and_deliver_at_once)
    retry_job(config, job_id)

    job = store.get_job(job_id)
    assert job is not None and job.state is JobState.DONE, job


def test_a_job_failed_at_the_engine_goes_back_to_waiting(config: Config, store: JobStore) -> None:
    move_to(store, 1, JobState.FAILED, reason="out of memory")
    assert "queued for the engine again (it failed: out of memory)" in retry_job(config, 1)
    assert store.get_job(1).state is JobState.WAITING  # type: ignore[union-attr]


@pytest.mark.parametrize("state", [JobState.RECEIVED, JobState.DONE, JobState.REFUSED])
def test_only_failed_jobs_and_dead_letters_can_be_retried(
    config: Config, store: JobStore, state: JobState
) -> None:
    move_to(store, 1, state)
    with pytest.raises(InputError, match=f"job 1 is {state.value}: only failed jobs"):
        retry_job(config, 1)
    with pytest.raises(InputError, match="no job with id 2"):
        retry_job(config, 2)
