"""Association slots on the running SCP: in all, per peer address, and what a rejected sender is told."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from fuzz.harness import RunningScp, node_config
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification
from structlog.testing import capture_logs


@pytest.fixture
def node(tmp_path: Path) -> Iterator[RunningScp]:
    config = node_config(tmp_path / "data", max_associations_per_peer=2)
    made = RunningScp(dataclasses.replace(config, node=dataclasses.replace(config.node, max_associations=3)))
    yield made
    made.stop()


def associate(node: RunningScp, source: str, calling: str = "SCANNER") -> Association:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(Verification)
    return ae.associate("127.0.0.1", node.port, ae_title="CT2PET", bind_address=(source, 0))


def rejection(assoc: Association) -> tuple[int, int, int]:
    answer = assoc.acceptor.primitive
    return answer.result, answer.result_source, answer.diagnostic


def test_one_peer_cannot_take_every_slot_and_the_limit_hit_is_named(node: RunningScp) -> None:
    held = [associate(node, "127.0.0.1"), associate(node, "127.0.0.1")]
    assert all(a.is_established for a in held)
    with capture_logs() as logs:
        refused = associate(node, "127.0.0.1", calling="GREEDY")
    assert refused.is_rejected
    assert rejection(refused) == (0x02, 0x03, 0x02)  # rejected-transient, local-limit-exceeded
    (event,) = [e for e in logs if e["event"] == "association_rejected"]
    assert event["reason"] == "max_associations_per_peer" and event["limit"] == 2
    assert (event["calling_ae"], event["called_ae"], event["peer"]) == ("GREEDY", "CT2PET", "127.0.0.1")

    other_host = associate(node, "127.0.0.2")  # another host still gets the last slot
    assert other_host.is_established
    held.append(other_host)
    with capture_logs() as logs:
        full = associate(node, "127.0.0.3")
    assert full.is_rejected and rejection(full) == (0x02, 0x03, 0x02)
    assert [e["reason"] for e in logs if e["event"] == "association_rejected"] == ["max_associations"]

    status = node.scp.listener_status()
    assert status["associations_active"] == 3
    assert status["associations_rejected"] == {"max_associations_per_peer": 1, "max_associations": 1}
    for assoc in held:
        assoc.release()
    assert node.wait_idle(10) and node.scp.listener_status()["associations_active"] == 0
    again = associate(node, "127.0.0.3")
    assert again.is_established  # slots come back when associations end
    again.release()


def test_pynetdicom_rejections_are_counted_by_reason(node: RunningScp) -> None:
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(Verification)
    assert ae.associate("127.0.0.1", node.port, ae_title="SOMEONE-ELSE").is_rejected
    assert node.wait_idle(10)
    assert node.scp.listener_status()["associations_rejected"] == {"called_ae_unknown": 1}
