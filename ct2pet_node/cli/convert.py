"""``convert``: every CT series of a folder into synthetic PET, offline, with no network."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ct2pet_node.cli.common import config_option, errors_to_exit, load_or_exit


@click.command()
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

    config = load_or_exit(config_path)
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

    with errors_to_exit():
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
