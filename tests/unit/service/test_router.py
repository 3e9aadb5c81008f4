"""The router: completion, qualification, refusal reasons, force, recovery, its thread."""

from __future__ import annotations

import time
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from ct2pet_node.config import RoutingConfig
from ct2pet_node.domain.jobs import JobState
from ct2pet_node.domain.records import AssociationReleased, InstanceRecord
from ct2pet_node.domain.uids import AeTitle, SeriesUid, SopInstanceUid, StudyUid, Uid
from ct2pet_node.service.progress import ProgressBoard
from ct2pet_node.service.queue import InProcessQueue
from ct2pet_node.service.recovery import recover_jobs
from ct2pet_node.service.router import Router
from ct2pet_node.spool.instances import InstanceSpool
from ct2pet_node.spool.jobstore import JobStore
from ct2pet_node.spool.outbox import Outbox

STUDY = "1.2.826.0.1.3680043.10.1"
SERIES = "1.2.826.0.1.3680043.10.1.1"
QUIET = 30.0
SETTLE = 3.0
T0 = 1_000_000.0
ROUTING = RoutingConfig(
    series_quiet_seconds=QUIET,
    min_slices=4,
    max_gantry_tilt_degrees=0.5,
    slice_spacing_tolerance_mm=0.05,
    settle_after_release_seconds=SETTLE,
)


