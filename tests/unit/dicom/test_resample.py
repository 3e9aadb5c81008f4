from __future__ import annotations

import numpy as np
import pytest

from ct2pet_node.dicom.resample import pet_on_grid, resample_in_plane
from ct2pet_node.domain.inplane import ALL_OPS
from ct2pet_node.domain.model_grid import ModelFrame, plan_model_grid
from ct2pet_node.domain.volume import CtVolume, PetUnits, PetVolume, SourceSlice
from ct2pet_node.errors import InputError

CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"


def make_ct(rows: int = 32, columns: int = 32, n: int = 3, oblique: bool = False) -> CtVolume:
    affine = np.eye(4)
    if oblique:
        angle = np.radians(20.0)
        rotation = np.array(
            [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1.0]]
        )
        affine[:3, :3] = rotation @ np.diag([0.7, 0.9, 2.5])
    else:
        affine[:3, :3] = np.diag([0.7, 0.9, 2.5])
    affine[:3, 3] = (-11.0, 4.0, -30.0)
    sources = tuple(
        SourceSlice(f"1.2.3.4.{k + 1}", CT_CLASS, tuple(float(v) for v in affine @ (0, 0, k, 1))[:3])  # type: ignore[arg-type]
        for k in range(n)
    )
    return CtVolume(
        hu=np.zeros((n, rows, columns), np.float32),
        affine=affine,
        study_uid="1.2.3",  # type: ignore[arg-type]
        series_uid="1.2.3.4",  # type: ignore[arg-type]
        frame_of_reference_uid="1.2.3.9",  # type: ignore[arg-type]
        sources=sources,
        kvp=120.0,
    )


