"""Bounds on what one peer can cost the listener: time, PDU size, instance size.

pynetdicom trusts its peer more than a node on a hospital network may:

* every accepted connection gets association threads and counts against
  ``maximum_associations`` before it has asked for anything; with TLS the
  handshake even runs on the accept loop, so one silent client stops every
  other from connecting;
* an accepted socket has no timeout, so a peer that sends half a PDU and
  stalls holds an association thread (and its slot) forever;
* a PDU is read whole into memory at whatever length its header declares
  (up to 4 GiB), whatever maximum PDU size we advertised;
* a C-STORE data set is gathered in memory however large it grows.

This module closes each: accepted connections wait in a
:class:`~ct2pet_node.net.waiting_room.WaitingRoom` (no thread, a short timer,
the TLS handshake done there without blocking) until their A-ASSOCIATE-RQ
has arrived whole, and only then become pynetdicom associations, with
sockets that have the network timeout; a PDU declaring more than
:data:`MAX_PDU_READ_BYTES` closes the connection before its body is read,
and a data set growing past the instance limit is
discarded as it arrives, so the handler can answer 0xA701 instead of the
process holding it, and a data set of a SOP class the node does not keep
is discarded as it arrives but for its first bytes (the header keys the log
names); a malformed DIMSE command set is dropped and the association
aborted before it reaches pynetdicom's decoder. These hooks use pynetdicom internals
(``AssociationSocket.recv`` reading a PDU as a 6-byte header then its body,
``AssociationSocket.ready``, ``RequestHandler._create_association``,
``Association.dimse.message.data_set``); ``tests/fuzz`` pins them.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Collection
from io import BytesIO
from socketserver import ThreadingMixIn
from typing import Any

import structlog
from pydicom.filereader import read_dataset
from pydicom.tag import Tag
from pynetdicom.association import Association
from pynetdicom.dimse_messages import _MESSAGE_TYPES
from pynetdicom.events import Event
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from ct2pet_node.net.rejections import RejectionSink
from ct2pet_node.net.waiting_room import WaitingRoom

log = structlog.get_logger(__name__)

# Largest PDU body read, bytes. We advertise 256 KiB for P-DATA; an
# A-ASSOCIATE-RQ with a hundred presentation contexts is ~15 KiB. Four times
# the advertised size leaves room for sloppy senders and bounds the buffer.
MAX_PDU_READ_BYTES = 4 * 262_144
# Bytes kept of a data set the node drops: enough for the header keys logged
# (SOP class, series UID), which come long before any pixel data.
IGNORED_HEAD_BYTES = 65_536


class OversizedDataSet(BytesIO):
    """Stands in for a C-STORE data set past the instance limit: counts bytes, keeps none."""

    def __init__(self, received: int) -> None:
        super().__init__()
        self.received = received

    def write(self, data: Any) -> int:
        size = len(data)
        self.received += size
        return size


class IgnoredDataSet(BytesIO):
    """Stands in for a data set the node does not keep: holds its first bytes, counts the rest."""

    def __init__(self, head: bytes) -> None:
        super().__init__()
        self.received = 0
        self.write(head)

    def write(self, data: Any) -> int:
        size = len(data)
        room = IGNORED_HEAD_BYTES - self.received
        if room > 0:
            super().write(bytes(data[:room]))
        self.received += size
        return size


class _BoundedPduSocket(AssociationSocket):
    """An association socket that first replays the A-ASSOCIATE-RQ the waiting room read,
    and refuses to read a PDU body above :data:`MAX_PDU_READ_BYTES`."""

    _unread: bytearray

    @property
    def ready(self) -> bool:
        return bool(self._unread) or bool(AssociationSocket.ready.fget(self))  # type: ignore[attr-defined]

    def recv(self, nr_bytes: int) -> bytearray:
        if self._unread:
            # One whole PDU, read as pynetdicom reads any: recv(6), then recv(length).
            taken = self._unread[:nr_bytes]
            del self._unread[:nr_bytes]
            return taken
        if nr_bytes > MAX_PDU_READ_BYTES:
            log.warning("pdu_too_large", declared_bytes=nr_bytes, limit_bytes=MAX_PDU_READ_BYTES)
            return bytearray()  # "connection closed before the whole PDU": pynetdicom drops the peer
        return super().recv(nr_bytes)


class _GuardedRequestHandler(RequestHandler):
    server: GuardedAssociationServer

    def _create_association(self) -> Association:
        association = super()._create_association()
        sock = association.dul.socket
        sock.__class__ = _BoundedPduSocket  # same state, two methods changed
        sock._unread = bytearray(self.server.take_first_pdu(self.request))  # type: ignore[union-attr]
        return association


class GuardedAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with a waiting room, timed sockets and bounded PDUs.

    Attributes (set before serving)
    -------------------------------
    io_timeout_seconds : float or None
        Timeout of every blocking read or write on an association's socket.
    tcp_nodelay : bool
        Nagle's algorithm off: a C-STORE response is one small PDU, and with
        Nagle on it can wait for the peer's delayed ACK (~40 ms per instance).
    request_timeout_seconds : float
        How long a connection may wait (TLS handshake included) before its
        A-ASSOCIATE-RQ has arrived.
    max_waiting_connections : int
        Connections waiting at once; the oldest is closed for a new one.
    """

    io_timeout_seconds: float | None = None
    tcp_nodelay: bool = True
    request_timeout_seconds: float = 5.0
    max_waiting_connections: int = 64
    # Where the waiting room reports an association it turns away (a plain request on TLS).
    on_rejection: RejectionSink | None = None
    # listen() backlog: socketserver's 5 drops SYNs while connections churn, and each
    # dropped SYN costs a legitimate sender a one-second retransmission.
    request_queue_size = 128

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("request_handler", _GuardedRequestHandler)
        self._first_pdus: dict[socket.socket, bytes] = {}
        self._first_pdus_lock = threading.Lock()
        self.waiting_room: WaitingRoom | None = None
        super().__init__(*args, **kwargs)

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self.waiting_room = WaitingRoom(
            self._hand_over,
            request_timeout=self.request_timeout_seconds,
            max_waiting=self.max_waiting_connections,
            max_pdu_bytes=MAX_PDU_READ_BYTES,
            ssl_context=self.ssl_context,
            io_timeout=self.io_timeout_seconds,
            on_rejection=self.on_rejection,
        )
        self.waiting_room.start()
        try:
            super().serve_forever(poll_interval)
        finally:
            self.waiting_room.stop()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        client, address = self.socket.accept()
        if self.tcp_nodelay:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client, address

    def process_request(self, request: Any, client_address: Any) -> None:
        # Not an association yet: it waits, threadless, until its request has arrived.
        assert self.waiting_room is not None, "process_request outside serve_forever"
        self.waiting_room.add(request, client_address)

    def _hand_over(self, sock: socket.socket, peer: Any, first_pdu: bytes) -> None:
        with self._first_pdus_lock:
            self._first_pdus[sock] = first_pdu
        ThreadingMixIn.process_request(self, sock, peer)  # pynetdicom's path from here on

    def take_first_pdu(self, sock: socket.socket) -> bytes:
        """The A-ASSOCIATE-RQ the waiting room read from ``sock`` (once)."""
        with self._first_pdus_lock:
            return self._first_pdus.pop(sock, b"")


