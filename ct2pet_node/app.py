"""The composition root: config -> components -> :class:`~ct2pet_node.service.server.Server`.

It only builds and wires: which store feeds which thread, who is told of
what. Starting, running and stopping the components (and in which order)
is the server's; deciding anything about jobs is the service's.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ct2pet_node.config import Config
from ct2pet_node.domain.cluster import ClusterView
from ct2pet_node.domain.records import AssociationReleased, InstanceRecord
from ct2pet_node.errors import EngineError, WeightsError
from ct2pet_node.routing.delivery import RetrySchedule
from ct2pet_node.service.metrics import NodeMetrics
from ct2pet_node.service.progress import ProgressBoard
from ct2pet_node.service.queue import InProcessQueue
from ct2pet_node.service.recent_errors import RecentErrors
from ct2pet_node.service.recovery import settle_delivery
from ct2pet_node.service.redo import rerun_job, resend_job
from ct2pet_node.service.retention import Retention
from ct2pet_node.service.retry import retry_job
from ct2pet_node.service.router import Router
from ct2pet_node.service.server import Components, Server
from ct2pet_node.service.status import StatusReport, StatusSources, build_status
from ct2pet_node.service.translator import Translator
from ct2pet_node.service.worker import EngineWorker
from ct2pet_node.spool.atomic import ensure_private_dir, free_bytes
from ct2pet_node.spool.jobstore import JobStore
from ct2pet_node.spool.outbox import Outbox
from ct2pet_node.web.app import Action, AdminSources
from ct2pet_node.web.pages import NodeFacts
from ct2pet_node.web.server import AdminServer, StowServer
from ct2pet_node.web.stow import StowSources

if TYPE_CHECKING:  # the sender pulls in pynetdicom and requests; `convert` uses this module without them
    from ct2pet_node.net.intake import Outcome
    from ct2pet_node.net.scp import StorageScp
    from ct2pet_node.net.scu import ScuTimeouts
    from ct2pet_node.net.stow import StowLimits
    from ct2pet_node.service.fetch import Fetcher


def run(config: Config) -> None:
    """Run the node in the foreground until SIGTERM or SIGINT; a second signal forces exit."""
    build_server(config).run()


def build_server(config: Config, translator: Translator | None = None) -> Server:
    """Open the stores and build and wire every component, without starting any thread."""
    ensure_private_dir(config.node.data_dir)
    metrics = NodeMetrics()
    store = JobStore.open(config.node.data_dir, on_transition=metrics.job_moved)
    outbox = Outbox.open(config.node.data_dir)
    try:
        components = _components(config, translator, metrics, store, outbox)
    except BaseException:
        outbox.close()
        store.close()
        raise
    return Server(config, components)


def _components(
    config: Config, translator: Translator | None, metrics: NodeMetrics, store: JobStore, outbox: Outbox
) -> Components:
    from ct2pet_node.net.scp import StorageScp
    from ct2pet_node.service.fetch import Fetcher
    from ct2pet_node.service.sender import Sender, counting_sender, peer_sender, scu_sender, stow_sender
    from ct2pet_node.spool.instances import InstanceSpool

    translator = translator or load_translator(config)
    engine_queue = InProcessQueue()
    progress = ProgressBoard()  # per-slice and per-instance progress: in memory, never in the store
    router = Router(store, engine_queue, config.routing, progress=progress)
    sender = Sender(
        outbox,
        config.destinations,
        config.node.ae_title,
        send=counting_sender(
            peer_sender(
                {
                    "dimse": scu_sender(scu_timeouts(config), progress),
                    "dicomweb": stow_sender(stow_limits(config), progress),
                }
            ),
            metrics,
        ),
        schedule=RetrySchedule(config.delivery.retry_delays_seconds, config.delivery.max_attempts),
        on_job_delivered=lambda job_id: settle_delivery(store, job_id, None),
        on_job_dead=lambda job_id, reason: settle_delivery(store, job_id, reason),
        progress=progress,
    )
    # A cluster runs several jobs at once, their chunks sharing the actors; a local engine, one.
    jobs_in_flight = config.engine.ray.jobs_at_once if config.engine.backend == "ray" else 1
    worker = EngineWorker(
        config,
        store,
        engine_queue,
        translator,
        sender.submit,
        metrics,
        progress=progress,
        jobs_in_flight=jobs_in_flight,
    )

    def on_stored(record: InstanceRecord) -> None:
        metrics.instance_stored()
        router.notify(record)

    scp = StorageScp(
        config.node,
        config.security,
        InstanceSpool(config.node.data_dir, config.node.min_free_mb),
        store,
        on_stored,
        on_refused=metrics.instance_rejected,
        on_released=router.notify_released,
    )
    # Values whose truth is on disk are read at scrape time, so a restart does not zero them.
    metrics.jobs.read_from(lambda: {state.value: n for state, n in store.counts_by_state().items()})
    metrics.queue_depth.read_from(
        lambda: {"engine": engine_queue.depth(), "outbox": len(outbox.due(time.time()))}
    )
    metrics.read_from_listener(scp.listener_status)
    metrics.read_free_space(lambda: free_bytes(config.node.data_dir), config.node.min_free_mb * 1024 * 1024)
    if isinstance(translator, ClusterView):
        cluster = translator
        metrics.read_cluster(lambda: cluster.cluster_snapshot(time.time()))
    errors = RecentErrors()
    fetcher = Fetcher(
        config, scp.intake, store, scu_timeouts(config), router.notify_released, metrics.fetch_recorded
    )
    sources = StatusSources(
        config,
        store,
        outbox,
        worker,
        errors,
        started_at=time.time(),
        pid=os.getpid(),
        listener=scp.listener_status,
        progress=progress,
        fetches=fetcher.recent,
    )

    stow = stow_server(config, scp, metrics, router.notify_released)
    try:
        admin = admin_server(config, sources, metrics, store, fetcher)
    except BaseException:
        if stow is not None:
            stow.stop()
        raise
    retention = Retention(config, store, outbox)
    return Components(store, outbox, router, worker, sender, scp, admin, metrics, errors, retention, stow)


def admin_server(
    config: Config,
    sources: StatusSources,
    metrics: NodeMetrics,
    store: JobStore,
    fetcher: Fetcher,
) -> AdminServer:
    """The admin endpoint on ``[admin] listen``, its socket bound."""

    def status() -> StatusReport:
        return build_status(sources, time.time())

    return AdminServer(
        config.admin.listen_host,
        config.admin.listen_port,
        AdminSources(
            status=status,
            metrics=metrics,
            jobs=store.list_jobs,
            job=store.get_job,
            facts=node_facts(config),
            token=config.admin.token,
            actions=job_actions(config),
            fetch=fetcher.fetch,
        ),
    )


def stow_server(
    config: Config,
    scp: StorageScp,
    metrics: NodeMetrics,
    on_released: Callable[[AssociationReleased], None] | None = None,
) -> StowServer | None:
    """The STOW-RS receiver on ``[dicomweb] listen``, sharing the SCP's intake; None when not configured."""
    listener = config.dicomweb
    if not listener.enabled:
        return None

    def counted(outcome: Outcome) -> None:
        if not outcome.succeeded:
            metrics.instance_rejected(outcome.status)

    return StowServer(
        listener.listen_host,
        listener.listen_port,
        StowSources(
            receive=scp.intake.receive,
            max_instance_bytes=scp.intake.max_instance_bytes,
            token=listener.token if listener.token_file is not None else None,
            on_instance=counted,
            on_request=metrics.stow_answered,
            on_released=on_released,
        ),
    )