def ct_slice_bytes(index: int, series: str = SERIES) -> bytes:
    """A tiny, valid axial CT slice (8x8) at z = 2.5 * index mm, Part 10 encoded."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = f"{series}.{index}"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = f"{series}.{index}"
    ds.StudyInstanceUID = STUDY
    ds.SeriesInstanceUID = series
    ds.FrameOfReferenceUID = f"{STUDY}.9"
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstanceNumber = index + 1
    ds.ImagePositionPatient = [-10.0, -10.0, 2.5 * index]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [2.5, 2.5]
    ds.SliceThickness = 2.5
    ds.KVP = 120
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.PixelData = np.full((8, 8), index, dtype=np.int16).tobytes()
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


class Node:
    """A spool, a store, a queue and a router on one data directory, driven without threads."""

    def __init__(self, data_dir: Path) -> None:
        self.spool = InstanceSpool(data_dir, min_free_mb=0)
        self.store = JobStore.open(data_dir)
        self.queue = InProcessQueue()
        self.progress = ProgressBoard()
        self.router = Router(self.store, self.queue, ROUTING, tick_seconds=0.05, progress=self.progress)

    def receive(self, index: int, at: float, content: bytes | None = None, notify: bool = True) -> None:
        sop = f"{SERIES}.{index}"
        data = ct_slice_bytes(index) if content is None else content
        path = self.spool.store(STUDY, SERIES, sop, [data], len(data))
        record = InstanceRecord(
            sop_instance_uid=SopInstanceUid(sop),
            sop_class_uid=Uid(CTImageStorage),
            series_uid=SeriesUid(SERIES),
            study_uid=StudyUid(STUDY),
            modality="CT",
            transfer_syntax_uid=Uid(ExplicitVRLittleEndian),
            calling_ae_title=AeTitle("SCANNER"),
            path=path,
            received_at=at,
        )
        assert self.store.record_instance(record)
        if notify:
            self.router.notify(record)

    def release(self, indices: range | list[int], at: float) -> None:
        """The association that stored ``indices`` is released cleanly at ``at``."""
        sops = frozenset(SopInstanceUid(f"{SERIES}.{index}") for index in indices)
        self.router.notify_released(AssociationReleased(AeTitle("SCANNER"), at, {SeriesUid(SERIES): sops}))

    def job(self):
        job = self.store.job_for_series(SERIES)
        assert job is not None
        return job


@pytest.fixture
def node(tmp_path: Path):
    made = Node(tmp_path / "data")
    yield made
    made.store.close()


def test_series_completes_after_the_quiet_period(node: Node) -> None:
    for index in range(6):
        node.receive(index, T0 + index)
    node.router.drain()
    node.router.tick(T0 + 5 + QUIET - 1)
    assert node.job().state is JobState.RECEIVED
    assert node.queue.depth() == 0
    node.router.tick(T0 + 5 + QUIET)
    job = node.job()
    assert job.state is JobState.WAITING and job.reason is None
    assert (job.details.completed_because or "").startswith("quiet for")
    assert node.queue.get(0) == job.id


def test_too_few_slices_is_refused_with_a_reason(node: Node) -> None:
    for index in range(3):
        node.receive(index, T0)
    node.router.drain()
    node.router.tick(T0 + QUIET)
    job = node.job()
    assert job.state is JobState.REFUSED
    assert "3 slice(s), at least 4" in (job.reason or "")
    assert node.queue.depth() == 0


def test_unreadable_instance_refuses_the_series_naming_it(node: Node) -> None:
    for index in range(5):
        node.receive(index, T0)
    node.receive(5, T0, content=b"\x00" * 128 + b"DICM" + b"garbage")
    node.router.drain()
    node.router.tick(T0 + QUIET)
    job = node.job()
    assert job.state is JobState.REFUSED
    assert (job.reason or "").startswith(f"instance {SERIES}.5 unreadable: ")
    assert set(node.store.instance_problems(SERIES)) == {f"{SERIES}.5"}


def test_force_completes_before_the_quiet_period(node: Node) -> None:
    for index in range(5):
        node.receive(index, T0)
    node.router.drain()
    node.router.tick(T0 + 1)
    assert node.job().state is JobState.RECEIVED
    node.store.request_force(SERIES)
    node.router.tick(T0 + 1)
    job = node.job()
    assert job.state is JobState.WAITING
    assert job.details.completed_because == "forced by operator"


def test_a_missed_notification_is_read_from_the_store(node: Node) -> None:
    for index in range(5):
        node.receive(index, T0, notify=index != 2)
    node.router.drain()
    node.router.tick(T0 + QUIET)
    job = node.job()
    assert job.state is JobState.WAITING and job.n_instances == 5


def test_late_instance_reopens_a_waiting_job_which_completes_again(node: Node) -> None:
    for index in range(5):
        node.receive(index, T0)
    node.router.tick(T0 + QUIET)
    first = node.job()
    assert first.state is JobState.WAITING
    node.receive(5, T0 + 100)
    assert node.job().state is JobState.RECEIVED
    assert node.store.claim(first.id) is None  # the engine skips the stale queue entry
    node.router.drain()
    node.router.tick(T0 + 100 + QUIET)
    again = node.job()
    assert again.id == first.id and again.state is JobState.WAITING and again.n_instances == 6


def test_recovery_after_a_crash(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    before = Node(data_dir)
    for index in range(5):
        before.receive(index, T0, notify=False)
    before.store.close()  # "killed": the router never saw these instances

    after = Node(data_dir)
    after.router.recover()
    after.router.tick(T0 + QUIET)
    job = after.job()
    assert job.state is JobState.WAITING
    assert after.queue.get(0) == job.id
    claimed = after.store.claim(job.id)
    assert claimed is not None and claimed.state is JobState.PROCESSING
    after.store.close()

    # Killed mid-engine: start-up recovery puts PROCESSING back to WAITING, the router queues it.
    again = Node(data_dir)
    outbox = Outbox.open(data_dir)
    recover_jobs(again.store, outbox, lambda job_id, paths: False, destinations_configured=False)
    outbox.close()
    again.router.recover()
    job = again.job()
    assert job.state is JobState.WAITING and job.details.recovered_from is JobState.PROCESSING
    assert again.queue.get(0) == job.id
    again.store.close()


def test_a_full_engine_queue_defers_without_losing_the_job(node: Node) -> None:
    node.router = Router(node.store, InProcessQueue(capacity=1), ROUTING)
    node.router._queue.put(999)  # type: ignore[attr-defined]
    for index in range(5):
        node.receive(index, T0)
    node.router.tick(T0 + QUIET)
    job = node.job()
    assert job.state is JobState.WAITING
    assert node.router._queue.get(0) == 999  # type: ignore[attr-defined]
    node.router.tick(T0 + QUIET + 1)
    assert node.router._queue.get(0) == job.id  # type: ignore[attr-defined]


def test_router_thread_routes_and_stops(node: Node) -> None:
    fast = RoutingConfig(
        series_quiet_seconds=0.2, min_slices=4, max_gantry_tilt_degrees=0.5, slice_spacing_tolerance_mm=0.05
    )
    node.router = Router(node.store, node.queue, fast, tick_seconds=0.05)
    node.router.start()
    try:
        for index in range(5):
            node.receive(index, time.time())
        job_id = node.queue.get(timeout=10)
    finally:
        node.router.stop(timeout=5)
    assert job_id == node.job().id
    assert node.job().state is JobState.WAITING


# The settle rule ([routing] settle_after_release_seconds) ------------------------------------


def test_a_series_one_association_brought_completes_after_the_settle_time(node: Node) -> None:
    for index in range(6):
        node.receive(index, T0 + index * 0.01)
    node.release(range(6), T0 + 1)
    node.router.drain()
    node.router.tick(T0 + 1 + SETTLE - 0.5)
    assert node.job().state is JobState.RECEIVED
    assert node.progress.settles_at(node.job().id) == T0 + 1 + SETTLE
    node.router.tick(T0 + 1 + SETTLE)
    job = node.job()
    assert job.state is JobState.WAITING
    assert job.details.completed_because == (
        "settled 3 s after its association was released: 6 slices on a 2.50 mm grid, no gap"
    )
    assert node.queue.get(0) == job.id
    assert node.progress.settles_at(job.id) is None


def test_a_sender_with_one_association_per_instance_still_waits_for_quiet(node: Node) -> None:
    for index in range(6):
        node.receive(index, T0 + index)
        node.release([index], T0 + index + 0.1)
        node.router.drain()
        node.router.tick(T0 + index + 0.5)
    node.router.tick(T0 + 5 + SETTLE + 5)
    assert node.job().state is JobState.RECEIVED
    assert node.progress.settles_at(node.job().id) is None
    node.router.tick(T0 + 5 + QUIET)
    job = node.job()
    assert job.state is JobState.WAITING
    assert (job.details.completed_because or "").startswith("quiet for")


def test_a_released_series_with_a_gap_still_waits_for_quiet(node: Node) -> None:
    sent = [0, 1, 2, 4, 5, 6]  # slice 3 missing
    for index in sent:
        node.receive(index, T0)
    node.release(sent, T0 + 1)
    node.router.drain()
    node.router.tick(T0 + 1 + SETTLE + 5)
    assert node.job().state is JobState.RECEIVED
    node.router.tick(T0 + QUIET)
    assert (node.job().details.completed_because or "").startswith("quiet for")


def test_more_of_the_series_in_another_association_during_the_settle_time_turns_the_rule_off(
    node: Node,
) -> None:
    for index in range(5):
        node.receive(index, T0)
    node.release(range(5), T0 + 1)
    node.router.drain()
    node.router.tick(T0 + 1.5)
    node.receive(5, T0 + 2)  # a second association, not released yet
    node.router.drain()
    node.router.tick(T0 + 1 + SETTLE)
    assert node.job().state is JobState.RECEIVED
    node.release([5], T0 + 2.5)  # its release does not bring the rule back: slices 0-4 came before it
    node.router.drain()
    node.router.tick(T0 + 2.5 + SETTLE)
    assert node.job().state is JobState.RECEIVED
    node.router.tick(T0 + 2 + QUIET)
    assert (node.job().details.completed_because or "").startswith("quiet for")


def test_a_release_is_not_remembered_across_a_restart(node: Node) -> None:
    for index in range(6):
        node.receive(index, T0)
    node.release(range(6), T0 + 1)
    node.router.drain()
    node.router = Router(node.store, node.queue, ROUTING, progress=node.progress)
    node.router.recover()
    node.router.tick(T0 + 1 + SETTLE)
    assert node.job().state is JobState.RECEIVED
