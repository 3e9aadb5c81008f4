"""The cluster's status line, as a person reads it."""

import time

from ct2pet_node.cluster.translator import cluster_line


def test_an_unreachable_head_says_since_when_and_how_many_jobs_wait() -> None:
    since = time.mktime((2026, 1, 2, 12, 3, 10, 0, 0, -1))
    line = cluster_line("10.0.0.5:6379", "down", since, 3, "wait", "ConnectionError")
    assert line == "engine cluster 10.0.0.5:6379 unreachable since 12:03:10, 3 jobs waiting"


def test_a_local_fallback_says_so_and_a_refusal_gives_its_reason() -> None:
    assert cluster_line("h:1", "down", None, 3, "local", None) == (
        "engine cluster h:1 unreachable since start, translating locally meanwhile"
    )
    since = time.mktime((2026, 1, 2, 9, 0, 0, 0, 0, -1))
    refused = cluster_line("h:1", "refused", since, 1, "wait", "Ray worker w1 has model other-1")
    assert (
        refused
        == "engine cluster h:1 refused since 09:00:00: Ray worker w1 has model other-1; 1 jobs waiting"
    )
    assert cluster_line("h:1", "ready", None, 0, "wait", None) == "engine cluster h:1 connected"
