"""Running the node and talking to it: ``start``, ``status`` and ``echo``."""

from __future__ import annotations

from pathlib import Path

import click

from ct2pet_node.cli.common import config_option, errors_to_exit, load_or_exit, print_json


@click.command()
@config_option
def start(config_path: Path | None) -> None:
    """Run the node in the foreground: SCP, router, engine worker, sender, admin endpoint."""
    from ct2pet_node import app

    config = load_or_exit(config_path)
    with errors_to_exit():
        app.run(config)


@click.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON status.")
def status(config_path: Path | None, as_json: bool) -> None:
    """Ask the running node (over its admin endpoint) how it is doing."""
    from ct2pet_node.service.admin import fetch_status

    config = load_or_exit(config_path)
    with errors_to_exit():
        report = fetch_status(config.admin.listen_host, config.admin.listen_port, config.admin.token)
    if as_json:
        print_json(report)
        return
    from ct2pet_node.service.status import StatusReport
    from ct2pet_node.service.status_text import render_status

    click.echo(render_status(StatusReport.from_json(report)))


@click.command()
@config_option
@click.argument("destination")
def echo(config_path: Path | None, destination: str) -> None:
    """C-ECHO a configured destination by name; a DICOMweb one answers a QIDO-RS query instead."""
    config = load_or_exit(config_path)
    timeout = config.node.network_timeout_seconds
    with errors_to_exit():
        target = config.destination(destination)
        if target.dicomweb is not None:
            from ct2pet_node.net.dicomweb import echo as qido_echo

            answer = qido_echo(target.dicomweb, timeout)
            click.echo(
                f"{target.name} ({target.address}): QIDO-RS success, "
                f"HTTP {answer.status} in {answer.seconds * 1000:.0f} ms"
            )
            return
        from ct2pet_node.net.scu import ScuTimeouts
        from ct2pet_node.net.scu import echo as c_echo

        result = c_echo(target, config.node.ae_title, ScuTimeouts.uniform(timeout))
    click.echo(
        f"{target.name} ({target.address}): C-ECHO success, "
        f"association {result.associate_seconds * 1000:.0f} ms, echo {result.echo_seconds * 1000:.0f} ms"
    )
