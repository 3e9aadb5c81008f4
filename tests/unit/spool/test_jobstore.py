"""The SQLite job store: instances once, jobs per series generation, durable state."""

from __future__ import annotations

import json
import stat
import threading
from pathlib import Path

import pytest
from jobpaths import move_to

from ct2pet_node.domain.jobs import TRANSITIONS, JobDetails, JobState, transition_for
from ct2pet_node.domain.records import InstanceRecord
from ct2pet_node.domain.uids import AeTitle, SeriesUid, SopInstanceUid, StudyUid, Uid
from ct2pet_node.errors import IllegalTransition, InputError, StorageError
from ct2pet_node.spool.jobstore import DB_FILE_NAME, SCHEMA_VERSION, JobStore

CT = "1.2.840.10008.5.1.4.1.1.2"


def record(data_dir: Path, sop: str, series: str = "1.2.3", at: float = 100.0) -> InstanceRecord:
    return InstanceRecord(
        sop_instance_uid=SopInstanceUid(sop),
        sop_class_uid=Uid(CT),
        series_uid=SeriesUid(series),
        study_uid=StudyUid("1.2"),
        modality="CT",
        transfer_syntax_uid=Uid("1.2.840.10008.1.2.1"),
        calling_ae_title=AeTitle("SCANNER"),
        path=data_dir / "spool" / "1.2" / series / f"{sop}.dcm",
        received_at=at,
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path):
    with JobStore.open(tmp_path, clock=Clock()) as opened:
        yield opened


def test_first_instance_creates_received_job(store: JobStore, tmp_path: Path) -> None:
    assert store.record_instance(record(tmp_path, "1.2.3.1", at=100.0))
    assert store.record_instance(record(tmp_path, "1.2.3.2", at=105.0))
    job = store.job_for_series("1.2.3")
    assert job is not None
    assert job.state is JobState.RECEIVED
    assert (job.n_instances, job.last_instance_at, job.study_uid) == (2, 105.0, "1.2")
    assert store.get_job(job.id) == job
    assert [r.sop_instance_uid for r in store.instances_of("1.2.3")] == ["1.2.3.1", "1.2.3.2"]
    assert store.instances_of("1.2.3")[0] == record(tmp_path, "1.2.3.1", at=100.0)


def test_duplicate_instance_is_recorded_once(store: JobStore, tmp_path: Path) -> None:
    assert store.record_instance(record(tmp_path, "1.2.3.1"))
    assert store.has_instance("1.2.3.1")
    assert not store.record_instance(record(tmp_path, "1.2.3.1", at=200.0))
    job = store.job_for_series("1.2.3")
    assert job is not None and job.n_instances == 1 and job.last_instance_at == 100.0
    assert len(store.list_jobs()) == 1


def test_instance_after_waiting_reopens_the_job(store: JobStore, tmp_path: Path) -> None:
    store.record_instance(record(tmp_path, "1.2.3.1"))
    job = store.job_for_series("1.2.3")
    assert job is not None
    move_to(store, job.id, JobState.WAITING)
    store.record_instance(record(tmp_path, "1.2.3.2"))
    reopened = store.get_job(job.id)
    assert reopened is not None and reopened.state is JobState.RECEIVED and reopened.n_instances == 2
    # The engine's stale queue entry no longer claims it.
    assert store.claim(job.id) is None


@pytest.mark.parametrize("later", [JobState.PROCESSING, JobState.DONE, JobState.REFUSED, JobState.FAILED])
def test_instance_after_the_job_moved_on_starts_a_new_generation(
    store: JobStore, tmp_path: Path, later: JobState
) -> None:
    store.record_instance(record(tmp_path, "1.2.3.1"))
    first = store.job_for_series("1.2.3")
    assert first is not None
    move_to(store, first.id, later, reason="x" if later is JobState.REFUSED else None)
    store.record_instance(record(tmp_path, "1.2.3.2"))
    second = store.job_for_series("1.2.3")
    assert second is not None and second.id != first.id
    assert second.state is JobState.RECEIVED and second.n_instances == 2
    assert store.get_job(first.id).state is later  # type: ignore[union-attr]


