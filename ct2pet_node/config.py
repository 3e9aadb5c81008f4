"""TOML configuration -> frozen, typed values, with every problem reported at once.

The embedded default (``config/ct2pet-node.toml``) is always read first; a
user file is merged over it (tables key by key, lists replaced whole), then
the result is checked as a whole so ``config check`` can list every problem
with its key and its fix instead of stopping at the first.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ct2pet_node.domain.uids import is_valid_ae_title
from ct2pet_node.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG_PATH = PROJECT_ROOT / "config" / "ct2pet-node.toml"
WEIGHTS_ROOT = PROJECT_ROOT / "weights"
OUTPUT_KINDS = ("secondary-capture", "pet")
PRECISIONS = ("float32", "tf32", "bfloat16", "float16")
# Fast-path switches of [engine]: absent or "auto" leaves the choice to the device's default
# (ct2pet_node/engine/options.py), so a config moved between a GPU and a CPU host stays right.
ENGINE_SWITCHES = ("channels_last", "compile", "cuda_graphs", "overlap")
ENGINE_COUNTS = ("batch_size", "decode_batch_size", "threads")


@dataclass(frozen=True, slots=True)
class NodeConfig:
    ae_title: str
    host: str
    port: int
    data_dir: Path
    min_free_mb: int
    network_timeout_seconds: float


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    """Who may talk to the node, over what, and how much one instance may weigh.

    Attributes
    ----------
    allowed_calling_ae_titles : tuple of str
        Empty: any calling AE title may store.
    tls_certificate, tls_private_key : Path or None
        PEM server certificate (chain) and its key; set both to make the
        DICOM port speak TLS only (no plain TCP fallback on that port).
    tls_ca_certificates : Path or None
        PEM bundle of the CAs whose client certificates are trusted.
    require_client_certificate : bool
        Refuse a TLS client that shows no certificate signed by those CAs.
    max_instance_mb : int
        Largest data set one C-STORE may carry, MiB; a larger one is
        discarded as it arrives and answered 0xA701.
    """

    allowed_calling_ae_titles: tuple[str, ...]
    tls_certificate: Path | None = None
    tls_private_key: Path | None = None
    tls_ca_certificates: Path | None = None
    require_client_certificate: bool = False
    max_instance_mb: int = 512

    @property
    def tls_enabled(self) -> bool:
        return self.tls_certificate is not None


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    series_quiet_seconds: float
    min_slices: int
    max_gantry_tilt_degrees: float
    slice_spacing_tolerance_mm: float


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """The ``[engine]`` table; ``None`` leaves a choice to the model (steps, eta) or the device (fast paths)."""

    weights: str
    device: str
    steps: int
    precision: str
    eta: float | None
    seed: int
    channels_last: bool | None = None
    compile: bool | None = None
    cuda_graphs: bool | None = None
    overlap: bool | None = None
    batch_size: int | None = None
    decode_batch_size: int | None = None
    threads: int | None = None

    @property
    def weights_dir(self) -> Path:
        """The weights directory: a bare name under ``weights/``, or a path (with a ``/``)."""
        # A bare name is one of the models shipped in weights/; anything with a slash is a path.
        if "/" not in self.weights:
            return WEIGHTS_ROOT / self.weights
        return Path(self.weights).expanduser()


@dataclass(frozen=True, slots=True)
class OutputConfig:
    series: tuple[str, ...]
    grid: str


@dataclass(frozen=True, slots=True)
class Destination:
    name: str
    ae_title: str
    host: str
    port: int


# routing.delivery.DEFAULT_SCHEDULE: about 24 hours of trying before a dead letter.
DEFAULT_RETRY_DELAYS_SECONDS: tuple[float, ...] = (10, 30, 60, 120, 300, 600, 1200, 1800, 3600)
DEFAULT_MAX_ATTEMPTS = 31


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    """How the sender retries and how long it waits for a destination.

    Attributes
    ----------
    retry_delays_seconds : tuple of float
        Delay after the 1st, 2nd, ... failed attempt, seconds; the last repeats.
    max_attempts : int
        Attempts before a delivery is dead-lettered (``jobs retry`` replays it).
    connect_timeout_seconds, acse_timeout_seconds, dimse_timeout_seconds : float or None
        Seconds to wait for the TCP connection, the association answer and a
        C-STORE response; None takes ``[node] network_timeout_seconds``.
    """

    retry_delays_seconds: tuple[float, ...] = DEFAULT_RETRY_DELAYS_SECONDS
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    connect_timeout_seconds: float | None = None
    acse_timeout_seconds: float | None = None
    dimse_timeout_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class AdminConfig:
    listen_host: str
    listen_port: int
    token: str


@dataclass(frozen=True, slots=True)
class Config:
    node: NodeConfig
    security: SecurityConfig
    routing: RoutingConfig
    engine: EngineConfig
    output: OutputConfig
    destinations: tuple[Destination, ...]
    admin: AdminConfig
    source: Path | None
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)

    def destination(self, name: str) -> Destination:
        for destination in self.destinations:
            if destination.name == name:
                return destination
        known = ", ".join(d.name for d in self.destinations) or "none configured"
        raise ConfigError([f"[[destinations]]: no destination named {name!r} (known: {known})"])


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found; give an existing file to --config"]) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError([f"{path}: not valid TOML ({error}); fix the syntax"]) from None
    except OSError as error:
        raise ConfigError([f"{path}: cannot be read ({error.strerror})"]) from None


class _Checker:
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


def _port(value: int) -> bool:
    return 1 <= value <= 65535


def _host(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return value == "localhost" or (0 < len(value) <= 253 and " " not in value)


def _parse_node(check: _Checker) -> NodeConfig:
    table = check.table("node")
    check.unknown_keys("[node]", table, set(NodeConfig.__slots__))
    ae = check.get("[node]", table, "ae_title", str, is_valid_ae_title, "1-16 printable ASCII characters")
    host = check.get("[node]", table, "host", str, _host, "an IP address such as 0.0.0.0 or 127.0.0.1")
    port = check.get("[node]", table, "port", int, _port, "a TCP port 1-65535 (DICOM's is 104 or 11112)")
    data_dir = check.get("[node]", table, "data_dir", str, bool, "a directory path for spool and job store")
    min_free = check.get("[node]", table, "min_free_mb", int, lambda v: v >= 0, "megabytes, 0 or more")
    timeout = check.get(
        "[node]", table, "network_timeout_seconds", (int, float), lambda v: v > 0, "seconds, above 0"
    )
    return NodeConfig(
        ae_title=ae or "",
        host=host or "",
        port=port or 0,
        data_dir=Path(data_dir or ".").expanduser(),
        min_free_mb=min_free or 0,
        network_timeout_seconds=float(timeout or 0),
    )


def _parse_security(check: _Checker) -> SecurityConfig:
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
    )


def _pem_file(check: _Checker, table: Mapping[str, Any], key: str, fix: str) -> Path | None:
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


def _parse_routing(check: _Checker) -> RoutingConfig:
    table = check.table("routing")
    check.unknown_keys("[routing]", table, set(RoutingConfig.__slots__))
    number = (int, float)
    quiet = check.get("[routing]", table, "series_quiet_seconds", number, lambda v: v > 0, "seconds, above 0")
    min_slices = check.get("[routing]", table, "min_slices", int, lambda v: v >= 1, "a count, 1 or more")
    tilt = check.get(
        "[routing]", table, "max_gantry_tilt_degrees", number, lambda v: 0 <= v < 45, "degrees, 0 to 45"
    )
    tolerance = check.get(
        "[routing]", table, "slice_spacing_tolerance_mm", number, lambda v: v > 0, "millimetres, above 0"
    )
    return RoutingConfig(
        series_quiet_seconds=float(quiet or 0),
        min_slices=min_slices or 0,
        max_gantry_tilt_degrees=float(tilt or 0),
        slice_spacing_tolerance_mm=float(tolerance or 0),
    )


def _device(value: str) -> bool:
    if value in ("auto", "cpu", "cuda"):
        return True
    prefix, _, index = value.partition(":")
    return prefix == "cuda" and index.isdigit()


def _optional_auto(
    check: _Checker,
    table: Mapping[str, Any],
    key: str,
    kind: type | tuple[type, ...],
    rule: Callable[[Any], bool],
    fix: str,
) -> Any:
    """An optional ``[engine]`` value where absent or ``"auto"`` means None (the default's choice)."""
    if table.get(key, "auto") == "auto":
        return None
    return check.get("[engine]", table, key, kind, rule, f'{fix}, or "auto"')


def _parse_engine(check: _Checker) -> EngineConfig:
    table = check.table("engine")
    known = {"weights", "device", "steps", "precision", "eta", "seed", *ENGINE_SWITCHES, *ENGINE_COUNTS}
    check.unknown_keys("[engine]", table, known)
    weights = check.get("[engine]", table, "weights", str, bool, '"demo" or a weights directory')
    device = check.get("[engine]", table, "device", str, _device, '"auto", "cpu", "cuda" or "cuda:N"')
    steps = check.get("[engine]", table, "steps", int, lambda v: v == 0 or 2 <= v <= 1000, "0 or 2-1000")
    precision = check.get(
        "[engine]", table, "precision", str, lambda v: v in PRECISIONS, f"one of {', '.join(PRECISIONS)}"
    )
    # Absent: the model's own eta (its manifest), as steps = 0 takes the model's own steps.
    eta = _optional_auto(check, table, "eta", (int, float), lambda v: 0 <= v <= 1, "between 0 and 1")
    seed = check.get("[engine]", table, "seed", int, lambda v: v >= 0, "an integer, 0 or more")
    if precision in ("tf32", "float16") and device == "cpu":
        check.problems.append(
            f'[engine] precision: {precision} needs CUDA; use "float32" (or "bfloat16") with device "cpu"'
        )
    switches = {
        key: _optional_auto(check, table, key, bool, lambda _: True, "true or false")
        for key in ENGINE_SWITCHES
    }
    counts = {
        key: _optional_auto(check, table, key, int, lambda v: v >= 1, "a whole number, 1 or more")
        for key in ENGINE_COUNTS
    }
    return EngineConfig(
        weights=weights or "",
        device=device or "auto",
        steps=steps or 0,
        precision=precision or "float32",
        eta=None if eta is None else float(eta),
        seed=seed or 0,
        **switches,
        **counts,
    )


def _parse_output(check: _Checker) -> OutputConfig:
    table = check.table("output")
    check.unknown_keys("[output]", table, set(OutputConfig.__slots__))
    series = check.get("[output]", table, "series", list, bool, f"a non-empty list from {OUTPUT_KINDS}")
    kinds: list[str] = []
    for kind in series or []:
        if kind in OUTPUT_KINDS and kind not in kinds:
            kinds.append(kind)
        else:
            check.problems.append(f"[output] series: {kind!r} is unknown or repeated; use {OUTPUT_KINDS}")
    grid = check.get("[output]", table, "grid", str, lambda v: v in ("model", "ct"), '"model" or "ct"')
    return OutputConfig(series=tuple(kinds), grid=grid or "model")


def _parse_destinations(check: _Checker) -> tuple[Destination, ...]:
    raw = check.raw.get("destinations", [])
    if not isinstance(raw, list):
        check.problems.append("[[destinations]]: must be an array of tables ([[destinations]])")
        return ()
    destinations: list[Destination] = []
    for index, table in enumerate(raw):
        where = f"[[destinations]] #{index + 1}"
        if not isinstance(table, Mapping):
            check.problems.append(f"{where}: must be a table")
            continue
        check.unknown_keys(where, table, set(Destination.__slots__))
        name = check.get(where, table, "name", str, bool, "a short unique name")
        ae = check.get(where, table, "ae_title", str, is_valid_ae_title, "the PACS's AE title")
        host = check.get(where, table, "host", str, _host, "the PACS's address")
        port = check.get(where, table, "port", int, _port, "the PACS's DICOM port")
        if name is not None and any(d.name == name for d in destinations):
            check.problems.append(f"{where} name: {name!r} is used twice; names must be unique")
        destinations.append(Destination(name=name or "", ae_title=ae or "", host=host or "", port=port or 0))
    return tuple(destinations)


def _parse_delivery(check: _Checker) -> DeliveryConfig:
    table = check.table("delivery")
    check.unknown_keys("[delivery]", table, set(DeliveryConfig.__slots__))
    number = (int, float)
    delays = check.get(
        "[delivery]", table, "retry_delays_seconds", list, bool, "a non-empty list of seconds, e.g. [10, 60]"
    )
    clean: list[float] = []
    for delay in delays or []:
        if isinstance(delay, number) and not isinstance(delay, bool) and delay >= 0:
            clean.append(float(delay))
        else:
            check.problems.append(
                f"[delivery] retry_delays_seconds: {delay!r} is not a number of seconds >= 0"
            )
    attempts = check.get("[delivery]", table, "max_attempts", int, lambda v: v >= 1, "a count, 1 or more")
    timeouts: dict[str, float | None] = {}
    for key in ("connect_timeout_seconds", "acse_timeout_seconds", "dimse_timeout_seconds"):
        # Optional: absent means [node] network_timeout_seconds, as before this table existed.
        value = (
            check.get("[delivery]", table, key, number, lambda v: v > 0, "seconds, above 0")
            if key in table
            else None
        )
        timeouts[key] = None if value is None else float(value)
    return DeliveryConfig(
        retry_delays_seconds=tuple(clean) or DEFAULT_RETRY_DELAYS_SECONDS,
        max_attempts=attempts or DEFAULT_MAX_ATTEMPTS,
        **timeouts,
    )


def _parse_admin(check: _Checker) -> AdminConfig:
    table = check.table("admin")
    check.unknown_keys("[admin]", table, {"listen", "token"})
    listen = check.get("[admin]", table, "listen", str, fix='"HOST:PORT", e.g. "127.0.0.1:11180"')
    token = check.get("[admin]", table, "token", str, fix='a secret string, or "" for none')
    host, port = "", 0
    if listen is not None:
        host, _, port_text = listen.rpartition(":")
        host = host.strip("[]")
        if not (_host(host) and port_text.isdigit() and _port(int(port_text))):
            check.problems.append(f'[admin] listen: {listen!r} is not "HOST:PORT", e.g. "127.0.0.1:11180"')
        else:
            port = int(port_text)
    return AdminConfig(listen_host=host, listen_port=port, token=token or "")


def parse_config(raw: Mapping[str, Any], source: Path | None = None) -> Config:
    """Check a merged raw configuration and return it typed, or raise one ConfigError listing all problems."""
    check = _Checker(raw)
    known = {"node", "security", "routing", "engine", "output", "destinations", "delivery", "admin"}
    for key in sorted(set(raw) - known):
        check.problems.append(f"{key}: unknown table; known tables are {', '.join(sorted(known))}")
    config = Config(
        node=_parse_node(check),
        security=_parse_security(check),
        routing=_parse_routing(check),
        engine=_parse_engine(check),
        output=_parse_output(check),
        destinations=_parse_destinations(check),
        admin=_parse_admin(check),
        source=source,
        delivery=_parse_delivery(check),
    )
    if check.problems:
        prefix = f"{source}: " if source else ""
        raise ConfigError([prefix + problem for problem in check.problems])
    return config


def load_config(path: Path | None = None) -> Config:
    """The embedded default, with ``path`` merged over it when given."""
    raw = _read_toml(DEFAULT_CONFIG_PATH)
    if path is not None:
        raw = _merge(raw, _read_toml(path))
    return parse_config(raw, source=path)
