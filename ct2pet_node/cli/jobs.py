"""``jobs list|show|force|retry|resend|rerun``: the job store of a node, read and nudged from outside it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ct2pet_node.cli.common import config_option, errors_to_exit, load_or_exit, print_json
from ct2pet_node.errors import Ct2PetError


@click.group()
def jobs() -> None:
    """Jobs: one per received CT series."""


@jobs.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True, help="A JSON array of jobs.")
@click.option("--state", "states", multiple=True, help="Only jobs in this state (repeatable).")
def jobs_list(config_path: Path | None, as_json: bool, states: tuple[str, ...]) -> None:
    """List jobs, newest first."""
    from ct2pet_node.domain.jobs import JobState
    from ct2pet_node.spool.jobstore import JobStore

    config = load_or_exit(config_path)
    with errors_to_exit():
        wanted = [_job_state(state) for state in states] or None
        with JobStore.open(config.node.data_dir) as store:
            found = store.list_jobs(wanted)[::-1]
    if as_json:
        print_json([job.to_json() for job in found])
        return
    if not found:
        click.echo("no jobs")
        return
    click.echo(f"{'ID':>5}  {'STATE':<10}  {'SLICES':>6}  {'SERIES UID':<64}  REASON")
    for job in found:
        state = job.state.value if isinstance(job.state, JobState) else str(job.state)
        click.echo(
            f"{job.id:>5}  {state:<10}  {job.n_instances:>6}  {job.series_uid:<64}  {job.reason or ''}"
        )


def _job_state(text: str) -> Any:
    from ct2pet_node.domain.jobs import JobState
    from ct2pet_node.errors import InputError

    try:
        return JobState(text)
    except ValueError:
        known = ", ".join(state.value for state in JobState)
        raise InputError(f"unknown job state {text!r}; use one of {known}") from None


@jobs.command("show")
@config_option
@click.option("--json", "as_json", is_flag=True, help="The job as JSON.")
@click.argument("job_id", type=int)
def jobs_show(config_path: Path | None, job_id: int, as_json: bool) -> None:
    """Everything known about one job: state, reason, progress, instances, results and deliveries."""
    from ct2pet_node.service.job_view import render_job, show_progress
    from ct2pet_node.spool.jobstore import JobStore
    from ct2pet_node.spool.outbox import Outbox

    config = load_or_exit(config_path)
    with errors_to_exit():
        with JobStore.open(config.node.data_dir) as store:
            job = store.get_job(job_id)
            if job is None:
                raise _no_job(job_id)
            problems = store.instance_problems(job.series_uid)
        outbox = Outbox.open(config.node.data_dir)
        try:
            deliveries = outbox.entries(job_id)
        finally:
            outbox.close()
    report = job.to_json()
    report["instance_problems"] = problems
    report["deliveries"] = [
        {
            "destination": entry.destination,
            "state": entry.state.value,
            "attempts": entry.attempts,
            "files": len(entry.files),
            "delivered": sum(1 for f in entry.files if f.delivered),
            "next_attempt_at": entry.next_attempt_at,
            "last_error": entry.last_error,
        }
        for entry in deliveries
    ]
    if not config.destinations and report.get("details", {}):
        report["where"] = "no destination configured: results stay in details.results_dir"
    with errors_to_exit():
        counts = [(sum(1 for f in entry.files if f.delivered), len(entry.files)) for entry in deliveries]
        report["progress"] = show_progress(config, job, counts).to_json()
    if as_json:
        print_json(report)
    else:
        click.echo(render_job(report))


def _no_job(job_id: int) -> Ct2PetError:
    from ct2pet_node.errors import InputError

    return InputError(f"no job with id {job_id}; `ct2pet-node jobs list` shows the jobs")


@jobs.command("force")
@config_option
@click.argument("series_uid")
def jobs_force(config_path: Path | None, series_uid: str) -> None:
    """Declare a series complete now instead of waiting for it to go quiet."""
    from ct2pet_node.domain.jobs import force_refusal
    from ct2pet_node.errors import InputError
    from ct2pet_node.spool.jobstore import JobStore

    config = load_or_exit(config_path)
    with errors_to_exit():
        with JobStore.open(config.node.data_dir) as store:
            job = store.request_force(series_uid)
        if (refusal := force_refusal(job)) is not None:
            raise InputError(refusal)
    click.echo(
        f"job {job.id} ({job.state.value}): completion requested; the running node acts within seconds"
    )


@jobs.command("retry")
@config_option
@click.argument("job_id", type=int)
def jobs_retry(config_path: Path | None, job_id: int) -> None:
    """Replay a dead-lettered delivery, or run a failed job again."""
    from ct2pet_node.service.retry import retry_job

    config = load_or_exit(config_path)
    with errors_to_exit():
        message = retry_job(config, job_id)
    click.echo(message)


@jobs.command("resend")
@config_option
@click.argument("job_id", type=int)
@click.option(
    "--to",
    "destination",
    default=None,
    help="Only this destination (a [[destinations]] name), e.g. one added after the job was done. "
    "Default: every configured destination, including those that have the results already.",
)
def jobs_resend(config_path: Path | None, job_id: int, destination: str | None) -> None:
    """Deliver a done job's existing results again, through the outbox."""
    from ct2pet_node.service.redo import resend_job

    config = load_or_exit(config_path)
    with errors_to_exit():
        message = resend_job(config, job_id, destination)
    click.echo(message)


@jobs.command("rerun")
@config_option
@click.argument("job_id", type=int)
def jobs_rerun(config_path: Path | None, job_id: int) -> None:
    """Translate a done or failed job's CT again (e.g. after new weights) and deliver the results.

    The same model id makes the same output UIDs (the PACS replaces the series); another model id
    makes a new series.
    """
    from ct2pet_node.service.redo import rerun_job

    config = load_or_exit(config_path)
    with errors_to_exit():
        message = rerun_job(config, job_id)
    click.echo(message)
