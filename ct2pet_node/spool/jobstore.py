"""The job store: SQLite in ``data_dir``, the node's one source of truth.

Two tables: ``instances`` (every acknowledged instance, keyed by SOP Instance
UID, so a re-sent instance is recognised and stored once) and ``jobs`` (one
per CT series generation). WAL with ``synchronous=FULL``: a committed row
survives a power cut, and the storage handler answers success only after its
row is committed. The schema version is ``PRAGMA user_version``; opening a
store migrates it forward and refuses one written by a newer release.

Generations: a job is created in RECEIVED on its series' first instance. A
new instance of a series whose latest job is WAITING reopens that job
(back to RECEIVED; the engine's :meth:`JobStore.claim` then skips the stale
queue entry). A new instance of a series whose latest job is PROCESSING,
SENDING, DONE, REFUSED or FAILED starts a new job for the series, which
covers every instance of the series, old and new. A re-sent instance (same
SOP Instance UID) never changes any job.

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

from ct2pet_node.domain.jobs import Job, JobState
from ct2pet_node.domain.records import InstanceRecord
from ct2pet_node.domain.uids import AeTitle, SeriesUid, SopInstanceUid, StudyUid, Uid
from ct2pet_node.errors import InputError, StorageError
from ct2pet_node.spool.atomic import ensure_private_dir
from ct2pet_node.spool.database import Database

log = structlog.get_logger(__name__)

DB_FILE_NAME = "jobs.sqlite3"
SCHEMA_VERSION = 1
_BUSY_TIMEOUT_MS = 10_000

_SCHEMA_V1 = """
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    n_instances INTEGER NOT NULL DEFAULT 0,
    output_series_uids TEXT NOT NULL DEFAULT '[]',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    last_instance_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    forced INTEGER NOT NULL DEFAULT 0,
    details TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX jobs_by_series ON jobs (series_uid, id);
