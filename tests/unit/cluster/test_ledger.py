"""The node's account of its actors: chunks in flight, slices per second over a window, retries."""

from __future__ import annotations

import pytest

from ct2pet_node.cluster.ledger import ChunkLedger
from ct2pet_node.domain.cluster import ClusterSnapshot

T0 = 1_800_000_000.0
TWO_ACTORS = [
    {"host": "gpu-a", "device": "cuda:0", "pid": 11},
    {"host": "gpu-b", "device": "cuda:0", "pid": 12},
]


def _ready(window: float = 60.0) -> ChunkLedger:
    ledger = ChunkLedger(window_seconds=window)
    ledger.actors_ready(TWO_ACTORS, T0)
    return ledger


def test_each_actor_counts_what_it_holds_and_what_it_returned() -> None:
    ledger = _ready()
    ledger.sent(1, 0, 0, T0 + 1)
    ledger.sent(1, 16, 1, T0 + 1)
    ledger.returned(1, 0, 16, T0 + 9)
    snapshot = ledger.snapshot("head:6379", "ready", T0 + 10)
    first, second = snapshot.actors
    assert (first.name, first.host, first.device) == ("actor-0", "gpu-a", "cuda:0")
    assert (first.chunks_in_flight, first.slices_done) == (0, 16)
    assert (second.chunks_in_flight, second.slices_done) == (1, 0)
    assert snapshot.chunks_in_flight == 1
    # 16 slices in the 10 s since the actors started: not yet a full window to divide by.
    assert first.slices_per_second == pytest.approx(1.6)
    assert second.slices_per_second == 0.0


def test_slices_per_second_forget_chunks_older_than_the_window() -> None:
    ledger = _ready(window=60.0)
    for second in range(0, 120, 10):
        ledger.sent(1, second, 0, T0 + second)
        ledger.returned(1, second, 8, T0 + second + 5)
    # Returned within the last 60 s: at 65, 75, ..., 115 -> 6 chunks of 8 slices.
    assert ledger.snapshot("h:1", "ready", T0 + 120).actors[0].slices_per_second == pytest.approx(48 / 60)
    assert ledger.snapshot("h:1", "ready", T0 + 600).actors[0].slices_per_second == 0.0
    assert ledger.snapshot("h:1", "ready", T0 + 600).actors[0].slices_done == 96


def test_a_dead_actor_counts_a_retry_and_a_restart_of_its_slot() -> None:
    ledger = _ready()
    ledger.sent(1, 0, 1, T0 + 1)
    ledger.died(1, 0)
    snapshot = ledger.snapshot("h:1", "ready", T0 + 2)
    assert snapshot.chunk_retries == 1
    assert snapshot.actors[1].restarts == 1 and snapshot.actors[1].chunks_in_flight == 0


def test_an_abandoned_request_leaves_only_the_other_requests_in_flight() -> None:
    ledger = _ready()
    ledger.sent(1, 0, 0, T0)
    ledger.sent(2, 0, 1, T0)
    ledger.sent(2, 4, 1, T0)
    ledger.abandoned(1)
    assert [actor.chunks_in_flight for actor in ledger.snapshot("h:1", "ready", T0 + 1).actors] == [0, 2]
    ledger.returned(1, 0, 4, T0 + 1)  # a late answer for an abandoned request counts for nobody
    assert ledger.snapshot("h:1", "ready", T0 + 1).actors[0].slices_done == 0
    ledger.died(2, 0)
    ledger.lost()
    down = ledger.snapshot("h:1", "down", T0 + 2)
    assert down.actors == () and down.chunk_retries == 1  # retries count since the node started


def test_the_snapshot_reads_back_from_its_json() -> None:
    ledger = _ready()
    ledger.sent(1, 0, 0, T0)
    ledger.returned(1, 0, 4, T0 + 2)
    ledger.died(1, 4)
    snapshot = ledger.snapshot("h:1", "ready", T0 + 4)
    encoded = snapshot.to_json()
    assert encoded["chunks_in_flight"] == 0 and encoded["chunk_retries"] == 1
    assert encoded["slices_per_second"] == pytest.approx(1.0)
    assert [actor["device"] for actor in encoded["actors"]] == ["cuda:0", "cuda:0"]
    assert ClusterSnapshot.from_json(encoded) == snapshot
