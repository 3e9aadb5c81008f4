"""The one geometric mapping between a CT's in-plane grid and the grid a model was trained on.

A 2-D CNN is neither mirror- nor rotation-equivariant and sees anatomy at
the pixel size it was trained at, so every slice goes in (1) re-indexed by
an exact flip, transpose or right-angle rotation
(:mod:`ct2pet_node.domain.inplane`) into the model's in-plane orientation,
(2) padded with air or cropped, by whole CT pixels around the centre of the
CT's field of view, to the region that covers the model's field of view at
its training pixel size; the engine then resizes that
region to the model's matrix (:mod:`ct2pet_node.engine.translation`) and
hands back values on the model grid, whose geometry :class:`GridMapping`
states as an affine. Nothing here interpolates: (1) and (2) are exact, and
the model grid's affine records the pixel size actually reached (the region
is a whole number of CT pixels, so it may differ from the training pixel
size by up to half a CT pixel over the field of view, about 0.1 %).

Arrays are ``(..., y, x)`` and affines map ``(x, y, z, 1)`` voxel indices to
patient LPS mm, as in :mod:`ct2pet_node.domain.volume`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ct2pet_node.domain.inplane import InPlaneOp, orientation_op
from ct2pet_node.errors import InputError

# Head-first supine as GE and most scanners store it: columns run from the
# patient's right to left (+x in LPS), rows from anterior to posterior (+y).
HEAD_FIRST_SUPINE = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
# The field of view the release's sample and our demo were reconstructed at.
RELEASE_FIELD_OF_VIEW_MM = 500.0
# Air, for padding a CT region: what a scanner writes outside its reconstruction.
AIR_HU = -1024.0
# Voxels above this are patient (or table), not air: a body must not be cropped.
BODY_HU = -500.0
# Orientations closer than this to the model's are its orientation (rounding in headers).
_ALIGNED_DEGREES = 0.05


@dataclass(frozen=True, slots=True)
class ModelFrame:
    """The in-plane geometry of a model's training slices, as its manifest states it.

    Attributes
    ----------
    matrix : int
        Rows and columns of the model's square input.
    pixel_spacing_mm : float
        Size of one model pixel in mm (training field of view / matrix).
    image_orientation : tuple of float
        DICOM ImageOrientationPatient of the training slices: the direction
        of increasing column index, then of increasing row index, in LPS.
    assumed : bool
        Whether the pixel size is an assumption (the release states none).
    """

    matrix: int
    pixel_spacing_mm: float
    image_orientation: tuple[float, float, float, float, float, float] = HEAD_FIRST_SUPINE
    assumed: bool = False

    def __post_init__(self) -> None:
        if self.matrix < 1:
            raise InputError(f"model matrix {self.matrix} must be at least 1 pixel")
        if not (math.isfinite(self.pixel_spacing_mm) and self.pixel_spacing_mm > 0):
            raise InputError(f"model pixel spacing {self.pixel_spacing_mm} mm must be a positive number")
        row, column = np.array(self.image_orientation[:3]), np.array(self.image_orientation[3:])
        if len(self.image_orientation) != 6 or not (
            math.isclose(np.linalg.norm(row), 1.0, abs_tol=1e-3)
            and math.isclose(np.linalg.norm(column), 1.0, abs_tol=1e-3)
            and abs(float(row @ column)) < 1e-3
        ):
            raise InputError(
                f"model image orientation {self.image_orientation} is not two orthogonal unit vectors"
            )

    @property
    def field_of_view_mm(self) -> float:
        """Width of the model's square field of view in mm."""
        return self.matrix * self.pixel_spacing_mm

    @classmethod
    def release_default(cls, matrix: int) -> ModelFrame:
        """What the release's weights are assumed to have seen: 500 mm head-first supine."""
        return cls(matrix, RELEASE_FIELD_OF_VIEW_MM / matrix, HEAD_FIRST_SUPINE, assumed=True)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelFrame:
        """From the manifest's ``geometry`` object (see :meth:`to_json`)."""
        try:
            orientation = tuple(float(v) for v in data.get("image_orientation", HEAD_FIRST_SUPINE))
            return cls(
                matrix=int(data["matrix"]),
                pixel_spacing_mm=float(data["pixel_spacing_mm"]),
                image_orientation=orientation,  # type: ignore[arg-type]
                assumed=bool(data.get("assumed", False)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"model geometry {dict(data)} is unreadable: {exc}") from exc

    def to_json(self) -> dict[str, Any]:
        """The manifest's ``geometry`` object."""
        return {
            "matrix": self.matrix,
            "pixel_spacing_mm": self.pixel_spacing_mm,
            "field_of_view_mm": self.field_of_view_mm,
            "image_orientation": list(self.image_orientation),
            "assumed": self.assumed,
        }


def body_extent(hu: np.ndarray, threshold: float = BODY_HU) -> tuple[int, int, int, int] | None:
    """Rows and columns the body occupies in any slice: (first row, last row + 1, first column, last column + 1).

    ``None`` when no voxel is above ``threshold`` (an empty field of view).
    """
    inside = np.any(np.asarray(hu) > threshold, axis=0)
    rows, columns = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(columns[0]), int(columns[-1]) + 1


@dataclass(frozen=True, slots=True)
class Span:
    """One axis of the region: ``before`` pixels added (negative: removed) before the CT's first, ``length`` in all."""

    before: int
    length: int

    def take(self, array: np.ndarray, axis: int, fill: float) -> np.ndarray:
        """The region along ``axis``: CT pixels, with ``fill`` where it reaches past the CT."""
        size = array.shape[axis]
        if self.before == 0 and self.length == size:
            # The usual case (a CT at the model's field of view): no copy of the whole volume.
            return array
        start, stop = -self.before, -self.before + self.length
        kept = np.take(array, np.arange(max(start, 0), min(stop, size)), axis=axis)
        pad = [(0, 0)] * array.ndim
        pad[axis] = (max(0, -start), max(0, stop - size))
        return np.pad(kept, pad, constant_values=fill) if any(pad[axis]) else kept

    def give_back(self, region: np.ndarray, axis: int, size: int, fill: float) -> np.ndarray:
        """Inverse of :meth:`take`: the CT's ``size`` pixels, ``fill`` where the region did not reach."""
        inverse = Span(before=-self.before, length=size)
        return inverse.take(region, axis, fill)


@dataclass(frozen=True, slots=True)
class GridMapping:
    """How one CT's slices reach the model, and where the model's values lie.

    Attributes
    ----------
    op : InPlaneOp
        Re-indexing from the CT's stored pixel order into the model's orientation.
    rows, columns : Span
        The region, in re-indexed CT pixels, that the engine resizes to the model's matrix.
    ct_shape : tuple of int
        The CT's (rows, columns) as stored.
    model_affine : numpy.ndarray
        float64 4x4 of the model grid (``matrix`` square, in the model's
        orientation), voxel (x, y, z, 1) -> patient LPS mm.
    scale : float
        Model pixel size reached / training pixel size (1 up to the region's
        rounding; above 1 when the body was wider than the model's field of view).
    residual_degrees : float
        Angle left between the re-indexed slices and the model's orientation.
    notes : tuple of str
        What was done, for the job record and the output's DerivationDescription.
    """

    op: InPlaneOp
    rows: Span
    columns: Span
    ct_shape: tuple[int, int]
    matrix: int
    model_affine: np.ndarray
    scale: float
    residual_degrees: float
    notes: tuple[str, ...]

    @property
    def region_shape(self) -> tuple[int, int]:
        return self.rows.length, self.columns.length

    def to_region(self, hu: np.ndarray) -> np.ndarray:
        """(z, rows, columns) CT in HU as stored -> (z, region rows, region columns), float32, contiguous."""
        oriented = self.op.apply(hu)
        region = self.columns.take(self.rows.take(oriented, -2, AIR_HU), -1, AIR_HU)
        return np.ascontiguousarray(region, dtype=np.float32)

    def from_region(self, values: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """Inverse of :meth:`to_region` for values on the region: back to the CT's stored pixel order."""
        rows, columns = self.op.applied_shape(self.ct_shape)
        oriented = self.columns.give_back(self.rows.give_back(values, -2, rows, fill), -1, columns, fill)
        return np.ascontiguousarray(self.op.invert(oriented))

    def describe(self) -> str:
        """One sentence for the job record and the DerivationDescription."""
        return "; ".join(self.notes)


def _region_span(size: int, wanted: int) -> Span:
    """``wanted`` pixels centred on an axis of ``size`` pixels (the extra one, if odd, after)."""
    return Span(before=(wanted - size) // 2, length=wanted)


def plan_model_grid(
    affine: np.ndarray,
    shape: tuple[int, int],
    frame: ModelFrame,
    body: tuple[int, int, int, int] | None = None,
) -> GridMapping:
    """The mapping of a CT grid onto a model's frame.

    Parameters
    ----------
    affine : numpy.ndarray
        The CT's 4x4 affine (voxel (x, y, z, 1) -> LPS mm).
    shape : tuple of int
        The CT's in-plane (rows, columns).
    frame : ModelFrame
        The model's training geometry.
    body : tuple of int, optional
        :func:`body_extent` of the CT as stored; when given, a region that
        would cut it is widened (keeping its centre and square pixels), and
        the model sees the slice at a reduced scale, which the notes say.
    """
    op, residual = orientation_op(affine, shape, frame.image_orientation)
    oriented_affine = op.apply_to_affine(affine, shape)
    rows, columns = op.applied_shape(shape)
    spacing_x = float(np.linalg.norm(oriented_affine[:3, 0]))
    spacing_y = float(np.linalg.norm(oriented_affine[:3, 1]))
    notes = [
        f"{op.describe()} to the model's orientation" if not op.is_identity else "in the model's orientation"
    ]
    if residual > _ALIGNED_DEGREES:
        notes.append(f"{residual:.1f}° between the slices' axes and the model's left as is (not resampled)")

    scale = 1.0
    if body is not None:
        oriented_body = op.apply_to_box(body, shape)
        scale = max(
            1.0,
            _scale_to_fit(rows, spacing_y, frame, oriented_body[0], oriented_body[1]),
            _scale_to_fit(columns, spacing_x, frame, oriented_body[2], oriented_body[3]),
        )
    span_y = _region_span(rows, _region_pixels(frame, scale, spacing_y))
    span_x = _region_span(columns, _region_pixels(frame, scale, spacing_x))
    model_affine = _model_affine(oriented_affine, span_y, span_x, frame.matrix)
    reached = float(np.linalg.norm(model_affine[:3, 0])) / frame.pixel_spacing_mm
    if scale > 1.0:
        notes.append(
            f"the body is wider than the model's {frame.field_of_view_mm:.0f} mm field of view: "
            f"translated at {reached:.2f}x its training pixel size"
        )
    if (span_y.length, span_x.length) == (rows, columns):
        if (rows, columns) != (frame.matrix, frame.matrix):
            notes.append(f"field of view {columns * spacing_x:.0f} mm as the model's")
    else:
        notes.append(
            f"field of view {columns * spacing_x:.0f} x {rows * spacing_y:.0f} mm "
            f"{'padded with air' if span_x.before >= 0 and span_y.before >= 0 else 'cropped'} "
            f"to {span_x.length * spacing_x:.0f} mm at {frame.pixel_spacing_mm * reached:.3f} mm pixels"
        )
    return GridMapping(
        op=op,
        rows=span_y,
        columns=span_x,
        ct_shape=(int(shape[0]), int(shape[1])),
        matrix=frame.matrix,
        model_affine=model_affine,
        scale=reached,
        residual_degrees=residual,
        notes=tuple(notes),
    )


def plan_bare_slices(hu: np.ndarray, pixel_spacing: tuple[float, float], frame: ModelFrame) -> GridMapping:
    """How bare slices (N, H, W) with (row, column) ``pixel_spacing`` in mm reach a model.

    Bare arrays carry no orientation: they are taken to be in the model's already.
    """
    row_spacing, column_spacing = (float(v) for v in pixel_spacing)
    orientation = frame.image_orientation
    affine = np.eye(4)
    affine[:3, 0] = np.array(orientation[:3]) * column_spacing
    affine[:3, 1] = np.array(orientation[3:]) * row_spacing
    affine[:3, 2] = np.cross(orientation[:3], orientation[3:])
    return plan_model_grid(affine, (hu.shape[1], hu.shape[2]), frame, body_extent(hu))


def _region_pixels(frame: ModelFrame, scale: float, spacing: float) -> int:
    return max(1, round(frame.field_of_view_mm * scale / spacing))


def _scale_to_fit(size: int, spacing: float, frame: ModelFrame, first: int, stop: int) -> float:
    """The scale at which a centred region of this axis holds pixels ``first``..``stop - 1``."""
    centre = size / 2.0
    half_needed = max(centre - first, stop - centre)
    # Two pixels of air each side: rounding the region to whole pixels never cuts the body's
    # edge, and the model sees where the body ends. Never more than the CT itself: a body the
    # reconstruction already cut off at its edge gains nothing from a wider region.
    pixels = min(2.0 * half_needed + 4.0, float(size))
    return pixels * spacing / frame.field_of_view_mm


def _model_affine(oriented: np.ndarray, span_y: Span, span_x: Span, matrix: int) -> np.ndarray:
    """The model grid over the region edge to edge, as an image resize places it."""
    affine = np.array(oriented, dtype=np.float64, copy=True)
    scale_x, scale_y = span_x.length / matrix, span_y.length / matrix
    # Region pixel 0 sits at CT pixel -before; model pixel 0's centre half a model pixel
    # inside the region's edge, which is half a CT pixel outside that pixel's centre.
    affine[:3, 3] = (
        oriented[:3, 3]
        + oriented[:3, 0] * (-span_x.before + (scale_x - 1.0) / 2.0)
        + oriented[:3, 1] * (-span_y.before + (scale_y - 1.0) / 2.0)
    )
    affine[:3, 0] = oriented[:3, 0] * scale_x
    affine[:3, 1] = oriented[:3, 1] * scale_y
    return affine
