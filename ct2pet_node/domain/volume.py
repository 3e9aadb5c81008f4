"""Image volumes in the one geometry convention of the product.

Convention (written down once, used everywhere):

* arrays are indexed ``[z, y, x]``: slice, row, column;
* ``affine`` is a 4x4 matrix mapping ``(x, y, z, 1)`` voxel indices (column,
  row, slice) to patient LPS millimetres, so column 0 is the DICOM row
  direction times the column spacing, column 1 the column direction times
  the row spacing, column 2 the step between consecutive slices and column 3
  the ImagePositionPatient of slice 0;
* slices are sorted by increasing position along the slice normal
  (row direction x column direction), never by file name or instance number.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np

from ct2pet_node.domain.uids import SeriesUid, SopInstanceUid, StudyUid, Uid
from ct2pet_node.errors import InputError


class PetUnits(Enum):
    """What the numbers of a PET volume mean."""

    SUVBW = "SUVbw"
    # The release's weights normalise every PET slice to its own maximum, so
    # their output carries no absolute scale at all.
    RELATIVE = "relative"


@dataclass(frozen=True, slots=True)
class SourceSlice:
    """One CT slice a volume was built from, kept so the writer can reference it."""

    sop_instance_uid: SopInstanceUid
    sop_class_uid: Uid
    position: tuple[float, float, float]
    frame_number: int | None = None


def _check_affine(affine: np.ndarray) -> None:
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise InputError(f"affine must be a finite 4x4 matrix, got shape {affine.shape}")
    if not np.allclose(affine[3], (0.0, 0.0, 0.0, 1.0)):
        raise InputError("affine's last row must be (0, 0, 0, 1)")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InputError("affine is singular: voxel spacing or directions are degenerate")


@dataclass(frozen=True, slots=True, eq=False)
class CtVolume:
    """A qualified CT series in Hounsfield units, ready for the engine.

    Attributes
    ----------
    hu : numpy.ndarray
        float32, shape (z, y, x), Hounsfield units (rescale already applied).
    affine : numpy.ndarray
        float64 4x4, voxel (x, y, z, 1) -> patient LPS mm; see module docstring.
    sources : tuple of SourceSlice
        One per z index, in the same order as ``hu``.
    """

    hu: np.ndarray
    affine: np.ndarray
    study_uid: StudyUid
    series_uid: SeriesUid
    frame_of_reference_uid: Uid
    sources: tuple[SourceSlice, ...]
    kvp: float | None

    def __post_init__(self) -> None:
        if self.hu.ndim != 3 or self.hu.dtype != np.float32:
            raise InputError(f"CT volume must be float32 (z, y, x), got {self.hu.dtype} {self.hu.shape}")
        if len(self.sources) != self.hu.shape[0]:
            raise InputError(f"CT volume has {self.hu.shape[0]} slices but {len(self.sources)} sources")
        _check_affine(self.affine)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size (x, y, z) in mm."""
        norms = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(norms[0]), float(norms[1]), float(norms[2]))


@dataclass(frozen=True, slots=True, eq=False)
class PetVolume:
    """A synthetic PET volume on a grid tied to its source CT.

    Attributes
    ----------
    values : numpy.ndarray
        float32, shape (z, y, x), in ``units``; one z per source CT slice.
    affine : numpy.ndarray
        float64 4x4 in the same convention as :class:`CtVolume`.
    """

    values: np.ndarray
    affine: np.ndarray
    units: PetUnits
    source: CtVolume

    def __post_init__(self) -> None:
        if self.values.ndim != 3 or self.values.dtype != np.float32:
            raise InputError(
                f"PET volume must be float32 (z, y, x), got {self.values.dtype} {self.values.shape}"
            )
        if self.values.shape[0] != self.source.hu.shape[0]:
            raise InputError("PET volume must have one slice per source CT slice")
        if not np.all(np.isfinite(self.values)):
            raise InputError("PET volume holds NaN or infinite values; refusing to write it")
        _check_affine(self.affine)
