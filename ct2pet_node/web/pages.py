"""The dashboard at ``/``: the node, its disk, queues, destinations, problems, throughput and jobs.

Deciding code only: values in (the status report, the jobs, ``now``), HTML
text out, every value escaped. Everything the page needs is in it: styles
inline, charts as inline SVG, no script, no font or file from anywhere
else; it reloads itself every :data:`REFRESH_SECONDS`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from ct2pet_node.domain.jobs import Job, JobState
from ct2pet_node.service.progress import JobProgress
from ct2pet_node.service.status import StatusReport
from ct2pet_node.web.throughput import bars_svg, hours_of_work, legend_html, phases_svg

REFRESH_SECONDS = 10
JOBS_SHOWN = 50
CHART_HOURS = 12

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1d2733;
background:#f4f6f8;font-size:14px}
header{background:#1d2733;color:#fff;padding:10px 18px;display:flex;gap:18px;align-items:baseline}
header h1{font-size:18px;margin:0}header a{color:#cfe0f5}
.warn{color:#ffb000;font-weight:600}
main{padding:12px 18px;display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:14px}
section{background:#fff;border:1px solid #dde3ea;border-radius:6px;padding:10px 14px}
section.wide{grid-column:1/-1}
h2{font-size:15px;margin:0 0 8px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:3px 8px 3px 0;border-bottom:1px solid #eef1f4;vertical-align:top}
th{font-weight:600;color:#55606e}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.uid{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;word-break:break-all}
.state{padding:1px 7px;border-radius:9px;font-size:12px;font-weight:600;color:#fff;background:#6b7785}
.state-done{background:#2f8f4e}.state-failed{background:#c0392b}.state-refused{background:#b9770e}
.state-processing{background:#2d6cb5}.state-sending{background:#7d3cb5}.state-waiting{background:#5d6d7e}
.muted{color:#7a8491}
td a{white-space:nowrap}
.bar{background:#e4e8ee;border-radius:3px;height:10px;position:relative;margin:4px 0}
.bar span{display:block;height:10px;border-radius:3px;background:#2f8f4e}
.bar.low span{background:#c0392b}
.swatch{display:inline-block;width:10px;height:10px;margin:0 4px 0 10px}
svg .chart-title{font-size:12px;font-weight:600;fill:#1d2733}svg .tick{font-size:10px;fill:#55606e}
img.preview{max-width:100%;height:auto;border:1px solid #dde3ea;background:#000}
"""


# The page's icon: the node's own, so the browser asks nobody else for one.
FAVICON_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="16" height="16" rx="3" '
    'fill="#1d2733"/><circle cx="8" cy="8" r="4" fill="#ffb000"/></svg>'
)


def when(seconds: float | None) -> str:
    """A time of day in UTC ("2026-12-05 17:08:14Z"), or a dash for none."""
    if not seconds:
        return "–"
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(seconds))


def duration(seconds: float | None) -> str:
    """``seconds`` as a person reads them: 0.4 s, 12 s, 3 min 5 s, 2 h 10 min."""
    if seconds is None:
        return "–"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    if minutes < 120:
        return f"{int(minutes)} min {int(seconds % 60)} s"
    return f"{int(minutes // 60)} h {int(minutes % 60)} min"


def page(title: str, body: str, refresh: bool = True) -> str:
    """A whole HTML document around ``body`` (already escaped)."""
    meta = f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">' if refresh else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width,initial-scale=1">{meta}'
        f'<title>{escape(title)}</title><link rel="icon" href="/favicon.svg" type="image/svg+xml">'
        f"<style>{_STYLE}</style></head><body>{body}</body></html>"
    )


def header(report: StatusReport, where: str, now: float) -> str:
    return (
        f'<header><h1><a href="/">ct2pet-node</a> {escape(report.ae_title)}</h1><span>{escape(where)}</span>'
        '<span class="warn">SYNTHETIC PET — not for diagnosis</span>'
        f'<span class="muted">at {when(now)}</span></header>'
    )


def table(rows: Iterable[Sequence[str]], head: Sequence[str] = ()) -> str:
    """A table of cells already rendered as HTML."""
    heading = "<tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>" if head else ""
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table>{heading}{body}</table>"


def state_badge(state: JobState | str) -> str:
    name = state.value if isinstance(state, JobState) else str(state)
    return f'<span class="state state-{escape(name)}">{escape(name)}</span>'


@dataclass(frozen=True, slots=True)
class NodeFacts:
    """What the dashboard shows beyond the status report: TLS, retention, where it listens, whom it pulls from.

    ``stow`` is the STOW-RS receiver's address ("" when off); ``sources`` the
    names of the ``[[sources]]`` that ``fetch`` may pull from.
    """

    tls: bool
    retention: str
    listen: str
    stow: str = ""
    sources: tuple[str, ...] = ()


