"""Which files of a finished job may go, and when free space is worth a warning; values in, values out.

The node keeps two kinds of file per job: the received CT (the spool, about
125 MB per whole-body study) and the synthetic series written for it (the
results). ``[retention]`` says how long each stays after the job finished:

- a DONE job delivered to every destination (or with none to deliver to):
  its spool after ``spool_days``, its results after ``results_days``;
- a REFUSED series: its spool after ``refused_days`` (it has no results);
- anything else stays: a job in progress (received, waiting, processing,
  sending), a FAILED one (``jobs retry`` needs its files), and a DONE one
  whose outbox still holds an undelivered entry.

The spool of a series is shared by its generations (a late instance starts a
new job covering every instance), so only the series' latest job decides it.
Ages count from ``finished_at``, the job's last state change. None as a
number of days keeps the files forever; 0 lets them go as soon as allowed.
"""

from __future__ import annotations

from dataclasses import dataclass

from ct2pet_node.config import RetentionConfig
from ct2pet_node.domain.jobs import JobState
from ct2pet_node.routing.delivery import EntryState

SECONDS_PER_DAY = 86_400.0


@dataclass(frozen=True, slots=True)
class JobFiles:
    """What retention needs to know of one job.

    Attributes
    ----------
    finished_at : float
        Seconds since the epoch of the job's last state change.
    delivery : EntryState or None
        The outbox's state for the job as a whole; None: no entry (nothing to deliver).
    latest_of_series : bool
        No newer job of the same series exists (the spool is the series', not the job's).
    spool_kept, results_kept : bool
        The files are still there as far as the job record knows (not purged yet).
    """

    job_id: int
    state: JobState
    finished_at: float
    delivery: EntryState | None
    latest_of_series: bool
    spool_kept: bool
    results_kept: bool


@dataclass(frozen=True, slots=True)
class PurgeDecision:
    """What may go now; ``why`` says which rule allowed it, or why the files stay."""

    spool: bool
    results: bool
    why: str

    @property
    def anything(self) -> bool:
        return self.spool or self.results


def decide_purge(job: JobFiles, policy: RetentionConfig, now: float) -> PurgeDecision:
    """What of ``job``'s files may be removed at ``now`` (seconds since the epoch)."""
    age_days = max(0.0, now - job.finished_at) / SECONDS_PER_DAY
    finished = f"{job.state.value} {age_days:.1f} days ago"
    if job.state is JobState.REFUSED:
        spool = job.spool_kept and job.latest_of_series and _due(age_days, policy.refused_days)
        return PurgeDecision(spool, False, f"{finished}, refused_days {_days(policy.refused_days)}")
    if job.state is not JobState.DONE:
        # Positive list: a state added later (or FAILED, which `jobs retry` may revive) keeps its files.
        return PurgeDecision(False, False, f"{job.state.value}: kept until it is done")
    if job.delivery not in (None, EntryState.DELIVERED):
        return PurgeDecision(False, False, "not yet delivered to every destination")
    spool = job.spool_kept and job.latest_of_series and _due(age_days, policy.spool_days)
    results = job.results_kept and _due(age_days, policy.results_days)
    return PurgeDecision(
        spool,
        results,
        f"{finished}, spool_days {_days(policy.spool_days)}, results_days {_days(policy.results_days)}",
    )


def _due(age_days: float, keep_days: float | None) -> bool:
    return keep_days is not None and age_days >= keep_days


def _days(value: float | None) -> str:
    return "forever" if value is None else f"{value:g}"


def disk_warning(free_mb: float, min_free_mb: int, warn_free_mb: int) -> str | None:
    """What ``status`` says about the data directory's free space (MiB), or None when there is room."""
    if free_mb < min_free_mb:
        return (
            f"data_dir has {free_mb:.0f} MiB free, below [node] min_free_mb ({min_free_mb}): new CT is "
            "refused with 0xA700; free disk space (`ct2pet-node purge`, shorter [retention] days)"
        )
    if free_mb < warn_free_mb:
        return (
            f"data_dir has {free_mb:.0f} MiB free, below [retention] warn_free_mb ({warn_free_mb}); at "
            f"{min_free_mb} MiB new CT is refused with 0xA700: run `ct2pet-node purge --dry-run` to see "
            "what retention would free, or add disk"
        )
    return None
