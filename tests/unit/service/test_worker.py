"""The engine worker with a fake translator: states, failures, checkpoints and refusals."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Unpack

import numpy as np
import pytest
from ctfactory import make_ct_series
from fakes import FakeModel
from jobpaths import receive_files

from ct2pet_node.config import Config, Destination, load_config
from ct2pet_node.domain.jobs import JobState
from ct2pet_node.domain.request import TranslationRequest
from ct2pet_node.errors import EngineError
from ct2pet_node.service.metrics import NodeMetrics
from ct2pet_node.service.queue import InProcessQueue
from ct2pet_node.service.worker import EngineWorker
from ct2pet_node.spool.jobstore import JobStore

SLICES = 12
CHUNK = 4


class FakeTranslator(FakeModel):
    """Maps HU linearly to [0, 1]; records which chunks it was asked for; may misbehave on demand."""

    def __init__(self, misbehave: Callable[[int], None] | None = None) -> None:
        self.first_slices: list[int] = []
        self.misbehave = misbehave
        self.states_seen: list[JobState] = []
        self.store: JobStore | None = None

    def translate_region(self, hu: np.ndarray, **request: Unpack[TranslationRequest]) -> np.ndarray:
        first_slice_index = request.get("first_slice_index", 0)
        self.first_slices.append(first_slice_index)
        if self.store is not None:
            job = self.store.list_jobs()[-1]
            self.states_seen.append(job.state)
        if self.misbehave is not None:
            self.misbehave(first_slice_index)
        return np.clip((hu + 1000.0) / 2000.0, 0.0, 1.0).astype(np.float32)


def _config(data_dir: Path, *, min_slices: int = 5, destinations: Sequence[Destination] = ()) -> Config:
    config = load_config()
    return dataclasses.replace(
        config,
        node=dataclasses.replace(config.node, data_dir=data_dir, min_free_mb=0),
        routing=dataclasses.replace(config.routing, min_slices=min_slices),
        engine=dataclasses.replace(config.engine, steps=3, device="cpu"),
        destinations=tuple(destinations),
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JobStore]:
    with JobStore.open(tmp_path / "data") as opened:
        yield opened


@pytest.fixture
def ct_paths(tmp_path: Path) -> list[Path]:
    return make_ct_series(tmp_path / "ct", n=SLICES, rows=32, cols=32)


def _worker(
    config: Config,
    store: JobStore,
    translator: FakeTranslator,
    submit: Callable[[int, Sequence[Path]], bool] | None = None,
    queue: InProcessQueue | None = None,
) -> EngineWorker:
    return EngineWorker(
        config,
        store,
        queue or InProcessQueue(),
        translator,
        submit or (lambda job_id, paths: False),
        NodeMetrics(),
        chunk_slices=CHUNK,
    )


def test_a_job_without_destination_is_translated_written_and_done(
    tmp_path: Path, store: JobStore, ct_paths: list[Path]
) -> None:
    job_id = receive_files(store, ct_paths)
    translator = FakeTranslator()
    translator.store = store
    worker = _worker(_config(tmp_path / "data"), store, translator)

    assert worker.process(job_id) is JobState.DONE

    job = store.get_job(job_id)
    assert job is not None and job.state is JobState.DONE and job.reason is None
    assert translator.states_seen == [JobState.PROCESSING] * (SLICES // CHUNK)
    assert translator.first_slices == [0, 4, 8]
    results = job.details.results_dir
    assert results is not None
    assert results == tmp_path / "data" / "results" / str(job_id)
    assert "no destination" in str(job.details.delivery)
    assert len(job.output_series_uids) == 1
    assert len(list((results / "secondary-capture").glob("*.dcm"))) == SLICES
    assert not (tmp_path / "data" / "work" / str(job_id)).exists()  # checkpoints cleared once written
    assert worker.metrics.sample("ct2pet_engine_slices_total") == SLICES


def test_a_job_with_a_destination_goes_to_sending_with_every_file(
    tmp_path: Path, store: JobStore, ct_paths: list[Path]
) -> None:
    job_id = receive_files(store, ct_paths)
    submitted: list[tuple[int, list[Path], JobState]] = []

    def submit(job: int, paths: Sequence[Path]) -> bool:
        found = store.get_job(job)
        assert found is not None
        submitted.append((job, list(paths), found.state))
        return True

    pacs = Destination("pacs", "PACS", "127.0.0.1", 4242)
    worker = _worker(_config(tmp_path / "data", destinations=[pacs]), store, FakeTranslator(), submit)

    assert worker.process(job_id) is JobState.SENDING

    [(job, paths, state_at_submit)] = submitted
    assert job == job_id and len(paths) == SLICES and all(p.is_file() for p in paths)
    # SENDING is persisted before the sender can deliver (and move the job to DONE).
    assert state_at_submit is JobState.SENDING
    found = store.get_job(job_id)
    assert found is not None and found.state is JobState.SENDING


def _raise(error: BaseException) -> Callable[[int], None]:
    def misbehave(_: int) -> None:
        raise error

    return misbehave


class NanTranslator(FakeTranslator):
    def translate_region(self, hu: np.ndarray, **request: Unpack[TranslationRequest]) -> np.ndarray:
        out = super().translate_region(hu, **request)
        out[0, 0, 0] = np.nan
        return out


@pytest.mark.parametrize(
    ("translator", "reason"),
    [
        (NanTranslator(), "NaN or infinite values for slices 0..3"),
        (FakeTranslator(_raise(EngineError("CUDA device vanished"))), "CUDA device vanished"),
        (FakeTranslator(_raise(MemoryError())), "out of memory while translating"),
        (FakeTranslator(_raise(RuntimeError("boom"))), "internal error: RuntimeError: boom"),
    ],
    ids=["nan", "engine-error", "memory-error", "bug"],
)
def test_engine_errors_fail_the_job_with_a_clear_reason(
    tmp_path: Path, store: JobStore, ct_paths: list[Path], translator: FakeTranslator, reason: str
) -> None:
    job_id = receive_files(store, ct_paths)
    worker = _worker(_config(tmp_path / "data"), store, translator)

    assert worker.process(job_id) is JobState.FAILED

    job = store.get_job(job_id)
    assert job is not None and job.state is JobState.FAILED
    assert reason in (job.reason or "")
    assert worker.current_job is None


def test_the_worker_thread_serves_the_next_job_after_a_failure(tmp_path: Path, store: JobStore) -> None:
    first = receive_files(store, make_ct_series(tmp_path / "a", n=SLICES, name="a", rows=32, cols=32))
    second = receive_files(store, make_ct_series(tmp_path / "b", n=SLICES, name="b", rows=32, cols=32))
    calls = {"n": 0}

    def fail_once(_: int) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise MemoryError

    queue = InProcessQueue()
    worker = _worker(_config(tmp_path / "data"), store, FakeTranslator(fail_once), queue=queue)
    queue.put(first)
    queue.put(second)
    worker.start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            job = store.get_job(second)
            if job is not None and job.state.is_final:
                break
            time.sleep(0.05)
    finally:
        assert worker.stop(10)
    states = {job.id: job.state for job in store.list_jobs()}
    assert states == {first: JobState.FAILED, second: JobState.DONE}


def test_a_stop_mid_translation_checkpoints_and_the_next_run_reuses_finished_chunks(
    tmp_path: Path, store: JobStore, ct_paths: list[Path]
) -> None:
    job_id = receive_files(store, ct_paths)
    config = _config(tmp_path / "data")
    holder: list[EngineWorker] = []

    def stop_during_second_chunk(first_slice: int) -> None:
        if first_slice == CHUNK:
            holder[0].stop()  # as SIGTERM does: the chunk in flight finishes, the next is not begun

    interrupted = FakeTranslator(stop_during_second_chunk)
    holder.append(_worker(config, store, interrupted))

    assert holder[0].process(job_id) is JobState.WAITING

    job = store.get_job(job_id)
    assert job is not None and job.state is JobState.WAITING and job.reason == "node stopped; resumes"
    assert interrupted.first_slices == [0, CHUNK]
    assert len(list((tmp_path / "data" / "work" / str(job_id)).glob("*.npy"))) == 2

    resumed = FakeTranslator()
    worker = _worker(config, store, resumed)
    assert worker.process(job_id) is JobState.DONE
    assert resumed.first_slices == [2 * CHUNK]  # the two checkpointed chunks were not translated again
    assert worker.metrics.sample("ct2pet_engine_slices_total") == SLICES - 2 * CHUNK
    job = store.get_job(job_id)
    assert job is not None and job.attempts == 2


def test_checkpoints_are_not_reused_for_other_sampling_settings(
    tmp_path: Path, store: JobStore, ct_paths: list[Path]
) -> None:
    job_id = receive_files(store, ct_paths)
    config = _config(tmp_path / "data")
    holder: list[EngineWorker] = []
    holder.append(_worker(config, store, FakeTranslator(lambda first: holder[0].stop())))
    assert holder[0].process(job_id) is JobState.WAITING

    other_steps = dataclasses.replace(config, engine=dataclasses.replace(config.engine, steps=7))
    translator = FakeTranslator()
    assert _worker(other_steps, store, translator).process(job_id) is JobState.DONE
    assert translator.first_slices == [0, 4, 8]


def test_refusal_at_requalification_refuses_the_job(
    tmp_path: Path, store: JobStore, ct_paths: list[Path]
) -> None:
    job_id = receive_files(store, ct_paths)
    translator = FakeTranslator()
    worker = _worker(_config(tmp_path / "data", min_slices=SLICES + 1), store, translator)

    assert worker.process(job_id) is JobState.REFUSED

    job = store.get_job(job_id)
    assert job is not None and job.state is JobState.REFUSED
    assert f"series has {SLICES} slice(s), at least {SLICES + 1} are needed" in (job.reason or "")
    assert translator.first_slices == []


def test_a_job_that_is_not_waiting_is_skipped(tmp_path: Path, store: JobStore, ct_paths: list[Path]) -> None:
    job_id = receive_files(store, ct_paths)
    store.transition(
        job_id, JobState.WAITING, JobState.RECEIVED
    )  # reopened by a late instance after it was queued
    translator = FakeTranslator()
    assert _worker(_config(tmp_path / "data"), store, translator).process(job_id) is None
    assert translator.first_slices == []


def test_an_idle_worker_finds_waiting_jobs_nobody_queued(tmp_path: Path, store: JobStore) -> None:
    # As after `ct2pet-node jobs retry` in another process: the job is WAITING, the queue is empty.
    job_id = receive_files(store, make_ct_series(tmp_path / "ct", n=SLICES, rows=32, cols=32))
    worker = EngineWorker(
        _config(tmp_path / "data"),
        store,
        InProcessQueue(),
        FakeTranslator(),
        lambda job, paths: False,
        NodeMetrics(),
        idle_poll_seconds=0.1,
    )
    worker.start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            job = store.get_job(job_id)
            if job is not None and job.state is JobState.DONE:
                break
            time.sleep(0.05)
    finally:
        assert worker.stop(10)
    job = store.get_job(job_id)
    assert job is not None and job.state is JobState.DONE


def test_written_results_come_with_previews_sampling_and_seconds_per_phase(
    tmp_path: Path, store: JobStore, ct_paths: list[Path]
) -> None:
    job_id = receive_files(store, ct_paths)
    worker = _worker(_config(tmp_path / "data"), store, FakeTranslator())
    before = time.time()
    assert worker.process(job_id) is JobState.DONE
    job = store.get_job(job_id)
    assert job is not None and job.details.results_dir is not None
    previews = sorted(path.name for path in (job.details.results_dir / "preview").iterdir())
    assert previews == ["axial.png", "mip.png"]
    eta, seed = worker.sampling.eta, worker.sampling.seed
    assert job.details.sampling == f"steps 3, eta {eta:g}, seed {seed}"
    phases = dict(job.details.phase_seconds or ())
    assert list(phases) == ["waiting", "load", "translate", "write"]
    assert all(seconds >= 0 for seconds in phases.values()) and phases["write"] > 0
    assert job.details.written_at is not None and before <= job.details.written_at <= time.time()