def test_transition_merges_details_and_validates_id(store: JobStore, tmp_path: Path) -> None:
    store.record_instance(record(tmp_path, "1.2.3.1"))
    job = store.job_for_series("1.2.3")
    assert job is not None
    store.transition(
        job.id, JobState.RECEIVED, JobState.WAITING, details=JobDetails(completed_because="quiet")
    )
    claimed = store.claim(job.id)
    assert claimed is not None
    refused = store.transition(
        job.id,
        JobState.PROCESSING,
        JobState.REFUSED,
        "too few slices",
        details=JobDetails(geometry="as stored"),
    )
    assert refused is not None and refused.reason == "too few slices"
    assert refused.details == JobDetails(completed_because="quiet", geometry="as stored")
    assert refused.to_json()["details"] == {"completed_because": "quiet", "geometry": "as stored"}
    with pytest.raises(InputError, match="no job with id 999"):
        store.transition(999, JobState.RECEIVED, JobState.WAITING)


def test_transition_is_conditional(store: JobStore, tmp_path: Path) -> None:
    store.record_instance(record(tmp_path, "1.2.3.1"))
    job = store.job_for_series("1.2.3")
    assert job is not None
    assert store.transition(job.id, JobState.WAITING, JobState.PROCESSING) is None
    assert store.transition(job.id, JobState.RECEIVED, JobState.WAITING, expected_n_instances=2) is None
    moved = store.transition(job.id, JobState.RECEIVED, JobState.WAITING, expected_n_instances=1)
    assert moved is not None and moved.state is JobState.WAITING
    claimed = store.claim(job.id)
    assert claimed is not None and claimed.state is JobState.PROCESSING and claimed.attempts == 1
    assert store.claim(job.id) is None


def test_force_flag(store: JobStore, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"no job for series '9\.9'"):
        store.request_force("9.9")
    store.record_instance(record(tmp_path, "1.2.3.1"))
    job = store.request_force("1.2.3")
    assert job.forced and job.to_json()["forced"] is True
    done = store.transition(job.id, JobState.RECEIVED, JobState.REFUSED, reason="x")
    assert done is not None and not done.forced
    assert not store.request_force("1.2.3").forced  # a final job cannot be forced


def test_lists_counts_outputs_and_json(store: JobStore, tmp_path: Path) -> None:
    store.record_instance(record(tmp_path, "1.2.3.1", series="1.2.3"))
    store.record_instance(record(tmp_path, "1.2.4.1", series="1.2.4"))
    store.record_instance(record(tmp_path, "1.2.5.1", series="1.2.5"))
    a, b, c = store.list_jobs()
    move_to(store, b.id, JobState.DONE)
    move_to(store, c.id, JobState.WAITING)
    store.set_output_series_uids(b.id, ["2.25.1", "2.25.2"])
    assert [j.id for j in store.list_jobs([JobState.DONE])] == [b.id]
    assert [j.id for j in store.unfinished_jobs()] == [a.id, c.id]
    counts = store.counts_by_state()
    assert counts[JobState.RECEIVED] == 1 and counts[JobState.DONE] == 1 and counts[JobState.FAILED] == 0
    assert set(counts) == set(JobState)
    done = store.get_job(b.id)
    assert done is not None and done.output_series_uids == ("2.25.1", "2.25.2")
    encoded = json.loads(json.dumps(done.to_json()))
    assert encoded["state"] == "done" and encoded["output_series_uids"] == ["2.25.1", "2.25.2"]
    with pytest.raises(InputError):
        store.set_output_series_uids(999, [])


def test_instance_problems(store: JobStore, tmp_path: Path) -> None:
    store.record_instance(record(tmp_path, "1.2.3.1"))
    store.record_instance(record(tmp_path, "1.2.3.2"))
    store.set_instance_problem("1.2.3.2", "unreadable: truncated")
    assert store.instance_problems("1.2.3") == {"1.2.3.2": "unreadable: truncated"}
    store.set_instance_problem("1.2.3.2", None)
    assert store.instance_problems("1.2.3") == {}


