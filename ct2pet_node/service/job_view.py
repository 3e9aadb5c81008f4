"""``jobs show``: one job as the store knows it, with its progress, as JSON or as text.

Per-slice and per-instance progress lives only in the running node
(:class:`~ct2pet_node.service.progress.ProgressBoard`), so the job's progress
is asked of the node's admin endpoint first, as ``status`` does; when no node
answers, it is built from the store's facts (instances received, chunks
checkpointed, the outbox's acknowledged files).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from ct2pet_node.config import Config
from ct2pet_node.domain.jobs import Job
from ct2pet_node.errors import Ct2PetError
from ct2pet_node.service.admin import fetch_status
from ct2pet_node.service.checkpoints import checkpointed_slices
from ct2pet_node.service.progress import JobProgress, job_progress

# A node that is up answers at once; one that is down refuses at once. Not worth waiting for more.
_ASK_NODE_SECONDS = 2.0


def node_progress(config: Config, job_id: int) -> JobProgress | None:
    """The job's progress as the running node reports it; None when no node answers or it lists no such job."""
    try:
        status = fetch_status(
            config.admin.listen_host, config.admin.listen_port, config.admin.token, timeout=_ASK_NODE_SECONDS
        )
    except Ct2PetError:
        return None
    for job in status.get("active_jobs") or ():
        if job.get("id") == job_id:
            return JobProgress.from_json(job.get("progress"))
    return None


def show_progress(
    config: Config, job: Job, deliveries: Sequence[tuple[int, int]], now: float | None = None
) -> JobProgress:
    """The job's progress: from the running node where one answers, else from the store's facts."""
    live = node_progress(config, job.id) if not job.state.is_final else None
    return job_progress(
        job,
        time.time() if now is None else now,
        config.routing.series_quiet_seconds,
        live=live,
        checkpointed_slices=checkpointed_slices(config.node.data_dir / "work", job.id),
        deliveries=deliveries,
    )


def render_job(report: Mapping[str, Any]) -> str:
    """``jobs show`` without ``--json``: the fields a person looks for first, one per line."""
    progress = JobProgress.from_json(report.get("progress"))
    lines = [
        f"job        {report['id']}  {report['state']}"
        + (f": {report['reason']}" if report.get("reason") else ""),
        f"series     {report['series_uid']}",
        f"instances  {report['n_instances']}",
        f"progress   {progress.describe()}",
    ]
    details = report.get("details") or {}
    for key in ("completed_because", "geometry", "results_dir", "delivery"):
        if details.get(key):
            lines.append(f"{key:<10} {details[key]}")
    for uid in report.get("output_series_uids") or ():
        lines.append(f"output     {uid}")
    for delivery in report.get("deliveries") or ():
        lines.append(
            f"delivery   {delivery['destination']}: {delivery['state']}, "
            f"{delivery['delivered']} of {delivery['files']} acknowledged, {delivery['attempts']} attempts"
            + (f", last error {delivery['last_error']}" if delivery.get("last_error") else "")
        )
    for problem in (report.get("instance_problems") or {}).values():
        lines.append(f"problem    {problem}")
    if report.get("where"):
        lines.append(f"where      {report['where']}")
    return "\n".join(lines)
