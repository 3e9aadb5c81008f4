"""Asking a running node over its admin endpoint (served by :mod:`ct2pet_node.web`): status, and fetch.

The endpoint listens on loopback by default; with a token configured every
path but ``/healthz`` needs ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from ct2pet_node.errors import Ct2PetError

# How long `fetch` waits for the node to answer: a C-MOVE of a large study takes minutes.
FETCH_TIMEOUT_SECONDS = 3600.0


def fetch_status(host: str, port: int, token: str, timeout: float = 5.0) -> dict[str, Any]:
    """Ask a running node for its status; raise :class:`Ct2PetError` saying why when it cannot."""
    return _ask(host, port, token, "/status", None, timeout)


def request_fetch(
    host: str, port: int, token: str, body: dict[str, Any], timeout: float = FETCH_TIMEOUT_SECONDS
) -> dict[str, Any]:
    """``POST /fetch`` to a running node; its answer, or :class:`Ct2PetError` with the node's reason."""
    return _ask(host, port, token, "/fetch", body, timeout)


def _ask(
    host: str, port: int, token: str, path: str, body: dict[str, Any] | None, timeout: float
) -> dict[str, Any]:
    connect_host = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
    url = f"http://{connect_host}:{port}{path}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return dict(json.load(response))
    except urllib.error.HTTPError as error:
        if error.code in (401, 403):
            raise Ct2PetError(f"the node at {url} answered {error.code}: check [admin] token") from None
        reason = error.read().decode(errors="replace").strip() or error.reason
        raise Ct2PetError(f"the node at {url} answered {error.code}: {reason}") from None
    except (urllib.error.URLError, OSError) as error:
        raise Ct2PetError(
            f"no node answers at {url} ({getattr(error, 'reason', error)}); is `ct2pet-node start` running "
            "with this configuration?"
        ) from None
