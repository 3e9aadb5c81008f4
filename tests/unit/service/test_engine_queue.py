"""The in-process engine queue: FIFO of job ids, bounded, de-duplicated, thread-safe."""

from __future__ import annotations

import threading

import pytest

from ct2pet_node.errors import StorageError
from ct2pet_node.service.queue import EngineQueue, InProcessQueue


def test_fifo_dedup_and_depth() -> None:
    queue: EngineQueue = InProcessQueue()
    for job_id in (3, 1, 3, 2):
        queue.put(job_id)
    assert queue.depth() == 3
    assert [queue.get(0) for _ in range(3)] == [3, 1, 2]
    assert queue.get(0.01) is None
    assert queue.depth() == 0


def test_bounded() -> None:
    queue = InProcessQueue(capacity=2)
    queue.put(1)
    queue.put(2)
    with pytest.raises(StorageError, match="engine queue is full"):
        queue.put(3)
    with pytest.raises(ValueError, match="at least 1"):
        InProcessQueue(capacity=0)


def test_get_blocks_until_a_put_from_another_thread() -> None:
    queue = InProcessQueue()
    timer = threading.Timer(0.05, queue.put, args=(7,))
    timer.start()
    assert queue.get(timeout=5) == 7
    timer.join()
