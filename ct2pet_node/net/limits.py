"""Association slots: counted only for connections that asked for one, in all and per peer address.

A connection becomes an association candidate only once its whole
A-ASSOCIATE-RQ has arrived (:mod:`ct2pet_node.net.waiting_room`). Then it
takes one of ``[node] max_associations`` slots, at most ``[security]
max_associations_per_peer`` of them per peer address, so one host cannot
take every slot; a request past either limit is rejected with DICOM's
rejected-transient / local-limit-exceeded, and the log and the counts say
which limit it hit. A negotiated association that then goes silent keeps
its slot until pynetdicom's network timeout
(``[node] network_timeout_seconds``) aborts it.
"""

from __future__ import annotations

import threading
from typing import Any

import structlog

log = structlog.get_logger(__name__)


class AssociationLimits:
    """Associations that asked for a slot and hold it while their thread runs, in all and per peer.

    A slot is taken when an A-ASSOCIATE-RQ arrives and given back when the
    association's thread ends, however it ends (release, abort, timeout,
    rejection by pynetdicom): ended threads are pruned at each question, so
    no end can be missed.
    """

    def __init__(self, max_associations: int, max_per_peer: int) -> None:
        self.max_associations = max_associations
        self.max_per_peer = max_per_peer
        self._held: list[tuple[threading.Thread, str]] = []
        self._lock = threading.Lock()

    def _prune(self) -> None:
        self._held = [(thread, host) for thread, host in self._held if thread.is_alive()]

    def take(self, association: threading.Thread, host: str) -> str | None:
        """Give ``association`` (from peer address ``host``) a slot; None, or the limit that refuses it."""
        with self._lock:
            self._prune()
            if len(self._held) >= self.max_associations:
                return "max_associations"
            if sum(1 for _, held_by in self._held if held_by == host) >= self.max_per_peer:
                return "max_associations_per_peer"
            self._held.append((association, host))
            return None

    def active(self) -> int:
        with self._lock:
            self._prune()
            return len(self._held)


# pynetdicom's own A-ASSOCIATE-RJ (result, source, diagnostic) -> our reason names.
_PYNETDICOM_REJECTIONS: dict[tuple[object, ...], str] = {
    (0x01, 0x01, 0x03): "calling_ae_not_allowed",
    (0x01, 0x01, 0x07): "called_ae_unknown",
    (0x02, 0x02, 0x01): "user_identity_refused",
    (0x02, 0x03, 0x02): "max_associations",
}
# rejected-transient (0x02), DUL service provider presentation related (0x03), local-limit-exceeded
# (0x02): PS3.8 9.3.4. Transient, so a sender retries later instead of giving up.
_LOCAL_LIMIT_EXCEEDED = (0x02, 0x03, 0x02)


class AssociationGate:
    """Handlers of ``EVT_REQUESTED`` (take a slot, or reject) and ``EVT_REJECTED`` (count pynetdicom's).

    Run on the association's thread; they never raise (pynetdicom logs
    a notification handler's exception and goes on, but a limit must not
    depend on that).
    """

    def __init__(self, limits: AssociationLimits) -> None:
        self.limits = limits
        self._rejected: dict[str, int] = {}
        self._lock = threading.Lock()

    def rejected(self) -> dict[str, int]:
        """Associations rejected since start, by reason."""
        with self._lock:
            return dict(self._rejected)

    def _count(self, reason: str) -> None:
        with self._lock:
            self._rejected[reason] = self._rejected.get(reason, 0) + 1

    def on_requested(self, event: Any) -> None:
        association = event.assoc
        request = association.requestor.primitive
        host = str(association.requestor.address)
        try:
            reason = self.limits.take(association, host)
        except Exception:  # never let a bookkeeping bug reject everyone: admit, and say so
            log.exception("association_limit_failed", peer=host)
            return
        if reason is None:
            return
        self._count(reason)
        log.warning(
            "association_rejected",
            reason=reason,
            limit=self.limits.max_associations if reason == "max_associations" else self.limits.max_per_peer,
            calling_ae=str(request.calling_ae_title).strip(),
            called_ae=str(request.called_ae_title).strip(),
            peer=host,
            answer="rejected-transient, local-limit-exceeded",
        )
        association.acse.send_reject(*_LOCAL_LIMIT_EXCEEDED)
        association.kill()  # as pynetdicom does after its own rejections: waits for the peer to close

    def on_rejected(self, event: Any) -> None:
        association = event.assoc
        answer = association.acceptor.primitive
        key = tuple(getattr(answer, name, None) for name in ("result", "result_source", "diagnostic"))
        reason = _PYNETDICOM_REJECTIONS.get(key, "other")
        self._count(reason)
        request = association.requestor.primitive
        log.warning(
            "association_rejected",
            reason=reason,
            calling_ae=str(getattr(request, "calling_ae_title", "")).strip(),
            called_ae=str(getattr(request, "called_ae_title", "")).strip(),
            peer=str(association.requestor.address),
        )
