"""One way in for every received CT instance: spool it durably, record it, tell the router.

The storage SCP's C-STORE handler, the C-STORE sub-operations of a C-GET and
the instances of a WADO-RS retrieval all end here, so a fetched series
enters the same spool and router path as a pushed one and its job runs as
if it had been pushed. Nothing here raises to a pynetdicom thread:
:func:`answer_store` is the top of every C-STORE handler.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import cast

import structlog
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import UID
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode_file_meta
from pynetdicom.events import Event

from ct2pet_node.domain.records import InstanceRecord
from ct2pet_node.domain.uids import AeTitle, Uid
from ct2pet_node.errors import OutOfSpace, StorageError
from ct2pet_node.net.contexts import CT_STORAGE_SOP_CLASSES
from ct2pet_node.net.store_header import CANNOT_PARSE, Refusal, StoreHeader, read_header
from ct2pet_node.spool.instances import InstanceSpool
from ct2pet_node.spool.jobstore import JobStore

log = structlog.get_logger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
SOP_CLASS_MISMATCH = 0xA900
SOP_INSTANCE_MISMATCH = 0xC212


def answer_store(event: Event, store: Callable[[Event], int]) -> int:
    """Run a C-STORE handler's ``store`` with the association bound to the log; a status, never a raise."""
    association = event.assoc
    with structlog.contextvars.bound_contextvars(
        calling_ae=association.requestor.ae_title, assoc_id=association.native_id
    ):
        try:
            return store(event)
        except StorageError as error:  # e.g. the job store's disk is full: the sender retries later
            log.warning("store_refused_storage_error", reason=str(error))
            return OUT_OF_RESOURCES
        except Exception:  # top of a pynetdicom thread: answer, never raise
            log.exception("store_failed")
            return OUT_OF_RESOURCES


class InstanceIntake:
    """Writes instances into ``spool``, records them in ``store`` and calls ``on_stored`` with each new one.

    Parameters
    ----------
    on_stored : callable
        Called with each newly stored :class:`InstanceRecord` (the router's
        ``notify``); must not block. Not called for an instance already stored.
    """

    def __init__(
        self,
        spool: InstanceSpool,
        store: JobStore,
        on_stored: Callable[[InstanceRecord], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._spool = spool
        self._store = store
        self._on_stored = on_stored
        self._clock = clock

    def sweep_partial_files(self) -> None:
        """Remove what a crash mid-write left (never acknowledged)."""
        self._spool.sweep_partial_files()

    def store_event(self, event: Event) -> int:
        """Keep the data set of a C-STORE request (a push, or a C-GET sub-operation); the status to answer."""
        context = event.context
        syntax = UID(context.transfer_syntax)
        request = cast(C_STORE, event.request)
        stream = event.encoded_dataset(include_meta=False)
        try:
            header = read_header(stream, syntax.is_implicit_VR, syntax.is_little_endian)
            if header.sop_instance_uid != str(request.AffectedSOPInstanceUID):
                raise Refusal(
                    SOP_INSTANCE_MISMATCH,
                    f"data set SOPInstanceUID {header.sop_instance_uid} differs from the request's "
                    f"{request.AffectedSOPInstanceUID}",
                )
            if str(header.sop_class_uid) != str(context.abstract_syntax):
                raise Refusal(
                    SOP_CLASS_MISMATCH,
                    f"data set SOPClassUID {header.sop_class_uid} differs from {context.abstract_syntax}",
                )
        except Refusal as refusal:
            log.warning("instance_refused", status=f"0x{refusal.status:04X}", reason=refusal.reason)
            return refusal.status
        meta = b"\x00" * 128 + b"DICM" + encode_file_meta(event.file_meta)
        return self._keep(header, meta, stream, syntax, AeTitle(event.assoc.requestor.ae_title))

    def store_dataset(self, dataset: Dataset, source_ae: AeTitle) -> int | None:
        """Keep a decoded data set (a WADO-RS retrieval), re-encoded in its own transfer syntax.

        Returns
        -------
        int or None
            The status a C-STORE of it would have been answered with; None when
            it is not CT and was dropped, as the storage SCP drops such an instance.

        Raises
        ------
        Refusal
            The data set lacks the keys an instance is spooled by, or cannot be encoded.
        """
        file_meta = getattr(dataset, "file_meta", None) or FileMetaDataset()
        syntax = UID(str(file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2.1")))
        buffer = DicomBytesIO()
        buffer.is_implicit_VR = syntax.is_implicit_VR
        buffer.is_little_endian = syntax.is_little_endian
        try:
            write_dataset(buffer, dataset)
        except Exception as error:  # a source's data set we cannot write back is one we cannot keep
            raise Refusal(CANNOT_PARSE, f"data set cannot be encoded in {syntax}: {error}") from error
        stream = buffer.getvalue()
        header = read_header(stream, syntax.is_implicit_VR, syntax.is_little_endian)
        if UID(header.sop_class_uid) not in CT_STORAGE_SOP_CLASSES:
            # A CT series may carry a dose report or a screen capture; only CT images are translated.
            log.info(
                "instance_ignored",
                sop_class_uid=header.sop_class_uid,
                series_uid=header.series_uid,
                reason="not CT: the node translates CT Image Storage and Enhanced CT Image Storage only",
            )
            return None
        meta_set = FileMetaDataset()
        meta_set.MediaStorageSOPClassUID = UID(header.sop_class_uid)
        meta_set.MediaStorageSOPInstanceUID = UID(header.sop_instance_uid)
        meta_set.TransferSyntaxUID = syntax
        meta = b"\x00" * 128 + b"DICM" + encode_file_meta(meta_set)
        return self._keep(header, meta, stream, syntax, source_ae)

    def _keep(self, header: StoreHeader, meta: bytes, stream: bytes, syntax: UID, calling_ae: AeTitle) -> int:
        if self._store.has_instance(header.sop_instance_uid):
            log.info("instance_duplicate", sop_instance_uid=header.sop_instance_uid)
            return SUCCESS
        try:
            path = self._spool.store(
                header.study_uid,
                header.series_uid,
                header.sop_instance_uid,
                (meta, stream),
                len(meta) + len(stream),
            )
        except OutOfSpace as error:
            log.warning("store_refused_out_of_space", reason=str(error))
            return OUT_OF_RESOURCES
        record = InstanceRecord(
            sop_instance_uid=header.sop_instance_uid,
            sop_class_uid=header.sop_class_uid,
            series_uid=header.series_uid,
            study_uid=header.study_uid,
            modality=header.modality,
            transfer_syntax_uid=Uid(str(syntax)),
            calling_ae_title=calling_ae,
            path=path,
            received_at=self._clock(),
        )
        if not self._store.record_instance(record):
            # Another association stored the same instance a moment ago.
            log.info("instance_duplicate", sop_instance_uid=header.sop_instance_uid)
            return SUCCESS
        log.info(
            "instance_stored",
            sop_instance_uid=record.sop_instance_uid,
            series_uid=record.series_uid,
            transfer_syntax=record.transfer_syntax_uid,
            size=len(meta) + len(stream),
        )
        try:
            self._on_stored(record)
        except Exception:  # the instance is safe on disk and recorded; the router re-reads the store
            log.exception("notify_failed", sop_instance_uid=record.sop_instance_uid)
        return SUCCESS
