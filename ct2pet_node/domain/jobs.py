"""Jobs: one per received CT series, the states they move through, and the moves allowed.

:data:`TRANSITIONS` is the whole lifecycle, one row per allowed move. The job
store's one writer (:meth:`ct2pet_node.spool.jobstore.JobStore.transition`)
checks every change against it and raises :class:`IllegalTransition` for
anything else, before writing. What can be derived from the table is:
:attr:`JobState.is_final`, :attr:`JobState.is_open` and which move counts an
engine attempt. Adding a state means a member of :class:`JobState` and its
rows here; nothing else in the package spells out which moves exist.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from pathlib import Path

from ct2pet_node.domain.uids import SeriesUid, StudyUid
from ct2pet_node.errors import IllegalTransition


class JobState(Enum):
    """Life of a job. Every change is persisted before it takes effect."""

    RECEIVED = "received"  # instances arriving, series not yet complete
    WAITING = "waiting"  # complete and qualified, waiting for the engine
    PROCESSING = "processing"  # on the engine
    SENDING = "sending"  # written, in the outbox
    DONE = "done"
    REFUSED = "refused"  # failed qualification; reason says why
    FAILED = "failed"  # engine or delivery gave up; reason says why

    @property
    def is_final(self) -> bool:
        """Nothing moves the job on by itself any more: only an operator (``jobs retry|resend|rerun``), or nobody."""
        return self in _FINAL

    @property
    def is_open(self) -> bool:
        """A new instance of the series joins this job (otherwise it starts the series' next job)."""
        return self in _OPEN


class Mover(Enum):
    """Who makes a move. Documentation for the reader, and the source of :attr:`JobState.is_final`."""

    ROUTER = "router"  # the series is complete: qualified or refused
    STORE = "store"  # a new instance of the series was recorded
    ENGINE = "engine"
    SENDER = "sender"  # every destination acknowledged, or one gave up
    RECOVERY = "recovery"  # start-up, after a crash or a stop
    OPERATOR = "operator"  # `ct2pet-node jobs retry|resend|rerun`


@dataclass(frozen=True, slots=True)
class Transition:
    """One allowed move. ``counts_attempt``: the job's ``attempts`` goes up by one as it moves."""

    source: JobState
    target: JobState
    movers: frozenset[Mover]
    why: str
    counts_attempt: bool = False


def _move(
    source: JobState, target: JobState, *movers: Mover, why: str, counts_attempt: bool = False
) -> Transition:
    return Transition(source, target, frozenset(movers), why, counts_attempt)


_S = JobState
_M = Mover

# Every move a job may make. A new job starts in INITIAL_STATE (JobStore.record_instance).
TRANSITIONS: tuple[Transition, ...] = (
    _move(_S.RECEIVED, _S.WAITING, _M.ROUTER, why="series complete and qualified"),
    _move(_S.RECEIVED, _S.REFUSED, _M.ROUTER, why="series complete, refused at qualification"),
    _move(_S.WAITING, _S.RECEIVED, _M.STORE, why="a late instance reopened the series"),
    _move(_S.WAITING, _S.PROCESSING, _M.ENGINE, why="claimed by the engine", counts_attempt=True),
    _move(_S.PROCESSING, _S.WAITING, _M.ENGINE, _M.RECOVERY, why="stopped at a checkpoint, or the node died"),
    _move(_S.PROCESSING, _S.SENDING, _M.ENGINE, why="results written and handed to the sender"),
    _move(_S.PROCESSING, _S.DONE, _M.ENGINE, why="results written; no destination to send them to"),
    _move(_S.PROCESSING, _S.REFUSED, _M.ENGINE, why="re-qualification of the spooled files refused"),
    _move(_S.PROCESSING, _S.FAILED, _M.ENGINE, why="the engine could not translate or write"),
    _move(
        _S.SENDING, _S.DONE, _M.ENGINE, _M.SENDER, _M.RECOVERY, why="delivered, or nothing left to deliver"
    ),
    _move(_S.SENDING, _S.FAILED, _M.SENDER, _M.RECOVERY, why="dead-lettered, or the results are gone"),
    _move(_S.FAILED, _S.WAITING, _M.OPERATOR, why="jobs retry or jobs rerun: run the engine again"),
    _move(_S.FAILED, _S.SENDING, _M.OPERATOR, why="jobs retry: replay the dead-lettered deliveries"),
    _move(_S.DONE, _S.SENDING, _M.OPERATOR, why="jobs resend: deliver the existing results again"),
    _move(_S.DONE, _S.WAITING, _M.OPERATOR, why="jobs rerun: translate again, e.g. with new weights"),
)

INITIAL_STATE = JobState.RECEIVED

_BY_PAIR: Mapping[tuple[JobState, JobState], Transition] = {(t.source, t.target): t for t in TRANSITIONS}
# Final: every way out (if any) is an operator's.
_FINAL = frozenset(
    state for state in JobState if all(t.movers == {Mover.OPERATOR} for t in TRANSITIONS if t.source is state)
)
# Open: the initial state, and those a new instance sends back to it.
_OPEN = frozenset(
    {INITIAL_STATE} | {t.source for t in TRANSITIONS if t.target is INITIAL_STATE and Mover.STORE in t.movers}
)


def allowed_targets(source: JobState) -> frozenset[JobState]:
    """Every state a job in ``source`` may move to."""
    return frozenset(t.target for t in TRANSITIONS if t.source is source)


def transition_for(job_id: int, source: JobState, target: JobState) -> Transition:
    """The table's row for moving job ``job_id`` from ``source`` to ``target``.

    Raises
    ------
    IllegalTransition
        The move is not in :data:`TRANSITIONS`; the message names the job, both states and what
        the table allows from ``source``.
    """
    found = _BY_PAIR.get((source, target))
    if found is None:
        allowed = ", ".join(sorted(state.value for state in allowed_targets(source)))
        raise IllegalTransition(
            f"job {job_id} cannot move from {source.value} to {target.value}: from {source.value} the "
            f"lifecycle allows {allowed or 'no move (the state is final)'}. This is a bug in "
            "ct2pet-node; report it with the log"
        )
    return found


@dataclass(frozen=True, slots=True)
class JobDetails:
    """What the node learned about a job on its way; None: not known (yet).

    Each field is written by the step that knows it, with the state change
    it belongs to (the job store merges: a field set once stays set until a
    later move sets it again). The JSON of ``jobs list``/``jobs show`` has
    the set fields under their names.

    Attributes
    ----------
    completed_because : str
        Router: why the series counted as complete (quiet period, forced).
    qualification_notes : tuple of str
        Router: what qualification noticed but let pass.
    results_dir : Path
        Engine: where the job's output files are, one folder per output kind.
    geometry : str
        Engine: how the CT was mapped onto the model's grid.
    delivery : str
        Why the results were not sent (no destination configured, none took them), or where
        ``jobs resend`` sent them again.
    recovered_from : JobState
        Recovery: the state a crash or a stop left the job in.
    spool_purged_at, results_purged_at : float
        Retention: when the received CT / the results were removed, seconds since the epoch.
    purged : str
        Retention: which files were removed and when, as a person reads it.
    sampling : str
        Engine: the sampling settings the results were made with ("steps 8, eta 0, seed 0").
    phase_seconds : tuple of (str, float)
        Engine: seconds per phase of its run, in order: waiting (last instance to the
        engine's claim, the quiet period included), load, translate, write.
    written_at : float
        Engine: when every result file was written, seconds since the epoch.
    """

    completed_because: str | None = None
    qualification_notes: tuple[str, ...] | None = None
    results_dir: Path | None = None
    geometry: str | None = None
    delivery: str | None = None
    recovered_from: JobState | None = None
    spool_purged_at: float | None = None
    results_purged_at: float | None = None
    purged: str | None = None
    sampling: str | None = None
    phase_seconds: tuple[tuple[str, float], ...] | None = None
    written_at: float | None = None

    def to_json(self) -> dict[str, object]:
        """The set fields, JSON-ready."""
        encoded: dict[str, object] = {}
        for name in _DETAIL_FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, JobState):
                value = value.value
            elif name == "phase_seconds":
                value = dict(value)
            elif isinstance(value, tuple):
                value = list(value)
            encoded[name] = value
        return encoded

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> JobDetails:
        """Read :meth:`to_json`'s output back; keys it does not know are ignored."""
        results_dir = data.get("results_dir")
        notes = data.get("qualification_notes")
        recovered = data.get("recovered_from")
        phases = data.get("phase_seconds")
        return cls(
            completed_because=_text(data.get("completed_because")),
            qualification_notes=tuple(str(n) for n in notes) if isinstance(notes, list | tuple) else None,
            results_dir=None if results_dir is None else Path(str(results_dir)),
            geometry=_text(data.get("geometry")),
            delivery=_text(data.get("delivery")),
            recovered_from=None if recovered is None else JobState(recovered),
            spool_purged_at=_number(data.get("spool_purged_at")),
            results_purged_at=_number(data.get("results_purged_at")),
            purged=_text(data.get("purged")),
            sampling=_text(data.get("sampling")),
            phase_seconds=tuple((str(k), float(v)) for k, v in phases.items())
            if isinstance(phases, Mapping)
            else None,
            written_at=_number(data.get("written_at")),
        )

    def merged(self, newer: JobDetails) -> JobDetails:
        """These details with every field that ``newer`` sets replaced."""
        return replace(self, **{name: getattr(newer, name) for name in newer.to_json()})


