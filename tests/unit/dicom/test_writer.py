from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
from ctfactory import PATIENT_ID, PATIENT_NAME, make_ct_series
from pydicom.dataset import Dataset

from ct2pet_node.dicom.resample import pet_on_grid
from ct2pet_node.dicom.writer import SynthesisInfo, write_pet_series
from ct2pet_node.domain.model_grid import ModelFrame, plan_model_grid
from ct2pet_node.domain.output_uids import output_series_uid, output_sop_instance_uid
from ct2pet_node.domain.volume import CtVolume, PetUnits, PetVolume, SourceSlice
from ct2pet_node.errors import InputError

KINDS = ("secondary-capture", "pet")
NOW = datetime.datetime(2025, 3, 4, 5, 6, 7)
COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientWeight", "StudyInstanceUID")
COPIED += ("StudyDate", "StudyTime", "StudyID", "AccessionNumber", "StudyDescription", "SpecificCharacterSet")


def volume_from_files(paths: list[Path]) -> tuple[CtVolume, Dataset]:
    """A CtVolume (zeros) with the geometry and identity of CT files given in slice order."""
    headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in paths]
    first = headers[0]
    positions = np.array([[float(v) for v in h.ImagePositionPatient] for h in headers])
    orientation = np.array([float(v) for v in first.ImageOrientationPatient])
    spacing_rows, spacing_columns = (float(v) for v in first.PixelSpacing)
    affine = np.eye(4)
    affine[:3, 0] = orientation[:3] * spacing_columns
    affine[:3, 1] = orientation[3:] * spacing_rows
    affine[:3, 2] = positions[1] - positions[0]
    affine[:3, 3] = positions[0]
    sources = tuple(
        SourceSlice(h.SOPInstanceUID, h.SOPClassUID, tuple(p))
        for h, p in zip(headers, positions, strict=True)
    )
    ct = CtVolume(
        hu=np.zeros((len(headers), int(first.Rows), int(first.Columns)), np.float32),
        affine=affine,
        study_uid=first.StudyInstanceUID,
        series_uid=first.SeriesInstanceUID,
        frame_of_reference_uid=first.FrameOfReferenceUID,
        sources=sources,
        kvp=120.0,
    )
    return ct, first


def info_for(units: PetUnits = PetUnits.SUVBW) -> SynthesisInfo:
    return SynthesisInfo(
        model_id="cpdm-test",
        model_version="test weights 1",
        steps=25,
        seed=1234,
        eta=1.0,
        software_version="0.1.0",
        output_units=units,
    )


def pet_values(n: int, rows: int, columns: int) -> np.ndarray:
    z, y, x = np.meshgrid(np.arange(n), np.arange(rows), np.arange(columns), indexing="ij")
    return ((x + 2 * y) / (rows + columns) * (z + 1) * 4.0).astype(np.float32)


@pytest.fixture(scope="module")
def ct_case(tmp_path_factory: pytest.TempPathFactory) -> tuple[CtVolume, Path]:
    paths = make_ct_series(tmp_path_factory.mktemp("ct"), n=4, rows=16, cols=16, step=2.5)
    ct, _ = volume_from_files(paths)
    return ct, paths[0]


def write(
    ct_case: tuple[CtVolume, Path], kind: str, out: Path, units: PetUnits = PetUnits.SUVBW
) -> tuple[list[Path], list[Dataset], PetVolume]:
    ct, header = ct_case
    pet = PetVolume(pet_values(*ct.hu.shape), ct.affine.copy(), units, ct)
    paths = write_pet_series(pet, kind, info_for(units), header, out, now=NOW)
    return paths, [pydicom.dcmread(path) for path in paths], pet


