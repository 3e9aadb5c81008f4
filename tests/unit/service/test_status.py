"""The status report: built from a node's parts, and its JSON read back as the CLI does."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fakes import FakeModel
from jobpaths import move_to

from ct2pet_node.config import Config, Destination, DicomwebEndpoint, load_config
from ct2pet_node.domain.cluster import ActorActivity, ClusterSnapshot
from ct2pet_node.domain.jobs import JobState
from ct2pet_node.domain.records import InstanceRecord
from ct2pet_node.domain.uids import AeTitle, SeriesUid, SopInstanceUid, StudyUid, Uid
from ct2pet_node.routing.delivery import AttemptDecision, EntryState
from ct2pet_node.service.metrics import NodeMetrics
from ct2pet_node.service.queue import InProcessQueue
from ct2pet_node.service.recent_errors import RecentErrors
from ct2pet_node.service.status import StatusReport, StatusSources, build_status
from ct2pet_node.service.worker import EngineWorker
from ct2pet_node.spool.jobstore import JobStore
from ct2pet_node.spool.outbox import Outbox

NOW = 1_800_000_000.0
PACS = Destination("pacs", "PACS", "10.0.0.5", 104)
# A DICOMweb destination is reported like a DIMSE one, by its URL without the credentials in it.
ARCHIVE = Destination(
    "archive", type="dicomweb", dicomweb=DicomwebEndpoint(url="https://user:pw@archive.example/dicom-web")
)


class Translator(FakeModel):
    def translate_region(self, hu: np.ndarray, **_: object) -> np.ndarray:
        return np.zeros(hu.shape, dtype=np.float32)


@pytest.fixture
def sources(tmp_path: Path) -> Iterator[StatusSources]:
    loaded = load_config()
    config: Config = dataclasses.replace(
        loaded, node=dataclasses.replace(loaded.node, data_dir=tmp_path), destinations=(PACS, ARCHIVE)
    )
    store, outbox = JobStore.open(tmp_path), Outbox.open(tmp_path)
    worker = EngineWorker(
        config, store, InProcessQueue(), Translator(), lambda job, paths: True, NodeMetrics()
    )
    yield StatusSources(config, store, outbox, worker, RecentErrors(), started_at=NOW - 600, pid=42)
    outbox.close()
    store.close()


def _job(store: JobStore, series: str, state: JobState) -> int:
    store.record_instance(
        InstanceRecord(
            sop_instance_uid=SopInstanceUid(f"{series}.1"),
            sop_class_uid=Uid("1.2.840.10008.5.1.4.1.1.2"),
            series_uid=SeriesUid(series),
            study_uid=StudyUid("1.2.3"),
            modality="CT",
            transfer_syntax_uid=Uid("1.2.840.10008.1.2.1"),
            calling_ae_title=AeTitle("SCANNER"),
            path=Path(f"/spool/{series}.dcm"),
            received_at=1.0,
        )
    )
    job = store.job_for_series(series)
    assert job is not None
    return move_to(store, job.id, state).id


def test_the_report_reads_jobs_deliveries_and_errors(sources: StatusSources) -> None:
    waiting = _job(sources.store, "1.1", JobState.WAITING)
    failed = _job(sources.store, "1.2", JobState.FAILED)
    sources.outbox.enqueue(failed, "pacs", [Path("/results/a.dcm")], NOW)
    sources.outbox.mark_results(failed, "pacs", [], AttemptDecision(EntryState.DEAD, 3, None, "refused"), NOW)
    sources.errors.handle(
        logging.LogRecord("x", logging.ERROR, "", 0, {"event": "send_failed", "job_id": 2}, None, None)
    )

    report = build_status(sources, NOW)

    assert (report.pid, report.uptime_seconds, report.current_job) == (42, 600.0, None)
    assert (report.model.id, report.model.steps, report.model.device) == ("fake-model", 3, "unknown")
    assert dict(report.jobs) == {
        state.value: int(state in (JobState.WAITING, JobState.FAILED)) for state in JobState
    }
    assert report.oldest_waiting is not None and report.oldest_waiting.id == waiting
    pacs, archive = report.destinations
    assert (pacs.name, pacs.address, pacs.dead) == ("pacs", "PACS@10.0.0.5:104", 1)
    assert (archive.name, archive.dead, archive.last_result) == ("archive", 0, None)
    assert (pacs.type, archive.type, archive.address) == (
        "dimse",
        "dicomweb",
        "https://archive.example/dicom-web",
    )
    assert [(d.job_id, d.destination, d.last_error) for d in report.dead_letters] == [
        (failed, "pacs", "refused")
    ]
    assert [(e.event, e.field("job_id")) for e in report.last_errors] == [("send_failed", "2")]


def test_the_json_keeps_its_field_names_and_reads_back(sources: StatusSources) -> None:
    _job(sources.store, "1.1", JobState.WAITING)
    report = build_status(sources, NOW)
    encoded = report.to_json()
    assert list(encoded) == [
        "version",
        "pid",
        "started_at",
        "uptime_seconds",
        "ae_title",
        "port",
        "model",
        "queues",
        "current_job",
        "jobs",
        "oldest_waiting",
        "destinations",
        "dead_letters",
        "last_errors",
        "listener",
        "disk",
        "active_jobs",
        "recent_fetches",
    ]
    assert set(encoded["disk"]) == {"data_dir_free_mb", "min_free_mb", "warn_free_mb", "warning"}
    assert set(encoded["model"]) == {"id", "output_units", "device", "steps", "eta"}
    assert encoded["queues"] == {"engine": 0, "outbox_due": 0}
    assert set(encoded["oldest_waiting"]) == {"id", "series_uid", "since"}
    assert StatusReport.from_json(encoded) == report
    # What a newer node may add is ignored rather than refused.
    assert StatusReport.from_json({**encoded, "dashboard": {}}) == report


class ClusterTranslator(Translator):
    """A translator on a cluster of two actors, as ct2pet_node.cluster's would report it."""

    def __init__(self) -> None:
        self.asked_at: list[float] = []

    def cluster_snapshot(self, now: float) -> ClusterSnapshot:
        self.asked_at.append(now)
        return ClusterSnapshot(
            "head:6379",
            "ready",
            (
                ActorActivity("actor-0", "gpu-a", "cuda:0", chunks_in_flight=1, slices_per_second=2.5),
                ActorActivity("actor-1", "gpu-b", "cuda:0", slices_per_second=1.5, slices_done=32),
            ),
            chunk_retries=3,
        )


def test_a_cluster_engine_reports_its_actors_in_the_json(sources: StatusSources) -> None:
    translator = ClusterTranslator()
    worker = EngineWorker(
        sources.config, sources.store, InProcessQueue(), translator, lambda *_: True, NodeMetrics()
    )
    report = build_status(dataclasses.replace(sources, worker=worker), NOW)
    assert translator.asked_at == [NOW]
    cluster = report.to_json()["cluster"]
    assert [(a["name"], a["host"], a["device"]) for a in cluster["actors"]] == [
        ("actor-0", "gpu-a", "cuda:0"),
        ("actor-1", "gpu-b", "cuda:0"),
    ]
    assert cluster["chunks_in_flight"] == 1 and cluster["chunk_retries"] == 3
    assert cluster["slices_per_second"] == 4.0
    assert StatusReport.from_json(report.to_json()) == report


def test_a_local_engine_has_no_cluster_in_its_json(sources: StatusSources) -> None:
    assert "cluster" not in build_status(sources, NOW).to_json()
