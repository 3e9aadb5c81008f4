"""From a translated volume to DICOM files: shared by the engine worker and ``convert``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog

from ct2pet_node import __version__
from ct2pet_node.config import EngineConfig, OutputConfig
from ct2pet_node.dicom.labels import SynthesisInfo
from ct2pet_node.dicom.resample import pet_on_grid
from ct2pet_node.dicom.writer import write_pet_series
from ct2pet_node.domain.model_grid import GridMapping, ModelFrame, body_extent, plan_model_grid
from ct2pet_node.domain.output_uids import output_series_uid
from ct2pet_node.domain.volume import CtVolume, PetUnits, PetVolume
from ct2pet_node.service.preview import write_previews

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Sampling:
    """The sampling settings a translation runs with."""

    steps: int
    eta: float
    seed: int

    @classmethod
    def for_model(cls, engine: EngineConfig, default_steps: int, default_eta: float) -> Sampling:
        """The configured settings, with the model's own steps and eta where the config leaves them open."""
        return cls(
            steps=engine.steps or default_steps,
            eta=default_eta if engine.eta is None else engine.eta,
            seed=engine.seed,
        )


@dataclass(frozen=True, slots=True)
class WrittenSeries:
    """What one output kind produced."""

    kind: str
    series_uid: str
    paths: tuple[Path, ...]


def map_to_model(ct: CtVolume, frame: ModelFrame) -> GridMapping:
    """How this CT's slices reach the model: its orientation, its pixel size, and its body's width."""
    return plan_model_grid(ct.affine, (ct.hu.shape[1], ct.hu.shape[2]), frame, body_extent(ct.hu))


def write_outputs(
    ct: CtVolume,
    values: np.ndarray,
    mapping: GridMapping,
    *,
    model_id: str,
    output_units: str,
    sampling: Sampling,
    output: OutputConfig,
    reference_header: Path,
    out_root: Path,
    preview_title: str | None = None,
) -> list[WrittenSeries]:
    """Write the engine's ``values`` as every configured output kind.

    ``values`` are (z, matrix, matrix) on the model grid of ``mapping``, in
    ``output_units``; they reach the CT's grid by one resampling when
    ``output.grid`` is ``"ct"``, and by an exact re-indexing into the CT's
    pixel order when it is ``"model"``. Files go to ``out_root/<kind>/``;
    each kind's series UID derives from the CT series, the model and the
    kind, so writing again replaces, never adds. With ``preview_title`` the
    preview pictures (:mod:`ct2pet_node.service.preview`) go to
    ``out_root/preview/`` too, labelled with it.
    """
    units = PetUnits(output_units)
    on_model_grid = PetVolume(values=values, affine=mapping.model_affine, units=units, source=ct)
    pet = pet_on_grid(on_model_grid, output.grid)
    info = SynthesisInfo(
        model_id=model_id,
        model_version=model_id,
        steps=sampling.steps,
        seed=sampling.seed,
        eta=sampling.eta,
        software_version=__version__,
        output_units=units,
        geometry=mapping.describe(),
    )
    written: list[WrittenSeries] = []
    for kind in output.series:
        paths = write_pet_series(pet, kind, info, reference_header, out_root / kind)
        written.append(WrittenSeries(kind, output_series_uid(ct.series_uid, model_id, kind), tuple(paths)))
    if preview_title is not None:
        _preview(
            ct, pet if output.grid == "ct" else pet_on_grid(on_model_grid, "ct"), out_root, preview_title
        )
    return written


def _preview(ct: CtVolume, pet_on_ct: PetVolume, out_root: Path, title: str) -> None:
    # A picture for people to look at: the results stand without it, so its failure fails no job.
    try:
        write_previews(ct, pet_on_ct, out_root, title)
    except Exception:
        log.exception("preview_failed", series_uid=ct.series_uid)
