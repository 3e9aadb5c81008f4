"""What ``ct2pet-node status`` and ``/status`` report, as one frozen value; identifiers only, no patient data.

:func:`build_status` reads the running node's parts (job store, outbox,
engine worker, recent errors) into a :class:`StatusReport`; the admin
endpoint serves its :meth:`~StatusReport.to_json`, and the CLI reads that
back with :meth:`~StatusReport.from_json` to render it
(:mod:`ct2pet_node.service.status_text`). The JSON's field names are a
contract (``status --json``); :meth:`from_json` accepts a report missing
fields, as an older node would send.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ct2pet_node import __version__
from ct2pet_node.domain.cluster import ClusterSnapshot, ClusterView
from ct2pet_node.domain.fetch import FetchRecord
from ct2pet_node.domain.jobs import JobState
from ct2pet_node.routing.retention import disk_warning
from ct2pet_node.service.progress import job_progress
from ct2pet_node.service.recent_errors import LoggedProblem
from ct2pet_node.spool.atomic import free_megabytes

if TYPE_CHECKING:  # `ct2pet-node status` reads reports without loading the node's parts
    from ct2pet_node.config import Config
    from ct2pet_node.service.progress import ProgressBoard
    from ct2pet_node.service.recent_errors import RecentErrors
    from ct2pet_node.service.worker import EngineWorker
    from ct2pet_node.spool.jobstore import JobStore
    from ct2pet_node.spool.outbox import Outbox


# The jobs ``status`` lists one by one, with their progress.
ACTIVE_STATES = (JobState.RECEIVED, JobState.WAITING, JobState.PROCESSING, JobState.SENDING)


@dataclass(frozen=True, slots=True)
class ModelStatus:
    id: str
    output_units: str
    device: str
    steps: int
    eta: float | None


@dataclass(frozen=True, slots=True)
class QueueDepths:
    engine: int
    outbox_due: int


@dataclass(frozen=True, slots=True)
class WaitingJob:
    """The job waiting longest for the engine; ``since`` in seconds since the epoch."""

    id: int
    series_uid: str
    since: float


@dataclass(frozen=True, slots=True)
class DestinationStatus:
    """A configured destination and its delivery health; times in seconds since the epoch.

    ``address`` is ``AE@host:port`` for a DIMSE destination (``type`` "dimse")
    and the service URL, without credentials, for a DICOMweb one ("dicomweb").
    """

    name: str
    address: str
    pending: int = 0
    sending: int = 0
    delivered: int = 0
    dead: int = 0
    last_attempt_at: float | None = None
    last_result: str | None = None
    last_success_at: float | None = None
    last_error: str | None = None
    type: str = "dimse"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    job_id: int
    destination: str
    last_error: str | None


@dataclass(frozen=True, slots=True)
class DiskStatus:
    """Free space of ``data_dir``, MiB, beside the watermark and the warning level; ``warning`` None: room enough."""

    data_dir_free_mb: float
    min_free_mb: int
    warn_free_mb: int
    warning: str | None = None


@dataclass(frozen=True, slots=True)
class StatusReport:
    """The node's status at one moment.

    Attributes
    ----------
    started_at : float
        Seconds since the epoch.
    uptime_seconds : float
    jobs : tuple of (state, count)
        Every job state, in lifecycle order, with its number of jobs.
    """

    version: str
    pid: int
    started_at: float
    uptime_seconds: float
    ae_title: str
    port: int
    model: ModelStatus
    queues: QueueDepths
    current_job: int | None
    jobs: tuple[tuple[str, int], ...]
    oldest_waiting: WaitingJob | None
    destinations: tuple[DestinationStatus, ...]
    dead_letters: tuple[DeadLetter, ...]
    last_errors: tuple[LoggedProblem, ...]
    # The DICOM listener's own counts (StorageScp.listener_status): slots, waiting connections,
    # rejections by reason, instances ignored by SOP class.
    listener: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    disk: DiskStatus | None = None
    # Jobs not yet finished, each {"id", "state", "series_uid", "progress"} (service.progress.JobProgress).
    active_jobs: tuple[Mapping[str, Any], ...] = ()
    # The engine cluster's one-line state ([engine] backend = "ray"); None for the local engine.
    engine: str | None = None
    # The cluster's actors, chunks in flight, slices/s and retries; None for the local engine.
    cluster: ClusterSnapshot | None = None
    # The last fetches (`ct2pet-node fetch`, POST /fetch), oldest first, failed ones too.
    recent_fetches: tuple[FetchRecord, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The ``/status`` JSON."""
        return {
            "version": self.version,
            "pid": self.pid,
            "started_at": self.started_at,
            "uptime_seconds": self.uptime_seconds,
            "ae_title": self.ae_title,
            "port": self.port,
            "model": dataclasses.asdict(self.model),
            "queues": dataclasses.asdict(self.queues),
            "current_job": self.current_job,
            "jobs": dict(self.jobs),
            "oldest_waiting": None
            if self.oldest_waiting is None
            else dataclasses.asdict(self.oldest_waiting),
            "destinations": [dataclasses.asdict(destination) for destination in self.destinations],
            "dead_letters": [dataclasses.asdict(dead) for dead in self.dead_letters],
            "last_errors": [problem.to_json() for problem in self.last_errors],
            "listener": dict(self.listener),
            "disk": None if self.disk is None else dataclasses.asdict(self.disk),
            "active_jobs": [dict(job) for job in self.active_jobs],
            "recent_fetches": [record.to_json() for record in self.recent_fetches],
            # Only with a cluster engine, so a local node's /status stays as it was.
            **({"engine": self.engine} if self.engine is not None else {}),
            **({"cluster": self.cluster.to_json()} if self.cluster is not None else {}),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StatusReport:
        """Read :meth:`to_json`'s output back; absent fields get empty values."""
        model = data.get("model") or {}
        queues = data.get("queues") or {}
        oldest = data.get("oldest_waiting")
        return cls(
            version=str(data.get("version", "")),
            pid=int(data.get("pid") or 0),
            started_at=float(data.get("started_at") or 0.0),
            uptime_seconds=float(data.get("uptime_seconds") or 0.0),
            ae_title=str(data.get("ae_title", "")),
            port=int(data.get("port") or 0),
            model=ModelStatus(
                id=str(model.get("id", "")),
                output_units=str(model.get("output_units", "")),
                device=str(model.get("device", "")),
                steps=int(model.get("steps") or 0),
                eta=model.get("eta"),
            ),
            queues=QueueDepths(int(queues.get("engine") or 0), int(queues.get("outbox_due") or 0)),
            current_job=data.get("current_job"),
            jobs=tuple((str(state), int(count)) for state, count in (data.get("jobs") or {}).items()),
            oldest_waiting=None
            if not oldest
            else WaitingJob(int(oldest["id"]), str(oldest["series_uid"]), float(oldest["since"])),
            destinations=tuple(_known(DestinationStatus, entry) for entry in data.get("destinations") or ()),
            dead_letters=tuple(_known(DeadLetter, entry) for entry in data.get("dead_letters") or ()),
            last_errors=tuple(LoggedProblem.from_json(entry) for entry in data.get("last_errors") or ()),
            listener=dict(data.get("listener") or {}),
            disk=_known(DiskStatus, data["disk"]) if data.get("disk") else None,
            active_jobs=tuple(dict(job) for job in data.get("active_jobs") or ()),
            engine=data.get("engine"),
            cluster=ClusterSnapshot.from_json(data["cluster"]) if data.get("cluster") else None,
            recent_fetches=tuple(FetchRecord.from_json(entry) for entry in data.get("recent_fetches") or ()),
        )


def _known(kind: Any, entry: Mapping[str, Any]) -> Any:
    """``kind`` from the keys of ``entry`` it has fields for (a newer node may send more)."""
    names = {f.name for f in dataclasses.fields(kind)}
    return kind(**{key: value for key, value in entry.items() if key in names})


@dataclass(frozen=True, slots=True)
class StatusSources:
    """Where a running node's status is read from; built once by the composition root."""

    config: Config
    store: JobStore
    outbox: Outbox
    worker: EngineWorker
    errors: RecentErrors
    started_at: float
    pid: int
    listener: Callable[[], Mapping[str, Any]] | None = None
    progress: ProgressBoard | None = None
    fetches: Callable[[], Sequence[FetchRecord]] | None = None


def build_status(sources: StatusSources, now: float) -> StatusReport:
    """The node's status at wall-clock time ``now`` (seconds since the epoch)."""
    config, worker = sources.config, sources.worker
    counts = sources.store.counts_by_state()
    waiting = sources.store.list_jobs([JobState.WAITING])
    oldest = min(waiting, key=lambda job: job.updated_at) if waiting else None
    translator = worker.translator
    return StatusReport(
        version=__version__,
        pid=sources.pid,
        started_at=sources.started_at,
        uptime_seconds=round(now - sources.started_at, 1),
        ae_title=config.node.ae_title,
        port=config.node.port,
        model=ModelStatus(
            id=translator.model_id,
            output_units=translator.output_units,
            # The engine's pipeline knows its device; the Translator protocol does not promise one.
            device=str(getattr(translator, "device", "unknown")),
            steps=worker.sampling.steps,
            eta=worker.sampling.eta,
        ),
        queues=QueueDepths(engine=worker.queue.depth(), outbox_due=len(sources.outbox.due(now))),
        current_job=worker.current_job,
        jobs=tuple((state.value, counts.get(state, 0)) for state in JobState),
        oldest_waiting=None
        if oldest is None
        else WaitingJob(oldest.id, oldest.series_uid, oldest.updated_at),
        destinations=_destinations(config, sources.outbox),
        dead_letters=tuple(
            DeadLetter(entry.job_id, entry.destination, entry.last_error)
            for entry in sources.outbox.dead_letters()
        ),
        last_errors=sources.errors.snapshot(),
        listener=sources.listener() if sources.listener is not None else {},
        disk=_disk(config),
        active_jobs=_active_jobs(sources, now),
        engine=_engine_line(translator, counts.get(JobState.WAITING, 0)),
        cluster=translator.cluster_snapshot(now) if isinstance(translator, ClusterView) else None,
        recent_fetches=tuple(sources.fetches()) if sources.fetches is not None else (),
    )


def _active_jobs(sources: StatusSources, now: float) -> tuple[dict[str, Any], ...]:
    quiet = sources.config.routing.series_quiet_seconds
    board = sources.progress
    listed = []
    for job in sources.store.list_jobs(list(ACTIVE_STATES)):
        live = board.get(job.id) if board is not None else None
        progress = job_progress(
            job,
            now,
            quiet,
            live=live,
            settles_at=board.settles_at(job.id) if board is not None else None,
            deliveries=_deliveries(sources.outbox, job.id),
        )
        listed.append(
            {
                "id": job.id,
                "state": job.state.value,
                "series_uid": job.series_uid,
                "progress": progress.to_json(),
            }
        )
    return tuple(listed)


def _deliveries(outbox: Outbox, job_id: int) -> list[tuple[int, int]]:
    """(acknowledged, files) per outbox entry of the job."""
    return [
        (sum(1 for f in entry.files if f.delivered), len(entry.files)) for entry in outbox.entries(job_id)
    ]


def _engine_line(translator: object, waiting: int) -> str | None:
    # Only a cluster translator (ct2pet_node.cluster) has a state worth a line; the local engine has none.
    line = getattr(translator, "cluster_status", None)
    return None if line is None else str(line(waiting))


def _disk(config: Config) -> DiskStatus:
    free = free_megabytes(config.node.data_dir)
    minimum, warn = config.node.min_free_mb, config.retention.warn_free_mb
    return DiskStatus(round(free, 1), minimum, warn, disk_warning(free, minimum, warn))


def _destinations(config: Config, outbox: Outbox) -> tuple[DestinationStatus, ...]:
    known = {summary.name: summary for summary in outbox.summary()}
    listed = []
    for destination in config.destinations:
        address = destination.address
        summary = known.get(destination.name)
        if summary is None:
            listed.append(DestinationStatus(destination.name, address, type=destination.type))
            continue
        health = {key: value for key, value in dataclasses.asdict(summary).items() if key != "name"}
        listed.append(DestinationStatus(destination.name, address, type=destination.type, **health))
    return tuple(listed)
