"""Rejected associations: why, from whom, to which AE title; the last few kept for ``status``.

Four ways a sender is turned away by configuration rather than by load, and
the names the counts, the log and ``status`` give them:

``called_ae_unknown``
    called AE title mismatch: the request names another AE title than ours
    (pynetdicom rejects it, permanent, PS3.8 diagnostic 7).
``calling_ae_not_allowed``
    the calling AE title is not in ``[security] allowed_calling_ae_titles``
    (pynetdicom rejects it, permanent, diagnostic 3).
``no_acceptable_presentation_context``
    the association was accepted but none of its presentation contexts was
    (a SOP class or transfer syntax the node does not take); the peer then
    gives up, and nothing arrives.
``tls_required``
    a plain-TCP A-ASSOCIATE-RQ reached a listener that requires TLS
    (:mod:`ct2pet_node.net.waiting_room` recognises it before the handshake
    fails and answers with an A-ASSOCIATE-RJ the sender can show).

AE titles and peer addresses are not patient data: each rejection is
logged at warning level with both titles and the address.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import structlog

log = structlog.get_logger(__name__)

RECENT_REJECTIONS = 20
"""How many rejections ``status`` lists (the counts cover every one since start)."""

CALLED_AE_UNKNOWN = "called_ae_unknown"
CALLING_AE_NOT_ALLOWED = "calling_ae_not_allowed"
NO_ACCEPTABLE_CONTEXT = "no_acceptable_presentation_context"
TLS_REQUIRED = "tls_required"

# An A-ASSOCIATE-RQ's fixed part (PS3.8 9.3.2): 6-byte PDU header, protocol version, two reserved
# bytes, then the called and the calling AE title, 16 bytes each.
_CALLED_AE = slice(10, 26)
_CALLING_AE = slice(26, 42)
# A-ASSOCIATE-RJ (PS3.8 9.3.4): rejected-permanent (1), by the service user (1), no reason given (1).
PERMANENT_REJECT_PDU = bytes([0x03, 0, 0, 0, 0, 0x04, 0, 0x01, 0x01, 0x01])

RejectionSink = Callable[[str, str, str, str], None]
"""``sink(reason, called_ae, calling_ae, peer)``: where the network code reports a rejection."""


def request_ae_titles(pdu: bytes) -> tuple[str, str]:
    """(called, calling) AE titles of an A-ASSOCIATE-RQ PDU, blanks stripped; "" where it is too short."""

    def title(part: slice) -> str:
        return pdu[part].decode("ascii", errors="replace").strip(" \x00")

    return title(_CALLED_AE), title(_CALLING_AE)


@dataclass(frozen=True, slots=True)
class Rejection:
    """One association turned away; ``time`` in seconds since the epoch, ``peer`` the address."""

    time: float
    reason: str
    called_ae: str
    calling_ae: str
    peer: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class RejectionLog:
    """Counts of rejected associations by reason, and the last :data:`RECENT_REJECTIONS` of them.

    Called from association and waiting-room threads; :meth:`record` never raises
    for a bookkeeping reason, so a rejection is never turned into a crash.
    """

    def __init__(self, keep: int = RECENT_REJECTIONS, clock: Callable[[], float] = time.time) -> None:
        self._counts: dict[str, int] = {}
        self._recent: deque[Rejection] = deque(maxlen=keep)
        self._clock = clock
        self._lock = threading.Lock()

    def count(self, reason: str) -> None:
        """Count a rejection whose caller keeps its own log line (the association limits do)."""
        with self._lock:
            self._counts[reason] = self._counts.get(reason, 0) + 1

    def record(self, reason: str, called_ae: str, calling_ae: str, peer: str, **fields: Any) -> None:
        """Count, remember and log one rejection (``fields`` go into the log line only)."""
        rejection = Rejection(self._clock(), reason, called_ae, calling_ae, peer)
        with self._lock:
            self._counts[reason] = self._counts.get(reason, 0) + 1
            self._recent.append(rejection)
        log.warning(
            "association_rejected",
            reason=reason,
            called_ae=called_ae,
            calling_ae=calling_ae,
            peer=peer,
            **fields,
        )

    def counts(self) -> dict[str, int]:
        """Rejections since start, by reason."""
        with self._lock:
            return dict(self._counts)

    def recent(self) -> list[dict[str, Any]]:
        """The last rejections, oldest first, as JSON."""
        with self._lock:
            return [rejection.to_json() for rejection in self._recent]
