"""What a connection may cost the listener before it asks for an association.

pynetdicom gives every accepted TCP connection an association thread (two,
with its DUL thread, each polling every millisecond) and counts it against
``maximum_associations`` before it has sent a byte. Sixty connections that
never send an A-ASSOCIATE-RQ therefore lock every scanner out until the
network timeout closes them. Here connections and associations are kept apart:

* :class:`WaitingRoom` holds connections that have not yet sent a whole
  A-ASSOCIATE-RQ (and, with TLS, not yet finished their handshake) on one
  selector thread, with no pynetdicom state: each has DICOM's ARTIM idea of a
  short timer (``[node] association_request_timeout_seconds``), and when
  ``[node] max_waiting_connections`` of them wait, the oldest is closed to
  make room for the newest rather than the newest refused (a scanner sends
  its request within milliseconds of connecting; a connection that has
  waited longest is the likeliest to never send one). The oldest is taken
  from the peer address holding the most waiting connections, so one
  flooding host churns its own connections, not a scanner's. Only a connection whose first PDU is a complete
  A-ASSOCIATE-RQ is handed to pynetdicom, with that PDU already read.
* With TLS required, a connection whose first byte is a plain A-ASSOCIATE-RQ
  (not a TLS handshake) is a sender configured without TLS: its request is
  read in the clear, answered with an A-ASSOCIATE-RJ (permanent) and reported
  as ``tls_required`` with its AE titles, instead of a bare handshake failure.
* Association slots are counted only for connections that asked for one
  (:mod:`ct2pet_node.net.limits`).
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import ssl
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from ct2pet_node.net.rejections import PERMANENT_REJECT_PDU, TLS_REQUIRED, RejectionSink, request_ae_titles

log = structlog.get_logger(__name__)

A_ASSOCIATE_RQ = 0x01
_HEADER_BYTES = 6  # PDU type, reserved, 4-byte big-endian length
# A-ABORT from the service provider (source 0x02), PS3.8 9.3.8, with its reason: unexpected
# PDU (0x02) for anything but a request first, invalid PDU parameter value (0x06) for a length.
_ABORTS = {
    "not_an_association_request": bytes([0x07, 0, 0, 0, 0, 0x04, 0, 0, 0x02, 0x02]),
    "pdu_too_large": bytes([0x07, 0, 0, 0, 0, 0x04, 0, 0, 0x02, 0x06]),
}
_READ_CHUNK = 65_536
_MAX_SELECT_SECONDS = 1.0
# Closed connections are logged as one summary per this many seconds, not one line each: a
# flood closes thousands a minute, and the log must stay readable (and journald unthrottled).
_SUMMARY_SECONDS = 10.0
_SUMMARY_PEERS = 5

HandOver = Callable[[socket.socket, Any, bytes], None]


@dataclass(slots=True)
class _Waiting:
    """One connection in the waiting room (mutable: owned by the waiting-room thread alone)."""

    sock: socket.socket
    peer: Any
    deadline: float
    handshaking: bool
    pdu: bytearray = field(default_factory=bytearray)
    plain_on_tls: bool = False  # a sender without TLS on a TLS listener: read in the clear, then refused


def _bytes_missing(pdu: bytearray) -> int:
    """How many more bytes complete the first PDU (its header first, then its declared body)."""
    if len(pdu) < _HEADER_BYTES:
        return _HEADER_BYTES - len(pdu)
    return _HEADER_BYTES + int(struct.unpack(">I", pdu[2:6])[0]) - len(pdu)


def first_pdu_problem(header: bytes, max_pdu_bytes: int) -> str | None:
    """Why a connection whose first PDU starts with ``header`` (6 bytes) is not heard further, or None."""
    if header[0] != A_ASSOCIATE_RQ:
        return "not_an_association_request"
    if struct.unpack(">I", header[2:6])[0] > max_pdu_bytes:
        return "pdu_too_large"
    return None


class WaitingRoom:
    """Connections that have not yet sent an A-ASSOCIATE-RQ, held on one selector thread.

    Parameters
    ----------
    hand_over : callable
        ``hand_over(sock, peer, first_pdu)``, called on this room's thread
        once ``first_pdu`` (a whole A-ASSOCIATE-RQ) has been read from
        ``sock``; ``sock`` is blocking again, with ``io_timeout`` seconds.
    request_timeout : float
        Seconds a connection may take, from accept, to finish its TLS
        handshake and send its A-ASSOCIATE-RQ.
    max_waiting : int
        Connections held at once; the oldest is closed for a new one.
    max_pdu_bytes : int
        Largest A-ASSOCIATE-RQ read (its declared length is checked first).
    ssl_context : ssl.SSLContext or None
        Server-side TLS; the handshake is done here, without blocking.
    io_timeout : float or None
        Timeout of the socket handed over.
    clock : callable
        Monotonic seconds (a parameter for tests).
    on_rejection : callable, optional
        Told of each plain-TCP association request refused for want of TLS.
    """

    def __init__(
        self,
        hand_over: HandOver,
        *,
        request_timeout: float,
        max_waiting: int,
        max_pdu_bytes: int,
        ssl_context: ssl.SSLContext | None = None,
        io_timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_rejection: RejectionSink | None = None,
    ) -> None:
        self._hand_over = hand_over
        self._on_rejection = on_rejection
        self._request_timeout = request_timeout
        self._max_waiting = max_waiting
        self._max_pdu_bytes = max_pdu_bytes
        self._ssl_context = ssl_context
        self._io_timeout = io_timeout
        self._clock = clock
        self._arrivals: deque[tuple[socket.socket, Any]] = deque()
        self._waiting: dict[socket.socket, _Waiting] = {}  # insertion order: oldest first
        self._dropped: dict[str, int] = {}
        self._unreported: dict[str, int] = {}
        self._unreported_peers: dict[str, int] = {}
        self._reported_at = clock()
        self._lock = threading.Lock()
        self._selector = selectors.DefaultSelector()
        self._wake_recv, self._wake_send = socket.socketpair()
        self._wake_recv.setblocking(False)
        self._wake_send.setblocking(False)
        self._selector.register(self._wake_recv, selectors.EVENT_READ)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="scp-waiting-room", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Close every waiting connection and end the thread."""
        self._stopping = True
        self._wake()
        if self._thread.is_alive():
            self._thread.join(timeout)
        for entry in list(self._waiting.values()):
            self._close(entry, None)
        if self._unreported:
            self._report(self._clock())
        while self._arrivals:
            _close_quietly(self._arrivals.popleft()[0])
        self._selector.close()
        self._wake_recv.close()
        self._wake_send.close()

    def add(self, sock: socket.socket, peer: Any) -> None:
        """Take a connection just accepted (called on the accept loop; returns at once)."""
        if self._stopping:
            _close_quietly(sock)
            return
        self._arrivals.append((sock, peer))
        self._wake()

    @property
    def waiting(self) -> int:
        """Connections held now (at most ``max_waiting``; the few just accepted and not yet taken in aside)."""
        return len(self._waiting)

    def dropped(self) -> dict[str, int]:
        """Connections closed before their association request, since start, by reason."""
        with self._lock:
            return dict(self._dropped)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # already awake (buffer full), or stopping
            self._wake_send.send(b"\x00")

    # On the waiting-room thread only ----------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping:
            try:
                self._turn()
            except Exception:  # top of a thread: one bad connection must not stop the room
                log.exception("waiting_room_failed")

    def _turn(self) -> None:
        oldest = next(iter(self._waiting.values()), None)
        timeout = _MAX_SELECT_SECONDS
        if oldest is not None:
            timeout = min(timeout, max(0.0, oldest.deadline - self._clock()))
        for key, _ in self._selector.select(timeout):
            if key.fileobj is self._wake_recv:
                self._drain_wake()
            elif self._waiting.get(key.fileobj) is key.data:  # type: ignore[call-overload]
                self._progress(key.data)
        while self._arrivals and not self._stopping:
            self._admit(*self._arrivals.popleft())
        now = self._clock()
        for entry in list(self._waiting.values()):
            if entry.deadline > now:
                break  # the rest arrived later
            self._close(entry, "request_timeout")
        if self._unreported and now - self._reported_at >= _SUMMARY_SECONDS:
            self._report(now)

    def _report(self, now: float) -> None:
        busiest = sorted(self._unreported_peers.items(), key=lambda item: -item[1])[:_SUMMARY_PEERS]
        log.info(
            "waiting_connections_closed",
            reasons=dict(self._unreported),
            peers=dict(busiest),
            seconds=round(now - self._reported_at, 1),
            waiting=len(self._waiting),
        )
        self._unreported.clear()
        self._unreported_peers.clear()
        self._reported_at = now

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while self._wake_recv.recv(4096):
                pass

    def _admit(self, sock: socket.socket, peer: Any) -> None:
        if len(self._waiting) >= self._max_waiting:
            self._close(self._eviction_victim(), "evicted")
        try:
            sock.setblocking(False)
            if self._ssl_context is not None:
                sock = self._ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        except OSError:  # the peer already went away
            _close_quietly(sock)
            return
        entry = _Waiting(sock, peer, self._clock() + self._request_timeout, self._ssl_context is not None)
        self._waiting[sock] = entry
        self._selector.register(sock, selectors.EVENT_READ, entry)
        # Read at once: a sender writes its request right after connecting, so while
        # connections churn it is usually here already and leaves before it could be evicted.
        self._progress(entry)

    def _progress(self, entry: _Waiting) -> None:
        """Handshake and read as far as the peer's bytes allow, never blocking."""
        try:
            if entry.handshaking and isinstance(entry.sock, ssl.SSLSocket):
                _handshake(entry, entry.sock)
            while (missing := _bytes_missing(entry.pdu)) > 0:
                size = min(missing, _READ_CHUNK)
                # The plain-text request is read past the (unstarted) TLS layer, from the socket itself.
                chunk = socket.socket.recv(entry.sock, size) if entry.plain_on_tls else entry.sock.recv(size)
                if not chunk:
                    self._close(entry, "closed_by_peer")
                    return
                had_header = len(entry.pdu) >= _HEADER_BYTES
                entry.pdu += chunk
                if not had_header and len(entry.pdu) >= _HEADER_BYTES:
                    problem = first_pdu_problem(bytes(entry.pdu[:_HEADER_BYTES]), self._max_pdu_bytes)
                    if problem is not None:
                        self._refuse(entry, problem)
                        return
        except ssl.SSLWantWriteError:
            self._selector.modify(entry.sock, selectors.EVENT_WRITE, entry)
            return
        except (ssl.SSLWantReadError, BlockingIOError):
            self._selector.modify(entry.sock, selectors.EVENT_READ, entry)
            return
        except ssl.SSLError as error:
            self._close(entry, "tls_handshake_failed" if entry.handshaking else "tls_error", str(error))
            return
        except OSError as error:
            self._close(entry, "connection_error", error.strerror or str(error))
            return
        if entry.plain_on_tls:
            self._refuse_without_tls(entry)
            return
        self._forget(entry)
        try:
            entry.sock.settimeout(self._io_timeout)
            self._hand_over(entry.sock, entry.peer, bytes(entry.pdu))
        except Exception:  # top of the hand-over: close this one, keep serving the rest
            log.exception("association_hand_over_failed", peer=_host(entry.peer))
            _close_quietly(entry.sock)

    def _refuse(self, entry: _Waiting, reason: str) -> None:
        with contextlib.suppress(OSError):  # best effort: tell a confused DICOM peer, as PS3.8 would
            entry.sock.send(_ABORTS[reason])
            # Closing with unread bytes sends a reset, which may overtake the A-ABORT.
            entry.sock.recv(_READ_CHUNK)
        self._close(entry, reason, f"first PDU type 0x{entry.pdu[0]:02X}, {len(entry.pdu)} bytes read")

    def _refuse_without_tls(self, entry: _Waiting) -> None:
        called, calling = request_ae_titles(bytes(entry.pdu))
        with contextlib.suppress(OSError):  # best effort: the sender shows "rejected", not a reset
            socket.socket.send(entry.sock, PERMANENT_REJECT_PDU)
        self._close(entry, None)  # counted as a rejection below, not as a dropped connection
        if self._on_rejection is not None:
            self._on_rejection(TLS_REQUIRED, called, calling, _host(entry.peer))

    def _eviction_victim(self) -> _Waiting:
        """The oldest connection of the peer address holding the most (with one host flooding, its oldest).

        Oldest, because a sender asks within milliseconds and the longest
        waiting is the likeliest never to ask; of the busiest address, so a
        flood from one host churns its own connections and not a scanner's
        that arrived during it.
        """
        counts: dict[str, int] = {}
        for entry in self._waiting.values():
            counts[_host(entry.peer)] = counts.get(_host(entry.peer), 0) + 1
        busiest = max(counts.values())
        return next(e for e in self._waiting.values() if counts[_host(e.peer)] == busiest)

    def _forget(self, entry: _Waiting) -> None:
        self._waiting.pop(entry.sock, None)
        with contextlib.suppress(KeyError, ValueError):  # never registered (closed on arrival)
            self._selector.unregister(entry.sock)

    def _close(self, entry: _Waiting, reason: str | None, detail: str = "") -> None:
        self._forget(entry)
        _close_quietly(entry.sock)
        if reason is None:  # closed on stop
            return
        with self._lock:
            self._dropped[reason] = self._dropped.get(reason, 0) + 1
        log.debug("waiting_connection_closed", reason=reason, peer=_host(entry.peer), detail=detail or None)
        # A port probe or load-balancer health check connects and closes: not worth reporting.
        if reason != "closed_by_peer":
            self._unreported[reason] = self._unreported.get(reason, 0) + 1
            host = _host(entry.peer)
            self._unreported_peers[host] = self._unreported_peers.get(host, 0) + 1


def _handshake(entry: _Waiting, sock: ssl.SSLSocket) -> None:
    """Do the TLS handshake, unless the peer started in the clear with an association request."""
    entry.plain_on_tls = _plain_association_request(sock)
    if not entry.plain_on_tls:
        sock.do_handshake()
    entry.handshaking = False


def _plain_association_request(sock: ssl.SSLSocket) -> bool:
    """Whether the first byte waiting on a TLS connection not yet handshaken starts an A-ASSOCIATE-RQ.

    A TLS client's first byte is 0x16 (handshake record); peeked, so the handshake still reads it.
    Raises BlockingIOError while nothing has arrived.
    """
    return socket.socket.recv(sock, 1, socket.MSG_PEEK) == bytes([A_ASSOCIATE_RQ])


def _close_quietly(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()


def _host(peer: Any) -> str:
    return str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)