def pdu_guard(max_instance_bytes: int, kept_sop_classes: Collection[str]) -> Any:
    """An ``EVT_PDU_RECV`` handler bounding instance size and refusing malformed DIMSE commands.

    Runs on the association's reactor thread just before a P-DATA PDU is
    added to the DIMSE message being gathered, so:

    * a C-STORE data set on a presentation context whose SOP class is not
      in ``kept_sop_classes`` is swapped for an :class:`IgnoredDataSet`
      (the handler drops it; its size does not matter);
    * a C-STORE data set growing past ``max_instance_bytes`` is swapped for
      an :class:`OversizedDataSet` (at most one PDU more than the limit is
      ever held) and the handler answers 0xA701;
    * a command set lacking CommandField, CommandDataSetType or a message
      ID, which pynetdicom does not check and which kills its reactor thread
      with an uncaught exception, is dropped and the association aborted.
    """

    def on_pdu_received(event: Event) -> None:
        pdu = event.pdu
        if not isinstance(pdu, P_DATA_TF):
            return
        message = getattr(getattr(event.assoc, "dimse", None), "message", None)
        if not _commands_valid(pdu, message):
            log.warning("invalid_dimse_command", calling_ae=event.assoc.requestor.ae_title)
            pdu.presentation_data_value_items = []  # nothing reaches the DIMSE decoder
            event.assoc.abort()
            return
        data_set = getattr(message, "data_set", None)
        if not isinstance(data_set, BytesIO) or isinstance(data_set, OversizedDataSet | IgnoredDataSet):
            return
        if not _kept(event.assoc, getattr(message, "context_id", None), kept_sop_classes):
            message.data_set = IgnoredDataSet(data_set.getvalue()[:IGNORED_HEAD_BYTES])  # type: ignore[union-attr]
            return
        incoming = sum(len(item.presentation_data_value or b"") for item in pdu.presentation_data_value_items)
        held = data_set.getbuffer().nbytes
        if held + incoming > max_instance_bytes:
            log.warning(
                "instance_too_large",
                calling_ae=event.assoc.requestor.ae_title,
                received_bytes=held + incoming,
                limit_bytes=max_instance_bytes,
            )
            message.data_set = OversizedDataSet(held)  # type: ignore[union-attr]

    return on_pdu_received


def _kept(association: Association, context_id: int | None, kept_sop_classes: Collection[str]) -> bool:
    """Whether the message on ``context_id`` is of a SOP class the node keeps (unknown yet: yes)."""
    if context_id is None:  # the command set is not complete yet: no data set is being gathered
        return True
    for context in association.accepted_contexts:
        if context.context_id == context_id:
            return context.abstract_syntax in kept_sop_classes
    return True  # not an accepted context: pynetdicom refuses the message itself


_REQUIRED_COMMAND_TAGS = (Tag(0x0000, 0x0100), Tag(0x0000, 0x0800))  # CommandField, CommandDataSetType
_MESSAGE_ID_TAGS = (Tag(0x0000, 0x0110), Tag(0x0000, 0x0120))  # MessageID, MessageIDBeingRespondedTo


def _commands_valid(pdu: P_DATA_TF, message: object) -> bool:
    """Whether each last command fragment in ``pdu`` completes a command set pynetdicom can act on."""
    previous = getattr(message, "encoded_command_set", None)
    gathered = previous.getvalue() if isinstance(previous, BytesIO) else b""
    for item in pdu.presentation_data_value_items:
        value = item.presentation_data_value or b""
        if not value or not value[0] & 0x01:
            continue  # a data set fragment
        gathered += value[1:]
        if not value[0] & 0x02:
            continue  # more command fragments follow
        try:
            command = read_dataset(BytesIO(gathered), is_implicit_VR=True, is_little_endian=True)
            field = command.get(_REQUIRED_COMMAND_TAGS[0])
            known = field is not None and int(field.value) in _MESSAGE_TYPES
        except Exception:  # any damage in a peer's bytes: not a command we can act on
            return False
        if not known or _REQUIRED_COMMAND_TAGS[1] not in command:
            return False
        if not any(tag in command for tag in _MESSAGE_ID_TAGS):
            return False
        gathered = b""
    return True
