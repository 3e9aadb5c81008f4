"""The one mapping of a CT's grid onto a model's frame: exact re-indexing, whole-pixel regions."""

from __future__ import annotations

import numpy as np
import pytest

from ct2pet_node.domain.inplane import ALL_OPS, InPlaneOp, orientation_op
from ct2pet_node.domain.model_grid import (
    AIR_HU,
    HEAD_FIRST_SUPINE,
    ModelFrame,
    body_extent,
    plan_model_grid,
)
from ct2pet_node.errors import InputError

# The shared sample's grid and the demo model's frame: 512 pixels of 500/512 mm, 128 of 500/128 mm.
SAMPLE_SPACING = 500.0 / 512
DEMO = ModelFrame(128, 500.0 / 128)


def hfs_affine(spacing: float, size: int, z_step: float = 2.5) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = np.diag([spacing, spacing, z_step])
    affine[:3, 3] = (-size * spacing / 2, -size * spacing / 2, -100.0)
    return affine


def pixel_centres(affine: np.ndarray, rows: int, columns: int) -> np.ndarray:
    y, x = np.meshgrid(np.arange(rows), np.arange(columns), indexing="ij")
    voxels = np.stack([x, y, np.zeros_like(x), np.ones_like(x)], axis=-1).astype(float)
    return (voxels @ affine.T)[..., :3]


@pytest.mark.parametrize("op", ALL_OPS, ids=InPlaneOp.describe)
def test_every_op_is_inverted_and_moves_its_affine_with_the_pixels(op: InPlaneOp) -> None:
    values = np.random.default_rng(0).random((2, 5, 7))
    moved = op.apply(values)
    np.testing.assert_array_equal(op.invert(moved), values)
    affine = hfs_affine(0.8, 5)
    affine[:3, 1] *= 1.5  # non-square pixels, so a transpose that forgets to swap spacing fails
    moved_affine = op.apply_to_affine(affine, (5, 7))
    # Each pixel keeps its patient position: look up where every moved pixel came from.
    original = pixel_centres(affine, 5, 7)
    positions = pixel_centres(moved_affine, *moved.shape[1:])
    index = np.arange(35).reshape(5, 7)
    came_from = op.apply(index)
    np.testing.assert_allclose(positions, original.reshape(35, 3)[came_from], atol=1e-9)


@pytest.mark.parametrize("op", ALL_OPS, ids=InPlaneOp.describe)
def test_a_box_is_moved_as_the_pixels_it_holds(op: InPlaneOp) -> None:
    inside = np.full((1, 9, 13), AIR_HU)
    inside[0, 2:5, 7:12] = 1000.0
    assert op.apply_to_box((2, 5, 7, 12), (9, 13)) == body_extent(op.apply(inside))


@pytest.mark.parametrize("op", ALL_OPS, ids=InPlaneOp.describe)
def test_each_stored_orientation_is_brought_back_to_the_models_exactly(op: InPlaneOp) -> None:
    # A CT stored as ``op`` of a head-first-supine one (feet first, prone, transposed ...).
    hfs = hfs_affine(SAMPLE_SPACING, 512)
    stored = op.apply_to_affine(hfs, (512, 512))
    found, residual = orientation_op(stored, (512, 512), HEAD_FIRST_SUPINE)
    assert residual == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_allclose(found.apply_to_affine(stored, (512, 512)), hfs, atol=1e-9)
    hu = np.random.default_rng(1).normal(size=(3, 512, 512)).astype(np.float32)
    mapping = plan_model_grid(stored, (512, 512), DEMO)
    reference = plan_model_grid(hfs, (512, 512), DEMO)
    np.testing.assert_array_equal(mapping.to_region(op.apply(hu)), reference.to_region(hu))
    np.testing.assert_allclose(mapping.model_affine, reference.model_affine, atol=1e-9)
    assert ("in the model's orientation" in mapping.describe()) == op.is_identity


def test_the_shared_samples_field_of_view_is_the_demos_so_nothing_is_padded_or_cropped() -> None:
    mapping = plan_model_grid(hfs_affine(SAMPLE_SPACING, 512), (512, 512), DEMO)
    assert mapping.op.is_identity
    assert mapping.region_shape == (512, 512)
    assert mapping.scale == pytest.approx(1.0)
    hu = np.random.default_rng(2).normal(size=(2, 512, 512)).astype(np.float32)
    assert np.shares_memory(mapping.to_region(hu), hu) or np.array_equal(mapping.to_region(hu), hu)
    # The model grid covers the CT's field of view edge to edge, as an image resize does.
    np.testing.assert_allclose(np.linalg.norm(mapping.model_affine[:3, :2], axis=0), (500 / 128, 500 / 128))
    first_edge = hfs_affine(SAMPLE_SPACING, 512) @ (-0.5, -0.5, 0, 1)
    np.testing.assert_allclose(mapping.model_affine @ (-0.5, -0.5, 0, 1), first_edge, atol=1e-9)


