"""The Ray driver, run in a child process of the node: actors, chunk dispatch, retries.

A Ray driver whose head goes away is ended by Ray itself (after
``RAY_gcs_rpc_server_reconnect_timeout_s``); in a child process that ends
only this process, and the node's :class:`~ct2pet_node.cluster.translator.RayTranslator`
reads the ended process as "cluster unreachable".

Several requests (one per job in flight) share the actors: each carries the
node's request number ``rid``, chunks go out oldest request first, so a
second job's chunks fill the actors the first leaves idle.

Messages over the pipe, node -> driver: ``("translate", rid, region, chunks,
kvp, steps, eta, seed, first_slice_index)`` with ``chunks`` a list of (start,
stop) slice indices of ``region`` and ``first_slice_index`` the index of
``region[0]`` in its volume (the noise seed of each slice derives from it);
``("cancel", rid)``. Driver -> node: ``("ready", actors)``, ``("unreachable",
reason)``, ``("refused", reason)`` once at start; then per request ``("sent",
rid, start, slot)`` as each chunk goes to the actor in ``slot`` (its index in
the ``ready`` list; a replacement takes the dead actor's slot), ``("chunk",
rid, start, values, slot)`` as each chunk finishes (in any order), ``("retry",
rid, start, reason, slot)`` when an actor died under a chunk, and ``("done",
rid)``, ``("failed", rid, reason)`` or ``("cancelled", rid)``.
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
    pool.serve(conn)


@dataclass(slots=True)
class _Request:
    """One ``translate`` request: its region, sampling arguments and chunks not yet sent."""

    region: np.ndarray
    args: tuple[float | None, int | None, float | None, int | None]
    first_slice_index: int
    pending: deque[tuple[int, int]]
    running: int = 0


class _Pool:
    """The actors by slot, and the chunks of every open request spread over them."""

    def __init__(self, ray: Any, settings: DriverSettings) -> None:
        self.ray = ray
        self.settings = settings
        self.remote = ray.remote(ChunkActor).options(
            num_cpus=settings.cpus_per_actor, num_gpus=settings.gpus_per_actor, max_restarts=0
        )
        self.actors: list[Any] = []
        # Slots (indices into actors) of the actors with no chunk.
        self.idle: deque[int] = deque()
        self.requests: dict[int, _Request] = {}
        # Each chunk running: its request (None once that request ended), (start, stop), slot.
        self.in_flight: dict[Any, tuple[int | None, tuple[int, int], int]] = {}

    def start_actor(self) -> Any:
        return self.remote.remote(self.settings.spec)

    def describe(self, actor: Any) -> dict[str, Any]:
        description: dict[str, Any] = self.ray.get(actor.describe.remote())
        return description

    def serve(self, conn: Connection) -> None:
        """Take requests and cancels, send chunks to idle actors, pass results back; until the pipe closes."""
        while True:
            try:
                # Nothing running: wait for the node; else only look, so results keep flowing.
                while not self.in_flight or conn.poll():
                    self._take(conn, conn.recv())
                    self._dispatch(conn)
            except EOFError:
                return
            ready, _ = self.ray.wait(list(self.in_flight), num_returns=1, timeout=POLL_SECONDS)
            for ref in ready:
                self._finish(conn, ref)
            self._dispatch(conn)

    def _take(self, conn: Connection, message: tuple[Any, ...]) -> None:
        if message[0] == "translate":
            rid, region, chunks, kvp, steps, eta, seed, first = message[1:]
            self.requests[rid] = _Request(region, (kvp, steps, eta, seed), first, deque(chunks))
        elif message[0] == "cancel":
            # Chunks still running finish on their actors and are dropped; the node keeps only
            # checkpointed chunks, so nothing half-done is ever used.
            self._end(message[1])
            conn.send(("cancelled", message[1]))

    def _end(self, rid: int) -> bool:
        """Forget request ``rid``; False when it had ended already (its chunks may still be running)."""
        if self.requests.pop(rid, None) is None:
            return False
        for ref, (owner, chunk, slot) in self.in_flight.items():
            if owner == rid:
                self.in_flight[ref] = (None, chunk, slot)
        return True

    def _dispatch(self, conn: Connection) -> None:
        for rid, request in self.requests.items():  # oldest request first (dicts keep insertion order)
            while request.pending and self.idle:
                slot, (start, stop) = self.idle.popleft(), request.pending.popleft()
                kvp, steps, eta, seed = request.args
                first = request.first_slice_index + start
                chunk = request.region[start:stop]
                ref = self.actors[slot].translate.remote(chunk, kvp, steps, eta, seed, first)
                self.in_flight[ref] = (rid, (start, stop), slot)
                request.running += 1
                conn.send(("sent", rid, start, slot))
        for rid in [
            rid for rid, request in self.requests.items() if not request.pending and not request.running
        ]:
            del self.requests[rid]
            conn.send(("done", rid))

    def _finish(self, conn: Connection, ref: Any) -> None:
        ray = self.ray
        rid, chunk, slot = self.in_flight.pop(ref)
        request = self.requests.get(rid) if rid is not None else None
        if request is not None:
            request.running -= 1
        try:
            values = ray.get(ref)
        except ray.exceptions.RayActorError as error:
            # The actor (or its machine) died under this chunk: another actor does it again,
            # and a fresh actor takes the dead one's place.
            self.actors[slot] = self.start_actor()
            self.idle.append(slot)
            if request is not None:
                request.pending.appendleft(chunk)
                conn.send(("retry", rid, chunk[0], _first_line(error), slot))
            return
        except ray.exceptions.RayTaskError as error:
            self.idle.append(slot)
            if rid is not None and self._end(rid):
                conn.send(("failed", rid, _first_line(error.cause if error.cause is not None else error)))
            return
        self.idle.append(slot)
        if request is not None:
            conn.send(("chunk", rid, chunk[0], values, slot))


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"
