"""``purge [--dry-run]``: apply ``[retention]`` now, the same pass the running node makes every interval."""

from __future__ import annotations

from pathlib import Path

import click

from ct2pet_node.cli.common import config_option, errors_to_exit, load_or_exit


@click.command()
@config_option
@click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing.")
def purge(config_path: Path | None, dry_run: bool) -> None:
    """Remove the files of finished jobs kept longer than [retention] says; job records stay.

    Safe beside a running node: jobs in progress, failed, or not delivered to
    every destination keep their files.
    """
    from ct2pet_node.service.retention import Retention
    from ct2pet_node.spool.jobstore import JobStore
    from ct2pet_node.spool.outbox import Outbox

    config = load_or_exit(config_path)
    with errors_to_exit(), JobStore.open(config.node.data_dir) as store:
        outbox = Outbox.open(config.node.data_dir)
        try:
            purged = Retention(config, store, outbox).apply(dry_run=dry_run)
        finally:
            outbox.close()
    verb = "would remove" if dry_run else "removed"
    for purge_ in purged:
        click.echo(f"{verb} {purge_.describe()}")
    total = sum(p.bytes for p in purged) / 1e6
    if not purged:
        click.echo("nothing to remove: no finished job's files are past [retention]")
    else:
        click.echo(
            f"{verb} the files of {len(purged)} jobs, {total:.1f} MB" + (" (dry run)" if dry_run else "")
        )
