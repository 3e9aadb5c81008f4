"""What every synthetic output says about itself, in words a reader cannot miss.

Pure text: the writers put these strings into SeriesDescription,
DerivationDescription, ImageComments and the contributing-equipment item, so
every output carries the same account of how it was made and what it is not.
"""

from __future__ import annotations

from dataclasses import dataclass

from ct2pet_node.domain.output_uids import SECONDARY_CAPTURE
from ct2pet_node.domain.volume import PetUnits
from ct2pet_node.errors import InputError

MANUFACTURER = "ct2pet-node"
NOT_FOR_DIAGNOSIS = "not acquired, not for diagnosis"
SYNTHETIC_PREFIX = "SYNTHETIC PET"

# Display windows in output units: 0 to 10 SUV shows an FDG study the way
# PET readers usually start; relative output is shown from 0 to its maximum.
SUV_WINDOW_LOW, SUV_WINDOW_HIGH = 0.0, 10.0


@dataclass(frozen=True, slots=True)
class SynthesisInfo:
    """How an output was synthesised; everything here ends up in its header.

    Attributes
    ----------
    model_id : str
        Identifier of the weights (e.g. ``"cpdm-release-1"``).
    model_version : str
        The model's version or one-line description.
    steps : int
        Sampling steps actually run.
    seed : int
        Seed of the sampler's noise.
    eta : float
        Stochasticity of the bridge sampler, 0 to 1.
    software_version : str
        Version of ct2pet-node that wrote the output.
    output_units : PetUnits
        What the model's numbers mean; RELATIVE produces no SUV units.
    geometry : str
        How the CT's slices were shown to the model (orientation, field of
        view), from :meth:`~ct2pet_node.domain.model_grid.GridMapping.describe`.
    """

    model_id: str
    model_version: str
    steps: int
    seed: int
    eta: float
    software_version: str
    output_units: PetUnits
    geometry: str = ""

    def __post_init__(self) -> None:
        if not self.model_id.strip():
            raise InputError("SynthesisInfo.model_id is empty; give the weights' identifier")
        if self.steps < 0 or self.seed < 0:
            raise InputError(f"steps {self.steps} and seed {self.seed} must be 0 or more")
        if not 0.0 <= self.eta <= 1.0:
            raise InputError(f"eta {self.eta} must be between 0 and 1")


def units_phrase(units: PetUnits) -> str:
    """How the values' units are named to a reader."""
    if units is PetUnits.SUVBW:
        return "SUVbw (g/ml)"
    return "relative, uncalibrated (no SUV)"


def series_description(kind: str, info: SynthesisInfo) -> str:
    """SeriesDescription: starts with ``SYNTHETIC PET``, at most 64 characters (LO)."""
    form = "SC" if kind == SECONDARY_CAPTURE else "PT"
    units = "SUVbw" if info.output_units is PetUnits.SUVBW else "RELATIVE"
    return f"{SYNTHETIC_PREFIX} {units} {form} {info.model_id}"[:64].rstrip()


def derivation_description(info: SynthesisInfo) -> str:
    """DerivationDescription (ST, at most 1024 characters)."""
    text = (
        f"{SYNTHETIC_PREFIX} synthesised from CT by {MANUFACTURER} {info.software_version}, "
        f"model {info.model_id} ({info.model_version}), {info.steps} steps, seed {info.seed}, "
        f"eta {info.eta:g}; values {units_phrase(info.output_units)}; {NOT_FOR_DIAGNOSIS}"
    )
    if info.geometry:
        # Last, so that the 1024-character cap can only shorten the account of the geometry.
        text += f"; CT slices {info.geometry}"
    return text[:1024]


def image_comments(info: SynthesisInfo, position_mm: tuple[float, float, float]) -> str:
    """ImageComments (LT): the warning, the units and where the slice lies."""
    x, y, z = position_mm
    return (
        f"SYNTHETIC image: {NOT_FOR_DIAGNOSIS}. Model {info.model_id}, seed {info.seed}. "
        f"Values {units_phrase(info.output_units)}. "
        f"First pixel at ({x:.2f}, {y:.2f}, {z:.2f}) mm, patient LPS."
    )


def contribution_description(info: SynthesisInfo) -> str:
    """ContributionDescription (ST) of the synthesising-equipment item."""
    return (
        f"Synthesised this PET from the referenced CT with model {info.model_id} "
        f"({info.model_version}), {info.steps} steps, seed {info.seed}; {NOT_FOR_DIAGNOSIS}"
    )[:1024]


def window(units: PetUnits, series_max: float) -> tuple[float, float]:
    """(WindowCenter, WindowWidth) in output units (after the rescale)."""
    if units is PetUnits.SUVBW:
        low, high = SUV_WINDOW_LOW, SUV_WINDOW_HIGH
    else:
        low, high = 0.0, series_max if series_max > 0 else 1.0
    return (low + high) / 2.0, high - low
