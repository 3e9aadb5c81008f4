"""The admin endpoint: ``/status`` (JSON), ``/metrics`` (Prometheus) and ``/healthz``.

It listens on loopback by default; with a token configured every path but
``/healthz`` needs ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import hmac
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog

from ct2pet_node.errors import Ct2PetError
from ct2pet_node.service.metrics import CONTENT_TYPE, NodeMetrics
from ct2pet_node.service.status import StatusReport

log = structlog.get_logger(__name__)

StatusProvider = Callable[[], StatusReport]


class AdminServer:
    """Serves status and metrics from a background thread."""

    def __init__(
        self, host: str, port: int, token: str, status: StatusProvider, metrics: NodeMetrics
    ) -> None:
        self._token = token
        self._status = status
        self._metrics = metrics
        try:
            self._server = ThreadingHTTPServer((host, port), self._handler_class())
        except OSError as error:
            raise Ct2PetError(
                f"the admin endpoint cannot listen on {host}:{port}: {error.strerror or error}; "
                "choose a free port in [admin] listen or stop the process using it"
            ) from error
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="admin", daemon=True)
        self._started = False

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread.start()
        self._started = True
        log.info("admin_listening", host=self.address[0], port=self.address[1])

    def stop(self) -> None:
        """Stop serving and close the socket; safe to call when never started."""
        if self._started:
            # shutdown() waits for serve_forever to notice, so only a started server may be asked.
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._started = False
        self._server.server_close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/healthz" and not server._authorised(self.headers.get("Authorization")):
                    self._reply(HTTPStatus.UNAUTHORIZED, "text/plain", b"a valid bearer token is required\n")
                    return
                if self.path == "/status":
                    try:
                        body = json.dumps(server._status().to_json(), default=str).encode()
                    except Exception as error:  # top of a handler thread: answer, and keep the traceback
                        log.exception("status_failed")
                        text = f"status unavailable: {type(error).__name__}: {error}\n"
                        self._reply(HTTPStatus.INTERNAL_SERVER_ERROR, "text/plain", text.encode())
                        return
                    self._reply(HTTPStatus.OK, "application/json", body)
                elif self.path == "/metrics":
                    self._reply(HTTPStatus.OK, CONTENT_TYPE, server._metrics.render())
                elif self.path == "/healthz":
                    self._reply(HTTPStatus.OK, "text/plain", b"ok\n")
                else:
                    self._reply(HTTPStatus.NOT_FOUND, "text/plain", b"try /status, /metrics or /healthz\n")

            def _reply(self, code: HTTPStatus, content_type: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                # Scrapes every few seconds would drown the journal.
                pass

        return Handler

    def _authorised(self, header: str | None) -> bool:
        if not self._token:
            return True
        expected = f"Bearer {self._token}"
        return header is not None and hmac.compare_digest(header.encode(), expected.encode())


def fetch_status(host: str, port: int, token: str, timeout: float = 5.0) -> dict[str, Any]:
    """Ask a running node for its status; raise :class:`Ct2PetError` saying why when it cannot."""
    connect_host = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
    url = f"http://{connect_host}:{port}/status"
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return dict(json.load(response))
    except urllib.error.HTTPError as error:
        raise Ct2PetError(f"the node at {url} answered {error.code}: check [admin] token") from None
    except (urllib.error.URLError, OSError) as error:
        raise Ct2PetError(
            f"no node answers at {url} ({getattr(error, 'reason', error)}); is `ct2pet-node start` running "
            "with this configuration?"
        ) from None
