"""The node's own tables: ``[node]`` (who and where it is), ``[security]`` (who may talk to it) and ``[admin]``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ct2pet_node.config.checks import Checker, is_host, is_loopback, is_port
from ct2pet_node.config.model import OTHER_SOP_CLASS_POLICIES, AdminConfig, NodeConfig, SecurityConfig
from ct2pet_node.domain.uids import is_valid_ae_title


def parse_node(check: Checker) -> NodeConfig:
    table = check.table("node")
    check.unknown_keys("[node]", table, set(NodeConfig.__slots__))
    ae = check.get("[node]", table, "ae_title", str, is_valid_ae_title, "1-16 printable ASCII characters")
    host = check.get("[node]", table, "host", str, is_host, "an IP address such as 0.0.0.0 or 127.0.0.1")
    port = check.get("[node]", table, "port", int, is_port, "a TCP port 1-65535 (DICOM's is 104 or 11112)")
    data_dir = check.get("[node]", table, "data_dir", str, bool, "a directory path for spool and job store")
    min_free = check.get("[node]", table, "min_free_mb", int, lambda v: v >= 0, "megabytes, 0 or more")
    timeout = check.get(
        "[node]", table, "network_timeout_seconds", (int, float), lambda v: v > 0, "seconds, above 0"
    )
    others = check.get(
        "[node]",
        table,
        "other_sop_classes",
        str,
        lambda v: v in OTHER_SOP_CLASS_POLICIES,
        '"accept" (acknowledge PET, reports... and drop them) or "refuse" (refuse them at negotiation)',
    )
    max_associations = check.get(
        "[node]", table, "max_associations", int, lambda v: v >= 1, "associations at once, 1 or more"
    )
    request_timeout = check.get(
        "[node]",
        table,
        "association_request_timeout_seconds",
        (int, float),
        lambda v: v > 0,
        "seconds a new connection has to send its association request, above 0 (a few: 5)",
    )
    max_waiting = check.get(
        "[node]",
        table,
        "max_waiting_connections",
        int,
        lambda v: v >= 1,
        "connections waiting for their association request at once, 1 or more",
    )
    return NodeConfig(
        ae_title=ae or "",
        host=host or "",
        port=port or 0,
        data_dir=Path(data_dir or ".").expanduser(),
        min_free_mb=min_free or 0,
        network_timeout_seconds=float(timeout or 0),
        other_sop_classes=others or "accept",
        max_associations=max_associations or 1,
        association_request_timeout_seconds=float(request_timeout or 1),
        max_waiting_connections=max_waiting or 1,
    )


def parse_security(check: Checker) -> SecurityConfig:
    table = check.table("security")
    check.unknown_keys("[security]", table, set(SecurityConfig.__slots__))
    titles = check.get("[security]", table, "allowed_calling_ae_titles", list, fix="a list of AE titles")
    allowed: list[str] = []
    for title in titles or []:
        if isinstance(title, str) and is_valid_ae_title(title):
            allowed.append(title.strip())
        else:
            check.problems.append(
                f"[security] allowed_calling_ae_titles: {title!r} is not an AE title (1-16 printable ASCII)"
            )
    certificate = _pem_file(check, table, "tls_certificate", "the node's PEM certificate (chain)")
    private_key = _pem_file(check, table, "tls_private_key", "the PEM private key of tls_certificate")
    ca_bundle = _pem_file(check, table, "tls_ca_certificates", "a PEM bundle of the CAs of your senders")
    require_client = check.get("[security]", table, "require_client_certificate", bool, fix="true or false")
    max_instance = check.get(
        "[security]", table, "max_instance_mb", int, lambda v: v >= 1, "megabytes, 1 or more"
    )
    per_peer = check.get(
        "[security]",
        table,
        "max_associations_per_peer",
        int,
        lambda v: v >= 1,
        "associations one peer address may hold at once, 1 or more",
    )
    if (certificate is None) != (private_key is None):
        check.problems.append(
            "[security] tls_certificate, tls_private_key: set both (TLS on) or neither (plain TCP)"
        )
    if require_client and (certificate is None or ca_bundle is None):
        check.problems.append(
            "[security] require_client_certificate: needs tls_certificate, tls_private_key and "
            "tls_ca_certificates; set them or set it to false"
        )
    return SecurityConfig(
        allowed_calling_ae_titles=tuple(allowed),
        tls_certificate=certificate,
        tls_private_key=private_key,
        tls_ca_certificates=ca_bundle,
        require_client_certificate=bool(require_client),
        max_instance_mb=max_instance or 512,
        max_associations_per_peer=per_peer or 1,
    )


def _pem_file(check: Checker, table: Mapping[str, Any], key: str, fix: str) -> Path | None:
    """An optional file path ("" for none) that must exist and be readable by this user."""
    value = check.get("[security]", table, key, str, fix=f'a file path, or "" for none ({fix})')
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_file():
        check.problems.append(f"[security] {key}: {str(path)!r} is not a file; give {fix}")
    elif not os.access(path, os.R_OK):
        check.problems.append(
            f"[security] {key}: {str(path)!r} is not readable by this user; fix its owner or mode"
        )
    return path


def parse_admin(check: Checker) -> AdminConfig:
    table = check.table("admin")
    check.unknown_keys("[admin]", table, {"listen", "token"})
    listen = check.get("[admin]", table, "listen", str, fix='"HOST:PORT", e.g. "127.0.0.1:11180"')
    token = check.get("[admin]", table, "token", str, fix='a secret string, or "" for none')
    host, port = "", 0
    if listen is not None:
        host, _, port_text = listen.rpartition(":")
        host = host.strip("[]")
        if not (is_host(host) and port_text.isdigit() and is_port(int(port_text))):
            check.problems.append(f'[admin] listen: {listen!r} is not "HOST:PORT", e.g. "127.0.0.1:11180"')
        else:
            port = int(port_text)
            if not token and not is_loopback(host):
                # The endpoint serves the node's state and takes actions: beyond loopback it is an open door.
                check.problems.append(
                    f"[admin] listen: {listen!r} reaches beyond loopback with no token; set [admin] token "
                    "to a long random secret and reach the endpoint over TLS (a reverse proxy) or an SSH "
                    'tunnel, or listen on loopback ("127.0.0.1:11180")'
                )
    return AdminConfig(listen_host=host, listen_port=port, token=token or "")
