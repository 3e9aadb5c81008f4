"""A C-STORE request as the intake sees it, and the never-raising top of every C-STORE handler.

Pushes to the storage SCP and the sub-operations of a C-GET the node asks
for arrive the same way; both become an :class:`~ct2pet_node.net.intake.Arrival`
here and are answered with whatever status the intake decides.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import structlog
from pydicom.uid import UID
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode_file_meta
from pynetdicom.events import Event

from ct2pet_node.errors import StorageError
from ct2pet_node.net.guards import OversizedDataSet
from ct2pet_node.net.intake import OUT_OF_RESOURCES, Arrival

log = structlog.get_logger(__name__)


def arrival_of_event(event: Event) -> Arrival:
    """The request's instance as announced by its presentation context and request."""
    context = event.context
    request = cast(C_STORE, event.request)
    received = request.DataSet
    oversized = received if isinstance(received, OversizedDataSet) else None
    dataset = None if oversized is not None else event.encoded_dataset(include_meta=False)
    return Arrival(
        sop_class_uid=str(context.abstract_syntax),
        sop_instance_uid=str(request.AffectedSOPInstanceUID),
        transfer_syntax=UID(context.transfer_syntax),
        meta=b"" if oversized is not None else b"\x00" * 128 + b"DICM" + encode_file_meta(event.file_meta),
        dataset=dataset,
        size=oversized.received if oversized is not None else len(dataset or b""),
        source=event.assoc.requestor.ae_title,
    )


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
