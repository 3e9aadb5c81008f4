"""The engine worker's threads: one per job in flight, and the set of jobs they are running.

A local engine has one device and runs one job at a time; a cluster engine
runs ``[engine.ray] jobs_in_flight`` jobs at once, their chunks sharing the
actors. Every thread runs the same loop; the job store's claim (WAITING ->
PROCESSING, compare-and-set) makes sure no job runs twice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class RunningJobs:
    """The ids of the jobs the engine threads are running now; safe to read from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: set[int] = set()

    def add(self, job_id: int) -> None:
        with self._lock:
            self._ids.add(job_id)

    def discard(self, job_id: int) -> None:
        with self._lock:
            self._ids.discard(job_id)

    def ids(self) -> tuple[int, ...]:
        with self._lock:
            return tuple(sorted(self._ids))


class EngineThreads:
    """``count`` threads running ``loop``, started together and joined within one deadline."""

    def __init__(self, loop: Callable[[], None], count: int, name: str = "engine") -> None:
        if count < 1:
            raise ValueError(f"the engine needs at least one thread, got {count}")
        self.loop = loop
        self.count = count
        self.name = name
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        # One thread keeps the plain name the logs and thread dumps always showed.
        names = [self.name] if self.count == 1 else [f"{self.name}-{n}" for n in range(self.count)]
        self._threads = [threading.Thread(target=self.loop, name=name, daemon=True) for name in names]
        for thread in self._threads:
            thread.start()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for every thread, ``timeout`` seconds for all of them together; True when all ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)
