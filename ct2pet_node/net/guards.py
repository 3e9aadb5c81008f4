"""Bounds on what one peer can cost the listener: time, PDU size, instance size.

pynetdicom trusts its peer more than a node on a hospital network may:

* an accepted socket has no timeout, so a peer that sends half a PDU and
  stalls holds an association thread (and one of ``maximum_associations``)
  forever; with TLS the handshake even runs on the accept loop, so one
  silent client stops every other from connecting;
* a PDU is read whole into memory at whatever length its header declares
  (up to 4 GiB), whatever maximum PDU size we advertised;
* a C-STORE data set is gathered in memory however large it grows.

This module closes each: accepted sockets get the network timeout and a
deferred TLS handshake (done on the association's own thread), a PDU
declaring more than :data:`MAX_PDU_READ_BYTES` closes the connection before
its body is read, and a data set growing past the instance limit is
discarded as it arrives, so the handler can answer 0xA701 instead of the
process holding it, and a data set of a SOP class the node does not keep
is discarded as it arrives but for its first bytes (the header keys the log
names); a malformed DIMSE command set is dropped and the association
aborted before it reaches pynetdicom's decoder. These hooks use pynetdicom internals
(``AssociationSocket.recv`` reading a PDU body in one call,
``Association.dimse.message.data_set``); ``tests/fuzz`` pins them.
"""

from __future__ import annotations

import socket
from collections.abc import Collection
from io import BytesIO
from typing import Any

import structlog
from pydicom.filereader import read_dataset
from pydicom.tag import Tag
from pynetdicom.association import Association
from pynetdicom.dimse_messages import _MESSAGE_TYPES
from pynetdicom.events import Event
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

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
    """An association socket that refuses to read a PDU body above :data:`MAX_PDU_READ_BYTES`."""

    def recv(self, nr_bytes: int) -> bytearray:
        # pynetdicom reads a PDU as recv(6) for its header, then recv(length) for the body.
        if nr_bytes > MAX_PDU_READ_BYTES:
            log.warning("pdu_too_large", declared_bytes=nr_bytes, limit_bytes=MAX_PDU_READ_BYTES)
            return bytearray()  # "connection closed before the whole PDU": pynetdicom drops the peer
        return super().recv(nr_bytes)


class _GuardedRequestHandler(RequestHandler):
    def _create_association(self) -> Association:
        association = super()._create_association()
        association.dul.socket.__class__ = _BoundedPduSocket  # same state, one method bounded
        return association


class GuardedAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with timed sockets, deferred TLS handshakes and bounded PDUs.

    Attributes (set before serving)
    -------------------------------
    io_timeout_seconds : float or None
        Timeout of every blocking read or write on an accepted socket.
    tcp_nodelay : bool
        Nagle's algorithm off: a C-STORE response is one small PDU, and with
        Nagle on it can wait for the peer's delayed ACK (~40 ms per instance).
    """

    io_timeout_seconds: float | None = None
    tcp_nodelay: bool = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("request_handler", _GuardedRequestHandler)
        super().__init__(*args, **kwargs)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        client, address = self.socket.accept()
        client.settimeout(self.io_timeout_seconds)
        if self.tcp_nodelay:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.ssl_context is not None:
            # The handshake happens on the first read, on the association's
            # thread and under its timeout, not here on the accept loop.
            client = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return client, address


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
        pdu = event.pdu  # type: ignore[attr-defined]
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
