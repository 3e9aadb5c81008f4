"""Finding and retrieving a study's series from a DICOMweb source: QIDO-RS and WADO-RS.

Each retrieved instance is kept through the storage SCP's
:class:`~ct2pet_node.net.intake.Intake`, so it enters the same
spool and router path as a pushed one. A QIDO-RS answer may carry patient
names; only the series keys are read from it and nothing else is logged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import requests
import structlog

from ct2pet_node.config import DicomwebEndpoint
from ct2pet_node.domain.fetch import FoundSeries
from ct2pet_node.domain.uids import AeTitle, SeriesUid, StudyUid, is_valid_uid
from ct2pet_node.errors import SourceError
from ct2pet_node.net.dicomweb import client_for, session_for
from ct2pet_node.net.intake import NOT_CT, Arrival, Outcome
from ct2pet_node.net.part10 import Unreadable, arrival_of_dataset

log = structlog.get_logger(__name__)

# The library's default, five attempts with exponential back-off, keeps an operator waiting 30 s
# to hear that a PACS is down; one retry still rides out a blip.
QUERY_ATTEMPTS = 2

_SERIES_UID = "0020000E"
_MODALITY = "00080060"
_SERIES_NUMBER = "00200011"
_INSTANCES = "00201209"


def search_series(name: str, endpoint: DicomwebEndpoint, study_uid: StudyUid) -> list[FoundSeries]:
    """Every series of the study (any modality, so a study without CT says what it has), by QIDO-RS.

    Raises
    ------
    SourceError
        The service cannot be reached or answers with an error.
    """
    session = session_for(endpoint)
    client = client_for(endpoint, session=session, attempts=QUERY_ATTEMPTS)
    try:
        answers = client.search_for_series(
            study_instance_uid=study_uid,
            fields=["Modality", "SeriesNumber", "NumberOfSeriesRelatedInstances"],
            get_remaining=True,
        )
    except (requests.RequestException, OSError) as error:
        raise _unreachable(name, endpoint, "QIDO-RS search", error) from None
    finally:
        session.close()
    found = [series for answer in answers if (series := _found(study_uid, answer)) is not None]
    log.info("source_queried", source=name, study_uid=study_uid, series=len(found))
    return found


def retrieve_series(
    name: str,
    endpoint: DicomwebEndpoint,
    study_uid: StudyUid,
    series_uid: SeriesUid,
    receive: Callable[[Arrival], Outcome],
) -> int:
    """WADO-RS one series into ``receive`` (the intake), instance by instance; the instances kept.

    Raises
    ------
    SourceError
        The service cannot be reached, or some instances could not be kept.
    """
    session = session_for(endpoint)
    client = client_for(endpoint, session=session, attempts=QUERY_ATTEMPTS)
    kept = refused = 0
    # Recorded as the instances' calling AE title, where a pushed instance has its sender's.
    via = AeTitle(name[:16])
    try:
        for dataset in client.iter_series(study_uid, series_uid):
            arrival = arrival_of_dataset(dataset, via)
            outcome = arrival.outcome if isinstance(arrival, Unreadable) else receive(arrival)
            if not outcome.succeeded:
                log.warning(
                    "instance_refused", source=name, status=f"0x{outcome.status:04X}", reason=outcome.reason
                )
                refused += 1
            elif outcome.reason != NOT_CT:  # a dose report or screen capture beside the CT is dropped
                kept += 1
    except (requests.RequestException, OSError) as error:
        raise _unreachable(name, endpoint, f"WADO-RS retrieval of series {series_uid}", error) from None
    finally:
        session.close()
    if refused:
        raise SourceError(
            f"source {name}: {refused} instances of series {series_uid} could not be kept ({kept} were); "
            "see the node's log for why"
        )
    log.info("series_retrieved", source=name, series_uid=series_uid, method="WADO-RS", instances=kept)
    return kept


def _unreachable(name: str, endpoint: DicomwebEndpoint, what: str, error: Exception) -> SourceError:
    if isinstance(error, requests.HTTPError) and error.response is not None:
        return SourceError(
            f"source {name} ({endpoint.url}) answered {what} with HTTP {error.response.status_code}"
        )
    return SourceError(f"source {name}: {what} at {endpoint.url} failed: {type(error).__name__}: {error}")


def _value(answer: dict[str, Any], tag: str) -> Any:
    values = answer.get(tag, {}).get("Value") or [None]
    return values[0]


def _found(study_uid: StudyUid, answer: dict[str, Any]) -> FoundSeries | None:
    series_uid = str(_value(answer, _SERIES_UID) or "")
    if not is_valid_uid(series_uid):
        log.warning("source_answer_skipped", reason="a series without a valid Series Instance UID")
        return None
    number, instances = _value(answer, _SERIES_NUMBER), _value(answer, _INSTANCES)
    return FoundSeries(
        study_uid,
        SeriesUid(series_uid),
        str(_value(answer, _MODALITY) or ""),
        int(number) if isinstance(number, int | float | str) and str(number).strip().isdigit() else None,
        int(instances)
        if isinstance(instances, int | float | str) and str(instances).strip().isdigit()
        else None,
    )