def test_survives_reopen_private_files_and_schema_version(tmp_path: Path) -> None:
    with JobStore.open(tmp_path / "data") as store:
        store.record_instance(record(tmp_path / "data", "1.2.3.1"))
        job = store.job_for_series("1.2.3")
        assert job is not None
        move_to(store, job.id, JobState.WAITING)
        assert store._query("PRAGMA journal_mode")[0][0] == "wal"
        assert store._query("PRAGMA synchronous")[0][0] == 2  # FULL
    db = tmp_path / "data" / DB_FILE_NAME
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700
    for sidecar in db.parent.glob(DB_FILE_NAME + "-*"):
        assert stat.S_IMODE(sidecar.stat().st_mode) == 0o600
    with JobStore.open(tmp_path / "data") as again:
        reopened = again.get_job(job.id)
        assert reopened is not None and reopened.state is JobState.WAITING
        assert (
            again.instances_of("1.2.3")[0].path
            == tmp_path / "data" / "spool" / "1.2" / "1.2.3" / "1.2.3.1.dcm"
        )
        assert again._query("PRAGMA user_version")[0][0] == SCHEMA_VERSION


def test_refuses_a_newer_schema(tmp_path: Path) -> None:
    with JobStore.open(tmp_path) as store:
        store._query(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StorageError, match="newer than this release"):
        JobStore.open(tmp_path)


def test_concurrent_recording_from_many_threads(store: JobStore, tmp_path: Path) -> None:
    def send(offset: int) -> None:
        for index in range(25):
            store.record_instance(record(tmp_path, f"1.2.3.{index}"))
            store.record_instance(record(tmp_path, f"1.2.4.{offset}{index}", series="1.2.4"))

    threads = [threading.Thread(target=send, args=(n + 1,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(j.n_instances for j in store.list_jobs()) == [25, 100]
    assert len(store.list_jobs()) == 2


def _job_in(store: JobStore, tmp_path: Path, state: JobState, series: str) -> int:
    store.record_instance(record(tmp_path, f"{series}.1", series=series))
    job = store.job_for_series(series)
    assert job is not None
    return move_to(store, job.id, state).id


@pytest.mark.parametrize("source", list(JobState))
@pytest.mark.parametrize("target", list(JobState))
def test_the_writer_makes_every_legal_move_and_refuses_every_other(
    store: JobStore, tmp_path: Path, source: JobState, target: JobState
) -> None:
    seen: list[tuple[int, JobState, JobState]] = []
    store._on_transition = lambda job, previous: seen.append((job.id, previous, job.state))
    job_id = _job_in(store, tmp_path, source, "1.2.9")
    before = store.get_job(job_id)
    assert before is not None and before.state is source
    seen.clear()
    if (source, target) in {(t.source, t.target) for t in TRANSITIONS}:
        moved = store.transition(job_id, source, target, reason="because")
        assert moved is not None and moved.state is target and moved.reason == "because"
        counts = transition_for(job_id, source, target).counts_attempt
        assert moved.attempts == before.attempts + int(counts)
        assert seen == [(job_id, source, target)]
        # Compare-and-set: the same move again finds the job elsewhere and writes nothing.
        if target is not source:
            assert store.transition(job_id, source, target) is None
    else:
        with pytest.raises(
            IllegalTransition, match=f"job {job_id} cannot move from {source.value} to {target.value}"
        ):
            store.transition(job_id, source, target)
        after = store.get_job(job_id)
        assert after is not None and (after.state, after.updated_at) == (source, before.updated_at)
        assert seen == []


def test_a_reopen_is_a_move_the_observer_sees(store: JobStore, tmp_path: Path) -> None:
    seen: list[tuple[JobState, JobState]] = []
    store._on_transition = lambda job, previous: seen.append((previous, job.state))
    job_id = _job_in(store, tmp_path, JobState.WAITING, "1.2.3")
    store.record_instance(record(tmp_path, "1.2.3.2"))
    assert seen[-1] == (JobState.WAITING, JobState.RECEIVED)
    assert store.get_job(job_id).state is JobState.RECEIVED  # type: ignore[union-attr]


def test_a_failing_observer_does_not_undo_a_committed_move(store: JobStore, tmp_path: Path) -> None:
    def broken(job: object, previous: JobState) -> None:
        raise RuntimeError("observer bug")

    store._on_transition = broken
    store.record_instance(record(tmp_path, "1.2.3.1"))
    moved = store.transition(1, JobState.RECEIVED, JobState.WAITING)
    assert moved is not None and moved.state is JobState.WAITING
