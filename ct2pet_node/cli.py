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
from ct2pet_node.config import ENGINE_COUNTS, ENGINE_SWITCHES, Config, load_config
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
@click.option(
    "--log-json/--log-console", default=None, help="Force the log format (default: JSON unless a TTY)."
)
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


def _print_json(value: object) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


# --- running ----------------------------------------------------------------------------------


@main.command()
@config_option
def start(config_path: Path | None) -> None:
    """Run the node in the foreground: SCP, router, engine worker, sender, admin endpoint."""
    from ct2pet_node import app

    config = _load(config_path)
    with _errors_to_exit():
        app.run(config)


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON status.")
def status(config_path: Path | None, as_json: bool) -> None:
    """Ask the running node (over its admin endpoint) how it is doing."""
    from ct2pet_node.service.admin import fetch_status

    config = _load(config_path)
    with _errors_to_exit():
        report = fetch_status(config.admin.listen_host, config.admin.listen_port, config.admin.token)
    if as_json:
        _print_json(report)
        return
    from ct2pet_node.service.status_text import render_status

    click.echo(render_status(report))


@main.command()
@config_option
@click.argument("destination")
def echo(config_path: Path | None, destination: str) -> None:
    """C-ECHO a configured destination by name."""
    from ct2pet_node.net.scu import ScuTimeouts
    from ct2pet_node.net.scu import echo as c_echo

    config = _load(config_path)
    with _errors_to_exit():
        target = config.destination(destination)
        result = c_echo(
            target, config.node.ae_title, ScuTimeouts.uniform(config.node.network_timeout_seconds)
        )
    click.echo(
        f"{target.name} ({target.ae_title}@{target.host}:{target.port}): C-ECHO success, "
        f"association {result.associate_seconds * 1000:.0f} ms, echo {result.echo_seconds * 1000:.0f} ms"
    )


# --- jobs -------------------------------------------------------------------------------------


@main.group()
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

    config = _load(config_path)
    with _errors_to_exit():
        wanted = [_job_state(state) for state in states] or None
        with JobStore.open(config.node.data_dir) as store:
            found = store.list_jobs(wanted)
    if as_json:
        _print_json([job.to_json() for job in found])
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
@click.argument("job_id", type=int)
def jobs_show(config_path: Path | None, job_id: int) -> None:
    """Everything known about one job: state, reason, instances, results and deliveries."""
    from ct2pet_node.spool.jobstore import JobStore
    from ct2pet_node.spool.outbox import Outbox

    config = _load(config_path)
    with _errors_to_exit():
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
    _print_json(report)


def _no_job(job_id: int) -> Ct2PetError:
    from ct2pet_node.errors import InputError

    return InputError(f"no job with id {job_id}; `ct2pet-node jobs list` shows the jobs")


@jobs.command("force")
@config_option
@click.argument("series_uid")
def jobs_force(config_path: Path | None, series_uid: str) -> None:
    """Declare a series complete now instead of waiting for it to go quiet."""
    from ct2pet_node.spool.jobstore import JobStore

    config = _load(config_path)
    with _errors_to_exit(), JobStore.open(config.node.data_dir) as store:
        job = store.request_force(series_uid)
    click.echo(
        f"job {job.id} ({job.state.value}): completion requested; the running node acts within seconds"
    )


@jobs.command("retry")
@config_option
@click.argument("job_id", type=int)
def jobs_retry(config_path: Path | None, job_id: int) -> None:
    """Replay a dead-lettered delivery, or run a failed job again."""
    from ct2pet_node.service.retry import retry_job

    config = _load(config_path)
    with _errors_to_exit():
        message = retry_job(config, job_id)
    click.echo(message)


# --- weights ----------------------------------------------------------------------------------


@main.group()
def weights() -> None:
    """Model weights: import the CPDM release, list and verify weights directories."""


_existing_file = click.Path(exists=True, dir_okay=False, path_type=Path)


