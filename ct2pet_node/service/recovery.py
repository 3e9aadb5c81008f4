"""Job states put right at start-up, and the sender's verdicts on jobs it delivered.

:func:`recover_jobs` is the one place where a node coming back after a crash
or a stop moves jobs; :class:`~ct2pet_node.service.server.Server` runs it
before any thread starts, so no engine, router or sender sees a job half-way:

- PROCESSING (the engine died mid-job) goes back to WAITING; its
  checkpoints are reused.
- SENDING is settled from the outbox: every entry delivered -> DONE, one
  dead-lettered -> FAILED, still pending -> left to the sender. Without
  any entry (a crash between the SENDING write and the outbox write) the
  result files are queued again, or the job is DONE when no destination is
  configured, or FAILED when the files are gone.
- RECEIVED and WAITING keep their state: the router re-reads and
  re-enqueues them (:meth:`~ct2pet_node.service.router.Router.recover`).

The deciding part, :func:`decide_sending`, takes values and returns one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from ct2pet_node.domain.jobs import JobDetails, JobState
from ct2pet_node.routing.delivery import EntryState
from ct2pet_node.spool.jobstore import JobStore
from ct2pet_node.spool.outbox import Outbox

log = structlog.get_logger(__name__)

Submit = Callable[[int, Sequence[Path]], bool]


@dataclass(frozen=True, slots=True)
class SendingOutcome:
    """What becomes of a job found in SENDING at start-up.

    ``target`` None: it stays SENDING (its deliveries go on, or its files
    are queued again when ``resubmit``).
    """

    target: JobState | None
    reason: str | None = None
    delivery: str | None = None
    resubmit: bool = False


def decide_sending(
    delivery: EntryState | None, results_dir: Path | None, files_found: bool, destinations_configured: bool
) -> SendingOutcome:
    """Settle a SENDING job from its outbox state (None: no entry) and what lies in its results."""
    if delivery is EntryState.DELIVERED:
        return SendingOutcome(JobState.DONE)
    if delivery is EntryState.DEAD:
        return SendingOutcome(JobState.FAILED, reason="delivery failed")
    if delivery is not None:
        return SendingOutcome(None)
    if not files_found:
        where = results_dir if results_dir is not None else "no results folder was recorded"
        return SendingOutcome(
            JobState.FAILED,
            reason=f"results missing after restart (looked in {where}); run `ct2pet-node jobs retry`",
        )
    if not destinations_configured:
        return SendingOutcome(
            JobState.DONE, delivery="no destination configured: results stay in results_dir"
        )
    return SendingOutcome(None, resubmit=True)


def recover_jobs(store: JobStore, outbox: Outbox, submit: Submit, destinations_configured: bool) -> None:
    """Move every job a crash or a stop left half-way; see the module docstring."""
    for job in store.list_jobs([JobState.PROCESSING]):
        details = JobDetails(recovered_from=JobState.PROCESSING)
        if store.transition(job.id, JobState.PROCESSING, JobState.WAITING, details=details):
            log.warning("job_requeued_after_crash", job_id=job.id, series_uid=job.series_uid)
    for job in store.list_jobs([JobState.SENDING]):
        delivery = outbox.job_state(job.id)
        results = job.details.results_dir
        files = result_files(results) if delivery is None else []
        outcome = decide_sending(delivery, results, bool(files), destinations_configured)
        if outcome.resubmit:
            if submit(job.id, files):
                log.info("delivery_requeued", job_id=job.id, files=len(files))
        elif outcome.target is not None:
            store.transition(
                job.id,
                JobState.SENDING,
                outcome.target,
                outcome.reason,
                details=JobDetails(delivery=outcome.delivery),
            )


def settle_delivery(store: JobStore, job_id: int, failure: str | None) -> None:
    """The sender's verdict on a job: SENDING -> DONE (``failure`` None), or FAILED saying why."""
    state = JobState.DONE if failure is None else JobState.FAILED
    reason = None if failure is None else f"delivery failed: {failure}"
    if store.transition(job_id, JobState.SENDING, state, reason) is None:
        job = store.get_job(job_id)
        log.warning(
            "delivery_verdict_ignored",
            job_id=job_id,
            verdict=state.value,
            state=None if job is None else job.state.value,
        )


def result_files(results: Path | None) -> list[Path]:
    """The DICOM files of a job's results folder (one sub-folder per output kind), sorted."""
    return sorted(results.glob("*/*.dcm")) if results is not None and results.is_dir() else []
