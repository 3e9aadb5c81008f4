"""Connections that never ask for an association do not lock legitimate senders out.

Timeouts are scaled down (network 2 s, association request 1 s) so each
attack outlasts the network timeout in seconds; the same tests with TLS are
in ``test_tls.py``.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ctfactory import make_ct_series
from flood import EchoProbe, IdleConnections
from fuzz.harness import RunningScp, node_config
from peers import DCMTK_ENV, dcmtk_tool

pytestmark = pytest.mark.integration

NETWORK_TIMEOUT = 2.0
REQUEST_TIMEOUT = 1.0
IDLE = 60
SLICES = 41


def flooded_node(data_dir: Path, **node: object) -> RunningScp:
    config = node_config(data_dir, timeout=NETWORK_TIMEOUT)
    node_settings = dataclasses.replace(
        config.node,
        association_request_timeout_seconds=REQUEST_TIMEOUT,
        **node,  # type: ignore[arg-type]
    )
    return RunningScp(dataclasses.replace(config, node=node_settings))


@pytest.fixture
def node(tmp_path: Path) -> Iterator[RunningScp]:
    made = flooded_node(tmp_path / "data")
    yield made
    made.stop()


def storescu(port: int, files: list[Path]) -> subprocess.CompletedProcess[str]:
    tool = dcmtk_tool("storescu")
    if tool is None:
        pytest.skip("dcmtk's storescu not found; install dcmtk")
    return subprocess.run(
        [tool, "-v", "-aet", "SCANNER", "-aec", "CT2PET", "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **DCMTK_ENV},
    )


def test_sixty_idle_connections_lock_nobody_out(node: RunningScp, tmp_path: Path) -> None:
    series = make_ct_series(tmp_path / "ct", n=SLICES, rows=32, cols=32)
    with IdleConnections(node.port, IDLE) as flood, EchoProbe(node.echo) as probe:
        time.sleep(NETWORK_TIMEOUT + 1.5)  # every idle connection has been closed and re-opened
        status = node.scp.listener_status()
        sent = storescu(node.port, series)
        time.sleep(0.5)
    output = sent.stdout + sent.stderr
    assert sent.returncode == 0, output
    assert output.count("Received Store Response (Success)") == SLICES
    assert len(node.spooled()) == SLICES
    assert probe.tried >= 10 and probe.succeeded == probe.tried, probe.results
    assert flood.reopened >= IDLE  # the node closed each at least once: the attack went on throughout
    assert status["connections_waiting"] >= IDLE - 5
    assert node.scp.listener_status()["connections_dropped"]["request_timeout"] >= IDLE
    assert node.scp.listener_status()["associations_rejected"] == {}


def test_past_the_waiting_cap_the_oldest_connection_makes_room(tmp_path: Path) -> None:
    node = flooded_node(tmp_path / "data", max_waiting_connections=16)
    try:
        with IdleConnections(node.port, IDLE) as flood, EchoProbe(node.echo) as probe:
            time.sleep(NETWORK_TIMEOUT + 1.5)
        assert probe.tried >= 10 and probe.succeeded == probe.tried, probe.results
        dropped = node.scp.listener_status()["connections_dropped"]
        assert dropped.get("evicted", 0) >= IDLE - 16
        assert flood.reopened >= IDLE - 16
        assert node.scp.listener_status()["connections_waiting"] <= 16
    finally:
        node.stop()


def test_a_silent_association_holds_its_slot_until_the_network_timeout(tmp_path: Path) -> None:
    node = flooded_node(tmp_path / "data", max_associations=1)
    try:
        silent = node._ae().associate("127.0.0.1", node.port, ae_title="CT2PET")
        assert silent.is_established
        assert node.echo() is False  # the one slot is taken
        assert node.scp.listener_status()["associations_rejected"] == {"max_associations": 1}
        deadline = time.monotonic() + NETWORK_TIMEOUT + 3
        while silent.is_established and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not silent.is_established  # the node aborted it after the network timeout
        assert node.wait_idle(5) and node.echo()
    finally:
        node.stop()
