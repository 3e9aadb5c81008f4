"""Storage and verification SCU: send a batch of files to a destination, or echo it.

One association per batch, proposing exactly the presentation contexts the
files need: for each SOP class, one context per compressed transfer syntax
present and one uncompressed context (the files' own uncompressed syntax,
then Explicit and Implicit VR Little Endian as fallbacks). Each instance's
C-STORE status is returned as is; what it means is decided in
:mod:`ct2pet_node.routing.delivery`. Our sockets set ``TCP_NODELAY``: DIMSE
is request/response with small PDUs, and Nagle's delay costs 40 ms a turn;
and ``TCP_QUICKACK`` after every read (:mod:`ct2pet_node.net.quick_ack`), so
a stock dcmtk peer's Nagle does not cost the same on its side.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from ct2pet_node.config import Destination
from ct2pet_node.errors import DeliveryError
from ct2pet_node.net.quick_ack import QuickAckSocket
from ct2pet_node.routing.delivery import InstanceResult, TransferProblem

log = structlog.get_logger(__name__)

_NATIVE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian)
_FALLBACKS = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
_MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: odd context IDs 1-255
_REACTOR_STOP_SECONDS = 1.0  # how long to wait for pynetdicom's DUL thread before closing its socket


@dataclass(frozen=True, slots=True)
class ScuTimeouts:
    """Seconds to wait for: the TCP connection, the A-ASSOCIATE answer, a DIMSE response, any PDU."""

    connect_seconds: float = 10.0
    acse_seconds: float = 30.0
    dimse_seconds: float = 60.0
    network_seconds: float = 60.0

    @classmethod
    def uniform(cls, seconds: float) -> ScuTimeouts:
        """Every timeout the same, e.g. from ``[node] network_timeout_seconds``."""
        return cls(seconds, seconds, seconds, seconds)


@dataclass(frozen=True, slots=True)
class EchoResult:
    """A successful C-ECHO; ``associate_seconds`` and ``echo_seconds`` are wall-clock seconds."""

    destination: str
    status: int
    associate_seconds: float
    echo_seconds: float


@dataclass(frozen=True, slots=True)
class _Header:
    path: Path
    sop_class: UID
    sop_instance: str
    transfer_syntax: UID


def _read_header(path: Path) -> _Header | InstanceResult:
    try:
        ds = dcmread(path, stop_before_pixels=True)
        return _Header(path, UID(ds.SOPClassUID), str(ds.SOPInstanceUID), UID(ds.file_meta.TransferSyntaxUID))
    except (OSError, InvalidDicomError, AttributeError, KeyError, ValueError) as error:
        detail = f"cannot read {path}: {error}"
        return InstanceResult(path, None, None, TransferProblem.UNREADABLE, detail)


def requested_contexts(headers: Sequence[tuple[UID, UID]]) -> list[tuple[UID, list[UID]]]:
    """The presentation contexts for ``(sop_class, transfer_syntax)`` pairs, in first-seen order.

    Returns
    -------
    list of (abstract syntax, transfer syntaxes)
        One uncompressed context per SOP class (own native syntaxes first,
        then the fallbacks) and one per compressed syntax.
    """
    native: dict[UID, list[UID]] = {}
    compressed: dict[UID, list[UID]] = {}
    for sop_class, syntax in headers:
        uncompressed = native.setdefault(sop_class, [])
        if syntax in _NATIVE:
            if syntax not in uncompressed:
                uncompressed.append(syntax)
        elif syntax not in compressed.setdefault(sop_class, []):
            compressed[sop_class].append(syntax)
    contexts: list[tuple[UID, list[UID]]] = []
    for sop_class, own in native.items():
        contexts.extend((sop_class, [syntax]) for syntax in compressed.get(sop_class, []))
        contexts.append((sop_class, own + [s for s in _FALLBACKS if s not in own]))
    return contexts


class _StorageScuAE(AE):
    """An AE whose sockets set TCP_NODELAY, acknowledge reads at once and are always closed.

    pynetdicom (3.0) shuts a socket down after a failed connect, or after the
    peer dropped the connection mid-association, but never closes it
    (``shutdown`` raises ENOTCONN first), leaving the descriptor to the
    garbage collector with a ResourceWarning; we keep a handle to close it ourselves.
    """

    def __init__(self, ae_title: str) -> None:
        super().__init__(ae_title=ae_title)
        self.raw_sockets: list[socket.socket] = []

    def _create_socket(self, assoc: Association, address: Any, tls_args: Any) -> Any:
        wrapper = QuickAckSocket(assoc, address=address)
        wrapper.tls_args = tls_args
        if wrapper.socket is not None:
            wrapper.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.raw_sockets.append(wrapper.socket)
        return wrapper

    def close_sockets(self) -> None:
        for raw in self.raw_sockets:
            raw.close()


def _associate(
    destination: Destination,
    calling_ae: str,
    contexts: Sequence[tuple[UID, list[UID]]],
    timeouts: ScuTimeouts,
    *,
    roles: Sequence[Any] = (),
    handlers: Sequence[tuple[Any, Callable[..., Any]]] = (),
) -> tuple[Association, TransferProblem | None, str]:
    """Open an association; returns it, and why it is not established (None when it is).

    ``roles`` (SCP/SCU role selection items) and ``handlers`` are for a C-GET,
    whose instances arrive as C-STOREs on this association.
    """
    ae = _StorageScuAE(calling_ae)
    ae.connection_timeout = timeouts.connect_seconds
    ae.acse_timeout = timeouts.acse_seconds
    ae.dimse_timeout = timeouts.dimse_seconds
    ae.network_timeout = timeouts.network_seconds
    for abstract, syntaxes in contexts:
        ae.add_requested_context(abstract, syntaxes)
    opened = threading.Event()

    def on_open(_: evt.Event) -> None:
        opened.set()

    started = time.monotonic()
    assoc = ae.associate(
        destination.host,
        destination.port,
        ae_title=destination.ae_title,
        ext_neg=list(roles) or None,
        evt_handlers=[(evt.EVT_CONN_OPEN, on_open), *handlers],
    )
    where = f"{destination.name} ({destination.ae_title}@{destination.host}:{destination.port})"
    if assoc.is_established:
        return assoc, None, ""
    ae.close_sockets()
    if assoc.is_rejected:
        response = assoc.acceptor.primitive
        reason = getattr(response, "reason_str", "") or "no reason given"
        return assoc, TransferProblem.REJECTED, f"{where} rejected the association: {reason}"
    if not opened.is_set():
        return (
            assoc,
            TransferProblem.UNREACHABLE,
            f"cannot connect to {where}: {_diagnose(destination, timeouts)}",
        )
    if time.monotonic() - started >= timeouts.acse_seconds:
        return assoc, TransferProblem.TIMEOUT, f"{where} did not answer within {timeouts.acse_seconds:g} s"
    return assoc, TransferProblem.ABORTED, f"{where} aborted the association request"


def _diagnose(destination: Destination, timeouts: ScuTimeouts) -> str:
    # pynetdicom only logs why a connection failed; one more plain connect names it.
    try:
        with socket.create_connection((destination.host, destination.port), timeouts.connect_seconds):
            return "the connection failed, then succeeded on a second try"
    except TimeoutError:
        return f"no answer within {timeouts.connect_seconds:g} s; check the host, port and firewall"
    except OSError as error:
        return f"{error.strerror or error}; check that the PACS is running and the host and port"


def _as_native(path: Path) -> Dataset:
    """The file decoded and marked Explicit VR Little Endian, for a peer that takes no compression."""
    ds = dcmread(path)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        # Lossless decoding leaves the instance the same; pydicom would otherwise mint a new UID.
        ds.decompress(generate_instance_uid=False)
    else:  # deflated: dcmread has inflated it already
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _payload(assoc: Association, header: _Header) -> Path | Dataset | None:
    """What to hand to C-STORE: the file as is, the file decoded, or None when no context fits."""
    accepted = [cx for cx in assoc.accepted_contexts if cx.abstract_syntax == header.sop_class]
    syntaxes = {cx.transfer_syntax[0] for cx in accepted}
    if header.transfer_syntax in syntaxes:
        return header.path
    if not syntaxes & set(_NATIVE):
        return None
    # pynetdicom converts between uncompressed syntaxes itself; compressed files need decoding.
    return header.path if header.transfer_syntax in _NATIVE else _as_native(header.path)


def _store_one(assoc: Association, header: _Header, message_id: int, dimse_seconds: float) -> InstanceResult:
    uid = header.sop_instance
    try:
        payload = _payload(assoc, header)
    except (OSError, ValueError, RuntimeError, NotImplementedError) as error:
        return InstanceResult(
            header.path, uid, None, TransferProblem.NO_CONTEXT, f"cannot decompress: {error}"
        )
    if payload is None:
        detail = (
            f"the destination accepted no presentation context for SOP class {header.sop_class} "
            f"({header.sop_class.name}) in {header.transfer_syntax.name} or an uncompressed syntax"
        )
        return InstanceResult(header.path, uid, None, TransferProblem.NO_CONTEXT, detail)
    started = time.monotonic()
    try:
        response = assoc.send_c_store(payload, msg_id=message_id)
    except (ValueError, AttributeError) as error:
        return InstanceResult(header.path, uid, None, TransferProblem.UNREADABLE, str(error))
    except RuntimeError as error:  # the association dropped before the request
        return InstanceResult(header.path, uid, None, TransferProblem.ABORTED, str(error))
    if "Status" in response:
        return InstanceResult(header.path, uid, int(response.Status), None)
    # pynetdicom aborts the association when the DIMSE timeout expires, so a slow peer
    # looks like an abort unless the wait is measured.
    if assoc.is_established or time.monotonic() - started >= dimse_seconds:
        detail = f"no C-STORE response within {dimse_seconds:g} s"
        return InstanceResult(header.path, uid, None, TransferProblem.TIMEOUT, detail)
    return InstanceResult(
        header.path, uid, None, TransferProblem.ABORTED, "association aborted during C-STORE"
    )


def _close_sockets(assoc: Association) -> None:
    """Close the association's socket once its reactor has stopped (a peer that died leaves it open).

    The reactor has normally stopped by now (release, abort or failed request
    all wait for it); one still running, e.g. awaiting the peer's close, keeps
    its socket, which the garbage collector closes later.
    """
    if assoc.dul.is_alive():
        assoc.dul.join(_REACTOR_STOP_SECONDS)
    if not assoc.dul.is_alive() and isinstance(assoc.ae, _StorageScuAE):
        assoc.ae.close_sockets()


def send_files(
    destination: Destination,
    calling_ae: str,
    paths: Sequence[Path],
    timeouts: ScuTimeouts = ScuTimeouts(),
    cancel: threading.Event | None = None,
    on_result: Callable[[InstanceResult], None] | None = None,
) -> list[InstanceResult]:
    """Send files over one association; one result per path, in order.

    Parameters
    ----------
    destination : Destination
    calling_ae : str
        Our AE title.
    paths : sequence of Path
        DICOM Part 10 files.
    timeouts : ScuTimeouts
    cancel : threading.Event, optional
        When set, no further instance is sent: the one in flight finishes,
        the association is released, the rest come back CANCELLED.
    on_result : callable, optional
        Told of each instance's result as it comes (progress shown while a batch is sent).

    Returns
    -------
    list of InstanceResult
        Never raises for a network or peer failure: those are results.
    """
    read = [_read_header(Path(p)) for p in paths]
    headers = [h for h in read if isinstance(h, _Header)]
    contexts = requested_contexts([(h.sop_class, h.transfer_syntax) for h in headers])
    if len(contexts) > _MAX_CONTEXTS:
        log.warning("too_many_contexts", destination=destination.name, contexts=len(contexts))
        contexts = contexts[:_MAX_CONTEXTS]
    done: dict[Path, InstanceResult] = {r.path: r for r in read if isinstance(r, InstanceResult)}
    if headers:
        started = time.monotonic()
        assoc, problem, detail = _associate(destination, calling_ae, contexts, timeouts)
        for index, header in enumerate(headers):
            if problem is None and cancel is not None and cancel.is_set():
                problem, detail = TransferProblem.CANCELLED, "the sender is stopping"
            if problem is None and not assoc.is_established:
                problem, detail = TransferProblem.ABORTED, "the association was lost mid-batch"
            # Message IDs unique within the association, as PS3.7 9.3.1.1 asks.
            result = (
                _store_one(assoc, header, index % 0xFFFF + 1, timeouts.dimse_seconds)
                if problem is None
                else None
            )
            done[header.path] = result or InstanceResult(
                header.path, header.sop_instance, None, problem, detail
            )
            if on_result is not None:
                on_result(done[header.path])
        if assoc.is_established:
            assoc.release()
        _close_sockets(assoc)
        stored = sum(1 for r in done.values() if r.outcome.acknowledged)
        log.info(
            "batch_sent",
            destination=destination.name,
            instances=len(paths),
            acknowledged=stored,
            seconds=round(time.monotonic() - started, 3),
            problem=problem.value if problem else None,
        )
    return [done[Path(p)] for p in paths]


def echo(
    destination: Destination,
    calling_ae: str,
    timeouts: ScuTimeouts = ScuTimeouts(),
) -> EchoResult:
    """C-ECHO a destination.

    Raises
    ------
    DeliveryError
        When no association can be made or the answer is not success; the
        message names the destination and the cause.
    """
    started = time.monotonic()
    assoc, problem, detail = _associate(destination, calling_ae, [(Verification, list(_FALLBACKS))], timeouts)
    if problem is not None:
        raise DeliveryError(f"echo failed: {detail}")
    associated = time.monotonic()
    response = assoc.send_c_echo()
    answered = time.monotonic()
    if assoc.is_established:
        assoc.release()
    if "Status" not in response:
        raise DeliveryError(f"echo failed: {destination.name} gave no C-ECHO response")
    status = int(response.Status)
    if status != 0x0000:
        raise DeliveryError(f"echo failed: {destination.name} answered C-ECHO with status 0x{status:04X}")
    return EchoResult(destination.name, status, associated - started, answered - associated)
