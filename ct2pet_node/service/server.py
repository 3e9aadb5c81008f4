"""The running node: start, run and stop of its components, in the order the data flows.

As uvicorn splits ``Config`` from ``Server``: the frozen configuration
(:mod:`ct2pet_node.config`) says what to run, the composition root
(:mod:`ct2pet_node.app`) builds and wires the :class:`Components`, and the
:class:`Server` owns their lifecycle.

Start: recover the jobs a crash or a stop left half-way, then the router,
the engine worker, the sender, retention (its first pass makes room on a
full disk), the admin endpoint, the STOW-RS receiver (when configured), and
the storage SCP last,
so nothing is accepted before there is somewhere for it to go.

Stop (the reverse): stop accepting (STOW-RS, then DICOM) and let open requests
and associations finish, flush
the router, let the engine finish or checkpoint the current job (asked
first, so it checkpoints while associations drain), stop the sender and
retention, then the admin endpoint and the stores. A second SIGTERM or SIGINT forces exit;
the journal replays on the next start.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Protocol

import structlog

from ct2pet_node import __version__
from ct2pet_node.config import Config
from ct2pet_node.service.metrics import NodeMetrics
from ct2pet_node.service.recent_errors import RecentErrors
from ct2pet_node.service.recovery import recover_jobs
from ct2pet_node.service.retention import Retention
from ct2pet_node.service.router import Router
from ct2pet_node.service.worker import EngineWorker
from ct2pet_node.spool.jobstore import JobStore
from ct2pet_node.spool.outbox import Outbox

if TYPE_CHECKING:  # both pull in pynetdicom, which only the composition root loads, when it builds
    from ct2pet_node.net.scp import StorageScp
    from ct2pet_node.service.sender import Sender

log = structlog.get_logger(__name__)


class AdminListener(Protocol):
    """What the server needs of an HTTP listener (admin, STOW-RS): the web room builds it, above us."""

    @property
    def address(self) -> tuple[str, int]: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


# Seconds each stage may take to wind down on SIGTERM; their sum stays under
# the systemd unit's TimeoutStopSec.
SCP_DRAIN_SECONDS = 30.0
ROUTER_STOP_SECONDS = 10.0
ENGINE_STOP_SECONDS = 200.0
SENDER_STOP_SECONDS = 30.0
RETENTION_STOP_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class Components:
    """Every long-lived part of one node, built and wired, none started."""

    store: JobStore
    outbox: Outbox
    router: Router
    worker: EngineWorker
    sender: Sender
    scp: StorageScp
    admin: AdminListener
    metrics: NodeMetrics
    errors: RecentErrors
    retention: Retention
    stow: AdminListener | None = None  # the STOW-RS receiver, when [dicomweb] listen is set


class Server:
    """Owns the threads of one node; see the module docstring.

    Parameters
    ----------
    config : Config
    components : Components
        As the composition root built them; the server closes the stores when it stops.
    force_exit : callable
        What a second stop signal calls (``os._exit``; replaced in tests).
    """

    def __init__(
        self, config: Config, components: Components, *, force_exit: Callable[[int], object] = os._exit
    ) -> None:
        self.config = config
        self.components = components
        self._force_exit = force_exit
        self._stopping = threading.Event()

    def start(self) -> None:
        """Recover unfinished jobs, then start every thread; the SCP last."""
        parts = self.components
        logging.getLogger().addHandler(parts.errors)
        recover_jobs(parts.store, parts.outbox, parts.sender.submit, bool(self.config.destinations))
        parts.router.start()
        parts.worker.start()
        parts.sender.start()
        parts.retention.start()  # a first pass now: a node restarted on a full disk makes room
        parts.admin.start()
        if parts.stow is not None:
            parts.stow.start()
        parts.scp.start()
        log.info(
            "node_started",
            version=__version__,
            ae_title=self.config.node.ae_title,
            port=self.config.node.port,
            stow_port=parts.stow.address[1] if parts.stow is not None else None,
            model_id=parts.worker.translator.model_id,
            destinations=[d.name for d in self.config.destinations],
        )

    def stop(self) -> None:
        """Stop accepting, let associations finish, flush the router, checkpoint the job, stop sending.

        Safe after a partial :meth:`start`: every component's stop tolerates never having started.
        """
        parts = self.components
        log.info("node_stopping")
        # The engine starts checkpointing now, while associations drain, not after them.
        parts.worker.request_stop()
        if parts.stow is not None:  # stop accepting over HTTP too; a request in flight may finish
            parts.stow.stop()
        parts.scp.stop(SCP_DRAIN_SECONDS)
        parts.router.stop(ROUTER_STOP_SECONDS)
        if not parts.worker.stop(ENGINE_STOP_SECONDS):
            log.warning("engine_stop_timed_out", job_id=parts.worker.current_job)
        if not parts.sender.stop(SENDER_STOP_SECONDS):
            log.warning("sender_stop_timed_out")
        if not parts.retention.stop(RETENTION_STOP_SECONDS):
            log.warning("retention_stop_timed_out")
        parts.admin.stop()
        parts.outbox.close()
        parts.store.close()
        logging.getLogger().removeHandler(parts.errors)
        log.info("node_stopped")

    def request_stop(self, signum: int, _: FrameType | None = None) -> None:
        """A stop signal: the first asks :meth:`run` to stop; a second forces exit at once."""
        name = signal.Signals(signum).name
        if self._stopping.is_set():
            log.warning("forced_exit", signal=name)
            self._force_exit(1)
            return
        log.info("stop_requested", signal=name)
        self._stopping.set()

    def run(self) -> None:
        """Run in the foreground until SIGTERM or SIGINT (call from the main thread)."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        try:
            self.start()
            while not self._stopping.wait(1.0):
                pass
        finally:
            self.stop()
