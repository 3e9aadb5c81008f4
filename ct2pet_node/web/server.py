"""uvicorn serving the node's HTTP applications (admin, STOW-RS) from background threads.

The socket is bound when the server is built, so a port already in use is
a clear error before any other part starts, and port 0 gives its real port
at once (tests). uvicorn's own loggers go through the node's logging; it
installs no signal handlers off the main thread, so SIGTERM stays the node's.
"""

from __future__ import annotations

import socket
import threading
import time

import structlog
import uvicorn
from starlette.applications import Starlette

from ct2pet_node.errors import Ct2PetError
from ct2pet_node.web.app import AdminSources, build_app
from ct2pet_node.web.stow import StowSources, build_stow_app

log = structlog.get_logger(__name__)

STOP_SECONDS = 5.0
STOW_DRAIN_SECONDS = 20
# Senders push a series over one or a few connections; more than this at once is a fault or an attack.
STOW_MAX_CONNECTIONS = 32


class HttpListener:
    """One Starlette application on ``host:port``, served by uvicorn on a thread named ``name``.

    ``config_key`` names the setting to change when the port is taken;
    ``drain_seconds`` is how long :meth:`stop` lets requests in flight finish;
    beyond ``max_connections`` open at once a request is answered 503, so slow
    or stuck clients cannot take every file descriptor and thread of the node.
    """

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        app: Starlette,
        config_key: str,
        drain_seconds: int = 2,
        max_connections: int = 64,
    ) -> None:
        self._name = name
        self._drain_seconds = drain_seconds
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._socket.bind((host, port))
            self._socket.listen(64)
        except OSError as error:
            self._socket.close()
            raise Ct2PetError(
                f"the {name} endpoint cannot listen on {host}:{port}: {error.strerror or error}; "
                f"choose a free port in {config_key} or stop the process using it"
            ) from error
        bound = self._socket.getsockname()
        self._address = (str(bound[0]), int(bound[1]))  # still known once the socket is closed
        config = uvicorn.Config(
            app,
            log_config=None,  # the node's logging, not uvicorn's own configuration
            log_level="warning",
            access_log=False,  # scrapes every few seconds would drown the journal
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=drain_seconds,
            limit_concurrency=max_connections,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        return self._address

    def _serve(self) -> None:
        try:
            self._server.run(sockets=[self._socket])
        except Exception:  # the top of the thread: the node runs on without this endpoint
            log.exception(f"{self._name}_failed")

    def start(self) -> None:
        address = self.address
        self._thread.start()
        deadline = time.monotonic() + STOP_SECONDS
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        log.info(f"{self._name}_listening", host=address[0], port=address[1])

    def stop(self) -> None:
        """Stop serving and close the socket; safe to call when never started."""
        if self._thread.is_alive():
            self._server.should_exit = True
            self._thread.join(timeout=STOP_SECONDS + self._drain_seconds)
        self._socket.close()


class AdminServer(HttpListener):
    """The admin endpoint (status, metrics, health, dashboard, job pages, actions) on ``host:port``."""

    def __init__(self, host: str, port: int, sources: AdminSources) -> None:
        super().__init__("admin", host, port, build_app(sources), "[admin] listen")


class StowServer(HttpListener):
    """The STOW-RS receiver (:mod:`ct2pet_node.web.stow`) on ``[dicomweb] listen``."""

    def __init__(self, host: str, port: int, sources: StowSources) -> None:
        # A series being pushed is worth finishing: what is not answered is sent again.
        super().__init__(
            "stow",
            host,
            port,
            build_stow_app(sources),
            "[dicomweb] listen",
            drain_seconds=STOW_DRAIN_SECONDS,
            max_connections=STOW_MAX_CONNECTIONS,
        )
