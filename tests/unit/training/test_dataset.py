"""Pairing geometry on a phantom with known physics, dataset files, and the real sample."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PositronEmissionTomographyImageStorage

from ct2pet_node.dicom.pet import PetSeries, SuvInputs, compute_suv_factor
from ct2pet_node.domain.model_grid import AIR_HU, ModelFrame
from ct2pet_node.domain.uids import SeriesUid, SopInstanceUid, StudyUid, Uid
from ct2pet_node.domain.volume import CtVolume, SourceSlice
from ct2pet_node.errors import InputError
from ct2pet_node.training.dataset import build_dataset, load_dataset
from ct2pet_node.training.pairing import pair_volumes
from tests.ctfactory import FRAME_OF_REFERENCE_UID, make_ct_series

FRAME = "1.2.826.0.1.3"
SIZE = 32
# The phantom CT's 51.2 mm and the 2 CT pixels of air the mapping keeps around a body that
# fills it: 68 pixels of 0.8 mm over 32 model pixels of 1.7 mm (finer than the PET's 2 mm).
PHANTOM_FRAME = ModelFrame(SIZE, 1.7)
# 76.8 mm: the phantom CT padded with 16 pixels of air each side, three CT pixels per model pixel.
WIDE_FRAME = ModelFrame(SIZE, 2.4)
# The DICOM studies' CT field of view (64 pixels of 0.8 mm) over 32 model pixels of 1.6 mm.
FOV = 51.2
# The PET activity and the CT value as functions of patient position (x, y, z in LPS mm).
# z weighs most so that pairing slices by index instead of position shows at once.
ACTIVITY = (5000.0, 20.0, -30.0, 100.0)  # Bq/ml: a + b x + c y + d z
HU = (-100.0, 5.0, -2.0)  # HU: a + b x + c y


def _activity(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    a, b, c, d = ACTIVITY
    return a + b * x + c * y + d * z


def _grid_points(affine: np.ndarray, shape: tuple[int, int, int]) -> tuple[np.ndarray, ...]:
    """LPS x, y, z of every voxel centre, each (z, y, x)."""
    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")
    points = affine @ np.stack([i, j, k, np.ones_like(i)]).reshape(4, -1)
    return tuple(points[axis].reshape(shape) for axis in range(3))


def _affine(spacing: tuple[float, float, float], origin: tuple[float, float, float]) -> np.ndarray:
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    return affine


def _phantom_ct() -> CtVolume:
    # 64x64 at 0.8 mm, 12 slices every 2.5 mm from z=0: field of view x, y in [-25.6, 25.6].
    affine = _affine((0.8, 0.8, 2.5), (-25.2, -25.2, 0.0))
    x, y, _ = _grid_points(affine, (12, 64, 64))
    hu = (HU[0] + HU[1] * x + HU[2] * y).astype(np.float32)
    sources = tuple(
        SourceSlice(SopInstanceUid(f"1.2.3.{k}"), Uid(CTImageStorage), (-25.2, -25.2, 2.5 * k))
        for k in range(12)
    )
    return CtVolume(
        hu=hu,
        affine=affine,
        study_uid=StudyUid("1.2.3"),
        series_uid=SeriesUid("1.2.3.100"),
        frame_of_reference_uid=Uid(FRAME),
        sources=sources,
        kvp=120.0,
    )


def _phantom_pet(spacing: float = 2.0, shape: tuple[int, int, int] = (10, 20, 30)) -> PetSeries:
    # Offset from the CT in plane and along z; slices every 3 mm from z=-1.3, so the
    # CT's last slice (z=27.5) lies beyond the PET's last slab (ends at 27.2).
    affine = _affine((spacing, spacing, 3.0), (-29.7, -28.7, -1.3))
    activity = _activity(*_grid_points(affine, shape)).astype(np.float32)
    inputs = SuvInputs(
        units="BQML",
        decay_correction="ADMIN",
        patient_weight_kg=70.0,
        injected_dose_bq=350e6,
        half_life_s=6586.2,
        injection_time=datetime(2024, 1, 1, 9, 0),
        reference_time=datetime(2024, 1, 1, 9, 0),
        reference_source="test",
    )
    return PetSeries(
        activity_bq_ml=activity,
        affine=affine,
        study_uid=StudyUid("1.2.3"),
        series_uid=SeriesUid("1.2.3.200"),
        frame_of_reference_uid=Uid(FRAME),
        sop_instance_uids=tuple(SopInstanceUid(f"1.2.4.{k}") for k in range(shape[0])),
        suv=compute_suv_factor(inputs),
    )


def test_pet_lands_at_its_physical_position_on_the_model_grid() -> None:
    ct, pet = _phantom_ct(), _phantom_pet()

    paired = pair_volumes(ct, pet, PHANTOM_FRAME)

    # Model grid: 32 pixels of 1.7 mm over the CT's 51.2 mm and 1.6 mm of air each side, first
    # centre 0.85 mm inside that edge; CT slices kept from z=0 up to the last one inside the
    # PET's axial field of view.
    np.testing.assert_allclose(paired.affine, _affine((1.7, 1.7, 2.5), (-26.35, -26.35, 0.0)), atol=1e-9)
    assert paired.mapping.region_shape == (68, 68)
    assert paired.pet_suv.shape == (11, SIZE, SIZE)
    assert paired.first_ct_slice == 0
    x, y, z = _grid_points(paired.affine, paired.pet_suv.shape)
    # Between PET voxel centres trilinear interpolation of a linear function is exact.
    interior = (
        (x >= -29.7)
        & (x <= -29.7 + 29 * 2.0)
        & (y >= -28.7)
        & (y <= -28.7 + 19 * 2.0)
        & (z >= -1.3)
        & (z <= -1.3 + 9 * 3.0)
    )
    assert interior.sum() > 0.5 * interior.size
    expected = _activity(x, y, z) * pet.suv.per_bq_ml
    np.testing.assert_allclose(paired.pet_suv[interior], expected[interior], rtol=1e-5)
    # The PET stops at y = 10.3 mm (half a voxel past its last centre): beyond, 0 SUV and outside.
    outside = y > -28.7 + 19.5 * 2.0
    assert outside.any()
    assert np.all(paired.pet_fov[outside] == 0) and np.all(paired.pet_suv[outside] == 0.0)
    assert np.all(paired.pet_fov[interior] == 1)


def test_ct_is_resized_onto_the_same_model_grid() -> None:
    paired = pair_volumes(_phantom_ct(), _phantom_pet(), WIDE_FRAME)

    # 32 pixels of 2.4 mm over 76.8 mm around the CT's centre (-0.4 mm: its pixel centres run
    # from -25.2 mm), first centre 1.2 mm inside that edge.
    np.testing.assert_allclose(paired.affine, _affine((2.4, 2.4, 2.5), (-37.2, -37.2, 0.0)), atol=1e-9)

    x, y, _ = _grid_points(paired.affine, paired.ct_hu.shape)
    # The antialiasing filter is symmetric, so a linear CT stays exact where it does not reach
    # the air around the CT (3 CT pixels either side of a model pixel's centre).
    expected = HU[0] + HU[1] * x + HU[2] * y
    np.testing.assert_allclose(paired.ct_hu[:, 6:26, 6:26], expected[:, 6:26, 6:26], atol=1e-3)
    np.testing.assert_allclose(paired.ct_hu[:, :4, :], -1024.0, atol=1e-3)


def test_a_finer_pet_is_smoothed_but_keeps_a_linear_activity() -> None:
    # 0.5 mm PET onto 1.6 mm model pixels: antialiased, and a symmetric blur keeps a linear function.
    pet = _phantom_pet(spacing=0.5, shape=(10, 120, 120))
    paired = pair_volumes(_phantom_ct(), pet, PHANTOM_FRAME)

    x, y, z = _grid_points(paired.affine, paired.pet_suv.shape)
    interior = (z >= -1.3) & (z <= 25.7) & (np.abs(x) < 20.0) & (y > -25.0) & (y < 25.0)
    expected = _activity(x, y, z) * pet.suv.per_bq_ml
    np.testing.assert_allclose(paired.pet_suv[interior], expected[interior], rtol=1e-4)


def test_series_of_another_frame_of_reference_are_refused() -> None:
    other = replace(_phantom_pet(), frame_of_reference_uid=Uid("1.2.9"))
    with pytest.raises(InputError, match="not registered"):
        pair_volumes(_phantom_ct(), other, PHANTOM_FRAME)


# --- DICOM folders made by code -------------------------------------------------------------------
def _file(path: Path, dataset: Dataset, sop_class: str, frame: str = FRAME) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.file_meta = meta
    dataset.SOPClassUID = sop_class
    dataset.StudyInstanceUID = "1.2.3"
    dataset.FrameOfReferenceUID = frame
    dataset.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated = dataset.BitsStored = 16
    dataset.HighBit = 15
    dataset.PixelRepresentation = 1
    dataset.PatientName = "PHANTOM^TEST"
    dataset.PatientID = "PHANTOM-ID-42"
    pydicom.dcmwrite(path, dataset, enforce_file_format=True)


def _write_pet(pet_dir: Path, frame: str = FRAME) -> Path:
    """8 PET slices of 30 x 30 pixels of 2 mm from (-29.7, -29.7, -1) mm, activity rising along z."""
    pet_dir.mkdir(parents=True)
    for k in range(8):
        ds = Dataset()
        ds.SOPInstanceUID = f"1.2.3.200.{k}"
        ds.SeriesInstanceUID = "1.2.3.200"
        ds.Modality = "PT"
        ds.Units, ds.DecayCorrection, ds.PatientWeight = "BQML", "START", "59"
        ds.SeriesDate, ds.SeriesTime = "20230826", "105134"
        ds.AcquisitionDate, ds.AcquisitionTime = "20230826", "110236"
        drug = Dataset()
        drug.RadiopharmaceuticalStartTime = "094500"
        drug.RadionuclideTotalDose = "325600000"
        drug.RadionuclideHalfLife = "6588"
        ds.RadiopharmaceuticalInformationSequence = Sequence([drug])
        ds.ImagePositionPatient = [-29.7, -29.7, -1.0 + 2.5 * k]
        ds.PixelSpacing = [2.0, 2.0]
        ds.Rows = ds.Columns = 30
        ds.RescaleSlope, ds.RescaleIntercept = str(0.5 * (k + 1)), "0"
        ds.PixelData = np.full((30, 30), 1000, dtype=np.int16).tobytes()
        _file(pet_dir / f"{k:03d}.dcm", ds, PositronEmissionTomographyImageStorage, frame)
    return pet_dir


def _write_study(root: Path, ct_series: str = "1.2.3.100") -> tuple[Path, Path]:
    """A CT of 64 x 64 pixels of 0.8 mm (51.2 mm): 40 HU in rows and columns 8:56, air around."""
    ct_dir = root / "ct"
    ct_dir.mkdir(parents=True)
    hu = np.full((64, 64), -1000, dtype=np.int16)
    hu[8:56, 8:56] = 40
    for k in range(8):
        ds = Dataset()
        ds.SOPInstanceUID = f"{ct_series}.{k}"
        ds.SeriesInstanceUID = ct_series
        ds.Modality = "CT"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.KVP = "120"
        ds.ImagePositionPatient = [-25.2, -25.2, 2.5 * k]
        ds.PixelSpacing = [0.8, 0.8]
        ds.SliceThickness = "2.5"
        ds.Rows = ds.Columns = 64
        ds.RescaleSlope, ds.RescaleIntercept = "1", "-1024"
        ds.PixelData = (hu + 1024).astype(np.int16).tobytes()
        # File names run against position on purpose.
        _file(ct_dir / f"{7 - k:03d}.dcm", ds, CTImageStorage)
    return ct_dir, _write_pet(root / "pet")


def test_build_writes_arrays_and_a_manifest_without_patient_identity(tmp_path: Path) -> None:
    ct_dir, pet_dir = _write_study(tmp_path / "in")
    out = tmp_path / "dataset"

    entry = build_dataset(ct_dir, pet_dir, out, size=SIZE, field_of_view_mm=FOV)

    text = (out / "manifest.json").read_text()
    assert "PHANTOM" not in text and "20230826" not in text
    manifest = json.loads(text)
    assert manifest["format_version"] == 2 and manifest["size"] == SIZE
    assert manifest["field_of_view_mm"] == FOV and manifest["pixel_spacing_mm"] == pytest.approx(1.6)
    [study] = manifest["studies"]
    assert study["ct_series_uid"] == "1.2.3.100" and study["pet_series_uid"] == "1.2.3.200"
    assert study["grid_mapping"] == "in the model's orientation; field of view 51 mm as the model's"
    assert study["ct_sop_uids"] == [f"1.2.3.100.{k}" for k in range(8)]
    assert study["z_positions_mm"] == pytest.approx([2.5 * k for k in range(8)])
    assert study["suv_factor"] == pytest.approx(2.7585e-4, rel=1e-3)
    assert study["suv_inputs"]["decay_seconds"] == 3994.0
    dataset = load_dataset(out)
    assert dataset.studies == (entry,)
    assert dataset.frame == ModelFrame(SIZE, FOV / SIZE)
    arrays = dataset.arrays(entry)
    assert arrays.ct_hu.dtype == np.float32 and arrays.ct_hu.shape == (8, SIZE, SIZE)
    # The body's edges fall on model pixel edges (CT pixels 8 and 56 of 64 -> 4 and 28 of 32);
    # the antialiasing filter reaches one model pixel across them.
    np.testing.assert_allclose(arrays.ct_hu[:, 5:27, 5:27], 40.0, atol=1e-3)
    np.testing.assert_allclose(arrays.ct_hu[:, :3, :], -1000.0, atol=1e-3)
    # Each CT slice lies between two PET slices of slopes 0.5 (k+1): activity grows along z.
    assert np.all(np.diff(arrays.pet_suv[:, SIZE // 2, SIZE // 2]) > 0)
    assert arrays.body_mask.dtype == np.uint8
    assert arrays.body_mask[:, 5:27, 5:27].all() and not arrays.body_mask[:, :3, :].any()


def test_second_add_of_a_ct_series_is_refused_unless_overwritten(tmp_path: Path) -> None:
    ct_dir, pet_dir = _write_study(tmp_path / "in")
    out = tmp_path / "dataset"
    build_dataset(ct_dir, pet_dir, out, size=SIZE, field_of_view_mm=FOV)

    with pytest.raises(InputError, match="already in dataset"):
        build_dataset(ct_dir, pet_dir, out, size=SIZE, field_of_view_mm=FOV)
    with pytest.raises(InputError, match="build with size 32"):
        build_dataset(ct_dir, pet_dir, out, size=64, field_of_view_mm=FOV, overwrite=True)
    with pytest.raises(InputError, match=r"51\.2 mm field of view, not 500 mm"):
        build_dataset(ct_dir, pet_dir, out, size=SIZE, overwrite=True)
    build_dataset(ct_dir, pet_dir, out, size=SIZE, field_of_view_mm=FOV, overwrite=True, slices=(2, 6))

    [study] = load_dataset(out).studies
    assert study.n_slices == 4 and study.ct_sop_uids[0] == "1.2.3.100.2"


def test_studies_accumulate_in_one_dataset(tmp_path: Path) -> None:
    out = tmp_path / "dataset"
    build_dataset(*_write_study(tmp_path / "a", "1.2.3.100"), out, size=SIZE, field_of_view_mm=FOV)
    build_dataset(*_write_study(tmp_path / "b", "1.2.3.101"), out, size=SIZE, field_of_view_mm=FOV)
    assert [s.ct_series_uid for s in load_dataset(out).studies] == ["1.2.3.100", "1.2.3.101"]


def test_loading_a_folder_without_a_manifest_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"no manifest\.json"):
        load_dataset(tmp_path)


def test_a_version_1_dataset_is_refused_with_the_fix(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"format_version": 1, "size": SIZE, "studies": []}))
    with pytest.raises(InputError, match=r"version 1 dataset .* rebuild it"):
        load_dataset(tmp_path)


# --- stored orientation and field of view ---------------------------------------------------------
FEET_FIRST = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def _phantom_hu(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """An asymmetric body in air (HU, air as a scanner writes it) by patient position in LPS mm.

    A flip or a shift shows.
    """
    body = (x > -18.0) & (x < 12.0) & (y > -14.0) & (y < 15.0)
    bone = (x - 6.0) ** 2 + (y + 8.0) ** 2 < 16.0
    # Whole HU, never near a rounding tie (positions are multiples of 0.8 mm, z of 2.5 mm).
    soft = np.round(40.25 + 2.0 * x - y + z)
    return np.where(bone, 700.0, np.where(body, soft, AIR_HU))


def _write_phantom_ct(directory: Path, name: str, pixels: int = 64, feet_first: bool = False) -> Path:
    """The phantom as 8 slices (z = 0, 2.5, ... mm) of ``pixels`` square pixels of 0.8 mm.

    Centred as the factory centres a CT; feet first the columns run from the patient's
    left to right and DICOM stacks the slices head to feet.
    """
    centres = -0.4 * pixels + 0.8 * np.arange(pixels)
    columns_x = centres[::-1] if feet_first else centres
    z = 2.5 * np.arange(8)
    hu = _phantom_hu(columns_x[None, None, :], centres[None, :, None], z[:, None, None])

    def first_column_at_the_right_place(k: int, ds: Dataset) -> None:
        ds.ImagePositionPatient = [f"{columns_x[0]:.6g}", f"{centres[0]:.6g}", f"{z[k]:.6g}"]

    make_ct_series(
        directory,
        n=8,
        name=name,
        rows=pixels,
        cols=pixels,
        spacing=(0.8, 0.8),
        step=-2.5 if feet_first else 2.5,
        first_z=0.0,
        orientation=FEET_FIRST if feet_first else (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
        hu=hu,
        mutate=first_column_at_the_right_place,
    )
    return directory


def _arrays(out: Path, ct_series_uid: str) -> dict[str, np.ndarray]:
    dataset = load_dataset(out)
    [study] = [s for s in dataset.studies if s.ct_series_uid == ct_series_uid]
    arrays = dataset.arrays(study)
    return {name: np.array(getattr(arrays, name)) for name in ("ct_hu", "pet_suv", "pet_fov", "body_mask")}


def test_a_ct_stored_feet_first_gives_the_dataset_of_the_same_ct_stored_head_first(tmp_path: Path) -> None:
    pet_dir = _write_pet(tmp_path / "pet", FRAME_OF_REFERENCE_UID)
    out = tmp_path / "dataset"
    head = build_dataset(
        _write_phantom_ct(tmp_path / "hfs", "hfs"), pet_dir, out, size=SIZE, field_of_view_mm=FOV
    )
    feet = build_dataset(
        _write_phantom_ct(tmp_path / "ffs", "ffs", feet_first=True),
        pet_dir,
        out,
        size=SIZE,
        field_of_view_mm=FOV,
    )

    assert head.grid_mapping == "in the model's orientation; field of view 51 mm as the model's"
    assert feet.grid_mapping.startswith("flipped left-right to the model's orientation")
    np.testing.assert_allclose(feet.affine_matrix, head.affine_matrix, atol=1e-9)
    assert feet.z_positions_mm == pytest.approx(head.z_positions_mm)
    expected, got = _arrays(out, head.ct_series_uid), _arrays(out, feet.ct_series_uid)
    for name in ("ct_hu", "pet_fov", "body_mask"):
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    np.testing.assert_allclose(got["pet_suv"], expected["pet_suv"], rtol=1e-6)
    # The phantom's bone (x 2..10 mm, y -12..-4 mm) is right of centre and anterior, as in LPS.
    bone = np.argwhere(expected["ct_hu"][0] > 500.0).mean(axis=0)
    assert bone[1] > SIZE / 2 and bone[0] < SIZE / 2


@pytest.mark.parametrize(("pixels", "done"), [(48, "padded with air"), (80, "cropped")])
def test_a_ct_of_another_field_of_view_is_padded_or_cropped_to_the_datasets(
    tmp_path: Path, pixels: int, done: str
) -> None:
    # 38.4 and 64 mm CTs of the phantom: on the dataset's 51.2 mm, pixel for pixel the 51.2 mm CT's.
    pet_dir = _write_pet(tmp_path / "pet", FRAME_OF_REFERENCE_UID)
    out = tmp_path / "dataset"
    same = build_dataset(
        _write_phantom_ct(tmp_path / "a", "a"), pet_dir, out, size=SIZE, field_of_view_mm=FOV
    )
    other = build_dataset(
        _write_phantom_ct(tmp_path / "b", f"b{pixels}", pixels), pet_dir, out, size=SIZE, field_of_view_mm=FOV
    )

    assert f"field of view {pixels * 0.8:.0f} x {pixels * 0.8:.0f} mm {done} to 51 mm" in other.grid_mapping
    np.testing.assert_allclose(other.affine_matrix, same.affine_matrix, atol=1e-9)
    expected, got = _arrays(out, same.ct_series_uid), _arrays(out, other.ct_series_uid)
    for name in ("ct_hu", "pet_fov", "body_mask"):
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    np.testing.assert_allclose(got["pet_suv"], expected["pet_suv"], rtol=1e-6)


# --- the real sample ------------------------------------------------------------------------------
@pytest.mark.slow
def test_sample_study_pairs_with_a_plausible_suv(sample_dir: Path, tmp_path: Path) -> None:
    entry = build_dataset(sample_dir / "CT", sample_dir / "PT", tmp_path / "dataset", slices=(230, 247))

    assert entry.n_slices == 17
    assert entry.suv_factor == pytest.approx(2.7585e-4, rel=1e-3)
    assert entry.suv_max_source == pytest.approx(24.7, abs=0.05)
    arrays = load_dataset(tmp_path / "dataset").arrays(entry)
    assert arrays.pet_fov.all()
    suv_max = float(arrays.pet_suv.max())
    # The hottest voxel (brain) is in the top slices. Resampling onto a grid offset by a
    # quarter voxel may only lower the peak, and not below half of it.
    assert 0.5 * entry.suv_max_source < suv_max <= entry.suv_max_source
    # Inside the body the PET is warm (background SUV ~0.5-3); outside it is near 0.
    body = arrays.body_mask.astype(bool)
    assert 0.3 < float(np.median(arrays.pet_suv[body])) < 3.0
    assert float(np.median(arrays.pet_suv[~body])) < 0.1
    # Air around the patient in HU, tissue inside.
    assert float(np.median(arrays.ct_hu[~body])) < -900.0
    assert -200.0 < float(np.median(arrays.ct_hu[body])) < 200.0
