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
from ct2pet_node.domain.uids import SeriesUid, SopInstanceUid, StudyUid, Uid
from ct2pet_node.domain.volume import CtVolume, SourceSlice
from ct2pet_node.errors import InputError
from ct2pet_node.training.dataset import build_dataset, load_dataset
from ct2pet_node.training.pairing import pair_volumes

FRAME = "1.2.826.0.1.3"
SIZE = 32
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

    paired = pair_volumes(ct, pet, SIZE)

    # Model grid: 32 pixels of 1.6 mm over the CT's 51.2 mm, first centre 0.8 mm inside its edge;
    # CT slices kept from z=0 up to the last one inside the PET's axial field of view.
    np.testing.assert_allclose(paired.affine, _affine((1.6, 1.6, 2.5), (-24.8, -24.8, 0.0)), atol=1e-9)
    assert paired.pet_suv.shape == (11, SIZE, SIZE)
    assert paired.first_ct_slice == 0
    x, y, z = _grid_points(paired.affine, paired.pet_suv.shape)
    # Between PET voxel centres trilinear interpolation of a linear function is exact.
    interior = (y <= -28.7 + 19 * 2.0) & (z >= -1.3) & (z <= -1.3 + 9 * 3.0)
    assert interior.sum() > 0.5 * interior.size
    expected = _activity(x, y, z) * pet.suv.per_bq_ml
    np.testing.assert_allclose(paired.pet_suv[interior], expected[interior], rtol=1e-5)
    # The PET stops at y = 10.3 mm (half a voxel past its last centre): beyond, 0 SUV and outside.
    outside = y > -28.7 + 19.5 * 2.0
    assert outside.any()
    assert np.all(paired.pet_fov[outside] == 0) and np.all(paired.pet_suv[outside] == 0.0)
    assert np.all(paired.pet_fov[interior] == 1)


def test_ct_is_resized_onto_the_same_model_grid() -> None:
    paired = pair_volumes(_phantom_ct(), _phantom_pet(), SIZE)

    x, y, _ = _grid_points(paired.affine, paired.ct_hu.shape)
    # The antialiasing filter is symmetric, so a linear CT stays exact away from the border ring.
    expected = HU[0] + HU[1] * x + HU[2] * y
    np.testing.assert_allclose(paired.ct_hu[:, 1:-1, 1:-1], expected[:, 1:-1, 1:-1], atol=1e-3)


def test_a_finer_pet_is_smoothed_but_keeps_a_linear_activity() -> None:
    # 0.5 mm PET onto 1.6 mm model pixels: antialiased, and a symmetric blur keeps a linear function.
    pet = _phantom_pet(spacing=0.5, shape=(10, 120, 120))
    paired = pair_volumes(_phantom_ct(), pet, SIZE)

    x, y, z = _grid_points(paired.affine, paired.pet_suv.shape)
    interior = (z >= -1.3) & (z <= 25.7) & (np.abs(x) < 20.0) & (y > -25.0) & (y < 25.0)
    expected = _activity(x, y, z) * pet.suv.per_bq_ml
    np.testing.assert_allclose(paired.pet_suv[interior], expected[interior], rtol=1e-4)


def test_series_of_another_frame_of_reference_are_refused() -> None:
    other = replace(_phantom_pet(), frame_of_reference_uid=Uid("1.2.9"))
    with pytest.raises(InputError, match="not registered"):
        pair_volumes(_phantom_ct(), other, SIZE)


# --- DICOM folders made by code -------------------------------------------------------------------
def _file(path: Path, dataset: Dataset, sop_class: str) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.file_meta = meta
    dataset.SOPClassUID = sop_class
    dataset.StudyInstanceUID = "1.2.3"
    dataset.FrameOfReferenceUID = FRAME
    dataset.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated = dataset.BitsStored = 16
    dataset.HighBit = 15
    dataset.PixelRepresentation = 1
    dataset.PatientName = "PHANTOM^TEST"
    dataset.PatientID = "PHANTOM-ID-42"
    pydicom.dcmwrite(path, dataset, enforce_file_format=True)