@weights.command("import")
@click.option("--config", "config_yaml", type=_existing_file, required=True, help="The release's YAML.")
@click.option("--cpdm", type=_existing_file, required=True, help="The CPDM runner checkpoint (.pth).")
@click.option("--vqgan", type=_existing_file, required=True, help="The VQGAN Lightning checkpoint (.ckpt).")
@click.option("--segmentation", type=_existing_file, required=True, help="The segmentation checkpoint.")
@click.option("--segmentation-spec", type=_existing_file, default=None, help="JSON constructor of the U-Net.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing weights directory.")
def weights_import(
    config_yaml: Path,
    cpdm: Path,
    vqgan: Path,
    segmentation: Path,
    segmentation_spec: Path | None,
    out_dir: Path,
    overwrite: bool,
) -> None:
    """Convert the authors' release files into our format (no code from the files is executed)."""
    from ct2pet_node.engine.weights import import_release

    with _errors_to_exit():
        manifest = import_release(
            config_yaml, cpdm, vqgan, segmentation, segmentation_spec, out_dir=out_dir, overwrite=overwrite
        )
    click.echo(f"imported {manifest.model_id} into {out_dir}")
    click.echo(f"  output units: {manifest.output_units} ({manifest.calibration})")


@weights.command("list")
@config_option
@click.argument("directories", nargs=-1, type=click.Path(path_type=Path))
def weights_list(config_path: Path | None, directories: tuple[Path, ...]) -> None:
    """Weights directories in weights/, the configured one, and any DIRECTORIES given."""
    from ct2pet_node.config import WEIGHTS_ROOT
    from ct2pet_node.engine.weights import find_weights

    config = _load(config_path)
    configured = config.engine.weights_dir
    found = find_weights([WEIGHTS_ROOT, configured, *directories])
    if not found:
        click.echo("no weights found; import the release with `ct2pet-node weights import`")
        return
    for path, manifest in found:
        marker = "*" if path.resolve() == configured.resolve() else " "
        if isinstance(manifest, str):
            click.echo(f"{marker} {path}  UNUSABLE: {manifest}")
        else:
            click.echo(f"{marker} {path}  {manifest.model_id}  units {manifest.output_units}")
    click.echo("(* = configured in [engine] weights)")


@weights.command("verify")
@click.argument("directory", type=click.Path(path_type=Path))
def weights_verify(directory: Path) -> None:
    """Check every file of a weights directory against its manifest's sha256."""
    from ct2pet_node.engine.weights import verify_weights

    problems = verify_weights(directory)
    if problems:
        for problem in problems:
            click.echo(f"  - {problem}", err=True)
        sys.exit(1)
    click.echo(f"{directory}: every file matches its checksum")


# --- offline ----------------------------------------------------------------------------------


