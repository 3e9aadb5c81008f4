"""``config check``: every problem in the configuration at once, or a summary of what it sets."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ct2pet_node.cli.common import config_option
from ct2pet_node.config import ENGINE_COUNTS, ENGINE_SWITCHES, Config, load_config
from ct2pet_node.errors import ConfigError


@click.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("check")
@config_option
def config_check(config_path: Path | None) -> None:
    """Report every problem in the configuration at once, with the key and the fix."""
    from ct2pet_node.net.tls import server_context

    try:
        config = load_config(config_path)
        # Loading the certificate and key catches a key that does not match its certificate now,
        # not at the next start of the service.
        server_context(config.security)
    except ConfigError as error:
        click.echo(f"{len(error.problems)} problem(s) found:", err=True)
        for problem in error.problems:
            click.echo(f"  - {problem}", err=True)
        sys.exit(1)
    source = config.source or "embedded default"
    click.echo(
        f"configuration OK ({source}): AE {config.node.ae_title} on {config.node.host}:{config.node.port}"
    )
    click.echo(f"  data_dir      {config.node.data_dir}")
    click.echo(f"  weights       {config.engine.weights_dir}")
    click.echo(f"  engine        {_engine_summary(config)}")
    click.echo(f"  output        {', '.join(config.output.series)}")
    click.echo(f"  tls           {'on' if config.security.tls_enabled else 'off'}")
    names = ", ".join(f"{d.name} ({d.ae_title}@{d.host}:{d.port})" for d in config.destinations)
    click.echo(f"  destinations  {names or 'none: results stay in data_dir'}")


def _engine_summary(config: Config) -> str:
    """The [engine] choices in one line; what is left open names who decides it."""
    engine = config.engine
    steps = engine.steps or "the model's"
    eta = "the model's" if engine.eta is None else f"{engine.eta:g}"
    fixed = [
        f"{key} {getattr(engine, key)}"
        for key in ENGINE_SWITCHES + ENGINE_COUNTS
        if getattr(engine, key) is not None
    ]
    fast = ", ".join(fixed) or "the device's defaults"
    return (
        f"device {engine.device}, steps {steps}, eta {eta}, seed {engine.seed}, "
        f"precision {engine.precision}, fast paths: {fast}"
    )
