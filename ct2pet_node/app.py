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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import structlog

from ct2pet_node import __version__
from ct2pet_node.config import Config, Destination
from ct2pet_node.domain.jobs import JobState
from ct2pet_node.domain.records import InstanceRecord
from ct2pet_node.errors import WeightsError
from ct2pet_node.routing.delivery import DeliveryOutcome, EntryState, InstanceResult, RetrySchedule
from ct2pet_node.service.admin import AdminServer
from ct2pet_node.service.metrics import Registry
from ct2pet_node.service.queue import InProcessQueue
from ct2pet_node.service.recent_errors import RecentErrors
from ct2pet_node.service.router import Router
from ct2pet_node.service.worker import EngineWorker, Translator
from ct2pet_node.spool.atomic import ensure_private_dir
from ct2pet_node.spool.jobstore import JobStore
from ct2pet_node.spool.outbox import Outbox

if TYPE_CHECKING:  # the sender pulls in pynetdicom; `convert` uses this module without it
    from ct2pet_node.net.scu import ScuTimeouts
    from ct2pet_node.service.sender import SendFunction

log = structlog.get_logger(__name__)

# Seconds each stage may take to wind down on SIGTERM; their sum stays under
# the systemd unit's TimeoutStopSec.
SCP_DRAIN_SECONDS = 30.0
ROUTER_STOP_SECONDS = 10.0
ENGINE_STOP_SECONDS = 200.0
SENDER_STOP_SECONDS = 30.0


# Jobs that got past qualification (by the router, or refused only at the engine's re-check).
_QUALIFIED_STATES = (JobState.WAITING, JobState.PROCESSING, JobState.SENDING, JobState.DONE, JobState.FAILED)


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
    metrics: Registry
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
            "listener": self.scp.listener_status(),
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
    from ct2pet_node.net.scp import StorageScp
    from ct2pet_node.service.sender import Sender, scu_sender
    from ct2pet_node.spool.instances import InstanceSpool

    ensure_private_dir(config.node.data_dir)
    metrics = Registry()
    store = JobStore.open(config.node.data_dir)
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
        on_job_delivered=lambda job_id: _settle(store, job_id, JobState.DONE, None),
        on_job_dead=lambda job_id, reason: _settle(store, job_id, JobState.FAILED, reason),
    )
    worker = EngineWorker(config, store, engine_queue, translator, sender.submit, metrics)

    def on_stored(record: InstanceRecord) -> None:
        metrics.instances_received.inc()
        router.notify(record)

    scp = StorageScp(
        config.node,
        config.security,
        InstanceSpool(config.node.data_dir, config.node.min_free_mb),
        store,
        on_stored,
    )
    _read_metrics_from_stores(metrics, store, engine_queue, outbox)
    metrics.read_from_listener(scp.listener_status)
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


def _settle(store: JobStore, job_id: int, state: JobState, reason: str | None) -> None:
    """The sender's verdict on a job: SENDING -> DONE, or FAILED with the delivery's reason."""
    if state is JobState.FAILED:
        reason = f"delivery failed: {reason}"
    if store.transition(job_id, JobState.SENDING, state, reason=reason) is None:
        job = store.get_job(job_id)
        log.warning(
            "delivery_verdict_ignored",
            job_id=job_id,
            verdict=state.value,
            state=None if job is None else job.state.value,
        )


def counting_sender(send: SendFunction, metrics: Registry) -> SendFunction:
    """``send`` that also counts instances delivered and failed attempts, by destination."""

    def counted(
        destination: Destination, calling_ae: str, paths: Sequence[Path], cancel: threading.Event
    ) -> list[InstanceResult]:
        results = send(destination, calling_ae, paths, cancel)
        acknowledged = sum(1 for result in results if result.outcome.acknowledged)
        if acknowledged:
            metrics.instances_sent.inc(acknowledged, destination=destination.name)
        if any(r.outcome not in (DeliveryOutcome.CANCELLED,) and not r.outcome.acknowledged for r in results):
            metrics.send_failures.inc(destination=destination.name)
        return results

    return counted


def _read_metrics_from_stores(
    metrics: Registry, store: JobStore, engine_queue: InProcessQueue, outbox: Outbox
) -> None:
    """Values whose truth is on disk are read at scrape time, so a restart does not zero them."""

    def states(wanted: Sequence[JobState]) -> float:
        counts = store.counts_by_state()
        return float(sum(counts.get(state, 0) for state in wanted))

    metrics.jobs.read_from(
        lambda: {(("state", s.value),): float(n) for s, n in store.counts_by_state().items()}
    )
    metrics.series_completed.read_from(lambda: {(): states(_QUALIFIED_STATES)})
    metrics.series_refused.read_from(lambda: {(): states([JobState.REFUSED])})
    metrics.queue_depth.read_from(
        lambda: {
            (("queue", "engine"),): float(engine_queue.depth()),
            (("queue", "outbox"),): float(len(outbox.due(time.time()))),
        }
    )


def reconcile_sending(node: Node) -> None:
    """Jobs a crash left in SENDING: settle them from the outbox, or queue their files again."""
    for job in node.store.list_jobs([JobState.SENDING]):
        state = node.outbox.job_state(job.id)
        if state is EntryState.DELIVERED:
            node.store.transition(job.id, JobState.SENDING, JobState.DONE)
        elif state is EntryState.DEAD:
            node.store.transition(job.id, JobState.SENDING, JobState.FAILED, reason="delivery failed")
        elif state is None:
            _requeue_results(node, job.id, Path(str(job.details.get("results_dir", ""))))


def _requeue_results(node: Node, job_id: int, results: Path) -> None:
    """A SENDING job whose files never reached the outbox (a crash between the two writes)."""
    files = sorted(results.glob("*/*.dcm")) if results.is_dir() else []
    if not files:
        node.store.transition(
            job_id,
            JobState.SENDING,
            JobState.FAILED,
            reason=f"results missing after restart (looked in {results}); run `ct2pet-node jobs retry`",
        )
    elif not node.config.destinations:
        node.store.transition(
            job_id,
            JobState.SENDING,
            JobState.DONE,
            delivery="no destination configured: results stay in results_dir",
        )
    elif node.sender.submit(job_id, files):
        log.info("delivery_requeued", job_id=job_id, files=len(files))


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
