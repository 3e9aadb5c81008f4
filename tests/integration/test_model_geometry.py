"""The demo model sees the shared sample the same way however the CT was stored or reconstructed.

The sample (head-first supine, 512 x 512 over 500 mm) is rewritten by code into
each of the eight right-angle in-plane storages, padded to a wider field of
view, and resampled to another pixel size; each goes the node's way (one
mapping in, the engine, one mapping out) and is compared with the original.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ct2pet_node.config import load_config
from ct2pet_node.dicom.resample import pet_on_grid, resample_in_plane
from ct2pet_node.dicom.volume import build_ct_volume, scan_folder
from ct2pet_node.domain.inplane import ALL_OPS, InPlaneOp
from ct2pet_node.domain.model_grid import AIR_HU
from ct2pet_node.domain.volume import CtVolume, PetUnits, PetVolume
from ct2pet_node.engine import load_pipeline
from ct2pet_node.engine.pipeline import Pipeline
from ct2pet_node.routing.qualify import qualify_series
from ct2pet_node.service.synthesis import map_to_model

DEMO_WEIGHTS = Path(__file__).resolve().parents[2] / "weights" / "demo"
# Three slices through the liver and kidneys; three steps: the geometry, not the sampling, is on trial.
SLICES = slice(130, 133)
STEPS = 3

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo() -> Pipeline:
    return load_pipeline(DEMO_WEIGHTS, device="cpu")


@pytest.fixture(scope="module")
def sample_ct(sample_dir: Path) -> CtVolume:
    (headers,) = scan_folder(sample_dir / "CT").values()
    whole = build_ct_volume(qualify_series(headers, load_config().routing))
    affine = whole.affine.copy()
    affine[:3, 3] = (whole.affine @ (0, 0, SLICES.start, 1))[:3]
    return _like(whole, whole.hu[SLICES], affine, whole.sources[SLICES])


def _like(ct: CtVolume, hu: np.ndarray, affine: np.ndarray, sources: tuple = ()) -> CtVolume:  # type: ignore[type-arg]
    return CtVolume(
        hu=np.ascontiguousarray(hu, dtype=np.float32),
        affine=affine,
        study_uid=ct.study_uid,
        series_uid=ct.series_uid,
        frame_of_reference_uid=ct.frame_of_reference_uid,
        sources=sources or ct.sources,
        kvp=ct.kvp,
    )


def _translate(demo: Pipeline, ct: CtVolume) -> PetVolume:
    """The node's way: map in, translate on the model grid, and hand back the model grid."""
    mapping = map_to_model(ct, demo.frame)
    values = demo.translate_region(mapping.to_region(ct.hu), kvp=ct.kvp, steps=STEPS, eta=0.0, seed=7)
    return PetVolume(values, mapping.model_affine, PetUnits(demo.output_units), ct)


def _stored_as(ct: CtVolume, op: InPlaneOp) -> CtVolume:
    shape = (ct.hu.shape[1], ct.hu.shape[2])
    return _like(ct, op.apply(ct.hu), op.apply_to_affine(ct.affine, shape))


def test_the_samples_grid_is_the_demos_so_the_model_sees_it_as_before(
    demo: Pipeline, sample_ct: CtVolume
) -> None:
    mapping = map_to_model(sample_ct, demo.frame)
    assert mapping.op.is_identity and mapping.region_shape == sample_ct.hu.shape[1:]
    # The bare-array API without a pixel size is today's path; with the sample's own it is the same.
    plain = demo(sample_ct.hu, kvp=sample_ct.kvp, steps=STEPS, eta=0.0, seed=7)
    spacing = sample_ct.spacing
    mapped = demo(
        sample_ct.hu, kvp=sample_ct.kvp, steps=STEPS, eta=0.0, seed=7, pixel_spacing=(spacing[1], spacing[0])
    )
    np.testing.assert_array_equal(mapped, plain)


@pytest.mark.parametrize("op", ALL_OPS[1:], ids=lambda op: op.describe())
def test_every_patient_position_gives_the_head_first_supine_output_bit_for_bit(
    demo: Pipeline, sample_ct: CtVolume, op: InPlaneOp
) -> None:
    reference = _translate(demo, sample_ct)
    stored = _stored_as(sample_ct, op)
    result = _translate(demo, stored)
    # The re-indexing that undoes the storage: the same op, or for a rotation the opposite one.
    assert not map_to_model(stored, demo.frame).op.is_identity
    for grid in ("model", "ct"):
        expected = pet_on_grid(reference, grid).values
        written = pet_on_grid(result, grid).values
        # Mapped back to the head-first-supine pixel order: the very same numbers.
        np.testing.assert_array_equal(op.invert(written), expected)


