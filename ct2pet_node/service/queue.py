"""The engine's job queue: job ids only, the job store stays the source of truth.

A queue entry is a hint ("job N may be ready"); the engine worker claims the
job in the store (WAITING -> PROCESSING) before working on it and skips the
entry when the claim fails. So a lost queue loses nothing: the router
re-enqueues every WAITING job when it starts.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Protocol

from ct2pet_node.errors import StorageError

DEFAULT_CAPACITY = 4096


class EngineQueue(Protocol):
    """Where the router puts job ids and the engine worker takes them."""

    def put(self, job_id: int) -> None:
        """Add a job id; never blocks. Raises StorageError when the queue cannot take it."""
        ...

    def get(self, timeout: float | None) -> int | None:
        """The oldest job id, waiting up to ``timeout`` seconds (None: forever); None on timeout."""
        ...

    def depth(self) -> int:
        """How many job ids are waiting."""
        ...


class InProcessQueue:
    """Bounded, thread-safe FIFO of job ids; putting an id already waiting is a no-op.

    Parameters
    ----------
    capacity : int
        Most ids waiting at once. Ids are tiny; the bound only catches a
        runaway producer. A full queue raises StorageError on ``put``; the
        router keeps the id and offers it again later.
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"queue capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._ids: deque[int] = deque()
        self._condition = threading.Condition()

    def put(self, job_id: int) -> None:
        with self._condition:
            if job_id in self._ids:
                return
            if len(self._ids) >= self.capacity:
                raise StorageError(
                    f"engine queue is full ({self.capacity} jobs waiting); job {job_id} stays WAITING "
                    "and is offered again"
                )
            self._ids.append(job_id)
            self._condition.notify()

    def get(self, timeout: float | None = None) -> int | None:
        with self._condition:
            if not self._condition.wait_for(lambda: bool(self._ids), timeout=timeout):
                return None
            return self._ids.popleft()

    def depth(self) -> int:
        with self._condition:
            return len(self._ids)
