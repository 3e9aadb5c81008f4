"""Finding and retrieving a study's series from a DIMSE source: C-FIND, C-MOVE and C-GET (Study Root).

C-MOVE asks the source to send the series to the node's own AE title, so the
source must know that title with the node's host and port; the instances
then arrive at the storage SCP like any push. C-GET brings them back on the
same association, where they are kept through the SCP's
:class:`~ct2pet_node.net.intake.Intake`. Either way the series
enters the same spool and router path as a pushed one.

A C-FIND answer carries patient names and IDs; only the series keys below
are read from it, and nothing of it is logged but UIDs and counts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import structlog
from pydicom.dataset import Dataset
from pynetdicom import build_role, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from ct2pet_node.config import Destination, Source
from ct2pet_node.domain.fetch import FoundSeries
from ct2pet_node.domain.uids import SeriesUid, StudyUid, is_valid_uid
from ct2pet_node.errors import SourceError
from ct2pet_node.net.c_store import answer_store, arrival_of_event
from ct2pet_node.net.contexts import (
    ACCEPTED_TRANSFER_SYNTAXES,
    CT_STORAGE_SOP_CLASSES,
    UNCOMPRESSED_TRANSFER_SYNTAXES,
)
from ct2pet_node.net.intake import Arrival, Outcome
from ct2pet_node.net.scu import ScuTimeouts, _associate, _close_sockets

log = structlog.get_logger(__name__)

_PENDING = (0xFF00, 0xFF01)
_SUCCESS = 0x0000
_WARNING = 0xB000  # some sub-operations failed


def find_series(
    source: Source, calling_ae: str, study_uid: StudyUid, timeouts: ScuTimeouts
) -> list[FoundSeries]:
    """Every series of ``study_uid`` the source holds (any modality), by a SERIES-level C-FIND.

    Raises
    ------
    SourceError
        The source cannot be reached, refuses the association or answers the query with a failure.
    """
    query = _identifier(study_uid, None)
    query.Modality = ""  # every modality: a study without CT then says what it has instead
    query.SeriesNumber = ""
    query.NumberOfSeriesRelatedInstances = ""
    assoc = _open(
        source, calling_ae, [(StudyRootQueryRetrieveInformationModelFind, _QUERY_SYNTAXES)], timeouts
    )
    found: list[FoundSeries] = []
    try:
        for status, answer in _responses(
            assoc, "C-FIND", source, assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
        ):
            if (
                status in _PENDING
                and answer is not None
                and (series := _found(study_uid, answer)) is not None
            ):
                found.append(series)
    finally:
        _finish(assoc)
    log.info("source_queried", source=source.name, study_uid=study_uid, series=len(found))
    return found


def move_series(
    source: Source, calling_ae: str, study_uid: StudyUid, series_uid: SeriesUid, timeouts: ScuTimeouts
) -> int:
    """Ask the source to C-MOVE one series to ``calling_ae`` (the node's SCP); the instances it sent.

    Raises
    ------
    SourceError
        As :func:`find_series`, or when the source could not send every instance
        (e.g. it does not know ``calling_ae``: configure the node in the PACS).
    """
    assoc = _open(
        source, calling_ae, [(StudyRootQueryRetrieveInformationModelMove, _QUERY_SYNTAXES)], timeouts
    )
    try:
        responses = assoc.send_c_move(
            _identifier(study_uid, series_uid), calling_ae, StudyRootQueryRetrieveInformationModelMove
        )
        return _completed(source, "C-MOVE", series_uid, _responses(assoc, "C-MOVE", source, responses))
    finally:
        _finish(assoc)


def get_series(
    source: Source,
    calling_ae: str,
    study_uid: StudyUid,
    series_uid: SeriesUid,
    receive: Callable[[Arrival], Outcome],
    timeouts: ScuTimeouts,
) -> int:
    """C-GET one series; its instances are kept through ``receive`` (the intake) as they arrive. The instances received.

    Raises
    ------
    SourceError
        As :func:`move_series`.
    """
    contexts = [(StudyRootQueryRetrieveInformationModelGet, _QUERY_SYNTAXES)]
    contexts += [(sop_class, list(ACCEPTED_TRANSFER_SYNTAXES)) for sop_class in CT_STORAGE_SOP_CLASSES]
    # We are the storage SCP of the sub-operations: PS3.7 D.3.3.4 role selection.
    roles = [build_role(sop_class, scp_role=True) for sop_class in CT_STORAGE_SOP_CLASSES]

    def on_store(event: Event) -> int:
        return answer_store(event, lambda stored: receive(arrival_of_event(stored)).status)

    assoc = _open(source, calling_ae, contexts, timeouts, roles=roles, handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        responses = assoc.send_c_get(
            _identifier(study_uid, series_uid), StudyRootQueryRetrieveInformationModelGet
        )
        return _completed(source, "C-GET", series_uid, _responses(assoc, "C-GET", source, responses))
    finally:
        _finish(assoc)


_QUERY_SYNTAXES = list(UNCOMPRESSED_TRANSFER_SYNTAXES)


def _identifier(study_uid: StudyUid, series_uid: SeriesUid | None) -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "SERIES"
    identifier.StudyInstanceUID = study_uid
    identifier.SeriesInstanceUID = series_uid or ""
    return identifier


def _open(
    source: Source, calling_ae: str, contexts: list[Any], timeouts: ScuTimeouts, **options: Any
) -> Association:
    peer = Destination(name=source.name, ae_title=source.ae_title, host=source.host, port=source.port)
    assoc, problem, detail = _associate(peer, calling_ae, contexts, timeouts, **options)
    if problem is not None:
        raise SourceError(f"source {source.name}: {detail}")
    return assoc


def _finish(assoc: Association) -> None:
    if assoc.is_established:
        assoc.release()
    _close_sockets(assoc)


def _responses(
    assoc: Association, operation: str, source: Source, responses: Iterator[tuple[Dataset, Dataset | None]]
) -> Iterator[tuple[int, Dataset | None]]:
    """(status, identifier) of each response; :class:`SourceError` for a failure or a lost association."""
    for status, identifier in responses:
        if "Status" not in status:
            raise SourceError(
                f"source {source.name} ({source.ae_title}@{source.host}:{source.port}) gave no {operation} "
                "response in time, or the association was lost"
            )
        code = int(status.Status)
        if code not in (*_PENDING, _SUCCESS, _WARNING) and code & 0xF000 != 0xB000:
            comment = str(status.get("ErrorComment", "")) or "no comment"
            raise SourceError(
                f"source {source.name} answered {operation} with status 0x{code:04X} ({comment})"
                + ("; does it know this node's AE title, host and port?" if code == 0xA801 else "")
            )
        yield code, identifier if code in _PENDING else status


def _completed(
    source: Source, operation: str, series_uid: SeriesUid, responses: Iterator[tuple[int, Dataset | None]]
) -> int:
    final: Dataset | None = None
    for code, answer in responses:
        if code not in _PENDING:
            final = answer
    if final is None:
        raise SourceError(
            f"source {source.name} ended {operation} of series {series_uid} without a final status"
        )
    completed = int(final.get("NumberOfCompletedSuboperations", 0) or 0)
    failed = int(final.get("NumberOfFailedSuboperations", 0) or 0)
    if failed:
        raise SourceError(
            f"source {source.name}: {operation} of series {series_uid} sent {completed} instances, "
            f"{failed} failed; see the node's log for why they were refused"
        )
    log.info(
        "series_retrieved", source=source.name, series_uid=series_uid, method=operation, instances=completed
    )
    return completed


def _found(study_uid: StudyUid, answer: Dataset) -> FoundSeries | None:
    series_uid = str(answer.get("SeriesInstanceUID", "") or "").strip()
    if not is_valid_uid(series_uid):
        log.warning("source_answer_skipped", reason="a series without a valid Series Instance UID")
        return None
    return FoundSeries(
        study_uid,
        SeriesUid(series_uid),
        str(answer.get("Modality", "") or "").strip(),
        _number(answer.get("SeriesNumber")),
        _number(answer.get("NumberOfSeriesRelatedInstances")),
    )


def _number(value: object) -> int | None:
    try:
        return int(str(value)) if value not in (None, "") else None
    except ValueError:
        return None
