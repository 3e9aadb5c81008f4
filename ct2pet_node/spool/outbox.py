"""The durable outbox: what must reach which destination, and how far it got.

One entry per (job id, destination) holds the job's output files, each with a
delivered flag, so a retry re-sends only what the destination has not
acknowledged. Entries live in their own SQLite file, ``outbox.sqlite3`` in
the data directory (WAL, ``synchronous=FULL``, mode 0600), apart from the
job store, so delivery bookkeeping never contends with reception.

States: ``pending`` (due at ``next_attempt_at``) -> ``sending`` (an
association is open) -> ``delivered`` | ``pending`` again | ``dead`` (after
the last retry or a permanent refusal; ``retry(job_id)`` revives it). An
entry found ``sending`` when the outbox is opened was interrupted by a crash
and is pending again; the instances it acknowledged before the crash were
not recorded and are re-sent, which is harmless because output UIDs are
deterministic (the PACS replaces or reports a duplicate).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from ct2pet_node.errors import StorageError
from ct2pet_node.routing.delivery import AttemptDecision, EntryState, InstanceResult
from ct2pet_node.spool.atomic import ensure_private_dir
from ct2pet_node.spool.database import Database

log = structlog.get_logger(__name__)

OUTBOX_FILE_NAME = "outbox.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    job_id INTEGER NOT NULL,
    destination TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,
    last_error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (job_id, destination)
);
CREATE INDEX IF NOT EXISTS entries_due ON entries (state, next_attempt_at);
CREATE TABLE IF NOT EXISTS files (
    job_id INTEGER NOT NULL,
    destination TEXT NOT NULL,
    path TEXT NOT NULL,
    delivered INTEGER NOT NULL DEFAULT 0,
    status INTEGER,
    PRIMARY KEY (job_id, destination, path),
    FOREIGN KEY (job_id, destination) REFERENCES entries (job_id, destination)
);
CREATE TABLE IF NOT EXISTS destinations (
    name TEXT PRIMARY KEY,
    last_attempt_at REAL,
    last_result TEXT,
    last_success_at REAL,
    last_error TEXT
);
"""


