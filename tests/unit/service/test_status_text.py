"""``ct2pet-node status`` as text, from the ``/status`` JSON."""

from __future__ import annotations

from typing import Any

from ct2pet_node.service.status import StatusReport
from ct2pet_node.service.status_text import render_status

NOW = 1_800_000_000.0


def _report(**overrides: Any) -> StatusReport:
    report: dict[str, Any] = {
        "version": "0.1.0",
        "ae_title": "CT2PET",
        "port": 11112,
        "uptime_seconds": 600,
        "model": {"id": "cpdm-demo", "output_units": "relative", "device": "cuda:0", "steps": 10},
        "jobs": {"waiting": 2, "done": 5},
        "queues": {"engine": 2, "outbox_due": 0},
        "current_job": 7,
        "oldest_waiting": {"id": 8, "series_uid": "1.2.3", "since": NOW - 90},
        "destinations": [
            {
                "name": "pacs",
                "address": "PACS@10.0.0.5:104",
                "last_result": "delivered 60 instances",
                "last_success_at": NOW - 30,
                "dead": 1,
            }
        ],
        "dead_letters": [{"job_id": 3, "destination": "pacs", "last_error": "association rejected"}],
        "last_errors": [
            {"time": NOW - 10, "level": "warning", "event": "send_failed", "error": "timeout"},
        ],
    }
    report.update(overrides)
    # As the CLI gets it: JSON from the node, possibly an older one missing some fields.
    return StatusReport.from_json(report)


def test_every_part_of_the_status_is_shown() -> None:
    text = render_status(_report(), now=NOW)
    assert "ct2pet-node 0.1.0  AE CT2PET port 11112  up 10.0 min" in text
    assert "model      cpdm-demo (relative) on cuda:0, 10 steps" in text
    assert "jobs       waiting 2, done 5" in text
    assert "queues     engine 2, outbox_due 0" in text
    assert "processing job 7" in text
    assert "oldest waiting: job 8, 90 s ago" in text
    assert (
        "destination pacs PACS@10.0.0.5:104: last result delivered 60 instances, last success 30 s ago"
        in text
    )
    assert "dead letters 1" in text
    assert "DEAD LETTER job 3 -> pacs: association rejected" in text
    assert "10 s ago  warning  send_failed  timeout" in text


def test_an_idle_node_without_destinations_says_where_results_stay() -> None:
    text = render_status(
        _report(current_job=None, oldest_waiting=None, destinations=[], dead_letters=[], last_errors=[]),
        now=NOW,
    )
    assert "processing job" not in text and "oldest waiting" not in text
    assert "destinations: none configured (results stay in data_dir)" in text
    assert "last errors" not in text


def test_instances_ignored_by_sop_class_are_shown_only_when_there_are_some() -> None:
    listener = {"instances_ignored": {"PositronEmissionTomographyImageStorage": 12, "BasicTextSRStorage": 1}}
    text = render_status(_report(listener=listener), now=NOW)
    assert "ignored    BasicTextSRStorage 1, PositronEmissionTomographyImageStorage 12" in text
    assert "ignored " not in render_status(_report(listener={"instances_ignored": {}}), now=NOW)


def test_the_listener_line_shows_slots_waiting_connections_and_why_some_were_turned_away() -> None:
    listener = {
        "associations_active": 2,
        "max_associations": 10,
        "connections_waiting": 3,
        "max_waiting_connections": 64,
        "associations_rejected": {"max_associations_per_peer": 4},
        "connections_dropped": {"request_timeout": 7, "evicted": 1},
        "instances_ignored": {},
    }
    text = render_status(_report(listener=listener), now=NOW)
    assert (
        "listener   associations 2/10, waiting connections 3/64; rejected max_associations_per_peer 4; "
        "dropped evicted 1, request_timeout 7"
    ) in text


def test_free_space_is_shown_and_a_warning_stands_out_before_the_watermark() -> None:
    disk = {"data_dir_free_mb": 50_000.0, "min_free_mb": 1024, "warn_free_mb": 10_240, "warning": None}
    calm = render_status(_report(disk=disk), NOW)
    assert "disk       data_dir 50000 MiB free (warns below 10240, refuses CT below 1024)" in calm
    assert "WARNING" not in calm
    low = {**disk, "data_dir_free_mb": 9000.0, "warning": "data_dir has 9000 MiB free, below ..."}
    assert "WARNING    data_dir has 9000 MiB free" in render_status(_report(disk=low), NOW)
    assert "disk" not in render_status(_report(), NOW)  # an older node sends no disk report


def test_a_cluster_engine_line_is_shown_and_survives_json() -> None:
    line = "engine cluster 10.0.0.5:6379 unreachable since 12:03:10, 3 jobs waiting"
    report = _report(engine=line)
    assert StatusReport.from_json(report.to_json()) == report
    assert f"engine     {line}" in render_status(report).splitlines()
    assert "engine" not in _report().to_json()  # a local node's /status keeps its fields


def test_a_cluster_shows_its_totals_then_a_line_per_actor() -> None:
    cluster = {
        "address": "head:6379",
        "state": "ready",
        "actors": [
            {
                "name": "actor-0",
                "host": "gpu-a",
                "device": "cuda:0",
                "chunks_in_flight": 1,
                "slices_per_second": 2.5,
                "slices_done": 160,
            },
            {
                "name": "actor-1",
                "host": "gpu-b",
                "device": "cpu",
                "slices_per_second": 0.25,
                "slices_done": 16,
                "restarts": 1,
            },
        ],
        "chunk_retries": 1,
    }
    lines = render_status(_report(cluster=cluster), NOW).splitlines()
    assert "cluster    2 actors, 1 chunks in flight, 2.75 slices/s, 1 chunks retried" in lines
    assert "  actor-0  gpu-a cuda:0: 1 in flight, 2.50 slices/s, 160 slices done" in lines
    assert "  actor-1  gpu-b cpu: 0 in flight, 0.25 slices/s, 16 slices done, restarted 1x" in lines
    assert not any(line.startswith("cluster") for line in render_status(_report(), NOW).splitlines())


def test_the_last_fetches_are_shown_failed_ones_with_their_reason() -> None:
    fetches = [
        {
            "at": NOW - 120,
            "source": "pacs",
            "study_uid": "1.2.3",
            "method": "C-MOVE",
            "series": 1,
            "instances": 247,
            "jobs": [9],
        },
        {
            "at": NOW - 60,
            "source": "web",
            "study_uid": "1.2.4",
            "method": "WADO-RS",
            "error": "study 1.2.4 has no CT series (found: PT); nothing to fetch",
        },
    ]
    text = render_status(_report(recent_fetches=fetches), now=NOW)
    assert "study 1.2.3 from pacs by C-MOVE: 1 CT series, 247 instances, jobs 9" in text
    assert "study 1.2.4 from web by WADO-RS failed: study 1.2.4 has no CT series (found: PT)" in text
    assert "fetch " not in render_status(_report(), now=NOW)
