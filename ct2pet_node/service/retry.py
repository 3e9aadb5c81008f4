"""``jobs retry``: replay a dead-lettered delivery or run a failed job again.

Works on the stores directly, so it acts whether or not the node is running:
a running node's sender polls the outbox and its engine looks for WAITING
jobs nobody queued, so the retry takes effect within seconds.
"""

from __future__ import annotations

import time

from ct2pet_node.config import Config
from ct2pet_node.domain.jobs import Job, JobState
from ct2pet_node.errors import InputError
from ct2pet_node.routing.delivery import EntryState
from ct2pet_node.spool.jobstore import JobStore
from ct2pet_node.spool.outbox import Outbox


def retry_job(config: Config, job_id: int, now: float | None = None) -> str:
    """Retry job ``job_id``; return what was done, in a sentence for the operator."""
    now = time.time() if now is None else now
    with JobStore.open(config.node.data_dir) as store:
        job = store.get_job(job_id)
        if job is None:
            raise InputError(f"no job with id {job_id}; `ct2pet-node jobs list` shows the jobs")
        outbox = Outbox.open(config.node.data_dir)
        try:
            if outbox.job_state(job_id) is EntryState.DEAD:
                return _replay_deliveries(store, outbox, job, now)
        finally:
            outbox.close()
        if job.state is JobState.FAILED:
            if store.transition(job_id, JobState.FAILED, JobState.WAITING) is None:
                raise _moved_meanwhile(job)
            return f"job {job_id}: queued for the engine again (it failed: {job.reason})"
    raise InputError(
        f"job {job_id} is {job.state.value}: only failed jobs and dead-lettered deliveries can be retried"
        + (
            f"; `ct2pet-node jobs resend {job_id}` sends its results again, `jobs rerun {job_id}` remakes them"
            if job.state is JobState.DONE
            else ""
        )
    )


def _replay_deliveries(store: JobStore, outbox: Outbox, job: Job, now: float) -> str:
    # The job moves first, then the outbox: a running sender may deliver a revived entry at once,
    # and its verdict (SENDING -> DONE) must find the job in SENDING. In the other order the
    # verdict found it still FAILED, was ignored, and the job sat in SENDING until a restart.
    if job.state is JobState.FAILED and store.transition(job.id, JobState.FAILED, JobState.SENDING) is None:
        raise _moved_meanwhile(job)
    revived = outbox.retry(job.id, now)
    return f"job {job.id}: {revived} dead-lettered delivery(ies) queued again"


def _moved_meanwhile(job: Job) -> InputError:
    return InputError(
        f"job {job.id} left {job.state.value} while it was being retried; "
        f"see where it is now with `ct2pet-node jobs show {job.id}`"
    )
