"""The ``ct2pet-node`` command line: every command a thin call into the package.

Heavy modules (torch through the engine, pynetdicom through net/) are
imported inside the commands that need them, so ``ct2pet-node --help`` and
``jobs list`` start fast and never load torch.

This module holds the top-level group ``main`` (the console script); each
command group lives in a module of its own and is added to ``main`` here.
"""

from __future__ import annotations

import click

from ct2pet_node import __version__
from ct2pet_node.cli import config, convert, fetch, jobs, node, retention, training, weights
from ct2pet_node.logging_setup import configure_logging

# Commands that run for a long time log their events at info by default; every other command
# answers on stdout and keeps its log to warnings, unless asked (-v) for more.
SERVICE_COMMANDS = frozenset({"start", "convert", "train", "dataset", "evaluate"})


@click.group()
@click.version_option(__version__, prog_name="ct2pet-node")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default=None,
    help="debug may show more of third-party messages; patient names and IDs are never logged by us. "
    "Default: info for start, convert and training; warning for the other commands.",
)
@click.option("-v", "--verbose", count=True, help="More log events on stderr (-v info, -vv debug).")
@click.option(
    "--log-json/--log-console", default=None, help="Force the log format (default: JSON unless a TTY)."
)
@click.pass_context
def main(ctx: click.Context, log_level: str | None, verbose: int, log_json: bool | None) -> None:
    """A DICOM node that turns CT series into synthetic PET series (CPDM)."""
    if log_level is None:
        quiet = "info" if ctx.invoked_subcommand in SERVICE_COMMANDS else "warning"
        log_level = {0: quiet, 1: "info"}.get(verbose, "debug")
    configure_logging(log_level, log_json)


# The command modules stay attributes of this package (ct2pet_node.cli.jobs is the module);
# their commands join the group here.
main.add_command(config.config_group)
main.add_command(node.start)
main.add_command(node.status)
main.add_command(node.echo)
main.add_command(jobs.jobs)
main.add_command(fetch.fetch)
main.add_command(retention.purge)
main.add_command(weights.weights)
main.add_command(convert.convert)
main.add_command(training.dataset)
main.add_command(training.train)
main.add_command(training.evaluate)
