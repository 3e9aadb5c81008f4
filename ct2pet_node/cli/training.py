"""Training and its data: ``dataset build``, ``train`` and ``evaluate`` (torch only inside the commands)."""

from __future__ import annotations

from pathlib import Path

import click

from ct2pet_node.cli.common import errors_to_exit, existing_dir, existing_file


@click.group()
def dataset() -> None:
    """Paired PET/CT datasets for training and evaluation."""


@dataset.command("build")
@click.option("--ct", "ct_dir", type=existing_dir, required=True, help="Folder of one CT series.")
@click.option("--pet", "pet_dir", type=existing_dir, required=True, help="Folder of its PET series.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--size", type=int, default=256, show_default=True, help="In-plane model grid size.")
@click.option(
    "--field-of-view-mm",
    type=float,
    default=500.0,
    show_default=True,
    help="In-plane field of view of the model grid (the release's and the demo's: 500); "
    "CTs at another are padded with air or cropped around their centre.",
)
@click.option("--overwrite", is_flag=True, help="Replace this study if the dataset already holds it.")
def dataset_build(
    ct_dir: Path, pet_dir: Path, out_dir: Path, size: int, field_of_view_mm: float, overwrite: bool
) -> None:
    """Add one PET/CT study (CT in HU, PET in SUVbw, paired in patient space) to a dataset.

    Every CT is shown head-first supine at the dataset's pixel size, as the node shows it to a model.
    """
    from ct2pet_node.training.dataset import build_dataset

    with errors_to_exit():
        study = build_dataset(
            ct_dir, pet_dir, out_dir, size=size, field_of_view_mm=field_of_view_mm, overwrite=overwrite
        )
    click.echo(f"added {study.n_slices} paired slices of CT series {study.ct_series_uid} to {out_dir}")
    click.echo(f"  grid: {study.grid_mapping}")


@click.command()
@click.option(
    "--train-config",
    "--config",
    "config_path",
    type=existing_file,
    required=True,
    help="The training TOML (e.g. config/train-demo.toml); --config is the older spelling.",
)
@click.option("--data", "data_dir", type=existing_dir, required=True, help="A dataset from `dataset build`.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--stop-after", type=int, default=None, help="Stop (checkpointed) after this many steps.")
def train(config_path: Path, data_dir: Path, out_dir: Path, stop_after: int | None) -> None:
    """Train a CPDM model (VQGAN, attention U-Net, bridge UNet); re-running resumes."""
    from ct2pet_node.training.train import train as run_training

    with errors_to_exit():
        outcome = run_training(config_path, data_dir, out_dir, progress=True, stop_after=stop_after)
    if outcome.finished:
        click.echo(f"trained {outcome.model_id} into {outcome.weights_dir}")
    else:
        click.echo(f"stopped after {outcome.steps_run} steps; run the same command again to resume")


@click.command()
@click.option("--weights", "weights_dir", type=existing_dir, required=True)
@click.option("--ct", "ct_dir", type=existing_dir, required=True, help="Folder of the CT series.")
@click.option("--pet", "pet_dir", type=existing_dir, required=True, help="Folder of the real PET series.")
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

    with errors_to_exit():
        report = run_evaluation(weights_dir, ct_dir, pet_dir, slices, out_dir, steps=steps, seed=seed)
    click.echo(f"wrote {out_dir}/metrics.json and panels")
    for name in ("model", "baseline"):
        figures = (report.get(name) or {}).get("mean", {})
        if figures:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in figures.items() if isinstance(v, int | float))
            click.echo(f"  {name}: {shown}")
