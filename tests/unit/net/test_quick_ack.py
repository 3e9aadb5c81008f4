"""The SCU's sockets acknowledge at once after every read, and read what pynetdicom asks of them.

Speed against a stock dcmtk peer is measured by ``benchmarks/delivery.py``;
here only that the option is still set once request/response turns have
made Linux treat the connection as interactive (which clears it).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from ct2pet_node.net.quick_ack import TCP_QUICKACK, QuickAckSocket
from ct2pet_node.net.scu import _StorageScuAE

pytestmark = pytest.mark.skipif(TCP_QUICKACK is None, reason="TCP_QUICKACK is Linux only")


@pytest.fixture
def echo_port() -> Iterator[int]:
    scp = AE(ae_title="ECHOSCP")
    scp.add_supported_context(Verification)
    server = scp.start_server(("127.0.0.1", 0), block=False)
    assert server is not None
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()


def _associate(ae: AE, port: int) -> Association:
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="ECHOSCP")
    assert assoc.is_established
    return assoc


def _raw(assoc: Association) -> socket.socket:
    assert assoc.dul.socket is not None and assoc.dul.socket.socket is not None
    return assoc.dul.socket.socket


def _quick_ack_after_echoes(assoc: Association, turns: int = 5) -> int:
    assert TCP_QUICKACK is not None
    try:
        for _ in range(turns):
            assert int(assoc.send_c_echo().Status) == 0
        return int(_raw(assoc).getsockopt(socket.IPPROTO_TCP, TCP_QUICKACK))
    finally:
        assoc.release()


def test_the_scu_socket_still_acknowledges_at_once_after_request_response_turns(echo_port: int) -> None:
    ae = _StorageScuAE("CT2PET")
    assoc = _associate(ae, echo_port)
    assert isinstance(assoc.dul.socket, QuickAckSocket)
    assert _raw(assoc).getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    assert _quick_ack_after_echoes(assoc) == 1
    ae.close_sockets()


def test_without_re_arming_linux_clears_the_option(echo_port: int) -> None:
    # What makes the test above able to fail: pynetdicom's own socket, set once, loses it.
    class SetOnce(AE):
        def _create_socket(self, assoc, address, tls_args):  # type: ignore[no-untyped-def]
            wrapper = super()._create_socket(assoc, address, tls_args)
            assert wrapper.socket is not None and TCP_QUICKACK is not None
            wrapper.socket.setsockopt(socket.IPPROTO_TCP, TCP_QUICKACK, 1)
            return wrapper

    assert _quick_ack_after_echoes(_associate(SetOnce("CT2PET"), echo_port)) == 0
