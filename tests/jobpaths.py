"""Put a job in a given state the way the node would: along the lifecycle table's own moves.

Import as ``from jobpaths import move_to`` (``tests/`` is on the path). The job store has
no blind "set state"; a test that needs a job in SENDING walks it there through
WAITING and PROCESSING, by the shortest path :data:`TRANSITIONS` allows. A job is
made from DICOM files by :func:`receive_files`, as the storage SCP and the router would.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import pydicom

from ct2pet_node.domain.jobs import TRANSITIONS, Job, JobDetails, JobState
from ct2pet_node.domain.records import InstanceRecord
from ct2pet_node.domain.uids import AeTitle, SeriesUid, SopInstanceUid, StudyUid, Uid
from ct2pet_node.spool.jobstore import JobStore


def receive_files(store: JobStore, paths: Sequence[Path]) -> int:
    """Record ``paths`` (one series) as the SCP would, and move their job to WAITING as the router would."""
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        store.record_instance(
            InstanceRecord(
                sop_instance_uid=SopInstanceUid(ds.SOPInstanceUID),
                sop_class_uid=Uid(ds.SOPClassUID),
                series_uid=SeriesUid(ds.SeriesInstanceUID),
                study_uid=StudyUid(ds.StudyInstanceUID),
                modality=str(ds.Modality),
                transfer_syntax_uid=Uid(ds.file_meta.TransferSyntaxUID),
                calling_ae_title=AeTitle("TEST"),
                path=path,
                received_at=time.time(),
            )
        )
    job = store.job_for_series(str(pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID))
    assert job is not None
    assert store.transition(job.id, JobState.RECEIVED, JobState.WAITING) is not None
    return job.id


def path_between(source: JobState, target: JobState) -> list[JobState]:
    """The states after ``source`` on a shortest legal path to ``target`` (empty when equal)."""
    previous: dict[JobState, JobState] = {}
    frontier = deque([source])
    while frontier:
        state = frontier.popleft()
        if state is target:
            break
        for move in TRANSITIONS:
            if move.source is state and move.target not in previous and move.target is not source:
                previous[move.target] = state
                frontier.append(move.target)
    if target is not source and target not in previous:
        raise AssertionError(f"the lifecycle has no path from {source.value} to {target.value}")
    path: list[JobState] = []
    state = target
    while state is not source:
        path.append(state)
        state = previous[state]
    return path[::-1]


def move_to(
    store: JobStore,
    job_id: int,
    target: JobState,
    reason: str | None = None,
    details: JobDetails | None = None,
) -> Job:
    """Walk job ``job_id`` to ``target``; ``reason`` and ``details`` go with the last move."""
    job = store.get_job(job_id)
    assert job is not None, f"no job {job_id}"
    steps = path_between(job.state, target)
    for index, state in enumerate(steps):
        last = index == len(steps) - 1
        moved = store.transition(
            job_id, job.state, state, reason if last else None, details=details if last else None
        )
        assert moved is not None, f"job {job_id} left {job.state.value} on its way to {target.value}"
        job = moved
    return job