@pytest.mark.parametrize("kind", KINDS)
def test_one_file_per_slice_named_by_uid_in_slice_order(ct_case, kind: str, tmp_path: Path) -> None:
    ct, _ = ct_case
    paths, datasets, _ = write(ct_case, kind, tmp_path)
    assert len(paths) == ct.hu.shape[0]
    assert sorted(tmp_path.iterdir()) == sorted(paths)
    for index, (path, ds) in enumerate(zip(paths, datasets, strict=True)):
        assert path.name == f"{ds.SOPInstanceUID}.dcm"
        assert ds.SOPInstanceUID == output_sop_instance_uid(ct.series_uid, "cpdm-test", kind, index)
        assert ds.SeriesInstanceUID == output_series_uid(ct.series_uid, "cpdm-test", kind)
        assert ds.InstanceNumber == index + 1
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == ct.sources[index].sop_instance_uid


@pytest.mark.parametrize("kind", KINDS)
def test_patient_and_study_are_copied_not_invented(ct_case, kind: str, tmp_path: Path) -> None:
    _, header_path = ct_case
    header = pydicom.dcmread(header_path, stop_before_pixels=True)
    _, datasets, _ = write(ct_case, kind, tmp_path)
    for ds in datasets:
        for keyword in COPIED:
            assert ds[keyword].value == header[keyword].value, keyword
        assert str(ds.PatientName) == PATIENT_NAME and ds.PatientID == PATIENT_ID
        # Absent from the CT, so absent here: nothing is made up.
        for keyword in ("PatientAge", "PatientSize", "EthnicGroup", "IssuerOfPatientID"):
            assert keyword not in ds


@pytest.mark.parametrize("kind", KINDS)
def test_every_output_says_it_is_synthetic(ct_case, kind: str, tmp_path: Path) -> None:
    _, datasets, _ = write(ct_case, kind, tmp_path)
    for ds in datasets:
        assert ds.ImageType[0] == "DERIVED"
        assert ds.SeriesDescription.startswith("SYNTHETIC PET")
        assert "SYNTHETIC" in ds.ImageComments
        assert ds.BurnedInAnnotation == "NO"
        assert ds.Manufacturer == "ct2pet-node"
        for fact in ("cpdm-test", "25 steps", "seed 1234", "not acquired, not for diagnosis", "SUVbw"):
            assert fact in ds.DerivationDescription
        synthesiser = ds.ContributingEquipmentSequence[0]
        assert synthesiser.Manufacturer == "ct2pet-node"
        assert synthesiser.PurposeOfReferenceCodeSequence[0].CodeValue == "109100"
        assert "test weights 1" in synthesiser.SoftwareVersions
        assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (5.0, 10.0)


def test_secondary_capture_keeps_what_geometry_it_may(ct_case, tmp_path: Path) -> None:
    _, datasets, _ = write(ct_case, "secondary-capture", tmp_path)
    for ds in datasets:
        assert ds.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
        assert ds.ConversionType == "WSD"
        assert [float(v) for v in ds.PixelSpacing] == pytest.approx([0.9, 0.9])
        assert list(ds.PatientOrientation) == ["L", "P"]
        for absent in ("FrameOfReferenceUID", "ImagePositionPatient", "ImageOrientationPatient"):
            assert absent not in ds
    # One slope for the whole series, so stored values compare across slices.
    assert len({ds.RescaleSlope for ds in datasets}) == 1


def test_pet_fuses_with_the_ct(ct_case, tmp_path: Path) -> None:
    ct, header_path = ct_case
    header = pydicom.dcmread(header_path, stop_before_pixels=True)
    _, datasets, _ = write(ct_case, "pet", tmp_path)
    for index, ds in enumerate(datasets):
        assert ds.SOPClassUID == pydicom.uid.PositronEmissionTomographyImageStorage
        assert ds.Modality == "PT"
        assert ds.FrameOfReferenceUID == ct.frame_of_reference_uid
        assert [float(v) for v in ds.ImagePositionPatient] == pytest.approx(ct.sources[index].position)
        assert [float(v) for v in ds.ImageOrientationPatient] == pytest.approx(
            [float(v) for v in header.ImageOrientationPatient]
        )
        assert ds.Units == "GML" and ds.SUVType == "BW"
        assert ds.ImageIndex == index + 1 and ds.NumberOfSlices == len(datasets)
        assert ds.DecayCorrection == "NONE"
        assert "PatientPosition" not in ds
        assert ds.PatientOrientationCodeSequence[0].PatientOrientationModifierCodeSequence[0].CodeMeaning == (
            "supine"
        )


