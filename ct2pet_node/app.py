"""The composition root: config -> logging -> components -> run.

Start order follows the data (stores, router, engine worker, sender, admin,
and the SCP last, so nothing is accepted before there is somewhere for it to
go); stop order is the reverse: stop accepting, let associations finish,
flush the router, checkpoint the current job, stop the sender. A second
SIGTERM or SIGINT forces exit; the journal replays on the next start.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

import structlog

from ct2pet_node import __version__
from ct2pet_node.config import Config
from ct2pet_node.domain.jobs import JobState
from ct2pet_node.domain.records import InstanceRecord
from ct2pet_node.errors import WeightsError
from ct2pet_node.routing.delivery import RetrySchedule
from ct2pet_node.service.admin import AdminServer
from ct2pet_node.service.metrics import NodeMetrics
from ct2pet_node.service.queue import InProcessQueue
from ct2pet_node.service.recent_errors import RecentErrors
from ct2pet_node.service.recovery import recover_jobs, settle_delivery
from ct2pet_node.service.router import Router
from ct2pet_node.service.worker import EngineWorker, Translator
from ct2pet_node.spool.atomic import ensure_private_dir
from ct2pet_node.spool.jobstore import JobStore
from ct2pet_node.spool.outbox import Outbox

if TYPE_CHECKING:  # the sender pulls in pynetdicom; `convert` uses this module without it
    from ct2pet_node.net.scu import ScuTimeouts

log = structlog.get_logger(__name__)

# Seconds each stage may take to wind down on SIGTERM; their sum stays under
# the systemd unit's TimeoutStopSec.
SCP_DRAIN_SECONDS = 30.0
ROUTER_STOP_SECONDS = 10.0
ENGINE_STOP_SECONDS = 200.0
SENDER_STOP_SECONDS = 30.0


def load_translator(config: Config) -> Translator:
    """The engine's pipeline for the configured weights (imports torch)."""
    weights_dir = config.engine.weights_dir
    if not (weights_dir / "manifest.json").is_file():
        raise WeightsError(
            f"no weights at {weights_dir} (engine.weights = {config.engine.weights!r}): import the release "
            "with `ct2pet-node weights import`, train one with `ct2pet-node train`, or point "
            "[engine] weights at a weights directory"
        )
    from ct2pet_node.engine import load_pipeline
    from ct2pet_node.engine.options import EngineOptions

    engine = config.engine
    options = EngineOptions(
        precision=engine.precision,
        channels_last=engine.channels_last,
        compile=engine.compile,
        cuda_graphs=engine.cuda_graphs,
        batch_size=engine.batch_size,
        decode_batch_size=engine.decode_batch_size,
        overlap=engine.overlap,
        threads=engine.threads,
    )
    pipeline: Translator = load_pipeline(weights_dir, device=engine.device, options=options)
    return pipeline


@dataclass(slots=True)
class Node:
    """Every long-lived component of a running node."""

    config: Config
    store: JobStore
    outbox: Outbox
    metrics: NodeMetrics
    errors: RecentErrors
    started_at: float
    translator: Translator
    router: Any
    worker: EngineWorker
    sender: Any
    scp: Any
    admin: AdminServer

    def status(self) -> dict[str, Any]:
        """What ``ct2pet-node status`` prints; identifiers only, no patient data."""
        counts = self.store.counts_by_state()
        waiting = self.store.list_jobs([JobState.WAITING])
        oldest = min(waiting, key=lambda job: job.updated_at) if waiting else None
        return {
            "version": __version__,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "uptime_seconds": round(time.time() - self.started_at, 1),
            "ae_title": self.config.node.ae_title,
            "port": self.config.node.port,
            "model": {
                "id": self.translator.model_id,
                "output_units": self.translator.output_units,
                "device": str(getattr(self.translator, "device", "unknown")),
                "steps": self.worker.sampling.steps,
                "eta": self.worker.sampling.eta,
            },
            "queues": {"engine": self.worker.queue.depth(), "outbox_due": len(self.outbox.due(time.time()))},
            "current_job": self.worker.current_job,
            "jobs": {state.value: counts.get(state, 0) for state in JobState},
            "oldest_waiting": None
            if oldest is None
            else {"id": oldest.id, "series_uid": oldest.series_uid, "since": oldest.updated_at},
            "destinations": self._destinations(),
            "dead_letters": [
                {"job_id": entry.job_id, "destination": entry.destination, "last_error": entry.last_error}
                for entry in self.outbox.dead_letters()
            ],
            "last_errors": self.errors.snapshot(),
        }

    def _destinations(self) -> list[dict[str, Any]]:
        known = {summary.name: summary for summary in self.outbox.summary()}
        listed: list[dict[str, Any]] = []
        for destination in self.config.destinations:
            summary = known.get(destination.name)
            entry: dict[str, Any] = {
                "name": destination.name,
                "address": f"{destination.ae_title}@{destination.host}:{destination.port}",
            }
            entry.update(dataclasses.asdict(summary) if summary else {"last_result": None})
            entry["name"] = destination.name
            listed.append(entry)
        return listed


