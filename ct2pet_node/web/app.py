"""The admin endpoint as a Starlette application: what each path answers, and who may ask.

Paths: ``/status`` (JSON, the ``status --json`` contract), ``/metrics``
(Prometheus text), ``/healthz``, the dashboard ``/``, a page per job
``/jobs/<id>`` with its pictures under ``/jobs/<id>/preview/<name>``, the
actions, ``POST /jobs/<id>/<action>``, and ``POST /fetch`` (pull a study from a
``[[sources]]`` PACS; JSON ``{"source", "study", "series"?, "dry_run"?}``).

With a token configured, every path but ``/healthz`` needs it, on loopback
too: as ``Authorization: Bearer <token>`` (scripts, ``ct2pet-node status``)
or as the password of HTTP Basic (a browser asks for it; the user name is
free and is logged as who asked). Every action is logged with who asked.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio.from_thread
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from ct2pet_node.domain.fetch import FetchOutcome, FetchRequest
from ct2pet_node.domain.jobs import Job
from ct2pet_node.errors import ConfigError, Ct2PetError, SourceError
from ct2pet_node.service.metrics import CONTENT_TYPE, NodeMetrics
from ct2pet_node.service.preview import PREVIEW_DIR, PREVIEW_NAMES
from ct2pet_node.service.status import StatusReport
from ct2pet_node.web.job_page import job_page
from ct2pet_node.web.pages import FAVICON_SVG, NodeFacts, dashboard

log = structlog.get_logger(__name__)

# An action on one job (resend, rerun...): the job id in, a line for the operator out; raises
# Ct2PetError when the job cannot take it.
Action = Callable[[int], str]


@dataclass(frozen=True, slots=True)
class AdminSources:
    """Where the endpoint reads the node from; built once by the composition root."""

    status: Callable[[], StatusReport]
    metrics: NodeMetrics
    jobs: Callable[[], Sequence[Job]]
    job: Callable[[int], Job | None]
    facts: NodeFacts
    token: str = ""
    actions: Mapping[str, Action] = field(default_factory=dict)
    fetch: Callable[[FetchRequest], FetchOutcome] | None = None


def _asker(request: Request) -> tuple[str, str | None]:
    """The client's address, and the user name it gave with HTTP Basic (if any)."""
    client = f"{request.client.host}:{request.client.port}" if request.client else "unknown"
    user, _ = _basic(request.headers.get("authorization", ""))
    return client, user


def _basic(header: str) -> tuple[str | None, str | None]:
    """(user, password) of an HTTP Basic ``Authorization`` header; (None, None) for anything else."""
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None, None
    try:
        user, _, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None, None
    return user, password


def authorised(token: str, header: str | None) -> bool:
    """True when no token is configured, or ``header`` carries it (Bearer, or Basic's password)."""
    if not token:
        return True
    if not header:
        return False
    if hmac.compare_digest(header.encode(), f"Bearer {token}".encode()):
        return True
    _, password = _basic(header)
    return password is not None and hmac.compare_digest(password.encode(), token.encode())


def build_app(sources: AdminSources) -> Starlette:
    """The application serving ``sources``; see the module docstring for its paths."""
    paths = _Endpoints(sources)
    guarded = paths.guarded
    routes = [
        Route("/status", guarded(paths.status)),
        Route("/metrics", guarded(paths.metrics)),
        Route("/healthz", paths.healthz),
        Route("/favicon.svg", paths.favicon),
        Route("/", guarded(paths.home)),
        Route("/jobs/{job_id:int}", guarded(paths.job)),
        Route("/jobs/{job_id:int}/preview/{name}", guarded(paths.preview)),
        Route("/jobs/{job_id:int}/{action}", guarded(paths.action), methods=["POST"]),
        Route("/fetch", guarded(paths.fetch), methods=["POST"]),
    ]
    return Starlette(routes=routes)


