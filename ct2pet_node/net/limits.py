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

from ct2pet_node.net.rejections import (
    CALLED_AE_UNKNOWN,
    CALLING_AE_NOT_ALLOWED,
    NO_ACCEPTABLE_CONTEXT,
    RejectionLog,
)

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
    (0x01, 0x01, 0x03): CALLING_AE_NOT_ALLOWED,
    (0x01, 0x01, 0x07): CALLED_AE_UNKNOWN,
    (0x02, 0x02, 0x01): "user_identity_refused",
    (0x02, 0x03, 0x02): "max_associations",
}
# rejected-transient (0x02), DUL service provider presentation related (0x03), local-limit-exceeded
# (0x02): PS3.8 9.3.4. Transient, so a sender retries later instead of giving up.
_LOCAL_LIMIT_EXCEEDED = (0x02, 0x03, 0x02)


class AssociationGate:
    """Handlers of ``EVT_REQUESTED`` (take a slot, or reject), ``EVT_REJECTED`` (pynetdicom's) and
    ``EVT_ACCEPTED`` (an association with no acceptable presentation context is turned away too).

    Run on the association's thread; they never raise (pynetdicom logs
    a notification handler's exception and goes on, but a limit must not
    depend on that). Every rejection goes to :attr:`rejections`.
    """

    def __init__(self, limits: AssociationLimits, rejections: RejectionLog | None = None) -> None:
        self.limits = limits
        self.rejections = rejections or RejectionLog()

    def rejected(self) -> dict[str, int]:
        """Associations rejected since start, by reason."""
        return self.rejections.counts()

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
        self.rejections.record(
            reason,
            str(request.called_ae_title).strip(),
            str(request.calling_ae_title).strip(),
            host,
            limit=self.limits.max_associations if reason == "max_associations" else self.limits.max_per_peer,
            answer="rejected-transient, local-limit-exceeded",
        )
        association.acse.send_reject(*_LOCAL_LIMIT_EXCEEDED)
        association.kill()  # as pynetdicom does after its own rejections: waits for the peer to close

    def on_rejected(self, event: Any) -> None:
        association = event.assoc
        answer = association.acceptor.primitive
        key = tuple(getattr(answer, name, None) for name in ("result", "result_source", "diagnostic"))
        request = association.requestor.primitive
        self.rejections.record(
            _PYNETDICOM_REJECTIONS.get(key, "other"),
            str(getattr(request, "called_ae_title", "")).strip(),
            str(getattr(request, "calling_ae_title", "")).strip(),
            str(association.requestor.address),
        )

    def on_accepted(self, event: Any) -> None:
        """Turn away an association none of whose presentation contexts was accepted.

        pynetdicom accepts it (PS3.8 allows that; every context carries its own
        refusal), and the sender then has nothing it may send: say so here, where
        the administrator looks, rather than only in the sender's log.
        """
        association = event.assoc
        if association.accepted_contexts:
            return
        request = association.requestor.primitive
        refused = sorted({str(context.abstract_syntax) for context in association.rejected_contexts})
        self.rejections.record(
            NO_ACCEPTABLE_CONTEXT,
            str(getattr(request, "called_ae_title", "")).strip(),
            str(getattr(request, "calling_ae_title", "")).strip(),
            str(association.requestor.address),
            sop_classes=refused[:8],
        )
