"""``ct2pet-node status`` as a person reads it."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from ct2pet_node.service.progress import JobProgress
from ct2pet_node.service.status import StatusReport


def _ago(timestamp: float | None, now: float) -> str:
    if not timestamp:
        return "never"
    seconds = max(0.0, now - float(timestamp))
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _counts(title: str, counts: Mapping[str, int]) -> str:
    return f"{title} " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) if counts else ""


def _listener_lines(listener: Mapping[str, Any], now: float) -> list[str]:
    """The DICOM listener: slots, rejections (the last few one by one), ignored instances."""
    lines: list[str] = []
    if "associations_active" in listener:
        lines.append(
            f"listener   associations {listener['associations_active']}/{listener.get('max_associations')}, "
            f"waiting connections {listener.get('connections_waiting', 0)}"
            f"/{listener.get('max_waiting_connections')}"
            + _counts("; rejected", listener.get("associations_rejected", {}))
            + _counts("; dropped", listener.get("connections_dropped", {}))
        )
    for rejected in listener.get("recent_rejections", [])[-5:]:
        lines.append(
            f"rejected   {_ago(rejected.get('time'), now)}  {rejected.get('reason')}: "
            f"{rejected.get('calling_ae') or '?'} -> {rejected.get('called_ae') or '?'} "
            f"from {rejected.get('peer')}"
        )
    ignored = listener.get("instances_ignored", {})
    if ignored:
        lines.append(
            "ignored    "
            + ", ".join(f"{name} {count}" for name, count in sorted(ignored.items()))
            + " (not CT: acknowledged, not kept)"
        )
    return lines


def _cluster_lines(report: StatusReport) -> list[str]:
    """The cluster's totals, then one line per actor; none for the local engine."""
    cluster = report.cluster
    if cluster is None:
        return []
    lines = [
        f"cluster    {len(cluster.actors)} actors, {cluster.chunks_in_flight} chunks in flight, "
        f"{cluster.slices_per_second:.2f} slices/s, {cluster.chunk_retries} chunks retried"
    ]
    for actor in cluster.actors:
        lines.append(
            f"  {actor.name}  {actor.host} {actor.device}: {actor.chunks_in_flight} in flight, "
            f"{actor.slices_per_second:.2f} slices/s, {actor.slices_done} slices done"
            + (f", restarted {actor.restarts}x" if actor.restarts else "")
        )
    return lines


def _work_lines(report: StatusReport, now: float) -> list[str]:
    """What the node is doing: jobs in progress, the longest wait, the last fetches."""
    lines: list[str] = []
    if report.current_job is not None:
        lines.append(f"processing job {report.current_job}")
    for job in report.active_jobs:
        progress = JobProgress.from_json(job.get("progress"))
        if progress.phase is not None:
            lines.append(f"job {job.get('id')}  {progress.describe()}")
    oldest = report.oldest_waiting
    if oldest:
        lines.append(f"oldest waiting: job {oldest.id}, {_ago(oldest.since, now)}")
    for fetched in report.recent_fetches[-3:]:
        lines.append(f"fetch      {_ago(fetched.at, now)}  {fetched.describe()}")
    return lines


def render_status(report: StatusReport, now: float | None = None) -> str:
    """Lines of text from a status report."""
    now = time.time() if now is None else now
    model = report.model
    lines = [
        f"ct2pet-node {report.version}  AE {report.ae_title} port {report.port}  "
        f"up {report.uptime_seconds / 60:.1f} min",
        f"model      {model.id} ({model.output_units}) on {model.device}, {model.steps} steps, eta {model.eta}",
        "jobs       " + ", ".join(f"{state} {count}" for state, count in report.jobs),
        f"queues     engine {report.queues.engine}, outbox_due {report.queues.outbox_due}",
        *([f"engine     {report.engine}"] if report.engine else []),
        *_cluster_lines(report),
    ]
    lines += _listener_lines(report.listener, now)
    disk = report.disk
    if disk is not None:
        lines.append(
            f"disk       data_dir {disk.data_dir_free_mb:.0f} MiB free (warns below {disk.warn_free_mb}, "
            f"refuses CT below {disk.min_free_mb})"
        )
        if disk.warning:
            lines.append(f"WARNING    {disk.warning}")
    lines += _work_lines(report, now)
    for destination in report.destinations:
        lines.append(
            f"destination {destination.name} {destination.address}: "
            f"last result {destination.last_result or 'none yet'}, "
            f"last success {_ago(destination.last_success_at, now)}"
            + (f", dead letters {destination.dead}" if destination.dead else "")
        )
    if not report.destinations:
        lines.append("destinations: none configured (results stay in data_dir)")
    for dead in report.dead_letters:
        lines.append(f"DEAD LETTER job {dead.job_id} -> {dead.destination}: {dead.last_error}")
    if report.last_errors:
        lines.append("last errors:")
        for error in report.last_errors[-5:]:
            detail = error.field("reason") or error.field("error") or ""
            lines.append(f"  {_ago(error.time, now)}  {error.level}  {error.event}  {detail}")
    return "\n".join(lines)
