"""Fuzz the C-STORE path: mutated CT instances through a real SCU, mutated PDUs through a raw socket.

The storage SCP runs in this process on a loopback port. After every batch
a C-ECHO must succeed; every answer must be success or one of the node's
failure statuses (or no answer: the association was dropped); no handler
may fall through to its catch-all (``store_failed`` in the log); resident
memory must stay bounded.

CI runs a bounded number of examples; ``CT2PET_FUZZ_EXAMPLES=N`` runs N per
campaign (see docs/reliability.md).
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from ctfactory import make_ct_series
from fuzz.harness import RunningScp, examples, node_config, peak_rss_kib, rss_kib
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.dimse_messages import C_ECHO_RQ
from pynetdicom.dimse_primitives import C_ECHO
from pynetdicom.pdu import P_DATA_TF
from structlog.testing import capture_logs

from ct2pet_node.net.scp import (
    CANNOT_PARSE,
    INSTANCE_TOO_LARGE,
    INVALID_HEADER,
    OUT_OF_RESOURCES,
    SOP_CLASS_MISMATCH,
    SOP_INSTANCE_MISMATCH,
    SUCCESS,
)

ANSWERS = {
    SUCCESS,
    OUT_OF_RESOURCES,
    INSTANCE_TOO_LARGE,
    SOP_CLASS_MISMATCH,
    CANNOT_PARSE,
    INVALID_HEADER,
    SOP_INSTANCE_MISMATCH,
    None,
}
RSS_GROWTH_LIMIT_KIB = 96 * 1024


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningScp]:
    config = node_config(tmp_path_factory.mktemp("fuzz") / "data", timeout=2.0, max_instance_mb=1)
    running = RunningScp(config)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def originals(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """Part 10 files of a small CT series, as bytes."""
    folder = tmp_path_factory.mktemp("originals")
    return [p.read_bytes() for p in make_ct_series(folder, n=4, rows=16, cols=16, name="fuzz")]


def _split(part10: bytes) -> tuple[bytes, bytes]:
    """(preamble + file meta, data set) of a Part 10 file."""
    meta = pydicom.dcmread(BytesIO(part10), stop_before_pixels=True).file_meta
    buffer = BytesIO()
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)
    header = buffer.getvalue()
    assert part10.startswith(header)
    return header, part10[len(header) :]


def _echo_eventually(node: RunningScp, seconds: float = 20.0) -> bool:
    """A C-ECHO succeeds within ``seconds``: dropped associations may hold slots until their timeout,
    and a loaded 2-core CI machine is slow to notice."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if node.echo():
            return True
        time.sleep(0.2)
    return False


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(
        st.just("length"), st.integers(0, 10**6), st.sampled_from([0, 1, 0xFFFF, 0xFFFFFFFF, 0x7FFFFFFF])
    ),
)


def _mutated(data_set: bytes, mutations: list[tuple[str, int, int]], header_bias: bool) -> bytes:
    data = bytearray(data_set)
    span = 400 if header_bias else len(data)  # the header keys live in the first few hundred bytes
    for kind, where, value in mutations:
        if not data:
            break
        at = where % min(span, len(data))
        if kind == "flip":
            data[at] ^= value
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = bytes([value]) * (1 + where % 7)
        elif kind == "length" and at + 8 <= len(data):
            # Overwrite what may be an element's 16- or 32-bit length.
            data[at : at + 4] = struct.pack("<I", value)
    return bytes(data)


@settings(max_examples=examples(25), deadline=None, suppress_health_check=list(HealthCheck))
@given(
    batch=st.lists(
        st.tuples(st.integers(0, 3), st.lists(mutation, min_size=1, max_size=4), st.booleans()),
        min_size=1,
        max_size=6,
    )
)
def test_mutated_instances_are_answered_and_the_scp_stays_up(
    node: RunningScp, originals: list[bytes], tmp_path_factory: pytest.TempPathFactory, batch: list
) -> None:
    folder = tmp_path_factory.mktemp("mutated")
    paths: list[Path] = []
    for number, (which, mutations, header_bias) in enumerate(batch):
        header, data_set = _split(originals[which])
        path = folder / f"{number}.dcm"
        path.write_bytes(header + _mutated(data_set, mutations, header_bias))
        paths.append(path)
    with capture_logs() as logs, pytest.MonkeyPatch.context() as patch:
        patch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # the bytes as they are
        patch.setattr(pydicom.config.settings, "reading_validation_mode", pydicom.config.IGNORE)
        statuses = node.send(paths)  # type: ignore[arg-type]
    unexpected = [s for s in statuses if s not in ANSWERS]
    assert not unexpected, [f"0x{s:04X}" for s in unexpected]
    assert not [e for e in logs if e["event"] == "store_failed"], "a handler fell through to its catch-all"
    for spooled in node.spooled():
        assert spooled.resolve().is_relative_to((node.data_dir / "spool").resolve())
    assert _echo_eventually(node)


# Raw PDUs ------------------------------------------------------------------------------------------


