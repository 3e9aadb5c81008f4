"""The composition root in-process: what it builds and wires, started and stopped by its Server."""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from ctfactory import make_ct_series
from fakes import FakeModel
from jobpaths import move_to
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from ct2pet_node import app
from ct2pet_node.config import Config, Destination, load_config
from ct2pet_node.domain.jobs import JobDetails, JobState
from ct2pet_node.domain.records import InstanceRecord
from ct2pet_node.domain.uids import AeTitle, SeriesUid, SopInstanceUid, StudyUid, Uid
from ct2pet_node.errors import WeightsError
from ct2pet_node.service.admin import fetch_status
from ct2pet_node.service.server import Server


class FakeTranslator(FakeModel):
    device = "cpu"

    def translate_region(self, hu: np.ndarray, **_: object) -> np.ndarray:
        return np.zeros(hu.shape, dtype=np.float32)


def _config(data_dir: Path, destinations: Sequence[Destination] = ()) -> Config:
    config = load_config()
    return dataclasses.replace(
        config,
        # Port 0: any free port (the SCP and the admin endpoint both bind it), so tests never clash.
        node=dataclasses.replace(config.node, data_dir=data_dir, host="127.0.0.1", port=0, min_free_mb=0),
        admin=dataclasses.replace(config.admin, listen_host="127.0.0.1", listen_port=0),
        destinations=tuple(destinations),
    )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    built = app.build_server(_config(tmp_path / "data"), translator=FakeTranslator())
    yield built
    built.stop()


def _record(server: Server, sop: str) -> None:
    server.components.store.record_instance(
        InstanceRecord(
            sop_instance_uid=SopInstanceUid(sop),
            sop_class_uid=Uid("1.2.840.10008.5.1.4.1.1.2"),
            series_uid=SeriesUid("1.2.3.4"),
            study_uid=StudyUid("1.2.3"),
            modality="CT",
            transfer_syntax_uid=Uid("1.2.840.10008.1.2.1"),
            calling_ae_title=AeTitle("SCANNER"),
            path=server.config.node.data_dir / f"{sop}.dcm",
            received_at=time.time(),
        )
    )


STATUS_FIELDS = {
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
}


def test_a_started_node_answers_status_and_stops_cleanly(server: Server) -> None:
    handlers_before = len(logging.getLogger().handlers)
    server.start()
    host, port = server.components.admin.address
    report = fetch_status(host, port, "")
    assert set(report) == STATUS_FIELDS
    assert report["model"] == {
        "id": "fake-model",
        "output_units": "relative",
        "device": "cpu",
        "steps": 3,
        "eta": 1.0,
    }
    assert report["jobs"] == {state.value: 0 for state in JobState}
    assert report["queues"] == {"engine": 0, "outbox_due": 0}
    assert report["destinations"] == [] and report["oldest_waiting"] is None
    logging.getLogger("ct2pet_node.test").warning("something_odd")
    assert [e["event"] for e in fetch_status(host, port, "")["last_errors"]] == ["something_odd"]
    server.stop()
    assert len(logging.getLogger().handlers) == handlers_before  # the recent-errors handler is gone
    assert not any(t.name in ("engine", "router", "sender", "admin") for t in threading.enumerate())


def test_job_moves_and_stored_state_reach_the_metrics(server: Server) -> None:
    _record(server, "1.2.3.4.1")
    _record(server, "1.2.3.4.2")
    move_to(server.components.store, 1, JobState.WAITING)
    move_to(server.components.store, 1, JobState.REFUSED, "too few slices")
    text = server.components.metrics.render().decode()
    assert "ct2pet_series_completed_total 1.0" in text and "ct2pet_series_refused_total 1.0" in text
    assert 'ct2pet_jobs{state="refused"} 1.0' in text and 'ct2pet_jobs{state="done"} 0.0' in text
    assert 'ct2pet_queue_depth{queue="engine"} 0.0' in text


