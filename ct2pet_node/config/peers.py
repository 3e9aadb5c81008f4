"""The node's peers: ``[[destinations]]`` (where results go) and ``[[sources]]`` (where ``fetch`` pulls from).

Both are arrays of tables with a unique ``name`` and a ``type``: "dimse" (the
default; AE title, host, port) or "dicomweb" (a URL and its authentication,
:mod:`ct2pet_node.config.dicomweb`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ct2pet_node.config.checks import Checker, is_host, is_port
from ct2pet_node.config.dicomweb import ENDPOINT_KEYS, DicomwebEndpoint, parse_endpoint
from ct2pet_node.config.model import PEER_TYPES, RETRIEVE_METHODS, Destination, Source
from ct2pet_node.domain.uids import is_valid_ae_title

_DIMSE_KEYS = frozenset({"ae_title", "host", "port"})


@dataclass(frozen=True, slots=True)
class _Peer:
    """The keys every peer table shares, read once."""

    name: str
    type: str
    ae_title: str
    host: str
    port: int
    dicomweb: DicomwebEndpoint | None


def _peers(
    check: Checker, array: str, extra_dimse_keys: frozenset[str]
) -> list[tuple[_Peer, Mapping[str, Any], str]]:
    raw = check.raw.get(array, [])
    if not isinstance(raw, list):
        check.problems.append(f"[[{array}]]: must be an array of tables ([[{array}]])")
        return []
    peers: list[tuple[_Peer, Mapping[str, Any], str]] = []
    for index, table in enumerate(raw):
        where = f"[[{array}]] #{index + 1}"
        if not isinstance(table, Mapping):
            check.problems.append(f"{where}: must be a table")
            continue
        name = check.get(where, table, "name", str, bool, "a short unique name")
        kind = table.get("type", "dimse")
        if kind not in PEER_TYPES:
            check.problems.append(f"{where} type: {kind!r} is not one of {', '.join(PEER_TYPES)}")
            continue
        if name is not None and any(peer.name == name for peer, _, _ in peers):
            check.problems.append(f"{where} name: {name!r} is used twice; names must be unique")
        if kind == "dicomweb":
            check.unknown_keys(where, table, {"name", "type"} | ENDPOINT_KEYS)
            peer = _Peer(name or "", kind, "", "", 0, parse_endpoint(check, where, table))
        else:
            check.unknown_keys(where, table, {"name", "type"} | _DIMSE_KEYS | extra_dimse_keys)
            ae = check.get(where, table, "ae_title", str, is_valid_ae_title, "the peer's AE title")
            host = check.get(where, table, "host", str, is_host, "the peer's address")
            port = check.get(where, table, "port", int, is_port, "the peer's DICOM port")
            peer = _Peer(name or "", kind, ae or "", host or "", port or 0, None)
        peers.append((peer, table, where))
    return peers


def parse_destinations(check: Checker) -> tuple[Destination, ...]:
    return tuple(
        Destination(
            name=peer.name,
            ae_title=peer.ae_title,
            host=peer.host,
            port=peer.port,
            type=peer.type,
            dicomweb=peer.dicomweb,
        )
        for peer, _, _ in _peers(check, "destinations", frozenset())
    )


def parse_sources(check: Checker) -> tuple[Source, ...]:
    sources: list[Source] = []
    for peer, table, where in _peers(check, "sources", frozenset({"retrieve"})):
        retrieve = "c-move"
        if peer.type == "dimse" and "retrieve" in table:
            retrieve = (
                check.get(
                    where,
                    table,
                    "retrieve",
                    str,
                    lambda v: v in RETRIEVE_METHODS,
                    " or ".join(RETRIEVE_METHODS),
                )
                or "c-move"
            )
        sources.append(
            Source(
                name=peer.name,
                type=peer.type,
                ae_title=peer.ae_title,
                host=peer.host,
                port=peer.port,
                retrieve=retrieve,
                dicomweb=peer.dicomweb,
            )
        )
    return tuple(sources)
