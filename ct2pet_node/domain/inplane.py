"""The eight right-angle in-plane storages of a slice, and which one a grid is in.

Exact re-indexings only (flips, a transpose, right-angle rotations): no
interpolation. Used wherever two grids must agree on orientation: the model
grid (:mod:`ct2pet_node.domain.model_grid`) and a PET resampled onto its CT
(:mod:`ct2pet_node.dicom.resample`). Arrays are ``(..., y, x)``; affines map
``(x, y, z, 1)`` voxel indices to patient LPS mm.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class InPlaneOp:
    """An exact re-indexing of ``(..., y, x)`` slices: transpose first, then flips.

    The eight values are the right-angle in-plane storages of one slice:
    identity, the two mirrorings, the 180° rotation, and the same four transposed.
    """

    transpose: bool = False
    flip_rows: bool = False
    flip_columns: bool = False

    @property
    def is_identity(self) -> bool:
        return not (self.transpose or self.flip_rows or self.flip_columns)

    def apply(self, array: np.ndarray) -> np.ndarray:
        """The array re-indexed (a view where numpy allows it)."""
        out = np.swapaxes(array, -1, -2) if self.transpose else array
        if self.flip_rows:
            out = out[..., ::-1, :]
        if self.flip_columns:
            out = out[..., :, ::-1]
        return out

    def invert(self, array: np.ndarray) -> np.ndarray:
        """Undo :meth:`apply`."""
        out = array[..., :, ::-1] if self.flip_columns else array
        if self.flip_rows:
            out = out[..., ::-1, :]
        return np.swapaxes(out, -1, -2) if self.transpose else out

    def apply_to_affine(self, affine: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """The affine of :meth:`apply`'s result, for an array of in-plane ``shape`` (rows, columns)."""
        out = np.array(affine, dtype=np.float64, copy=True)
        rows, columns = shape
        if self.transpose:
            out[:, [0, 1]] = out[:, [1, 0]]
            rows, columns = columns, rows
        if self.flip_rows:
            out[:3, 3] += (rows - 1) * out[:3, 1]
            out[:3, 1] = -out[:3, 1]
        if self.flip_columns:
            out[:3, 3] += (columns - 1) * out[:3, 0]
            out[:3, 0] = -out[:3, 0]
        return out

    def apply_to_box(
        self, box: tuple[int, int, int, int], shape: tuple[int, int]
    ) -> tuple[int, int, int, int]:
        """``box`` (row0, row1, column0, column1) of a grid of ``shape`` in :meth:`apply`'s pixels."""
        row0, row1, column0, column1 = box
        rows, columns = shape
        if self.transpose:
            row0, row1, column0, column1 = column0, column1, row0, row1
            rows, columns = columns, rows
        if self.flip_rows:
            row0, row1 = rows - row1, rows - row0
        if self.flip_columns:
            column0, column1 = columns - column1, columns - column0
        return row0, row1, column0, column1

    def applied_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        return (shape[1], shape[0]) if self.transpose else shape

    def describe(self) -> str:
        """What was done, in a reader's words."""
        flips = (self.flip_rows, self.flip_columns)
        if not self.transpose:
            return {
                (False, False): "as stored",
                (False, True): "flipped left-right",
                (True, False): "flipped top-bottom",
                (True, True): "rotated 180°",
            }[flips]
        return {
            (False, False): "transposed",
            (False, True): "rotated 90° clockwise",
            (True, False): "rotated 90° counter-clockwise",
            (True, True): "transposed across the other diagonal",
        }[flips]


ALL_OPS = tuple(InPlaneOp(*bits) for bits in itertools.product((False, True), repeat=3))


def _unit(vector: np.ndarray) -> np.ndarray:
    return np.asarray(vector / np.linalg.norm(vector), dtype=np.float64)


def image_orientation_of(affine: np.ndarray) -> tuple[float, float, float, float, float, float]:
    """The DICOM ImageOrientationPatient of a grid: its column then its row direction, unit length."""
    row, column = _unit(affine[:3, 0]), _unit(affine[:3, 1])
    return (*(float(v) for v in row), *(float(v) for v in column))  # type: ignore[return-value]


def orientation_op(
    affine: np.ndarray, shape: tuple[int, int], image_orientation: tuple[float, ...]
) -> tuple[InPlaneOp, float]:
    """The right-angle re-indexing that brings slices closest to ``image_orientation``.

    Returns the op and the angle in degrees that remains between the
    re-indexed slices' axes and the wanted ones (0 for the eight storages a
    scanner writes; a few degrees for a CT reconstructed with an in-plane
    rotation or a gantry tilt, which no re-indexing can remove).
    """
    wanted_row, wanted_column = np.array(image_orientation[:3]), np.array(image_orientation[3:])
    best: tuple[float, InPlaneOp] | None = None
    for op in ALL_OPS:
        moved = op.apply_to_affine(affine, shape)
        score = float(_unit(moved[:3, 0]) @ wanted_row + _unit(moved[:3, 1]) @ wanted_column)
        if best is None or score > best[0] + 1e-12:
            best = (score, op)
    assert best is not None
    op = best[1]
    moved = op.apply_to_affine(affine, shape)
    angles = [
        math.degrees(math.acos(float(np.clip(_unit(moved[:3, axis]) @ wanted, -1.0, 1.0))))
        for axis, wanted in ((0, wanted_row), (1, wanted_column))
    ]
    return op, max(angles)
