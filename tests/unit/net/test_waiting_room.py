"""The waiting room on real loopback sockets: what is handed over, what is closed, and why."""

from __future__ import annotations

import queue
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest
from structlog.testing import capture_logs

from ct2pet_node.net import waiting_room
from ct2pet_node.net.limits import AssociationLimits
from ct2pet_node.net.waiting_room import WaitingRoom, first_pdu_problem

REQUEST = struct.pack(">BBI", 0x01, 0, 10) + bytes(range(10))  # header + body; the room never decodes it
ABORT_UNEXPECTED = bytes([0x07, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x02, 0x02])
ABORT_INVALID_LENGTH = bytes([0x07, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x02, 0x06])


class Room:
    """A listening socket whose accepted connections go into a :class:`WaitingRoom`."""

    def __init__(self, request_timeout: float = 5.0, max_waiting: int = 8) -> None:
        self.handed: queue.Queue[tuple[socket.socket, bytes]] = queue.Queue()
        self.room = WaitingRoom(
            lambda sock, _peer, pdu: self.handed.put((sock, pdu)),
            request_timeout=request_timeout,
            max_waiting=max_waiting,
            max_pdu_bytes=1024,
            io_timeout=7.0,
        )
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.room.start()

    def connect(self, source: str = "127.0.0.1") -> socket.socket:
        client = socket.create_connection(self.listener.getsockname(), timeout=5, source_address=(source, 0))
        accepted, peer = self.listener.accept()
        self.room.add(accepted, peer)
        return client

    def wait_for(self, predicate: object, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate() and time.monotonic() < deadline:  # type: ignore[operator]
            time.sleep(0.01)
        assert predicate(), "timed out"  # type: ignore[operator]

    def close(self) -> None:
        self.room.stop()
        self.listener.close()


def closed(client: socket.socket) -> bool:
    """Whether the node closed ``client`` (an orderly close, or a reset for bytes it did not read)."""
    try:
        return client.recv(16) == b""
    except ConnectionResetError:
        return True


@pytest.fixture
def room() -> Iterator[Room]:
    made = Room()
    yield made
    made.close()


def test_a_request_trickled_byte_by_byte_is_handed_over_whole(room: Room) -> None:
    client = room.connect()
    for byte in REQUEST:
        client.send(bytes([byte]))
        time.sleep(0.002)
    sock, pdu = room.handed.get(timeout=5)
    assert pdu == REQUEST
    assert sock.gettimeout() == 7.0  # blocking again, with the network timeout
    assert room.room.waiting == 0 and room.room.dropped() == {}
    sock.close()
    client.close()


def test_a_silent_connection_is_closed_after_the_request_timeout() -> None:
    room = Room(request_timeout=0.3)
    try:
        client = room.connect()
        started = time.monotonic()
        assert client.recv(16) == b""  # closed by the node
        # The upper bound only says the timeout closed it; a loaded machine is slow to get there.
        assert 0.25 < time.monotonic() - started < 5.0
        assert room.room.dropped() == {"request_timeout": 1}
        client.close()
    finally:
        room.close()


def test_closed_connections_are_logged_as_a_summary_not_one_line_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(waiting_room, "_SUMMARY_SECONDS", 0.5)
    room = Room(request_timeout=0.1)
    try:
        with capture_logs() as logs:
            clients = [room.connect("127.0.0.2") for _ in range(3)]
            room.wait_for(lambda: any(e["event"] == "waiting_connections_closed" for e in logs))
        (summary,) = [e for e in logs if e["event"] == "waiting_connections_closed"]
        assert summary["reasons"] == {"request_timeout": 3} and summary["peers"] == {"127.0.0.2": 3}
        for client in clients:
            client.close()
    finally:
        room.close()


def test_a_first_pdu_that_is_not_an_association_request_gets_an_abort(room: Room) -> None:
    client = room.connect()
    client.sendall(struct.pack(">BBI", 0x04, 0, 4) + b"\x00" * 4)  # P-DATA-TF before any association
    assert client.recv(16) == ABORT_UNEXPECTED
    assert closed(client)
    room.wait_for(lambda: room.room.dropped() == {"not_an_association_request": 1})
    client.close()


def test_a_request_declaring_more_than_the_limit_is_closed_before_its_body_is_read(room: Room) -> None:
    client = room.connect()
    client.sendall(struct.pack(">BBI", 0x01, 0, 2**31))
    assert client.recv(16) == ABORT_INVALID_LENGTH and closed(client)
    room.wait_for(lambda: room.room.dropped() == {"pdu_too_large": 1})
    assert first_pdu_problem(REQUEST[:6], 1024) is None
    client.close()


def test_when_the_room_is_full_the_oldest_connection_makes_room() -> None:
    room = Room(max_waiting=2)
    try:
        first, second = room.connect(), room.connect()
        room.wait_for(lambda: room.room.waiting == 2)
        third = room.connect()
        assert first.recv(16) == b""  # the oldest went
        room.wait_for(lambda: room.room.dropped() == {"evicted": 1} and room.room.waiting == 2)
        third.sendall(REQUEST)  # the newest is heard
        sock, pdu = room.handed.get(timeout=5)
        assert pdu == REQUEST
        for each in (sock, first, second, third):
            each.close()
    finally:
        room.close()


def test_a_flooding_host_loses_its_own_oldest_connection_not_a_scanners() -> None:
    room = Room(max_waiting=3)
    try:
        scanner = room.connect("127.0.0.1")  # the oldest of all, but its host holds one
        flood = [room.connect("127.0.0.2"), room.connect("127.0.0.2")]
        room.wait_for(lambda: room.room.waiting == 3)
        flood.append(room.connect("127.0.0.2"))
        assert flood[0].recv(16) == b""
        room.wait_for(lambda: room.room.dropped() == {"evicted": 1})
        scanner.sendall(REQUEST)
        sock, pdu = room.handed.get(timeout=5)
        assert pdu == REQUEST
        for each in (sock, scanner, *flood):
            each.close()
    finally:
        room.close()


def test_a_peer_that_closes_is_forgotten(room: Room) -> None:
    room.connect().close()
    room.wait_for(lambda: room.room.dropped() == {"closed_by_peer": 1})
    assert room.room.waiting == 0


def test_stop_closes_every_waiting_connection() -> None:
    room = Room()
    client = room.connect()
    room.wait_for(lambda: room.room.waiting == 1)
    room.close()
    assert client.recv(16) == b""
    client.close()


def _holder() -> tuple[threading.Thread, threading.Event]:
    done = threading.Event()
    thread = threading.Thread(target=done.wait, daemon=True)
    thread.start()
    return thread, done


def test_association_limits_count_in_all_and_per_peer_and_free_ended_associations() -> None:
    limits = AssociationLimits(max_associations=3, max_per_peer=2)
    a, end_a = _holder()
    b, _ = _holder()
    assert limits.take(a, "10.0.0.1") is None and limits.take(b, "10.0.0.1") is None
    c, _ = _holder()
    assert limits.take(c, "10.0.0.1") == "max_associations_per_peer"
    assert limits.take(c, "10.0.0.2") is None
    d, _ = _holder()
    assert limits.take(d, "10.0.0.3") == "max_associations"
    assert limits.active() == 3
    end_a.set()
    a.join(5)
    assert limits.active() == 2 and limits.take(d, "10.0.0.3") is None
