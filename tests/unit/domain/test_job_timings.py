"""What the engine records of a run for the dashboard: sampling settings and seconds per phase."""

import json

from ct2pet_node.domain.jobs import JobDetails


def test_engine_run_details_round_trip_through_json() -> None:
    details = JobDetails(
        sampling="steps 8, eta 0, seed 0",
        phase_seconds=(("waiting", 31.5), ("load", 0.25), ("translate", 12.0), ("write", 1.5)),
        written_at=1_800_000_000.5,
    )
    encoded = json.loads(json.dumps(details.to_json()))
    assert encoded["phase_seconds"] == {"waiting": 31.5, "load": 0.25, "translate": 12.0, "write": 1.5}
    decoded = JobDetails.from_json(encoded)
    assert decoded == details
    assert [name for name, _ in decoded.phase_seconds or ()] == ["waiting", "load", "translate", "write"]


def test_a_later_move_keeps_the_engine_run_details() -> None:
    run = JobDetails(sampling="steps 4, eta 0, seed 1", phase_seconds=(("write", 2.0),), written_at=5.0)
    merged = run.merged(JobDetails(delivery="no destination took the files"))
    assert merged.phase_seconds == (("write", 2.0),) and merged.written_at == 5.0