@main.command()
@config_option
@click.argument("ct_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--weights",
    "weights_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="A weights directory (default: [engine] weights).",
)
@click.option("--steps", type=int, default=None, help="Sampling steps (default: [engine] steps).")
@click.option("--seed", type=int, default=None, help="Noise seed (default: [engine] seed).")
def convert(
    config_path: Path | None,
    ct_dir: Path,
    out_dir: Path,
    weights_dir: Path | None,
    steps: int | None,
    seed: int | None,
) -> None:
    """Convert every CT series under CT_DIR into synthetic PET under OUT_DIR, with no network."""
    import dataclasses

    from tqdm import tqdm

    from ct2pet_node.app import load_translator
    from ct2pet_node.service.convert import convert_folder

    config = _load(config_path)
    engine = dataclasses.replace(
        config.engine,
        weights=str(weights_dir) if weights_dir else config.engine.weights,
        steps=config.engine.steps if steps is None else steps,
        seed=config.engine.seed if seed is None else seed,
    )
    config = dataclasses.replace(config, engine=engine)
    bars: list[Any] = []

    def progress(series_uid: str, slices: int) -> Callable[[int, int], None]:
        bar = tqdm(total=None, desc=f"{slices} slices", unit="slice-step", file=sys.stderr)
        bars.append(bar)

        def update(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        return update

    with _errors_to_exit():
        results = convert_folder(config, ct_dir, out_dir, load_translator(config), progress)
    for bar in bars:
        bar.close()
    refused = [r for r in results if r.refused]
    for result in results:
        if result.refused:
            click.echo(f"REFUSED {result.series_uid}: {result.refused}")
        for series in result.written:
            click.echo(f"wrote {len(series.paths)} {series.kind} instances to {series.paths[0].parent}")
    if len(refused) == len(results):
        sys.exit(1)


# --- training ---------------------------------------------------------------------------------


@main.group()
def dataset() -> None:
    """Paired PET/CT datasets for training and evaluation."""


_existing_dir = click.Path(exists=True, file_okay=False, path_type=Path)


@dataset.command("build")
@click.option("--ct", "ct_dir", type=_existing_dir, required=True, help="Folder of one CT series.")
@click.option("--pet", "pet_dir", type=_existing_dir, required=True, help="Folder of its PET series.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--size", type=int, default=256, show_default=True, help="In-plane model grid size.")
@click.option("--overwrite", is_flag=True, help="Replace this study if the dataset already holds it.")
def dataset_build(ct_dir: Path, pet_dir: Path, out_dir: Path, size: int, overwrite: bool) -> None:
    """Add one PET/CT study (CT in HU, PET in SUVbw, paired in patient space) to a dataset."""
    from ct2pet_node.training.dataset import build_dataset

    with _errors_to_exit():
        study = build_dataset(ct_dir, pet_dir, out_dir, size=size, overwrite=overwrite)
    click.echo(f"added {study.n_slices} paired slices of CT series {study.ct_series_uid} to {out_dir}")


@main.command()
@click.option("--config", "config_path", type=_existing_file, required=True, help="TRAIN.toml.")
@click.option("--data", "data_dir", type=_existing_dir, required=True, help="A dataset from `dataset build`.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--stop-after", type=int, default=None, help="Stop (checkpointed) after this many steps.")
def train(config_path: Path, data_dir: Path, out_dir: Path, stop_after: int | None) -> None:
    """Train a CPDM model (VQGAN, attention U-Net, bridge UNet); re-running resumes."""
    from ct2pet_node.training.train import train as run_training

    with _errors_to_exit():
        outcome = run_training(config_path, data_dir, out_dir, progress=True, stop_after=stop_after)
    if outcome.finished:
        click.echo(f"trained {outcome.model_id} into {outcome.weights_dir}")
    else:
        click.echo(f"stopped after {outcome.steps_run} steps; run the same command again to resume")


@main.command()
@click.option("--weights", "weights_dir", type=_existing_dir, required=True)
@click.option("--ct", "ct_dir", type=_existing_dir, required=True, help="Folder of the CT series.")
@click.option("--pet", "pet_dir", type=_existing_dir, required=True, help="Folder of the real PET series.")
@click.option("--slices", default=None, help="A:B, slices in position order (B excluded); default all.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--steps", type=int, default=None, help="Sampling steps (default: the model's).")
@click.option("--seed", type=int, default=0, show_default=True)
def evaluate(
    weights_dir: Path,
    ct_dir: Path,
    pet_dir: Path,
    slices: str | None,
    out_dir: Path,
    steps: int | None,
    seed: int,
) -> None:
    """Compare synthetic with real PET: metrics.json (model and HU-lookup baseline) and PNG panels."""
    from ct2pet_node.training.evaluate import evaluate as run_evaluation

    with _errors_to_exit():
        report = run_evaluation(weights_dir, ct_dir, pet_dir, slices, out_dir, steps=steps, seed=seed)
    click.echo(f"wrote {out_dir}/metrics.json and panels")
    for name in ("model", "baseline"):
        figures = (report.get(name) or {}).get("mean", {})
        if figures:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in figures.items() if isinstance(v, int | float))
            click.echo(f"  {name}: {shown}")
