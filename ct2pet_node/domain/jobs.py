"""Jobs: one per received CT series, and the states they move through."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from ct2pet_node.domain.uids import SeriesUid, StudyUid


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
        return self in (JobState.DONE, JobState.REFUSED, JobState.FAILED)


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
    details: dict[str, object] = field(default_factory=dict, hash=False, compare=False)

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
            "details": self.details,
        }
