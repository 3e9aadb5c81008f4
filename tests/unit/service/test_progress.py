"""Job progress: the live board the engine and the sender write, and the store's fallback."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Unpack

import numpy as np
from ctfactory import make_ct_series
from fakes import FakeModel
from jobpaths import receive_files

from ct2pet_node.config import Destination, load_config
from ct2pet_node.domain.jobs import Job, JobState
from ct2pet_node.domain.request import TranslationRequest
from ct2pet_node.domain.uids import SeriesUid, StudyUid
from ct2pet_node.routing.delivery import InstanceResult
from ct2pet_node.service.checkpoints import checkpointed_slices
from ct2pet_node.service.metrics import NodeMetrics
from ct2pet_node.service.progress import JobProgress, ProgressBoard, iso_utc, job_progress
from ct2pet_node.service.queue import InProcessQueue
from ct2pet_node.service.sender import Sender
from ct2pet_node.service.worker import EngineWorker
from ct2pet_node.spool.jobstore import JobStore
from ct2pet_node.spool.outbox import Outbox

NULLS = {
    "instances_received": None,
    "seconds_to_quiet": None,
    "seconds_to_settle": None,
    "slices_done": None,
    "slices_total": None,
    "estimated_finish": None,
    "instances_sent": None,
    "instances_total": None,
}


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _job(state: JobState, n_instances: int = 7, last_instance_at: float = 100.0) -> Job:
    return Job(
        id=3,
        study_uid=StudyUid("1.2.3"),
        series_uid=SeriesUid("1.2.3.4"),
        state=state,
        reason=None,
        n_instances=n_instances,
        output_series_uids=(),
        created_at=90.0,
        updated_at=last_instance_at,
        last_instance_at=last_instance_at,
    )


def test_a_series_being_received_shows_instances_so_far_and_seconds_to_quiet() -> None:
    progress = job_progress(_job(JobState.RECEIVED), now=112.0, quiet_seconds=30.0)
    assert progress.to_json() == NULLS | {
        "phase": "receiving",
        "instances_received": 7,
        "seconds_to_quiet": 18.0,
    }
    assert progress.describe() == "receiving: 7 instances so far, quiet rule completes it in 18 s"
    overdue = job_progress(_job(JobState.RECEIVED), now=200.0, quiet_seconds=30.0)
    assert overdue.seconds_to_quiet == 0.0


def test_a_released_series_shows_when_it_settles_from_the_router_or_the_running_node() -> None:
    board = ProgressBoard()
    board.settling({3: 114.5})
    progress = job_progress(_job(JobState.RECEIVED), 112.0, 30.0, settles_at=board.settles_at(3))
    assert progress.to_json() == NULLS | {
        "phase": "receiving",
        "instances_received": 7,
        "seconds_to_quiet": 18.0,
        "seconds_to_settle": 2.5,
    }
    assert progress.describe() == (
        "receiving: 7 instances so far, association released: completes in 2 s unless more arrives"
    )
    # ``jobs show`` reads the running node's value: the store knows nothing of releases.
    asked = job_progress(_job(JobState.RECEIVED), 112.0, 30.0, live=progress)
    assert asked.seconds_to_settle == 2.5
    board.settling({})
    assert board.settles_at(3) is None


def test_the_store_fallback_gives_checkpoints_and_outbox_counts_and_null_for_the_unknown() -> None:
    processing = job_progress(_job(JobState.PROCESSING), 0.0, 30.0, checkpointed_slices=32)
    assert processing.to_json() == NULLS | {"phase": "translating", "slices_done": 32}
    assert processing.describe() == "translating: 32 of ? slices"
    sending = job_progress(_job(JobState.SENDING), 0.0, 30.0, deliveries=[(3, 10), (10, 10)])
    assert sending.to_json() == NULLS | {"phase": "delivering", "instances_sent": 13, "instances_total": 20}
    assert job_progress(_job(JobState.WAITING), 0.0, 30.0).to_json() == NULLS | {"phase": None}
    assert job_progress(_job(JobState.DONE), 0.0, 30.0, deliveries=[(10, 10)]).phase is None
    live = JobProgress("translating", slices_done=5, slices_total=9)
    assert job_progress(_job(JobState.PROCESSING), 0.0, 30.0, live=live, checkpointed_slices=4) == live


def test_translation_progress_estimates_the_finish_from_the_slices_translated_only() -> None:
    clock = Clock(1_000.0)
    board = ProgressBoard(clock)
    board.translation_started(3, 100)
    assert board.get(3) == JobProgress("translating", slices_done=0, slices_total=100)
    clock.now += 5.0
    board.slices_done(3, 40, translated=False)  # read back from checkpoints: no rate yet
    assert board.get(3) == JobProgress("translating", slices_done=40, slices_total=100)
    clock.now += 10.0
    board.slices_done(3, 50.5)  # 10.5 slices in 10 s; 49.5 to go
    assert board.get(3) == JobProgress(
        "translating", slices_done=50, slices_total=100, estimated_finish=iso_utc(1_015.0 + 49.5 * 10 / 10.5)
    )
    assert iso_utc(0.0) == "1970-01-01T00:00:00Z"
    board.translation_ended(3)
    assert board.get(3) is None


def test_delivery_progress_counts_the_instances_acknowledged_during_the_attempt() -> None:
    board = ProgressBoard()
    board.instance_sent()  # nothing in flight: ignored
    board.delivery_started(4, sent=2, total=10)
    for _ in range(3):
        board.instance_sent()
    assert board.get(4) == JobProgress("delivering", instances_sent=5, instances_total=10)
    board.delivery_ended(4)
    assert board.get(4) is None


class ReportingTranslator(FakeModel):
    """Reports half of each chunk's work, then looks at the board as status would."""

    def __init__(self, board: ProgressBoard) -> None:
        self.board = board
        self.seen: list[JobProgress | None] = []

    def translate_region(self, hu: np.ndarray, **request: Unpack[TranslationRequest]) -> np.ndarray:
        progress = request.get("progress")
        assert progress is not None
        progress(hu.shape[0], 2 * hu.shape[0])
        self.seen.append(self.board.get(1))
        return np.clip((hu + 1000.0) / 2000.0, 0.0, 1.0).astype(np.float32)


