"""SUVbw from PET headers, and PET series reading, against hand-worked values."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, PositronEmissionTomographyImageStorage, generate_uid

from ct2pet_node.dicom.pet import read_pet_series, suv_bw_factor
from ct2pet_node.errors import InputError

# The shared sample's tags, worked by hand in ../shared/data/README.md.
SAMPLE_FACTOR = 2.7585e-4
SAMPLE_SUV_MAX = 24.7
DOSE_BQ = 325_600_000.0
HALF_LIFE_S = 6588.0
WEIGHT_KG = 59.0


def _header(**overrides: object) -> Dataset:
    """A PET header with the sample's SUV tags; ``overrides`` set (or with None, delete) tags."""
    drug = Dataset()
    drug.RadiopharmaceuticalStartTime = "094500.00"
    drug.RadiopharmaceuticalStartDateTime = "20230826094500.00"
    drug.RadionuclideTotalDose = str(DOSE_BQ)
    drug.RadionuclideHalfLife = str(HALF_LIFE_S)
    header = Dataset()
    header.Modality = "PT"
    header.Units = "BQML"
    header.DecayCorrection = "START"
    header.CorrectedImage = ["DECY", "ATTN", "SCAT"]
    header.PatientWeight = str(WEIGHT_KG)
    header.SeriesDate = "20230826"
    header.SeriesTime = "105134.00"
    header.AcquisitionDate = "20230826"
    header.AcquisitionTime = "110236.00"
    header.RadiopharmaceuticalInformationSequence = Sequence([drug])
    for keyword, value in overrides.items():
        target = drug if hasattr(drug, keyword) or keyword.startswith("Radio") else header
        if value is None:
            if keyword in target:
                delattr(target, keyword)
        else:
            setattr(target, keyword, value)
    return header


def _by_hand(decay_seconds: float, weight_kg: float = WEIGHT_KG, dose_bq: float = DOSE_BQ) -> float:
    return weight_kg * 1000.0 / (dose_bq * 0.5 ** (decay_seconds / HALF_LIFE_S))


# --- the real sample ------------------------------------------------------------------------------
def test_sample_factor_matches_the_hand_worked_value(sample_dir: Path) -> None:
    first = sorted((sample_dir / "PT").iterdir())[0]
    factor = suv_bw_factor(pydicom.dcmread(first, stop_before_pixels=True))

    assert factor.per_bq_ml == pytest.approx(SAMPLE_FACTOR, rel=1e-3)
    # 09:45:00 injection to 10:51:34 series start.
    assert factor.decay_seconds == 3994.0
    assert factor.inputs.reference_source == "SeriesDate/SeriesTime"


def test_sample_series_suv_max_matches_the_hand_worked_value(sample_dir: Path) -> None:
    pet = read_pet_series(sample_dir / "PT")

    suv_max = float(pet.activity_bq_ml.max()) * pet.suv.per_bq_ml
    # The README gives three significant figures (24.742 unrounded).
    assert suv_max == pytest.approx(SAMPLE_SUV_MAX, abs=0.05)
    assert pet.activity_bq_ml.shape == (247, 256, 256)
    # Sorted by position: the slice step points along +z (head-first supine, feet to head).
    assert pet.affine[2, 2] == pytest.approx(3.27, abs=1e-3)
    assert pet.affine[0, 0] == pytest.approx(1.953125)


# --- the formula on headers made by code ----------------------------------------------------------
def test_start_decays_the_dose_to_the_series_start() -> None:
    factor = suv_bw_factor(_header())
    assert factor.per_bq_ml == pytest.approx(_by_hand(3994.0), rel=1e-12)
    assert factor.decayed_dose_bq == pytest.approx(DOSE_BQ * 0.5 ** (3994.0 / HALF_LIFE_S))


