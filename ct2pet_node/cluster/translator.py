"""The node's side of the Ray backend: a :class:`~ct2pet_node.service.worker.Translator` on Ray actors.

:class:`RayTranslator` keeps the Ray driver (``driver``) in a child process,
starts it again when it ends (the head was lost or never reached), and
hands a study's chunks to it to spread over every actor, yielding each chunk
as it finishes so the worker checkpoints it at once. While the cluster is
down the worker keeps jobs WAITING (``fallback = "wait"``) or, with
``fallback = "local"``, this translator runs them on a local pipeline.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Unpack

import numpy as np
import structlog

from ct2pet_node import __version__
from ct2pet_node.cluster.actor import ActorSpec
from ct2pet_node.cluster.driver import DriverSettings, serve
from ct2pet_node.cluster.ledger import ChunkLedger
from ct2pet_node.config import Config
from ct2pet_node.domain.cluster import ClusterSnapshot
from ct2pet_node.domain.request import TranslationRequest
from ct2pet_node.engine.options import EngineOptions
from ct2pet_node.engine.weights import MANIFEST_NAME, load_manifest, sha256_of
from ct2pet_node.errors import EngineError, EngineUnavailable

log = structlog.get_logger(__name__)

# Seconds between attempts to reach a head that is down, and to start actors that refused to serve.
RETRY_SECONDS = 5.0
REFUSED_RETRY_SECONDS = 60.0
# Seconds a starting driver may take to connect and load every actor's pipeline.
START_TIMEOUT_SECONDS = 300.0
POLL_SECONDS = 0.5


def cluster_line(
    address: str, state: str, since: float | None, waiting: int, fallback: str, reason: str | None
) -> str:
    """The status line of the cluster; ``since`` in seconds since the epoch, shown in local time."""
    if state == "ready":
        return f"engine cluster {address} connected"
    when = time.strftime("%H:%M:%S", time.localtime(since)) if since else "start"
    meanwhile = "translating locally meanwhile" if fallback == "local" else f"{waiting} jobs waiting"
    if state == "refused":
        return f"engine cluster {address} refused since {when}: {reason}; {meanwhile}"
    if state == "starting" and since is None:
        return f"engine cluster {address} connecting, {meanwhile}"
    return f"engine cluster {address} unreachable since {when}, {meanwhile}"


class RayTranslator:
    """The engine on a Ray cluster, per ``[engine.ray]``; see the module docstring."""

    def __init__(
        self,
        config: Config,
        *,
        actor_weights_dir: Path | None = None,
        driver: Callable[[Connection, DriverSettings], None] = serve,
    ) -> None:
        """``driver`` is what the driver process runs (a test gives one on a fake Ray)."""
        from ct2pet_node.engine.bridge import BridgeSchedule

        engine = self.engine = config.engine
        self.settings_ray = engine.ray
        weights_dir = engine.weights_dir
        manifest = load_manifest(weights_dir)
        schedule = BridgeSchedule.from_config(manifest.architecture["bridge"])
        self.model_id = manifest.model_id
        self.output_units = manifest.output_units
        self.image_size = int(manifest.architecture["image_size"])
        self.frame = manifest.frame
        self.default_steps = int(schedule.sample_step)
        self.default_eta = float(schedule.eta)
        ray = engine.ray
        self.address, self.fallback = ray.address, ray.fallback
        spec = ActorSpec(
            weights_dir=str(actor_weights_dir or weights_dir),
            model_id=manifest.model_id,
            manifest_sha256=sha256_of(weights_dir / MANIFEST_NAME),
            package_version=__version__,
            device="cuda" if ray.gpus_per_actor > 0 else "cpu",
            options=EngineOptions.from_config(engine),
        )
        self._driver_settings = DriverSettings(
            ray.address, ray.namespace, ray.actors, ray.cpus_per_actor, ray.gpus_per_actor, spec
        )
        self._driver = driver
        self._context = multiprocessing.get_context("spawn")
        self._process: BaseProcess | None = None
        self._conn: Connection | None = None
        self.state = "down"
        self.reason: str | None = None
        self.down_since: float | None = None
        self._started_at = 0.0
        self._next_attempt = 0.0
        self.actors: list[dict[str, Any]] = []
        self.ledger = ChunkLedger()
        self._local: Any = None
        # Several engine threads share the driver: one starts or stops it at a time, one reads its
        # pipe at a time (filing each message under its request), one writes at a time.
        self._lifecycle = threading.RLock()
        self._reading = threading.Lock()
        self._sending = threading.Lock()
        self._request_ids = itertools.count(1)
        self._inboxes: dict[int, queue.SimpleQueue[Any]] = {}
        # The fallback pipeline is one model on one device: jobs in flight take turns on it.
        self._local_turn = threading.Lock()

    # -- what status shows -------------------------------------------------------------------

    @property
    def device(self) -> str:
        devices = ", ".join(sorted({str(actor["device"]) for actor in self.actors})) or "none yet"
        return f"ray {self.address}, {len(self.actors)} actors ({devices})"

    def cluster_status(self, waiting: int) -> str:
        return cluster_line(self.address, self.state, self.down_since, waiting, self.fallback, self.reason)

    def cluster_snapshot(self, now: float) -> ClusterSnapshot:
        """Actors, chunks in flight, slices per second and retries: the service's ``ClusterView``."""
        return self.ledger.snapshot(self.address, self.state, now)

    @property
    def retries(self) -> int:
        """Chunks sent again because their actor died, since the node started."""
        return self.ledger.retries

    # -- the driver process ------------------------------------------------------------------

    def ready(self) -> bool:
        """Whether a job can start now: the cluster is up, or ``fallback = "local"``; never blocks."""
        with self._lifecycle:
            self._advance()
        return self.state == "ready" or self.fallback == "local"

    def _advance(self) -> None:
        now = time.monotonic()
        if self.state in ("down", "refused") and now >= self._next_attempt:
            self._start_driver()
        if self.state != "starting" or self._conn is None:
            return
        with self._reading:
            message = self._poll()
        if message is None:
            if self._process is not None and not self._process.is_alive():
                self._down("the Ray driver ended before it connected")
            elif now - self._started_at > START_TIMEOUT_SECONDS:
                self._down(f"no answer within {START_TIMEOUT_SECONDS:.0f} s")
        elif message[0] == "ready":
            self.actors = list(message[1])
            self.ledger.actors_ready(self.actors, time.time())
            log.info(
                "engine_cluster_ready",
                address=self.address,
                actors=len(self.actors),
                was_down=bool(self.down_since),
            )
            self.state, self.reason, self.down_since = "ready", None, None
        elif message[0] == "refused":
            self._down(str(message[1]), refused=True)
        else:
            self._down(str(message[1]))

    def _start_driver(self) -> None:
        ours, theirs = self._context.Pipe()
        process = self._context.Process(
            target=self._driver, args=(theirs, self._driver_settings), name="ray-driver", daemon=True
        )
        process.start()
        theirs.close()
        self._process, self._conn = process, ours
        self.state, self._started_at = "starting", time.monotonic()

    def _poll(self) -> Any:
        """The driver's next message, or None when none came (or the driver ended)."""
        conn = self._conn
        try:
            return conn.recv() if conn is not None and conn.poll(POLL_SECONDS) else None
        except (EOFError, OSError, ValueError):
            return None

    def _down(self, reason: str, conn: Connection | None = None, *, refused: bool = False) -> None:
        """The driver is gone (or refused); with ``conn``, only if that is still the driver's pipe."""
        with self._lifecycle:
            if conn is not None and self._conn is not conn:
                return  # another engine thread saw it first; a new driver may be starting already
            self._end_driver(reason, refused)

    def _end_driver(self, reason: str, refused: bool) -> None:
        self.stop_driver()
        if self.down_since is None or self.state == "ready":
            self.down_since = time.time()
            event = "engine_cluster_refused" if refused else "engine_cluster_unreachable"
            log.warning(event, address=self.address, reason=reason, fallback=self.fallback)
        self.state, self.reason = ("refused" if refused else "down"), reason
        self._next_attempt = time.monotonic() + (REFUSED_RETRY_SECONDS if refused else RETRY_SECONDS)
        self.actors = []
        self.ledger.lost()

    def stop_driver(self) -> None:
        """End the driver process (its actors end with it)."""
        with self._lifecycle:
            self._stop_driver()

    def _stop_driver(self) -> None:
        process, self._process = self._process, None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if process is not None and process.is_alive():
            process.terminate()
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join(10)

    close = stop_driver

    # -- translating -------------------------------------------------------------------------

    def translate_chunks(
        self,
        region_hu: np.ndarray,
        chunks: Sequence[range],
        *,
        kvp: float | None,
        steps: int | None,
        eta: float | None,
        seed: int | None,
        first_slice_index: int = 0,
    ) -> Generator[tuple[range, np.ndarray]]:
        """Each chunk of ``region_hu`` (indices into it) with its (len, S, S) PET, in the order they finish.

        Safe to call from several engine threads at once: each call is one
        request to the driver, and the actors are shared between them.

        Raises
        ------
        EngineUnavailable
            The cluster is down (now or midway) and ``fallback = "wait"``;
            chunks already yielded are kept by the caller.
        EngineError
            An actor failed on a chunk for a reason other than dying.
        """
        args = {"kvp": kvp, "steps": steps, "eta": eta, "seed": seed}
        remaining = {chunk.start: chunk for chunk in chunks}
        conn = self._conn
        if self.state != "ready" or conn is None:
            yield from self._locally(region_hu, list(remaining.values()), first_slice_index, args)
            return
        rid = next(self._request_ids)
        inbox = self._inboxes[rid] = queue.SimpleQueue()
        plan = [(chunk.start, chunk.stop) for chunk in chunks]
        answered = not self._send(
            conn, ("translate", rid, region_hu, plan, kvp, steps, eta, seed, first_slice_index)
        )
        try:
            while not answered:
                message = self._receive(conn, inbox)
                if message is None:
                    if self._conn is conn and self._process is not None and self._process.is_alive():
                        continue
                    answered = True
                    break
                kind = message[0]
                if kind == "sent":
                    self.ledger.sent(rid, message[2], message[3], time.time())
                elif kind == "chunk":
                    chunk = remaining.pop(message[2])
                    self.ledger.returned(rid, chunk.start, len(chunk), time.time())
                    yield chunk, message[3]
                elif kind == "retry":
                    self.ledger.died(rid, message[2])
                    log.warning(
                        "engine_chunk_retried",
                        first_slice=first_slice_index + message[2],
                        reason=message[3],
                        actor=f"actor-{message[4]}",
                    )
                elif kind == "failed":
                    answered = True
                    raise EngineError(f"a Ray actor failed to translate a chunk: {message[2]}")
                elif kind == "done":
                    return
            self._down("the Ray driver ended mid-study (head lost)", conn)
            yield from self._locally(region_hu, list(remaining.values()), first_slice_index, args)
        finally:
            if not answered and remaining:
                self._cancel(conn, rid, inbox)
            self._inboxes.pop(rid, None)
            self.ledger.abandoned(rid)

    def _send(self, conn: Connection, message: tuple[Any, ...]) -> bool:
        """Send to the driver on ``conn``; False when it is gone."""
        try:
            with self._sending:
                conn.send(message)
        except (OSError, ValueError):  # ValueError: the connection was closed by another thread
            return False
        return True

    def _receive(self, conn: Connection, inbox: queue.SimpleQueue[Any]) -> Any:
        """The next message for the request of ``inbox``, or None after a poll brought none for it.

        One thread reads the pipe at a time and files what it reads under
        its request, so each engine thread sees only its own job's chunks.
        """
        with contextlib.suppress(queue.Empty):
            return inbox.get_nowait()
        with self._reading:
            with contextlib.suppress(queue.Empty):
                return inbox.get_nowait()
            if self._conn is not conn:
                return None  # that driver is gone; a new one's messages are not this request's
            message = self._poll()
        if message is None:
            return None
        target = self._inboxes.get(message[1])
        if target is inbox:
            return message
        if target is not None:
            target.put(message)
        return None

    def _cancel(self, conn: Connection, rid: int, inbox: queue.SimpleQueue[Any]) -> None:
        """Tell the driver to drop request ``rid`` (the caller stopped reading), and wait until it has."""
        if self._send(conn, ("cancel", rid)):
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self._conn is conn:
                message = self._receive(conn, inbox)
                if message is not None and message[0] in ("cancelled", "done", "failed"):
                    return
        self._down("the Ray driver did not answer a cancel", conn)

    def _locally(
        self, region_hu: np.ndarray, chunks: list[range], first_slice_index: int, args: dict[str, Any]
    ) -> Iterator[tuple[range, np.ndarray]]:
        if self.fallback != "local":
            since = time.strftime("%H:%M:%S", time.localtime(self.down_since)) if self.down_since else "start"
            raise EngineUnavailable(
                f"engine cluster {self.address} unreachable since {since}; the job resumes when it is back"
            )
        for chunk in sorted(chunks, key=lambda c: c.start):
            with self._local_turn:
                if self._local is None:
                    from ct2pet_node.engine import load_pipeline

                    log.warning("engine_fallback_local", address=self.address, reason=self.reason)
                    engine = self.engine
                    options = EngineOptions.from_config(engine)
                    self._local = load_pipeline(engine.weights_dir, device=engine.device, options=options)
                values = self._local.translate_region(
                    region_hu[chunk.start : chunk.stop],
                    first_slice_index=first_slice_index + chunk.start,
                    **args,
                )
            yield chunk, values

    def translate_region(self, region_hu: np.ndarray, **request: Unpack[TranslationRequest]) -> np.ndarray:
        """The whole region as one chunk on one actor (the worker spreads chunks with :meth:`translate_chunks`).

        ``progress`` is not reported: an actor's steps are not seen from here.
        """
        whole = range(region_hu.shape[0])
        for _, values in self.translate_chunks(
            region_hu,
            [whole],
            kvp=request.get("kvp"),
            steps=request.get("steps"),
            eta=request.get("eta"),
            seed=request.get("seed"),
            first_slice_index=request.get("first_slice_index", 0),
        ):
            return values
        raise EngineError("the Ray cluster returned nothing for the region")
