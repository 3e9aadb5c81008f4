"""Slice stacks: frames in position order and the grid they lie on. Pure, no I/O.

Shared by completion (is the grid already whole?) and qualification (is it
usable, and if not, what exactly is wrong?), so both read the geometry the
same way.

Positions are ImagePositionPatient in patient LPS mm. A slice's place in the
stack is its position projected on the slice normal (row direction x column
direction): slices are ordered by that, never by file name or instance number.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ct2pet_node.domain.records import SliceHeader

# OrderedSlice is a domain value (dicom/ builds volumes from it); routing only orders and judges them.
from ct2pet_node.domain.series import OrderedSlice as OrderedSlice

CT_IMAGE_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
        "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
        "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT Image Storage
    }
)
# Secondary Capture Image Storage and its multi-frame variants.
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
LOCALIZER_IMAGE_TYPES = frozenset({"LOCALIZER", "SCOUT", "TOPOGRAM", "SURVIEW"})


@dataclass(frozen=True, slots=True)
class GridProblem:
    """One break in an otherwise regular stack.

    Attributes
    ----------
    kind : str
        "duplicate", "gap" or "uneven".
    index : int
        0-based index (in sorted order) of the slice before the break.
    missing : int
        Slices missing in a gap; 0 otherwise.
    step_mm : float
        The step found at the break, mm along the normal.
    """

    kind: str
    index: int
    missing: int
    step_mm: float


@dataclass(frozen=True, slots=True)
class Grid:
    """How sorted slices sit along their normal.

    Attributes
    ----------
    step_mm : float
        Median distance between neighbouring slices along the normal, mm
        (0 for fewer than two slices).
    problems : tuple of GridProblem
        Empty when the slices lie on one regular grid with no gap.
    """

    step_mm: float
    problems: tuple[GridProblem, ...]

    @property
    def regular(self) -> bool:
        return not self.problems


def is_localizer(header: SliceHeader) -> bool:
    """Whether ImageType marks the instance as a scout/localizer, not a slice of the volume."""
    return any(value in LOCALIZER_IMAGE_TYPES for value in header.image_type)


def is_secondary_capture(header: SliceHeader) -> bool:
    return str(header.sop_class_uid).startswith(SECONDARY_CAPTURE_PREFIX)


def finite(values: Iterable[float] | None) -> bool:
    """Whether a geometry value is present and holds only finite numbers."""
    return values is not None and all(math.isfinite(v) for v in values)


def slice_normal(orientation: Sequence[float]) -> np.ndarray:
    """Unit normal (row direction x column direction) of an ImageOrientationPatient."""
    normal = np.cross(np.asarray(orientation[:3], dtype=float), np.asarray(orientation[3:], dtype=float))
    length = float(np.linalg.norm(normal))
    return normal / length if length > 0 else normal


def degrees_from_axial(orientation: Sequence[float]) -> float:
    """Angle between the slice normal and the patient's head-foot (z) axis, degrees."""
    normal = slice_normal(orientation)
    return math.degrees(math.acos(min(1.0, abs(float(normal[2])))))


def expand_frames(headers: Iterable[SliceHeader]) -> list[OrderedSlice]:
    """One :class:`OrderedSlice` per slice or frame; headers without a position are left out."""
    slices: list[OrderedSlice] = []
    for header in headers:
        if header.frame_positions:
            for number, position in enumerate(header.frame_positions, start=1):
                slices.append(OrderedSlice(header, number, position))
        elif header.image_position is not None:
            slices.append(OrderedSlice(header, None, header.image_position))
    return slices


def sort_along_normal(slices: Sequence[OrderedSlice], normal: np.ndarray) -> list[OrderedSlice]:
    """Slices in increasing position along ``normal``; ties keep a stable, UID-based order."""
    return sorted(
        slices,
        key=lambda s: (float(np.dot(s.position, normal)), s.sop_instance_uid, s.frame_number or 0),
    )


def analyse_grid(ordered: Sequence[OrderedSlice], normal: np.ndarray, tolerance_mm: float) -> Grid:
    """Find duplicates, gaps and uneven steps in slices sorted along ``normal``.

    A step within ``tolerance_mm`` of the median step is regular; a step
    within ``k * tolerance_mm`` of ``k`` median steps (k >= 2) is a gap of
    ``k - 1`` slices; a step below ``tolerance_mm`` is a duplicate position;
    anything else is uneven.
    """
    if len(ordered) < 2:
        return Grid(step_mm=0.0, problems=())
    along = np.array([float(np.dot(s.position, normal)) for s in ordered])
    steps = np.diff(along)
    distinct = steps[steps >= tolerance_mm]
    median = float(np.median(distinct)) if distinct.size else 0.0
    problems = []
    for index, step in enumerate(float(s) for s in steps):
        if step < tolerance_mm or median <= 0:
            problems.append(GridProblem("duplicate", index, 0, step))
            continue
        multiple = round(step / median)
        if multiple == 1 and abs(step - median) <= tolerance_mm:
            continue
        if multiple >= 2 and abs(step - multiple * median) <= multiple * tolerance_mm:
            problems.append(GridProblem("gap", index, multiple - 1, step))
        else:
            problems.append(GridProblem("uneven", index, 0, step))
    return Grid(step_mm=median, problems=tuple(problems))
