"""The dashboard's and job page's HTML: everything escaped, nothing fetched from elsewhere."""

from __future__ import annotations

import re

from ct2pet_node.domain.jobs import Job, JobDetails, JobState
from ct2pet_node.domain.uids import SeriesUid, StudyUid
from ct2pet_node.service.status import StatusReport
from ct2pet_node.web.job_page import job_page
from ct2pet_node.web.pages import NodeFacts, dashboard

HOSTILE = '<script>alert("x")</script>'
NOW = 1_800_000_000.0
FACTS = NodeFacts(
    tls=True,
    retention="results 30 days",
    listen="127.0.0.1:11180",
    stow="127.0.0.1:8042, token required",
    sources=("pacs (dimse)",),
)


def _report() -> StatusReport:
    return StatusReport.from_json(
        {
            "version": "0.1.0",
            "ae_title": "CT2PET",
            "port": 11112,
            "model": {"id": "demo", "output_units": "SUVbw", "device": "cpu", "steps": 10, "eta": 0.0},
            "jobs": {"refused": 1},
            "destinations": [{"name": "pacs", "address": "PACS@10.0.0.5:104", "pending": 3, "dead": 1}],
            "dead_letters": [{"job_id": 1, "destination": "pacs", "last_error": f"peer said {HOSTILE}"}],
            "last_errors": [{"time": NOW, "level": "warning", "logger": "x", "event": "send_failed"}],
            "listener": {"associations_rejected": {"calling_ae_title": 2}},
            "disk": {"data_dir_free_mb": 900.0, "min_free_mb": 1024, "warn_free_mb": 10240, "warning": "low"},
        }
    )


def _job(state: JobState = JobState.REFUSED) -> Job:
    return Job(
        1,
        StudyUid("1.2.3"),
        SeriesUid("1.2.3.4"),
        state,
        f"only 3 slices {HOSTILE}",
        3,
        (),
        NOW,
        NOW,
        NOW,
        details=JobDetails(completed_because=HOSTILE),
    )


def _external_references(html: str) -> list[str]:
    urls = re.findall(r'(?:src|href)="([^"]+)"', html)
    return [url for url in urls if not url.startswith("/")]


def test_dashboard_shows_every_part_and_escapes_what_it_was_told() -> None:
    html = dashboard(_report(), [_job()], FACTS, NOW)
    assert HOSTILE not in html and "&lt;script&gt;" in html
    for shown in (
        "CT2PET on port 11112, TLS on",
        "STOW-RS on 127.0.0.1:8042, token required",
        "pacs (dimse)",
        "SUVbw",
        "PACS@10.0.0.5:104",
        "calling_ae_title: 2",
        "low",
    ):
        assert shown in html
    assert '<a href="/jobs/1">job 1</a>' in html and "state-refused" in html and "only 3 slices" in html
    assert 'http-equiv="refresh"' in html and "<script" not in html
    assert _external_references(html) == []


def test_an_empty_node_says_so() -> None:
    html = dashboard(StatusReport.from_json({}), [], FACTS, NOW)
    assert "no job yet" in html and "none configured" in html


def test_job_page_without_previews_says_why_and_a_finished_job_stops_reloading() -> None:
    html = job_page(_report(), _job(), [], NOW)
    assert HOSTILE not in html and "no preview for this job" in html and "<img" not in html
    assert 'http-equiv="refresh"' not in html
    running = job_page(_report(), _job(JobState.PROCESSING), [], NOW)
    assert "no preview yet" in running and 'http-equiv="refresh"' in running
    assert _external_references(html) == []


def test_dashboard_shows_progress_with_its_finish_the_engine_and_each_recent_rejection() -> None:
    raw = _report().to_json()
    raw["active_jobs"] = [
        {
            "id": 1,
            "state": "processing",
            "series_uid": "1.2.3.4",
            "progress": {
                "phase": "translating",
                "slices_done": 40,
                "slices_total": 100,
                "estimated_finish": "2027-01-15T08:00:00Z",
            },
        }
    ]
    raw["engine"] = "engine cluster 127.0.0.1:6379: 2 actors"
    raw["listener"] = {
        "recent_rejections": [
            {
                "time": NOW,
                "reason": "calling AE not allowed",
                "calling_ae": "EVIL",
                "called_ae": "CT2PET",
                "peer": "10.9.9.9",
            }
        ]
    }
    report = StatusReport.from_json(raw)
    html = dashboard(report, [_job(JobState.PROCESSING)], FACTS, NOW)
    assert "translating: 40 of 100 slices, estimated finish 2027-01-15T08:00:00Z" in html
    assert "engine cluster 127.0.0.1:6379: 2 actors" in html
    assert "calling AE not allowed" in html and "EVIL -&gt; CT2PET" in html and "10.9.9.9" in html
    assert "estimated finish 2027-01-15T08:00:00Z" in job_page(report, _job(JobState.PROCESSING), [], NOW)
    assert "local, this host" in dashboard(_report(), [], FACTS, NOW)


def test_a_cluster_engine_gets_a_row_per_actor_and_a_local_one_no_section() -> None:
    cluster = {
        "address": "head:6379",
        "state": "ready",
        "actors": [{"name": "actor-0", "host": HOSTILE, "device": "cuda:0", "slices_per_second": 2.5}],
        "chunk_retries": 2,
    }
    report = StatusReport.from_json({**_report().to_json(), "cluster": cluster})
    html = dashboard(report, [], FACTS, NOW)
    assert "Engine cluster" in html and "2 chunks retried" in html
    assert "<td>actor-0</td>" in html and "<td>cuda:0</td>" in html and "<td>2.50</td>" in html
    assert HOSTILE not in html
    assert "Engine cluster" not in dashboard(_report(), [], FACTS, NOW)


def test_the_last_fetches_get_a_section_with_links_to_their_jobs() -> None:
    raw = _report().to_json()
    raw["recent_fetches"] = [
        {
            "at": NOW,
            "source": "pacs",
            "study_uid": "1.2.3",
            "method": "C-MOVE",
            "series": 1,
            "instances": 8,
            "jobs": [4],
        }
    ]
    html = dashboard(StatusReport.from_json(raw), [], FACTS, NOW)
    assert "<h2>Fetches</h2>" in html and "study 1.2.3 from pacs by C-MOVE: 1 CT series, 8 instances" in html
    assert '<a href="/jobs/4">job 4</a>' in html
    assert "<h2>Fetches</h2>" not in dashboard(_report(), [], FACTS, NOW)
