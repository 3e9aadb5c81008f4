"""Asking a running node for its status over the admin endpoint (served by :mod:`ct2pet_node.web`).

The endpoint listens on loopback by default; with a token configured every
path but ``/healthz`` needs ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from ct2pet_node.errors import Ct2PetError


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