@pytest.mark.parametrize("kind", KINDS)
def test_pixels_decode_to_the_values_within_half_a_step(ct_case, kind: str, tmp_path: Path) -> None:
    _, datasets, pet = write(ct_case, kind, tmp_path)
    for index, ds in enumerate(datasets):
        slope = float(ds.RescaleSlope)
        assert float(ds.RescaleIntercept) == 0.0
        decoded = ds.pixel_array.astype(np.float64) * slope
        np.testing.assert_allclose(decoded, pet.values[index], atol=slope / 2 + 1e-9)
        if kind == "pet":
            assert int(ds.pixel_array.max()) >= 65534  # each slice uses the full 16-bit range
    assert int(datasets[-1].pixel_array.max()) >= 65534


def test_relative_output_claims_no_suv(ct_case, tmp_path: Path) -> None:
    for kind in KINDS:
        _, datasets, pet = write(ct_case, kind, tmp_path / kind, units=PetUnits.RELATIVE)
        for ds in datasets:
            assert "relative, uncalibrated" in ds.DerivationDescription
            assert "SUV" not in ds.SeriesDescription
            assert ds.get("Units") in (None, "NONE")
            assert "SUVType" not in ds
            assert float(ds.WindowWidth) == pytest.approx(float(pet.values.max()), rel=1e-5)


def test_negative_values_are_stored_as_zero(ct_case, tmp_path: Path) -> None:
    ct, header = ct_case
    values = pet_values(*ct.hu.shape) - 1.0
    pet = PetVolume(values, ct.affine.copy(), PetUnits.SUVBW, ct)
    paths = write_pet_series(pet, "pet", info_for(), header, tmp_path, now=NOW)
    decoded = pydicom.dcmread(paths[0]).pixel_array
    assert decoded[values[0] < 0].max() == 0


def test_a_retry_rewrites_the_same_files_and_leaves_no_temporaries(ct_case, tmp_path: Path) -> None:
    first, _, _ = write(ct_case, "pet", tmp_path)
    again, _, _ = write(ct_case, "pet", tmp_path)
    assert first == again
    assert sorted(tmp_path.iterdir()) == sorted(first)


def test_model_grid_output_keeps_the_ct_slice_positions(ct_case, tmp_path: Path) -> None:
    ct, header = ct_case
    mapping = plan_model_grid(ct.affine, (ct.hu.shape[1], ct.hu.shape[2]), ModelFrame(8, 0.9 * 2))
    values = pet_values(ct.hu.shape[0], 8, 8)
    pet = pet_on_grid(PetVolume(values, mapping.model_affine, PetUnits.SUVBW, ct), "model")
    paths = write_pet_series(pet, "pet", info_for(), header, tmp_path, now=NOW)
    for index, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        assert (ds.Rows, ds.Columns) == (8, 8)
        assert [float(v) for v in ds.PixelSpacing] == pytest.approx([0.9 * 2, 0.9 * 2])
        assert float(ds.ImagePositionPatient[2]) == pytest.approx(ct.sources[index].position[2])


