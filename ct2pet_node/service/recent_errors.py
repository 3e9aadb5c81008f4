"""The last warnings and errors, kept in memory for ``ct2pet-node status``."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

# Fields safe to show: identifiers and reasons, never free text from headers.
_SAFE_FIELDS = ("job_id", "series_uid", "sop_instance_uid", "destination", "reason", "status", "error")


class RecentErrors(logging.Handler):
    """A logging handler that remembers the last ``capacity`` records at WARNING or above."""

    def __init__(self, capacity: int = 20) -> None:
        super().__init__(level=logging.WARNING)
        self._records: deque[dict[str, Any]] = deque(maxlen=capacity)
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.msg if isinstance(record.msg, dict) else {"event": record.getMessage()}
        entry: dict[str, Any] = {
            "time": time.time(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": str(message.get("event", "")),
        }
        entry.update({key: str(message[key]) for key in _SAFE_FIELDS if key in message})
        with self._guard:
            self._records.append(entry)

    def snapshot(self) -> list[dict[str, Any]]:
        with self._guard:
            return list(self._records)
