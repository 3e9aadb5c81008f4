"""``jobs resend`` and ``jobs rerun``: a finished job's results delivered again, or made again.

Both work on the stores directly, like ``jobs retry``, so they act whether
or not the node is running. No message reaches the running node: its sender
polls the outbox and its idle engine polls the job store for WAITING jobs
(each every few seconds), so what is written here is picked up within
seconds; a stopped node finds it at start-up (recovery settles SENDING jobs
from the outbox; the router re-enqueues WAITING ones).

Resend re-delivers the files already in the job's results folder, to one
destination or to all, through the outbox, even to a destination that has
them already (the operator asked). Rerun translates the spooled CT again:
output UIDs derive from the CT series and the model id only, so the same
model makes the same series again (the PACS replaces it) and another model
makes a new series beside the old one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from ct2pet_node.config import Config
from ct2pet_node.domain.jobs import Job, JobDetails, JobState
from ct2pet_node.errors import InputError
from ct2pet_node.service.recovery import result_files
from ct2pet_node.spool.jobstore import JobStore
from ct2pet_node.spool.outbox import Outbox

_PICKED_UP = "a running node picks it up within seconds, a stopped one when it starts"


def resend_targets(configured: Sequence[str], to: str | None) -> list[str]:
    """The destinations a resend goes to: ``to`` alone, or every configured one.

    Raises
    ------
    InputError
        No destination is configured, or ``to`` is not one of them.
    """
    if not configured:
        raise InputError(
            "no destination is configured, so there is nowhere to resend to; add a [[destinations]] "
            "table to the configuration (and restart a running node)"
        )
    if to is None:
        return list(configured)
    if to not in configured:
        raise InputError(
            f"unknown destination {to!r}; the configuration's [[destinations]] are "
            f"{', '.join(sorted(configured))}"
        )
    return [to]


def resend_job(config: Config, job_id: int, to: str | None = None, now: float | None = None) -> str:
    """Deliver job ``job_id``'s existing results again; return what was done, in a sentence."""
    now = time.time() if now is None else now
    targets = resend_targets([d.name for d in config.destinations], to)
    with JobStore.open(config.node.data_dir) as store:
        job = _job(store, job_id)
        if job.state is not JobState.DONE:
            raise InputError(f"job {job_id} is {job.state.value}: {_why_not_resend(job)}")
        files = result_files(job.details.results_dir)
        if not files:
            gone = job.details.purged or f"no result files in {job.details.results_dir}"
            raise InputError(
                f"job {job_id} has no results to resend ({gone}); `ct2pet-node jobs rerun {job_id}` "
                "makes them again"
            )
        # The job moves first, then the outbox: the sender's verdict (SENDING -> DONE) must find
        # the job in SENDING, however soon it delivers (as in `jobs retry`).
        details = JobDetails(delivery=f"resent by the operator to {', '.join(targets)}")
        if store.transition(job_id, JobState.DONE, JobState.SENDING, details=details) is None:
            raise _moved_meanwhile(job)
        outbox = Outbox.open(config.node.data_dir)
        try:
            for name in targets:
                outbox.resend(job_id, name, files, now)
        finally:
            outbox.close()
    return f"job {job_id}: {len(files)} result file(s) queued for {', '.join(targets)}; {_PICKED_UP}"


def rerun_job(config: Config, job_id: int) -> str:
    """Queue job ``job_id`` for the engine again; return what was done, in a sentence."""
    with JobStore.open(config.node.data_dir) as store:
        job = _job(store, job_id)
        if job.state not in (JobState.DONE, JobState.FAILED):
            raise InputError(f"job {job_id} is {job.state.value}: {_why_not_rerun(job)}")
        latest = store.job_for_series(job.series_uid)
        if latest is not None and latest.id != job.id:
            raise InputError(
                f"job {job_id} is not its series' latest job (job {latest.id} is, with every instance "
                f"of the series); rerun job {latest.id} instead"
            )
        spooled = store.instances_of(job.series_uid)
        missing = [record for record in spooled if not record.path.is_file()]
        if not spooled or missing:
            gone = job.details.purged or f"{len(missing)} spooled instance file(s) missing"
            raise InputError(
                f"the received CT of job {job_id} is gone ({gone}); send the series again to translate it"
            )
        # Its old deliveries are forgotten first: the rerun's results are new deliveries, sent to
        # every destination when they are written. A DONE or FAILED job has no delivery in flight.
        outbox = Outbox.open(config.node.data_dir)
        try:
            outbox.forget(job_id)
        finally:
            outbox.close()
        if store.transition(job_id, job.state, JobState.WAITING) is None:
            raise _moved_meanwhile(job)
    return f"job {job_id}: queued for the engine again; {_PICKED_UP}"


def _job(store: JobStore, job_id: int) -> Job:
    job = store.get_job(job_id)
    if job is None:
        raise InputError(f"no job with id {job_id}; `ct2pet-node jobs list` shows the jobs")
    return job


def _why_not_resend(job: Job) -> str:
    if job.state is JobState.FAILED:
        return f"only done jobs can be resent; `ct2pet-node jobs retry {job.id}` replays a failed one"
    if job.state is JobState.SENDING:
        return "its results are being delivered now; resend once it is done"
    return "it has no results yet; only done jobs can be resent"


def _why_not_rerun(job: Job) -> str:
    if job.state is JobState.REFUSED:
        return f"its series was refused ({job.reason}); send the series again to start a new job"
    return "it is still on its way; only done or failed jobs can be rerun"


def _moved_meanwhile(job: Job) -> InputError:
    return InputError(
        f"job {job.id} left {job.state.value} meanwhile; see where it is now with "
        f"`ct2pet-node jobs show {job.id}`"
    )
