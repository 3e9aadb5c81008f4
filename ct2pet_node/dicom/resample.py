"""The one conversion point from the model's grid back to the CT's.

The engine hands back values on the model grid that
:class:`~ct2pet_node.domain.model_grid.GridMapping` states (the model's
orientation and pixel size, over a region around the CT's field of view).
Both grids share the CT's slices (same count, same positions, same slice
normal); only the in-plane sampling differs. A right-angle difference in
orientation is an exact re-indexing, never an interpolation, so a CT stored
feet first gets bit for bit the values of the same CT stored head first.
Arrays are ``(z, y, x)`` and affines map ``(x, y, z, 1)`` voxel indices to
patient LPS mm (see :mod:`ct2pet_node.domain.volume`).
"""

from __future__ import annotations

import numpy as np

from ct2pet_node.domain.inplane import image_orientation_of, orientation_op
from ct2pet_node.domain.volume import PetVolume
from ct2pet_node.errors import InputError

GRIDS = ("model", "ct")
# Grids are "the same slices" when they agree to a micrometre.
_SLICE_TOLERANCE = 1e-3


def _in_plane_map(source_affine: np.ndarray, target_affine: np.ndarray) -> np.ndarray:
    """The 2x3 map from target (x, y, 1) to source (x, y), checked to keep slices."""
    mapping = np.linalg.inv(source_affine) @ target_affine
    keeps_slices = (
        np.allclose(mapping[2], (0.0, 0.0, 1.0, 0.0), atol=_SLICE_TOLERANCE)
        and abs(mapping[0, 2]) < _SLICE_TOLERANCE
        and abs(mapping[1, 2]) < _SLICE_TOLERANCE
    )
    if not keeps_slices:
        raise InputError(
            "the two grids do not share their slices (positions or slice normal differ); "
            "resample only between grids built from the same CT volume"
        )
    return np.asarray(mapping[:2][:, [0, 1, 3]], dtype=np.float64)


