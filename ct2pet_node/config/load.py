"""Reading the TOML: the embedded default first, a user file merged over it, then one check of the whole.

Tables merge key by key and lists are replaced whole; every problem found
is raised together in one ``ConfigError``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ct2pet_node.config.checks import Checker
from ct2pet_node.config.dicomweb import parse_dicomweb_listener
from ct2pet_node.config.engine import parse_engine, parse_output
from ct2pet_node.config.model import PROJECT_ROOT, Config
from ct2pet_node.config.node import parse_admin, parse_node, parse_security
from ct2pet_node.config.peers import parse_destinations, parse_sources
from ct2pet_node.config.retention import check_warning_above_watermark, parse_retention
from ct2pet_node.config.routing import parse_delivery, parse_routing
from ct2pet_node.errors import ConfigError

DEFAULT_CONFIG_PATH = PROJECT_ROOT / "config" / "ct2pet-node.toml"
CONFIG_ENV = "CT2PET_NODE_CONFIG"
SYSTEM_CONFIG_PATH = Path("/etc/ct2pet-node/ct2pet-node.toml")


def find_config(
    explicit: Path | None,
    environ: Mapping[str, str] = os.environ,
    system_path: Path = SYSTEM_CONFIG_PATH,
) -> tuple[Path | None, str]:
    """Which file to merge over the embedded default, and where that choice came from.

    ``--config`` first, then ``$CT2PET_NODE_CONFIG``, then the system file
    (what the systemd unit and an administrator's shell share without
    repeating ``--config``), else none: the embedded default alone. A named
    file that does not exist is an error when it is read, not a reason to
    fall through to the next place.
    """
    if explicit is not None:
        return explicit, "--config"
    from_env = environ.get(CONFIG_ENV, "").strip()
    if from_env:
        return Path(from_env), f"${CONFIG_ENV}"
    if system_path.is_file():
        return system_path, "the system configuration"
    return None, "the embedded default"


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


def parse_config(raw: Mapping[str, Any], source: Path | None = None) -> Config:
    """Check a merged raw configuration and return it typed, or raise one ConfigError listing all problems."""
    check = Checker(raw)
    known = {
        "node",
        "security",
        "routing",
        "engine",
        "output",
        "destinations",
        "delivery",
        "admin",
        "retention",
        "sources",
        "dicomweb",
    }
    for key in sorted(set(raw) - known):
        check.problems.append(f"{key}: unknown table; known tables are {', '.join(sorted(known))}")
    config = Config(
        node=parse_node(check),
        security=parse_security(check),
        routing=parse_routing(check),
        engine=parse_engine(check),
        output=parse_output(check),
        destinations=parse_destinations(check),
        admin=parse_admin(check),
        source=source,
        delivery=parse_delivery(check),
        retention=parse_retention(check),
        sources=parse_sources(check),
        dicomweb=parse_dicomweb_listener(check),
    )
    check_warning_above_watermark(check, config.retention, config.node.min_free_mb)
    if check.problems:
        prefix = f"{source}: " if source else ""
        raise ConfigError([prefix + problem for problem in check.problems])
    return config


def load_config(path: Path | None = None) -> Config:
    """The embedded default, with ``path`` merged over it when given."""
    if not DEFAULT_CONFIG_PATH.is_file():
        # A built wheel carries the package only; the default lives in the checkout (README, Install).
        raise ConfigError(
            [
                f"{DEFAULT_CONFIG_PATH}: the embedded default configuration is missing; the node runs "
                "from its checkout (pip install -e .), not from a built wheel"
            ]
        )
    raw = _read_toml(DEFAULT_CONFIG_PATH)
    if path is not None:
        raw = _merge(raw, _read_toml(path))
    return parse_config(raw, source=path)