def dashboard(report: StatusReport, jobs: Sequence[Job], facts: NodeFacts, now: float) -> str:
    """The dashboard's HTML; ``jobs`` in id order (the newest :data:`JOBS_SHOWN` are listed)."""
    sections = [
        _node(report, facts),
        _disk(report, facts),
        _queues(report),
        _cluster(report),
        _destinations(report),
        _fetches(report),
        _problems(report),
        _charts(jobs, now),
        _jobs(report, jobs, now),
    ]
    return page(
        f"ct2pet-node {report.ae_title}",
        header(report, "dashboard", now) + "<main>" + "".join(sections) + "</main>",
    )


def _node(report: StatusReport, facts: NodeFacts) -> str:
    model = report.model
    eta = "" if model.eta is None else f", eta {model.eta:g}"
    rows = [
        ("version", escape(report.version)),
        (
            "uptime",
            duration(report.uptime_seconds) + f' <span class="muted">since {when(report.started_at)}</span>',
        ),
        ("DICOM", f"{escape(report.ae_title)} on port {report.port}, TLS {'on' if facts.tls else 'off'}"),
        ("admin", escape(facts.listen)),
        ("DICOMweb in", f"STOW-RS on {escape(facts.stow)}" if facts.stow else "off"),
        ("sources (fetch)", escape(", ".join(facts.sources)) or "none configured"),
        ("model", f'<span class="uid">{escape(model.id)}</span>'),
        ("output units", escape(model.output_units)),
        ("device", escape(model.device)),
        ("sampling", f"{model.steps} steps{eta}"),
        # The cluster's own line (actors, reachability, jobs waiting for it); the local engine has none.
        ("engine", escape(report.engine) if report.engine else "local, this host"),
        ("current job", "–" if report.current_job is None else _job_link(report.current_job)),
        (
            "jobs",
            ", ".join(f"{escape(state)} {count}" for state, count in report.jobs if count) or "none yet",
        ),
    ]
    return "<section><h2>Node</h2>" + table((f"<b>{k}</b>", v) for k, v in rows) + "</section>"


def _disk(report: StatusReport, facts: NodeFacts) -> str:
    disk = report.disk
    if disk is None:
        return "<section><h2>Disk</h2><p class=muted>not reported</p></section>"
    level = max(disk.warn_free_mb, disk.min_free_mb, 1)
    filled = min(100.0, 100.0 * disk.data_dir_free_mb / (2 * level))
    low = " low" if disk.warning else ""
    warning = f'<p class="warn">{escape(disk.warning)}</p>' if disk.warning else ""
    rows = [
        ("free in data_dir", f"{disk.data_dir_free_mb / 1024:.1f} GiB"),
        ("watermark (refuses new CT below)", f"{disk.min_free_mb / 1024:.1f} GiB"),
        ("warning below", f"{disk.warn_free_mb / 1024:.1f} GiB"),
        ("retention", escape(facts.retention)),
    ]
    bar = (
        f'<div class="bar{low}" title="free space against twice the warning level">'
        f'<span style="width:{filled:.0f}%"></span></div>'
    )
    return f"<section><h2>Disk</h2>{bar}{warning}" + table(rows) + "</section>"


def _fetches(report: StatusReport) -> str:
    if not report.recent_fetches:
        return ""
    rows = (
        (when(f.at), escape(f.describe()), " ".join(_job_link(job) for job in f.jobs))
        for f in reversed(report.recent_fetches)
    )
    return '<section class="wide"><h2>Fetches</h2>' + table(rows, ("ended", "what", "jobs")) + "</section>"


def _queues(report: StatusReport) -> str:
    oldest = report.oldest_waiting
    rows = [
        ("engine queue", str(report.queues.engine)),
        ("deliveries due", str(report.queues.outbox_due)),
        (
            "waiting longest",
            "–" if oldest is None else f"{_job_link(oldest.id)} since {when(oldest.since)}",
        ),
    ]
    return "<section><h2>Queues</h2>" + table(rows) + "</section>"


def _cluster(report: StatusReport) -> str:
    """The engine cluster's actors, one row each; nothing for the local engine."""
    cluster = report.cluster
    if cluster is None:
        return ""
    rows = [
        (
            escape(actor.name),
            escape(actor.host),
            escape(actor.device),
            str(actor.chunks_in_flight),
            f"{actor.slices_per_second:.2f}",
            str(actor.slices_done),
            str(actor.restarts),
        )
        for actor in cluster.actors
    ]
    head = ("actor", "host", "device", "chunks in flight", "slices/s (1 min)", "slices done", "restarts")
    summary = (
        f"<p>{escape(cluster.address)} {escape(cluster.state)}: {len(rows)} actors, "
        f"{cluster.chunk_retries} chunks retried after an actor died</p>"
    )
    return "<section><h2>Engine cluster</h2>" + summary + table(rows, head) + "</section>"