def centres(affine: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """Patient positions (rows, columns, 3) of every pixel centre of slice 0."""
    y, x = np.meshgrid(np.arange(rows), np.arange(columns), indexing="ij")
    voxels = np.stack([x, y, np.zeros_like(x), np.ones_like(x)], axis=-1).astype(float)
    return (voxels @ affine.T)[..., :3]


def linear(points: np.ndarray) -> np.ndarray:
    return (0.3 * points[..., 0] - 0.2 * points[..., 1] + 5.0).astype(np.float32)


def model_grid(ct: CtVolume, size: int, field_of_view_mm: float) -> np.ndarray:
    """The affine of the node's model grid over ``ct`` (see :mod:`ct2pet_node.domain.model_grid`)."""
    frame = ModelFrame(size, field_of_view_mm / size)
    return plan_model_grid(ct.affine, (ct.hu.shape[1], ct.hu.shape[2]), frame).model_affine


@pytest.mark.parametrize("oblique", [False, True])
def test_linear_field_is_reproduced_on_the_ct_grid(oblique: bool) -> None:
    ct = make_ct(oblique=oblique)
    # 28.8 mm: the CT's rows (32 x 0.9 mm), its columns (32 x 0.7 mm) padded to 41.
    model = model_grid(ct, 8, 28.8)
    values = np.repeat(linear(centres(model, 8, 8))[None], 3, axis=0)
    result = resample_in_plane(values, model, ct.affine, (32, 32))
    expected = linear(centres(ct.affine, 32, 32))
    # Bilinear is exact for a linear field wherever no edge clamping happens:
    # the CT pixels inside the model's outermost centres (2 CT pixels in).
    np.testing.assert_allclose(result[1, 2:-2, 2:-2], expected[2:-2, 2:-2], atol=1e-4)
    assert result.shape == (3, 32, 32)
    assert result.dtype == np.float32


def test_round_trip_model_to_ct_to_model_keeps_smooth_values() -> None:
    ct = make_ct()
    # 22.4 mm: the CT's columns (32 x 0.7 mm), its rows (32 x 0.9 mm) cropped to 25.
    model = model_grid(ct, 16, 22.4)
    points = centres(model, 16, 16)
    values = np.sin(points[..., 0] / 6.0).astype(np.float32)[None].repeat(3, axis=0)
    there = resample_in_plane(values, model, ct.affine, (32, 32))
    back = resample_in_plane(there, ct.affine, model, (16, 16))
    np.testing.assert_allclose(back[:, 1:-1, 1:-1], values[:, 1:-1, 1:-1], atol=0.02)


def test_halving_averages_each_two_by_two_block() -> None:
    ct = make_ct(rows=8, columns=8, n=1)
    values = np.random.default_rng(3).random((1, 8, 8)).astype(np.float32)
    # Pixels twice the CT's, first centre half a CT pixel inside CT pixel 0's corner.
    model = ct.affine.copy()
    model[:3, :2] *= 2.0
    model[:3, 3] += 0.5 * (ct.affine[:3, 0] + ct.affine[:3, 1])
    halved = resample_in_plane(values, ct.affine, model, (4, 4))
    blocks = values.reshape(1, 4, 2, 4, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(halved, blocks, atol=1e-6)


def test_points_outside_the_source_field_of_view_are_zero() -> None:
    ct = make_ct(n=1)
    shifted = ct.affine.copy()
    shifted[0, 3] += 100.0
    result = resample_in_plane(np.ones((1, 32, 32), np.float32), ct.affine, shifted, (32, 32))
    assert np.all(result == 0.0)


def test_grids_with_other_slices_are_refused() -> None:
    ct = make_ct()
    other = ct.affine.copy()
    other[2, 3] += 1.0
    with pytest.raises(InputError, match="share their slices"):
        resample_in_plane(np.ones((3, 32, 32), np.float32), ct.affine, other, (32, 32))


def test_pet_on_grid_resamples_to_the_ct_once_and_keeps_the_model_grid_as_it_is() -> None:
    ct = make_ct()
    mapping = plan_model_grid(ct.affine, (32, 32), ModelFrame(16, 1.4))
    values = np.random.default_rng(1).random((3, 16, 16)).astype(np.float32)
    on_model = PetVolume(values, mapping.model_affine, PetUnits.SUVBW, ct)
    # "model": the engine's values themselves, not a copy resampled from somewhere else.
    assert pet_on_grid(on_model, "model") is on_model
    on_ct = pet_on_grid(on_model, "ct")
    assert on_ct.values.shape == (3, 32, 32)
    np.testing.assert_allclose(on_ct.affine, ct.affine)
    np.testing.assert_array_equal(
        on_ct.values, resample_in_plane(values, mapping.model_affine, ct.affine, (32, 32))
    )
    assert pet_on_grid(on_ct, "ct") is on_ct
    with pytest.raises(InputError, match="grid"):
        pet_on_grid(on_model, "native")


@pytest.mark.parametrize("op", ALL_OPS, ids=lambda op: op.describe())
def test_model_grid_output_is_reindexed_exactly_into_the_cts_pixel_order(op) -> None:  # type: ignore[no-untyped-def]
    # A CT stored in any right-angle orientation: the model sees it re-indexed, and the output
    # on the model grid comes back in the CT's own order, overlaying it, without interpolation.
    base = make_ct(rows=32, columns=32, n=2)
    stored_affine = op.apply_to_affine(base.affine, (32, 32))
    ct = CtVolume(
        np.zeros((2, 32, 32), np.float32),
        stored_affine,
        base.study_uid,
        base.series_uid,
        base.frame_of_reference_uid,
        base.sources,
        base.kvp,
    )
    mapping = plan_model_grid(ct.affine, (32, 32), ModelFrame(32, 0.8))
    values = np.random.default_rng(2).random((2, 32, 32)).astype(np.float32)
    written = pet_on_grid(PetVolume(values, mapping.model_affine, PetUnits.SUVBW, ct), "model")
    # The model grid is in the head-first-supine order of ``base``; the CT is stored as ``op`` of it.
    np.testing.assert_array_equal(written.values, op.apply(values))
    np.testing.assert_allclose(written.affine, op.apply_to_affine(mapping.model_affine, (32, 32)), atol=1e-9)


def test_swapped_axes_transpose_each_slice() -> None:
    ct = make_ct(n=2)
    square = ct.affine.copy()
    square[0, 0] = square[1, 1] = 0.8
    swapped = square.copy()
    swapped[:, [0, 1]] = square[:, [1, 0]]
    values = np.random.default_rng(5).random((2, 32, 32)).astype(np.float32)
    # A right-angle difference is a re-indexing: exact, not merely close.
    np.testing.assert_array_equal(
        resample_in_plane(values, square, swapped, (32, 32)), values.transpose(0, 2, 1)
    )


def test_grids_rotated_in_plane_reproduce_a_linear_field() -> None:
    ct = make_ct(n=2)
    angle = np.radians(10.0)
    turn = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1.0]])
    rotated = ct.affine.copy()
    rotated[:3, :2] = turn @ ct.affine[:3, :2]
    field = np.repeat(linear(centres(ct.affine, 32, 32))[None], 2, axis=0)
    result = resample_in_plane(field, ct.affine, rotated, (32, 32))
    expected = linear(centres(rotated, 32, 32))
    np.testing.assert_allclose(result[1, 8:-8, 8:-8], expected[8:-8, 8:-8], atol=1e-4)