def test_time_only_injection_before_midnight_is_taken_on_the_previous_day() -> None:
    header = _header(
        RadiopharmaceuticalStartDateTime=None,
        RadiopharmaceuticalStartTime="235000",
        SeriesDate="20230827",
        SeriesTime="005500",
        AcquisitionDate="20230827",
        AcquisitionTime="010000",
    )
    factor = suv_bw_factor(header)
    assert factor.decay_seconds == 65 * 60
    assert factor.inputs.injection_time == datetime(2023, 8, 26, 23, 50)
    assert factor.per_bq_ml == pytest.approx(_by_hand(65 * 60))


def test_full_injection_datetime_crossing_midnight() -> None:
    header = _header(
        RadiopharmaceuticalStartDateTime="20230826235000",
        SeriesDate="20230827",
        SeriesTime="005500",
        AcquisitionDate="20230827",
        AcquisitionTime="010000",
    )
    assert suv_bw_factor(header).decay_seconds == 65 * 60


def test_admin_does_not_decay_the_dose() -> None:
    factor = suv_bw_factor(_header(DecayCorrection="ADMIN"))
    assert factor.decay_seconds == 0.0
    assert factor.per_bq_ml == pytest.approx(WEIGHT_KG * 1000.0 / DOSE_BQ)


def test_series_time_after_acquisition_uses_the_earliest_acquisition() -> None:
    # A post-processed series re-stamped at 12:00 although acquired from 10:51:34.
    header = _header(SeriesTime="120000", AcquisitionTime="110236")
    factor = suv_bw_factor(header, earliest_acquisition=datetime(2023, 8, 26, 10, 51, 34))
    assert factor.decay_seconds == 3994.0
    assert "AcquisitionTime" in factor.inputs.reference_source


def test_series_time_after_acquisition_prefers_the_ge_scan_time() -> None:
    header = _header(SeriesTime="120000", AcquisitionTime="110236")
    block = header.private_block(0x0009, "GEMS_PETD_01", create=True)
    block.add_new(0x0D, "DT", "20230826105134")
    assert suv_bw_factor(header).decay_seconds == 3994.0


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"PatientWeight": None}, "PatientWeight .*missing"),
        ({"PatientWeight": "0"}, "PatientWeight is 0"),
        ({"PatientWeight": "0.5"}, "PatientWeight 0.5 kg is implausible"),
        ({"PatientWeight": "600"}, "PatientWeight 600.0 kg is implausible"),
        ({"Units": None}, "Units is 'missing'"),
        ({"Units": "CNTS"}, "Units is 'CNTS', not BQML"),
        ({"Units": "GML"}, "Units is 'GML', not BQML"),
        ({"DecayCorrection": "NONE"}, "DecayCorrection is 'NONE'"),
        ({"DecayCorrection": None}, "DecayCorrection is 'missing'"),
        ({"CorrectedImage": ["DECY"]}, "lacks ATTN or DECY"),
        ({"RadionuclideTotalDose": "0"}, "RadionuclideTotalDose is 0"),
        ({"RadionuclideTotalDose": None}, "RadionuclideTotalDose .*missing"),
        ({"RadionuclideTotalDose": "325.6"}, "MBq"),
        ({"RadionuclideHalfLife": None}, "RadionuclideHalfLife .*missing"),
        ({"RadiopharmaceuticalStartDateTime": None, "RadiopharmaceuticalStartTime": None}, "injection time"),
        ({"RadiopharmaceuticalStartDateTime": "20230826110000"}, "after the decay reference"),
        ({"RadiopharmaceuticalStartDateTime": "20230825094500"}, "half-lives"),
        ({"SeriesTime": None}, "SeriesTime is missing"),
    ],
)
def test_missing_or_implausible_inputs_are_refused(overrides: dict[str, object], reason: str) -> None:
    with pytest.raises(InputError, match=reason):
        suv_bw_factor(_header(**overrides))


def test_unparseable_series_time_is_refused() -> None:
    header = _header()
    # As a scanner might write it; validation off so only the reader judges it.
    header["SeriesTime"] = DataElement(0x00080031, "TM", "256000", validation_mode=config.IGNORE)
    with pytest.raises(InputError, match="SeriesTime '256000' is not a DICOM time"):
        suv_bw_factor(header)


