"""DICOMweb: the endpoints of ``[[destinations]]`` and ``[[sources]]`` of type "dicomweb", and ``[dicomweb]``.

Secrets are never values in the TOML: a file the service user can read
(``password_file``, ``token_file``; systemd's ``LoadCredential=`` puts them
under ``$CREDENTIALS_DIRECTORY``, which a path may name) or an environment
variable (``password_env``, ``token_env``). They are read when a request is
made, so nothing that prints a config can print them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ct2pet_node.config.checks import Checker, is_host, is_loopback, is_port

# The keys an endpoint table may carry besides its name and type.
ENDPOINT_KEYS = frozenset(
    {
        "url",
        "username",
        "password_file",
        "password_env",
        "token_file",
        "token_env",
        "ca_certificates",
        "client_certificate",
        "client_private_key",
        "verify_tls",
    }
)


@dataclass(frozen=True, slots=True)
class DicomwebEndpoint:
    """Where a DICOMweb service is and how the node authenticates to it.

    Attributes
    ----------
    url : str
        The service root, e.g. ``https://pacs.example.org/dicom-web``; the
        STOW-RS, QIDO-RS and WADO-RS paths are appended to it.
    username, password_file, password_env : HTTP basic authentication.
    token_file, token_env : a bearer token.
    ca_certificates : PEM bundle that signs the server (None: the system's).
    client_certificate, client_private_key : PEM files for mutual TLS.
    verify_tls : bool
        On unless a person turns it off for a test bench.
    """

    url: str
    username: str = ""
    password_file: Path | None = None
    password_env: str = ""
    token_file: Path | None = None
    token_env: str = ""
    ca_certificates: Path | None = None
    client_certificate: Path | None = None
    client_private_key: Path | None = None
    verify_tls: bool = True

    def password(self) -> str | None:
        return _secret(self.password_file, self.password_env)

    @property
    def public_url(self) -> str:
        """The URL as logs and ``status`` may show it: no user:password@, no query (it may hold a key)."""
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        if ":" in host:  # an IPv6 literal keeps its brackets
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port is not None else ""
        return urlunsplit((parts.scheme, host + port, parts.path, "", ""))

    def token(self) -> str | None:
        return _secret(self.token_file, self.token_env)


@dataclass(frozen=True, slots=True)
class DicomwebListener:
    """``[dicomweb]``: the optional STOW-RS receiver. ``listen_port`` 0 means off."""

    listen_host: str = ""
    listen_port: int = 0
    token_file: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.listen_port != 0

    def token(self) -> str | None:
        return _secret(self.token_file, "")


def _secret(path: Path | None, variable: str) -> str | None:
    if path is not None:
        return path.read_text(encoding="utf-8").strip()
    if variable:
        return os.environ.get(variable, "").strip() or None
    return None


def _file(check: Checker, where: str, table: Mapping[str, Any], key: str) -> Path | None:
    """An optional readable file; ``$VARIABLES`` in it are expanded (``$CREDENTIALS_DIRECTORY``)."""
    if key not in table:
        return None
    value = check.get(where, table, key, str, bool, "a file path")
    if value is None:
        return None
    path = Path(os.path.expandvars(value)).expanduser()
    if not path.is_file():
        check.problems.append(f"{where} {key}: {str(path)!r} is not a file")
    elif not os.access(path, os.R_OK):
        check.problems.append(
            f"{where} {key}: {str(path)!r} is not readable by this user; fix its owner or mode"
        )
    return path


def _variable(check: Checker, where: str, table: Mapping[str, Any], key: str) -> str:
    if key not in table:
        return ""
    name = check.get(where, table, key, str, bool, "the name of an environment variable")
    if name and name not in os.environ:
        check.problems.append(f"{where} {key}: the environment has no {name}; set it for the service")
    return name or ""


def parse_endpoint(check: Checker, where: str, table: Mapping[str, Any]) -> DicomwebEndpoint:
    """The DICOMweb keys of one ``[[destinations]]`` or ``[[sources]]`` table."""
    url = check.get(
        where, table, "url", str, lambda v: v.startswith(("http://", "https://")), "an http(s):// URL"
    )
    username = check.get(where, table, "username", str, bool, "a user name") if "username" in table else ""
    password_file = _file(check, where, table, "password_file")
    password_env = _variable(check, where, table, "password_env")
    token_file = _file(check, where, table, "token_file")
    token_env = _variable(check, where, table, "token_env")
    certificate = _file(check, where, table, "client_certificate")
    private_key = _file(check, where, table, "client_private_key")
    verify = check.get(where, table, "verify_tls", bool) if "verify_tls" in table else True
    has_password = password_file is not None or bool(password_env)
    if bool(username) != has_password:
        check.problems.append(f"{where}: HTTP basic authentication needs both username and password_file")
    if has_password and (token_file is not None or token_env):
        check.problems.append(f"{where}: give either username + password_file or token_file, not both")
    if (certificate is None) != (private_key is None):
        check.problems.append(
            f"{where}: a client certificate needs both client_certificate and client_private_key"
        )
    if (password_file is not None and password_env) or (token_file is not None and token_env):
        check.problems.append(f"{where}: a secret comes from a file or the environment, not both")
    return DicomwebEndpoint(
        url=(url or "").rstrip("/"),
        username=username or "",
        password_file=password_file,
        password_env=password_env,
        token_file=token_file,
        token_env=token_env,
        ca_certificates=_file(check, where, table, "ca_certificates"),
        client_certificate=certificate,
        client_private_key=private_key,
        verify_tls=bool(verify) if verify is not None else True,
    )


def parse_dicomweb_listener(check: Checker) -> DicomwebListener:
    table = check.table("dicomweb")
    check.unknown_keys("[dicomweb]", table, {"listen", "token_file"})
    if "listen" not in table:
        if "token_file" in table:
            check.problems.append(
                '[dicomweb] token_file: the receiver is off; add listen = "HOST:PORT" or remove it'
            )
        return DicomwebListener()
    listen = check.get("[dicomweb]", table, "listen", str, fix='"HOST:PORT", e.g. "127.0.0.1:8042"')
    token_file = _file(check, "[dicomweb]", table, "token_file")
    host, _, port_text = (listen or "").rpartition(":")
    host = host.strip("[]")
    if not (is_host(host) and port_text.isdigit() and is_port(int(port_text))):
        check.problems.append(f'[dicomweb] listen: {listen!r} is not "HOST:PORT", e.g. "127.0.0.1:8042"')
        return DicomwebListener()
    if token_file is None and not is_loopback(host):
        # STOW-RS writes into the spool: beyond loopback, no token would let anyone on the network store.
        check.problems.append(
            f"[dicomweb] listen: {listen!r} reaches beyond loopback with no token; set [dicomweb] token_file "
            "to a file holding a long random secret and put TLS in front (a reverse proxy), or listen on "
            'loopback ("127.0.0.1:8042")'
        )
    return DicomwebListener(listen_host=host, listen_port=int(port_text), token_file=token_file)
