"""The engine worker with a translator that runs many chunks at once (the Ray backend's shape)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pydicom
from jobpaths import receive_files
from unit.service.test_worker import (
    CHUNK,
    SLICES,
    FakeTranslator,
    _config,
    _worker,
    ct_paths,
    store,
)

from ct2pet_node.domain.jobs import JobState
from ct2pet_node.errors import EngineUnavailable
from ct2pet_node.spool.jobstore import JobStore

__all__ = ["ct_paths", "store"]  # the fixtures, used by name


class SpreadTranslator(FakeTranslator):
    """Answers every chunk, last first (as actors finish out of order); may lose its cluster after some."""

    def __init__(self, lost_after: int | None = None, ready: bool = True) -> None:
        super().__init__()
        self.lost_after = lost_after
        self.is_ready = ready
        self.asked: list[list[int]] = []

    def ready(self) -> bool:
        return self.is_ready

    def translate_chunks(
        self,
        region_hu: np.ndarray,
        chunks: Sequence[range],
        *,
        kvp: float | None,
        steps: int | None,
        eta: float | None,
        seed: int | None,
    ) -> Iterator[tuple[range, np.ndarray]]:
        self.asked.append([chunk.start for chunk in chunks])
        for done, chunk in enumerate(reversed(chunks)):
            if self.lost_after is not None and done == self.lost_after:
                raise EngineUnavailable("engine cluster 127.0.0.1:6379 unreachable since 12:03:10")
            yield (
                chunk,
                self.translate_region(region_hu[chunk.start : chunk.stop], first_slice_index=chunk.start),
            )


def _pixels(results_dir: Path) -> list[bytes]:
    files = sorted(results_dir.rglob("*.dcm"), key=lambda p: int(pydicom.dcmread(p).InstanceNumber))
    return [pydicom.dcmread(path).PixelData for path in files]


def test_chunks_finishing_out_of_order_give_the_sequential_result(
    tmp_path: Path, store: JobStore, ct_paths: list[Path]
) -> None:
    sequential_job = receive_files(store, ct_paths)
    assert (
        _worker(_config(tmp_path / "data"), store, FakeTranslator()).process(sequential_job) is JobState.DONE
    )
    expected = _pixels(tmp_path / "data" / "results" / str(sequential_job))

    spread = SpreadTranslator()
    with JobStore.open(tmp_path / "other") as other:
        spread_job = receive_files(other, ct_paths)
        assert _worker(_config(tmp_path / "other"), other, spread).process(spread_job) is JobState.DONE
    assert spread.asked == [list(range(0, SLICES, CHUNK))]  # every chunk asked for at once
    assert _pixels(tmp_path / "other" / "results" / str(spread_job)) == expected
    assert len(expected) == SLICES


def test_a_lost_cluster_sends_the_job_back_to_waiting_and_keeps_finished_chunks(
    tmp_path: Path, store: JobStore, ct_paths: list[Path]
) -> None:
    job_id = receive_files(store, ct_paths)
    config = _config(tmp_path / "data")
    assert _worker(config, store, SpreadTranslator(lost_after=1)).process(job_id) is JobState.WAITING
    job = store.get_job(job_id)
    assert job is not None and job.reason is not None and "unreachable since 12:03:10" in job.reason
    assert len(list((tmp_path / "data" / "work" / str(job_id)).glob("*.npy"))) == 1

    back = SpreadTranslator()
    assert _worker(config, store, back).process(job_id) is JobState.DONE
    assert back.asked == [list(range(0, SLICES - CHUNK, CHUNK))]  # the last chunk finished first, and is kept


def test_a_worker_whose_cluster_is_down_leaves_jobs_waiting(
    tmp_path: Path, store: JobStore, ct_paths: list[Path]
) -> None:
    job_id = receive_files(store, ct_paths)
    down = SpreadTranslator(ready=False)
    worker = _worker(_config(tmp_path / "data"), store, down)
    worker.idle_poll_seconds = 0.1
    worker.start()
    try:
        time.sleep(1.5)
        job = store.get_job(job_id)
        assert job is not None and job.state is JobState.WAITING and job.attempts == 0
        down.is_ready = True
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and job.state is not JobState.DONE:
            time.sleep(0.05)
            job = store.get_job(job_id)
            assert job is not None
    finally:
        assert worker.stop(10)
    assert job.state is JobState.DONE
