"""The composition root in-process: wiring, start and stop, metrics, crash reconciliation."""

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
from fakes import FakeModel

from ct2pet_node import app
from ct2pet_node.config import Config, Destination, load_config
from ct2pet_node.domain.jobs import JobState
from ct2pet_node.domain.records import InstanceRecord
from ct2pet_node.domain.uids import AeTitle, SeriesUid, SopInstanceUid, StudyUid, Uid
from ct2pet_node.routing.delivery import InstanceResult, TransferProblem
from ct2pet_node.service.admin import fetch_status
from ct2pet_node.service.metrics import Registry


class FakeTranslator(FakeModel):
    device = "cpu"

    def __call__(self, hu: np.ndarray, **_: object) -> np.ndarray:
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
def node(tmp_path: Path) -> Iterator[app.Node]:
    built = app.build_node(_config(tmp_path / "data"), translator=FakeTranslator())
    yield built
    app.stop(built)


def _record(node: app.Node, sop: str) -> None:
    node.store.record_instance(
        InstanceRecord(
            sop_instance_uid=SopInstanceUid(sop),
            sop_class_uid=Uid("1.2.840.10008.5.1.4.1.1.2"),
            series_uid=SeriesUid("1.2.3.4"),
            study_uid=StudyUid("1.2.3"),
            modality="CT",
            transfer_syntax_uid=Uid("1.2.840.10008.1.2.1"),
            calling_ae_title=AeTitle("SCANNER"),
            path=node.config.node.data_dir / f"{sop}.dcm",
            received_at=time.time(),
        )
    )


def test_a_started_node_answers_status_and_stops_cleanly(node: app.Node) -> None:
    handlers_before = len(logging.getLogger().handlers)
    app.start(node)
    host, port = node.admin.address
    report = fetch_status(host, port, "")
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
    app.stop(node)
    assert len(logging.getLogger().handlers) == handlers_before - 1  # the recent-errors handler is gone
    assert not any(t.name in ("engine", "router", "sender", "admin") for t in threading.enumerate())


def test_series_counters_are_read_from_the_job_store(node: app.Node) -> None:
    _record(node, "1.2.3.4.1")
    _record(node, "1.2.3.4.2")
    assert node.metrics.series_completed.value() == 0
    node.store.set_state(1, JobState.WAITING)
    assert node.metrics.series_completed.value() == 1
    node.store.set_state(1, JobState.REFUSED, "too few slices")
    assert (node.metrics.series_completed.value(), node.metrics.series_refused.value()) == (0, 1)
    assert node.metrics.jobs.value(state="refused") == 1


def test_the_listener_counts_reach_status_and_metrics(node: app.Node) -> None:
    node.scp._ignored["PositronEmissionTomographyImageStorage"] = 3  # what three dropped PET slices leave
    node.scp._gate._count("max_associations_per_peer")
    listener = node.status()["listener"]
    assert listener["instances_ignored"] == {"PositronEmissionTomographyImageStorage": 3}
    assert listener["associations_rejected"] == {"max_associations_per_peer": 1}
    assert (listener["associations_active"], listener["max_associations"]) == (0, 10)
    assert (listener["connections_waiting"], listener["max_waiting_connections"]) == (0, 64)
    assert node.metrics.instances_ignored.value(sop_class="PositronEmissionTomographyImageStorage") == 3
    text = node.metrics.render()
    for line in (
        'ct2pet_instances_ignored_total{sop_class="PositronEmissionTomographyImageStorage"} 3',
        'ct2pet_associations_rejected_total{reason="max_associations_per_peer"} 1',
        "ct2pet_associations_active 0",
        "ct2pet_connections_waiting 0",
        "# TYPE ct2pet_connections_dropped_total counter",
    ):
        assert line in text


def test_the_counting_sender_counts_delivered_instances_and_failed_attempts(tmp_path: Path) -> None:
    metrics = Registry()
    answers: list[list[InstanceResult]] = [
        [
            InstanceResult(tmp_path / "a", "1.1", 0x0000, None),
            InstanceResult(tmp_path / "b", "1.2", 0x0000, None),
        ],
        [
            InstanceResult(tmp_path / "a", "1.1", 0x0000, None),
            InstanceResult(tmp_path / "b", None, None, TransferProblem.ABORTED, "gone"),
        ],
        [InstanceResult(tmp_path / "b", None, None, TransferProblem.CANCELLED, "stopping")],
    ]

    def send(
        destination: Destination, calling_ae: str, paths: Sequence[Path], cancel: threading.Event
    ) -> list[InstanceResult]:
        return answers.pop(0)

    counted = app.counting_sender(send, metrics)
    pacs = Destination("pacs", "PACS", "127.0.0.1", 104)
    for _ in range(3):
        counted(pacs, "CT2PET", [], threading.Event())
    assert metrics.instances_sent.value(destination="pacs") == 3
    assert metrics.send_failures.value(destination="pacs") == 1  # a cancelled batch is not a failure


@pytest.mark.parametrize(
    ("with_files", "expected", "reason_part"),
    [(True, JobState.DONE, None), (False, JobState.FAILED, "results missing after restart")],
)
def test_a_job_left_sending_without_outbox_entry_is_settled_on_start(
    node: app.Node, with_files: bool, expected: JobState, reason_part: str | None
) -> None:
    _record(node, "1.2.3.4.1")
    results = node.config.node.data_dir / "results" / "1"
    if with_files:
        (results / "pet").mkdir(parents=True)
        (results / "pet" / "x.dcm").write_bytes(b"")
    node.store.set_state(1, JobState.SENDING, None, results_dir=str(results))

    app.reconcile_sending(node)  # no destination configured: results stay where they are

    job = node.store.get_job(1)
    assert job is not None and job.state is expected
    if reason_part:
        assert reason_part in (job.reason or "")


def test_missing_weights_say_how_to_get_them(tmp_path: Path) -> None:
    config = _config(tmp_path / "data")
    config = dataclasses.replace(
        config, engine=dataclasses.replace(config.engine, weights=str(tmp_path / "w"))
    )
    with pytest.raises(app.WeightsError, match="ct2pet-node weights import"):
        app.build_node(config)


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
