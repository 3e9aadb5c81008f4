"""Deciding what a delivery attempt means: status classes, retry schedule, the next state.

Pure: values in, values out, no clock and no I/O (``now`` is passed in), so
every rule here is tested without a network.

Status classification (DICOM PS3.4 Annex B.2.3, PS3.7 Annex C)
----------------------------------------------------------------
========================  ==========  =====================================================
status                    outcome     why
========================  ==========  =====================================================
0x0000                    delivered
0x0001, 0xB000-0xBFFF     warning     stored (coerced, elements discarded...): counts as
                                      delivered, logged as a warning
0x0111 duplicate SOP      warning     the PACS already holds this UID; our output UIDs are
                                      deterministic, so it is ours from an earlier attempt
0xA700-0xA7FF             retryable   out of resources: the PACS may have room later
0x0110 processing failure retryable   generic failure, usually transient on the PACS side
0x0213, 0x0210, 0xFE00    retryable   resource limitation, duplicate invocation, cancel
0xA900-0xA9FF             permanent   data set does not match SOP class: the same bytes
                                      will be refused again
0xC000-0xCFFF             permanent   cannot understand: ditto
0x0117, 0x0122, 0x0124,   permanent   invalid instance, SOP class not supported, not
0x0211, 0x0212                        authorised, unrecognised operation, mistyped argument
anything else             retryable   unknown: retries are bounded, so erring towards a
                                      retry costs time, never data
========================  ==========  =====================================================

Problems without a status (:class:`TransferProblem`): an unreachable peer, a
rejected or aborted association, timeouts and a DICOMweb server's own failure
(HTTP 5xx) are retryable; a SOP class or transfer syntax the peer accepted no
presentation context for, a file we cannot read, and a DICOMweb request the
server refused (HTTP 4xx: wrong credentials, forbidden, malformed) are
permanent (the operator fixes the PACS, the credentials or the file and runs
``ct2pet-node jobs retry ID``). A cancelled instance (the sender is stopping)
is neither: the attempt does not count.

HTTP statuses of a STOW-RS request (PS3.18 10.5.3) map onto the same
outcomes (:func:`http_problem`): a 2xx answer is judged per instance from
its ReferencedSOPSequence and FailedSOPSequence, whose FailureReason and
WarningReason are the C-STORE status codes above; 408 and 429 are a timeout
and a busy server, retryable, as is every 5xx; any other 4xx is permanent.

Retry schedule
--------------
After the n-th failed attempt the next one is ``DEFAULT_SCHEDULE.delays_seconds[n-1]``
seconds later (the last delay repeats): 10 s, 30 s, 1 min, 2 min, 5 min,
10 min, 20 min, 30 min, then hourly, with no jitter (one node, few
destinations: no herd to spread). After ``DEFAULT_SCHEDULE.max_attempts``
(31) attempts, about 24 hours of trying, the entry is dead-lettered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from ct2pet_node.config import DEFAULT_MAX_ATTEMPTS, DEFAULT_RETRY_DELAYS_SECONDS


class DeliveryOutcome(Enum):
    """What one instance's result means for its delivery."""

    DELIVERED = "delivered"
    WARNING = "warning"  # stored with a warning: counts as delivered
    RETRYABLE = "retryable"
    PERMANENT = "permanent"
    CANCELLED = "cancelled"  # not sent because the sender is stopping; not an attempt

    @property
    def acknowledged(self) -> bool:
        """Whether the destination holds the instance."""
        return self in (DeliveryOutcome.DELIVERED, DeliveryOutcome.WARNING)


