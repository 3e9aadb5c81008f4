"""The admin endpoint served for real (uvicorn on a loopback port): paths, token, pictures, actions."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from structlog.testing import capture_logs

from ct2pet_node.domain.jobs import Job, JobDetails, JobState
from ct2pet_node.domain.uids import SeriesUid, StudyUid
from ct2pet_node.errors import Ct2PetError
from ct2pet_node.service.admin import fetch_status
from ct2pet_node.service.metrics import NodeMetrics
from ct2pet_node.service.status import StatusReport
from ct2pet_node.web.app import AdminSources
from ct2pet_node.web.pages import NodeFacts
from ct2pet_node.web.server import AdminServer

TOKEN = "s3cret"
REPORT = StatusReport.from_json({"version": "x", "ae_title": "CT2PET", "port": 11112, "jobs": {"done": 1}})


def _job(results: Path) -> Job:
    details = JobDetails(
        results_dir=results,
        sampling="steps 4, eta 0, seed 0",
        phase_seconds=(("translate", 3.0),),
        written_at=2.0,
    )
    return Job(
        1,
        StudyUid("1.2.3"),
        SeriesUid("1.2.3.4"),
        JobState.DONE,
        None,
        12,
        ("1.2.9",),
        1.0,
        3.0,
        1.5,
        details=details,
    )


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[AdminServer, list[int]]]:
    (tmp_path / "preview").mkdir()
    Image.new("RGB", (8, 4)).save(tmp_path / "preview" / "mip.png")
    job = _job(tmp_path)
    metrics = NodeMetrics()
    metrics.instances_received.inc(5)
    asked: list[int] = []

    def rerun(job_id: int) -> str:
        if job_id != 1:
            raise Ct2PetError(f"no job {job_id} to rerun")
        asked.append(job_id)
        return "queued"

    sources = AdminSources(
        status=lambda: REPORT,
        metrics=metrics,
        jobs=lambda: [job],
        job=lambda job_id: job if job_id == 1 else None,
        facts=NodeFacts(tls=False, retention="keeps everything", listen="127.0.0.1:0"),
        token=TOKEN,
        actions={"rerun": rerun},
    )
    server = AdminServer("127.0.0.1", 0, sources)
    server.start()
    yield server, asked
    server.stop()


def _get(server: AdminServer, path: str, auth: str | None = f"Bearer {TOKEN}", method: str = "GET"):
    host, port = server.address
    request = urllib.request.Request(f"http://{host}:{port}{path}", method=method)
    if auth:
        request.add_header("Authorization", auth)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    return opener.open(request, timeout=5)


def _status_of(server: AdminServer, path: str, auth: str | None, method: str = "GET") -> int:
    try:
        with _get(server, path, auth, method) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as error:
        error.close()
        return int(error.code)


def test_status_keeps_its_contract_for_the_cli(served: tuple[AdminServer, list[int]]) -> None:
    server, _ = served
    host, port = server.address
    assert fetch_status(host, port, TOKEN) == REPORT.to_json()
    with pytest.raises(Ct2PetError, match="answered 401"):
        fetch_status(host, port, "wrong")


def test_metrics_keep_their_names_and_health_needs_no_token(served: tuple[AdminServer, list[int]]) -> None:
    server, _ = served
    with _get(server, "/metrics") as reply:
        assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert "ct2pet_instances_received_total 5.0\n" in reply.read().decode()
    with _get(server, "/healthz", auth=None) as reply:
        assert reply.read() == b"ok\n"


@pytest.mark.parametrize("path", ["/", "/status", "/metrics", "/jobs/1", "/jobs/1/preview/mip.png"])
def test_every_path_but_health_needs_the_token(served: tuple[AdminServer, list[int]], path: str) -> None:
    server, _ = served
    assert _status_of(server, path, None) == 401
    assert _status_of(server, path, "Bearer wrong") == 401
    assert _status_of(server, path, "Basic " + base64.b64encode(b"ann:wrong").decode()) == 401
    assert _status_of(server, path, "Basic " + base64.b64encode(f"ann:{TOKEN}".encode()).decode()) == 200
    assert _status_of(server, path, f"Bearer {TOKEN}") == 200


def test_a_browser_is_asked_for_the_token(served: tuple[AdminServer, list[int]]) -> None:
    server, _ = served
    with pytest.raises(urllib.error.HTTPError) as refused:
        _get(server, "/", auth=None)
    refused.value.close()
    assert refused.value.headers["WWW-Authenticate"].startswith("Basic ")


def test_dashboard_lists_the_job_and_its_page_shows_the_preview(
    served: tuple[AdminServer, list[int]],
) -> None:
    server, _ = served
    with _get(server, "/") as reply:
        assert reply.headers["Content-Type"].startswith("text/html")
        html = reply.read().decode()
    assert '<a href="/jobs/1">job 1</a>' in html and "state-done" in html
    assert "<svg" in html and "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    with _get(server, "/jobs/1") as reply:
        page = reply.read().decode()
    assert '<img class="preview" src="/jobs/1/preview/mip.png"' in page and "axial.png" not in page
    assert "1.2.9" in page and "steps 4, eta 0, seed 0" in page
    with _get(server, "/jobs/1/preview/mip.png") as reply:
        assert reply.headers["Content-Type"] == "image/png" and reply.read().startswith(b"\x89PNG")
    assert _status_of(server, "/jobs/1/preview/axial.png", f"Bearer {TOKEN}") == 404
    assert _status_of(server, "/jobs/1/preview/..%2F..%2Fetc%2Fpasswd", f"Bearer {TOKEN}") == 404
    assert _status_of(server, "/jobs/2", f"Bearer {TOKEN}") == 404


def test_actions_need_the_token_and_are_logged_with_who_asked(served: tuple[AdminServer, list[int]]) -> None:
    server, asked = served
    assert _status_of(server, "/jobs/1/rerun", None, "POST") == 401
    assert asked == []
    basic = "Basic " + base64.b64encode(f"ann:{TOKEN}".encode()).decode()
    with capture_logs() as logs, _get(server, "/jobs/1/rerun", basic, "POST") as reply:
        assert json.load(reply) == {"job_id": 1, "action": "rerun", "result": "queued"}
    assert asked == [1]
    (event,) = [entry for entry in logs if entry["event"] == "admin_action"]
    assert event["user"] == "ann" and event["client"].startswith("127.0.0.1:") and event["action"] == "rerun"
    assert _status_of(server, "/jobs/7/rerun", f"Bearer {TOKEN}", "POST") == 409
    assert _status_of(server, "/jobs/1/explode", f"Bearer {TOKEN}", "POST") == 404
    assert _status_of(server, "/jobs/1/rerun", f"Bearer {TOKEN}", "GET") == 405


def test_a_port_in_use_is_a_clear_error(served: tuple[AdminServer, list[int]]) -> None:
    server, _ = served
    host, port = server.address
    with pytest.raises(Ct2PetError, match=r"cannot listen on 127\.0\.0\.1"):
        AdminServer(
            host,
            port,
            AdminSources(lambda: REPORT, NodeMetrics(), list, lambda _: None, NodeFacts(False, "", "")),
        )