def test_without_a_radiopharmaceutical_item_it_is_refused() -> None:
    header = _header()
    header.RadiopharmaceuticalInformationSequence = Sequence([])
    with pytest.raises(InputError, match="has 0 items"):
        suv_bw_factor(header)


# --- series reading -------------------------------------------------------------------------------
def _write_pet_slice(
    path: Path, z: float, stored: np.ndarray, slope: float, series_uid: str, weight: str = "59"
) -> None:
    header = _header(PatientWeight=weight)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = PositronEmissionTomographyImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    header.file_meta = meta
    header.SOPClassUID = PositronEmissionTomographyImageStorage
    header.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    header.StudyInstanceUID = "1.2.3.1"
    header.SeriesInstanceUID = series_uid
    header.FrameOfReferenceUID = "1.2.3.3"
    header.ImagePositionPatient = [-10.0, -20.0, z]
    header.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    header.PixelSpacing = [2.0, 1.5]  # between rows, between columns
    header.Rows, header.Columns = stored.shape
    header.SamplesPerPixel = 1
    header.PhotometricInterpretation = "MONOCHROME2"
    header.BitsAllocated = header.BitsStored = 16
    header.HighBit = 15
    header.PixelRepresentation = 1
    header.RescaleSlope = str(slope)
    header.RescaleIntercept = "0"
    header.PixelData = stored.astype(np.int16).tobytes()
    pydicom.dcmwrite(path, header, enforce_file_format=True)


def test_series_is_sorted_by_position_with_per_slice_rescale(tmp_path: Path) -> None:
    stored = np.arange(12, dtype=np.int16).reshape(3, 4)
    # File names run against position and the slopes differ per slice.
    for name, z, slope in (("a.dcm", 9.0, 3.0), ("b.dcm", 3.0, 1.0), ("c.dcm", 6.0, 2.0)):
        _write_pet_slice(tmp_path / name, z, stored, slope, "1.2.3.2")
    (tmp_path / "notes.txt").write_text("not DICOM")

    pet = read_pet_series(tmp_path)

    for index, slope in enumerate((1.0, 2.0, 3.0)):
        np.testing.assert_allclose(pet.activity_bq_ml[index], stored * slope)
    expected = np.array(
        [[1.5, 0.0, 0.0, -10.0], [0.0, 2.0, 0.0, -20.0], [0.0, 0.0, 3.0, 3.0], [0.0, 0.0, 0.0, 1.0]]
    )
    np.testing.assert_allclose(pet.affine, expected)
    assert pet.suv.per_bq_ml == pytest.approx(_by_hand(3994.0))


def test_two_series_in_one_folder_are_refused(tmp_path: Path) -> None:
    stored = np.zeros((2, 2), dtype=np.int16)
    _write_pet_slice(tmp_path / "a.dcm", 0.0, stored, 1.0, "1.2.3.2")
    _write_pet_slice(tmp_path / "b.dcm", 3.0, stored, 1.0, "1.2.3.9")
    with pytest.raises(InputError, match="SeriesInstanceUID"):
        read_pet_series(tmp_path)


def test_irregular_slice_gaps_are_refused(tmp_path: Path) -> None:
    stored = np.zeros((2, 2), dtype=np.int16)
    for name, z in (("a.dcm", 0.0), ("b.dcm", 3.0), ("c.dcm", 9.0)):
        _write_pet_slice(tmp_path / name, z, stored, 1.0, "1.2.3.2")
    with pytest.raises(InputError, match="not evenly spaced"):
        read_pet_series(tmp_path)


def test_slices_disagreeing_on_the_suv_inputs_are_refused(tmp_path: Path) -> None:
    stored = np.zeros((2, 2), dtype=np.int16)
    _write_pet_slice(tmp_path / "a.dcm", 0.0, stored, 1.0, "1.2.3.2", weight="59")
    _write_pet_slice(tmp_path / "b.dcm", 3.0, stored, 1.0, "1.2.3.2", weight="70")
    with pytest.raises(InputError, match="disagree on their SUV factor"):
        read_pet_series(tmp_path)
