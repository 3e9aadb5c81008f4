"""``ct2pet-node convert``: the receive-side checks, the engine and the writer on a folder.

No network and no job store: every CT series found under the folder is
qualified exactly as the node would qualify it, translated, and written to
``OUT_DIR/<CT series UID>/<kind>/``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog

from ct2pet_node.config import Config
from ct2pet_node.dicom.volume import build_ct_volume, scan_folder
from ct2pet_node.domain.volume import CtVolume
from ct2pet_node.errors import EngineError, InputError, SeriesRefused
from ct2pet_node.routing.qualify import qualify_series
from ct2pet_node.service.checkpoints import chunk_ranges
from ct2pet_node.service.synthesis import Sampling, WrittenSeries, map_to_model, write_outputs
from ct2pet_node.service.translator import SpreadsChunks, Translator
from ct2pet_node.service.worker import CHUNK_SLICES

log = structlog.get_logger(__name__)

ProgressFactory = Callable[[str, int], Callable[[int, int], None]]


@dataclass(frozen=True, slots=True)
class ConvertResult:
    """What became of one CT series found in the folder."""

    series_uid: str
    slices: int
    written: tuple[WrittenSeries, ...]
    refused: str | None


def convert_folder(
    config: Config,
    ct_dir: Path,
    out_dir: Path,
    translator: Translator,
    progress: ProgressFactory | None = None,
) -> list[ConvertResult]:
    """Convert every CT series under ``ct_dir``; refused series are reported, not raised."""
    found = scan_folder(ct_dir)
    if not found:
        raise InputError(f"no DICOM files found under {ct_dir}; give the folder holding the CT series")
    sampling = Sampling.for_model(config.engine, translator.default_steps, translator.default_eta)
    results: list[ConvertResult] = []
    for series_uid, headers in sorted(found.items()):
        try:
            ct = build_ct_volume(qualify_series(headers, config.routing))
        except SeriesRefused as refusal:
            log.warning("series_refused", series_uid=series_uid, reason=str(refusal))
            results.append(ConvertResult(series_uid, len(headers), (), str(refusal)))
            continue
        callback = progress(series_uid, ct.hu.shape[0]) if progress else None
        reference = next(h.path for h in headers if h.sop_instance_uid == ct.sources[0].sop_instance_uid)
        written = convert_volume(
            config, ct, reference, translator, sampling, out_dir / series_uid, progress=callback
        )
        log.info("series_converted", series_uid=series_uid, slices=ct.hu.shape[0])
        results.append(ConvertResult(series_uid, ct.hu.shape[0], tuple(written), None))
    return results


def convert_volume(
    config: Config,
    ct: CtVolume,
    reference_header: Path,
    translator: Translator,
    sampling: Sampling,
    out_root: Path,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> list[WrittenSeries]:
    """Translate one qualified CT volume and write every configured output kind under ``out_root``.

    A translator that spreads chunks (a Ray cluster's actors) gets the
    volume in the worker's chunks, all at once; ``progress(done, total)``
    then counts slices, else the translator's own units.

    Raises
    ------
    EngineError
        The engine produced NaN or infinite values; nothing is written.
    """
    mapping = map_to_model(ct, translator.frame)
    log.info("model_grid_mapped", series_uid=ct.series_uid, geometry=mapping.describe())
    region = mapping.to_region(ct.hu)
    if isinstance(translator, SpreadsChunks):
        values = _translate_spread(translator, region, mapping.matrix, ct.kvp, sampling, progress)
    else:
        values = translator.translate_region(
            region, kvp=ct.kvp, steps=sampling.steps, eta=sampling.eta, seed=sampling.seed, progress=progress
        )
    if not np.all(np.isfinite(values)):
        raise EngineError(
            f"the engine produced NaN or infinite values for series {ct.series_uid}; nothing was written "
            "for it: check the weights with `ct2pet-node weights verify`"
        )
    return write_outputs(
        ct,
        values,
        mapping,
        model_id=translator.model_id,
        output_units=translator.output_units,
        sampling=sampling,
        output=config.output,
        reference_header=reference_header,
        out_root=out_root,
    )


def _translate_spread(
    translator: SpreadsChunks,
    region: np.ndarray,
    matrix: int,
    kvp: float | None,
    sampling: Sampling,
    progress: Callable[[int, int], None] | None,
) -> np.ndarray:
    """(N, region rows, region columns) HU -> (N, matrix, matrix) on the model grid, chunk by chunk."""
    count = region.shape[0]
    chunks = chunk_ranges(count, CHUNK_SLICES)
    out = np.empty((count, matrix, matrix), dtype=np.float32)
    done = 0
    finished = translator.translate_chunks(
        region, chunks, kvp=kvp, steps=sampling.steps, eta=sampling.eta, seed=sampling.seed
    )
    try:
        for chunk, values in finished:
            out[chunk.start : chunk.stop] = values
            done += len(chunk)
            if progress is not None:
                progress(done, count)
    finally:
        finished.close()
    return out