def _axis_weights(coords: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Lower index, upper index, upper weight and inside mask along one axis.

    Points up to half a pixel beyond the outermost centres take the edge
    value (the grids share their field of view, so the CT's edge pixels
    always fall there); points further out are outside and get 0.
    """
    inside = (coords >= -0.5) & (coords <= length - 0.5)
    clamped = np.clip(coords, 0.0, length - 1.0)
    lower = np.floor(clamped).astype(np.intp)
    lower = np.minimum(lower, max(length - 2, 0))
    upper = np.minimum(lower + 1, length - 1)
    weight = clamped - lower
    return lower, upper, weight, inside


def resample_in_plane(
    values: np.ndarray, source_affine: np.ndarray, target_affine: np.ndarray, target_shape: tuple[int, int]
) -> np.ndarray:
    """Bilinear resampling, in patient space, of every slice onto another in-plane grid.

    Parameters
    ----------
    values : numpy.ndarray
        Shape (z, y, x) on the grid of ``source_affine``.
    source_affine, target_affine : numpy.ndarray
        float 4x4, voxel (x, y, z, 1) -> patient LPS mm; they must share slices.
    target_shape : tuple of int
        (rows, columns) of the target grid.

    Returns
    -------
    numpy.ndarray
        float32, shape (z, rows, columns); 0 where the target lies outside
        the source's field of view.
    """
    if values.ndim != 3:
        raise InputError(f"values must be (z, y, x), got shape {values.shape}")
    # Resample onto the target re-indexed into the source's orientation, then undo the
    # re-indexing: a right-angle difference never costs an interpolation.
    op, _ = orientation_op(target_affine, target_shape, image_orientation_of(source_affine))
    target_affine = op.apply_to_affine(target_affine, target_shape)
    target_shape = op.applied_shape(target_shape)
    mapping = _in_plane_map(source_affine, target_affine)
    data = values.astype(np.float32, copy=False)
    exact = _exact_copy(data, mapping, target_shape)
    if exact is not None:
        return np.ascontiguousarray(op.invert(exact))
    if abs(mapping[0, 1]) < 1e-9 and abs(mapping[1, 0]) < 1e-9:
        result = _separable(data, mapping, target_shape)
    else:
        result = _general(data, mapping, target_shape)
    resampled: np.ndarray = op.invert(result.astype(np.float32, copy=False))
    return np.ascontiguousarray(resampled)


def _exact_copy(data: np.ndarray, mapping: np.ndarray, target_shape: tuple[int, int]) -> np.ndarray | None:
    """The target as a plain copy when every target pixel centre is a source pixel centre."""
    rows, columns = target_shape
    offsets = mapping[:, 2]
    whole = np.round(offsets)
    if not (
        np.allclose(mapping[:, :2], np.eye(2), atol=1e-9)
        and np.allclose(offsets, whole, atol=1e-6)
        and whole[0] >= 0
        and whole[1] >= 0
        and whole[0] + columns <= data.shape[2]
        and whole[1] + rows <= data.shape[1]
    ):
        return None
    x0, y0 = int(whole[0]), int(whole[1])
    return data[:, y0 : y0 + rows, x0 : x0 + columns].copy()


def _separable(data: np.ndarray, mapping: np.ndarray, target_shape: tuple[int, int]) -> np.ndarray:
    """Axis-aligned grids (the usual case): along rows, then along columns."""
    rows, columns = target_shape
    source_x = mapping[0, 0] * np.arange(columns, dtype=np.float64) + mapping[0, 2]
    source_y = mapping[1, 1] * np.arange(rows, dtype=np.float64) + mapping[1, 2]
    x0, x1, wx, inside_x = _axis_weights(source_x, data.shape[2])
    y0, y1, wy, inside_y = _axis_weights(source_y, data.shape[1])
    weight_x, weight_y = wx.astype(np.float32), wy.astype(np.float32)[:, None]
    # Rows first: gathering whole rows copies contiguous memory, the cheap way round.
    low_rows = data[:, y0, :]
    along_y = low_rows + (data[:, y1, :] - low_rows) * weight_y
    low_columns = along_y[:, :, x0]
    result: np.ndarray = low_columns + (along_y[:, :, x1] - low_columns) * weight_x
    result[:, ~inside_y, :] = 0.0
    result[:, :, ~inside_x] = 0.0
    return result


def _general(data: np.ndarray, mapping: np.ndarray, target_shape: tuple[int, int]) -> np.ndarray:
    """Any in-plane rotation or shear between the grids: four gathers per target pixel."""
    rows, columns = target_shape
    grid_y, grid_x = np.meshgrid(
        np.arange(rows, dtype=np.float64), np.arange(columns, dtype=np.float64), indexing="ij"
    )
    source_x = mapping[0, 0] * grid_x + mapping[0, 1] * grid_y + mapping[0, 2]
    source_y = mapping[1, 0] * grid_x + mapping[1, 1] * grid_y + mapping[1, 2]
    x0, x1, wx, inside_x = _axis_weights(source_x, data.shape[2])
    y0, y1, wy, inside_y = _axis_weights(source_y, data.shape[1])
    top = data[:, y0, x0] * (1.0 - wx) + data[:, y0, x1] * wx
    bottom = data[:, y1, x0] * (1.0 - wx) + data[:, y1, x1] * wx
    result: np.ndarray = top * (1.0 - wy) + bottom * wy
    result[:, ~(inside_x & inside_y)] = 0.0
    return result


def pet_on_grid(pet: PetVolume, grid: str) -> PetVolume:
    """The PET volume on the configured output grid (``output.grid``).

    Parameters
    ----------
    pet : PetVolume
        Values on the model grid the engine handed back (or any grid that shares the CT's slices).
    grid : str
        ``"ct"``: resampled onto the CT's own grid, once; ``"model"``: the
        values as they are, only re-indexed (exactly) into the CT's pixel
        order, so the output overlays its CT as a viewer expects.
    """
    if grid not in GRIDS:
        raise InputError(f"output grid {grid!r} is unknown; use one of {GRIDS}")
    ct = pet.source
    ct_shape = (ct.hu.shape[1], ct.hu.shape[2])
    if grid == "ct":
        if pet.values.shape[1:] == ct_shape and np.allclose(pet.affine, ct.affine, atol=_SLICE_TOLERANCE):
            return pet
        values = resample_in_plane(pet.values, pet.affine, ct.affine, ct_shape)
        return PetVolume(values=values, affine=ct.affine, units=pet.units, source=ct)
    shape = (pet.values.shape[1], pet.values.shape[2])
    op, _ = orientation_op(pet.affine, shape, image_orientation_of(ct.affine))
    if op.is_identity:
        return pet
    return PetVolume(
        values=np.ascontiguousarray(op.apply(pet.values)),
        affine=op.apply_to_affine(pet.affine, shape),
        units=pet.units,
        source=ct,
    )
