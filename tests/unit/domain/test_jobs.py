"""The lifecycle table and what is derived from it; job details as values."""

from __future__ import annotations

from pathlib import Path

import pytest

from ct2pet_node.domain.jobs import (
    INITIAL_STATE,
    TRANSITIONS,
    JobDetails,
    JobState,
    Mover,
    allowed_targets,
    transition_for,
)
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
        transition_for(7, JobState.DONE, JobState.SENDING)
    message = str(raised.value)
    assert "job 7 cannot move from done to sending" in message
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