def _destinations(report: StatusReport) -> str:
    rows = [
        (
            escape(d.name),
            f'<span class="uid">{escape(d.address)}</span>',
            str(d.pending + d.sending),
            str(d.delivered),
            str(d.dead),
            escape(d.last_result or "–") + (f" at {when(d.last_attempt_at)}" if d.last_attempt_at else ""),
            escape(d.last_error or ""),
        )
        for d in report.destinations
    ]
    listed = table(rows, ("name", "address", "backlog", "delivered", "dead", "last attempt", "last error"))
    if not rows:
        listed = "<p class=muted>none configured: results stay in the results folder</p>"
    dead = table(
        (
            (_job_link(d.job_id), escape(d.destination), escape(d.last_error or ""))
            for d in report.dead_letters
        ),
        ("job", "destination", "reason"),
    )
    dead_part = (
        f"<h2>Dead letters</h2>{dead}" if report.dead_letters else "<p class=muted>no dead letters</p>"
    )
    return f'<section class="wide"><h2>Destinations</h2>{listed}{dead_part}</section>'


def _problems(report: StatusReport) -> str:
    errors = table(
        (
            when(p.time),
            escape(p.level),
            escape(p.event),
            escape(", ".join(f"{k}={v}" for k, v in p.fields)),
        )
        for p in reversed(report.last_errors)
    )
    if not report.last_errors:
        errors = "<p class=muted>none since the start</p>"
    listener: Mapping[str, Any] = report.listener
    rejected = _counts(listener.get("associations_rejected"))
    dropped = _counts(listener.get("connections_dropped"))
    ignored = _counts(listener.get("instances_ignored"))
    counts = table(
        [
            ("associations rejected", rejected),
            ("connections dropped", dropped),
            ("instances ignored", ignored),
            (
                "associations now",
                f"{listener.get('associations_active', 0)} active, {listener.get('connections_waiting', 0)} waiting",
            ),
        ]
    )
    recent = table(
        (
            (
                when(r.get("time")),
                escape(str(r.get("reason") or "")),
                escape(f"{r.get('calling_ae') or '?'} -> {r.get('called_ae') or '?'}"),
                escape(str(r.get("peer") or "")),
            )
            for r in reversed(listener.get("recent_rejections") or [])
            if isinstance(r, Mapping)
        ),
        ("when", "reason", "calling -> called AE", "from"),
    )
    recent_part = recent if listener.get("recent_rejections") else ""
    return (
        f'<section class="wide"><h2>Last errors</h2>{errors}<h2>Rejected associations</h2>{counts}'
        f"{recent_part}</section>"
    )


def _counts(value: object) -> str:
    if not isinstance(value, Mapping) or not value:
        return "none"
    return ", ".join(f"{escape(str(k))}: {escape(str(v))}" for k, v in sorted(value.items()))


def _charts(jobs: Sequence[Job], now: float) -> str:
    hours = hours_of_work(jobs, now, CHART_HOURS)
    return (
        f'<section class="wide"><h2>Throughput, last {CHART_HOURS} hours</h2>'
        + bars_svg("studies per hour", hours, "studies")
        + bars_svg("slices per hour", hours, "slices", "#82b366")
        + phases_svg("time per phase, mean seconds per series", hours)
        + f"<p>{legend_html()}</p></section>"
    )


def _job_link(job_id: int) -> str:
    return f'<a href="/jobs/{job_id}">job {job_id}</a>'


def job_progress(report: StatusReport, job_id: int) -> str:
    """The job's progress and estimated finish, as ``status`` says it, for a job in progress; else a dash."""
    for active in report.active_jobs:
        if active.get("id") == job_id:
            progress = JobProgress.from_json(active.get("progress"))
            return escape(progress.describe()) if progress.phase is not None else "–"
    return "–"


def _jobs(report: StatusReport, jobs: Sequence[Job], now: float) -> str:
    shown = list(reversed(jobs[-JOBS_SHOWN:]))
    rows = []
    for job in shown:
        delivered = job.updated_at if job.state is JobState.DONE and job.details.written_at else None
        rows.append(
            (
                _job_link(job.id),
                state_badge(job.state),
                escape(job.reason or ""),
                f'<span class="uid">{escape(job.series_uid)}</span>',
                str(job.n_instances),
                job_progress(report, job.id),
                when(job.created_at),
                when(job.last_instance_at),
                when(job.details.written_at),
                when(delivered),
            )
        )
    head = (
        "job",
        "state",
        "reason",
        "series",
        "slices",
        "progress",
        "received",
        "last instance",
        "translated",
        "delivered",
    )
    listed = table(rows, head) if rows else "<p class=muted>no job yet: send a CT series to the node</p>"
    more = f'<p class="muted">the newest {JOBS_SHOWN} of {len(jobs)}</p>' if len(jobs) > JOBS_SHOWN else ""
    return f'<section class="wide" id="jobs"><h2>Jobs</h2>{listed}{more}</section>'
