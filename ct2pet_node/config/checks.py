"""The problem-collecting reader that every section parser shares, and the checks more than one uses.

A section parser asks ``Checker.get`` for each key; a bad or missing value
adds a problem naming the key and its fix, and returns None, so parsing goes
on and ``config check`` can list every problem at once.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from typing import Any


class Checker:
    """Reads typed values out of a raw table, collecting problems instead of raising."""

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self.raw = raw
        self.problems: list[str] = []

    def table(self, name: str) -> Mapping[str, Any]:
        value = self.raw.get(name, {})
        if not isinstance(value, Mapping):
            self.problems.append(f"[{name}]: must be a table, got {type(value).__name__}")
            return {}
        return value

    def get(
        self,
        where: str,
        table: Mapping[str, Any],
        key: str,
        kind: type | tuple[type, ...],
        rule: Callable[[Any], bool] = lambda _: True,
        fix: str = "",
    ) -> Any:
        if key not in table:
            self.problems.append(f"{where} {key}: missing; {fix or 'add it'}")
            return None
        value = table[key]
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
            expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            self.problems.append(f"{where} {key}: must be {expected}, got {value!r}; {fix}".rstrip("; "))
            return None
        if not rule(value):
            self.problems.append(f"{where} {key}: {value!r} is not allowed; {fix}")
            return None
        return value

    def unknown_keys(self, where: str, table: Mapping[str, Any], known: set[str]) -> None:
        for key in sorted(set(table) - known):
            self.problems.append(f"{where} {key}: unknown key; remove it or check its spelling")


def is_port(value: int) -> bool:
    return 1 <= value <= 65535


def is_host(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return value == "localhost" or (0 < len(value) <= 253 and " " not in value)


def is_loopback(host: str) -> bool:
    """Only this machine can connect: 127.0.0.0/8, ::1 or "localhost" (a name or 0.0.0.0 may be anyone)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
