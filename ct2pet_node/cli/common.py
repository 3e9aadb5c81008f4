"""What every command shares: the ``--config`` option, loading it, turning expected failures into exit code 2."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
import structlog

from ct2pet_node.config import Config, load_config
from ct2pet_node.config.load import find_config
from ct2pet_node.errors import ConfigError, Ct2PetError

log = structlog.get_logger(__name__)

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="TOML file merged over the embedded default (config/ct2pet-node.toml); default: "
    "$CT2PET_NODE_CONFIG, else /etc/ct2pet-node/ct2pet-node.toml if present.",
)


@contextmanager
def errors_to_exit() -> Iterator[None]:
    """Expected failures end the command with their message and exit code 2, no traceback."""
    try:
        yield
    except ConfigError as error:
        click.echo(str(error), err=True)
        sys.exit(2)
    except Ct2PetError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(2)


def load_found_config(config_path: Path | None) -> tuple[Config, str]:
    """The configuration ``--config``, the environment or the system file names, and where it came from."""
    path, origin = find_config(config_path)
    config = load_config(path)
    log.info("configuration_loaded", path=str(path) if path else "embedded default", origin=origin)
    return config, origin


def load_or_exit(config_path: Path | None) -> Config:
    """The configuration, or its problems on stderr and exit code 2."""
    with errors_to_exit():
        return load_found_config(config_path)[0]


def print_json(value: object) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


existing_file = click.Path(exists=True, dir_okay=False, path_type=Path)
existing_dir = click.Path(exists=True, file_okay=False, path_type=Path)
