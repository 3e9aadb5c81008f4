"""Synthetic CT series made by code, for tests everywhere in the project.

One call writes one series as DICOM Part 10 files::

    paths = make_ct_series(tmp_path / "ct", n=30)                 # classic CT, axial, 3 mm
    paths = make_ct_series(tmp_path / "ct", n=30, enhanced=True)  # one Enhanced CT file
    scout = make_ct_series(tmp_path / "ct", n=1, orientation=CORONAL,
                           image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))  # joins the series above

Conventions the tests may rely on:

* Series, study and frame-of-reference UIDs derive from ``name`` (and the
  study and frame of reference are shared by every name), so two calls with
  the same ``name`` write into the same series; SOP Instance UIDs are fresh.
* The returned paths are in slice order (increasing position along the
  stacking direction, missing slices left out); file names and instance
  numbers deliberately do not follow that order.
* Pixel values are :func:`default_hu` unless ``hu`` is given, stored as
  signed 16-bit ``round((hu - intercept) / slope)``; ``hu[k]`` is grid slice
  ``k`` (so with ``missing=(5,)`` the slice written for ``hu[5]`` is absent).
* Patient attributes are fake: ``TEST^PATIENT`` / ``TEST-ID-0001``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
from pydicom.uid import (
    UID,
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
PATIENT_NAME = "TEST^PATIENT"
PATIENT_ID = "TEST-ID-0001"
_UID_PREFIX = "1.2.826.0.1.3680043.8.498."  # pydicom's documented example root
STUDY_UID = generate_uid(prefix=_UID_PREFIX, entropy_srcs=["ct2pet-tests", "study"])
FRAME_OF_REFERENCE_UID = generate_uid(prefix=_UID_PREFIX, entropy_srcs=["ct2pet-tests", "frame-of-reference"])

Mutator = Callable[[int, Dataset], None]


def series_uid_for(name: str) -> str:
    """The Series Instance UID :func:`make_ct_series` gives series ``name``."""
    return str(generate_uid(prefix=_UID_PREFIX, entropy_srcs=["ct2pet-tests", "series", name]))


def default_hu(n: int, rows: int, cols: int) -> np.ndarray:
    """A deterministic HU pattern, float32 (z, y, x), integers from -1000 to 990 in steps of 10."""
    z, y, x = np.meshgrid(np.arange(n), np.arange(rows), np.arange(cols), indexing="ij")
    return (((7 * x + 3 * y + 11 * z) % 200) * 10 - 1000).astype(np.float32)


def make_ct_series(
    directory: Path,
    n: int = 30,
    *,
    name: str = "ct",
    rows: int = 64,
    cols: int = 64,
    spacing: tuple[float, float] = (0.9, 0.9),
    step: float = 3.0,
    first_z: float = -100.0,
    orientation: Sequence[float] = AXIAL,
    tilt_degrees: float = 0.0,
    missing: Sequence[int] = (),
    frame_of_reference_uid: str | None = FRAME_OF_REFERENCE_UID,
    study_uid: str = STUDY_UID,
    modality: str = "CT",
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    sop_class_uid: str = CTImageStorage,
    enhanced: bool = False,
    slope: float | Sequence[float] = 1.0,
    intercept: float | Sequence[float] = -1024.0,
    images_in_acquisition: int | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    hu: np.ndarray | None = None,
    mutate: Mutator | None = None,
) -> list[Path]:
    """Write one synthetic CT series into ``directory`` (created if needed).

    Parameters
    ----------
    n : int
        Slices on the grid (before ``missing`` are left out).
    spacing : tuple of float
        PixelSpacing (between rows, between columns), mm.
    step : float
        Distance between consecutive slices, mm (negative stacks the other way).
    orientation : sequence of 6 float
        ImageOrientationPatient; slices stack along its normal.
    tilt_degrees : float
        Gantry tilt: the image plane is rotated about the patient x axis by
        this angle while slices still stack along z (a sheared stack), and
        GantryDetectorTilt says so. Overrides ``orientation``.
    missing : sequence of int
        0-based grid indices not written (a gap in the series).
    slope, intercept : float or sequence of float
        RescaleSlope/RescaleIntercept, one value or one per grid slice.
    enhanced : bool
        Write one Enhanced CT Image Storage instance with per-frame
        functional groups instead of one file per slice.
    transfer_syntax : str
        A UID pydicom can encode (e.g. RLE Lossless, JPEG-LS Lossless,
        JPEG 2000 Lossless with the installed plugins).
    mutate : callable, optional
        ``mutate(grid_index, dataset)`` runs on each dataset just before it
        is written (once, with index 0, for ``enhanced``): the hook for
        broken inputs.

    Returns
    -------
    list of pathlib.Path
        The written files in slice order (one path when ``enhanced``).
    """
    directory.mkdir(parents=True, exist_ok=True)
    values = default_hu(n, rows, cols) if hu is None else np.asarray(hu, dtype=np.float64)
    if values.shape != (n, rows, cols):
        raise ValueError(f"hu must have shape {(n, rows, cols)}, got {values.shape}")
    slopes = _per_slice(slope, n)
    intercepts = _per_slice(intercept, n)
    row_dir, col_dir, stack_dir = _directions(orientation, tilt_degrees)
    origin = np.array([-cols * spacing[1] / 2, -rows * spacing[0] / 2, first_z])
    positions = [origin + k * step * stack_dir for k in range(n)]
    kept = [k for k in range(n) if k not in set(missing)]
    stored = [np.round((values[k] - intercepts[k]) / slopes[k]).astype(np.int16) for k in range(n)]
    base = _base_dataset(name, study_uid, frame_of_reference_uid, modality, image_type, rows, cols)
    if images_in_acquisition is not None:
        base.ImagesInAcquisition = images_in_acquisition
    if tilt_degrees:
        base.GantryDetectorTilt = _ds(tilt_degrees)
    orientation_ds = [_ds(v) for v in (*row_dir, *col_dir)]
    if enhanced:
        frames = [(k, positions[k], stored[k], slopes[k], intercepts[k]) for k in kept]
        return [
            _write_enhanced(directory, base, frames, orientation_ds, spacing, step, transfer_syntax, mutate)
        ]
    paths = []
    for order, k in enumerate(kept):
        ds = _copy(base)
        ds.SOPClassUID = sop_class_uid
        ds.SOPInstanceUID = generate_uid(prefix=_UID_PREFIX)
        # Instance numbers run against position, as on many scanners (head first, z falling).
        ds.InstanceNumber = len(kept) - order
        ds.ImagePositionPatient = [_ds(v) for v in positions[k]]
        ds.ImageOrientationPatient = orientation_ds
        ds.PixelSpacing = [_ds(spacing[0]), _ds(spacing[1])]
        ds.SliceThickness = _ds(abs(step))
        ds.SliceLocation = _ds(positions[k][2])
        ds.RescaleSlope = _ds(slopes[k])
        ds.RescaleIntercept = _ds(intercepts[k])
        ds.RescaleType = "HU"
        ds.PixelData = stored[k].tobytes()
        if mutate is not None:
            mutate(k, ds)
        paths.append(_save(directory, ds, transfer_syntax))
    return paths


def set_raw(ds: Dataset, keyword: str, text: str) -> None:
    """Store ``text`` as the raw value of ``keyword``, bypassing validation (for invalid values like NaN)."""
    tag = Tag(keyword)
    raw = text.encode("ascii")
    if len(raw) % 2:
        raw += b" "
    ds._dict[tag] = RawDataElement(tag, dictionary_VR(tag), len(raw), raw, 0, False, True)


def _per_slice(value: float | Sequence[float], n: int) -> list[float]:
    if isinstance(value, int | float):
        return [float(value)] * n
    values = [float(v) for v in value]
    if len(values) != n:
        raise ValueError(f"need one value per slice ({n}), got {len(values)}")
    return values


def _directions(
    orientation: Sequence[float], tilt_degrees: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if tilt_degrees:
        angle = math.radians(tilt_degrees)
        row = np.array([1.0, 0.0, 0.0])
        col = np.array([0.0, math.cos(angle), math.sin(angle)])
        return row, col, np.array([0.0, 0.0, 1.0])
    row = np.asarray(orientation[:3], dtype=float)
    col = np.asarray(orientation[3:], dtype=float)
    return row, col, np.cross(row, col)


def _ds(value: float) -> str:
    # DS holds at most 16 characters; 6 decimals is what scanners write.
    return f"{float(value):.6f}".rstrip("0").rstrip(".") or "0"


def _copy(ds: Dataset) -> Dataset:
    copy = Dataset()
    copy.update(ds)
    return copy


def _base_dataset(
    name: str,
    study_uid: str,
    frame_of_reference_uid: str | None,
    modality: str,
    image_type: Sequence[str],
    rows: int,
    cols: int,
) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = list(image_type)
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber = "TESTACC0001"
    ds.Modality = modality
    ds.Manufacturer = "CT2PET-TEST"
    ds.StudyDescription = "SYNTHETIC PET/CT"
    ds.SeriesDescription = f"SYNTHETIC CT {name}"
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.PatientWeight = "70"
    ds.KVP = "120"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid_for(name)
    ds.StudyID = "1"
    ds.SeriesNumber = 2
    ds.AcquisitionNumber = 1
    if frame_of_reference_uid is not None:
        ds.FrameOfReferenceUID = frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    return ds


def _save(directory: Path, ds: Dataset, transfer_syntax: str) -> Path:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if UID(transfer_syntax) != ExplicitVRLittleEndian:
        ds.compress(transfer_syntax)
    path = directory / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _item(**attributes: object) -> Dataset:
    item = Dataset()
    for keyword, value in attributes.items():
        setattr(item, keyword, value)
    return item


def _write_enhanced(
    directory: Path,
    base: Dataset,
    frames: list[tuple[int, np.ndarray, np.ndarray, float, float]],
    orientation_ds: list[str],
    spacing: tuple[float, float],
    step: float,
    transfer_syntax: str,
    mutate: Mutator | None,
) -> Path:
    ds = _copy(base)
    ds.SOPClassUID = EnhancedCTImageStorage
    ds.SOPInstanceUID = generate_uid(prefix=_UID_PREFIX)
    ds.InstanceNumber = 1
    ds.ImageType = [*list(base.ImageType)[:3], "NONE"][:4]
    ds.NumberOfFrames = len(frames)
    for keyword in ("KVP", "GantryDetectorTilt"):
        if keyword in ds:
            delattr(ds, keyword)
    shared = _item(
        PlaneOrientationSequence=DicomSequence([_item(ImageOrientationPatient=orientation_ds)]),
        PixelMeasuresSequence=DicomSequence(
            [_item(PixelSpacing=[_ds(spacing[0]), _ds(spacing[1])], SliceThickness=_ds(abs(step)))]
        ),
        CTXRayDetailsSequence=DicomSequence([_item(KVP="120")]),
    )
    if "GantryDetectorTilt" in base:
        shared.CTAcquisitionDetailsSequence = DicomSequence(
            [_item(GantryDetectorTilt=base.GantryDetectorTilt)]
        )
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    per_frame = []
    # Frames are written in reverse position order so readers must sort by position.
    for frame_index, (_, position, _, slope, intercept) in enumerate(reversed(frames)):
        per_frame.append(
            _item(
                FrameContentSequence=DicomSequence([_item(InStackPositionNumber=len(frames) - frame_index)]),
                PlanePositionSequence=DicomSequence([_item(ImagePositionPatient=[_ds(v) for v in position])]),
                PixelValueTransformationSequence=DicomSequence(
                    [_item(RescaleSlope=_ds(slope), RescaleIntercept=_ds(intercept), RescaleType="HU")]
                ),
            )
        )
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    ds.PixelData = np.stack([pixels for _, _, pixels, _, _ in reversed(frames)]).tobytes()
    if mutate is not None:
        mutate(0, ds)
    return _save(directory, ds, transfer_syntax)


__all__ = [
    "AXIAL",
    "CORONAL",
    "FRAME_OF_REFERENCE_UID",
    "PATIENT_ID",
    "PATIENT_NAME",
    "SAGITTAL",
    "STUDY_UID",
    "default_hu",
    "make_ct_series",
    "series_uid_for",
    "set_raw",
]
