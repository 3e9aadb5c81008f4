"""One SQLite file as the node keeps its durable state: private, WAL, synchronous FULL.

Shared by the job store and the outbox so both open, lock and fail the same
way: a write commits to disk before the caller acts on it, and every SQLite
error becomes a :class:`StorageError` naming the file.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ct2pet_node.errors import StorageError

PRIVATE_FILE_MODE = 0o600
BUSY_TIMEOUT_MS = 10_000


class Database:
    """A connection shared between threads behind one re-entrant lock.

    Parameters
    ----------
    path : pathlib.Path
        The database file; created 0600 when missing (SQLite gives its -wal
        and -shm files the database's mode).
    what : str
        How messages name it, e.g. ``"job store"``.
    """

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        self._lock = threading.RLock()
        try:
            if not path.exists():
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE_MODE))
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.row_factory = sqlite3.Row
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.execute("PRAGMA foreign_keys = ON")
        except (OSError, sqlite3.Error) as error:
            raise StorageError(f"cannot open {what} {path}: {error}; check data_dir and its owner") from error

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any exception."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as error:
                raise StorageError(
                    f"{self.what} {self.path}: {error}; check data_dir and free space"
                ) from error

    def query(self, sql: str, params: Sequence[object] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.Error as error:
                raise StorageError(f"{self.what} {self.path}: {error}") from error

    def execute_script(self, script: str) -> None:
        """Run schema statements outside a transaction (``CREATE ... IF NOT EXISTS``)."""
        with self._lock:
            try:
                self._db.executescript(script)
            except sqlite3.Error as error:
                raise StorageError(f"{self.what} {self.path}: {error}") from error
