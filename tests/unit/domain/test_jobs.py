"""The lifecycle table and what is derived from it; job details as values."""

from __future__ import annotations

from pathlib import Path

import pytest

from ct2pet_node.domain.jobs import (
    INITIAL_STATE,
    TRANSITIONS,
    Job,
    JobDetails,
    JobState,
    Mover,
    allowed_targets,
    force_refusal,
    transition_for,
)
from ct2pet_node.domain.uids import SeriesUid, StudyUid
from ct2pet_node.errors import Ct2PetError, IllegalTransition


def test_final_and_open_states_follow_from_the_table() -> None:
    assert {s for s in JobState if s.is_final} == {JobState.DONE, JobState.REFUSED, JobState.FAILED}
    assert {s for s in JobState if s.is_open} == {JobState.RECEIVED, JobState.WAITING}


def test_every_state_is_reachable_and_every_unfinished_one_has_a_way_on() -> None:
    reached, frontier = {INITIAL_STATE}, [INITIAL_STATE]
    while frontier:
        for target in allowed_targets(frontier.pop()):
            if target not in reached:
                reached.add(target)
                frontier.append(target)
    assert reached == set(JobState)
    for state in JobState:
        if not state.is_final:
            assert any(t.source is state and t.movers - {Mover.OPERATOR} for t in TRANSITIONS), state


def test_each_move_is_listed_once_and_only_the_engine_claim_counts_an_attempt() -> None:
    pairs = [(t.source, t.target) for t in TRANSITIONS]
    assert len(pairs) == len(set(pairs))
    assert [(t.source, t.target) for t in TRANSITIONS if t.counts_attempt] == [
        (JobState.WAITING, JobState.PROCESSING)
    ]


def test_an_illegal_move_names_the_job_both_states_and_what_is_allowed() -> None:
    with pytest.raises(IllegalTransition) as raised:
        transition_for(7, JobState.REFUSED, JobState.SENDING)
    message = str(raised.value)
    assert "job 7 cannot move from refused to sending" in message
    assert "no move (the state is final)" in message
    assert isinstance(raised.value, Ct2PetError)
    with pytest.raises(IllegalTransition, match="from received the lifecycle allows refused, waiting"):
        transition_for(8, JobState.RECEIVED, JobState.DONE)
    assert transition_for(9, JobState.SENDING, JobState.DONE).target is JobState.DONE


def test_job_details_round_trip_and_merge() -> None:
    details = JobDetails(
        completed_because="quiet for 30 s",
        qualification_notes=("gap at z=10",),
        results_dir=Path("/data/results/3"),
        recovered_from=JobState.PROCESSING,
    )
    encoded = details.to_json()
    assert encoded == {
        "completed_because": "quiet for 30 s",
        "qualification_notes": ["gap at z=10"],
        "results_dir": "/data/results/3",
        "recovered_from": "processing",
    }
    assert JobDetails.from_json({**encoded, "from_a_newer_release": 1}) == details
    assert JobDetails().to_json() == {}
    merged = details.merged(JobDetails(delivery="no destination", completed_because="forced by operator"))
    assert merged.delivery == "no destination" and merged.completed_because == "forced by operator"
    assert merged.results_dir == Path("/data/results/3")


def test_resend_and_rerun_are_operator_moves_out_of_done_and_failed_only() -> None:
    operator = {(t.source, t.target) for t in TRANSITIONS if t.movers == {Mover.OPERATOR}}
    assert operator == {
        (JobState.FAILED, JobState.WAITING),  # jobs retry, jobs rerun
        (JobState.FAILED, JobState.SENDING),  # jobs retry
        (JobState.DONE, JobState.SENDING),  # jobs resend
        (JobState.DONE, JobState.WAITING),  # jobs rerun
    }
    assert allowed_targets(JobState.DONE) == {JobState.SENDING, JobState.WAITING}
    for source, target in [
        (JobState.DONE, JobState.PROCESSING),  # a rerun waits its turn in the queue
        (JobState.DONE, JobState.RECEIVED),
        (JobState.DONE, JobState.FAILED),
        (JobState.REFUSED, JobState.WAITING),  # a refused series is sent again, not rerun
        (JobState.SENDING, JobState.WAITING),
    ]:
        with pytest.raises(IllegalTransition):
            transition_for(1, source, target)


def _job(state: JobState, reason: str | None = None) -> Job:
    return Job(5, StudyUid("1.2"), SeriesUid("1.2.3"), state, reason, 3, (), 0.0, 0.0, 0.0)


def test_force_applies_only_while_the_series_is_received_and_says_why_not_otherwise() -> None:
    assert force_refusal(_job(JobState.RECEIVED)) is None
    for state in set(JobState) - {JobState.RECEIVED}:
        refusal = force_refusal(_job(state, "too few slices"))
        assert refusal is not None and refusal.startswith(f"job 5 is {state.value}, force does not apply")
        assert "\n" not in refusal
    assert "jobs resend 5" in (force_refusal(_job(JobState.DONE)) or "")
    assert "too few slices" in (force_refusal(_job(JobState.REFUSED, "too few slices")) or "")
