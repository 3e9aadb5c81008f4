"""A job's page at ``/jobs/<id>``: its preview pictures and what the node knows of it.

Deciding code only, as :mod:`ct2pet_node.web.pages`: the job, which
previews exist and ``now`` in, HTML out. Identifiers only; the job store
holds no patient name or ID, and neither does this page.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from ct2pet_node.domain.jobs import Job, JobState
from ct2pet_node.service.status import StatusReport
from ct2pet_node.web.pages import duration, header, job_progress, page, state_badge, table, when
from ct2pet_node.web.throughput import job_phases

_PREVIEW_ALT = {
    "mip.png": "coronal maximum-intensity projections: CT and synthetic PET",
    "axial.png": "axial slices: CT and synthetic PET",
}


def preview_url(job_id: int, name: str) -> str:
    return f"/jobs/{job_id}/preview/{name}"


def job_page(report: StatusReport, job: Job, previews: Sequence[str], now: float) -> str:
    """The page of ``job``; ``previews`` the names of its preview files that exist."""
    pictures = "".join(
        f'<p><img class="preview" src="{preview_url(job.id, name)}" alt="{escape(_PREVIEW_ALT.get(name, name))}">'
        "</p>"
        for name in previews
    )
    if not previews:
        pictures = f"<p class=muted>{escape(_why_no_preview(job))}</p>"
    body = (
        header(report, f"job {job.id}", now)
        + "<main>"
        + f'<section class="wide"><h2>Job {job.id} {state_badge(job.state)}</h2>{_reason(job)}{pictures}</section>'
        + f"<section><h2>Series</h2>{_series(report, job)}</section>"
        + f"<section><h2>Timings</h2>{_timings(job)}</section>"
        + f'<section class="wide"><h2>Details</h2>{_details(job)}</section>'
        + "</main>"
    )
    # A finished job's page has nothing new to show; one under way reloads itself.
    return page(f"job {job.id} - ct2pet-node", body, refresh=not job.state.is_final)


def _reason(job: Job) -> str:
    return f'<p class="warn">{escape(job.reason)}</p>' if job.reason else ""


def _why_no_preview(job: Job) -> str:
    if job.details.results_purged_at:
        return f"no preview: the results were removed at {when(job.details.results_purged_at)} (retention)"
    if job.state in (JobState.RECEIVED, JobState.WAITING, JobState.PROCESSING):
        return "no preview yet: the pictures are drawn when the results are written"
    return "no preview for this job"


def _series(report: StatusReport, job: Job) -> str:
    outputs = "<br>".join(f'<span class="uid">{escape(uid)}</span>' for uid in job.output_series_uids) or "–"
    rows = [
        ("study", f'<span class="uid">{escape(job.study_uid)}</span>'),
        ("source series", f'<span class="uid">{escape(job.series_uid)}</span>'),
        ("slices received", str(job.n_instances)),
        ("output series", outputs),
        ("sampling", escape(job.details.sampling or "–")),
        ("model grid", escape(job.details.geometry or "–")),
        ("attempts", str(job.attempts)),
        ("progress", job_progress(report, job.id)),
    ]
    return table(rows)


def _timings(job: Job) -> str:
    phases = job_phases(job)
    rows = [
        ("received", when(job.created_at)),
        ("last instance", when(job.last_instance_at)),
        ("receiving", duration(job.last_instance_at - job.created_at)),
        *((name, duration(seconds)) for name, seconds in phases.items()),
        ("results written", when(job.details.written_at)),
        ("last change", when(job.updated_at)),
    ]
    return table(rows)


# Shown in their own sections above.
_SHOWN_ABOVE = frozenset({"sampling", "geometry", "phase_seconds", "written_at"})


def _details(job: Job) -> str:
    rows = [
        (
            escape(name),
            when(value) if name.endswith("_at") and isinstance(value, float) else escape(_text(value)),
        )
        for name, value in job.details.to_json().items()
        if name not in _SHOWN_ABOVE
    ]
    return table(rows) if rows else "<p class=muted>nothing recorded yet</p>"


def _text(value: object) -> str:
    if isinstance(value, list):
        return "; ".join(map(str, value))
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    return str(value)
