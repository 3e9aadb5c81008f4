"""The job store: SQLite in ``data_dir``, the node's one source of truth.

Two tables: ``instances`` (every acknowledged instance, keyed by SOP Instance
UID, so a re-sent instance is recognised and stored once) and ``jobs`` (one
per CT series generation). WAL with ``synchronous=FULL``: a committed row
survives a power cut, and the storage handler answers success only after its
row is committed. The schema version is ``PRAGMA user_version``; opening a
store migrates it forward and refuses one written by a newer release.

Generations: a job is created in RECEIVED on its series' first instance. A
new instance of a series whose latest job is still open (WAITING) reopens
that job (back to RECEIVED; the engine's :meth:`JobStore.claim` then skips
the stale queue entry). A new instance of a series whose latest job has
moved on (PROCESSING and later) starts a new job for the series, which
covers every instance of the series, old and new. A re-sent instance (same
SOP Instance UID) never changes any job.

State changes: :meth:`JobStore.transition` is the only code that writes a
job's state. It checks the move against the lifecycle table
(:data:`ct2pet_node.domain.jobs.TRANSITIONS`), writes it only if the job is
still where the caller saw it (compare-and-set), commits, and only then
tells the observer given to :meth:`JobStore.open` (the node's metrics).

The store is thread-safe: one connection guarded by a lock. Another process
(the CLI) may open the same store concurrently; WAL and a busy timeout let
both proceed.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import structlog

from ct2pet_node.domain.jobs import INITIAL_STATE, Job, JobDetails, JobState, Transition, transition_for
from ct2pet_node.domain.records import InstanceRecord
from ct2pet_node.errors import InputError
from ct2pet_node.spool.atomic import ensure_private_dir
from ct2pet_node.spool.database import Database
from ct2pet_node.spool.jobrows import (
    SCHEMA_VERSION,
    insert_instance,
    insert_job,
    instance_from_row,
    job_from_row,
    merged_details,
    migrate,
    unknown_job,
    write_state,
)

__all__ = ["DB_FILE_NAME", "SCHEMA_VERSION", "JobStore", "TransitionObserver"]

log = structlog.get_logger(__name__)

DB_FILE_NAME = "jobs.sqlite3"

# Told of every state change once it is committed: the job as it is now, and the state it left.
TransitionObserver = Callable[[Job, JobState], None]


class JobStore:
    """Jobs and instances, persisted before they take effect.

    Use :meth:`open`; close with :meth:`close` or a ``with`` block.
    """

    def __init__(
        self,
        path: Path,
        data_dir: Path,
        clock: Callable[[], float] = time.time,
        on_transition: TransitionObserver | None = None,
    ) -> None:
        self.path = path
        self.data_dir = data_dir
        self._clock = clock
        self._on_transition = on_transition
        self._database = Database(path, "job store")
        try:
            migrate(self._database, path)
        except BaseException:
            self._database.close()
            raise

    @classmethod
    def open(
        cls,
        data_dir: Path,
        clock: Callable[[], float] = time.time,
        on_transition: TransitionObserver | None = None,
    ) -> JobStore:
        """Open (creating and migrating as needed) the store in ``data_dir``.

        ``on_transition`` is called after each committed state change made
        through this store (not those of other processes sharing the file).
        """
        directory = ensure_private_dir(Path(data_dir).expanduser())
        return cls(directory / DB_FILE_NAME, directory, clock, on_transition)

    def close(self) -> None:
        self._database.close()

    def __enter__(self) -> JobStore:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._database.transaction()

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return self._database.query(sql, params)

    # Instances ---------------------------------------------------------------------------------

    def has_instance(self, sop_instance_uid: str) -> bool:
        """Whether an instance with this SOP Instance UID was already acknowledged."""
        rows = self._query("SELECT 1 FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,))
        return bool(rows)

    def record_instance(self, record: InstanceRecord) -> bool:
        """Persist one stored instance and attach it to its series' job; False if a duplicate.

        Creates the series' job (RECEIVED) on its first instance; see the
        module docstring for instances arriving after the job moved on.
        """
        now = self._clock()
        reopened: Transition | None = None
        with self._transaction() as db:
            if db.execute(
                "SELECT 1 FROM instances WHERE sop_instance_uid = ?", (record.sop_instance_uid,)
            ).fetchone():
                return False
            job_id, reopened = self._open_job_for(db, record, now)
            insert_instance(db, self.data_dir, record, job_id)
            db.execute(
                "UPDATE jobs SET n_instances = (SELECT count(*) FROM instances WHERE series_uid = ?),"
                " last_instance_at = max(last_instance_at, ?), updated_at = ? WHERE id = ?",
                (record.series_uid, record.received_at, now, job_id),
            )
        if reopened is not None:
            log.info("job_reopened", job_id=job_id, series_uid=record.series_uid)
            self._committed(job_id, reopened, None)
        return True

    def _open_job_for(
        self, db: sqlite3.Connection, record: InstanceRecord, now: float
    ) -> tuple[int, Transition | None]:
        """The job the instance joins (created or reopened as needed), and the move made, if any."""
        latest = db.execute(
            "SELECT id, state, details FROM jobs WHERE series_uid = ? ORDER BY id DESC LIMIT 1",
            (record.series_uid,),
        ).fetchone()
        if latest is not None and JobState(latest["state"]) is INITIAL_STATE:
            return int(latest["id"]), None
        if latest is not None and JobState(latest["state"]).is_open:
            job_id = int(latest["id"])
            move = transition_for(job_id, JobState(latest["state"]), INITIAL_STATE)
            write_state(db, job_id, move, None, latest["details"], now)
            return job_id, move
        job_id = insert_job(db, record, INITIAL_STATE, now)
        log.info(
            "job_created",
            job_id=job_id,
            series_uid=record.series_uid,
            study_uid=record.study_uid,
            previous_job_id=latest["id"] if latest is not None else None,
        )
        return job_id, None

    def instances_of(self, series_uid: str) -> list[InstanceRecord]:
        """Every acknowledged instance of a series, in the order they arrived."""
        rows = self._query(
            "SELECT * FROM instances WHERE series_uid = ? ORDER BY received_at, rowid", (series_uid,)
        )
        return [instance_from_row(self.data_dir, row) for row in rows]

    def set_instance_problem(self, sop_instance_uid: str, problem: str | None) -> None:
        """Keep why an instance cannot be used (e.g. its header is unreadable); None clears it."""
        with self._transaction() as db:
            db.execute(
                "UPDATE instances SET problem = ? WHERE sop_instance_uid = ?", (problem, sop_instance_uid)
            )

    def instance_problems(self, series_uid: str) -> dict[str, str]:
        """SOP Instance UID -> problem, for the series' instances that have one."""
        rows = self._query(
            "SELECT sop_instance_uid, problem FROM instances WHERE series_uid = ? AND problem IS NOT NULL",
            (series_uid,),
        )
        return {row["sop_instance_uid"]: row["problem"] for row in rows}

    # Jobs --------------------------------------------------------------------------------------

    def get_job(self, job_id: int) -> Job | None:
        rows = self._query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return job_from_row(rows[0]) if rows else None

    def job_for_series(self, series_uid: str) -> Job | None:
        """The series' latest job (its current generation), or None for an unknown series."""
        rows = self._query("SELECT * FROM jobs WHERE series_uid = ? ORDER BY id DESC LIMIT 1", (series_uid,))
        return job_from_row(rows[0]) if rows else None

    def list_jobs(self, states: Iterable[JobState] | None = None) -> list[Job]:
        """Jobs in id order, all or only those in ``states``."""
        if states is None:
            rows = self._query("SELECT * FROM jobs ORDER BY id")
        else:
            values = [state.value for state in states]
            marks = ", ".join("?" * len(values))
            rows = self._query(f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY id", values)
        return [job_from_row(row) for row in rows]

    def unfinished_jobs(self) -> list[Job]:
        """Jobs not in a final state, in id order."""
        return self.list_jobs(state for state in JobState if not state.is_final)

    def counts_by_state(self) -> dict[JobState, int]:
        """Number of jobs in each state, every state present."""
        counts = dict.fromkeys(JobState, 0)
        for row in self._query("SELECT state, count(*) AS n FROM jobs GROUP BY state"):
            counts[JobState(row["state"])] = int(row["n"])
        return counts

    def transition(
        self,
        job_id: int,
        source: JobState,
        target: JobState,
        reason: str | None = None,
        *,
        expected_n_instances: int | None = None,
        details: JobDetails | None = None,
    ) -> Job | None:
        """Move job ``job_id`` from ``source`` to ``target``; the one writer of job states.

        The move is checked against the lifecycle table first, then written
        only if the job is still in ``source`` (and, with
        ``expected_n_instances``, only if no instance arrived since the
        caller looked: the router's decision covered exactly those). The
        new ``reason`` replaces the old one; ``details`` are merged into the
        job's. Committed before this returns, so before the move takes effect.

        Returns
        -------
        Job or None
            The job as moved; None when it was no longer in ``source`` (or
            had more instances), and nothing was written.

        Raises
        ------
        IllegalTransition
            The table has no such move (a bug in the caller).
        InputError
            No job has this id.
        """
        move = transition_for(job_id, source, target)
        with self._transaction() as db:
            row = db.execute(
                "SELECT state, details, n_instances FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
            if row is None:
                raise unknown_job(job_id)
            if JobState(row["state"]) is not source:
                return None
            if expected_n_instances is not None and row["n_instances"] != expected_n_instances:
                return None
            write_state(db, job_id, move, reason, merged_details(row["details"], details), self._clock())
        return self._committed(job_id, move, reason)

    def claim(self, job_id: int) -> Job | None:
        """For the engine: WAITING -> PROCESSING (one more attempt); None if no longer WAITING.

        A queue entry whose job was reopened or already taken is thereby skipped.
        """
        return self.transition(job_id, JobState.WAITING, JobState.PROCESSING)

    def _committed(self, job_id: int, move: Transition, reason: str | None) -> Job:
        log.info(
            "job_state_changed",
            job_id=job_id,
            state=move.target.value,
            previous=move.source.value,
            reason=reason,
        )
        job = self.get_job(job_id)
        assert job is not None  # jobs are never deleted
        if self._on_transition is not None:
            try:
                self._on_transition(job, move.source)
            except Exception:  # the move is committed; an observer's failure must not undo the caller
                log.exception("transition_observer_failed", job_id=job_id)
        return job

    def request_force(self, series_uid: str) -> Job:
        """Ask the router to complete a series now; returns the series' job.

        Sets the forced flag on the series' current job when it is still
        RECEIVED (the only state where it changes anything). Raises
        InputError for a series the node has never received.
        """
        with self._transaction() as db:
            row = db.execute(
                "SELECT id, state FROM jobs WHERE series_uid = ? ORDER BY id DESC LIMIT 1", (series_uid,)
            ).fetchone()
            if row is None:
                raise InputError(
                    f"no job for series {series_uid!r}; `ct2pet-node jobs list` shows the known series"
                )
            if JobState(row["state"]) is INITIAL_STATE:
                db.execute(
                    "UPDATE jobs SET forced = 1, updated_at = ? WHERE id = ?", (self._clock(), row["id"])
                )
        job = self.get_job(int(row["id"]))
        assert job is not None
        log.info("job_force_requested", job_id=job.id, series_uid=series_uid, state=job.state.value)
        return job

    def set_output_series_uids(self, job_id: int, uids: Sequence[str]) -> None:
        """Keep the Series Instance UIDs of what the job produced."""
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE jobs SET output_series_uids = ?, updated_at = ? WHERE id = ?",
                (json.dumps(list(uids)), self._clock(), job_id),
            )
            if cursor.rowcount == 0:
                raise unknown_job(job_id)

    # Retention -----------------------------------------------------------------------------------

    def add_details(self, job_id: int, details: JobDetails) -> None:
        """Merge ``details`` into a finished job's without moving it: state and ``updated_at`` stay.

        ``updated_at`` stays so retention keeps counting from when the job finished.
        """
        with self._transaction() as db:
            row = db.execute("SELECT details FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise unknown_job(job_id)
            db.execute(
                "UPDATE jobs SET details = ? WHERE id = ?", (merged_details(row["details"], details), job_id)
            )

    def forget_spooled_series(self, job_id: int, expected: JobState) -> list[Path] | None:
        """Remove the spool files of job ``job_id``'s series and forget its instances; the removed paths.

        Only while the job is still in ``expected`` and its series' latest job
        (None otherwise, nothing touched). Done under the store's write lock:
        an instance arriving meanwhile waits to be recorded, and then starts a
        new job of its own; one re-sent meanwhile is still a duplicate. Once
        forgotten, a re-sent instance is stored and processed again.
        """
        with self._transaction() as db:
            row = db.execute(
                "SELECT state, series_uid, (SELECT max(id) FROM jobs AS j WHERE j.series_uid = jobs.series_uid)"
                " AS latest FROM jobs WHERE id = ?",
                (job_id,),
            ).fetchone()
            if row is None or JobState(row["state"]) is not expected or row["latest"] != job_id:
                return None
            rows = db.execute("SELECT path FROM instances WHERE series_uid = ?", (row["series_uid"],))
            paths = [self.data_dir / r["path"] for r in rows.fetchall()]
            for path in paths:  # files first: a crash between leaves rows of missing files, never the reverse
                path.unlink(missing_ok=True)
            db.execute("DELETE FROM instances WHERE series_uid = ?", (row["series_uid"],))
        return paths