def _write_study(root: Path, ct_series: str = "1.2.3.100") -> tuple[Path, Path]:
    ct_dir, pet_dir = root / "ct", root / "pet"
    ct_dir.mkdir(parents=True)
    pet_dir.mkdir(parents=True)
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
        ds.PixelData = np.full((64, 64), 1024 + 40, dtype=np.int16).tobytes()
        # File names run against position on purpose.
        _file(ct_dir / f"{7 - k:03d}.dcm", ds, CTImageStorage)
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
        _file(pet_dir / f"{k:03d}.dcm", ds, PositronEmissionTomographyImageStorage)
    return ct_dir, pet_dir


def test_build_writes_arrays_and_a_manifest_without_patient_identity(tmp_path: Path) -> None:
    ct_dir, pet_dir = _write_study(tmp_path / "in")
    out = tmp_path / "dataset"

    entry = build_dataset(ct_dir, pet_dir, out, size=SIZE)

    text = (out / "manifest.json").read_text()
    assert "PHANTOM" not in text and "20230826" not in text
    manifest = json.loads(text)
    assert manifest["format_version"] == 1 and manifest["size"] == SIZE
    [study] = manifest["studies"]
    assert study["ct_series_uid"] == "1.2.3.100" and study["pet_series_uid"] == "1.2.3.200"
    assert study["ct_sop_uids"] == [f"1.2.3.100.{k}" for k in range(8)]
    assert study["z_positions_mm"] == pytest.approx([2.5 * k for k in range(8)])
    assert study["suv_factor"] == pytest.approx(2.7585e-4, rel=1e-3)
    assert study["suv_inputs"]["decay_seconds"] == 3994.0
    dataset = load_dataset(out)
    assert dataset.studies == (entry,)
    arrays = dataset.arrays(entry)
    assert arrays.ct_hu.dtype == np.float32 and arrays.ct_hu.shape == (8, SIZE, SIZE)
    np.testing.assert_allclose(arrays.ct_hu, 40.0)
    # Each CT slice lies between two PET slices of slopes 0.5 (k+1): activity grows along z.
    assert np.all(np.diff(arrays.pet_suv[:, SIZE // 2, SIZE // 2]) > 0)
    assert arrays.body_mask.dtype == np.uint8 and arrays.body_mask.all()


def test_second_add_of_a_ct_series_is_refused_unless_overwritten(tmp_path: Path) -> None:
    ct_dir, pet_dir = _write_study(tmp_path / "in")
    out = tmp_path / "dataset"
    build_dataset(ct_dir, pet_dir, out, size=SIZE)

    with pytest.raises(InputError, match="already in dataset"):
        build_dataset(ct_dir, pet_dir, out, size=SIZE)
    with pytest.raises(InputError, match="build with size 32"):
        build_dataset(ct_dir, pet_dir, out, size=64, overwrite=True)
    build_dataset(ct_dir, pet_dir, out, size=SIZE, overwrite=True, slices=(2, 6))

    [study] = load_dataset(out).studies
    assert study.n_slices == 4 and study.ct_sop_uids[0] == "1.2.3.100.2"


def test_studies_accumulate_in_one_dataset(tmp_path: Path) -> None:
    out = tmp_path / "dataset"
    build_dataset(*_write_study(tmp_path / "a", "1.2.3.100"), out, size=SIZE)
    build_dataset(*_write_study(tmp_path / "b", "1.2.3.101"), out, size=SIZE)
    assert [s.ct_series_uid for s in load_dataset(out).studies] == ["1.2.3.100", "1.2.3.101"]


def test_loading_a_folder_without_a_manifest_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"no manifest\.json"):
        load_dataset(tmp_path)


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
