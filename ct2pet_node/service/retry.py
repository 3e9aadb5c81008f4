"""``jobs retry``: replay a dead-lettered delivery or run a failed job again.

Works on the stores directly, so it acts whether or not the node is running:
a running node's sender polls the outbox and its router re-offers WAITING
jobs to the engine, so the retry takes effect within seconds.
"""

from __future__ import annotations

import time

from ct2pet_node.config import Config
from ct2pet_node.domain.jobs import JobState
from ct2pet_node.errors import InputError
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
            revived = outbox.retry(job_id, now)
        finally:
            outbox.close()
        if revived:
            if job.state is JobState.FAILED:
                store.set_state(job_id, JobState.SENDING, None)
            return f"job {job_id}: {revived} dead-lettered delivery(ies) queued again"
        if job.state is JobState.FAILED:
            store.set_state(job_id, JobState.WAITING, None)
            return f"job {job_id}: queued for the engine again (it failed: {job.reason})"
    raise InputError(
        f"job {job_id} is {job.state.value}: only failed jobs and dead-lettered deliveries can be retried"
    )
