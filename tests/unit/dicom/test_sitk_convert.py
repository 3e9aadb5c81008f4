"""Round trips and physical placement of the one array <-> SimpleITK conversion."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from ct2pet_node.dicom.sitk_convert import from_sitk, to_sitk
from ct2pet_node.errors import InputError


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    # Fix the signs so the result is a proper rotation, not a reflection.
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _oblique_affine(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    affine = np.eye(4)
    affine[:3, :3] = _rotation(rng) * rng.uniform(0.4, 5.0, size=3)
    affine[:3, 3] = rng.uniform(-300.0, 300.0, size=3)
    return affine


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_round_trip_keeps_values_and_affine(seed: int) -> None:
    affine = _oblique_affine(seed)
    array = np.random.default_rng(seed).normal(size=(4, 5, 6)).astype(np.float32)

    back, back_affine = from_sitk(to_sitk(array, affine))

    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, array)
    np.testing.assert_allclose(back_affine, affine, atol=1e-9)


@pytest.mark.parametrize("seed", [3, 4])
def test_voxel_lands_at_the_affine_position(seed: int) -> None:
    affine = _oblique_affine(seed)
    array = np.zeros((4, 5, 6), dtype=np.float32)
    z, y, x = 3, 1, 4
    array[z, y, x] = 7.0

    image = to_sitk(array, affine)

    assert image.GetSize() == (6, 5, 4)
    assert image.GetPixel(x, y, z) == 7.0
    expected = affine @ np.array([x, y, z, 1.0])
    np.testing.assert_allclose(image.TransformIndexToPhysicalPoint((x, y, z)), expected[:3], atol=1e-9)


def test_axis_aligned_geometry_is_spacing_and_origin() -> None:
    affine = np.diag([0.5, 0.75, 3.0, 1.0])
    affine[:3, 3] = (-10.0, 20.0, 30.0)

    image = to_sitk(np.zeros((2, 3, 4), dtype=np.float32), affine)

    assert image.GetSpacing() == (0.5, 0.75, 3.0)
    assert image.GetOrigin() == (-10.0, 20.0, 30.0)
    assert image.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def test_image_does_not_share_the_array_buffer() -> None:
    array = np.zeros((2, 2, 2), dtype=np.float32)
    image = to_sitk(array, np.eye(4))
    array[0, 0, 0] = 5.0
    assert image.GetPixel(0, 0, 0) == 0.0


def test_sheared_affine_is_refused() -> None:
    affine = np.eye(4)
    affine[1, 2] = 0.3  # a tilted gantry: slices step sideways
    with pytest.raises(InputError, match="not orthogonal"):
        to_sitk(np.zeros((2, 2, 2), dtype=np.float32), affine)


def test_two_dimensional_input_is_refused() -> None:
    with pytest.raises(InputError, match=r"\(z, y, x\)"):
        to_sitk(np.zeros((2, 2), dtype=np.float32), np.eye(4))
    with pytest.raises(InputError, match="3-D scalar"):
        from_sitk(sitk.Image(4, 4, sitk.sitkFloat32))
