"""The job store's file format: its schema, migrations, and rows read back as domain values.

Kept apart from :mod:`ct2pet_node.spool.jobstore` so the store itself reads
as what it does (instances, jobs, the one writer of job states) rather than
how SQLite spells it.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import structlog

from ct2pet_node.domain.jobs import Job, JobDetails, JobState, Transition
from ct2pet_node.domain.records import InstanceRecord
from ct2pet_node.domain.uids import AeTitle, SeriesUid, SopInstanceUid, StudyUid, Uid
from ct2pet_node.errors import InputError, StorageError
from ct2pet_node.spool.database import Database

log = structlog.get_logger(__name__)

SCHEMA_VERSION = 1

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

# Schema version -> the script that takes a store from it to the next version.
_MIGRATIONS: dict[int, str] = {0: _SCHEMA_V1}


def migrate(database: Database, path: Path) -> None:
    """Bring the store at ``path`` to :data:`SCHEMA_VERSION`; refuse one written by a newer release."""
    version = int(database.query("PRAGMA user_version")[0][0])
    if version > SCHEMA_VERSION:
        raise StorageError(
            f"job store {path} has schema version {version}, newer than this release's "
            f"{SCHEMA_VERSION}; upgrade ct2pet-node or use another data_dir"
        )
    while version < SCHEMA_VERSION:
        with database.transaction() as db:
            for statement in _MIGRATIONS[version].split(";"):
                if statement.strip():
                    db.execute(statement)
            version += 1
            db.execute(f"PRAGMA user_version = {version}")
        log.info("job_store_migrated", path=str(path), schema_version=version)


def instance_from_row(data_dir: Path, row: sqlite3.Row) -> InstanceRecord:
    """An ``instances`` row; its path is stored relative to ``data_dir`` where it lies inside it."""
    return InstanceRecord(
        sop_instance_uid=SopInstanceUid(row["sop_instance_uid"]),
        sop_class_uid=Uid(row["sop_class_uid"]),
        series_uid=SeriesUid(row["series_uid"]),
        study_uid=StudyUid(row["study_uid"]),
        modality=row["modality"],
        transfer_syntax_uid=Uid(row["transfer_syntax_uid"]),
        calling_ae_title=AeTitle(row["calling_ae_title"]),
        path=data_dir / row["path"],
        received_at=float(row["received_at"]),
    )


def job_from_row(row: sqlite3.Row) -> Job:
    """A ``jobs`` row."""
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
        details=JobDetails.from_json(json.loads(row["details"])),
    )


def insert_instance(db: sqlite3.Connection, data_dir: Path, record: InstanceRecord, job_id: int) -> None:
    """Add an ``instances`` row for ``record``, joined to job ``job_id``; the inverse of :func:`instance_from_row`."""
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
            _relative(data_dir, record.path),
            record.received_at,
            job_id,
        ),
    )


def insert_job(db: sqlite3.Connection, record: InstanceRecord, state: JobState, now: float) -> int:
    """Add a ``jobs`` row for the series of ``record``, its first instance; the new job's id."""
    cursor = db.execute(
        "INSERT INTO jobs (study_uid, series_uid, state, created_at, updated_at, last_instance_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (record.study_uid, record.series_uid, state.value, now, now, record.received_at),
    )
    return int(cursor.lastrowid or 0)


def write_state(
    db: sqlite3.Connection,
    job_id: int,
    move: Transition,
    reason: str | None,
    details_json: str,
    now: float,
) -> None:
    """Write a checked move into job ``job_id``'s row, with its new reason and (merged) details."""
    db.execute(
        "UPDATE jobs SET state = ?, reason = ?, details = ?, updated_at = ?, attempts = attempts + ?,"
        # A force request is for the job while it is still open; leaving open clears it.
        " forced = CASE WHEN ? THEN forced ELSE 0 END WHERE id = ?",
        (
            move.target.value,
            reason,
            details_json,
            now,
            int(move.counts_attempt),
            move.target.is_open,
            job_id,
        ),
    )


def merged_details(stored_json: str, details: JobDetails | None) -> str:
    """A row's ``details`` with ``details`` merged in, as JSON."""
    # Merged as JSON, so a key this release does not know survives the write.
    return json.dumps({**json.loads(stored_json), **(details.to_json() if details else {})})


def unknown_job(job_id: int) -> InputError:
    return InputError(f"no job with id {job_id}; list jobs with `ct2pet-node jobs list`")


def _relative(data_dir: Path, path: Path) -> str:
    # Inside data_dir a path is kept relative to it, so a data_dir moved whole keeps its spool.
    try:
        return str(Path(path).relative_to(data_dir))
    except ValueError:
        return str(path)
