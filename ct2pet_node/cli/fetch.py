"""``fetch``: pull a study's CT series from a ``[[sources]]`` PACS into the running node.

The command asks the running node (``POST /fetch`` on its admin endpoint)
rather than retrieving itself: a C-MOVE sends to the node's storage SCP, and
the job must run in the node as if the series had been pushed. It prints
UIDs, series numbers and counts only; a PACS's answer also carries patient
names, which never reach the terminal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ct2pet_node.cli.common import config_option, errors_to_exit, load_or_exit, print_json


@click.command()
@config_option
@click.option("--source", "source", required=True, help="The [[sources]] name of the PACS to pull from.")
@click.option("--study", "study_uid", required=True, help="Study Instance UID.")
@click.option("--series", "series_uid", default=None, help="Only this CT series of the study (its UID).")
@click.option("--dry-run", is_flag=True, help="List the CT series it would take; retrieve nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the node's JSON answer.")
def fetch(
    config_path: Path | None,
    source: str,
    study_uid: str,
    series_uid: str | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Find a study's CT series at a source and retrieve them into the running node.

    The series are found by C-FIND or QIDO-RS and retrieved by C-MOVE, C-GET or
    WADO-RS (as the source is configured); each then becomes a job as if it
    had been pushed. Exit code 2 when the source is unknown or unreachable or
    the study has no CT series.
    """
    from ct2pet_node.service.admin import request_fetch

    config = load_or_exit(config_path)
    body: dict[str, Any] = {"source": source, "study": study_uid, "dry_run": dry_run}
    if series_uid is not None:
        body["series"] = series_uid
    with errors_to_exit():
        answer = request_fetch(config.admin.listen_host, config.admin.listen_port, config.admin.token, body)
    if as_json:
        print_json(answer)
        return
    click.echo(_render(answer))


def _render(answer: dict[str, Any]) -> str:
    series = answer.get("series", [])
    verb = "would take" if answer.get("dry_run") else "took"
    lines = [
        f"{verb} {len(series)} CT series of study {answer.get('study_uid')} from {answer.get('source')} "
        f"by {answer.get('method')}:"
    ]
    for found in series:
        number = found.get("series_number")
        offered = found.get("instances")
        line = f"  {found.get('series_uid')}  #{number if number is not None else '-'}  "
        line += f"{offered if offered is not None else '?'} instances"
        if found.get("received") is not None:
            line += f", {found['received']} received"
        if found.get("job_id") is not None:
            line += f", job {found['job_id']}"
        lines.append(line)
    return "\n".join(lines)