def test_a_ct_at_the_training_pixel_size_and_matrix_goes_through_as_it_is() -> None:
    mapping = plan_model_grid(hfs_affine(DEMO.pixel_spacing_mm, 128), (128, 128), DEMO)
    assert mapping.region_shape == (128, 128)
    np.testing.assert_allclose(mapping.model_affine, hfs_affine(DEMO.pixel_spacing_mm, 128))
    assert mapping.describe() == "in the model's orientation"


def test_a_wider_reconstruction_is_cropped_back_to_the_models_field_of_view() -> None:
    # The same pixels padded with air to 640: a 625 mm reconstruction of the same patient.
    hu = np.full((2, 512, 512), AIR_HU, np.float32)
    hu[:, 100:400, 60:450] = 40.0
    wide = np.pad(hu, ((0, 0), (64, 64), (64, 64)), constant_values=AIR_HU)
    narrow_map = plan_model_grid(hfs_affine(SAMPLE_SPACING, 512), (512, 512), DEMO, body_extent(hu))
    wide_map = plan_model_grid(hfs_affine(SAMPLE_SPACING, 640), (640, 640), DEMO, body_extent(wide))
    np.testing.assert_array_equal(wide_map.to_region(wide), narrow_map.to_region(hu))
    np.testing.assert_allclose(wide_map.model_affine, narrow_map.model_affine, atol=1e-9)
    assert "cropped" in wide_map.describe()
    # Back onto the wide CT: the model's values where it saw, 0 where the CT reached beyond.
    back = wide_map.from_region(np.ones((2, 512, 512), np.float32))
    assert back.shape == (2, 640, 640)
    assert back[:, 64:576, 64:576].min() == 1.0 and back[:, :64].max() == 0.0


def test_a_smaller_field_of_view_is_padded_with_air() -> None:
    affine = hfs_affine(SAMPLE_SPACING, 400)
    hu = np.zeros((1, 400, 400), np.float32)
    mapping = plan_model_grid(affine, (400, 400), DEMO, body_extent(hu))
    region = mapping.to_region(hu)
    assert region.shape == (1, 512, 512)
    assert region[0, 0, 0] == AIR_HU and region[0, 256, 256] == 0.0
    assert "padded with air" in mapping.describe()
    np.testing.assert_array_equal(mapping.from_region(region), hu)


def test_a_body_wider_than_the_models_field_of_view_is_shrunk_not_cut() -> None:
    # 700 mm reconstruction of a 600 mm wide body (arms down): cropping to 500 mm would cut it.
    spacing = 700.0 / 512
    hu = np.full((1, 512, 512), AIR_HU, np.float32)
    body = slice(256 - 220, 256 + 220)  # 440 pixels of 1.37 mm: 601 mm
    hu[:, 200:320, body] = 0.0
    mapping = plan_model_grid(hfs_affine(spacing, 512), (512, 512), DEMO, body_extent(hu))
    region = mapping.to_region(hu)
    assert (region[:, :, 0] == AIR_HU).all() and (region[:, :, -1] == AIR_HU).all()
    assert (region > AIR_HU).sum() == (hu > AIR_HU).sum()
    assert mapping.scale > 1.19
    assert "wider than the model's 500 mm field of view" in mapping.describe()
    # Square model pixels all the same: the body is shrunk, not squeezed.
    spacings = np.linalg.norm(mapping.model_affine[:3, :2], axis=0)
    assert spacings[0] == pytest.approx(spacings[1], rel=1e-3)


def test_an_in_plane_rotation_is_kept_and_said() -> None:
    angle = np.radians(3.0)
    affine = hfs_affine(SAMPLE_SPACING, 512)
    turn = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1.0]])
    affine[:3, :3] = turn @ affine[:3, :3]
    mapping = plan_model_grid(affine, (512, 512), DEMO)
    assert mapping.op.is_identity
    assert mapping.residual_degrees == pytest.approx(3.0, abs=1e-6)
    assert "3.0° between the slices' axes and the model's left as is" in mapping.describe()


def test_frames_are_checked_and_read_back() -> None:
    assert ModelFrame.from_json(DEMO.to_json()) == DEMO
    assert ModelFrame.release_default(256).pixel_spacing_mm == pytest.approx(500 / 256)
    assert ModelFrame.release_default(256).assumed
    with pytest.raises(InputError, match="pixel spacing"):
        ModelFrame(128, 0.0)
    with pytest.raises(InputError, match="orientation"):
        ModelFrame(128, 1.0, (1.0, 0.0, 0.0, 1.0, 0.0, 0.0))
    with pytest.raises(InputError, match="unreadable"):
        ModelFrame.from_json({"matrix": 128})


def test_a_body_that_fills_the_field_of_view_is_not_a_reason_to_widen() -> None:
    # Truncated by the reconstruction already: the region is the CT itself, as the model's.
    hu = np.zeros((1, 128, 128), np.float32)
    mapping = plan_model_grid(hfs_affine(DEMO.pixel_spacing_mm, 128), (128, 128), DEMO, body_extent(hu))
    assert mapping.region_shape == (128, 128) and mapping.scale == pytest.approx(1.0)
