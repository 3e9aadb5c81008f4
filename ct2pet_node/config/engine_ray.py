"""``[engine] backend`` and ``[engine.ray]``: where the engine runs, on this host or on a Ray cluster."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from ct2pet_node.config.checks import Checker
from ct2pet_node.errors import ConfigError

BACKENDS = ("local", "ray")
# What the node does while the Ray cluster cannot be reached: keep jobs WAITING, or translate here.
RAY_FALLBACKS = ("wait", "local")


@dataclass(frozen=True, slots=True)
class RayConfig:
    """The ``[engine.ray]`` table: the cluster the engine's actors run on.

    Attributes
    ----------
    address : str
        The head's GCS address, ``host:port`` (``ray start --head --port``).
    actors : int
        Actors to start, each holding the pipeline once; a study's chunks
        are spread over all of them.
    gpus_per_actor, cpus_per_actor : float
        Ray resources each actor reserves; a GPU actor runs on ``cuda``.
    namespace : str
        The Ray namespace the node's actors live in.
    fallback : str
        One of :data:`RAY_FALLBACKS`.
    jobs_in_flight : int or None
        Jobs the engine works on at once, their chunks sharing the actors;
        None: as many as ``actors`` (see :attr:`jobs_at_once`).
    """

    address: str = "127.0.0.1:6379"
    actors: int = 1
    gpus_per_actor: float = 1.0
    cpus_per_actor: float = 1.0
    namespace: str = "ct2pet-node"
    fallback: str = "wait"
    jobs_in_flight: int | None = None

    @property
    def jobs_at_once(self) -> int:
        # A study has few chunks near its end, or fewer chunks than actors: a second job's chunks
        # keep the idle actors busy. One per actor keeps every actor fed without a backlog.
        return self.jobs_in_flight if self.jobs_in_flight is not None else self.actors


def _address(value: str) -> bool:
    host, _, port = value.rpartition(":")
    return bool(host) and port.isdigit() and 1 <= int(port) <= 65535


def with_ray_address(ray: RayConfig, address: str) -> RayConfig:
    """``ray`` with the head at ``address`` (a command's ``--ray``), checked as ``[engine.ray] address`` is.

    Raises
    ------
    ConfigError
        ``address`` is not ``host:port``.
    """
    if not _address(address):
        raise ConfigError([f'--ray {address!r}: give the Ray head\'s "host:port", e.g. 10.0.0.5:6379'])
    return replace(ray, address=address)


def parse_ray(check: Checker, engine: Mapping[str, Any]) -> RayConfig:
    where = "[engine.ray]"
    table = engine.get("ray", {})
    if not isinstance(table, Mapping):
        check.problems.append(f"{where}: must be a table, got {type(table).__name__}")
        return RayConfig()
    check.unknown_keys(where, table, set(RayConfig.__slots__))
    number = (int, float)
    values = {
        "address": check.get(where, table, "address", str, _address, '"host:port" of the Ray head'),
        "actors": check.get(where, table, "actors", int, lambda v: v >= 1, "a whole number, 1 or more"),
        "gpus_per_actor": check.get(where, table, "gpus_per_actor", number, lambda v: v >= 0, "0 or more"),
        "cpus_per_actor": check.get(where, table, "cpus_per_actor", number, lambda v: v > 0, "more than 0"),
        "namespace": check.get(where, table, "namespace", str, bool, "a non-empty name"),
        "fallback": check.get(
            where, table, "fallback", str, lambda v: v in RAY_FALLBACKS, " or ".join(map(repr, RAY_FALLBACKS))
        ),
    }
    if "jobs_in_flight" in table:  # optional: its default follows actors
        values["jobs_in_flight"] = check.get(
            where, table, "jobs_in_flight", int, lambda v: v >= 1, "a whole number, 1 or more"
        )
    found = {key: value for key, value in values.items() if value is not None}
    for key in ("gpus_per_actor", "cpus_per_actor"):
        if key in found:
            found[key] = float(found[key])
    return RayConfig(**found)


def parse_backend(check: Checker, engine: Mapping[str, Any]) -> str:
    backend = check.get(
        "[engine]", engine, "backend", str, lambda v: v in BACKENDS, " or ".join(map(repr, BACKENDS))
    )
    return str(backend or "local")
