"""The node's Prometheus metrics: prometheus-client counters and gauges in a registry the node owns.

Not the library's global default registry: every node built in one process
(the tests build many) has its own, and ``/metrics`` shows exactly the
node's series.

Two kinds of series:

- **Events, counted where they happen** (counters; they start at zero when
  the node starts, which Prometheus' ``rate()`` expects): instances received
  and rejected (the storage SCP and the STOW-RS receiver), STOW-RS requests,
  series completed and refused (every job state change, as the job store's
  observer), engine seconds and slices
  (the engine worker), instances sent and failed attempts (the sender).
- **State whose truth is on disk, read at each scrape** (gauges): jobs by
  state and queue depths. They survive a restart and can never disagree
  with ``jobs list``.

To add a series: a :class:`~prometheus_client.Counter` attribute on
:class:`NodeMetrics` (``registry=self.registry``) and a method named for
the event that feeds it, for whoever sees the event; or a :class:`ReadAtScrape`
and a ``read_from`` in the composition root.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ct2pet_node.domain.cluster import ClusterSnapshot
from ct2pet_node.domain.fetch import FetchRecord
from ct2pet_node.domain.jobs import Job, JobState

# The classic text format, which generate_latest writes and every Prometheus server scrapes.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Reader = Callable[[], Mapping[str, float]]


class ReadAtScrape(Collector):
    """One metric family with one label whose samples a function gives at each scrape.

    Parameters
    ----------
    name, documentation : str
        As Prometheus shows them (a counter's name without ``_total``).
    label : str
        The one label; the reader maps its values to samples.
    kind : {"gauge", "counter"}
        "counter" for counts kept elsewhere that only go up (the reader's
        owner guarantees it).
    """

    def __init__(
        self, name: str, documentation: str, label: str, kind: Literal["gauge", "counter"] = "gauge"
    ):
        self.name = name
        self.documentation = documentation
        self.label = label
        self.kind = kind
        self._reader: Reader | None = None

    def read_from(self, reader: Reader) -> None:
        """Take the samples from ``reader`` (label value -> value) from now on."""
        self._reader = reader

    def _family(self) -> GaugeMetricFamily | CounterMetricFamily:
        if self.kind == "counter":
            return CounterMetricFamily(self.name, self.documentation, labels=[self.label])
        return GaugeMetricFamily(self.name, self.documentation, labels=[self.label])

    def describe(self) -> list[Metric]:
        # Lets the registry check names at registration without calling the reader.
        return [self._family()]

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        if self._reader is not None:
            for value, sample in sorted(self._reader().items()):
                family.add_metric([value], float(sample))
        yield family


class ClusterCollector(Collector):
    """The engine cluster's series, from its :class:`ClusterSnapshot` at each scrape."""

    def __init__(self, snapshot: Callable[[], ClusterSnapshot]) -> None:
        self._snapshot = snapshot

    @staticmethod
    def _families(
        snapshot: ClusterSnapshot | None,
    ) -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily, CounterMetricFamily]:
        actors = GaugeMetricFamily("ct2pet_cluster_actors", "Actors of the engine cluster serving the node.")
        in_flight = GaugeMetricFamily(
            "ct2pet_cluster_chunks_in_flight", "Chunks sent to the cluster's actors and not yet back."
        )
        speed = GaugeMetricFamily(
            "ct2pet_cluster_slices_per_second",
            "Slices each actor returned per second over the last minute.",
            labels=["actor", "host", "device"],
        )
        retries = CounterMetricFamily(
            "ct2pet_cluster_chunk_retries", "Chunks sent again because their actor died."
        )
        if snapshot is not None:
            actors.add_metric([], len(snapshot.actors))
            in_flight.add_metric([], snapshot.chunks_in_flight)
            for actor in snapshot.actors:
                speed.add_metric([actor.name, actor.host, actor.device], actor.slices_per_second)
            retries.add_metric([], snapshot.chunk_retries)
        return actors, in_flight, speed, retries

    def describe(self) -> list[Metric]:
        return list(self._families(None))

    def collect(self) -> Iterator[Metric]:
        yield from self._families(self._snapshot())


