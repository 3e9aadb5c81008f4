"""A started node applies retention on its own, and tells of data_dir's free space in status and /metrics."""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path

import numpy as np
from fakes import FakeModel
from jobpaths import move_to

from ct2pet_node import app
from ct2pet_node.config import Config, load_config
from ct2pet_node.domain.jobs import JobState
from ct2pet_node.domain.records import InstanceRecord
from ct2pet_node.domain.uids import AeTitle, SeriesUid, SopInstanceUid, StudyUid, Uid
from ct2pet_node.service.admin import fetch_status
from ct2pet_node.spool.atomic import free_bytes


class FakeTranslator(FakeModel):
    device = "cpu"

    def translate_region(self, hu: np.ndarray, **_: object) -> np.ndarray:
        return np.zeros(hu.shape, dtype=np.float32)


def _config(data_dir: Path, **retention: object) -> Config:
    config = load_config()
    return dataclasses.replace(
        config,
        node=dataclasses.replace(config.node, data_dir=data_dir, host="127.0.0.1", port=0, min_free_mb=0),
        admin=dataclasses.replace(config.admin, listen_host="127.0.0.1", listen_port=0),
        retention=dataclasses.replace(config.retention, **retention),
    )


def test_a_started_node_purges_a_refused_series_on_its_own(tmp_path: Path) -> None:
    # A pass every 50 ms, so the test sees both the pass at start and a later one.
    server = app.build_server(
        _config(tmp_path / "data", refused_days=0, interval_minutes=0.05 / 60), translator=FakeTranslator()
    )
    store = server.components.store
    spool = server.config.node.data_dir / "spool" / "1.2" / "1.2.3"

    def refused_series(series: str) -> Path:
        path = spool.parent / series / f"{series}.1.dcm"
        path.parent.mkdir(parents=True)
        path.write_bytes(b"\0" * 100)
        store.record_instance(
            InstanceRecord(
                sop_instance_uid=SopInstanceUid(f"{series}.1"),
                sop_class_uid=Uid("1.2.840.10008.5.1.4.1.1.2"),
                series_uid=SeriesUid(series),
                study_uid=StudyUid("1.2"),
                modality="CT",
                transfer_syntax_uid=Uid("1.2.840.10008.1.2.1"),
                calling_ae_title=AeTitle("SCANNER"),
                path=path,
                received_at=time.time(),
            )
        )
        job = store.job_for_series(series)
        assert job is not None
        move_to(store, job.id, JobState.REFUSED, "too few slices")
        return path

    try:
        before_start = refused_series("1.2.3")
        server.start()
        _wait_for(lambda: not before_start.exists())
        while_running = refused_series("1.2.4")
        _wait_for(lambda: not while_running.exists())
        # The file goes first, then the job's note says so: wait for the note, not just the file.
        _wait_for(lambda: (job := store.job_for_series("1.2.4")) is not None and bool(job.details.purged))
        job = store.job_for_series("1.2.4")
        assert job is not None and job.state is JobState.REFUSED
    finally:
        server.stop()


def test_status_warns_before_the_watermark_and_metrics_export_free_space(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    free_mb = free_bytes(tmp_path) / 2**20
    # A warning level above what this disk has free: status must warn; the watermark (0) is not reached.
    server = app.build_server(
        _config(data_dir, warn_free_mb=int(free_mb) + 10_000), translator=FakeTranslator()
    )
    try:
        server.start()
        host, port = server.components.admin.address
        disk = fetch_status(host, port, "")["disk"]
        assert disk["min_free_mb"] == 0 and disk["warn_free_mb"] == int(free_mb) + 10_000
        assert abs(disk["data_dir_free_mb"] - free_mb) < 1024
        assert "below [retention] warn_free_mb" in disk["warning"] and "0xA700" in disk["warning"]
        text = server.components.metrics.render().decode()
        found = re.search(r"^ct2pet_data_dir_free_bytes (\S+)$", text, re.MULTILINE)
        assert found is not None and abs(float(found.group(1)) - free_bytes(data_dir)) < 2**30
        assert "ct2pet_data_dir_min_free_bytes 0.0" in text
    finally:
        server.stop()


def _wait_for(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.02)
    raise AssertionError("the node did not act in time")