def _capture_associate_rq() -> bytes:
    """The A-ASSOCIATE-RQ PDU pynetdicom sends for CT storage and verification, as bytes."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    captured: list[bytes] = []

    def accept() -> None:
        connection, _ = listener.accept()
        with connection:
            header = connection.recv(6, socket.MSG_WAITALL)
            length = struct.unpack(">I", header[2:6])[0]
            captured.append(header + connection.recv(length, socket.MSG_WAITALL))

    thread = threading.Thread(target=accept)
    thread.start()
    ae = AE(ae_title="SCANNER")
    ae.acse_timeout = ae.network_timeout = 2
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="CT2PET")
    thread.join(5)
    listener.close()
    assert not assoc.is_established and captured
    wrapper = getattr(assoc.dul, "socket", None)
    if wrapper is not None and wrapper.socket is not None:
        wrapper.socket.close()
    return captured[0]


def _echo_pdata(context_id: int = 3) -> bytes:
    """A P-DATA-TF carrying a C-ECHO-RQ on presentation context ``context_id`` (Verification)."""
    primitive = C_ECHO()
    primitive.MessageID = 1
    primitive.AffectedSOPClassUID = "1.2.840.10008.1.1"
    message = C_ECHO_RQ()
    message.primitive_to_message(primitive)
    pdu = P_DATA_TF()
    pdu.from_primitive(next(message.encode_msg(context_id, 16384)))
    return bytes(pdu.encode())


@pytest.fixture(scope="module")
def handshake() -> tuple[bytes, bytes]:
    return _capture_associate_rq(), _echo_pdata()


raw_case = st.one_of(
    st.tuples(st.just("random"), st.binary(min_size=1, max_size=600)),
    st.tuples(
        st.just("flipped_rq"),
        st.lists(st.tuples(st.integers(0, 10**5), st.integers(1, 255)), min_size=1, max_size=8),
    ),
    st.tuples(st.just("rq_then_garbage"), st.binary(min_size=1, max_size=300)),
    st.tuples(
        st.just("oversized_length"),
        st.sampled_from([0x04, 0x01, 0x07, 0x05]),
        st.integers(2**20 + 1, 2**32 - 1),
    ),
    st.tuples(st.just("truncated_pdata"), st.integers(1, 60)),
    st.tuples(
        st.just("flipped_pdata"),
        st.lists(st.tuples(st.integers(0, 10**5), st.integers(1, 255)), min_size=1, max_size=4),
    ),
)


def _raw_bytes(case: tuple, rq: bytes, pdata: bytes) -> list[bytes]:
    kind = case[0]
    if kind == "random":
        return [case[1]]
    if kind == "flipped_rq":
        data = bytearray(rq)
        for where, value in case[1]:
            data[where % len(data)] ^= value
        return [bytes(data)]
    if kind == "rq_then_garbage":
        return [rq, case[1]]
    if kind == "oversized_length":
        # A header declaring more than we will ever read, then a little of it.
        return [rq, struct.pack(">BBI", case[1], 0, case[2]) + b"\x00" * 4096]
    if kind == "truncated_pdata":
        return [rq, pdata[: case[1] % len(pdata)]]
    data = bytearray(pdata)
    for where, value in case[1]:
        data[6 + where % (len(data) - 6)] ^= value  # keep the PDU header, damage the PDVs
    return [rq, bytes(data)]


def _talk(port: int, chunks: list[bytes]) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as connection:
        for chunk in chunks:
            try:
                connection.sendall(chunk)
                connection.settimeout(0.3)
                connection.recv(65536)  # the A-ASSOCIATE-AC/RJ, an A-ABORT, or nothing
            except (TimeoutError, ConnectionError):
                pass


@settings(max_examples=examples(30), deadline=None, suppress_health_check=list(HealthCheck))
@given(cases=st.lists(raw_case, min_size=1, max_size=4))
def test_mutated_pdus_never_take_the_scp_down(
    node: RunningScp, handshake: tuple[bytes, bytes], cases: list
) -> None:
    rq, pdata = handshake
    with capture_logs() as logs:
        for case in cases:
            _talk(node.port, _raw_bytes(case, rq, pdata))
    assert not [e for e in logs if e["event"] in ("store_failed", "echo_failed")]
    assert _echo_eventually(node)


def test_the_raw_handshake_is_valid(node: RunningScp, handshake: tuple[bytes, bytes]) -> None:
    """The campaign's starting point works: without mutation it is an accepted association and an echo."""
    rq, pdata = handshake
    assert _echo_eventually(node)
    assert node.wait_idle()  # slots held by the echo and by dropped connections are free again
    with socket.create_connection(("127.0.0.1", node.port), timeout=5) as connection:
        connection.sendall(rq)
        accept = connection.recv(65536)
        assert accept[0] == 0x02, f"expected A-ASSOCIATE-AC, got PDU type 0x{accept[0]:02X}"
        connection.sendall(pdata)
        answer = connection.recv(65536)
        assert answer[0] == 0x04  # P-DATA-TF: the C-ECHO-RSP
        connection.sendall(b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00")  # A-RELEASE-RQ
        assert connection.recv(65536)[0] == 0x06


def test_memory_stays_bounded_over_the_campaigns(node: RunningScp, originals: list[bytes]) -> None:
    """After the campaigns above, resident memory is not growing with each batch: 200 more instances
    of an oversized-then-refused kind leave RSS within a bound."""
    header, data_set = _split(originals[0])
    big = (
        header + data_set + struct.pack("<HHI", 0x0009, 0x1010, 2 * 1024 * 1024) + b"\x00" * (2 * 1024 * 1024)
    )
    path = Path(node.data_dir).parent / "big.dcm"
    path.write_bytes(big)
    assert _echo_eventually(node)
    before = rss_kib()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
        for _ in range(10):
            assert node.wait_idle()  # the last association's slot is free before the next asks for one
            assert node.send([path] * 5) == [INSTANCE_TOO_LARGE] * 5
    growth = rss_kib() - before
    print(f"rss growth {growth} KiB over 50 refused 2 MiB instances; peak {peak_rss_kib()} KiB")
    assert growth < RSS_GROWTH_LIMIT_KIB
    assert _echo_eventually(node)