_DETAIL_FIELDS = tuple(f.name for f in fields(JobDetails))


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


@dataclass(frozen=True, slots=True)
class Job:
    """One CT series and what the node has done with it.

    Attributes
    ----------
    created_at, updated_at : float
        Seconds since the epoch.
    """

    id: int
    study_uid: StudyUid
    series_uid: SeriesUid
    state: JobState
    reason: str | None
    n_instances: int
    output_series_uids: tuple[str, ...]
    created_at: float
    updated_at: float
    last_instance_at: float
    attempts: int = 0
    # `jobs force`: complete the series now instead of waiting for the quiet period.
    forced: bool = False
    details: JobDetails = field(default_factory=JobDetails, compare=False)

    def to_json(self) -> dict[str, object]:
        """The job as the ``jobs list --json`` contract states it."""
        return {
            "id": self.id,
            "study_uid": self.study_uid,
            "series_uid": self.series_uid,
            "state": self.state.value,
            "reason": self.reason,
            "n_instances": self.n_instances,
            "output_series_uids": list(self.output_series_uids),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "last_instance_at": self.last_instance_at,
            "attempts": self.attempts,
            "forced": self.forced,
            "details": self.details.to_json(),
        }


# Why `jobs force` cannot complete a series whose latest job is in this state, and what to do instead.
_NOT_FORCEABLE: Mapping[JobState, str] = {
    JobState.WAITING: "its series is already complete and waits for the engine",
    JobState.PROCESSING: "its series is already complete and on the engine",
    JobState.SENDING: "its results are being delivered; `ct2pet-node jobs show {id}` shows how far",
    JobState.DONE: "it is finished; `jobs resend {id}` sends its results again, `jobs rerun {id}` translates again",
    JobState.REFUSED: "its series was refused ({reason}); send the series again to start a new job",
    JobState.FAILED: "it failed ({reason}); `ct2pet-node jobs retry {id}` runs it again",
}


def force_refusal(job: Job) -> str | None:
    """Why ``jobs force`` changes nothing for ``job`` (the series' latest), in one line; None if it applies.

    Forcing only means something while the series is still being received.
    """
    if job.state is INITIAL_STATE:
        return None
    why = _NOT_FORCEABLE[job.state].format(id=job.id, reason=job.reason or "no reason recorded")
    return f"job {job.id} is {job.state.value}, force does not apply: {why}"