class TransferProblem(Enum):
    """Why an instance got no status of its own (C-STORE response, or STOW-RS FailureReason)."""

    UNREACHABLE = "unreachable"  # connection refused, no route, connect timeout
    REJECTED = "rejected"  # the peer rejected the association
    ABORTED = "aborted"  # the association was aborted or dropped mid-batch
    TIMEOUT = "timeout"  # ACSE or DIMSE timeout: no answer in time
    NO_CONTEXT = "no_context"  # the peer accepted no presentation context for this instance
    UNREADABLE = "unreadable"  # our file is missing or not DICOM
    CANCELLED = "cancelled"  # the sender stopped before sending it
    SERVER_ERROR = "server_error"  # a DICOMweb server failed or was busy (HTTP 5xx, 429)
    REFUSED = "refused"  # a DICOMweb server refused the request as such (HTTP 4xx)


_WARNING_CODES = frozenset({0x0001, 0x0111})
_RETRYABLE_CODES = frozenset({0x0110, 0x0210, 0x0213, 0xFE00})
_PERMANENT_CODES = frozenset({0x0117, 0x0122, 0x0124, 0x0211, 0x0212})
_PERMANENT_PROBLEMS = frozenset(
    {TransferProblem.NO_CONTEXT, TransferProblem.UNREADABLE, TransferProblem.REFUSED}
)
_HTTP_REQUEST_TIMEOUT, _HTTP_TOO_MANY_REQUESTS = 408, 429


def classify_status(code: int) -> DeliveryOutcome:
    """Classify a C-STORE response status; see the module docstring for the table."""
    if code == 0x0000:
        return DeliveryOutcome.DELIVERED
    if code in _WARNING_CODES or 0xB000 <= code <= 0xBFFF:
        return DeliveryOutcome.WARNING
    if code in _PERMANENT_CODES or 0xA900 <= code <= 0xA9FF or 0xC000 <= code <= 0xCFFF:
        return DeliveryOutcome.PERMANENT
    # 0xA7xx, the codes in _RETRYABLE_CODES and anything unknown.
    return DeliveryOutcome.RETRYABLE


def classify_problem(problem: TransferProblem) -> DeliveryOutcome:
    """Classify an instance that got no status."""
    if problem is TransferProblem.CANCELLED:
        return DeliveryOutcome.CANCELLED
    if problem in _PERMANENT_PROBLEMS:
        return DeliveryOutcome.PERMANENT
    return DeliveryOutcome.RETRYABLE


def http_problem(code: int) -> TransferProblem | None:
    """Why a STOW-RS request with HTTP status ``code`` stored nothing; None for a 2xx (judge its body).

    Credentials, permissions and a malformed request stay wrong however often
    they are retried; a server that failed or was busy may do better later.
    """
    if 200 <= code < 300:
        return None
    if code == _HTTP_REQUEST_TIMEOUT:
        return TransferProblem.TIMEOUT
    if code == _HTTP_TOO_MANY_REQUESTS or code >= 500:
        return TransferProblem.SERVER_ERROR
    if 400 <= code < 500:
        return TransferProblem.REFUSED
    # 1xx and 3xx: requests follows redirects, so one here is a server that misbehaves.
    return TransferProblem.SERVER_ERROR


@dataclass(frozen=True, slots=True)
class InstanceResult:
    """What happened to one file of a batch.

    Exactly one of ``status`` (the C-STORE response status) and ``problem``
    (why there was no response) is set; ``detail`` is a sentence for logs and
    ``jobs show``.
    """

    path: Path
    sop_instance_uid: str | None
    status: int | None
    problem: TransferProblem | None
    detail: str = ""

    def __post_init__(self) -> None:
        if (self.status is None) == (self.problem is None):
            raise ValueError(
                f"InstanceResult for {self.path}: give a status or a problem, not "
                f"{'both' if self.status is not None else 'neither'}"
            )

    @property
    def outcome(self) -> DeliveryOutcome:
        if self.status is not None:
            return classify_status(self.status)
        assert self.problem is not None  # guaranteed by __post_init__
        return classify_problem(self.problem)

    def describe(self) -> str:
        """One line naming the instance and what happened to it."""
        if self.status is not None:
            what = f"status 0x{self.status:04X}"
        else:
            assert self.problem is not None  # guaranteed by __post_init__
            what = self.problem.value
        who = self.sop_instance_uid or self.path.name
        return f"{who}: {what}" + (f" ({self.detail})" if self.detail else "")


