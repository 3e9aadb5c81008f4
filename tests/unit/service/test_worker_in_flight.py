"""Several jobs in flight (a cluster engine): each engine thread claims its own job, none runs twice."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from ctfactory import make_ct_series
from fakes import FakeModel
from jobpaths import receive_files
from unit.service.test_worker import _config

from ct2pet_node.domain.jobs import JobState
from ct2pet_node.service.metrics import NodeMetrics
from ct2pet_node.service.queue import InProcessQueue
from ct2pet_node.service.worker import EngineWorker
from ct2pet_node.spool.jobstore import JobStore

SLICES = 8
CHUNK = 4
WAIT_SECONDS = 20.0


class GatedTranslator(FakeModel):
    """Holds every chunk until the test opens the gate; counts the chunks that arrived."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.arrived = threading.Semaphore(0)
        self.lock = threading.Lock()
        self.chunks = 0

    def translate_region(self, hu: np.ndarray, **_: object) -> np.ndarray:
        with self.lock:
            self.chunks += 1
        self.arrived.release()
        assert self.gate.wait(WAIT_SECONDS), "the test never opened the gate"
        return np.zeros(hu.shape, dtype=np.float32)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JobStore]:
    with JobStore.open(tmp_path / "data") as opened:
        yield opened


def _two_jobs(tmp_path: Path, store: JobStore, queue: InProcessQueue) -> list[int]:
    jobs = [
        receive_files(store, make_ct_series(tmp_path / name, n=SLICES, name=name, rows=32, cols=32))
        for name in ("a", "b")
    ]
    assert jobs[0] != jobs[1]
    for job_id in jobs * 2:  # a hint twice over, as a re-queued job may leave: the claim must hold
        queue.put(job_id)
    return jobs


def _worker(
    tmp_path: Path, store: JobStore, queue: InProcessQueue, translator: GatedTranslator, n: int
) -> EngineWorker:
    return EngineWorker(
        _config(tmp_path / "data"),
        store,
        queue,
        translator,
        lambda job_id, paths: False,
        NodeMetrics(),
        chunk_slices=CHUNK,
        idle_poll_seconds=0.2,
        jobs_in_flight=n,
    )


def _states(store: JobStore, jobs: list[int]) -> list[JobState]:
    found = [store.get_job(job_id) for job_id in jobs]
    return [job.state for job in found if job is not None]


def _until(condition: object, seconds: float = WAIT_SECONDS) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_two_queued_jobs_translate_at_once_and_each_completes_once(tmp_path: Path, store: JobStore) -> None:
    queue, translator = InProcessQueue(), GatedTranslator()
    jobs = _two_jobs(tmp_path, store, queue)
    worker = _worker(tmp_path, store, queue, translator, n=2)
    worker.start()
    try:
        assert translator.arrived.acquire(timeout=WAIT_SECONDS)
        assert translator.arrived.acquire(timeout=WAIT_SECONDS), "the second job never started"
        assert _states(store, jobs) == [JobState.PROCESSING, JobState.PROCESSING]
        assert worker.running.ids() == tuple(sorted(jobs)) and worker.current_job == min(jobs)
        translator.gate.set()
        assert _until(lambda: _states(store, jobs) == [JobState.DONE, JobState.DONE])
    finally:
        translator.gate.set()
        assert worker.stop(WAIT_SECONDS)
    finished = [store.get_job(job_id) for job_id in jobs]
    assert [job.attempts for job in finished if job is not None] == [1, 1]
    assert translator.chunks == 2 * SLICES // CHUNK  # every chunk of each job once
    assert worker.running.ids() == () and worker.current_job is None


def test_one_job_in_flight_keeps_the_second_waiting(tmp_path: Path, store: JobStore) -> None:
    queue, translator = InProcessQueue(), GatedTranslator()
    jobs = _two_jobs(tmp_path, store, queue)
    worker = _worker(tmp_path, store, queue, translator, n=1)
    worker.start()
    try:
        assert translator.arrived.acquire(timeout=WAIT_SECONDS)
        assert not translator.arrived.acquire(timeout=1.0), "a second job started on a one-job engine"
        assert _states(store, jobs) == [JobState.PROCESSING, JobState.WAITING]
    finally:
        translator.gate.set()
        assert worker.stop(WAIT_SECONDS)


def test_a_stop_checkpoints_every_job_in_flight_and_a_restart_finishes_them(
    tmp_path: Path, store: JobStore
) -> None:
    queue, translator = InProcessQueue(), GatedTranslator()
    jobs = _two_jobs(tmp_path, store, queue)
    worker = _worker(tmp_path, store, queue, translator, n=2)
    worker.start()
    assert translator.arrived.acquire(timeout=WAIT_SECONDS)
    assert translator.arrived.acquire(timeout=WAIT_SECONDS)
    worker.request_stop()
    translator.gate.set()  # each job's first chunk finishes and is checkpointed; then both stop
    assert worker.stop(WAIT_SECONDS)
    assert _states(store, jobs) == [JobState.WAITING, JobState.WAITING]
    assert translator.chunks == 2
    worker.start()  # the queue's hints were taken: the store's WAITING jobs are found by the idle poll
    try:
        assert _until(lambda: _states(store, jobs) == [JobState.DONE, JobState.DONE])
    finally:
        assert worker.stop(WAIT_SECONDS)
    assert translator.chunks == 2 * SLICES // CHUNK  # the checkpointed chunks were not done again
