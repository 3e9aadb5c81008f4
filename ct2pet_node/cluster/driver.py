"""The Ray driver, run in a child process of the node: actors, chunk dispatch, retries.

A Ray driver whose head goes away is ended by Ray itself (after
``RAY_gcs_rpc_server_reconnect_timeout_s``); in a child process that ends
only this process, and the node's :class:`~ct2pet_node.cluster.translator.RayTranslator`
reads the ended process as "cluster unreachable".

Messages over the pipe, node -> driver: ``("translate", region, chunks, kvp,
steps, eta, seed, first_slice_index)`` with ``chunks`` a list of (start, stop)
slice indices of ``region`` and ``first_slice_index`` the index of ``region[0]``
in its volume (the noise seed of each slice derives from it); ``("cancel",)``. Driver -> node: ``("ready", actors)``,
``("unreachable", reason)``, ``("refused", reason)`` once at start; then per
request ``("sent", start, slot)`` as each chunk goes to the actor in ``slot``
(its index in the ``ready`` list; a replacement takes the dead actor's slot),
``("chunk", start, values, slot)`` as each chunk finishes (in any order),
``("retry", start, reason, slot)`` when an actor died under a chunk, and
``("done",)``, ``("failed", reason)`` or ``("cancelled",)``.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from ct2pet_node.cluster.actor import ActorSpec, ChunkActor

# Seconds the driver keeps trying to reach a lost head before Ray ends this process.
GCS_RECONNECT_SECONDS = 10
# How often a dispatch loop looks at the pipe for a cancel, seconds.
POLL_SECONDS = 0.2


@dataclass(frozen=True, slots=True)
class DriverSettings:
    """The ``[engine.ray]`` values the driver needs, and what each actor loads."""

    address: str
    namespace: str
    actors: int
    cpus_per_actor: float
    gpus_per_actor: float
    spec: ActorSpec


def serve(conn: Connection, settings: DriverSettings) -> None:
    """Child process entry point: connect, start the actors, then serve requests until the pipe closes."""
    os.environ.setdefault("RAY_gcs_rpc_server_reconnect_timeout_s", str(GCS_RECONNECT_SECONDS))
    import ray

    try:
        ray.init(
            address=settings.address,
            namespace=settings.namespace,
            log_to_driver=False,
            logging_level=logging.WARNING,
            configure_logging=False,
        )
    except Exception as error:  # ray raises ConnectionError, RuntimeError, ValueError... for one cause
        conn.send(("unreachable", f"{type(error).__name__}: {error}"))
        return
    pool = _Pool(ray, settings)
    actors = [pool.start_actor() for _ in range(settings.actors)]
    described = [pool.describe(actor) for actor in actors]
    refusals = [entry["refusal"] for entry in described if entry["refusal"]]
    if refusals:
        conn.send(("refused", refusals[0]))
        return
    conn.send(("ready", described))
    pool.actors = actors
    pool.idle.extend(range(len(actors)))
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message[0] == "translate":
            pool.run(conn, *message[1:])


class _Pool:
    """The actors by slot, and one request's chunks spread over them."""

    def __init__(self, ray: Any, settings: DriverSettings) -> None:
        self.ray = ray
        self.settings = settings
        self.remote = ray.remote(ChunkActor).options(
            num_cpus=settings.cpus_per_actor, num_gpus=settings.gpus_per_actor, max_restarts=0
        )
        self.actors: list[Any] = []
        # Slots (indices into actors) of the actors with no chunk.
        self.idle: deque[int] = deque()

    def start_actor(self) -> Any:
        return self.remote.remote(self.settings.spec)

    def describe(self, actor: Any) -> dict[str, Any]:
        description: dict[str, Any] = self.ray.get(actor.describe.remote())
        return description

    def run(
        self,
        conn: Connection,
        region: np.ndarray,
        chunks: list[tuple[int, int]],
        kvp: float | None,
        steps: int | None,
        eta: float | None,
        seed: int | None,
        first_slice_index: int,
    ) -> None:
        ray = self.ray
        pending = deque(chunks)
        in_flight: dict[Any, tuple[tuple[int, int], int]] = {}
        while pending or in_flight:
            while pending and self.idle:
                slot, (start, stop) = self.idle.popleft(), pending.popleft()
                first = first_slice_index + start
                ref = self.actors[slot].translate.remote(region[start:stop], kvp, steps, eta, seed, first)
                in_flight[ref] = ((start, stop), slot)
                conn.send(("sent", start, slot))
            if conn.poll() and conn.recv()[0] == "cancel":
                # Chunks still running finish on their actors and are dropped; the node keeps
                # only checkpointed chunks, so nothing half-done is ever used.
                self.idle.extend(slot for _, slot in in_flight.values())
                conn.send(("cancelled",))
                return
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=POLL_SECONDS)
            for ref in ready:
                chunk, slot = in_flight.pop(ref)
                try:
                    values = ray.get(ref)
                except ray.exceptions.RayActorError as error:
                    # The actor (or its machine) died under this chunk: another actor does it again,
                    # and a fresh actor takes the dead one's place.
                    pending.appendleft(chunk)
                    conn.send(("retry", chunk[0], _first_line(error), slot))
                    self.actors[slot] = self.start_actor()
                    self.idle.append(slot)
                    continue
                except ray.exceptions.RayTaskError as error:
                    self.idle.append(slot)
                    self.idle.extend(slot for _, slot in in_flight.values())
                    conn.send(("failed", _first_line(error.cause if error.cause is not None else error)))
                    return
                conn.send(("chunk", chunk[0], values, slot))
                self.idle.append(slot)
        conn.send(("done",))


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"
