"""One received instance in, one answer out: the rules and the write that C-STORE and STOW-RS share.

Both receivers hand an :class:`Arrival` to :meth:`Intake.receive`, which
decides and, when it keeps the instance, writes it atomically into the
spool, records it and tells the router before it answers. So an instance is
refused for the same reasons, with the same DICOM status, however it came:

========  ================================================================
0x0000    stored, or already stored (the first copy wins), or not CT and
          dropped (``[node] other_sop_classes = "accept"``)
0x0122    SOP class not supported: not CT, and other classes are refused
          (the SCP does not negotiate them; STOW-RS has no negotiation)
0xA700    out of resources: the data directory is at its free-space
          watermark (``[node] min_free_mb``)
0xA701    out of resources: larger than ``[security] max_instance_mb``
0xA900    the data set does not match what was announced: its SOP Class
          UID, or the study a STOW-RS request names
0xC210    cannot understand: the data set cannot be parsed at all
0xC211    cannot understand: a key UID or Modality missing or invalid
0xC212    cannot understand: the data set's SOP Instance UID differs from
          the announced one
========  ================================================================

"Announced" is what the transport says before the data set does: the
presentation context and the C-STORE request for DIMSE, the Part 10 file
meta information for STOW-RS. No pynetdicom here, so the HTTP receiver can
use it without the DIMSE machinery.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from pydicom.uid import UID

from ct2pet_node.domain.records import InstanceRecord
from ct2pet_node.domain.uids import AeTitle, Uid
from ct2pet_node.errors import OutOfSpace
from ct2pet_node.net.store_header import (
    CT_STORAGE_SOP_CLASSES,
    Refusal,
    StoreHeader,
    read_header,
    series_uid_of,
)
from ct2pet_node.spool.instances import InstanceSpool
from ct2pet_node.spool.jobstore import JobStore

log = structlog.get_logger(__name__)

SUCCESS = 0x0000
SOP_CLASS_NOT_SUPPORTED = 0x0122
OUT_OF_RESOURCES = 0xA700
INSTANCE_TOO_LARGE = 0xA701
SOP_CLASS_MISMATCH = 0xA900
SOP_INSTANCE_MISMATCH = 0xC212

NOT_CT = "not CT: the node translates CT Image Storage and Enhanced CT Image Storage only"


@dataclass(frozen=True, slots=True)
class Arrival:
    """One instance as a receiver got it, before any decision.

    Attributes
    ----------
    sop_class_uid, sop_instance_uid : str
        As announced by the transport (see the module docstring).
    transfer_syntax : UID
        The encoding of ``dataset``.
    meta : bytes
        Preamble, ``DICM`` and the file meta group: what goes before ``dataset`` in the spool file.
    dataset : bytes or None
        The encoded data set without its meta group; None when it was too large and not kept.
    size : int
        Bytes received for the data set (the whole of it, even when ``dataset`` is None).
    source : str
        Who sent it: the calling AE title, or ``"STOW-RS"`` for HTTP.
    study_uid : str or None
        The study the transport names, when it names one (``POST /studies/{study}``).
    """

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: UID
    meta: bytes
    dataset: bytes | None
    size: int
    source: str
    study_uid: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """The answer to one :class:`Arrival`: a DICOM status, and why when it is not plain success."""

    status: int
    reason: str = ""
    stored: bool = False  # newly written and recorded (not a duplicate, not dropped)
    record: InstanceRecord | None = None  # what was recorded, when stored

    @property
    def succeeded(self) -> bool:
        return self.status == SUCCESS


class Intake:
    """The decisions and the durable write; thread-safe (association threads, HTTP workers).

    Parameters
    ----------
    spool, store : InstanceSpool, JobStore
        Where instances are written and recorded.
    on_stored : callable
        Called with each newly stored :class:`InstanceRecord` (the router's
        ``notify``); must not block. Not called for a re-sent instance.
    max_instance_bytes : int
        ``[security] max_instance_mb`` in bytes.
    other_sop_classes : {"accept", "refuse"}
        ``[node] other_sop_classes``: drop instances of other classes with success, or refuse them.
    """

    def __init__(
        self,
        spool: InstanceSpool,
        store: JobStore,
        on_stored: Callable[[InstanceRecord], None],
        max_instance_bytes: int,
        other_sop_classes: str = "accept",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._spool = spool
        self._store = store
        self._on_stored = on_stored
        self.max_instance_bytes = max_instance_bytes
        self._refuse_others = other_sop_classes == "refuse"
        self._clock = clock
        self._ignored: dict[str, int] = {}
        self._ignored_lock = threading.Lock()

    def ignored_counts(self) -> dict[str, int]:
        """Instances acknowledged and dropped since start (not CT), by SOP class keyword (its UID if none)."""
        with self._ignored_lock:
            return dict(self._ignored)

    def receive(self, arrival: Arrival) -> Outcome:
        """Decide, and store what is kept; never raises for a peer's bytes (StorageError may pass)."""
        if arrival.sop_class_uid not in CT_STORAGE_SOP_CLASSES:
            return self._not_ct(arrival)
        if arrival.dataset is None or arrival.size > self.max_instance_bytes:
            return self._refuse(
                INSTANCE_TOO_LARGE,
                f"data set of {arrival.size} bytes exceeds [security] max_instance_mb "
                f"({self.max_instance_bytes // (1024 * 1024)} MiB)",
                sop_instance_uid=arrival.sop_instance_uid,
            )
        syntax = arrival.transfer_syntax
        try:
            header = read_header(arrival.dataset, syntax.is_implicit_VR, syntax.is_little_endian)
            _check_announced(header, arrival)
        except Refusal as refusal:
            return self._refuse(refusal.status, refusal.reason)
        return self._store_new(header, arrival, arrival.dataset)

    def _store_new(self, header: StoreHeader, arrival: Arrival, dataset: bytes) -> Outcome:
        if self._store.has_instance(header.sop_instance_uid):
            log.info("instance_duplicate", sop_instance_uid=header.sop_instance_uid)
            return Outcome(SUCCESS)
        size = len(arrival.meta) + len(dataset)
        try:
            path = self._spool.store(
                header.study_uid, header.series_uid, header.sop_instance_uid, (arrival.meta, dataset), size
            )
        except OutOfSpace as error:
            log.warning("store_refused_out_of_space", reason=str(error))
            return Outcome(OUT_OF_RESOURCES, str(error))
        record = InstanceRecord(
            sop_instance_uid=header.sop_instance_uid,
            sop_class_uid=header.sop_class_uid,
            series_uid=header.series_uid,
            study_uid=header.study_uid,
            modality=header.modality,
            transfer_syntax_uid=Uid(str(arrival.transfer_syntax)),
            calling_ae_title=AeTitle(arrival.source),
            path=path,
            received_at=self._clock(),
        )
        if not self._store.record_instance(record):
            # Another association or request stored the same instance a moment ago.
            log.info("instance_duplicate", sop_instance_uid=header.sop_instance_uid)
            return Outcome(SUCCESS)
        log.info(
            "instance_stored",
            sop_instance_uid=record.sop_instance_uid,
            series_uid=record.series_uid,
            transfer_syntax=record.transfer_syntax_uid,
            size=size,
        )
        try:
            self._on_stored(record)
        except Exception:  # the instance is safe on disk and recorded; the router re-reads the store
            log.exception("notify_failed", sop_instance_uid=record.sop_instance_uid)
        return Outcome(SUCCESS, stored=True, record=record)

    def _not_ct(self, arrival: Arrival) -> Outcome:
        """Acknowledge (keeping nothing) or refuse an instance the node does not translate.

        Acknowledged by default, not refused: a PACS forwarding a whole study
        counts one failed instance as a failed job, and the CT would be
        retried with it.
        """
        sop_class = UID(arrival.sop_class_uid)
        name = sop_class.keyword or str(sop_class)  # four recent SR classes have no keyword in pydicom
        if self._refuse_others:
            return self._refuse(SOP_CLASS_NOT_SUPPORTED, NOT_CT, sop_class_uid=str(sop_class))
        syntax = arrival.transfer_syntax
        head = arrival.dataset or b""
        with self._ignored_lock:
            self._ignored[name] = self._ignored.get(name, 0) + 1
        log.info(
            "instance_ignored",
            sop_class_uid=str(sop_class),
            sop_class=name,
            series_uid=series_uid_of(head, syntax.is_implicit_VR, syntax.is_little_endian),
            calling_ae=arrival.source,
            reason=NOT_CT,
        )
        return Outcome(SUCCESS, NOT_CT)

    @staticmethod
    def _refuse(status: int, reason: str, **fields: str) -> Outcome:
        log.warning("instance_refused", status=f"0x{status:04X}", reason=reason, **fields)
        return Outcome(status, reason)


def _check_announced(header: StoreHeader, arrival: Arrival) -> None:
    if header.sop_instance_uid != arrival.sop_instance_uid:
        raise Refusal(
            SOP_INSTANCE_MISMATCH,
            f"data set SOPInstanceUID {header.sop_instance_uid} differs from the announced "
            f"{arrival.sop_instance_uid}",
        )
    if str(header.sop_class_uid) != arrival.sop_class_uid:
        raise Refusal(
            SOP_CLASS_MISMATCH,
            f"data set SOPClassUID {header.sop_class_uid} differs from {arrival.sop_class_uid}",
        )
    if arrival.study_uid is not None and header.study_uid != arrival.study_uid:
        raise Refusal(
            SOP_CLASS_MISMATCH,
            f"data set StudyInstanceUID {header.study_uid} differs from the request's {arrival.study_uid}",
        )
