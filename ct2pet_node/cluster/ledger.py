"""The node's account of its actors: which chunk went where, what came back when, who died.

The driver process tells the node each dispatch and return (see
``driver``'s messages); :class:`RayTranslator` writes them here and
:meth:`ChunkLedger.snapshot` turns them into a
:class:`~ct2pet_node.domain.cluster.ClusterSnapshot`. No Ray and no I/O:
times are passed in, so a test can drive it without a cluster.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ct2pet_node.domain.cluster import RATE_WINDOW_SECONDS, ActorActivity, ClusterSnapshot

# A rate over less than this many seconds says more about timing noise than about the actor.
MIN_RATE_SECONDS = 1.0


@dataclass(slots=True)
class _Slot:
    host: str
    device: str
    slices_done: int = 0
    restarts: int = 0
    # (wall-clock time, slices) of each chunk returned within the rate window.
    returns: deque[tuple[float, int]] = field(default_factory=deque)


class ChunkLedger:
    """Per-actor counts, safe to write from the engine thread(s) and read from the status endpoint."""

    def __init__(self, window_seconds: float = RATE_WINDOW_SECONDS) -> None:
        self.window_seconds = window_seconds
        self._lock = threading.Lock()
        self._slots: list[_Slot] = []
        # The slot each chunk went to, by (request, first slice), until it returns or is given up.
        self._in_flight: dict[tuple[int, int], int] = {}
        self._since: float | None = None
        self.retries = 0

    def actors_ready(self, described: Sequence[Mapping[str, Any]], now: float) -> None:
        """The driver started these actors (``ChunkActor.describe`` each), slot by slot."""
        with self._lock:
            self._slots = [
                _Slot(str(entry.get("host") or "?"), str(entry.get("device") or "?")) for entry in described
            ]
            if self._since is None:
                self._since = now

    def sent(self, request: int, start: int, slot: int, now: float) -> None:
        """The chunk of ``request`` starting at slice ``start`` went to the actor in ``slot``."""
        with self._lock:
            self._in_flight[(request, start)] = slot

    def returned(self, request: int, start: int, slices: int, now: float) -> None:
        with self._lock:
            slot = self._in_flight.pop((request, start), None)
            if slot is not None and slot < len(self._slots):
                entry = self._slots[slot]
                entry.slices_done += slices
                entry.returns.append((now, slices))

    def died(self, request: int, start: int) -> None:
        """The actor under this chunk died; the chunk goes again and a new actor takes the slot."""
        with self._lock:
            self.retries += 1
            slot = self._in_flight.pop((request, start), None)
            if slot is not None and slot < len(self._slots):
                self._slots[slot].restarts += 1

    def abandoned(self, request: int) -> None:
        """``request`` ended (done, cancelled, failed, cluster lost): none of its chunks is awaited any more."""
        with self._lock:
            for key in [key for key in self._in_flight if key[0] == request]:
                del self._in_flight[key]

    def lost(self) -> None:
        """The cluster went away: its actors with it (counts since start are kept for the next ones)."""
        with self._lock:
            self._slots = []
            self._in_flight.clear()

    def snapshot(self, address: str, state: str, now: float) -> ClusterSnapshot:
        with self._lock:
            since = self._since if self._since is not None else now
            span = max(MIN_RATE_SECONDS, min(self.window_seconds, now - since))
            actors = []
            holding = Counter(self._in_flight.values())
            for slot, entry in enumerate(self._slots):
                while entry.returns and entry.returns[0][0] <= now - self.window_seconds:
                    entry.returns.popleft()
                recent = sum(slices for _, slices in entry.returns)
                actors.append(
                    ActorActivity(
                        name=f"actor-{slot}",
                        host=entry.host,
                        device=entry.device,
                        chunks_in_flight=holding[slot],
                        slices_per_second=round(recent / span, 3),
                        slices_done=entry.slices_done,
                        restarts=entry.restarts,
                    )
                )
            return ClusterSnapshot(address, state, tuple(actors), self.retries)
