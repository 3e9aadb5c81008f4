"""``convert``: every CT series of a folder (or, ``--recursive``, of an archive) into synthetic PET, offline."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ct2pet_node.cli.common import config_option, errors_to_exit, load_or_exit
from ct2pet_node.config import Config

if TYPE_CHECKING:
    from ct2pet_node.service.archive import ArchiveSummary
    from ct2pet_node.service.translator import Translator


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
@click.option(
    "--recursive",
    is_flag=True,
    help="CT_DIR is an archive of many studies: results go to OUT_DIR/<study UID>/<series UID>/, "
    "a summary to OUT_DIR/summary.json and summary.txt, and a rerun skips finished series.",
)
@click.option(
    "--ray",
    "ray_address",
    metavar="HOST:PORT",
    default=None,
    help='Translate on the Ray cluster at this head address (as [engine] backend = "ray" with '
    "[engine.ray] address; the other [engine.ray] settings apply).",
)
def convert(
    config_path: Path | None,
    ct_dir: Path,
    out_dir: Path,
    weights_dir: Path | None,
    steps: int | None,
    seed: int | None,
    recursive: bool,
    ray_address: str | None,
) -> None:
    """Convert every CT series under CT_DIR into synthetic PET under OUT_DIR, with no network."""
    from ct2pet_node.app import load_translator

    config = _with_options(load_or_exit(config_path), weights_dir, steps, seed, ray_address)
    with errors_to_exit():
        translator = load_translator(config)
    try:
        if recursive:
            _convert_archive(config, ct_dir, out_dir, translator)
        else:
            _convert_folder(config, ct_dir, out_dir, translator)
    finally:
        close = getattr(translator, "close", None)
        if close is not None:
            close()


def _with_options(
    config: Config, weights_dir: Path | None, steps: int | None, seed: int | None, ray_address: str | None
) -> Config:
    import dataclasses

    from ct2pet_node.config import with_ray_address

    engine = dataclasses.replace(
        config.engine,
        weights=str(weights_dir) if weights_dir else config.engine.weights,
        steps=config.engine.steps if steps is None else steps,
        seed=config.engine.seed if seed is None else seed,
    )
    if ray_address is not None:
        with errors_to_exit():
            ray = with_ray_address(engine.ray, ray_address)
        engine = dataclasses.replace(engine, backend="ray", ray=ray)
    return dataclasses.replace(config, engine=engine)


def _convert_folder(config: Config, ct_dir: Path, out_dir: Path, translator: Translator) -> None:
    from tqdm import tqdm

    from ct2pet_node.service.convert import convert_folder

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
        results = convert_folder(config, ct_dir, out_dir, translator, progress)
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


class _SliceBar:
    """One bar over every slice the run translates, on stderr (click shows only its label off a TTY)."""

    def __init__(self, stack: contextlib.ExitStack) -> None:
        self._stack = stack
        self._bar: Any = None
        self._shown = 0

    def begin(self, total_slices: int) -> None:
        if total_slices > 0:
            label = f"translating {total_slices} slices"
            bar = click.progressbar(length=total_slices, label=label, file=sys.stderr, show_pos=True)
            self._bar = self._stack.enter_context(bar)

    def update(self, done_slices: float) -> None:
        step = int(done_slices) - self._shown
        if self._bar is not None and step > 0:
            self._bar.update(step)
            self._shown += step


def _convert_archive(config: Config, in_dir: Path, out_dir: Path, translator: Translator) -> None:
    from ct2pet_node.service.archive_run import SUMMARY_JSON, convert_archive

    with errors_to_exit(), contextlib.ExitStack() as stack:
        summary = convert_archive(config, in_dir, out_dir, translator, _SliceBar(stack))
    click.echo(summary.as_text(), nl=False)
    click.echo(f"summary: {out_dir / SUMMARY_JSON}")
    sys.exit(_archive_exit_code(summary))


def _archive_exit_code(summary: ArchiveSummary) -> int:
    """0 when every CT series that qualified has its results; 1 when one failed or none had any."""
    counts = summary.counts()
    finished = counts["converted"] + counts["already converted"]
    return 1 if counts["failed"] or not finished else 0
