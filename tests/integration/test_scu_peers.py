"""The storage SCU and the sender against real peers: dcmtk's storescp and Orthanc.

Each peer runs in a private network namespace (tests/peers.py); our code runs
in this process, on a thread moved into that namespace.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from ctfactory import make_ct_series
from peers import NetNamespace, OrthancPeer, StorescpPeer, dcmtk_tool, namespaces_unavailable
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

from ct2pet_node.config import Destination
from ct2pet_node.errors import DeliveryError
from ct2pet_node.net.scu import ScuTimeouts, echo, send_files
from ct2pet_node.routing.delivery import EntryState, RetrySchedule
from ct2pet_node.service.sender import Sender, scu_sender
from ct2pet_node.spool.outbox import Outbox

pytestmark = pytest.mark.integration

QUICK = ScuTimeouts(connect_seconds=2, acse_seconds=5, dimse_seconds=10, network_seconds=10)


def _skip_without_storescp() -> None:
    if reason := namespaces_unavailable():
        pytest.skip(reason)
    if dcmtk_tool("storescp") is None:
        pytest.skip("dcmtk's storescp not found (apt install dcmtk)")


@pytest.fixture
def namespace() -> Iterator[NetNamespace]:
    if reason := namespaces_unavailable():
        pytest.skip(reason)
    with NetNamespace() as ns:
        yield ns


@pytest.fixture
def series(tmp_path: Path) -> list[Path]:
    """Six small CT instances in three transfer syntaxes: one SOP class, two contexts."""
    out = tmp_path / "out"
    paths = make_ct_series(out, n=2, name="a", rows=16, cols=16)
    implicit = make_ct_series(out, n=2, name="b", rows=16, cols=16)
    for path in implicit:  # ctfactory writes only Explicit VR or compressed syntaxes
        ds = dcmread(path)
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        ds.save_as(path)
    paths += implicit
    paths += make_ct_series(out, n=2, name="c", rows=16, cols=16, transfer_syntax=RLELossless)
    assert dcmread(paths[2]).file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    return paths


def _uids(paths: list[Path]) -> set[str]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}


@pytest.mark.parametrize("accept_all", [False, True], ids=["uncompressed-only", "accept-all"])
def test_a_batch_goes_over_one_association(
    namespace: NetNamespace, series: list[Path], tmp_path: Path, accept_all: bool
) -> None:
    _skip_without_storescp()
    with StorescpPeer(namespace, tmp_path / "in", accept_all=accept_all) as peer, namespace.entered():
        results = send_files(peer.destination, "CT2PET", series, timeouts=QUICK)
    assert [r.path for r in results] == series
    assert [r.status for r in results] == [0x0000] * len(series)
    assert peer.associations() == 1
    received = peer.received()
    assert _uids(received) == _uids(series)
    rle_in = {str(dcmread(p).SOPInstanceUID) for p in series[4:]}
    syntaxes = {str(dcmread(p).SOPInstanceUID): dcmread(p).file_meta.TransferSyntaxUID for p in received}
    # A peer that takes no compression gets the RLE files decoded; one that does gets them as they are.
    assert {syntaxes[uid] for uid in rle_in} == ({RLELossless} if accept_all else {ExplicitVRLittleEndian})


def test_echo_answers_and_a_closed_port_says_why(namespace: NetNamespace, tmp_path: Path) -> None:
    _skip_without_storescp()
    with StorescpPeer(namespace, tmp_path / "in") as peer, namespace.entered():
        result = echo(peer.destination, "CT2PET", QUICK)
        closed = Destination(name="nowhere", ae_title="NOBODY", host="127.0.0.1", port=peer.port + 1)
        with pytest.raises(
            DeliveryError,
            match=r"cannot connect to nowhere \(NOBODY@127.0.0.1:11113\): "
            r"Connection refused; check that the PACS is running",
        ):
            echo(closed, "CT2PET", QUICK)
    assert result.status == 0x0000
    assert 0 < result.associate_seconds < 5
    assert 0 < result.echo_seconds < 5


def test_unreachable_batch_reports_every_instance(namespace: NetNamespace, series: list[Path]) -> None:
    closed = Destination(name="down", ae_title="DOWN", host="127.0.0.1", port=11112)
    with namespace.entered():
        results = send_files(closed, "CT2PET", series, timeouts=QUICK)
    assert {r.problem.value if r.problem else None for r in results} == {"unreachable"}
    assert "Connection refused" in results[0].detail


class _Jobs:
    """Stands in for the job store: remembers what the sender reported."""

    def __init__(self) -> None:
        self.delivered: list[int] = []
        self.dead: list[tuple[int, str]] = []
        self.changed = threading.Event()

    def on_delivered(self, job_id: int) -> None:
        self.delivered.append(job_id)
        self.changed.set()

    def on_dead(self, job_id: int, reason: str) -> None:
        self.dead.append((job_id, reason))
        self.changed.set()


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def test_destination_down_then_up_gets_each_instance_once(
    namespace: NetNamespace, series: list[Path], tmp_path: Path
) -> None:
    _skip_without_storescp()
    peer = StorescpPeer(namespace, tmp_path / "in")
    outbox, jobs = Outbox.open(tmp_path / "data"), _Jobs()
    sender = Sender(
        outbox,
        (peer.destination,),
        "CT2PET",
        send=scu_sender(QUICK),
        schedule=RetrySchedule((0.5,), max_attempts=10),
        on_job_delivered=jobs.on_delivered,
        on_job_dead=jobs.on_dead,
    )
    with namespace.entered():
        sender.start()  # its thread, and the associations it opens, live in the namespace
    try:
        sender.submit(1, series)
        _wait_for(lambda: outbox.entries(1)[0].attempts >= 1)
        assert outbox.entries(1)[0].state is EntryState.PENDING
        with peer:
            assert jobs.changed.wait(10.0)
            assert jobs.delivered == [1]
            assert jobs.dead == []
            assert sorted(_uids(peer.received())) == sorted(_uids(series))
            assert len(peer.received()) == len(series)
            assert peer.associations() == 1
    finally:
        assert sender.stop(timeout=10.0)
        outbox.close()


def test_dead_letter_after_the_last_retry_then_retry_replays(
    namespace: NetNamespace, series: list[Path], tmp_path: Path
) -> None:
    _skip_without_storescp()
    peer = StorescpPeer(namespace, tmp_path / "in")
    outbox, jobs = Outbox.open(tmp_path / "data"), _Jobs()
    sender = Sender(
        outbox,
        (peer.destination,),
        "CT2PET",
        send=scu_sender(QUICK),
        schedule=RetrySchedule((0.05,), max_attempts=2),
        on_job_delivered=jobs.on_delivered,
        on_job_dead=jobs.on_dead,
    )
    with namespace.entered():
        sender.submit(2, series)
        assert sender.run_once() == 1
        time.sleep(0.06)
        assert sender.run_once() == 1
        ((job_id, reason),) = jobs.dead
        assert job_id == 2
        assert reason.startswith("delivery to storescp failed: gave up after 2 attempts: ")
        assert "Connection refused" in reason
        assert [e.job_id for e in outbox.dead_letters()] == [2]

        with peer:
            assert sender.run_once() == 0  # dead stays dead until asked
            assert outbox.retry(2, now=time.time()) == 1
            assert sender.run_once() == 1
    outbox.close()
    assert jobs.delivered == [2]
    assert _uids(peer.received()) == _uids(series)


def test_a_stock_storescp_stores_the_batch(
    namespace: NetNamespace, series: list[Path], tmp_path: Path
) -> None:
    _skip_without_storescp()
    with StorescpPeer(namespace, tmp_path / "in", accept_all=True) as peer:
        # As installed: dcmtk reads TCP_NODELAY from its environment, and no package sets it.
        assert "TCP_NODELAY" not in peer.environment()
        with namespace.entered():
            results = send_files(peer.destination, "CT2PET", series, timeouts=QUICK)
    assert [r.status for r in results] == [0x0000] * len(series)
    assert _uids(peer.received()) == _uids(series)


def test_orthanc_stores_the_batch(namespace: NetNamespace, series: list[Path], tmp_path: Path) -> None:
    if shutil.which("Orthanc") is None:
        pytest.skip("Orthanc not found (apt install orthanc)")
    with OrthancPeer(namespace, tmp_path / "orthanc") as orthanc:
        assert "TCP_NODELAY" not in orthanc.environment()  # stock, as a hospital runs it
        with namespace.entered():
            assert echo(orthanc.destination, "CT2PET", QUICK).status == 0
            wrong_title = Destination("orthanc", "WRONG", "127.0.0.1", orthanc.dicom_port)
            with pytest.raises(
                DeliveryError, match="rejected the association: Called AE title not recognised"
            ):
                echo(wrong_title, "CT2PET", QUICK)
            results = send_files(orthanc.destination, "CT2PET", series, timeouts=QUICK)
        assert [r.status for r in results] == [0x0000] * len(series)
        instances = orthanc.rest("/instances")
        assert len(instances) == len(series)
        stored = {orthanc.rest(f"/instances/{i}")["MainDicomTags"]["SOPInstanceUID"] for i in instances}
        assert stored == _uids(series)
