"""The STOW-RS receiver (PS3.18 10.5) as a Starlette application: ``POST /studies[/{study}]``.

The body is ``multipart/related; type="application/dicom"``, one Part 10 file
per part, read as it streams in (:mod:`ct2pet_node.web.multipart_related`).
Each part goes through the same intake as a C-STORE
(:mod:`ct2pet_node.net.intake`): refused for the same reasons, or written
atomically into the spool and handed to the router, before the answer. The
answer is an ``application/dicom+json`` data set with a
ReferencedSOPSequence (0008,1199) of what the node has accepted and a
FailedSOPSequence (0008,1198) of what it refused, each with its FailureReason
(0008,1197), the DICOM status the SCP would have answered; the text of each
reason goes to the log. HTTP status: 200 all accepted, 202 some, 409 none
(PS3.18 table 10.5.3-1); 400 a body that is no multipart message; 401 no or
a wrong token; 415 another media type.

With ``[dicomweb] token_file`` set, every request needs ``Authorization:
Bearer <token>``, on loopback too.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from ct2pet_node.domain.records import AssociationReleased
from ct2pet_node.domain.uids import AeTitle
from ct2pet_node.net.intake import OUT_OF_RESOURCES, Arrival, Outcome
from ct2pet_node.net.part10 import Unreadable, arrival_of
from ct2pet_node.net.store_header import CANNOT_PARSE
from ct2pet_node.web.multipart_related import MultipartError, MultipartReader, Part, parse_content_type

log = structlog.get_logger(__name__)

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
SOURCE = "STOW-RS"

_REFERENCED_SOP_SEQUENCE = "00081199"
_FAILED_SOP_SEQUENCE = "00081198"
_REFERENCED_SOP_CLASS = "00081150"
_REFERENCED_SOP_INSTANCE = "00081155"
_FAILURE_REASON = "00081197"


@dataclass(frozen=True, slots=True)
class StowSources:
    """What the receiver needs of the node; built once by the composition root.

    Attributes
    ----------
    receive : callable
        The intake (:meth:`~ct2pet_node.net.intake.Intake.receive`); blocking, run on a worker thread.
    max_instance_bytes : int
        ``[security] max_instance_mb`` in bytes: the most of one part held in memory.
    token : callable or None
        Reads the bearer token (``[dicomweb] token_file``) at each request, so a
        rotated file takes effect without a restart; None: no token required.
    on_instance : callable
        Told each part's outcome (the metrics).
    on_request : callable
        Told each request's HTTP status (the metrics).
    on_released : callable or None
        Told what a whole request stored, as the storage SCP tells the router
        at a clean release: a series pushed in one request settles soon after
        it (``[routing] settle_after_release_seconds``) instead of waiting for quiet.
    """

    receive: Callable[[Arrival], Outcome]
    max_instance_bytes: int
    token: Callable[[], str | None] | None = None
    on_instance: Callable[[Outcome], None] = lambda _outcome: None
    on_request: Callable[[int], None] = lambda _status: None
    on_released: Callable[[AssociationReleased], None] | None = None


@dataclass(frozen=True, slots=True)
class PartAnswer:
    """One part's line in the answer: what it announced, and the intake's outcome."""

    sop_class_uid: str
    sop_instance_uid: str
    outcome: Outcome


def build_stow_app(sources: StowSources) -> Starlette:
    """The application; see the module docstring for its paths and answers."""
    receiver = _Receiver(sources)
    routes = [
        Route("/studies", receiver.store, methods=["POST"]),
        Route("/studies/{study}", receiver.store, methods=["POST"]),
    ]
    return Starlette(routes=routes)


def answer_status(answers: list[PartAnswer]) -> int:
    """200 when every part was accepted, 409 when none was, 202 in between (PS3.18 table 10.5.3-1)."""
    accepted = sum(1 for answer in answers if answer.outcome.succeeded)
    if accepted == len(answers):
        return 200
    return 409 if accepted == 0 else 202


def answer_body(answers: list[PartAnswer]) -> dict[str, Any]:
    """The Store Instances Response Module as DICOM JSON (PS3.18 F.2)."""

    def item(answer: PartAnswer) -> dict[str, Any]:
        element: dict[str, Any] = {}
        if answer.sop_class_uid:
            element[_REFERENCED_SOP_CLASS] = {"vr": "UI", "Value": [answer.sop_class_uid]}
        if answer.sop_instance_uid:
            element[_REFERENCED_SOP_INSTANCE] = {"vr": "UI", "Value": [answer.sop_instance_uid]}
        if not answer.outcome.succeeded:
            element[_FAILURE_REASON] = {"vr": "US", "Value": [answer.outcome.status]}
        return element

    body: dict[str, Any] = {}
    accepted = [item(answer) for answer in answers if answer.outcome.succeeded]
    failed = [item(answer) for answer in answers if not answer.outcome.succeeded]
    if accepted:
        body[_REFERENCED_SOP_SEQUENCE] = {"vr": "SQ", "Value": accepted}
    if failed:
        body[_FAILED_SOP_SEQUENCE] = {"vr": "SQ", "Value": failed}
    return body


class _Receiver:
    def __init__(self, sources: StowSources) -> None:
        self.sources = sources

    def _authorised(self, request: Request) -> bool:
        if self.sources.token is None:
            return True
        token = self.sources.token()
        if not token:  # a token file emptied by mistake must not open the door
            log.warning("stow_token_empty", reason="[dicomweb] token_file is empty; refusing every request")
            return False
        header = request.headers.get("authorization", "")
        return hmac.compare_digest(header.encode(), f"Bearer {token}".encode())

    async def store(self, request: Request) -> Response:
        client = f"{request.client.host}:{request.client.port}" if request.client else "unknown"
        with structlog.contextvars.bound_contextvars(stow_client=client):
            response = await self._store(request)
        self.sources.on_request(response.status_code)
        return response

    async def _store(self, request: Request) -> Response:
        if not self._authorised(request):
            log.warning("stow_unauthorised")
            return PlainTextResponse(
                "a valid token is required: Authorization: Bearer <token>\n",
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="ct2pet-node STOW-RS"'},
            )
        media_type, params = parse_content_type(request.headers.get("content-type", ""))
        part_type = params.get("type", DICOM).lower()
        if media_type != "multipart/related" or part_type != DICOM:
            return PlainTextResponse(
                f'send multipart/related; type="{DICOM}" (one DICOM Part 10 file per part), '
                f"not {media_type}"
                + (f" of {part_type}" if media_type == "multipart/related" else "")
                + "\n",
                status_code=415,
            )
        study = request.path_params.get("study")
        answers: list[PartAnswer] = []
        try:
            reader = MultipartReader(params.get("boundary", ""), self.sources.max_instance_bytes)
            async for chunk in request.stream():
                for part in reader.feed(chunk):
                    answers.append(await run_in_threadpool(self._receive, part, study))
            reader.close()
        except MultipartError as error:
            log.warning("stow_bad_request", reason=str(error), parts_answered=len(answers))
            return PlainTextResponse(f"{error}\n", status_code=400)
        if not answers:
            return PlainTextResponse("the multipart body holds no part\n", status_code=400)
        stored = [answer.outcome.record for answer in answers if answer.outcome.record is not None]
        if stored and self.sources.on_released is not None:
            self.sources.on_released(AssociationReleased.of(AeTitle(SOURCE[:16]), time.time(), stored))
        status = answer_status(answers)
        log.info(
            "stow_answered",
            status=status,
            accepted=sum(1 for answer in answers if answer.outcome.succeeded),
            failed=sum(1 for answer in answers if not answer.outcome.succeeded),
        )
        return Response(json.dumps(answer_body(answers)), status_code=status, media_type=DICOM_JSON)

    def _receive(self, part: Part, study: str | None) -> PartAnswer:
        """One part through the intake, on a worker thread: blocking file writes and fsyncs."""
        if part.content_type not in ("", DICOM):
            outcome = Outcome(CANNOT_PARSE, f"a part of media type {part.content_type}, not {DICOM}")
            log.warning("instance_refused", status=f"0x{outcome.status:04X}", reason=outcome.reason)
            answer = PartAnswer("", "", outcome)
        else:
            arrival = arrival_of(part.content, part.head, part.size, SOURCE, study)
            if isinstance(arrival, Unreadable):
                log.warning(
                    "instance_refused",
                    status=f"0x{arrival.outcome.status:04X}",
                    reason=arrival.outcome.reason,
                    sop_instance_uid=arrival.sop_instance_uid,
                )
                answer = PartAnswer(arrival.sop_class_uid, arrival.sop_instance_uid, arrival.outcome)
            else:
                try:
                    outcome = self.sources.receive(arrival)
                except Exception as error:  # e.g. the job store's disk: answer this part, keep the rest
                    log.exception("store_failed", sop_instance_uid=arrival.sop_instance_uid)
                    outcome = Outcome(
                        OUT_OF_RESOURCES, f"the node could not store it: {type(error).__name__}"
                    )
                answer = PartAnswer(arrival.sop_class_uid, arrival.sop_instance_uid, outcome)
        self.sources.on_instance(answer.outcome)
        return answer
