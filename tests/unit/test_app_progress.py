"""Progress and rejections of a started node, as ``status`` and ``jobs show`` report them."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fakes import FakeModel
from jobpaths import move_to

from ct2pet_node import app
from ct2pet_node.cli import main
from ct2pet_node.config import Config, load_config
from ct2pet_node.domain.jobs import JobState
from ct2pet_node.domain.records import InstanceRecord
from ct2pet_node.domain.uids import AeTitle, SeriesUid, SopInstanceUid, StudyUid, Uid
from ct2pet_node.service.admin import fetch_status
from ct2pet_node.service.server import Server
from ct2pet_node.service.status import StatusReport
from ct2pet_node.service.status_text import render_status

pytestmark = pytest.mark.usefixtures("restore_logging")

QUIET = 60.0


class FakeTranslator(FakeModel):
    def translate_region(self, hu: np.ndarray, **_: object) -> np.ndarray:
        return np.zeros(hu.shape, dtype=np.float32)


def _config(data_dir: Path) -> Config:
    config = load_config()
    return dataclasses.replace(
        config,
        node=dataclasses.replace(config.node, data_dir=data_dir, host="127.0.0.1", port=0, min_free_mb=0),
        admin=dataclasses.replace(config.admin, listen_host="127.0.0.1", listen_port=0),
        routing=dataclasses.replace(config.routing, series_quiet_seconds=QUIET),
    )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    built = app.build_server(_config(tmp_path / "data"), translator=FakeTranslator())
    built.start()
    yield built
    built.stop()


def _record(server: Server, series: str, sop: str) -> None:
    server.components.store.record_instance(
        InstanceRecord(
            sop_instance_uid=SopInstanceUid(sop),
            sop_class_uid=Uid("1.2.840.10008.5.1.4.1.1.2"),
            series_uid=SeriesUid(series),
            study_uid=StudyUid("1.2.3"),
            modality="CT",
            transfer_syntax_uid=Uid("1.2.840.10008.1.2.1"),
            calling_ae_title=AeTitle("SCANNER"),
            path=server.config.node.data_dir / f"{sop}.dcm",
            received_at=time.time(),
        )
    )


def _jobs_show(server: Server, tmp_path: Path, job_id: int, *flags: str) -> str:
    host, port = server.components.admin.address
    config = tmp_path / "node.toml"
    config.write_text(
        f"[node]\ndata_dir = {json.dumps(str(server.config.node.data_dir))}\n"
        f'[admin]\nlisten = "{host}:{port}"\n[routing]\nseries_quiet_seconds = {QUIET}\n'
    )
    result = CliRunner().invoke(
        main, ["--log-json", "jobs", "show", str(job_id), *flags, "--config", str(config)]
    )
    assert result.exit_code == 0, result.output
    return result.stdout


def test_status_and_jobs_show_report_receiving_translating_and_delivering(
    server: Server, tmp_path: Path
) -> None:
    for sop in ("1.2.3.4.1", "1.2.3.4.2", "1.2.3.4.3"):
        _record(server, "1.2.3.4", sop)
    _record(server, "1.2.3.5", "1.2.3.5.1")
    _record(server, "1.2.3.6", "1.2.3.6.1")
    store, board = server.components.store, server.components.worker.progress
    move_to(store, 2, JobState.PROCESSING)  # after start: recovery would put it back to WAITING
    board.translation_started(2, 40)
    board.slices_done(2, 10)
    move_to(store, 3, JobState.SENDING)
    board.delivery_started(3, sent=4, total=12)

    host, port = server.components.admin.address
    report = fetch_status(host, port, "")
    listed = {job["id"]: job for job in report["active_jobs"]}
    assert set(listed) == {1, 2, 3}
    receiving = listed[1]["progress"]
    assert (receiving["phase"], receiving["instances_received"]) == ("receiving", 3)
    assert 0 < receiving["seconds_to_quiet"] <= QUIET
    assert receiving["slices_done"] is None and receiving["instances_sent"] is None
    translating = listed[2]["progress"]
    assert (translating["phase"], translating["slices_done"], translating["slices_total"]) == (
        "translating",
        10,
        40,
    )
    assert translating["estimated_finish"].endswith("Z") and translating["instances_received"] is None
    delivering = listed[3]["progress"]
    assert (delivering["phase"], delivering["instances_sent"], delivering["instances_total"]) == (
        "delivering",
        4,
        12,
    )

    text = render_status(StatusReport.from_json(report))
    assert "job 1  receiving: 3 instances so far, quiet rule completes it in" in text
    assert "job 2  translating: 10 of 40 slices, estimated finish 20" in text
    assert "job 3  delivering: 4 of 12 instances sent" in text

    # jobs show asks the running node for what only it knows (the store has no slice counts).
    shown = json.loads(_jobs_show(server, tmp_path, 2, "--json"))
    assert shown["progress"]["slices_done"] == 10 and shown["progress"]["slices_total"] == 40
    assert "progress   delivering: 4 of 12 instances sent" in _jobs_show(server, tmp_path, 3)


def test_jobs_show_falls_back_to_the_store_when_no_node_answers(server: Server, tmp_path: Path) -> None:
    for sop in ("1.2.3.4.1", "1.2.3.4.2"):
        _record(server, "1.2.3.4", sop)
    move_to(server.components.store, 1, JobState.PROCESSING)
    work = server.config.node.data_dir / "work" / "1"
    work.mkdir(parents=True)
    (work / "key-00000-00016.npy").write_bytes(b"")
    server.components.worker.progress.translation_started(1, 40)
    text_config = _jobs_show(server, tmp_path, 1, "--json")  # writes node.toml for the admin port
    assert json.loads(text_config)["progress"]["slices_total"] == 40
    server.components.admin.stop()  # the node's endpoint is gone; the store's facts remain
    shown = json.loads(_jobs_show(server, tmp_path, 1, "--json"))
    assert shown["progress"] == {
        "phase": "translating",
        "instances_received": None,
        "seconds_to_quiet": None,
        "seconds_to_settle": None,
        "slices_done": 16,
        "slices_total": None,
        "estimated_finish": None,
        "instances_sent": None,
        "instances_total": None,
    }
    assert "progress   translating: 16 of ? slices" in _jobs_show(server, tmp_path, 1)


def test_status_lists_the_last_rejections_with_titles_and_peer(server: Server) -> None:
    rejections = server.components.scp._gate.rejections
    rejections.record("tls_required", "CT2PET", "PLAINSCU", "10.1.2.3")
    rejections.record("calling_ae_not_allowed", "CT2PET", "INTRUDER", "10.1.2.4")
    host, port = server.components.admin.address
    report = fetch_status(host, port, "")
    recent = report["listener"]["recent_rejections"]
    assert [(r["reason"], r["called_ae"], r["calling_ae"], r["peer"]) for r in recent] == [
        ("tls_required", "CT2PET", "PLAINSCU", "10.1.2.3"),
        ("calling_ae_not_allowed", "CT2PET", "INTRUDER", "10.1.2.4"),
    ]
    text = render_status(StatusReport.from_json(report), now=recent[-1]["time"] + 3)
    assert "rejected   3 s ago  tls_required: PLAINSCU -> CT2PET from 10.1.2.3" in text
    assert "rejected   3 s ago  calling_ae_not_allowed: INTRUDER -> CT2PET from 10.1.2.4" in text