class NodeMetrics:
    """Every series of one node, named as ``/metrics`` exposes them; the methods are the events."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.instances_received = Counter(
            "ct2pet_instances_received", "CT instances acknowledged to senders.", registry=registry
        )
        self.instances_rejected = Counter(
            "ct2pet_instances_rejected",
            "Instances refused (a C-STORE or a STOW-RS part answered with a failure status), by status.",
            ["status"],
            registry=registry,
        )
        self.stow_requests = Counter(
            "ct2pet_stow_requests",
            "STOW-RS requests answered, by HTTP status (200 all stored, 202 some, 409 none, 401 no token).",
            ["code"],
            registry=registry,
        )
        self.fetches = Counter(
            "ct2pet_fetches",
            "Fetches asked of the node (ct2pet-node fetch, POST /fetch), by source, method and result "
            "(ok, dry_run, failed).",
            ["source", "method", "result"],
            registry=registry,
        )
        self.fetched_instances = Counter(
            "ct2pet_fetched_instances",
            "Instances a fetch retrieved, by source.",
            ["source"],
            registry=registry,
        )
        self.series_completed = Counter(
            "ct2pet_series_completed",
            "Series found complete and qualified by the router (a series reopened by a late "
            "instance counts again when it completes again).",
            registry=registry,
        )
        self.series_refused = Counter(
            "ct2pet_series_refused",
            "Series refused at qualification, by the router or at the engine's re-check.",
            registry=registry,
        )
        self.engine_seconds = Counter(
            "ct2pet_engine_seconds", "Seconds spent translating volumes.", registry=registry
        )
        self.engine_slices = Counter("ct2pet_engine_slices", "CT slices translated.", registry=registry)
        self.send_failures = Counter(
            "ct2pet_send_failures",
            "Failed delivery attempts, by destination.",
            ["destination"],
            registry=registry,
        )
        self.instances_sent = Counter(
            "ct2pet_instances_sent",
            "Instances delivered, by destination.",
            ["destination"],
            registry=registry,
        )
        self.jobs = ReadAtScrape("ct2pet_jobs", "Jobs by state.", "state")
        self.queue_depth = ReadAtScrape("ct2pet_queue_depth", "Items waiting, by queue.", "queue")
        registry.register(self.jobs)
        registry.register(self.queue_depth)
        # The DICOM listener keeps its own counts (net/ has no metrics); read at scrape time.
        self.instances_ignored = ReadAtScrape(
            "ct2pet_instances_ignored",
            "Instances of SOP classes the node does not translate, acknowledged and dropped, by SOP class.",
            "sop_class",
            kind="counter",
        )
        self.associations_rejected = ReadAtScrape(
            "ct2pet_associations_rejected",
            "DICOM association requests rejected, by reason.",
            "reason",
            "counter",
        )
        self.connections_dropped = ReadAtScrape(
            "ct2pet_connections_dropped",
            "DICOM connections closed before their association request, by reason.",
            "reason",
            "counter",
        )
        for family in (self.instances_ignored, self.associations_rejected, self.connections_dropped):
            registry.register(family)
        self.associations_active = Gauge(
            "ct2pet_associations_active",
            "DICOM associations holding a slot (requested and not ended).",
            registry=registry,
        )
        self.connections_waiting = Gauge(
            "ct2pet_connections_waiting",
            "DICOM connections that have not yet sent an association request.",
            registry=registry,
        )

        self.data_dir_free_bytes = Gauge(
            "ct2pet_data_dir_free_bytes",
            "Free bytes on the filesystem of data_dir, as the node's user may use them (read at scrape).",
            registry=registry,
        )
        self.data_dir_min_free_bytes = Gauge(
            "ct2pet_data_dir_min_free_bytes",
            "The free-space watermark ([node] min_free_mb) in bytes: below it new CT is refused with 0xA700.",
            registry=registry,
        )

    def read_free_space(self, free_bytes: Callable[[], float], min_free_bytes: float) -> None:
        """Read data_dir's free bytes from ``free_bytes`` at each scrape; the watermark beside it."""
        self.data_dir_free_bytes.set_function(free_bytes)
        self.data_dir_min_free_bytes.set(min_free_bytes)

    def read_cluster(self, snapshot: Callable[[], ClusterSnapshot]) -> None:
        """Expose the engine cluster's series (``[engine] backend = "ray"`` only), read at each scrape."""
        self.registry.register(ClusterCollector(snapshot))

    def read_from_listener(self, status: Callable[[], Mapping[str, Any]]) -> None:
        """Take the listener's series from ``StorageScp.listener_status`` (what ``status`` shows)."""
        self.instances_ignored.read_from(lambda: status()["instances_ignored"])
        self.associations_rejected.read_from(lambda: status()["associations_rejected"])
        self.connections_dropped.read_from(lambda: status()["connections_dropped"])
        self.associations_active.set_function(lambda: float(status()["associations_active"]))
        self.connections_waiting.set_function(lambda: float(status()["connections_waiting"]))

    # Events --------------------------------------------------------------------------------------

    def instance_stored(self) -> None:
        """The storage SCP acknowledged a new CT instance (not a re-sent one)."""
        self.instances_received.inc()

    def instance_rejected(self, status: int) -> None:
        """A C-STORE or a STOW-RS part was answered with failure ``status`` (e.g. 0xA700)."""
        self.instances_rejected.labels(status=f"0x{status:04X}").inc()

    def stow_answered(self, code: int) -> None:
        """The STOW-RS receiver answered a request with HTTP status ``code``."""
        self.stow_requests.labels(code=str(code)).inc()

    def fetch_recorded(self, record: FetchRecord) -> None:
        """A fetch ended (``Fetcher.on_record``)."""
        result = "failed" if record.error is not None else "dry_run" if record.dry_run else "ok"
        self.fetches.labels(source=record.source, method=record.method, result=result).inc()
        if record.instances:
            self.fetched_instances.labels(source=record.source).inc(record.instances)

    def job_moved(self, job: Job, previous: JobState) -> None:
        """A job state change, committed (the job store's observer)."""
        if previous is JobState.RECEIVED and job.state is JobState.WAITING:
            self.series_completed.inc()
        elif job.state is JobState.REFUSED:
            self.series_refused.inc()

    def translated(self, seconds: float, slices: int) -> None:
        """The engine translated ``slices`` CT slices in ``seconds``."""
        self.engine_seconds.inc(seconds)
        self.engine_slices.inc(slices)

    def attempt_finished(self, destination: str, acknowledged: int, failed: bool) -> None:
        """One delivery attempt to ``destination``: instances acknowledged, and whether it failed."""
        if acknowledged:
            self.instances_sent.labels(destination=destination).inc(acknowledged)
        if failed:
            self.send_failures.labels(destination=destination).inc()

    # Reading -------------------------------------------------------------------------------------

    def sample(self, name: str, **labels: str) -> float:
        """The current value of one sample (0 when absent), e.g. ``sample("ct2pet_jobs", state="done")``."""
        return self.registry.get_sample_value(name, labels) or 0.0

    def render(self) -> bytes:
        """The Prometheus text format, served as :data:`CONTENT_TYPE`."""
        return generate_latest(self.registry)
