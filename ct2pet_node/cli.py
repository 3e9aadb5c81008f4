"""The ``ct2pet-node`` command line: every command a thin call into the package.

Heavy modules (torch through the engine, pynetdicom through net/) are
imported inside the commands that need them, so ``ct2pet-node --help`` and
``jobs list`` start fast and never load torch.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from ct2pet_node import __version__
from ct2pet_node.config import Config, load_config
from ct2pet_node.errors import ConfigError, Ct2PetError
from ct2pet_node.logging_setup import configure_logging

F = TypeVar("F", bound=Callable[..., Any])

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="TOML file merged over the embedded default (config/ct2pet-node.toml).",
)


@contextmanager
def _errors_to_exit() -> Iterator[None]:
    """Expected failures end the command with their message and exit code 2, no traceback."""
    try:
        yield
    except ConfigError as error:
        click.echo(str(error), err=True)
        sys.exit(2)
    except Ct2PetError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(2)


def _load(config_path: Path | None) -> Config:
    with _errors_to_exit():
        return load_config(config_path)


@click.group()
@click.version_option(__version__, prog_name="ct2pet-node")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="debug may show more of third-party messages; patient names and IDs are never logged by us.",
)
@click.option("--log-json/--log-console", default=None, help="Force the log format (default: JSON unless a TTY).")
def main(log_level: str, log_json: bool | None) -> None:
    """A DICOM node that turns CT series into synthetic PET series (CPDM)."""
    configure_logging(log_level, log_json)


# --- config -----------------------------------------------------------------------------------


@main.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("check")
@config_option
def config_check(config_path: Path | None) -> None:
    """Report every problem in the configuration at once, with the key and the fix."""
    try:
        config = load_config(config_path)
    except ConfigError as error:
        click.echo(f"{len(error.problems)} problem(s) found:", err=True)
        for problem in error.problems:
            click.echo(f"  - {problem}", err=True)
        sys.exit(1)
    source = config.source or "embedded default"
    click.echo(f"configuration OK ({source}): AE {config.node.ae_title} on {config.node.host}:{config.node.port}")
    click.echo(f"  data_dir      {config.node.data_dir}")
    click.echo(f"  weights       {config.engine.weights_dir}")
    click.echo(f"  output        {', '.join(config.output.series)}")
    names = ", ".join(f"{d.name} ({d.ae_title}@{d.host}:{d.port})" for d in config.destinations)
    click.echo(f"  destinations  {names or 'none: results stay in data_dir'}")


def _print_json(value: object) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))
