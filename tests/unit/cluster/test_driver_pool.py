"""The driver's dispatch loop on a fake Ray: several requests share the actors, each answered once."""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
from unit.cluster.fake_ray import FakeRay

from ct2pet_node.cluster.driver import DriverSettings, _Pool


class FakeConn:
    """The node's end of the pipe: what it sent, waiting to be read; what the driver sent back."""

    def __init__(self, *messages: tuple[Any, ...]) -> None:
        self.incoming = deque(messages)
        self.sent: list[tuple[Any, ...]] = []

    def poll(self) -> bool:
        return bool(self.incoming)

    def recv(self) -> tuple[Any, ...]:
        if not self.incoming:
            raise EOFError
        return self.incoming.popleft()

    def send(self, message: tuple[Any, ...]) -> None:
        self.sent.append(message)


def _pool(ray: FakeRay, actors: int) -> _Pool:
    pool = _Pool(ray, DriverSettings("h:1", "ns", actors, 1.0, 0.0, spec=None))  # type: ignore[arg-type]
    pool.actors = [pool.start_actor() for _ in range(actors)]
    pool.idle.extend(range(actors))
    return pool


def _request(rid: int, slices: int, chunk: int = 4) -> tuple[Any, ...]:
    region = np.zeros((slices, 2, 2), dtype=np.float32)
    chunks = [(start, min(start + chunk, slices)) for start in range(0, slices, chunk)]
    return ("translate", rid, region, chunks, None, 3, None, 0, 100 * rid)


def _of(conn: FakeConn, kind: str, rid: int) -> list[tuple[Any, ...]]:
    return [message for message in conn.sent if message[0] == kind and message[1] == rid]


def test_a_second_request_fills_the_actors_the_first_leaves_idle_and_each_ends_once() -> None:
    conn = FakeConn(_request(1, 4), _request(2, 12))
    _pool(FakeRay(), actors=2).serve(conn)
    first_done = conn.sent.index(("done", 1))
    # Request 2's first chunk went to the idle second actor while request 1's only chunk ran.
    assert conn.sent.index(("sent", 2, 0, 1)) < conn.sent.index(next(iter(_of(conn, "chunk", 1))))
    assert _of(conn, "done", 2) == [("done", 2)] and first_done < conn.sent.index(("done", 2))
    assert [message[2] for message in _of(conn, "chunk", 1)] == [0]
    assert sorted(message[2] for message in _of(conn, "chunk", 2)) == [0, 4, 8]
    # Each chunk's values are its own (noise index = the request's first slice + the chunk's start).
    assert all(float(m[3][0, 0, 0]) == 200 + m[2] for m in _of(conn, "chunk", 2))


def test_a_dead_actor_is_replaced_in_its_slot_and_its_chunk_goes_again() -> None:
    ray = FakeRay(deaths=1)
    conn = FakeConn(_request(1, 8))
    _pool(ray, actors=2).serve(conn)
    assert [message[:3] for message in _of(conn, "retry", 1)] == [("retry", 1, 0)]
    assert sorted(message[2] for message in _of(conn, "chunk", 1)) == [0, 4]
    assert ray.started == 3 and _of(conn, "done", 1) == [("done", 1)]


def test_a_cancelled_request_gets_no_more_chunks_and_the_other_goes_on() -> None:
    conn = FakeConn(_request(1, 16), _request(2, 8), ("cancel", 1))
    _pool(FakeRay(), actors=1).serve(conn)
    assert ("cancelled", 1) in conn.sent and not _of(conn, "done", 1)
    assert len(_of(conn, "sent", 1)) == 1 and not _of(conn, "chunk", 1)
    assert sorted(message[2] for message in _of(conn, "chunk", 2)) == [0, 4]