CREATE INDEX jobs_by_state ON jobs (state);
CREATE TABLE instances (
    sop_instance_uid TEXT PRIMARY KEY,
    sop_class_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    modality TEXT NOT NULL,
    transfer_syntax_uid TEXT NOT NULL,
    calling_ae_title TEXT NOT NULL,
    path TEXT NOT NULL,
    received_at REAL NOT NULL,
    job_id INTEGER NOT NULL REFERENCES jobs (id),
    problem TEXT
);
CREATE INDEX instances_by_series ON instances (series_uid);
"""

_MIGRATIONS: dict[int, str] = {0: _SCHEMA_V1}
_OPEN_STATES = (JobState.RECEIVED, JobState.WAITING)


class JobStore:
    """Jobs and instances, persisted before they take effect.

    Use :meth:`open`; close with :meth:`close` or a ``with`` block.
    """

    def __init__(self, path: Path, data_dir: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.data_dir = data_dir
        self._clock = clock
        self._database = Database(path, "job store")
        try:
            self._migrate()
        except BaseException:
            self._database.close()
            raise

    @classmethod
    def open(cls, data_dir: Path, clock: Callable[[], float] = time.time) -> JobStore:
        """Open (creating and migrating as needed) the store in ``data_dir``."""
        directory = ensure_private_dir(Path(data_dir).expanduser())
        return cls(directory / DB_FILE_NAME, directory, clock)

    def close(self) -> None:
        self._database.close()

    def __enter__(self) -> JobStore:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _migrate(self) -> None:
        version = int(self._database.query("PRAGMA user_version")[0][0])
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"job store {self.path} has schema version {version}, newer than this release's "
                f"{SCHEMA_VERSION}; upgrade ct2pet-node or use another data_dir"
            )
        while version < SCHEMA_VERSION:
            with self._transaction() as db:
                for statement in _MIGRATIONS[version].split(";"):
                    if statement.strip():
                        db.execute(statement)
                version += 1
                db.execute(f"PRAGMA user_version = {version}")
            log.info("job_store_migrated", path=str(self.path), schema_version=version)

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
        with self._transaction() as db:
            if db.execute(
                "SELECT 1 FROM instances WHERE sop_instance_uid = ?", (record.sop_instance_uid,)
            ).fetchone():
                return False
            job_id = self._open_job_for(db, record, now)
            db.execute(
                "INSERT INTO instances (sop_instance_uid, sop_class_uid, series_uid, study_uid, modality,"
                " transfer_syntax_uid, calling_ae_title, path, received_at, job_id)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.sop_instance_uid,
                    record.sop_class_uid,
                    record.series_uid,
                    record.study_uid,
                    record.modality,
                    record.transfer_syntax_uid,
                    record.calling_ae_title,
                    self._relative(record.path),
                    record.received_at,
                    job_id,
                ),
            )
            db.execute(
                "UPDATE jobs SET n_instances = (SELECT count(*) FROM instances WHERE series_uid = ?),"
                " last_instance_at = max(last_instance_at, ?), updated_at = ? WHERE id = ?",
                (record.series_uid, record.received_at, now, job_id),
            )
        return True

    def _open_job_for(self, db: sqlite3.Connection, record: InstanceRecord, now: float) -> int:
        latest = db.execute(
            "SELECT id, state FROM jobs WHERE series_uid = ? ORDER BY id DESC LIMIT 1", (record.series_uid,)
        ).fetchone()
        if latest is not None and latest["state"] == JobState.RECEIVED.value:
            return int(latest["id"])
        if latest is not None and latest["state"] == JobState.WAITING.value:
            db.execute(
                "UPDATE jobs SET state = ?, reason = NULL, updated_at = ? WHERE id = ?",
                (JobState.RECEIVED.value, now, latest["id"]),
            )
            log.info("job_reopened", job_id=latest["id"], series_uid=record.series_uid)
            return int(latest["id"])
        cursor = db.execute(
            "INSERT INTO jobs (study_uid, series_uid, state, created_at, updated_at, last_instance_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (record.study_uid, record.series_uid, JobState.RECEIVED.value, now, now, record.received_at),
        )
        job_id = int(cursor.lastrowid or 0)
        log.info(
            "job_created",
            job_id=job_id,
            series_uid=record.series_uid,
            study_uid=record.study_uid,
            previous_job_id=latest["id"] if latest is not None else None,
        )
        return job_id

    def instances_of(self, series_uid: str) -> list[InstanceRecord]:
        """Every acknowledged instance of a series, in the order they arrived."""
        rows = self._query(
            "SELECT * FROM instances WHERE series_uid = ? ORDER BY received_at, rowid", (series_uid,)
        )
        return [self._instance(row) for row in rows]

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
        return self._job(rows[0]) if rows else None

    def job_for_series(self, series_uid: str) -> Job | None:
        """The series' latest job (its current generation), or None for an unknown series."""
        rows = self._query("SELECT * FROM jobs WHERE series_uid = ? ORDER BY id DESC LIMIT 1", (series_uid,))
        return self._job(rows[0]) if rows else None

    def list_jobs(self, states: Iterable[JobState] | None = None) -> list[Job]:
        """Jobs in id order, all or only those in ``states``."""
        if states is None:
            rows = self._query("SELECT * FROM jobs ORDER BY id")
        else:
            values = [state.value for state in states]
            marks = ", ".join("?" * len(values))
            rows = self._query(f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY id", values)
        return [self._job(row) for row in rows]

    def unfinished_jobs(self) -> list[Job]:
        """Jobs not in a final state, in id order."""
        return self.list_jobs(state for state in JobState if not state.is_final)

    def counts_by_state(self) -> dict[JobState, int]:
        """Number of jobs in each state, every state present."""
        counts = dict.fromkeys(JobState, 0)
        for row in self._query("SELECT state, count(*) AS n FROM jobs GROUP BY state"):
            counts[JobState(row["state"])] = int(row["n"])
        return counts

    def set_state(self, job_id: int, state: JobState, reason: str | None = None, **details: object) -> Job:
        """Persist a job's new state; ``details`` are merged into the job's details.

        Raises InputError for an unknown job id.
        """
        updated = self._update_state(job_id, state, reason, details, None, None)
        assert updated is not None  # unconditional: only an unknown id fails, and that raises
        return updated

    def transition(
        self,
        job_id: int,
        expected: JobState,
        state: JobState,
        reason: str | None = None,
        expected_n_instances: int | None = None,
        **details: object,
    ) -> Job | None:
        """Like :meth:`set_state`, but only if the job is still in ``expected``; None otherwise.

        With ``expected_n_instances``, also only if no instance arrived since
        the caller looked (the router's decision covered exactly those).
        """
        return self._update_state(job_id, state, reason, details, expected, expected_n_instances)

    def claim(self, job_id: int) -> Job | None:
        """For the engine: WAITING -> PROCESSING with one more attempt; None if not WAITING.

        A queue entry whose job was reopened or already taken is thereby skipped.
        """
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE jobs SET state = ?, attempts = attempts + 1, updated_at = ? WHERE id = ? AND state = ?",
                (JobState.PROCESSING.value, self._clock(), job_id, JobState.WAITING.value),
            )
            if cursor.rowcount == 0:
                return None
        return self.get_job(job_id)

    def _update_state(
        self,
        job_id: int,
        state: JobState,
        reason: str | None,
        details: dict[str, object],
        expected: JobState | None,
        expected_n_instances: int | None,
    ) -> Job | None:
        with self._transaction() as db:
            row = db.execute(
                "SELECT state, details, n_instances FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
            if row is None:
                raise InputError(f"no job with id {job_id}; list jobs with `ct2pet-node jobs list`")
            if expected is not None and row["state"] != expected.value:
                return None
            if expected_n_instances is not None and row["n_instances"] != expected_n_instances:
                return None
            merged = {**json.loads(row["details"]), **details}
            db.execute(
                "UPDATE jobs SET state = ?, reason = ?, details = ?, updated_at = ?,"
                " forced = CASE WHEN ? IN ('received', 'waiting') THEN forced ELSE 0 END WHERE id = ?",
                (state.value, reason, json.dumps(merged, default=str), self._clock(), state.value, job_id),
            )
        log.info("job_state_changed", job_id=job_id, state=state.value, previous=row["state"], reason=reason)
        return self.get_job(job_id)

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
            if row["state"] == JobState.RECEIVED.value:
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
                raise InputError(f"no job with id {job_id}; list jobs with `ct2pet-node jobs list`")

    # Rows -> values ----------------------------------------------------------------------------

    def _relative(self, path: Path) -> str:
        try:
            return str(Path(path).relative_to(self.data_dir))
        except ValueError:
            return str(path)

    def _instance(self, row: sqlite3.Row) -> InstanceRecord:
        return InstanceRecord(
            sop_instance_uid=SopInstanceUid(row["sop_instance_uid"]),
            sop_class_uid=Uid(row["sop_class_uid"]),
            series_uid=SeriesUid(row["series_uid"]),
            study_uid=StudyUid(row["study_uid"]),
            modality=row["modality"],
            transfer_syntax_uid=Uid(row["transfer_syntax_uid"]),
            calling_ae_title=AeTitle(row["calling_ae_title"]),
            path=self.data_dir / row["path"],
            received_at=float(row["received_at"]),
        )

    @staticmethod
    def _job(row: sqlite3.Row) -> Job:
        return Job(
            id=int(row["id"]),
            study_uid=StudyUid(row["study_uid"]),
            series_uid=SeriesUid(row["series_uid"]),
            state=JobState(row["state"]),
            reason=row["reason"],
            n_instances=int(row["n_instances"]),
            output_series_uids=tuple(json.loads(row["output_series_uids"])),
            created_at=float(row["created_at"]),
            updated_at=float(row["updated_at"]),
            last_instance_at=float(row["last_instance_at"]),
            attempts=int(row["attempts"]),
            forced=bool(row["forced"]),
            details=json.loads(row["details"]),
        )