class _Endpoints:
    """One method per path; plain functions, so Starlette runs them on its thread pool."""

    def __init__(self, sources: AdminSources) -> None:
        self.sources = sources

    def guarded(self, handler: Callable[[Request], Response]) -> Callable[[Request], Response]:
        token = self.sources.token

        def endpoint(request: Request) -> Response:
            if not authorised(token, request.headers.get("authorization")):
                return PlainTextResponse(
                    "a valid token is required: Authorization: Bearer <token>, or the token as the "
                    "password when the browser asks\n",
                    status_code=401,
                    headers={"WWW-Authenticate": 'Basic realm="ct2pet-node", charset="UTF-8"'},
                )
            return handler(request)

        return endpoint

    def status(self, request: Request) -> Response:
        try:
            body = json.dumps(self.sources.status().to_json(), default=str)
        except Exception as error:  # the top of a request: answer, and keep the traceback
            log.exception("status_failed")
            return PlainTextResponse(
                f"status unavailable: {type(error).__name__}: {error}\n", status_code=500
            )
        return Response(body, media_type="application/json")

    def metrics(self, request: Request) -> Response:
        return Response(self.sources.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    def healthz(self, request: Request) -> Response:
        return PlainTextResponse("ok\n")

    def favicon(self, request: Request) -> Response:
        return Response(FAVICON_SVG, media_type="image/svg+xml")

    def home(self, request: Request) -> Response:
        sources = self.sources
        return HTMLResponse(dashboard(sources.status(), sources.jobs(), sources.facts, time.time()))

    def job(self, request: Request) -> Response:
        found = self.sources.job(request.path_params["job_id"])
        if found is None:
            return PlainTextResponse(f"no job {request.path_params['job_id']}\n", status_code=404)
        shown = [name for name in PREVIEW_NAMES if _preview_path(found, name) is not None]
        return HTMLResponse(job_page(self.sources.status(), found, shown, time.time()))

    def preview(self, request: Request) -> Response:
        found = self.sources.job(request.path_params["job_id"])
        path = None if found is None else _preview_path(found, request.path_params["name"])
        if path is None:
            return PlainTextResponse("no such preview\n", status_code=404)
        return Response(path.read_bytes(), media_type="image/png", headers={"Cache-Control": "no-cache"})

    def action(self, request: Request) -> Response:
        job_id, name = request.path_params["job_id"], request.path_params["action"]
        client, user = _asker(request)
        chosen = self.sources.actions.get(name)
        if chosen is None:
            known = ", ".join(sorted(self.sources.actions)) or "none on this node"
            return PlainTextResponse(f"no action {name!r}; known: {known}\n", status_code=404)
        log.info("admin_action", action=name, job_id=job_id, client=client, user=user)
        try:
            message = chosen(job_id)
        except Ct2PetError as error:
            log.warning("admin_action_refused", action=name, job_id=job_id, client=client, reason=str(error))
            return PlainTextResponse(f"{error}\n", status_code=409)
        return JSONResponse({"job_id": job_id, "action": name, "result": message})

    def fetch(self, request: Request) -> Response:
        """Pull a study now; answers when it is retrieved (a C-MOVE of a large study takes minutes)."""
        client, user = _asker(request)
        if self.sources.fetch is None:
            return PlainTextResponse("fetching is not offered by this node\n", status_code=404)
        try:
            asked = FetchRequest.from_json(json.loads(_body(request)))
        except (ValueError, Ct2PetError) as error:  # JSONDecodeError is a ValueError
            return PlainTextResponse(f"bad fetch request: {error}\n", status_code=400)
        log.info(
            "admin_fetch",
            source=asked.source,
            study_uid=asked.study_uid,
            series_uid=asked.series_uid,
            dry_run=asked.dry_run,
            client=client,
            user=user,
        )
        try:
            outcome = self.sources.fetch(asked)
        except Ct2PetError as error:
            # Unknown source: 404; the source failed: 502; nothing to take (no CT): 422.
            status = 404 if isinstance(error, ConfigError) else 502 if isinstance(error, SourceError) else 422
            reason = "; ".join(error.problems) if isinstance(error, ConfigError) else str(error)
            log.warning("admin_fetch_refused", study_uid=asked.study_uid, client=client, reason=reason)
            return PlainTextResponse(f"{reason}\n", status_code=status)
        return JSONResponse(outcome.to_json())


def _body(request: Request) -> bytes:
    """The request's body, read from this worker thread (the endpoints are plain functions)."""
    return anyio.from_thread.run(request.body)


def _preview_path(job: Job, name: str) -> Path | None:
    """The file of preview ``name`` of ``job``, when both are known and it exists."""
    if name not in PREVIEW_NAMES or job.details.results_dir is None:
        return None
    path = job.details.results_dir / PREVIEW_DIR / name
    return path if path.is_file() else None