@dataclass(frozen=True, slots=True)
class RetrySchedule:
    """When to try again.

    Attributes
    ----------
    delays_seconds : tuple of float
        Delay after the 1st, 2nd, ... failed attempt, seconds; the last repeats.
    max_attempts : int
        Attempts before the entry is dead-lettered.
    """

    delays_seconds: tuple[float, ...]
    max_attempts: int

    def __post_init__(self) -> None:
        if not self.delays_seconds or any(d < 0 for d in self.delays_seconds):
            raise ValueError(f"retry delays {self.delays_seconds!r}: give at least one delay, none negative")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts {self.max_attempts}: must be 1 or more")


# The [delivery] defaults: one schedule, whether or not a config file names one.
DEFAULT_SCHEDULE = RetrySchedule(DEFAULT_RETRY_DELAYS_SECONDS, DEFAULT_MAX_ATTEMPTS)


def next_attempt_at(attempt: int, now: float, schedule: RetrySchedule = DEFAULT_SCHEDULE) -> float | None:
    """When to make the next attempt after ``attempt`` attempts have failed.

    Parameters
    ----------
    attempt : int
        Failed attempts so far, 1 or more.
    now : float
        Current time, seconds since the epoch.
    schedule : RetrySchedule

    Returns
    -------
    float or None
        Seconds since the epoch, or None when the attempts are spent (dead-letter).
    """
    if attempt < 1:
        raise ValueError(f"attempt {attempt}: count failed attempts from 1")
    if attempt >= schedule.max_attempts:
        return None
    delays = schedule.delays_seconds
    return now + delays[min(attempt, len(delays)) - 1]


class EntryState(Enum):
    """State of one outbox entry: one job's files for one destination."""

    PENDING = "pending"
    SENDING = "sending"
    DELIVERED = "delivered"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class AttemptDecision:
    """What the outbox should record after an attempt.

    Attributes
    ----------
    state : EntryState
    attempts : int
        Attempts counted so far, including this one unless it was cancelled.
    next_attempt_at : float or None
        Seconds since the epoch; None unless ``state`` is PENDING.
    error : str or None
        Why the entry is not delivered, for ``jobs show`` and ``status``.
    """

    state: EntryState
    attempts: int
    next_attempt_at: float | None
    error: str | None


def decide_attempt(
    results: Sequence[InstanceResult],
    attempts_before: int,
    now: float,
    schedule: RetrySchedule = DEFAULT_SCHEDULE,
) -> AttemptDecision:
    """Turn one batch's results into the entry's next state.

    All acknowledged: delivered. Any permanent failure: dead at once (the
    same bytes would be refused again). Only cancellations among the rest:
    pending again now, the attempt not counted. Otherwise the attempt counts
    and the schedule says when to retry, or dead when it is spent.
    """
    failed = [r for r in results if not r.outcome.acknowledged]
    if not failed:
        return AttemptDecision(EntryState.DELIVERED, attempts_before + 1, None, None)
    if all(r.outcome is DeliveryOutcome.CANCELLED for r in failed):
        return AttemptDecision(EntryState.PENDING, attempts_before, now, "interrupted by shutdown")
    attempts = attempts_before + 1
    others = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
    permanent = [r for r in failed if r.outcome is DeliveryOutcome.PERMANENT]
    if permanent:
        return AttemptDecision(
            EntryState.DEAD, attempts, None, f"refused, will not retry: {permanent[0].describe()}{others}"
        )
    first = next(r for r in failed if r.outcome is DeliveryOutcome.RETRYABLE)
    when = next_attempt_at(attempts, now, schedule)
    if when is None:
        return AttemptDecision(
            EntryState.DEAD, attempts, None, f"gave up after {attempts} attempts: {first.describe()}{others}"
        )
    return AttemptDecision(EntryState.PENDING, attempts, when, f"{first.describe()}{others}")