def test_the_engine_worker_shows_slices_done_of_total_while_it_translates(tmp_path: Path) -> None:
    config = load_config()
    config = dataclasses.replace(
        config,
        node=dataclasses.replace(config.node, data_dir=tmp_path / "data", min_free_mb=0),
        engine=dataclasses.replace(config.engine, steps=3, device="cpu"),
        routing=dataclasses.replace(config.routing, min_slices=5),
    )
    board = ProgressBoard()
    translator = ReportingTranslator(board)
    with JobStore.open(tmp_path / "data") as store:
        job_id = receive_files(store, make_ct_series(tmp_path / "ct", n=10, rows=32, cols=32))
        worker = EngineWorker(
            config,
            store,
            InProcessQueue(),
            translator,
            lambda *_: False,
            NodeMetrics(),
            chunk_slices=4,
            progress=board,
        )
        assert worker.process(job_id) is JobState.DONE
    # Half of chunk 0..4, of 4..8 and of 8..10, as slices of the whole series.
    assert [(p.phase, p.slices_done, p.slices_total) for p in translator.seen if p] == [
        ("translating", 2, 10),
        ("translating", 6, 10),
        ("translating", 9, 10),
    ]
    assert len(translator.seen) == 3
    assert board.get(job_id) is None  # finished: the store tells the rest


def test_checkpointed_slices_are_counted_from_the_chunk_file_names(tmp_path: Path) -> None:
    work = tmp_path / "work" / "7"
    work.mkdir(parents=True)
    for name in ("abc-00000-00016.npy", "abc-00016-00032.npy", "abc-00032-00040.npy.tmp", "notes.txt"):
        (work / name).write_bytes(b"")
    assert checkpointed_slices(tmp_path / "work", 7) == 32
    assert checkpointed_slices(tmp_path / "work", 8) == 0


def test_the_sender_shows_instances_sent_of_total_during_an_attempt(tmp_path: Path) -> None:
    pacs = Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=4242)
    board = ProgressBoard()
    seen: list[JobProgress | None] = []

    def send(
        destination: Destination, calling_ae: str, paths: Sequence[Path], cancel: threading.Event
    ) -> list[InstanceResult]:
        results = []
        for path in paths:
            results.append(InstanceResult(path, path.stem, 0x0000, None))
            board.instance_sent()  # as scu_sender's on_result does for an acknowledged instance
            seen.append(board.get(5))
        return results

    files = []
    for index in range(3):
        files.append(tmp_path / f"r{index}.dcm")
        files[-1].write_bytes(b"x")
    outbox = Outbox.open(tmp_path / "data")
    try:
        sender = Sender(outbox, [pacs], "CT2PET", send=send, progress=board)
        sender.submit(5, files)
        assert sender.run_once() == 1
    finally:
        outbox.close()
    assert [(p.instances_sent, p.instances_total) for p in seen if p] == [(1, 3), (2, 3), (3, 3)]
    assert board.get(5) is None
