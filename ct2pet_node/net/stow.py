"""STOW-RS: send files to a DICOMweb destination, in batches, one result per instance.

Each batch is one HTTP POST of a multipart/related body (dicomweb-client's
``store_instances``) of at most ``batch_instances`` instances and, unless a
single instance is larger, ``batch_bytes``. The server's answer names each
instance in its ReferencedSOPSequence (stored, perhaps with a WarningReason)
or its FailedSOPSequence (a FailureReason); both reasons are C-STORE status
codes, so each becomes an :class:`~ct2pet_node.routing.delivery.InstanceResult`
with that status and :mod:`ct2pet_node.routing.delivery` judges it exactly as
it judges a DIMSE peer. A request that stores nothing (no connection, a
timeout, an HTTP error) gives every instance of the batch a problem: the
HTTP status's meaning is decided there too (:func:`~ct2pet_node.routing.delivery.http_problem`).
After such a failure the remaining batches are not tried: the next ones
would meet the same server, and the outbox retries the whole attempt.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

import requests
import structlog
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from ct2pet_node.config import Destination, DicomwebEndpoint
from ct2pet_node.errors import DeliveryError
from ct2pet_node.net.dicomweb import broke_off, client_for, http_reason, session_for, transport_reason
from ct2pet_node.routing.delivery import InstanceResult, TransferProblem, http_problem

log = structlog.get_logger(__name__)

_MIB = 1024 * 1024
# PS3.7 C.4.2: "Processing failure", the reason to assume when a failed instance carries none.
_PROCESSING_FAILURE = 0x0110
# The multipart boundaries and headers add a little to the files' bytes.
_BODY_OVERHEAD_BYTES = _MIB
_REFERENCED, _FAILED = "ReferencedSOPSequence", "FailedSOPSequence"


@dataclass(frozen=True, slots=True)
class StowLimits:
    """How large one STOW-RS request may be, and how long to wait for the server (seconds)."""

    batch_instances: int = 50
    batch_bytes: int = 64 * _MIB
    connect_seconds: float = 10.0
    answer_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.batch_instances < 1 or self.batch_bytes < 1:
            raise ValueError(f"{self}: a batch holds at least one instance and one byte")


@dataclass(frozen=True, slots=True)
class _Instance:
    path: Path
    sop_instance_uid: str
    dataset: Dataset


def batches(sizes: Sequence[int], limits: StowLimits) -> list[range]:
    """Consecutive index ranges over ``sizes`` (bytes), each within the limits; a too-large file goes alone."""
    ranges: list[range] = []
    start, total = 0, 0
    for index, size in enumerate(sizes):
        full = index - start >= limits.batch_instances or total + size > limits.batch_bytes
        if index > start and full:
            ranges.append(range(start, index))
            start, total = index, 0
        total += size
    if start < len(sizes):
        ranges.append(range(start, len(sizes)))
    return ranges


def _reasons(answer: Dataset, sequence: str, reason: str, default: int) -> dict[str, int]:
    found: dict[str, int] = {}
    for item in answer.get(sequence, []):
        uid = item.get("ReferencedSOPInstanceUID")
        if uid is not None:
            value = item.get(reason)
            found[str(uid)] = default if value is None else int(value)
    return found


def results_from_answer(
    batch: Sequence[tuple[Path, str]], answer: Dataset, http_status: int, reason: str = ""
) -> list[InstanceResult]:
    """One result per ``(path, SOP instance UID)`` of the batch, from the server's STOW-RS answer.

    Parameters
    ----------
    batch : sequence of (Path, str)
    answer : Dataset
        The response body (empty when the server sent none).
    http_status : int
        The response's status; it decides for the instances the body does
        not name. A bare 200 means every instance was stored (PS3.18
        10.5.3); a 2xx that names some but not others forgot those, and
        they are sent again; an error status is their problem.
    reason : str
        The error status's reason, for the instances it decides.
    """
    failed = _reasons(answer, _FAILED, "FailureReason", _PROCESSING_FAILURE)
    stored = _reasons(answer, _REFERENCED, "WarningReason", 0x0000)
    all_stored = http_status == HTTPStatus.OK and _REFERENCED not in answer and _FAILED not in answer
    problem = http_problem(http_status)
    results = []
    for path, uid in batch:
        if uid in failed:
            results.append(InstanceResult(path, uid, failed[uid], None, "FailedSOPSequence"))
        elif uid in stored:
            results.append(InstanceResult(path, uid, stored[uid], None))
        elif problem is not None:
            results.append(InstanceResult(path, uid, None, problem, reason))
        elif all_stored:
            results.append(InstanceResult(path, uid, 0x0000, None))
        else:
            detail = f"the server's STOW-RS answer (HTTP {http_status}) does not mention this instance"
            results.append(InstanceResult(path, uid, None, TransferProblem.SERVER_ERROR, detail))
    return results


def _answer_of(response: requests.Response) -> Dataset:
    """The DICOM JSON body of an error response (a 409 lists its failures), or an empty data set."""
    if not response.headers.get("Content-Type", "").startswith(
        ("application/dicom+json", "application/json")
    ):
        return Dataset()
    try:
        return Dataset.from_json(response.json())
    except ValueError:
        return Dataset()


def _transport_problem(error: requests.RequestException) -> TransferProblem:
    if isinstance(error, requests.Timeout):
        return TransferProblem.TIMEOUT
    if isinstance(error, requests.ConnectionError) and not broke_off(error):
        return TransferProblem.UNREACHABLE
    return TransferProblem.ABORTED


def _post(
    client: DICOMwebClient,
    answered: list[requests.Response],
    endpoint: DicomwebEndpoint,
    instances: Sequence[_Instance],
) -> list[InstanceResult]:
    """POST one batch; one result per instance. ``answered`` gets the responses as they arrive."""
    batch = [(i.path, i.sop_instance_uid) for i in instances]
    answered.clear()
    try:
        answer = client.store_instances([i.dataset for i in instances])
    except requests.RequestException as error:
        response = error.response
        if isinstance(error, requests.HTTPError) and response is not None:
            # A 409 may still name each instance with its own FailureReason; those decide for them.
            reason = http_reason(response, endpoint)
            return results_from_answer(batch, _answer_of(response), response.status_code, reason)
        problem, detail = _transport_problem(error), transport_reason(error, endpoint)
        return [InstanceResult(p, uid, None, problem, detail) for p, uid in batch]
    except ValueError as error:  # dicomweb-client cannot read the answer's media type
        detail = f"{endpoint.public_url} gave a STOW-RS answer that cannot be read: {error}"
        return [InstanceResult(p, uid, None, TransferProblem.SERVER_ERROR, detail) for p, uid in batch]
    response = answered[-1]
    if _REFERENCED not in answer and _FAILED not in answer:
        # dicomweb-client reads only an exact media type; one with a charset parameter is read here.
        answer = _answer_of(response)
    return results_from_answer(batch, answer, response.status_code)


def _whole_request_failed(results: Sequence[InstanceResult]) -> tuple[TransferProblem | None, str]:
    """The problem every result of a request shares when none got a status of its own."""
    if results and all(r.problem is not None for r in results):
        return results[0].problem, results[0].detail
    return None, ""


def _read(paths: Sequence[Path]) -> tuple[list[_Instance], list[InstanceResult]]:
    instances, unreadable = [], []
    for path in paths:
        try:
            dataset = dcmread(path)
            instances.append(_Instance(path, str(dataset.SOPInstanceUID), dataset))
        except (OSError, InvalidDicomError, AttributeError, KeyError, ValueError) as error:
            detail = f"cannot read {path}: {error}"
            unreadable.append(InstanceResult(path, None, None, TransferProblem.UNREADABLE, detail))
    return instances, unreadable


def _sizes(paths: Sequence[Path]) -> list[int]:
    sizes = []
    for path in paths:
        try:
            sizes.append(path.stat().st_size)
        except OSError:
            sizes.append(0)  # _read reports it; its size does not matter
    return sizes


def send_files(
    destination: Destination,
    paths: Sequence[Path],
    limits: StowLimits = StowLimits(),
    cancel: threading.Event | None = None,
    on_result: Callable[[InstanceResult], None] | None = None,
) -> list[InstanceResult]:
    """Store files at a DICOMweb destination over STOW-RS; one result per path, in order.

    Parameters
    ----------
    destination : Destination
        Of type "dicomweb".
    paths : sequence of Path
        DICOM Part 10 files.
    limits : StowLimits
    cancel : threading.Event, optional
        When set, no further batch is sent: the one in flight finishes, the
        rest come back CANCELLED.
    on_result : callable, optional
        Told of each instance's result as its batch is answered.

    Returns
    -------
    list of InstanceResult
        Never raises for a network or server failure: those are results.
    """
    endpoint = destination.dicomweb
    if endpoint is None:
        raise DeliveryError(f"destination {destination.name} is not a DICOMweb destination")
    paths = [Path(p) for p in paths]
    answered: list[requests.Response] = []
    done: dict[Path, InstanceResult] = {}
    problem: TransferProblem | None = None
    detail = ""
    started = time.monotonic()
    try:
        session = session_for(endpoint)
    except OSError as error:
        # The secret's file went missing or unreadable since start: retrying will not bring it back.
        detail = f"cannot read the credentials of {destination.name}: {error}"
        return [InstanceResult(p, None, None, TransferProblem.UNREADABLE, detail) for p in paths]
    with session:
        client = client_for(
            endpoint,
            (limits.connect_seconds, limits.answer_seconds),
            # One Content-Length body per request: some proxies refuse chunked uploads.
            chunk_bytes=limits.batch_bytes + _BODY_OVERHEAD_BYTES,
            on_response=answered.append,
            session=session,
        )
        for indices in batches(_sizes(paths), limits):
            batch_paths = [paths[i] for i in indices]
            if problem is None and cancel is not None and cancel.is_set():
                problem, detail = TransferProblem.CANCELLED, "the sender is stopping"
            if problem is not None:
                results = [InstanceResult(p, None, None, problem, f"not sent: {detail}") for p in batch_paths]
            else:
                instances, results = _read(batch_paths)
                if instances:
                    posted = _post(client, answered, endpoint, instances)
                    problem, detail = _whole_request_failed(posted)
                    results += posted
            for result in results:
                done[result.path] = result
                if on_result is not None:
                    on_result(result)
    acknowledged = sum(1 for r in done.values() if r.outcome.acknowledged)
    log.info(
        "batch_sent",
        destination=destination.name,
        instances=len(paths),
        acknowledged=acknowledged,
        seconds=round(time.monotonic() - started, 3),
        problem=problem.value if problem else None,
    )
    return [done[p] for p in paths]
