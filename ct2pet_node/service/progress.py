"""What each job is doing now: receiving, translating or delivering, and how far along.

Progress that changes per slice or per instance is held here, in memory, on a
:class:`ProgressBoard` owned by the running node; it is never written to the
job store (a write per slice would cost more than the slice). The engine
worker and the sender write to the board; ``status`` and ``jobs show`` read
it through the admin endpoint. When the node is down, :func:`job_progress`
builds the same value from what the store already holds: instances
received, checkpointed chunks, the outbox's acknowledged files.

The JSON (``progress`` in ``status --json`` and ``jobs show --json``) always
has every key; a number that does not apply to the phase, or is not known,
is null, never 0.
"""

from __future__ import annotations

import dataclasses
import datetime
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ct2pet_node.domain.jobs import Job, JobState

RECEIVING = "receiving"
TRANSLATING = "translating"
DELIVERING = "delivering"


@dataclass(frozen=True, slots=True)
class JobProgress:
    """One job's progress; ``phase`` None when it is in none of the three (waiting, or finished).

    Attributes
    ----------
    seconds_to_quiet : float or None
        Seconds until ``[routing] series_quiet_seconds`` of silence completes the series.
    seconds_to_settle : float or None
        Seconds until the settle rule completes the series (its one association
        was released, its stack has no gap: ``[routing] settle_after_release_seconds``);
        None where that rule does not apply, or where only the store was asked.
    estimated_finish : str or None
        When the translation should end, ISO 8601 UTC, from the rate of the slices
        translated so far (checkpointed slices read back do not count towards the rate).
    instances_sent, instances_total : int or None
        Result instances acknowledged, and to be sent, over every destination.
    """

    phase: str | None = None
    instances_received: int | None = None
    seconds_to_quiet: float | None = None
    seconds_to_settle: float | None = None
    slices_done: int | None = None
    slices_total: int | None = None
    estimated_finish: str | None = None
    instances_sent: int | None = None
    instances_total: int | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> JobProgress:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in (data or {}).items() if key in names})

    def describe(self) -> str:
        """One line for people, e.g. "translating: 48 of 247 slices, finish 2026-01-01T10:00:00Z"."""
        if self.phase == RECEIVING:
            quiet, settle = self.seconds_to_quiet, self.seconds_to_settle
            due = "" if quiet is None else f", quiet rule completes it in {quiet:.0f} s"
            if settle is not None:
                due = f", association released: completes in {settle:.0f} s unless more arrives"
            return f"receiving: {self.instances_received} instances so far{due}"
        if self.phase == TRANSLATING:
            total = "?" if self.slices_total is None else self.slices_total
            finish = f", estimated finish {self.estimated_finish}" if self.estimated_finish else ""
            return f"translating: {self.slices_done} of {total} slices{finish}"
        if self.phase == DELIVERING:
            total = "?" if self.instances_total is None else self.instances_total
            return f"delivering: {self.instances_sent} of {total} instances sent"
        return "-"


def iso_utc(seconds: float) -> str:
    """Seconds since the epoch as ISO 8601 UTC, to the second ("2026-01-01T10:00:00Z")."""
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def estimate_finish(
    started_at: float, done_at_start: float, done: float, total: int, now: float
) -> str | None:
    """When ``total`` will be done at the rate since ``started_at``; None before any progress is made."""
    elapsed, made = now - started_at, done - done_at_start
    if made <= 0 or elapsed <= 0:
        return None
    return iso_utc(now + (total - done) * elapsed / made)


def receiving_progress(
    job: Job, quiet_seconds: float, now: float, settles_at: float | None = None
) -> JobProgress:
    """A RECEIVED job's progress from its stored facts and, from the router, when it settles.

    ``now`` and ``settles_at`` are on the store's (wall) clock.
    """
    return JobProgress(
        RECEIVING,
        instances_received=job.n_instances,
        seconds_to_quiet=round(max(0.0, job.last_instance_at + quiet_seconds - now), 1),
        seconds_to_settle=None if settles_at is None else round(max(0.0, settles_at - now), 1),
    )


