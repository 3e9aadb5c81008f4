"""The durable outbox: idempotent enqueue, due entries, results, dead letters, restart."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from ct2pet_node.errors import StorageError
from ct2pet_node.routing.delivery import (
    AttemptDecision,
    EntryState,
    InstanceResult,
    TransferProblem,
)
from ct2pet_node.spool.outbox import OUTBOX_FILE_NAME, Outbox


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox.open(tmp_path)
    yield box
    box.close()


def _files(tmp_path: Path, n: int) -> list[Path]:
    return [tmp_path / f"out-{i}.dcm" for i in range(n)]


def _stored(path: Path, status: int = 0) -> InstanceResult:
    return InstanceResult(path, path.stem, status, None)


def test_file_is_private_and_in_wal_mode(outbox: Outbox, tmp_path: Path) -> None:
    path = tmp_path / OUTBOX_FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert outbox._query("PRAGMA journal_mode")[0][0] == "wal"
    assert outbox._query("PRAGMA synchronous")[0][0] == 2  # FULL


def test_enqueue_is_idempotent_and_due_now(outbox: Outbox, tmp_path: Path) -> None:
    paths = _files(tmp_path, 3)
    assert outbox.enqueue(7, "pacs", paths, now=100.0) is True
    assert outbox.enqueue(7, "pacs", paths, now=200.0) is False
    assert outbox.due(99.0) == []
    (entry,) = outbox.due(100.0)
    assert (entry.job_id, entry.destination, entry.state, entry.attempts) == (
        7,
        "pacs",
        EntryState.PENDING,
        0,
    )
    assert entry.next_attempt_at == 100.0
    assert entry.undelivered_paths == tuple(sorted(paths))
    assert outbox.next_due_at() == 100.0


def test_only_unacknowledged_files_remain_after_a_partial_attempt(outbox: Outbox, tmp_path: Path) -> None:
    paths = _files(tmp_path, 3)
    outbox.enqueue(1, "pacs", paths, now=0.0)
    outbox.mark_sending(1, "pacs", now=1.0)
    assert outbox.due(10.0) == []  # sending is not due
    results = [_stored(paths[0]), _stored(paths[1], 0xA700), _stored(paths[2], 0xB000)]
    decision = AttemptDecision(EntryState.PENDING, 1, 11.0, "out of resources")
    outbox.mark_results(1, "pacs", results, decision, now=1.0)
    assert outbox.due(10.0) == []
    (entry,) = outbox.due(11.0)
    assert entry.undelivered_paths == (paths[1],)
    assert entry.attempts == 1
    assert entry.last_error == "out of resources"
    assert {f.path: f.status for f in entry.files} == {paths[0]: 0, paths[1]: 0xA700, paths[2]: 0xB000}


def test_a_later_failure_never_unmarks_a_delivered_file(outbox: Outbox, tmp_path: Path) -> None:
    (path,) = _files(tmp_path, 1)
    outbox.enqueue(1, "pacs", [path], now=0.0)
    outbox.mark_results(1, "pacs", [_stored(path)], AttemptDecision(EntryState.PENDING, 1, 0.0, "x"), 0.0)
    aborted = InstanceResult(path, None, None, TransferProblem.ABORTED)
    outbox.mark_results(1, "pacs", [aborted], AttemptDecision(EntryState.PENDING, 2, 0.0, "x"), 0.0)
    (entry,) = outbox.entries(1)
    assert entry.files[0].delivered is True
    assert entry.files[0].status == 0


def test_dead_letter_and_retry(outbox: Outbox, tmp_path: Path) -> None:
    paths = _files(tmp_path, 2)
    outbox.enqueue(5, "pacs", paths, now=0.0)
    outbox.enqueue(5, "archive", paths, now=0.0)
    dead = AttemptDecision(EntryState.DEAD, 4, None, "gave up after 4 attempts")
    outbox.mark_results(5, "pacs", [], dead, now=3.0)
    assert [(e.job_id, e.destination) for e in outbox.dead_letters()] == [(5, "pacs")]
    assert outbox.job_state(5) is EntryState.DEAD
    assert outbox.retry(6, now=9.0) == 0
    assert outbox.retry(5, now=9.0) == 1
    assert outbox.dead_letters() == []
    revived = next(e for e in outbox.entries(5) if e.destination == "pacs")
    assert (revived.state, revived.attempts, revived.next_attempt_at) == (EntryState.PENDING, 0, 9.0)


def test_job_state_aggregates_destinations(outbox: Outbox, tmp_path: Path) -> None:
    paths = _files(tmp_path, 1)
    assert outbox.job_state(3) is None
    outbox.enqueue(3, "a", paths, now=0.0)
    outbox.enqueue(3, "b", paths, now=0.0)
    delivered = AttemptDecision(EntryState.DELIVERED, 1, None, None)
    outbox.mark_results(3, "a", [_stored(paths[0])], delivered, now=1.0)
    assert outbox.job_state(3) is EntryState.PENDING
    outbox.mark_results(3, "b", [_stored(paths[0])], delivered, now=1.0)
    assert outbox.job_state(3) is EntryState.DELIVERED


def test_new_files_reopen_a_delivered_entry(outbox: Outbox, tmp_path: Path) -> None:
    first, second = _files(tmp_path, 2)
    outbox.enqueue(1, "pacs", [first], now=0.0)
    outbox.mark_results(
        1, "pacs", [_stored(first)], AttemptDecision(EntryState.DELIVERED, 1, None, None), 1.0
    )
    assert outbox.enqueue(1, "pacs", [first, second], now=2.0) is True
    (entry,) = outbox.due(2.0)
    assert entry.undelivered_paths == (second,)


def test_summary_per_destination(outbox: Outbox, tmp_path: Path) -> None:
    paths = _files(tmp_path, 1)
    outbox.enqueue(1, "pacs", paths, now=0.0)
    outbox.enqueue(2, "pacs", paths, now=0.0)
    outbox.mark_results(
        1, "pacs", [_stored(paths[0])], AttemptDecision(EntryState.DELIVERED, 1, None, None), now=10.0
    )
    outbox.mark_results(2, "pacs", [], AttemptDecision(EntryState.PENDING, 1, 40.0, "refused"), now=20.0)
    (summary,) = outbox.summary()
    assert (summary.name, summary.pending, summary.delivered, summary.dead) == ("pacs", 1, 1, 0)
    assert summary.last_attempt_at == 20.0
    assert summary.last_result == "pending"
    assert summary.last_success_at == 10.0
    assert summary.last_error == "refused"


def test_survives_a_restart_and_recovers_interrupted_sends(tmp_path: Path) -> None:
    paths = _files(tmp_path, 2)
    box = Outbox.open(tmp_path)
    box.enqueue(9, "pacs", paths, now=0.0)
    box.mark_sending(9, "pacs", now=1.0)
    box.close()  # the process dies mid-association

    reopened = Outbox.open(tmp_path)
    try:
        assert reopened.due(1000.0) == []
        assert reopened.recover(now=50.0) == 1
        (entry,) = reopened.due(50.0)
        assert entry.state is EntryState.PENDING
        assert entry.undelivered_paths == tuple(sorted(paths))
    finally:
        reopened.close()


def test_unwritable_location_is_a_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(StorageError, match="check that the data directory is writable"):
        Outbox.open(blocker)
