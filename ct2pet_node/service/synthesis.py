"""From a translated volume to DICOM files: shared by the engine worker and ``convert``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ct2pet_node import __version__
from ct2pet_node.config import EngineConfig, OutputConfig
from ct2pet_node.dicom.labels import SynthesisInfo
from ct2pet_node.dicom.resample import pet_on_grid
from ct2pet_node.dicom.writer import write_pet_series
from ct2pet_node.domain.output_uids import output_series_uid
from ct2pet_node.domain.volume import CtVolume, PetUnits, PetVolume


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


def write_outputs(
    ct: CtVolume,
    values: np.ndarray,
    *,
    model_id: str,
    output_units: str,
    image_size: int,
    sampling: Sampling,
    output: OutputConfig,
    reference_header: Path,
    out_root: Path,
) -> list[WrittenSeries]:
    """Write ``values`` (z, y, x on the CT's grid, in ``output_units``) as every configured output kind.

    Files go to ``out_root/<kind>/``; each kind's series UID derives from the
    CT series, the model and the kind, so writing again replaces, never adds.
    """
    units = PetUnits(output_units)
    pet = pet_on_grid(
        PetVolume(values=values, affine=ct.affine, units=units, source=ct), output.grid, image_size
    )
    info = SynthesisInfo(
        model_id=model_id,
        model_version=model_id,
        steps=sampling.steps,
        seed=sampling.seed,
        eta=sampling.eta,
        software_version=__version__,
        output_units=units,
    )
    written: list[WrittenSeries] = []
    for kind in output.series:
        paths = write_pet_series(pet, kind, info, reference_header, out_root / kind)
        written.append(WrittenSeries(kind, output_series_uid(ct.series_uid, model_id, kind), tuple(paths)))
    return written
