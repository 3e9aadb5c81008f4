"""Status classification, the retry schedule and the per-attempt decision."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ct2pet_node.config import DEFAULT_MAX_ATTEMPTS, DEFAULT_RETRY_DELAYS_SECONDS
from ct2pet_node.routing.delivery import (
    DEFAULT_SCHEDULE,
    DeliveryOutcome,
    EntryState,
    InstanceResult,
    RetrySchedule,
    TransferProblem,
    classify_problem,
    classify_status,
    decide_attempt,
    http_problem,
    next_attempt_at,
)

D, W, R, P = (
    DeliveryOutcome.DELIVERED,
    DeliveryOutcome.WARNING,
    DeliveryOutcome.RETRYABLE,
    DeliveryOutcome.PERMANENT,
)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (0x0000, D),
        (0x0001, W),
        (0xB000, W),
        (0xB006, W),
        (0xB007, W),
        (0x0111, W),  # duplicate SOP instance: ours from an earlier attempt
        (0xA700, R),
        (0xA7FF, R),
        (0x0110, R),
        (0x0213, R),
        (0xFE00, R),
        (0xA900, P),
        (0xA9FF, P),
        (0xC000, P),
        (0xC210, P),
        (0xCFFF, P),
        (0x0122, P),
        (0x0124, P),
        (0x0117, P),
        (0x1234, R),  # unknown: bounded retries cost time, not data
    ],
)
def test_classify_status(code: int, expected: DeliveryOutcome) -> None:
    assert classify_status(code) is expected


@pytest.mark.parametrize(
    ("problem", "expected"),
    [
        (TransferProblem.UNREACHABLE, R),
        (TransferProblem.REJECTED, R),
        (TransferProblem.ABORTED, R),
        (TransferProblem.TIMEOUT, R),
        (TransferProblem.NO_CONTEXT, P),
        (TransferProblem.UNREADABLE, P),
        (TransferProblem.CANCELLED, DeliveryOutcome.CANCELLED),
    ],
)
def test_classify_problem(problem: TransferProblem, expected: DeliveryOutcome) -> None:
    assert classify_problem(problem) is expected


def test_only_delivered_and_warning_are_acknowledged() -> None:
    assert {o for o in DeliveryOutcome if o.acknowledged} == {D, W}


def test_instance_result_needs_exactly_one_of_status_and_problem() -> None:
    with pytest.raises(ValueError, match="not both"):
        InstanceResult(Path("a.dcm"), "1.2", 0, TransferProblem.ABORTED)
    with pytest.raises(ValueError, match="neither"):
        InstanceResult(Path("a.dcm"), "1.2", None, None)


def test_default_schedule_starts_short_and_caps_at_an_hour() -> None:
    now = 1000.0
    delays = [next_attempt_at(n, now) for n in range(1, 6)]
    assert delays == [now + 10, now + 30, now + 60, now + 120, now + 300]
    assert next_attempt_at(20, now) == now + 3600
    assert next_attempt_at(DEFAULT_MAX_ATTEMPTS - 1, now) == now + 3600
    assert next_attempt_at(DEFAULT_MAX_ATTEMPTS, now) is None


def test_default_schedule_gives_up_after_about_a_day() -> None:
    total = sum(
        DEFAULT_RETRY_DELAYS_SECONDS[min(n, len(DEFAULT_RETRY_DELAYS_SECONDS)) - 1]
        for n in range(1, DEFAULT_MAX_ATTEMPTS)
    )
    assert 20 * 3600 <= total <= 26 * 3600


@given(attempt=st.integers(1, 200), now=st.floats(0, 2e9))
def test_schedule_never_goes_back_in_time_and_is_monotonic(attempt: int, now: float) -> None:
    this, following = next_attempt_at(attempt, now), next_attempt_at(attempt + 1, now)
    if this is None:
        assert following is None
    else:
        assert this >= now
        assert following is None or following >= this


def test_schedule_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="count failed attempts from 1"):
        next_attempt_at(0, 0.0)
    with pytest.raises(ValueError, match="at least one delay"):
        RetrySchedule((), 3)
    with pytest.raises(ValueError, match="max_attempts"):
        RetrySchedule((1.0,), 0)


def _ok(name: str, status: int = 0) -> InstanceResult:
    return InstanceResult(Path(name), name, status, None)


def _problem(name: str, problem: TransferProblem) -> InstanceResult:
    return InstanceResult(Path(name), name, None, problem, "because")


def test_all_acknowledged_is_delivered_even_with_warnings() -> None:
    decision = decide_attempt([_ok("1"), _ok("2", 0xB007)], attempts_before=2, now=50.0)
    assert decision.state is EntryState.DELIVERED
    assert decision.attempts == 3
    assert decision.next_attempt_at is None
    assert decision.error is None


def test_retryable_failure_is_rescheduled_by_the_schedule() -> None:
    decision = decide_attempt([_ok("1"), _ok("2", 0xA700), _ok("3", 0xA701)], 0, now=50.0)
    assert decision == decision.__class__(EntryState.PENDING, 1, 60.0, "2: status 0xA700 (and 1 more)")


def test_permanent_failure_is_dead_at_once() -> None:
    results = [_ok("1", 0xA700), _ok("2", 0xA900)]
    decision = decide_attempt(results, 0, now=50.0)
    assert decision.state is EntryState.DEAD
    assert decision.next_attempt_at is None
    assert decision.error is not None and "2: status 0xA900" in decision.error


def test_last_retry_spent_is_dead() -> None:
    schedule = RetrySchedule((1.0,), max_attempts=3)
    unreachable = [_problem("1", TransferProblem.UNREACHABLE)]
    assert decide_attempt(unreachable, 1, 0.0, schedule).state is EntryState.PENDING
    dead = decide_attempt(unreachable, 2, 0.0, schedule)
    assert dead.state is EntryState.DEAD
    assert dead.attempts == 3
    assert dead.error == "gave up after 3 attempts: 1: unreachable (because)"


def test_cancelled_attempt_does_not_count() -> None:
    results = [_ok("1"), _problem("2", TransferProblem.CANCELLED)]
    decision = decide_attempt(results, 4, now=70.0)
    assert decision.state is EntryState.PENDING
    assert decision.attempts == 4
    assert decision.next_attempt_at == 70.0


def test_default_schedule_is_the_documented_one() -> None:
    assert DEFAULT_SCHEDULE.delays_seconds[:5] == (10, 30, 60, 120, 300)
    assert DEFAULT_SCHEDULE.max_attempts == DEFAULT_MAX_ATTEMPTS


@pytest.mark.parametrize(
    ("code", "problem", "outcome"),
    [
        (200, None, None),
        (202, None, None),
        (400, TransferProblem.REFUSED, P),
        (401, TransferProblem.REFUSED, P),
        (403, TransferProblem.REFUSED, P),
        (409, TransferProblem.REFUSED, P),
        (413, TransferProblem.REFUSED, P),
        (408, TransferProblem.TIMEOUT, R),
        (429, TransferProblem.SERVER_ERROR, R),
        (500, TransferProblem.SERVER_ERROR, R),
        (503, TransferProblem.SERVER_ERROR, R),
        (504, TransferProblem.SERVER_ERROR, R),
        (302, TransferProblem.SERVER_ERROR, R),
    ],
)
def test_http_statuses_map_to_the_dimse_outcomes(
    code: int, problem: TransferProblem | None, outcome: DeliveryOutcome | None
) -> None:
    assert http_problem(code) is problem
    if problem is not None:
        assert classify_problem(problem) is outcome


def test_a_refused_request_is_dead_at_once_with_its_reason() -> None:
    refused = InstanceResult(Path("a.dcm"), "1.2.3", None, TransferProblem.REFUSED, "HTTP 401 Unauthorized")
    decision = decide_attempt([refused], 0, now=50.0)
    assert decision.state is EntryState.DEAD
    assert decision.error == "refused, will not retry: 1.2.3: refused (HTTP 401 Unauthorized)"
    busy = InstanceResult(Path("a.dcm"), "1.2.3", None, TransferProblem.SERVER_ERROR, "HTTP 503")
    assert decide_attempt([busy], 0, now=50.0).state is EntryState.PENDING