@pytest.mark.parametrize(
    ("with_files", "expected", "reason_part"),
    [(True, JobState.DONE, None), (False, JobState.FAILED, "results missing after restart")],
)
def test_a_job_left_sending_without_outbox_entry_is_settled_on_start(
    server: Server, with_files: bool, expected: JobState, reason_part: str | None
) -> None:
    _record(server, "1.2.3.4.1")
    results = server.config.node.data_dir / "results" / "1"
    if with_files:
        (results / "pet").mkdir(parents=True)
        (results / "pet" / "x.dcm").write_bytes(b"")
    store = server.components.store
    move_to(store, 1, JobState.SENDING, details=JobDetails(results_dir=results))

    server.start()  # no destination configured: results stay where they are

    job = store.get_job(1)
    assert job is not None and job.state is expected
    if reason_part:
        assert reason_part in (job.reason or "")


def test_missing_weights_say_how_to_get_them(tmp_path: Path) -> None:
    config = _config(tmp_path / "data")
    config = dataclasses.replace(
        config, engine=dataclasses.replace(config.engine, weights=str(tmp_path / "w"))
    )
    with pytest.raises(WeightsError, match="ct2pet-node weights import"):
        app.build_server(config)


def test_engine_fast_path_keys_reach_the_loaded_pipeline(tiny_weights: Path, tmp_path: Path) -> None:
    config = _config(tmp_path / "data")
    engine = dataclasses.replace(
        config.engine,
        weights=str(tiny_weights),
        device="cpu",
        batch_size=3,
        decode_batch_size=1,
        channels_last=True,
    )
    pipeline = app.load_translator(dataclasses.replace(config, engine=engine))
    assert (pipeline.batch_size, pipeline.decode_batch_size) == (3, 1)  # type: ignore[attr-defined]
    assert pipeline.options.channels_last  # type: ignore[attr-defined]
    assert not pipeline.options.cuda_graphs  # type: ignore[attr-defined]
    # eta left open in the config is the model's own, from its manifest (the tiny release's is 0).
    manifest = json.loads((tiny_weights / "manifest.json").read_text())
    assert pipeline.default_eta == manifest["architecture"]["bridge"]["eta"] == 0.0


def test_a_refused_instance_reaches_the_rejected_metric(tmp_path: Path) -> None:
    config = _config(tmp_path / "data")
    full = dataclasses.replace(config, node=dataclasses.replace(config.node, min_free_mb=10**9))
    built = app.build_server(full, translator=FakeTranslator())
    [path] = make_ct_series(tmp_path / "ct", n=1)
    try:
        built.start()
        scu = AE(ae_title="SCANNER")
        scu.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        association = scu.associate("127.0.0.1", built.components.scp.port, ae_title=full.node.ae_title)
        assert association.is_established
        try:
            assert association.send_c_store(path).Status == 0xA700  # the watermark: "out of resources"
        finally:
            association.release()
        # Rendered while the node runs: some values are read from its job store at scrape time.
        text = built.components.metrics.render().decode()
    finally:
        built.stop()
    assert 'ct2pet_instances_rejected_total{status="0xA700"} 1.0' in text


def test_the_listener_counts_reach_status_and_metrics(server: Server) -> None:
    scp, metrics = server.components.scp, server.components.metrics
    scp.intake._ignored["PositronEmissionTomographyImageStorage"] = 3  # what three dropped PET slices leave
    scp._gate.rejections.count("max_associations_per_peer")
    server.start()
    host, port = server.components.admin.address
    listener = fetch_status(host, port, "")["listener"]
    assert listener["instances_ignored"] == {"PositronEmissionTomographyImageStorage": 3}
    assert listener["associations_rejected"] == {"max_associations_per_peer": 1}
    assert (listener["associations_active"], listener["max_associations"]) == (0, 10)
    assert (listener["connections_waiting"], listener["max_waiting_connections"]) == (0, 64)
    text = metrics.render().decode()
    for line in (
        'ct2pet_instances_ignored_total{sop_class="PositronEmissionTomographyImageStorage"} 3.0',
        'ct2pet_associations_rejected_total{reason="max_associations_per_peer"} 1.0',
        "ct2pet_associations_active 0.0",
        "ct2pet_connections_waiting 0.0",
        "# TYPE ct2pet_connections_dropped_total counter",
    ):
        assert line in text
