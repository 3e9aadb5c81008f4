"""One spooled CT file -> :class:`SliceHeader`, reading the header only.

Classic CT Image Storage keeps its geometry at the top level; Enhanced CT
(and Legacy Converted Enhanced CT) keep it in functional groups, per frame
or shared, and are read into one header whose ``frame_positions`` hold one
position per frame.

Geometry values are parsed from their raw text here rather than through
pydicom's value conversion, so a non-finite value ("NaN", "inf") reaches
qualification intact and is refused there with a reason a PACS
administrator can act on, instead of disappearing into a validation warning.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from ct2pet_node.domain.records import SliceHeader
from ct2pet_node.domain.uids import SeriesUid, SopInstanceUid, StudyUid, Uid, require_uid
from ct2pet_node.errors import InputError

ENHANCED_CT_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
        "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT Image Storage
    }
)
# Large values (pixel data, icon images) stay on disk: a header read must stay cheap.
_DEFER_SIZE = "4 KB"


def read_slice_header(path: Path) -> SliceHeader:
    """Read the identity and geometry of one CT instance from its header.

    Parameters
    ----------
    path : pathlib.Path
        A DICOM Part 10 file (as spooled by the storage SCP).

    Returns
    -------
    SliceHeader
        Positions and directions in patient LPS mm. For Enhanced CT,
        ``frames`` is NumberOfFrames and ``frame_positions`` holds one
        ImagePositionPatient per frame (frame 1 first); for classic CT,
        ``frames`` is 1 and ``frame_positions`` is empty.

    Raises
    ------
    InputError
        The file cannot be read, is not DICOM, or lacks an identifying or
        image tag (the message names the file, the tag and the fix).
    """
    dataset = _read(path)
    sop_class = _sop_class(dataset, path)
    common: dict[str, Any] = {
        "sop_instance_uid": SopInstanceUid(_uid(dataset, "SOPInstanceUID", path)),
        "sop_class_uid": Uid(sop_class),
        "series_uid": SeriesUid(_uid(dataset, "SeriesInstanceUID", path)),
        "study_uid": StudyUid(_uid(dataset, "StudyInstanceUID", path)),
        "frame_of_reference_uid": _optional_uid(dataset, "FrameOfReferenceUID", path),
        "modality": str(dataset.get("Modality", "") or "").strip().upper(),
        "image_type": _image_type(dataset),
        "instance_number": _optional_int(dataset, "InstanceNumber"),
        "rows": _required_int(dataset, "Rows", path),
        "columns": _required_int(dataset, "Columns", path),
        "images_in_acquisition": _optional_int(dataset, "ImagesInAcquisition"),
        "path": path,
    }
    if "PerFrameFunctionalGroupsSequence" in dataset or sop_class in ENHANCED_CT_SOP_CLASSES:
        return _enhanced_header(dataset, common, path)
    frames = _optional_int(dataset, "NumberOfFrames") or 1
    if frames != 1:
        raise InputError(
            f"{path}: classic CT instance holds {frames} frames but no per-frame positions "
            "(PerFrameFunctionalGroupsSequence); send single-frame slices or Enhanced CT"
        )
    return SliceHeader(
        **common,
        image_position=_floats(dataset, "ImagePositionPatient", 3, path),  # type: ignore[arg-type]
        image_orientation=_floats(dataset, "ImageOrientationPatient", 6, path),  # type: ignore[arg-type]
        pixel_spacing=_floats(dataset, "PixelSpacing", 2, path),  # type: ignore[arg-type]
        slice_thickness=_float(dataset, "SliceThickness", path),
        gantry_tilt=_float(dataset, "GantryDetectorTilt", path),
        kvp=_float(dataset, "KVP", path),
        frames=1,
        frame_positions=(),
    )


def _read(path: Path) -> Dataset:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, defer_size=_DEFER_SIZE)
    except InvalidDicomError:
        raise InputError(
            f"{path}: not a DICOM file (no 'DICM' preamble); only DICOM Part 10 files can be used"
        ) from None
    except OSError as error:
        raise InputError(f"{path}: cannot be read ({error.strerror or error}); check it exists") from None
    except Exception as error:  # pydicom raises assorted errors on damaged files
        reason = f"{type(error).__name__}: {error}"
        raise InputError(f"{path}: damaged DICOM header ({reason}); resend the instance") from None


def _sop_class(dataset: Dataset, path: Path) -> str:
    value = dataset.get("SOPClassUID") or dataset.get("file_meta", Dataset()).get("MediaStorageSOPClassUID")
    if not value:
        raise InputError(f"{path}: missing SOPClassUID (0008,0016); the file is not a storable image")
    return str(require_uid(value, f"{path}: SOPClassUID"))


def _uid(dataset: Dataset, keyword: str, path: Path) -> str:
    value = dataset.get(keyword)
    if not value:
        raise InputError(f"{path}: missing {keyword}; every CT instance must carry it, fix the sender")
    return str(require_uid(value, f"{path}: {keyword}"))


def _optional_uid(dataset: Dataset, keyword: str, path: Path) -> Uid | None:
    value = dataset.get(keyword)
    return require_uid(value, f"{path}: {keyword}") if value else None


def _image_type(dataset: Dataset) -> tuple[str, ...]:
    value = dataset.get("ImageType")
    if value is None:
        return ()
    values = [value] if isinstance(value, str) else list(value)
    return tuple(str(v).strip().upper() for v in values)


def _optional_int(dataset: Dataset, keyword: str) -> int | None:
    try:
        value = dataset.get(keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _required_int(dataset: Dataset, keyword: str, path: Path) -> int:
    value = _optional_int(dataset, keyword)
    if value is None or value <= 0:
        raise InputError(f"{path}: missing or invalid {keyword}; the instance is not an image")
    return value


def _raw_text(dataset: Dataset, keyword: str) -> str | None:
    """The element's value as text, bypassing pydicom's DS/IS validation."""
    if keyword not in dataset:
        return None
    element = dataset.get_item(keyword)
    if isinstance(element, RawDataElement):
        raw = element.value
        return None if raw is None else raw.decode("ascii", errors="replace").strip(" \x00")
    assert isinstance(element, DataElement)
    value = element.value
    if value is None or value == "":
        return None
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        return str(value)
    return "\\".join(str(v) for v in value)


def _numbers(text: str, keyword: str, path: Path) -> list[float]:
    try:
        # float() accepts "nan" and "inf" on purpose: qualification refuses them by name.
        return [float(part) for part in text.split("\\")]
    except ValueError:
        raise InputError(f"{path}: {keyword} {text!r} is not a list of numbers; fix the sender") from None


def _floats(dataset: Dataset, keyword: str, count: int, path: Path) -> tuple[float, ...] | None:
    text = _raw_text(dataset, keyword)
    if not text:
        return None
    numbers = _numbers(text, keyword, path)
    if len(numbers) != count:
        raise InputError(f"{path}: {keyword} {text!r} has {len(numbers)} values, needs {count}")
    return tuple(numbers)


def _float(dataset: Dataset, keyword: str, path: Path) -> float | None:
    text = _raw_text(dataset, keyword)
    if not text:
        return None
    numbers = _numbers(text, keyword, path)
    return numbers[0] if len(numbers) == 1 else None


def _group_item(frame_group: Dataset | None, shared: Dataset | None, sequence: str) -> Dataset | None:
    """The first item of a functional group, per-frame taking precedence over shared."""
    for group in (frame_group, shared):
        if group is not None and sequence in group and len(group[sequence].value) > 0:
            item: Dataset = group[sequence].value[0]
            return item
    return None


def _enhanced_header(dataset: Dataset, common: dict[str, Any], path: Path) -> SliceHeader:
    frames = _optional_int(dataset, "NumberOfFrames") or 1
    shared_seq = dataset.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else None
    per_frame = dataset.get("PerFrameFunctionalGroupsSequence") or []
    if len(per_frame) not in (0, frames):
        raise InputError(
            f"{path}: Enhanced CT has {frames} frames but {len(per_frame)} per-frame functional groups"
        )
    positions: list[tuple[float, ...]] = []
    # Keyed by repr so that NaN values (unequal to themselves) still compare as one value.
    orientations: dict[str, tuple[float, ...] | None] = {}
    spacings: dict[str, tuple[float, ...] | None] = {}
    thickness: float | None = None
    for index in range(frames):
        group = per_frame[index] if per_frame else None
        plane = _group_item(group, shared, "PlanePositionSequence")
        position = _floats(plane, "ImagePositionPatient", 3, path) if plane else None
        if position is None:
            raise InputError(f"{path}: frame {index + 1} has no PlanePositionSequence ImagePositionPatient")
        positions.append(position)
        orient = _group_item(group, shared, "PlaneOrientationSequence")
        orientation = _floats(orient, "ImageOrientationPatient", 6, path) if orient else None
        orientations[repr(orientation)] = orientation
        measures = _group_item(group, shared, "PixelMeasuresSequence")
        spacing = _floats(measures, "PixelSpacing", 2, path) if measures else None
        spacings[repr(spacing)] = spacing
        if measures is not None and thickness is None:
            thickness = _float(measures, "SliceThickness", path)
    if len(orientations) != 1 or len(spacings) != 1:
        raise InputError(
            f"{path}: the frames of this Enhanced CT instance differ in orientation or pixel spacing; "
            "it is not one volume, send an axial reconstruction"
        )
    first_group = per_frame[0] if per_frame else None
    details = _group_item(first_group, shared, "CTAcquisitionDetailsSequence")
    xray = _group_item(first_group, shared, "CTXRayDetailsSequence")
    tilt = _float(details, "GantryDetectorTilt", path) if details else None
    kvp = _float(xray, "KVP", path) if xray else _float(dataset, "KVP", path)
    return SliceHeader(
        **common,
        image_position=positions[0],  # type: ignore[arg-type]
        image_orientation=next(iter(orientations.values())),  # type: ignore[arg-type]
        pixel_spacing=next(iter(spacings.values())),  # type: ignore[arg-type]
        slice_thickness=thickness if thickness is not None else _float(dataset, "SliceThickness", path),
        gantry_tilt=tilt if tilt is not None else _float(dataset, "GantryDetectorTilt", path),
        kvp=kvp,
        frames=frames,
        frame_positions=tuple(positions),  # type: ignore[arg-type]
    )
