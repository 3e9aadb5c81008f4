"""``weights import|list|verify``: the CPDM release converted to our format, and weights directories checked."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ct2pet_node.cli.common import config_option, errors_to_exit, existing_file, load_or_exit


@click.group()
def weights() -> None:
    """Model weights: import the CPDM release, list and verify weights directories."""


@weights.command("import")
@click.option(
    "--release-config",
    "--config",
    "config_yaml",
    type=existing_file,
    required=True,
    help="The release's YAML config; --config is the older spelling.",
)
@click.option("--cpdm", type=existing_file, required=True, help="The CPDM runner checkpoint (.pth).")
@click.option("--vqgan", type=existing_file, required=True, help="The VQGAN Lightning checkpoint (.ckpt).")
@click.option("--segmentation", type=existing_file, required=True, help="The segmentation checkpoint.")
@click.option(
    "--segmentation-spec",
    type=existing_file,
    default=None,
    help="JSON constructor of the U-Net; optional (read from the checkpoint), checked when given.",
)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing weights directory.")
@click.option(
    "--field-of-view-mm",
    type=click.FloatRange(min=1.0),
    default=None,
    help="In-plane field of view of the training slices at the model's matrix "
    "(default: the release sample's 500 mm, recorded as assumed).",
)
def weights_import(
    config_yaml: Path,
    cpdm: Path,
    vqgan: Path,
    segmentation: Path,
    segmentation_spec: Path | None,
    out_dir: Path,
    overwrite: bool,
    field_of_view_mm: float | None,
) -> None:
    """Convert the authors' release files into our format (no code from the files is executed)."""
    from ct2pet_node.engine.release import import_release_files

    with errors_to_exit():
        manifest = import_release_files(
            config_yaml,
            cpdm,
            vqgan,
            segmentation,
            segmentation_spec,
            out_dir=out_dir,
            overwrite=overwrite,
            field_of_view_mm=field_of_view_mm,
        )
    click.echo(f"imported {manifest.model_id} into {out_dir}")
    click.echo(f"  output units: {manifest.output_units} ({manifest.calibration})")
    frame = manifest.frame
    assumed = " (assumed)" if frame.assumed else ""
    click.echo(
        f"  training slices: {frame.matrix}x{frame.matrix} over {frame.field_of_view_mm:g} mm{assumed}, "
        "head-first supine"
    )


@weights.command("list")
@config_option
@click.argument("directories", nargs=-1, type=click.Path(path_type=Path))
def weights_list(config_path: Path | None, directories: tuple[Path, ...]) -> None:
    """Weights directories in weights/, the configured one, and any DIRECTORIES given."""
    from ct2pet_node.config import WEIGHTS_ROOT
    from ct2pet_node.engine.weights import find_weights

    config = load_or_exit(config_path)
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
