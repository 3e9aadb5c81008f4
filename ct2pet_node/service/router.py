"""The router: one thread that owns all series state between receipt and the engine.

It takes stored-instance notifications from the storage SCP, parses each
spooled file's header (off the association thread), and every tick decides
for each RECEIVED job whether its series is complete. A complete series is
qualified and moves to WAITING (and onto the engine queue) or to REFUSED
with the reason kept in the job store.

The SCP also says when an association is released cleanly and which
instances it stored. A series all of whose instances so far came in that one
association may complete ``settle_after_release_seconds`` after the release
(:func:`~ct2pet_node.routing.completion.decide_completion`); an instance from
any other association, before or after, leaves it to the quiet rule. Releases
are held in memory only: after a restart the quiet rule completes the series.

The job store is the truth; notifications are only hints. Each tick the
router compares what it has parsed with the job's instance count in the
store and reads any instance it missed, so a lost notification, a restart,
a reopened job or a new job generation all take the same path.

On start it rebuilds what it holds in memory from the store: WAITING jobs
are re-enqueued and RECEIVED jobs have their instances re-read. Job states
a crash left half-way (PROCESSING, SENDING) are put right before any thread
starts, by :func:`ct2pet_node.service.recovery.recover_jobs`.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeAlias

import structlog

from ct2pet_node.config import RoutingConfig
from ct2pet_node.dicom.headers import read_slice_header
from ct2pet_node.domain.jobs import Job, JobDetails, JobState
from ct2pet_node.domain.records import AssociationReleased, InstanceRecord, SliceHeader
from ct2pet_node.domain.uids import SeriesUid, SopInstanceUid
from ct2pet_node.errors import Ct2PetError, SeriesRefused, StorageError
from ct2pet_node.routing.completion import CompletionDecision, decide_completion
from ct2pet_node.routing.qualify import qualify_series
from ct2pet_node.service.progress import ProgressBoard
from ct2pet_node.service.queue import EngineQueue
from ct2pet_node.spool.jobstore import JobStore

log = structlog.get_logger(__name__)

DEFAULT_TICK_SECONDS = 0.5
_Notification: TypeAlias = InstanceRecord | AssociationReleased


@dataclass(slots=True)
class _SeriesState:
    """What the router has parsed of one RECEIVED job; private to the router thread."""

    job_id: int
    headers: dict[str, SliceHeader] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)

    def knows(self, sop_instance_uid: str) -> bool:
        return sop_instance_uid in self.headers or sop_instance_uid in self.problems

    @property
    def seen(self) -> int:
        return len(self.headers) + len(self.problems)

    def brought_by(self, delivered: frozenset[SopInstanceUid]) -> bool:
        """Whether every instance parsed so far is one of ``delivered`` (one association's)."""
        return delivered.issuperset(self.headers) and delivered.issuperset(self.problems)


@dataclass(frozen=True, slots=True)
class _Release:
    """The last clean release of an association that stored instances of a series."""

    released_at: float
    delivered: frozenset[SopInstanceUid]


class Router:
    """Series completion, qualification and hand-over to the engine queue.

    Parameters
    ----------
    store : JobStore
        The source of truth; every decision is persisted before it takes effect.
    engine_queue : EngineQueue
        Where WAITING job ids go.
    routing : RoutingConfig
        Quiet period and qualification limits.
    clock : callable
        Wall clock, seconds since the epoch (the store's ``last_instance_at`` is wall clock too).
    tick_seconds : float
        How often the thread decides completion and polls force requests, seconds.
    progress : ProgressBoard or None
        Where the router posts when the settle rule will complete each series.
    """

    def __init__(
        self,
        store: JobStore,
        engine_queue: EngineQueue,
        routing: RoutingConfig,
        *,
        clock: Callable[[], float] = time.time,
        tick_seconds: float = DEFAULT_TICK_SECONDS,
        progress: ProgressBoard | None = None,
    ) -> None:
        self._store = store
        self._queue = engine_queue
        self._routing = routing
        self._clock = clock
        self._tick_seconds = tick_seconds
        self._progress = progress
        self._inbox: queue.SimpleQueue[_Notification] = queue.SimpleQueue()
        self._series: dict[str, _SeriesState] = {}  # series UID -> state of its RECEIVED job
        self._releases: dict[SeriesUid, _Release] = {}
        self._unqueued: list[int] = []  # WAITING job ids the engine queue refused for now
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # Called from other threads ------------------------------------------------------------------

    def notify(self, record: InstanceRecord) -> None:
        """Tell the router an instance was stored; never blocks (association threads call it)."""
        self._inbox.put(record)

    def notify_released(self, release: AssociationReleased) -> None:
        """Tell the router an association was released cleanly; never blocks (association threads call it)."""
        self._inbox.put(release)

    def start(self) -> None:
        """Recover from the store, then run the router thread."""
        self.recover()
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="router", daemon=True)
        self._thread.start()
        log.info("router_started", tick_seconds=self._tick_seconds)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after handling every notification already received; wait up to ``timeout`` s."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("router_stop_timed_out", timeout=timeout)
            self._thread = None
        log.info("router_stopped")

    # The router thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        next_tick = time.monotonic()
        while not self._stopping.is_set():
            try:
                self._wait_and_handle(max(0.0, next_tick - time.monotonic()))
                if time.monotonic() >= next_tick:
                    self.tick(self._clock())
                    next_tick = time.monotonic() + self._tick_seconds
            except Exception:  # thread top level: log, keep routing; the store still holds everything
                log.exception("router_error")
                self._stopping.wait(self._tick_seconds)
        self.drain()

    def _wait_and_handle(self, timeout: float) -> None:
        try:
            notification = self._inbox.get(timeout=timeout)
        except queue.Empty:
            return
        self._dispatch(notification)
        self.drain()

    def drain(self) -> None:
        """Handle every notification waiting in the inbox."""
        while True:
            try:
                notification = self._inbox.get_nowait()
            except queue.Empty:
                return
            self._dispatch(notification)

    def _dispatch(self, notification: _Notification) -> None:
        if isinstance(notification, AssociationReleased):
            self.handle_release(notification)
        else:
            self.handle(notification)

    # Decisions (public so tests can drive the router without its thread) -------------------------

    def recover(self) -> None:
        """Bring the in-memory state and the engine queue back in line with the store."""
        waiting = self._store.list_jobs([JobState.WAITING])
        for job in waiting:
            self._enqueue(job.id)
        received = self._store.list_jobs([JobState.RECEIVED])
        for job in received:
            self._sync(job)
        log.info("router_recovered", waiting=len(waiting), received=len(received))

    def handle(self, record: InstanceRecord) -> None:
        """Parse one newly stored instance into its series' state."""
        state = self._series.get(record.series_uid)
        if state is not None and not state.knows(record.sop_instance_uid):
            self._parse(state, record)
        # Otherwise the next tick's sync reads it from the store with the rest of its job.

    def handle_release(self, release: AssociationReleased) -> None:
        """Note a clean release for each series it stored instances of; ticks judge whether it counts."""
        for series_uid, delivered in release.delivered.items():
            self._releases[series_uid] = _Release(release.released_at, delivered)
            log.info(
                "association_released",
                series_uid=series_uid,
                n_instances=len(delivered),
                calling_ae=release.calling_ae_title,
            )

    def tick(self, now: float) -> None:
        """Decide completion of every RECEIVED job at wall-clock time ``now`` (seconds)."""
        self._offer_unqueued()
        received = self._store.list_jobs([JobState.RECEIVED])
        live = {job.series_uid for job in received}
        for series_uid in list(self._series):
            if series_uid not in live:
                del self._series[series_uid]
        for series_uid in list(self._releases):
            if series_uid not in live:
                del self._releases[series_uid]
        settling: dict[int, float] = {}
        for job in received:
            state = self._sync(job)
            decision = self._decide(job, state, now)
            if decision.complete:
                self._finish(job, state, decision.why)
            elif decision.settles_at is not None:
                settling[job.id] = decision.settles_at
        if self._progress is not None:
            self._progress.settling(settling)

    def _decide(self, job: Job, state: _SeriesState, now: float) -> CompletionDecision:
        return decide_completion(
            list(state.headers.values()),
            job.last_instance_at,
            now,
            self._routing.series_quiet_seconds,
            job.forced,
            grid_tolerance_mm=self._routing.slice_spacing_tolerance_mm,
            released_at=self._released_at(job.series_uid, state),
            settle_seconds=self._routing.settle_after_release_seconds,
        )

    def _released_at(self, series_uid: SeriesUid, state: _SeriesState) -> float | None:
        """When the one association that brought every instance of the series so far was released."""
        release = self._releases.get(series_uid)
        if release is None:
            return None
        if not state.brought_by(release.delivered):
            # Spread over associations (an earlier one, or one during the settle time): quiet rule only.
            del self._releases[series_uid]
            log.info(
                "settle_rule_off", job_id=state.job_id, series_uid=series_uid, reason="several associations"
            )
            return None
        return release.released_at

    def _sync(self, job: Job) -> _SeriesState:
        state = self._series.get(job.series_uid)
        if state is None or state.job_id != job.id:
            state = _SeriesState(job.id)
            self._series[job.series_uid] = state
        if state.seen < job.n_instances:
            for record in self._store.instances_of(job.series_uid):
                if not state.knows(record.sop_instance_uid):
                    self._parse(state, record)
        return state

    def _parse(self, state: _SeriesState, record: InstanceRecord) -> None:
        try:
            header = read_slice_header(record.path)
        except Ct2PetError as error:
            self._unreadable(state, record, str(error))
            return
        except Exception as error:  # a library's parse error: same outcome, but keep the traceback
            log.exception("header_parse_error", sop_instance_uid=record.sop_instance_uid)
            self._unreadable(state, record, f"{type(error).__name__}: {error}")
            return
        state.headers[record.sop_instance_uid] = header

    def _unreadable(self, state: _SeriesState, record: InstanceRecord, why: str) -> None:
        problem = f"instance {record.sop_instance_uid} unreadable: {why}"
        state.problems[record.sop_instance_uid] = problem
        self._store.set_instance_problem(record.sop_instance_uid, problem)
        log.warning(
            "instance_unreadable",
            job_id=state.job_id,
            series_uid=record.series_uid,
            sop_instance_uid=record.sop_instance_uid,
            reason=why,
        )

    def _finish(self, job: Job, state: _SeriesState, why_complete: str) -> None:
        seen = state.seen
        reason, notes = self._refusal_reason(state)
        target = JobState.WAITING if reason is None else JobState.REFUSED
        moved = self._store.transition(
            job.id,
            JobState.RECEIVED,
            target,
            reason,
            expected_n_instances=seen,
            details=JobDetails(completed_because=why_complete, qualification_notes=tuple(notes)),
        )
        if moved is None:
            # An instance arrived (or the job moved) since we looked: decide again next tick.
            log.info("series_decision_deferred", job_id=job.id, series_uid=job.series_uid)
            return
        del self._series[job.series_uid]
        self._releases.pop(job.series_uid, None)
        if target is JobState.WAITING:
            log.info(
                "series_complete",
                job_id=job.id,
                series_uid=job.series_uid,
                n_instances=seen,
                because=why_complete,
                notes=list(notes),
            )
            self._enqueue(job.id)
        else:
            log.warning("series_refused", job_id=job.id, series_uid=job.series_uid, reason=reason)

    def _refusal_reason(self, state: _SeriesState) -> tuple[str | None, tuple[str, ...]]:
        """Why the complete series is refused (None: it qualifies), and qualification's notes."""
        if state.problems:
            first = next(iter(state.problems.values()))
            more = len(state.problems) - 1
            return (first if more == 0 else f"{first} (and {more} more unreadable instances)"), ()
        try:
            qualified = qualify_series(list(state.headers.values()), self._routing)
        except SeriesRefused as refusal:
            return str(refusal), ()
        return None, qualified.notes

    def _enqueue(self, job_id: int) -> None:
        try:
            self._queue.put(job_id)
        except StorageError as error:
            log.warning("enqueue_deferred", job_id=job_id, reason=str(error))
            if job_id not in self._unqueued:
                self._unqueued.append(job_id)

    def _offer_unqueued(self) -> None:
        pending, self._unqueued = self._unqueued, []
        for job_id in pending:
            job = self._store.get_job(job_id)
            if job is not None and job.state is JobState.WAITING:
                self._enqueue(job_id)
