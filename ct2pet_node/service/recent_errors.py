"""The last warnings and errors, kept in memory for ``ct2pet-node status``."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

# Fields safe to show: identifiers and reasons, never free text from headers.
SAFE_FIELDS = ("job_id", "series_uid", "sop_instance_uid", "destination", "reason", "status", "error")


@dataclass(frozen=True, slots=True)
class LoggedProblem:
    """One warning or error as ``status`` shows it: the event and its safe fields (as text).

    Attributes
    ----------
    time : float
        Seconds since the epoch.
    fields : tuple of (name, value)
        Those of :data:`SAFE_FIELDS` the event carried, in that order.
    """

    time: float
    level: str
    logger: str
    event: str
    fields: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> dict[str, object]:
        return {"time": self.time, "level": self.level, "logger": self.logger, "event": self.event} | dict(
            self.fields
        )

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> LoggedProblem:
        return cls(
            time=float(str(data.get("time") or 0.0)),
            level=str(data.get("level", "")),
            logger=str(data.get("logger", "")),
            event=str(data.get("event", "")),
            fields=tuple((key, str(data[key])) for key in SAFE_FIELDS if key in data),
        )

    def field(self, name: str) -> str | None:
        return dict(self.fields).get(name)


class RecentErrors(logging.Handler):
    """A logging handler that remembers the last ``capacity`` records at WARNING or above."""

    def __init__(self, capacity: int = 20) -> None:
        super().__init__(level=logging.WARNING)
        self._records: deque[LoggedProblem] = deque(maxlen=capacity)
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.msg if isinstance(record.msg, dict) else {"event": record.getMessage()}
        entry = LoggedProblem(
            time=time.time(),
            level=record.levelname.lower(),
            logger=record.name,
            event=str(message.get("event", "")),
            fields=tuple((key, str(message[key])) for key in SAFE_FIELDS if key in message),
        )
        with self._guard:
            self._records.append(entry)

    def snapshot(self) -> tuple[LoggedProblem, ...]:
        with self._guard:
            return tuple(self._records)