@dataclass(frozen=True, slots=True)
class OutboxFile:
    """One file of an entry; ``status`` is the last C-STORE status received for it."""

    path: Path
    delivered: bool
    status: int | None


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One job's files for one destination.

    Attributes
    ----------
    next_attempt_at : float or None
        Seconds since the epoch; None once delivered or dead.
    """

    job_id: int
    destination: str
    state: EntryState
    attempts: int
    next_attempt_at: float | None
    last_error: str | None
    files: tuple[OutboxFile, ...]

    @property
    def undelivered_paths(self) -> tuple[Path, ...]:
        return tuple(f.path for f in self.files if not f.delivered)


@dataclass(frozen=True, slots=True)
class DestinationSummary:
    """Delivery health of one destination, for ``status``; times are seconds since the epoch."""

    name: str
    pending: int
    sending: int
    delivered: int
    dead: int
    last_attempt_at: float | None
    last_result: str | None
    last_success_at: float | None
    last_error: str | None


class Outbox:
    """The outbox file; safe to share between threads, and between processes through SQLite locking."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            ensure_private_dir(path.parent)
        except (OSError, StorageError) as error:
            raise StorageError(
                f"outbox {path} cannot be created ({error}); check that the data directory is writable"
            ) from error
        # It names job files and PACS addresses: private like the job store.
        self._database = Database(path, "outbox")
        try:
            self._database.execute_script(_SCHEMA)
        except BaseException:
            self._database.close()
            raise

    @classmethod
    def open(cls, data_dir: Path) -> Outbox:
        """The outbox of a data directory."""
        return cls(data_dir / OUTBOX_FILE_NAME)

    def close(self) -> None:
        self._database.close()

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._database.transaction()

    def _query(self, sql: str, args: Sequence[object] = ()) -> list[Any]:
        return self._database.query(sql, args)

    # -- writing -------------------------------------------------------------

    def recover(self, now: float) -> int:
        """Make entries left ``sending`` by a crash pending again, due now; returns how many."""
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE entries SET state = ?, next_attempt_at = ?, updated_at = ? WHERE state = ?",
                (EntryState.PENDING.value, now, now, EntryState.SENDING.value),
            )
            count = cursor.rowcount
        if count:
            log.info("outbox_recovered", entries=count)
        return count

    def enqueue(self, job_id: int, destination: str, paths: Sequence[Path], now: float) -> bool:
        """Add a job's files for a destination, due now; returns whether anything was new.

        Idempotent: files already in the entry keep their delivered flag; new
        files are added undelivered, and re-open a delivered entry.
        """
        with self._transaction() as db:
            created = db.execute(
                "INSERT OR IGNORE INTO entries (job_id, destination, state, attempts, next_attempt_at,"
                " created_at, updated_at) VALUES (?, ?, ?, 0, ?, ?, ?)",
                (job_id, destination, EntryState.PENDING.value, now, now, now),
            ).rowcount
            added = 0
            for path in paths:
                added += db.execute(
                    "INSERT OR IGNORE INTO files (job_id, destination, path) VALUES (?, ?, ?)",
                    (job_id, destination, str(Path(path).absolute())),
                ).rowcount
            if added and not created:
                db.execute(
                    "UPDATE entries SET state = ?, next_attempt_at = ?, updated_at = ?"
                    " WHERE job_id = ? AND destination = ? AND state = ?",
                    (EntryState.PENDING.value, now, now, job_id, destination, EntryState.DELIVERED.value),
                )
        return bool(created or added)

    def mark_sending(self, job_id: int, destination: str, now: float) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE entries SET state = ?, updated_at = ? WHERE job_id = ? AND destination = ?",
                (EntryState.SENDING.value, now, job_id, destination),
            )

    def mark_results(
        self,
        job_id: int,
        destination: str,
        results: Sequence[InstanceResult],
        decision: AttemptDecision,
        now: float,
    ) -> None:
        """Record one attempt: acknowledged files, the entry's next state, the destination's health."""
        with self._transaction() as db:
            for result in results:
                db.execute(
                    "UPDATE files SET delivered = MAX(delivered, ?), status = COALESCE(?, status)"
                    " WHERE job_id = ? AND destination = ? AND path = ?",
                    (
                        int(result.outcome.acknowledged),
                        result.status,
                        job_id,
                        destination,
                        str(result.path.absolute()),
                    ),
                )
            db.execute(
                "UPDATE entries SET state = ?, attempts = ?, next_attempt_at = ?, last_error = ?,"
                " updated_at = ? WHERE job_id = ? AND destination = ?",
                (
                    decision.state.value,
                    decision.attempts,
                    decision.next_attempt_at,
                    decision.error,
                    now,
                    job_id,
                    destination,
                ),
            )
            success = decision.state is EntryState.DELIVERED
            db.execute(
                "INSERT INTO destinations (name, last_attempt_at, last_result, last_success_at, last_error)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET"
                " last_attempt_at = excluded.last_attempt_at, last_result = excluded.last_result,"
                " last_success_at = COALESCE(excluded.last_success_at, last_success_at),"
                " last_error = COALESCE(excluded.last_error, last_error)",
                (destination, now, decision.state.value, now if success else None, decision.error),
            )

    def retry(self, job_id: int, now: float, destination: str | None = None) -> int:
        """Revive a job's dead entries (optionally one destination's): pending, due now, attempts reset.

        Returns
        -------
        int
            Entries revived; 0 when the job has no dead entry.
        """
        sql = (
            "UPDATE entries SET state = ?, attempts = 0, next_attempt_at = ?, updated_at = ?"
            " WHERE job_id = ? AND state = ?"
        )
        args: list[object] = [EntryState.PENDING.value, now, now, job_id, EntryState.DEAD.value]
        if destination is not None:
            sql += " AND destination = ?"
            args.append(destination)
        with self._transaction() as db:
            count = db.execute(sql, args).rowcount
        log.info("outbox_retry", job_id=job_id, destination=destination, entries=count)
        return count

    def resend(self, job_id: int, destination: str, paths: Sequence[Path], now: float) -> None:
        """Queue ``paths`` for ``destination`` again, due now, even the files it already acknowledged.

        For ``jobs resend`` only: the operator asked for a second copy, so the
        delivered flags that make :meth:`enqueue` idempotent are cleared here.
        """
        with self._transaction() as db:
            db.execute(
                "INSERT INTO entries (job_id, destination, state, attempts, next_attempt_at, created_at,"
                " updated_at) VALUES (?, ?, ?, 0, ?, ?, ?) ON CONFLICT (job_id, destination) DO UPDATE"
                " SET state = excluded.state, attempts = 0, next_attempt_at = excluded.next_attempt_at,"
                " last_error = NULL, updated_at = excluded.updated_at",
                (job_id, destination, EntryState.PENDING.value, now, now, now),
            )
            db.execute("DELETE FROM files WHERE job_id = ? AND destination = ?", (job_id, destination))
            db.executemany(
                "INSERT INTO files (job_id, destination, path) VALUES (?, ?, ?)",
                [(job_id, destination, str(Path(path).absolute())) for path in paths],
            )
        log.info("outbox_resend", job_id=job_id, destination=destination, files=len(paths))

    def forget(self, job_id: int) -> int:
        """Drop every entry of a job (``jobs rerun``: its next results are new deliveries); how many."""
        with self._transaction() as db:
            db.execute("DELETE FROM files WHERE job_id = ?", (job_id,))
            count = db.execute("DELETE FROM entries WHERE job_id = ?", (job_id,)).rowcount
        log.info("outbox_forgotten", job_id=job_id, entries=count)
        return count

    # -- reading -------------------------------------------------------------

    def _entries(self, where: str, args: Sequence[object]) -> list[OutboxEntry]:
        rows = self._query(
            "SELECT job_id, destination, state, attempts, next_attempt_at, last_error FROM entries"
            f" WHERE {where} ORDER BY next_attempt_at, job_id, destination",
            args,
        )
        entries = []
        for job_id, destination, state, attempts, next_at, error in rows:
            files = self._query(
                "SELECT path, delivered, status FROM files"
                " WHERE job_id = ? AND destination = ? ORDER BY path",
                (job_id, destination),
            )
            entries.append(
                OutboxEntry(
                    job_id=int(job_id),
                    destination=str(destination),
                    state=EntryState(state),
                    attempts=int(attempts),
                    next_attempt_at=None if next_at is None else float(next_at),
                    last_error=None if error is None else str(error),
                    files=tuple(
                        OutboxFile(Path(path), bool(delivered), status) for path, delivered, status in files
                    ),
                )
            )
        return entries

    def due(self, now: float) -> list[OutboxEntry]:
        """Pending entries whose next attempt is at or before ``now``, earliest first."""
        return self._entries("state = ? AND next_attempt_at <= ?", (EntryState.PENDING.value, now))

    def next_due_at(self) -> float | None:
        """The earliest next attempt of any pending entry, seconds since the epoch."""
        rows = self._query(
            "SELECT MIN(next_attempt_at) FROM entries WHERE state = ?", (EntryState.PENDING.value,)
        )
        value = rows[0][0]
        return None if value is None else float(value)

    def entries(self, job_id: int) -> list[OutboxEntry]:
        """Every entry of a job, for ``jobs show``."""
        return self._entries("job_id = ?", (job_id,))

    def dead_letters(self) -> list[OutboxEntry]:
        return self._entries("state = ?", (EntryState.DEAD.value,))

    def job_state(self, job_id: int) -> EntryState | None:
        """A job's delivery as a whole: dead if any entry is, delivered if all are; None without entries."""
        rows = self._query("SELECT state FROM entries WHERE job_id = ?", (job_id,))
        states = {EntryState(row[0]) for row in rows}
        if not states:
            return None
        for state in (EntryState.DEAD, EntryState.SENDING, EntryState.PENDING):
            if state in states:
                return state
        return EntryState.DELIVERED

    def summary(self) -> list[DestinationSummary]:
        """Per destination: entries by state and the last attempt's result, for ``status``."""
        counts: dict[str, dict[str, int]] = {}
        for name, state, count in self._query(
            "SELECT destination, state, COUNT(*) FROM entries GROUP BY destination, state"
        ):
            counts.setdefault(str(name), {})[str(state)] = int(count)
        health = {
            str(row[0]): row[1:]
            for row in self._query(
                "SELECT name, last_attempt_at, last_result, last_success_at, last_error FROM destinations"
            )
        }
        summaries = []
        for name in sorted(set(counts) | set(health)):
            by_state = counts.get(name, {})
            attempt_at, result, success_at, error = health.get(name, (None, None, None, None))
            summaries.append(
                DestinationSummary(
                    name=name,
                    pending=by_state.get(EntryState.PENDING.value, 0),
                    sending=by_state.get(EntryState.SENDING.value, 0),
                    delivered=by_state.get(EntryState.DELIVERED.value, 0),
                    dead=by_state.get(EntryState.DEAD.value, 0),
                    last_attempt_at=None if attempt_at is None else float(attempt_at),
                    last_result=None if result is None else str(result),
                    last_success_at=None if success_at is None else float(success_at),
                    last_error=None if error is None else str(error),
                )
            )
        return summaries