def job_actions(config: Config) -> dict[str, Action]:
    """``POST /jobs/<id>/<action>``: the same operations, and refusals, as ``ct2pet-node jobs ...``."""
    return {
        "retry": lambda job_id: retry_job(config, job_id),
        "resend": lambda job_id: resend_job(config, job_id),
        "rerun": lambda job_id: rerun_job(config, job_id),
    }


def node_facts(config: Config) -> NodeFacts:
    """What the dashboard shows of the configuration beside the status report."""

    def days(value: float | None) -> str:
        return "forever" if value is None else f"{value:g} days"

    kept = config.retention
    return NodeFacts(
        tls=config.security.tls_certificate is not None,
        retention=f"received CT {days(kept.spool_days)}, results {days(kept.results_days)}, "
        f"refused series {days(kept.refused_days)}",
        listen=f"{config.admin.listen_host}:{config.admin.listen_port}",
        stow=(
            f"{config.dicomweb.listen_host}:{config.dicomweb.listen_port}"
            + (", token required" if config.dicomweb.token_file is not None else ", no token (loopback)")
            if config.dicomweb.enabled
            else ""
        ),
        sources=tuple(f"{source.name} ({source.type})" for source in config.sources),
    )


def load_translator(config: Config) -> Translator:
    """The engine's pipeline for the configured weights (imports torch), or its Ray cluster's actors."""
    weights_dir = config.engine.weights_dir
    if not (weights_dir / "manifest.json").is_file():
        raise WeightsError(
            f"no weights at {weights_dir} (engine.weights = {config.engine.weights!r}): import the release "
            "with `ct2pet-node weights import`, train one with `ct2pet-node train`, or point "
            "[engine] weights at a weights directory"
        )
    if config.engine.backend == "ray":
        return _ray_translator(config)
    from ct2pet_node.engine import load_pipeline
    from ct2pet_node.engine.options import EngineOptions

    engine = config.engine
    options = EngineOptions.from_config(engine)
    pipeline: Translator = load_pipeline(weights_dir, device=engine.device, options=options)
    return pipeline


def _ray_translator(config: Config) -> Translator:
    import importlib.util

    # Asked, not imported: ray lives in cluster/ (and in the driver process it starts).
    if importlib.util.find_spec("ray") is None:
        raise EngineError('[engine] backend = "ray" needs Ray on this host: pip install "ct2pet-node[ray]"')
    from ct2pet_node.cluster.translator import RayTranslator

    translator: Translator = RayTranslator(config)
    return translator


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


def stow_limits(config: Config) -> StowLimits:
    """STOW-RS batches from ``[delivery]``; its connect and C-STORE response timeouts serve HTTP too."""
    from ct2pet_node.net.stow import StowLimits

    network = config.node.network_timeout_seconds
    delivery = config.delivery
    return StowLimits(
        batch_instances=delivery.stow_batch_instances,
        batch_bytes=delivery.stow_batch_mb * 1024 * 1024,
        connect_seconds=delivery.connect_timeout_seconds or network,
        answer_seconds=delivery.dimse_timeout_seconds or network,
    )
