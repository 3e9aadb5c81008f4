"""What the node shows of its engine cluster: actors, chunks in flight, speed, retries; values only.

The cluster room (``ct2pet_node.cluster``) fills a :class:`ClusterSnapshot`;
the service reads it through :class:`ClusterView` without knowing Ray
exists, and ``/status``, ``status`` and ``/metrics`` show it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

# Seconds of finished chunks an actor's slices per second are measured over.
RATE_WINDOW_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class ActorActivity:
    """One actor of the cluster.

    Attributes
    ----------
    name : str
        Stable for the node's life: ``actor-<slot>``; a replacement for a
        dead actor takes its slot and name.
    host, device : str
        Where it runs: the worker's host name and ``"cuda:0"`` or ``"cpu"``.
    chunks_in_flight : int
        Chunks sent to it and not yet back.
    slices_per_second : float
        Slices it returned over the last :data:`RATE_WINDOW_SECONDS` (or since
        the node started, when sooner), per second.
    slices_done, restarts : int
        Slices returned since the node started; times it died and was replaced.
    """

    name: str
    host: str
    device: str
    chunks_in_flight: int = 0
    slices_per_second: float = 0.0
    slices_done: int = 0
    restarts: int = 0

    def __post_init__(self) -> None:
        if self.chunks_in_flight < 0 or self.slices_done < 0 or self.restarts < 0:
            raise ValueError(f"actor {self.name}: counts cannot be negative")


@dataclass(frozen=True, slots=True)
class ClusterSnapshot:
    """The cluster at one moment: its actors (empty while it is down) and its chunk retries since start."""

    address: str
    state: str
    actors: tuple[ActorActivity, ...] = ()
    chunk_retries: int = 0

    @property
    def chunks_in_flight(self) -> int:
        return sum(actor.chunks_in_flight for actor in self.actors)

    @property
    def slices_per_second(self) -> float:
        return sum(actor.slices_per_second for actor in self.actors)

    def to_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "state": self.state,
            "actors": [
                {
                    "name": actor.name,
                    "host": actor.host,
                    "device": actor.device,
                    "chunks_in_flight": actor.chunks_in_flight,
                    "slices_per_second": actor.slices_per_second,
                    "slices_done": actor.slices_done,
                    "restarts": actor.restarts,
                }
                for actor in self.actors
            ],
            "chunks_in_flight": self.chunks_in_flight,
            "slices_per_second": round(self.slices_per_second, 3),
            "chunk_retries": self.chunk_retries,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ClusterSnapshot:
        """Read :meth:`to_json` back; the totals are derived again from the actors."""
        return cls(
            address=str(data.get("address", "")),
            state=str(data.get("state", "")),
            actors=tuple(
                ActorActivity(
                    name=str(entry.get("name", "")),
                    host=str(entry.get("host", "")),
                    device=str(entry.get("device", "")),
                    chunks_in_flight=int(entry.get("chunks_in_flight") or 0),
                    slices_per_second=float(entry.get("slices_per_second") or 0.0),
                    slices_done=int(entry.get("slices_done") or 0),
                    restarts=int(entry.get("restarts") or 0),
                )
                for entry in data.get("actors") or ()
            ),
            chunk_retries=int(data.get("chunk_retries") or 0),
        )


@runtime_checkable
class ClusterView(Protocol):
    """A translator that runs on a cluster and can say how its actors are doing."""

    def cluster_snapshot(self, now: float) -> ClusterSnapshot:
        """The cluster at wall-clock time ``now`` (seconds since the epoch)."""
        ...
