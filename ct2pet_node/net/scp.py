"""The storage SCP: receive CT instances, spool them durably, answer.

The C-STORE handler writes, records, notifies and answers; it never raises
and never decodes pixels, talks to the GPU or opens a connection. Instances
of other storage SOP classes (negotiated when ``[node] other_sop_classes``
is "accept") are acknowledged and dropped: nothing written, only counted
(:meth:`StorageScp.ignored_counts`) and logged. What is kept or refused, and
the write, are :mod:`ct2pet_node.net.intake`'s, shared with the STOW-RS
receiver. Status codes it answers:

========  ================================================================
0x0000    stored, or already stored (a re-sent SOP Instance UID is
          acknowledged without being written again: the first copy wins),
          or not CT and dropped
0xA700    out of resources: the data directory is at its free-space
          watermark, or the spool or job store could not be written (the
          sender should retry later)
0xA701    out of resources: the data set is larger than
          ``[security] max_instance_mb`` (discarded as it arrived)
0xA900    the data set's SOP Class UID differs from the C-STORE request's
0xC210    cannot understand: the data set cannot be parsed at all
0xC211    cannot understand: SOPInstanceUID, SeriesInstanceUID,
          StudyInstanceUID or Modality missing, or a UID that is not a
          valid DICOM UID (so a UID can never walk out of the spool)
0xC212    cannot understand: the data set's SOP Instance UID differs from
          the C-STORE request's Affected SOP Instance UID
========  ================================================================
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, cast

import structlog
from pynetdicom import AE, evt
from pynetdicom.events import Event

from ct2pet_node.config import NodeConfig, SecurityConfig
from ct2pet_node.domain.records import AssociationReleased, InstanceRecord
from ct2pet_node.errors import StorageError
from ct2pet_node.net import tls
from ct2pet_node.net.c_store import answer_store, arrival_of_event
from ct2pet_node.net.contexts import (
    ACCEPTED_TRANSFER_SYNTAXES,
    CT_STORAGE_SOP_CLASSES,
    UNCOMPRESSED_TRANSFER_SYNTAXES,
    VERIFICATION_SOP_CLASS,
    storage_sop_classes,
)
from ct2pet_node.net.deliveries import AssociationDeliveries
from ct2pet_node.net.guards import GuardedAssociationServer, pdu_guard
from ct2pet_node.net.intake import (
    INSTANCE_TOO_LARGE,
    OUT_OF_RESOURCES,
    SOP_CLASS_MISMATCH,
    SOP_INSTANCE_MISMATCH,
    SUCCESS,
    Intake,
)
from ct2pet_node.net.limits import AssociationGate, AssociationLimits
from ct2pet_node.net.store_header import CANNOT_PARSE, INVALID_HEADER
from ct2pet_node.spool.instances import InstanceSpool
from ct2pet_node.spool.jobstore import JobStore

log = structlog.get_logger(__name__)

__all__ = [
    "CANNOT_PARSE",
    "INSTANCE_TOO_LARGE",
    "INVALID_HEADER",
    "OUT_OF_RESOURCES",
    "SOP_CLASS_MISMATCH",
    "SOP_INSTANCE_MISMATCH",
    "SUCCESS",
    "StorageScp",
]

# Largest PDU we accept, bytes. pynetdicom parses PDUs in Python, so a 512 KB CT
# slice in 16 KB PDUs (the default) costs ~15% more time than in 256 KB ones
# (benchmarks/ingest.py); bounded so one PDU buffer stays small.
MAX_PDU_BYTES = 262_144
# How quickly stop() is noticed by the accept loop, seconds.
_POLL_SECONDS = 0.1


class StorageScp:
    """The node's DICOM listener: C-ECHO and C-STORE of CT, spooled durably.

    Parameters
    ----------
    node, security : NodeConfig, SecurityConfig
        AE title, address, timeouts, what to do with other SOP classes; the
        calling AE allow-list (empty: any), TLS (see
        :mod:`ct2pet_node.net.tls`) and the instance size limit.
    spool, store : InstanceSpool, JobStore
        Where instances are written and recorded.
    on_stored : callable
        Called with each newly stored :class:`InstanceRecord` (the router's
        ``notify``); must not block. Not called for a re-sent instance.
    on_released : callable or None
        Given what an association stored when the sender releases it
        cleanly (the router's ``notify_released``); must not block.
    max_associations : int or None
        Overrides ``node.max_associations`` (associations at once; more are
        rejected, transient). Per peer: ``security.max_associations_per_peer``.
    address : (host, port) or None
        Overrides ``node.host`` and ``node.port``; port 0 binds a free port
        (see :attr:`port`).
    tcp_nodelay : bool
        Nagle's algorithm off on accepted sockets (the default); False only
        to measure the difference (``benchmarks/ingest.py``).
    on_refused : callable or None
        Called with each C-STORE status other than success the SCP answers
        (the node's ``instances_rejected`` metric); must not block.
    """

    def __init__(
        self,
        node: NodeConfig,
        security: SecurityConfig,
        spool: InstanceSpool,
        store: JobStore,
        on_stored: Callable[[InstanceRecord], None],
        *,
        max_associations: int | None = None,
        address: tuple[str, int] | None = None,
        tcp_nodelay: bool = True,
        clock: Callable[[], float] = time.time,
        on_released: Callable[[AssociationReleased], None] | None = None,
        on_refused: Callable[[int], None] | None = None,
    ) -> None:
        self._spool = spool
        self._intake = Intake(
            spool, store, on_stored, security.max_instance_mb * 1024 * 1024, node.other_sop_classes, clock
        )
        self._deliveries = AssociationDeliveries(on_released, clock)
        self._on_refused = on_refused
        self._address = address or (node.host, node.port)
        self._tcp_nodelay = tcp_nodelay
        self._io_timeout = node.network_timeout_seconds
        self._ssl_context = tls.server_context(security)  # ConfigError now, not at the first client
        self._server: GuardedAssociationServer | None = None
        self._thread: threading.Thread | None = None
        self._node = node
        self._gate = AssociationGate(
            AssociationLimits(max_associations or node.max_associations, security.max_associations_per_peer)
        )
        self.ae_title = node.ae_title
        ae = AE(ae_title=node.ae_title)
        ae.require_called_aet = True
        ae.require_calling_aet = list(security.allowed_calling_ae_titles)
        # The gate (EVT_REQUESTED) is the limit; pynetdicom's own count includes threads still
        # winding down after a rejection, so it only backstops a gate that failed.
        ae.maximum_associations = 4 * self._gate.limits.max_associations + node.max_waiting_connections
        ae.maximum_pdu_size = MAX_PDU_BYTES
        ae.network_timeout = node.network_timeout_seconds
        # An acceptor's ACSE timeout is its ARTIM timer: how long it waits for the
        # peer to close after a rejection or release (the request itself is read already).
        ae.acse_timeout = node.association_request_timeout_seconds
        ae.dimse_timeout = node.network_timeout_seconds
        for sop_class in storage_sop_classes(node.other_sop_classes):
            ae.add_supported_context(sop_class, list(ACCEPTED_TRANSFER_SYNTAXES))
        ae.add_supported_context(VERIFICATION_SOP_CLASS, list(UNCOMPRESSED_TRANSFER_SYNTAXES))
        self._ae = ae

    @property
    def port(self) -> int:
        """The bound TCP port (useful after binding port 0); raises if not started."""
        if self._server is None:
            raise StorageError("the storage SCP is not started; call start() first")
        return int(self._server.server_address[1])

    @property
    def intake(self) -> Intake:
        """The rules and the write behind the C-STORE handler, for other receivers (STOW-RS) to share."""
        return self._intake

    def ignored_counts(self) -> dict[str, int]:
        """Instances acknowledged and dropped since start (not CT), by SOP class keyword (its UID if none)."""
        return self._intake.ignored_counts()

    def listener_status(self) -> dict[str, Any]:
        """What ``status`` and ``/metrics`` show of the listener; counts since start, no patient data."""
        server = self._server
        room = server.waiting_room if server is not None else None
        return {
            "connections_waiting": room.waiting if room is not None else 0,
            "max_waiting_connections": self._node.max_waiting_connections,
            "associations_active": self._gate.limits.active(),
            "max_associations": self._gate.limits.max_associations,
            "associations_rejected": self._gate.rejected(),
            "recent_rejections": self._gate.rejections.recent(),
            "connections_dropped": room.dropped() if room is not None else {},
            "instances_ignored": self.ignored_counts(),
        }

    def start(self, blocking: bool = False) -> None:
        """Bind and serve; with ``blocking`` serve on this thread until :meth:`stop`."""
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self._handle_store),
            (evt.EVT_C_ECHO, self._handle_echo),
            (evt.EVT_REQUESTED, self._gate.on_requested),
            (evt.EVT_ACCEPTED, self._handle_accepted),
            (evt.EVT_ACCEPTED, self._gate.on_accepted),
            (evt.EVT_REJECTED, self._gate.on_rejected),
            (evt.EVT_ABORTED, self._handle_aborted),
            (evt.EVT_ABORTED, self._deliveries.on_aborted),
            (evt.EVT_RELEASED, self._deliveries.on_released),
            (evt.EVT_PDU_RECV, pdu_guard(self._intake.max_instance_bytes, CT_STORAGE_SOP_CLASSES)),
        ]
        self._spool.sweep_partial_files()  # a crash mid-write left them; never acknowledged
        try:
            server = cast(
                GuardedAssociationServer,
                self._ae.make_server(
                    self._address,
                    evt_handlers=handlers,
                    server_class=GuardedAssociationServer,
                    ssl_context=self._ssl_context,
                ),
            )
        except OSError as error:
            raise StorageError(
                f"cannot listen on {self._address[0]}:{self._address[1]}: {error.strerror or error}; "
                "choose a free [node] port or stop the process using it"
            ) from error
        server.io_timeout_seconds = self._io_timeout
        server.tcp_nodelay = self._tcp_nodelay
        server.request_timeout_seconds = self._node.association_request_timeout_seconds
        server.max_waiting_connections = self._node.max_waiting_connections
        server.on_rejection = self._gate.rejections.record
        self._server = server
        self._ae._servers.append(server)  # so AE.shutdown() and active_associations see it
        log.info(
            "scp_listening",
            ae_title=self.ae_title,
            host=self._address[0],
            port=self.port,
            tls=self._ssl_context is not None,
            blocking=blocking,
        )
        if blocking:
            server.serve_forever(poll_interval=_POLL_SECONDS)
            return
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": _POLL_SECONDS},
            name="storage-scp",
            daemon=True,
        )
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, let open associations finish for up to ``timeout`` seconds, abort the rest."""
        server, self._server = self._server, None
        if server is None:
            return
        active = server.active_associations
        server.shutdown()  # no new associations from here on
        deadline = time.monotonic() + timeout
        for association in active:
            association.join(max(0.0, deadline - time.monotonic()))
        for association in server.active_associations:
            log.warning("association_aborted_on_stop", calling_ae=association.requestor.ae_title)
            association.abort()
        if self._thread is not None:
            self._thread.join(timeout=max(1.0, deadline - time.monotonic()))
            self._thread = None
        log.info("scp_stopped", ae_title=self.ae_title)

    # Event handlers: run on pynetdicom's association threads --------------------------------

    def _handle_store(self, event: Event) -> int:
        status = answer_store(event, self._store_instance)
        if status != SUCCESS and self._on_refused is not None:
            try:
                self._on_refused(status)
            except Exception:  # a broken counter must not change the answer
                log.exception("refusal_hook_failed", status=f"0x{status:04X}")
        return status

    def _store_instance(self, event: Event) -> int:
        """Hand the instance to the intake, the rules and the write it shares with STOW-RS and C-GET."""
        outcome = self._intake.receive(arrival_of_event(event))
        if outcome.record is not None:
            # The settle rule needs to know which association brought which instances.
            self._deliveries.stored(event.assoc, outcome.record.series_uid, outcome.record.sop_instance_uid)
        return outcome.status

    def _handle_echo(self, event: Event) -> int:
        log.info("echo_received", calling_ae=event.assoc.requestor.ae_title)
        return SUCCESS

    def _handle_accepted(self, event: Event) -> None:
        requestor = event.assoc.requestor
        log.info(
            "association_accepted",
            calling_ae=requestor.ae_title,
            peer=requestor.address,
            assoc_id=event.assoc.native_id,
            contexts=len(event.assoc.accepted_contexts),
        )

    def _handle_aborted(self, event: Event) -> None:
        log.warning("association_aborted", calling_ae=event.assoc.requestor.ae_title)
