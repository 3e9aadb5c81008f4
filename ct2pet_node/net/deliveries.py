"""Which instances each open association has stored, told to the router at a clean release.

The router completes a series soon after the association that brought all of
it is released (``[routing] settle_after_release_seconds``); this is where
the storage SCP keeps, per association, what that association stored, so it
can say so at release. An association that aborts or drops is forgotten:
only a clean release means the sender finished what it meant to send.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import structlog
from pynetdicom.association import Association
from pynetdicom.events import Event

from ct2pet_node.domain.records import AssociationReleased
from ct2pet_node.domain.uids import AeTitle, SeriesUid, SopInstanceUid

log = structlog.get_logger(__name__)


class AssociationDeliveries:
    """Instances stored per open association; its ``on_*`` methods are pynetdicom event handlers.

    Association threads add to their own entry while others end, so every
    method takes the lock. An entry goes at EVT_RELEASED or EVT_ABORTED (a
    dropped connection or a timeout is an abort in pynetdicom); one whose
    thread ended without either is swept when another association begins.

    Parameters
    ----------
    on_released : callable or None
        Given what a cleanly released association stored, when it stored
        anything; must not block. None: keep nothing.
    clock : callable
        Wall clock, seconds since the epoch (the clock of ``InstanceRecord.received_at``).
    """

    def __init__(
        self, on_released: Callable[[AssociationReleased], None] | None, clock: Callable[[], float]
    ) -> None:
        self._on_released = on_released
        self._clock = clock
        self._lock = threading.Lock()
        # id(association) -> (the association, so a dead one can be swept; its instances by series)
        self._open: dict[int, tuple[Association, dict[SeriesUid, set[SopInstanceUid]]]] = {}

    def stored(
        self, association: Association, series_uid: SeriesUid, sop_instance_uid: SopInstanceUid
    ) -> None:
        """``association`` has stored one new instance of ``series_uid``."""
        if self._on_released is None:
            return
        with self._lock:
            entry = self._open.get(id(association))
            if entry is None:
                self._sweep()
                entry = self._open[id(association)] = (association, {})
            entry[1].setdefault(series_uid, set()).add(sop_instance_uid)

    def _sweep(self) -> None:
        for key in [key for key, (association, _) in self._open.items() if not association.is_alive()]:
            del self._open[key]

    def open_associations(self) -> int:
        """Associations that have stored something and not yet ended."""
        with self._lock:
            return len(self._open)

    def on_released(self, event: Event) -> None:
        """EVT_RELEASED: tell ``on_released`` what the association stored; never raises."""
        with self._lock:
            entry = self._open.pop(id(event.assoc), None)
        if entry is None or self._on_released is None:
            return
        delivered = entry[1]
        release = AssociationReleased(
            AeTitle(event.assoc.requestor.ae_title),
            self._clock(),
            {series_uid: frozenset(uids) for series_uid, uids in delivered.items()},
        )
        try:
            self._on_released(release)
        except Exception:  # a pynetdicom thread: its series still complete by the quiet rule
            log.exception("notify_released_failed", assoc_id=event.assoc.native_id)

    def on_aborted(self, event: Event) -> None:
        """EVT_ABORTED: forget the association; its series complete by the quiet rule."""
        with self._lock:
            self._open.pop(id(event.assoc), None)
