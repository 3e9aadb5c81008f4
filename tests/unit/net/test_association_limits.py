"""Association slots on the running SCP: in all, per peer address, and what a rejected sender is told."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fuzz.harness import RunningScp, node_config
from pydicom.uid import JPEGBaseline8Bit
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification
from structlog.testing import capture_logs

from ct2pet_node.net.rejections import RejectionLog, request_ae_titles


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


def _recent(node: RunningScp) -> list[tuple[str, str, str, str]]:
    return [
        (r["reason"], r["called_ae"], r["calling_ae"], r["peer"])
        for r in node.scp.listener_status()["recent_rejections"]
    ]


def _logged(logs: list[dict[str, object]]) -> list[tuple[object, ...]]:
    return [
        (e["reason"], e["called_ae"], e["calling_ae"], e["peer"], e["log_level"])
        for e in logs
        if e["event"] == "association_rejected"
    ]


def test_a_called_ae_title_mismatch_is_logged_and_listed_with_both_titles_and_the_peer(
    node: RunningScp,
) -> None:
    with capture_logs() as logs:
        assert associate_as(node, "127.0.0.2", calling="SCANNER", called="SOMEONE-ELSE").is_rejected
        assert node.wait_idle(10)
    assert _logged(logs) == [("called_ae_unknown", "SOMEONE-ELSE", "SCANNER", "127.0.0.2", "warning")]
    assert _recent(node) == [("called_ae_unknown", "SOMEONE-ELSE", "SCANNER", "127.0.0.2")]
    (listed,) = node.scp.listener_status()["recent_rejections"]
    assert abs(listed["time"] - time.time()) < 30


def test_a_calling_ae_not_allowed_is_logged_and_listed(tmp_path: Path) -> None:
    node = RunningScp(node_config(tmp_path / "data", allowed_calling_ae_titles=("SCANNER",)))
    try:
        with capture_logs() as logs:
            refused = associate_as(node, "127.0.0.3", calling="INTRUDER", called="CT2PET")
            assert refused.is_rejected and rejection(refused) == (0x01, 0x01, 0x03)
            assert node.wait_idle(10)
        assert _logged(logs) == [("calling_ae_not_allowed", "CT2PET", "INTRUDER", "127.0.0.3", "warning")]
        assert _recent(node) == [("calling_ae_not_allowed", "CT2PET", "INTRUDER", "127.0.0.3")]
        assert node.scp.listener_status()["associations_rejected"] == {"calling_ae_not_allowed": 1}
    finally:
        node.stop()


def test_no_acceptable_presentation_context_is_logged_and_listed(node: RunningScp) -> None:
    ae = AE(ae_title="WORKSTATION")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(Verification, JPEGBaseline8Bit)  # Verification is offered uncompressed only
    with capture_logs() as logs:
        assoc = ae.associate("127.0.0.1", node.port, ae_title="CT2PET", bind_address=("127.0.0.4", 0))
        assert assoc.accepted_contexts == []
        if assoc.is_established:
            assoc.release()
        assert node.wait_idle(10)
    assert _logged(logs) == [
        ("no_acceptable_presentation_context", "CT2PET", "WORKSTATION", "127.0.0.4", "warning")
    ]
    assert _recent(node) == [("no_acceptable_presentation_context", "CT2PET", "WORKSTATION", "127.0.0.4")]
    assert node.scp.listener_status()["associations_rejected"] == {"no_acceptable_presentation_context": 1}


def test_an_association_with_an_acceptable_context_is_not_listed(node: RunningScp) -> None:
    assoc = associate(node, "127.0.0.1")
    assert assoc.is_established
    assoc.release()
    assert node.wait_idle(10)
    assert node.scp.listener_status()["recent_rejections"] == []


def test_the_rejection_list_keeps_the_newest(tmp_path: Path) -> None:
    kept = RejectionLog(keep=2, clock=iter([1.0, 2.0, 3.0]).__next__)
    for calling in ("A", "B", "C"):
        kept.record("called_ae_unknown", "X", calling, "10.0.0.1")
    assert [r["calling_ae"] for r in kept.recent()] == ["B", "C"]
    assert [r["time"] for r in kept.recent()] == [2.0, 3.0]
    assert kept.counts() == {"called_ae_unknown": 3}


def test_ae_titles_are_read_from_a_raw_association_request() -> None:
    pdu = bytes([0x01, 0, 0, 0, 0, 0x44, 0, 0x01, 0, 0]) + b"CT2PET".ljust(16) + b"SCANNER".ljust(16)
    assert request_ae_titles(pdu + bytes(32)) == ("CT2PET", "SCANNER")
    assert request_ae_titles(pdu[:8]) == ("", "")


def associate_as(node: RunningScp, source: str, calling: str, called: str) -> Association:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(Verification)
    return ae.associate("127.0.0.1", node.port, ae_title=called, bind_address=(source, 0))
