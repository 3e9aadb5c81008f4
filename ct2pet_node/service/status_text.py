"""``ct2pet-node status`` as a person reads it."""

from __future__ import annotations

import time
from typing import Any


def _ago(timestamp: float | None, now: float) -> str:
    if not timestamp:
        return "never"
    seconds = max(0.0, now - float(timestamp))
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _counts(title: str, counts: dict[str, int]) -> str:
    return f"{title} " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) if counts else ""


def render_status(report: dict[str, Any], now: float | None = None) -> str:
    """Lines of text from the ``/status`` JSON."""
    now = time.time() if now is None else now
    model = report.get("model", {})
    jobs = report.get("jobs", {})
    queues = report.get("queues", {})
    lines = [
        f"ct2pet-node {report.get('version')}  AE {report.get('ae_title')} port {report.get('port')}  "
        f"up {float(report.get('uptime_seconds', 0)) / 60:.1f} min",
        f"model      {model.get('id')} ({model.get('output_units')}) on {model.get('device')}, "
        f"{model.get('steps')} steps, eta {model.get('eta')}",
        "jobs       " + ", ".join(f"{state} {count}" for state, count in jobs.items()),
        "queues     " + ", ".join(f"{name} {depth}" for name, depth in queues.items()),
    ]
    listener = report.get("listener", {})
    if "associations_active" in listener:
        lines.append(
            f"listener   associations {listener['associations_active']}/{listener.get('max_associations')}, "
            f"waiting connections {listener.get('connections_waiting', 0)}"
            f"/{listener.get('max_waiting_connections')}"
            + _counts("; rejected", listener.get("associations_rejected", {}))
            + _counts("; dropped", listener.get("connections_dropped", {}))
        )
    ignored = listener.get("instances_ignored", {})
    if ignored:
        lines.append(
            "ignored    "
            + ", ".join(f"{name} {count}" for name, count in sorted(ignored.items()))
            + " (not CT: acknowledged, not kept)"
        )
    if report.get("current_job") is not None:
        lines.append(f"processing job {report['current_job']}")
    oldest = report.get("oldest_waiting")
    if oldest:
        lines.append(f"oldest waiting: job {oldest['id']}, {_ago(oldest.get('since'), now)}")
    for destination in report.get("destinations", []):
        lines.append(
            f"destination {destination['name']} {destination.get('address', '')}: "
            f"last result {destination.get('last_result') or 'none yet'}, "
            f"last success {_ago(destination.get('last_success_at'), now)}"
            + (f", dead letters {destination['dead']}" if destination.get("dead") else "")
        )
    if not report.get("destinations"):
        lines.append("destinations: none configured (results stay in data_dir)")
    for dead in report.get("dead_letters", []):
        lines.append(f"DEAD LETTER job {dead['job_id']} -> {dead['destination']}: {dead.get('last_error')}")
    errors = report.get("last_errors", [])
    if errors:
        lines.append("last errors:")
        for error in errors[-5:]:
            detail = error.get("reason") or error.get("error") or ""
            lines.append(
                f"  {_ago(error.get('time'), now)}  {error.get('level')}  {error.get('event')}  {detail}"
            )
    return "\n".join(lines)
