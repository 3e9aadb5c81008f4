"""Retention: removing the files of finished jobs once ``[retention]`` says they were kept long enough.

One code path for both callers: the running node's :class:`Retention` thread
(once at start, then every ``interval_minutes``) and ``ct2pet-node purge``
call :meth:`Retention.apply`. What may go is decided by
:func:`ct2pet_node.routing.retention.decide_purge` from the job record and the
outbox, re-read just before each job's files are touched; this module does
the file work and notes it on the job (its record stays, with
``details.purged`` saying what went and when).
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog

from ct2pet_node.config import Config
from ct2pet_node.domain.jobs import Job, JobDetails, JobState
from ct2pet_node.routing.retention import JobFiles, PurgeDecision, decide_purge
from ct2pet_node.spool.jobstore import JobStore
from ct2pet_node.spool.outbox import Outbox

log = structlog.get_logger(__name__)

# Only these states can ever let files go (routing.retention); other jobs are not even read twice.
_PURGEABLE_STATES = (JobState.DONE, JobState.REFUSED)


@dataclass(frozen=True, slots=True)
class Purge:
    """What goes (or, in a dry run, would go) of one job; ``results_dir`` None: its results stay."""

    job_id: int
    series_uid: str
    spool_files: tuple[Path, ...]
    results_dir: Path | None
    bytes: int
    why: str

    def describe(self) -> str:
        parts = []
        if self.spool_files:
            parts.append(f"spool ({len(self.spool_files)} files)")
        if self.results_dir is not None:
            parts.append(f"results {self.results_dir}")
        return f"job {self.job_id}: {' and '.join(parts)}, {self.bytes / 1e6:.1f} MB ({self.why})"


class Retention:
    """Applies ``[retention]`` to one data directory's job store, outbox, spool and results.

    Parameters
    ----------
    clock : callable
        Seconds since the epoch (replaced in tests).
    """

    def __init__(
        self, config: Config, store: JobStore, outbox: Outbox, clock: Callable[[], float] = time.time
    ) -> None:
        self.config = config
        self.store = store
        self.outbox = outbox
        self._clock = clock
        self._results_root = config.node.data_dir / "results"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- one pass --------------------------------------------------------------------------------

    def apply(self, *, dry_run: bool = False) -> list[Purge]:
        """Remove what may go now (nothing with ``dry_run``); what was (or would be) removed."""
        now = self._clock()
        done: list[Purge] = []
        for listed in self.store.list_jobs(_PURGEABLE_STATES):
            if self._stop.is_set():  # the node is stopping: the rest waits for the next pass
                break
            # Re-read: the list may be minutes old by the time a big pass reaches this job.
            job = self.store.get_job(listed.id)
            if job is None:
                continue
            decision = decide_purge(self._facts(job), self.config.retention, now)
            if not decision.anything:
                continue
            purge = self._plan(job, decision)
            if not dry_run:
                purge = self._remove(job, purge, now)
            if purge.spool_files or purge.results_dir is not None:
                done.append(purge)
        if done and not dry_run:
            log.info("retention_applied", jobs=len(done), bytes=sum(p.bytes for p in done))
        return done

    def _facts(self, job: Job) -> JobFiles:
        latest = self.store.job_for_series(job.series_uid)
        return JobFiles(
            job_id=job.id,
            state=job.state,
            finished_at=job.updated_at,
            delivery=self.outbox.job_state(job.id),
            latest_of_series=latest is not None and latest.id == job.id,
            spool_kept=job.details.spool_purged_at is None,
            results_kept=job.details.results_purged_at is None and self._results_of(job) is not None,
        )

    def _results_of(self, job: Job) -> Path | None:
        """The job's results folder, if it exists and lies where the engine writes (never elsewhere)."""
        folder = job.details.results_dir
        if folder is None or folder.resolve().parent != self._results_root.resolve() or not folder.is_dir():
            return None
        return folder

    def _plan(self, job: Job, decision: PurgeDecision) -> Purge:
        spool = tuple(r.path for r in self.store.instances_of(job.series_uid)) if decision.spool else ()
        results = self._results_of(job) if decision.results else None
        files = [*spool, *(results.rglob("*") if results is not None else ())]
        size = sum(path.stat().st_size for path in files if path.is_file())
        return Purge(job.id, job.series_uid, spool, results, size, decision.why)

    def _remove(self, job: Job, purge: Purge, now: float) -> Purge:
        spool: tuple[Path, ...] = ()
        if purge.spool_files:
            removed = self.store.forget_spooled_series(job.id, job.state)
            spool = tuple(removed or ())
            _remove_empty_parents(spool)
        if purge.results_dir is not None:
            shutil.rmtree(purge.results_dir)
        purge = Purge(job.id, job.series_uid, spool, purge.results_dir, purge.bytes, purge.why)
        if spool or purge.results_dir is not None:
            self.store.add_details(job.id, _purge_note(job.details, purge, now))
            log.info(
                "job_files_purged",
                job_id=job.id,
                series_uid=job.series_uid,
                spool_files=len(spool),
                results=purge.results_dir is not None,
                bytes=purge.bytes,
            )
        return purge

    # -- the running node's thread ---------------------------------------------------------------

    def start(self) -> None:
        """Apply retention now and then every ``interval_minutes``, on a thread of its own."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="retention", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> bool:
        """Stop after the job being purged, if any; True when the thread ended."""
        self._stop.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        interval = self.config.retention.interval_minutes * 60.0
        while not self._stop.is_set():
            try:
                self.apply()
            except Exception:  # a file or store failure: logged, tried again next interval
                log.exception("retention_failed")
            self._stop.wait(interval)


def _purge_note(before: JobDetails, purge: Purge, now: float) -> JobDetails:
    spool_at = now if purge.spool_files else before.spool_purged_at
    results_at = now if purge.results_dir is not None else before.results_purged_at
    said = []
    if spool_at is not None:
        what = f" ({len(purge.spool_files)} files)" if purge.spool_files else ""
        said.append(f"received CT{what} purged {_when(spool_at)}")
    if results_at is not None:
        said.append(f"results purged {_when(results_at)}")
    note = "; ".join(said) + " by retention ([retention] in the configuration)"
    return JobDetails(spool_purged_at=spool_at, results_purged_at=results_at, purged=note)


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _remove_empty_parents(paths: tuple[Path, ...]) -> None:
    """Remove the series and study folders the files leave empty; a folder with anything in it stays."""
    for folder in sorted({p.parent for p in paths} | {p.parent.parent for p in paths}, reverse=True):
        try:
            folder.rmdir()
        except OSError:  # not empty (a new instance arrived), or already gone
            # An instance of the series arriving between its folder's creation and its write
            # is answered with a failure and re-sent by its sender: never lost.
            continue