def test_a_header_of_another_series_is_refused(ct_case, tmp_path: Path) -> None:
    ct, header_path = ct_case
    other = pydicom.dcmread(header_path, stop_before_pixels=True)
    other.SeriesInstanceUID = "1.2.3.999"
    pet = PetVolume(pet_values(*ct.hu.shape), ct.affine.copy(), PetUnits.SUVBW, ct)
    with pytest.raises(InputError, match="series"):
        write_pet_series(pet, "pet", info_for(), other, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_units_unknown_kind_and_unreadable_header_are_refused(ct_case, tmp_path: Path) -> None:
    ct, header = ct_case
    pet = PetVolume(pet_values(*ct.hu.shape), ct.affine.copy(), PetUnits.SUVBW, ct)
    with pytest.raises(InputError, match="declares relative"):
        write_pet_series(pet, "pet", info_for(PetUnits.RELATIVE), header, tmp_path)
    with pytest.raises(InputError, match="unknown"):
        write_pet_series(pet, "mpr", info_for(), header, tmp_path)
    with pytest.raises(InputError, match="cannot be read"):
        write_pet_series(pet, "pet", info_for(), tmp_path / "missing.dcm", tmp_path)


def test_synthesis_info_is_checked() -> None:
    with pytest.raises(InputError):
        SynthesisInfo("", "v", 10, 0, 1.0, "0.1.0", PetUnits.SUVBW)
    with pytest.raises(InputError):
        SynthesisInfo("m", "v", 10, 0, 1.5, "0.1.0", PetUnits.SUVBW)


def test_real_sample_headers_are_copied_and_positions_kept(sample_dir: Path, tmp_path: Path) -> None:
    ct_files = sorted((sample_dir / "CT").glob("*.dcm"))[:40]
    by_position = sorted(
        ct_files, key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2])
    )[:3]
    ct, header = volume_from_files(by_position)
    values = np.full(ct.hu.shape, 2.5, np.float32)
    for kind in KINDS:
        pet = PetVolume(values, ct.affine.copy(), PetUnits.SUVBW, ct)
        paths = write_pet_series(pet, kind, info_for(), by_position[0], tmp_path / kind, now=NOW)
        for index, path in enumerate(paths):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            for keyword in (
                *COPIED,
                "PatientAge",
                "PatientSize",
                "PatientIdentityRemoved",
                "ReferringPhysicianName",
            ):
                assert ds[keyword].value == header[keyword].value, keyword
            assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == ct.sources[index].sop_instance_uid
            if kind == "pet":
                assert [float(v) for v in ds.ImagePositionPatient] == pytest.approx(
                    ct.sources[index].position
                )
                assert ds.FrameOfReferenceUID == header.FrameOfReferenceUID


FEET_FIRST_SUPINE = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


@pytest.mark.parametrize("grid", ["model", "ct"])
def test_pet_of_a_feet_first_series_lies_on_the_cts_geometry(tmp_path: Path, grid: str) -> None:
    def feet_first(_: int, ds: Dataset) -> None:
        ds.PatientPosition = "FFS"

    paths = make_ct_series(
        tmp_path / "ct", n=4, rows=16, cols=16, step=2.5, orientation=FEET_FIRST_SUPINE, mutate=feet_first
    )
    ct, _ = volume_from_files(paths)
    mapping = plan_model_grid(ct.affine, (16, 16), ModelFrame(8, 0.9 * 2))
    assert mapping.op.flip_columns and not mapping.op.transpose
    values = pet_values(4, 8, 8)
    pet = pet_on_grid(PetVolume(values, mapping.model_affine, PetUnits.SUVBW, ct), grid)
    written = write_pet_series(pet, "pet", info_for(), paths[0], tmp_path / "out", now=NOW)
    size = 8 if grid == "model" else 16
    for index, path in enumerate(written):
        ds = pydicom.dcmread(path)
        assert (ds.Rows, ds.Columns) == (size, size)
        assert ds.FrameOfReferenceUID == ct.frame_of_reference_uid
        assert [float(v) for v in ds.ImageOrientationPatient] == pytest.approx(list(FEET_FIRST_SUPINE))
        assert [float(v) for v in ds.ImagePositionPatient] == pytest.approx(
            list(pet.affine @ (0, 0, index, 1))[:3]
        )
        # The output's field of view is the CT's: its first and last pixel edges are the CT's.
        for corner in ((-0.5, -0.5), (size - 0.5, size - 0.5)):
            ct_corner = tuple((c + 0.5) * 16 / size - 0.5 for c in corner)
            np.testing.assert_allclose(
                pet.affine @ (*corner, index, 1), ct.affine @ (*ct_corner, index, 1), atol=1e-6
            )
        modifier = ds.PatientOrientationCodeSequence[0].PatientOrientationModifierCodeSequence[0]
        assert modifier.CodeMeaning == "supine"
    if grid == "model":
        # The model saw the slice mirrored into head-first order; its output comes back mirrored.
        np.testing.assert_array_equal(pet.values, values[:, :, ::-1])
