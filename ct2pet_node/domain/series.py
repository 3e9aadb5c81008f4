"""A CT series as routing hands it on: its slices in position order and the grid they lie on.

Pure values: routing (:mod:`ct2pet_node.routing.qualify`) builds them from
headers, dicom/ (:mod:`ct2pet_node.dicom.volume`) decodes them into a
volume, so neither imports the other. Geometry follows ``domain.volume``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ct2pet_node.domain.records import SliceHeader
from ct2pet_node.domain.uids import SeriesUid, SopInstanceUid, StudyUid, Uid


@dataclass(frozen=True, slots=True)
class OrderedSlice:
    """One z index of a stack: a classic slice, or one frame of an Enhanced CT instance.

    Attributes
    ----------
    frame_number : int or None
        1-based frame of an Enhanced CT instance; None for classic CT.
    position : tuple of float
        ImagePositionPatient (x, y, z) of this slice or frame, LPS mm.
    """

    header: SliceHeader
    frame_number: int | None
    position: tuple[float, float, float]

    @property
    def sop_instance_uid(self) -> SopInstanceUid:
        return self.header.sop_instance_uid

    @property
    def z_text(self) -> str:
        """The slice's table position as messages print it: ``z=-120.0``."""
        return f"z={self.position[2]:.1f}"


@dataclass(frozen=True, slots=True, eq=False)
class QualifiedSeries:
    """A series fit for translation, in the geometry convention of ``domain.volume``.

    Attributes
    ----------
    slices : tuple of OrderedSlice
        One per z index, in increasing position along the slice normal.
    affine : numpy.ndarray
        float64 4x4, read-only: voxel (x, y, z, 1) -> patient LPS mm.
    spacing : tuple of float
        (x, y, z) voxel size in mm: column spacing, row spacing, slice step.
    notes : tuple of str
        What was dropped or tolerated, for the log and the job store.
    """

    series_uid: SeriesUid
    study_uid: StudyUid
    frame_of_reference_uid: Uid
    slices: tuple[OrderedSlice, ...]
    affine: np.ndarray
    spacing: tuple[float, float, float]
    rows: int
    columns: int
    kvp: float | None
    notes: tuple[str, ...]