def build_node(config: Config, translator: Translator | None = None) -> Node:
    """Open the stores and build every component, without starting any thread."""
    from ct2pet_node.service.listener import CountingStorageScp
    from ct2pet_node.service.sender import Sender, counting_sender, scu_sender
    from ct2pet_node.spool.instances import InstanceSpool

    ensure_private_dir(config.node.data_dir)
    metrics = NodeMetrics()
    store = JobStore.open(config.node.data_dir, on_transition=metrics.job_moved)
    outbox = Outbox.open(config.node.data_dir)
    try:
        translator = translator or load_translator(config)
    except BaseException:
        outbox.close()
        store.close()
        raise
    engine_queue = InProcessQueue()
    router = Router(store, engine_queue, config.routing)
    sender = Sender(
        outbox,
        config.destinations,
        config.node.ae_title,
        send=counting_sender(scu_sender(scu_timeouts(config)), metrics),
        schedule=RetrySchedule(config.delivery.retry_delays_seconds, config.delivery.max_attempts),
        on_job_delivered=lambda job_id: settle_delivery(store, job_id, None),
        on_job_dead=lambda job_id, reason: settle_delivery(store, job_id, reason),
    )
    worker = EngineWorker(config, store, engine_queue, translator, sender.submit, metrics)

    def on_stored(record: InstanceRecord) -> None:
        metrics.instance_stored()
        router.notify(record)

    scp = CountingStorageScp(
        config.node,
        config.security,
        InstanceSpool(config.node.data_dir, config.node.min_free_mb),
        store,
        on_stored,
        metrics=metrics,
    )
    _read_metrics_from_stores(metrics, store, engine_queue, outbox)
    errors = RecentErrors()
    node = Node(
        config=config,
        store=store,
        outbox=outbox,
        metrics=metrics,
        errors=errors,
        started_at=time.time(),
        translator=translator,
        router=router,
        worker=worker,
        sender=sender,
        scp=scp,
        admin=None,  # type: ignore[arg-type]  # needs node.status; set just below
    )
    try:
        node.admin = AdminServer(
            config.admin.listen_host, config.admin.listen_port, config.admin.token, node.status, metrics
        )
    except BaseException:
        outbox.close()
        store.close()
        raise
    logging.getLogger().addHandler(errors)
    return node


def scu_timeouts(config: Config) -> ScuTimeouts:
    """The sender's timeouts: ``[delivery]`` where set, else ``[node] network_timeout_seconds``."""
    from ct2pet_node.net.scu import ScuTimeouts

    network = config.node.network_timeout_seconds
    delivery = config.delivery
    return ScuTimeouts(
        connect_seconds=delivery.connect_timeout_seconds or network,
        acse_seconds=delivery.acse_timeout_seconds or network,
        dimse_seconds=delivery.dimse_timeout_seconds or network,
        network_seconds=max(network, delivery.dimse_timeout_seconds or 0.0),
    )


def _read_metrics_from_stores(
    metrics: NodeMetrics, store: JobStore, engine_queue: InProcessQueue, outbox: Outbox
) -> None:
    """Values whose truth is on disk are read at scrape time, so a restart does not zero them."""
    metrics.jobs.read_from(lambda: {state.value: n for state, n in store.counts_by_state().items()})
    metrics.queue_depth.read_from(
        lambda: {"engine": engine_queue.depth(), "outbox": len(outbox.due(time.time()))}
    )


def reconcile_sending(node: Node) -> None:
    """Jobs a crash left half-way (PROCESSING, SENDING): see :mod:`ct2pet_node.service.recovery`."""
    recover_jobs(node.store, node.outbox, node.sender.submit, bool(node.config.destinations))


def start(node: Node) -> None:
    """Start every thread, in the order the data flows; the SCP last, so nothing arrives too early."""
    reconcile_sending(node)
    node.router.start()
    node.worker.start()
    node.sender.start()
    node.admin.start()
    node.scp.start()
    log.info(
        "node_started",
        version=__version__,
        ae_title=node.config.node.ae_title,
        port=node.config.node.port,
        model_id=node.translator.model_id,
        destinations=[d.name for d in node.config.destinations],
    )


def stop(node: Node) -> None:
    """Stop accepting, let associations finish, flush the router, checkpoint the job, stop sending.

    Safe after a partial :func:`start`: every component's stop tolerates never having started.
    """
    log.info("node_stopping")
    # The engine starts checkpointing now, while associations drain, not after them.
    node.worker.request_stop()
    node.scp.stop(SCP_DRAIN_SECONDS)
    node.router.stop(ROUTER_STOP_SECONDS)
    if not node.worker.stop(ENGINE_STOP_SECONDS):
        log.warning("engine_stop_timed_out", job_id=node.worker.current_job)
    if not node.sender.stop(SENDER_STOP_SECONDS):
        log.warning("sender_stop_timed_out")
    node.admin.stop()
    node.outbox.close()
    node.store.close()
    logging.getLogger().removeHandler(node.errors)
    log.info("node_stopped")


def run(config: Config) -> None:
    """Run the node in the foreground until SIGTERM or SIGINT; a second signal forces exit."""
    node = build_node(config)
    stopping = threading.Event()

    def on_signal(signum: int, _: FrameType | None) -> None:
        if stopping.is_set():
            log.warning("forced_exit", signal=signal.Signals(signum).name)
            os._exit(1)
        log.info("stop_requested", signal=signal.Signals(signum).name)
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        start(node)
        while not stopping.wait(1.0):
            pass
    finally:
        stop(node)
