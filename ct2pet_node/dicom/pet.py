"""Real PET series from DICOM: activity in Bq/ml, sorted by position, with its SUVbw factor.

The SUV rules live in :mod:`ct2pet_node.dicom.suv`; they are re-exported
here so callers read a PET series and its SUV from one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import structlog
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from ct2pet_node.dicom.suv import SuvFactor, SuvInputs, compute_suv_factor, date_time, suv_bw_factor
from ct2pet_node.domain.uids import SeriesUid, SopInstanceUid, StudyUid, Uid, require_uid
from ct2pet_node.errors import InputError

__all__ = ["PetSeries", "SuvFactor", "SuvInputs", "compute_suv_factor", "read_pet_series", "suv_bw_factor"]

log = structlog.get_logger(__name__)

# Slices of one series must agree on their SUV factor to this relative tolerance.
_FACTOR_AGREEMENT = 1e-6
# Slice gaps may vary by this fraction before the series is refused as irregular.
_GAP_TOLERANCE = 0.01


@dataclass(frozen=True, slots=True, eq=False)
class PetSeries:
    """One PET series in activity concentration, sorted by position.

    Attributes
    ----------
    activity_bq_ml : numpy.ndarray
        float32, shape (z, y, x), Bq/ml (per-slice rescale applied).
    affine : numpy.ndarray
        float64 4x4, voxel (x, y, z, 1) -> patient LPS mm
        (convention of :mod:`ct2pet_node.domain.volume`).
    sop_instance_uids : tuple of str
        One per z index, in the same order.
    suv : SuvFactor
        Multiply ``activity_bq_ml`` by ``suv.per_bq_ml`` for SUVbw.
    """

    activity_bq_ml: np.ndarray
    affine: np.ndarray
    study_uid: StudyUid
    series_uid: SeriesUid
    frame_of_reference_uid: Uid
    sop_instance_uids: tuple[SopInstanceUid, ...]
    suv: SuvFactor


def read_pet_series(folder: Path) -> PetSeries:
    """Read every PET instance under ``folder`` (one series) into a :class:`PetSeries`.

    Files that are not DICOM are skipped; instances of another modality or a
    second series are refused. Slices are sorted by their position along
    the slice normal, never by file name or instance number.

    Raises
    ------
    InputError
        No PET, several series or frames of reference, multi-frame or
        irregular geometry, or unusable SUV inputs.
    """
    datasets = _read_pet_files(folder)
    first = datasets[0]
    for keyword in ("SeriesInstanceUID", "FrameOfReferenceUID", "StudyInstanceUID"):
        values = {str(ds.get(keyword, "")) for ds in datasets}
        if len(values) != 1:
            raise InputError(f"PET folder {folder} holds {len(values)} values of {keyword}; give one series")
    orientation = _same_floats(datasets, "ImageOrientationPatient", 6, folder)
    spacing = _same_floats(datasets, "PixelSpacing", 2, folder)
    shape = {(int(ds.Rows), int(ds.Columns)) for ds in datasets}
    if len(shape) != 1:
        raise InputError(f"PET folder {folder} mixes image sizes {sorted(shape)}")
    row_dir, col_dir = np.array(orientation[:3]), np.array(orientation[3:])
    normal = np.cross(row_dir, col_dir)
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    order = np.argsort(positions @ normal, kind="stable")
    datasets = [datasets[i] for i in order]
    positions = positions[order]
    step = _slice_step(positions, normal, folder)
    affine = np.eye(4)
    affine[:3, 0] = row_dir * spacing[1]
    affine[:3, 1] = col_dir * spacing[0]
    affine[:3, 2] = step
    affine[:3, 3] = positions[0]
    activity = np.stack([_activity(ds) for ds in datasets]).astype(np.float32)
    suv = _series_suv(datasets)
    log.info(
        "pet_series_read",
        series_uid=str(first.SeriesInstanceUID),
        slices=len(datasets),
        suv_per_bq_ml=suv.per_bq_ml,
    )
    return PetSeries(
        activity_bq_ml=activity,
        affine=affine,
        study_uid=StudyUid(require_uid(first.get("StudyInstanceUID"), "PET StudyInstanceUID")),
        series_uid=SeriesUid(require_uid(first.get("SeriesInstanceUID"), "PET SeriesInstanceUID")),
        frame_of_reference_uid=require_uid(first.get("FrameOfReferenceUID"), "PET FrameOfReferenceUID"),
        sop_instance_uids=tuple(
            SopInstanceUid(require_uid(ds.get("SOPInstanceUID"), "PET SOPInstanceUID")) for ds in datasets
        ),
        suv=suv,
    )


def _read_pet_files(folder: Path) -> list[Dataset]:
    if not folder.is_dir():
        raise InputError(f"PET folder {folder} does not exist or is not a directory")
    datasets: list[Dataset] = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            dataset = pydicom.dcmread(path)
        except (InvalidDicomError, OSError):
            log.info("pet_file_skipped", path=str(path), reason="not a DICOM file")
            continue
        modality = str(dataset.get("Modality", ""))
        if modality != "PT":
            raise InputError(
                f"{path} has Modality {modality!r}, not PT; give a folder holding the PET series only"
            )
        if int(dataset.get("NumberOfFrames", 1) or 1) != 1:
            raise InputError(
                f"{path} is a multi-frame PET instance; only single-frame PET Image Storage is read"
            )
        datasets.append(dataset)
    if not datasets:
        raise InputError(f"PET folder {folder} holds no DICOM PET instance")
    return datasets


def _same_floats(datasets: list[Dataset], keyword: str, count: int, folder: Path) -> tuple[float, ...]:
    rows = []
    for ds in datasets:
        raw = ds.get(keyword)
        if raw is None or len(raw) != count:
            raise InputError(f"PET instance {ds.get('SOPInstanceUID')} lacks a valid {keyword}")
        rows.append([float(v) for v in raw])
    values = np.array(rows)
    if not np.all(np.isfinite(values)) or np.ptp(values, axis=0).max() > 1e-4:
        raise InputError(f"PET folder {folder} mixes values of {keyword}; give one regular series")
    return tuple(float(v) for v in values[0])


def _slice_step(positions: np.ndarray, normal: np.ndarray, folder: Path) -> np.ndarray:
    if len(positions) == 1:
        return normal * 1.0
    offsets = positions @ normal
    gaps = np.diff(offsets)
    median = float(np.median(gaps))
    if median <= 0 or np.any(np.abs(gaps - median) > _GAP_TOLERANCE * median + 1e-3):
        raise InputError(
            f"PET slices in {folder} are not evenly spaced (gaps {gaps.min():.3f}-{gaps.max():.3f} mm, "
            "or duplicated positions); give one regular static series"
        )
    step: np.ndarray = (positions[-1] - positions[0]) / (len(positions) - 1)
    return step


def _activity(dataset: Dataset) -> np.ndarray:
    slope = float(dataset.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(dataset.get("RescaleIntercept", 0.0) or 0.0)
    values: np.ndarray = dataset.pixel_array.astype(np.float64) * slope + intercept
    return values


def _series_suv(datasets: list[Dataset]) -> SuvFactor:
    acquisitions = [
        moment
        for ds in datasets
        if (moment := date_time(ds, "AcquisitionDate", "AcquisitionTime")) is not None
    ]
    earliest = min(acquisitions) if acquisitions else None
    factors = [suv_bw_factor(ds, earliest) for ds in datasets]
    reference = factors[0]
    for factor in factors[1:]:
        if abs(factor.per_bq_ml - reference.per_bq_ml) > _FACTOR_AGREEMENT * reference.per_bq_ml:
            raise InputError(
                f"PET slices disagree on their SUV factor ({reference.per_bq_ml:.6g} vs "
                f"{factor.per_bq_ml:.6g} per Bq/ml); the series mixes doses, weights or times"
            )
    return reference
