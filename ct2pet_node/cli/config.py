"""``config check``: every problem in the configuration at once, or a summary of what it sets."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ct2pet_node.cli.common import config_option, load_found_config
from ct2pet_node.config import ENGINE_COUNTS, ENGINE_SWITCHES, Config
from ct2pet_node.errors import ConfigError, Ct2PetError


@click.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("check")
@config_option
@click.option("--verify", is_flag=True, help="Also check every weights file against its sha256 (slow).")
def config_check(config_path: Path | None, verify: bool) -> None:
    """Report every problem in the configuration at once, with the key and the fix."""
    from ct2pet_node.net.tls import server_context

    try:
        config, origin = load_found_config(config_path)
        # Loading the certificate and key catches a key that does not match its certificate now,
        # not at the next start of the service.
        server_context(config.security)
        problems = _engine_problems(config, verify)
        if problems:
            raise ConfigError(problems)
    except ConfigError as error:
        click.echo(f"{len(error.problems)} problem(s) found:", err=True)
        for problem in error.problems:
            click.echo(f"  - {problem}", err=True)
        sys.exit(1)
    source = f"{config.source}, from {origin}" if config.source else "embedded default"
    click.echo(
        f"configuration OK ({source}): AE {config.node.ae_title} on {config.node.host}:{config.node.port}"
    )
    click.echo(f"  data_dir      {config.node.data_dir}")
    click.echo(f"  weights       {config.engine.weights_dir}")
    click.echo(f"  engine        {_engine_summary(config)}")
    click.echo(f"  output        {', '.join(config.output.series)}")
    click.echo(f"  tls           {'on' if config.security.tls_enabled else 'off'}")
    names = ", ".join(f"{d.name} ({d.address})" for d in config.destinations)
    click.echo(f"  destinations  {names or 'none: results stay in data_dir'}")


def _engine_problems(config: Config, verify: bool) -> list[str]:
    """What would stop ``start`` at the engine: weights missing, unreadable or damaged, no such device."""
    from ct2pet_node.engine.weights import load_manifest, verify_weights

    problems = []
    weights_dir = config.engine.weights_dir
    try:
        manifest = load_manifest(weights_dir)
    except Ct2PetError as error:
        problems.append(f"[engine] weights: {error}; import or train weights, or name another directory")
    else:
        if verify:
            problems += [f"[engine] weights: {problem}" for problem in verify_weights(weights_dir)]
        else:
            missing = [name for name in manifest.files if not (weights_dir / name).is_file()]
            problems += [f"[engine] weights: {weights_dir / name} is missing" for name in missing]
    device = config.engine.device
    if device not in ("auto", "cpu"):
        from ct2pet_node.engine.device import resolve_device

        try:
            resolve_device(device)
        except Ct2PetError as error:
            problems.append(f"[engine] device: {error}")
    return problems


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