def job_progress(
    job: Job,
    now: float,
    quiet_seconds: float,
    *,
    live: JobProgress | None = None,
    settles_at: float | None = None,
    checkpointed_slices: int = 0,
    deliveries: Sequence[tuple[int, int]] = (),
) -> JobProgress:
    """A job's progress: the running node's ``live`` value where it has one, else the store's facts.

    Parameters
    ----------
    settles_at : float or None
        When the router's settle rule completes a RECEIVED job (:meth:`ProgressBoard.settles_at`).
    checkpointed_slices : int
        Slices the engine has checkpointed for the job (a stopped translation resumes from them).
    deliveries : sequence of (acknowledged, files)
        One pair per outbox entry of the job.
    """
    if job.state is JobState.RECEIVED:
        progress = receiving_progress(job, quiet_seconds, now, settles_at)
        if settles_at is None and live is not None and live.seconds_to_settle is not None:
            # The running node's word (``jobs show`` asks it): only the router knows of releases.
            progress = dataclasses.replace(progress, seconds_to_settle=live.seconds_to_settle)
        return progress
    if live is not None and live.phase is not None:
        return live
    if job.state is JobState.PROCESSING or (job.state is JobState.WAITING and checkpointed_slices):
        return JobProgress(TRANSLATING, slices_done=checkpointed_slices)
    if job.state is JobState.SENDING and deliveries:
        return JobProgress(
            DELIVERING,
            instances_sent=sum(sent for sent, _ in deliveries),
            instances_total=sum(files for _, files in deliveries),
        )
    return JobProgress()


@dataclass(slots=True)
class _Translation:
    total: int
    done: float
    started_at: float
    done_at_start: float


@dataclass(slots=True)
class _Delivery:
    sent: int
    total: int


class ProgressBoard:
    """Live progress of the jobs on the engine and in the sender; every method is thread-safe.

    Parameters
    ----------
    clock : callable
        Wall clock, seconds since the epoch (the estimated finish is a wall time).
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._translations: dict[int, _Translation] = {}
        self._deliveries: dict[int, _Delivery] = {}
        self._delivering: int | None = None
        self._settling: dict[int, float] = {}

    # -- the router --------------------------------------------------------------------------

    def settling(self, due: Mapping[int, float]) -> None:
        """The RECEIVED jobs the settle rule will complete, job id -> when (wall clock); replaces the last."""
        with self._lock:
            self._settling = dict(due)

    def settles_at(self, job_id: int) -> float | None:
        with self._lock:
            return self._settling.get(job_id)

    # -- the engine worker -------------------------------------------------------------------

    def translation_started(self, job_id: int, slices_total: int) -> None:
        with self._lock:
            self._translations[job_id] = _Translation(slices_total, 0.0, self._clock(), 0.0)

    def slices_done(self, job_id: int, done: float, *, translated: bool = True) -> None:
        """``done`` slices (a fraction within a chunk) are finished; ``translated`` False: read
        back from a checkpoint, which says nothing about the engine's rate."""
        with self._lock:
            entry = self._translations.get(job_id)
            if entry is None:
                return
            entry.done = done
            if not translated:
                entry.started_at, entry.done_at_start = self._clock(), done

    def translation_ended(self, job_id: int) -> None:
        with self._lock:
            self._translations.pop(job_id, None)

    # -- the sender --------------------------------------------------------------------------

    def delivery_started(self, job_id: int, sent: int, total: int) -> None:
        """The sender begins an attempt for ``job_id``; ``sent`` of ``total`` acknowledged before it."""
        with self._lock:
            self._deliveries[job_id] = _Delivery(sent, total)
            self._delivering = job_id

    def instance_sent(self) -> None:
        """The delivery in flight had one more instance acknowledged (the sender is one thread)."""
        with self._lock:
            entry = self._deliveries.get(self._delivering) if self._delivering is not None else None
            if entry is not None:
                entry.sent += 1

    def delivery_ended(self, job_id: int) -> None:
        """The attempt is over; the outbox holds its results from here on."""
        with self._lock:
            self._deliveries.pop(job_id, None)
            if self._delivering == job_id:
                self._delivering = None

    # -- readers -----------------------------------------------------------------------------

    def get(self, job_id: int) -> JobProgress | None:
        """The job's live progress, or None when neither the engine nor the sender is on it."""
        now = self._clock()
        with self._lock:
            translation = self._translations.get(job_id)
            if translation is not None:
                return JobProgress(
                    TRANSLATING,
                    slices_done=int(translation.done),
                    slices_total=translation.total,
                    estimated_finish=estimate_finish(
                        translation.started_at,
                        translation.done_at_start,
                        translation.done,
                        translation.total,
                        now,
                    ),
                )
            delivery = self._deliveries.get(job_id)
            if delivery is not None:
                return JobProgress(DELIVERING, instances_sent=delivery.sent, instances_total=delivery.total)
        return None