def test_a_wider_reconstruction_gives_the_same_pet_where_the_ct_is_the_same(
    demo: Pipeline, sample_ct: CtVolume
) -> None:
    pad = 64
    wide_affine = sample_ct.affine.copy()
    wide_affine[:3, 3] -= pad * (sample_ct.affine[:3, 0] + sample_ct.affine[:3, 1])
    wide = _like(
        sample_ct, np.pad(sample_ct.hu, ((0, 0), (pad, pad), (pad, pad)), constant_values=AIR_HU), wide_affine
    )
    narrow_pet, wide_pet = _translate(demo, sample_ct), _translate(demo, wide)
    np.testing.assert_array_equal(wide_pet.values, narrow_pet.values)
    np.testing.assert_allclose(wide_pet.affine, narrow_pet.affine, atol=1e-9)
    on_wide_ct = pet_on_grid(wide_pet, "ct").values
    on_narrow_ct = pet_on_grid(narrow_pet, "ct").values
    np.testing.assert_allclose(on_wide_ct[:, pad:-pad, pad:-pad], on_narrow_ct, atol=1e-5)
    assert on_wide_ct[:, :pad].max() == 0.0
    # What the node did before: the whole 625 mm squeezed into the model's matrix.
    squeezed = demo(wide.hu, kvp=wide.kvp, steps=STEPS, eta=0.0, seed=7)[:, pad:-pad, pad:-pad]
    assert (
        np.abs(squeezed - on_narrow_ct).mean()
        > 10 * np.abs(on_wide_ct[:, pad:-pad, pad:-pad] - on_narrow_ct).mean()
    )


def test_another_pixel_size_gives_the_same_pet_within_the_outputs_resampling_error(
    demo: Pipeline, sample_ct: CtVolume
) -> None:
    # The same anatomy on 1.5625 mm pixels over 600 mm (400 pixels), air beyond the original 500 mm.
    size, spacing = 384, 600.0 / 384
    coarse_affine = sample_ct.affine.copy()
    coarse_affine[:3, :2] = (
        sample_ct.affine[:3, :2] / np.linalg.norm(sample_ct.affine[:3, :2], axis=0) * spacing
    )
    centre = sample_ct.affine @ (255.5, 255.5, 0, 1)
    coarse_affine[:3, 3] = (centre - coarse_affine @ ((size - 1) / 2, (size - 1) / 2, 0, 0))[:3]
    hu = resample_in_plane(sample_ct.hu + 1024.0, sample_ct.affine, coarse_affine, (size, size)) - 1024.0
    coarse = _like(sample_ct, hu, coarse_affine)
    fine_pet, coarse_pet = _translate(demo, sample_ct), _translate(demo, coarse)
    # Both model grids are the same 500 mm around the same centre.
    np.testing.assert_allclose(coarse_pet.affine, fine_pet.affine, atol=1e-3)
    # Both model grids are the same patient space, so compare there. The yardstick: what the
    # output's own resampling costs, onto the CT's grid and back (0.0010 SUV on this sample).
    difference = np.abs(coarse_pet.values - fine_pet.values).mean()
    fine = pet_on_grid(fine_pet, "ct").values
    round_trip = resample_in_plane(fine, sample_ct.affine, fine_pet.affine, fine_pet.values.shape[1:])
    resampling_error = np.abs(round_trip - fine_pet.values).mean()
    assert difference <= 2.0 * resampling_error
    assert np.corrcoef(coarse_pet.values.ravel(), fine_pet.values.ravel())[0, 1] > 0.999
    # What the node did before: 600 mm squeezed into the model's matrix, then back.
    squeezed = demo(coarse.hu, kvp=coarse.kvp, steps=STEPS, eta=0.0, seed=7)
    squeezed_on_fine = resample_in_plane(squeezed, coarse_affine, sample_ct.affine, fine.shape[1:])
    assert np.abs(squeezed_on_fine - fine).mean() > 10 * resampling_error
