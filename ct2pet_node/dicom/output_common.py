"""Pieces both output writers (SC and PET) share: copied headers, references, geometry, pixels.

Patient and study attributes are copied element by element from one header
of the source CT series, never re-typed, so the output files under the same
patient and study as the CT in any PACS. Pixels are unsigned 16 bit with a
rescale slope chosen so the largest value uses the full range.
"""

from __future__ import annotations

import copy
import datetime
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from highdicom import ContributingEquipment
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from ct2pet_node.dicom.labels import MANUFACTURER, SynthesisInfo, contribution_description
from ct2pet_node.domain.volume import CtVolume

# Patient, Clinical Trial Subject, General Study, Patient Study and Clinical
# Trial Study modules: what identifies whose images these are and where they
# belong. Copied when present, with their VR and value untouched.
PATIENT_STUDY_KEYWORDS = (
    "SpecificCharacterSet",
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "TypeOfPatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "EthnicGroup",
    "PatientComments",
    "PatientSpeciesDescription",
    "PatientSpeciesCodeSequence",
    "PatientBreedDescription",
    "PatientBreedCodeSequence",
    "BreedRegistrationSequence",
    "ResponsiblePerson",
    "ResponsiblePersonRole",
    "ResponsibleOrganization",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
    "ClinicalTrialSponsorName",
    "ClinicalTrialProtocolID",
    "ClinicalTrialProtocolName",
    "ClinicalTrialSiteID",
    "ClinicalTrialSiteName",
    "ClinicalTrialSubjectID",
    "ClinicalTrialSubjectReadingID",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "IssuerOfAccessionNumberSequence",
    "StudyDescription",
    "PhysiciansOfRecord",
    "NameOfPhysiciansReadingStudy",
    "ReferencedStudySequence",
    "ProcedureCodeSequence",
    "AdmittingDiagnosesDescription",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "Occupation",
    "AdditionalPatientHistory",
    "ClinicalTrialTimePointID",
    "ClinicalTrialTimePointDescription",
)
_TYPE_2_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
_UINT16_MAX = 65535


def copy_patient_and_study(ct_header: Dataset, target: Dataset) -> None:
    """Copy the CT's patient and study attributes into ``target``, replacing any there.

    Type 2 attributes the CT lacks are added empty, never filled in.
    """
    for keyword in PATIENT_STUDY_KEYWORDS:
        if keyword in ct_header:
            element = ct_header[keyword]
            target[element.tag] = copy.deepcopy(element)
    # Type 2 means present, possibly empty: an empty value says "unknown",
    # which is the truth when the CT itself leaves the attribute out.
    for keyword in _TYPE_2_PATIENT_STUDY:
        if keyword not in target:
            setattr(target, keyword, None)


def copy_anatomy(ct_header: Dataset, target: Dataset) -> None:
    """BodyPartExamined and Laterality as the CT states them.

    Laterality is conditional on the body part being paired. When the CT
    names neither, the body part is unknown, and an empty Laterality is the
    IOD's way of saying so (dciodvfy warns about it, correctly).
    """
    body_part = str(ct_header.get("BodyPartExamined", "") or "")
    laterality = str(ct_header.get("Laterality", "") or "")
    if body_part:
        target.BodyPartExamined = body_part
    if laterality:
        target.Laterality = laterality
    elif not body_part:
        target.Laterality = None


def source_image_item(ct: CtVolume, index: int) -> Dataset:
    """The SourceImageSequence item naming the CT slice output slice ``index`` was made from."""
    source = ct.sources[index]
    item = Dataset()
    item.ReferencedSOPClassUID = source.sop_class_uid
    item.ReferencedSOPInstanceUID = source.sop_instance_uid
    if source.frame_number is not None:
        item.ReferencedFrameNumber = source.frame_number
    purpose = codes.DCM.SourceImageForImageProcessingOperation
    code = Dataset()
    code.CodeValue = purpose.value
    code.CodingSchemeDesignator = purpose.scheme_designator
    code.CodeMeaning = purpose.meaning
    item.PurposeOfReferenceCodeSequence = [code]
    return item


def contributing_equipment(info: SynthesisInfo, ct_header: Dataset) -> list[ContributingEquipment]:
    """This software as synthesising equipment, then the CT scanner as acquisition equipment."""
    items: list[ContributingEquipment] = [
        ContributingEquipment(
            manufacturer=MANUFACTURER,
            purpose_of_reference=codes.DCM.SynthesizingEquipment,
            manufacturer_model_name=info.model_id[:64],
            software_versions=[info.software_version[:64], info.model_version[:64]],
            contribution_description=contribution_description(info),
        )
    ]
    scanner = str(ct_header.get("Manufacturer", "") or "")
    if scanner:
        model = str(ct_header.get("ManufacturerModelName", "") or "") or None
        items.append(
            ContributingEquipment(
                manufacturer=scanner,
                purpose_of_reference=codes.DCM.AcquisitionEquipment,
                manufacturer_model_name=model,
                contribution_description="Acquired the source CT",
            )
        )
    return items


@dataclass(frozen=True, slots=True)
class SliceGeometry:
    """Where output slice ``index`` lies, in DICOM's terms (patient LPS mm).

    Attributes
    ----------
    pixel_spacing : tuple of float
        (between rows, between columns) as PixelSpacing orders it, mm.
    orientation : tuple of float
        ImageOrientationPatient: row direction cosines, then column direction cosines.
    slice_location : float
        Position along the slice normal, mm.
    """

    position: tuple[float, float, float]
    orientation: tuple[float, float, float, float, float, float]
    pixel_spacing: tuple[float, float]
    slice_location: float
    spacing_between_slices: float


@dataclass(frozen=True, slots=True)
class OutputSlice:
    """What an output slice's dataset is built from, whichever kind (PET or SC) is written.

    Attributes
    ----------
    index : int
        The slice's index in the output series, in increasing slice position.
    geometry : SliceGeometry
    ct, ct_header : CtVolume, pydicom.dataset.Dataset
        The source volume and one of its headers (patient, study, anatomy copied from it).
    info : SynthesisInfo
    series_uid, sop_instance_uid : str
    series_number : int
    window : tuple of float
        (WindowCenter, WindowWidth) in output units.
    now : datetime.datetime
        When the series was made: its content, series and instance dates and times.
    """

    index: int
    geometry: SliceGeometry
    ct: CtVolume
    ct_header: Dataset
    info: SynthesisInfo
    series_uid: str
    sop_instance_uid: str
    series_number: int
    window: tuple[float, float]
    now: datetime.datetime


def slice_geometry(affine: np.ndarray, index: int) -> SliceGeometry:
    """Geometry of slice ``index`` of a volume with ``affine`` (voxel (x, y, z, 1) -> LPS mm)."""
    column_step, row_step, slice_step = (affine[:3, axis] for axis in range(3))
    spacing_x, spacing_y = float(np.linalg.norm(column_step)), float(np.linalg.norm(row_step))
    row_direction, column_direction = column_step / spacing_x, row_step / spacing_y
    position = affine @ np.array([0.0, 0.0, float(index), 1.0])
    normal = np.cross(row_direction, column_direction)
    return SliceGeometry(
        position=(float(position[0]), float(position[1]), float(position[2])),
        orientation=tuple(float(v) for v in (*row_direction, *column_direction)),  # type: ignore[arg-type]
        pixel_spacing=(spacing_y, spacing_x),
        slice_location=float(np.dot(position[:3], normal)),
        spacing_between_slices=float(np.linalg.norm(slice_step)),
    )


def patient_orientation_letters(direction: Iterable[float]) -> str:
    """The one PatientOrientation letter of the axis a direction mostly follows (LPS: +x L, +y P, +z H)."""
    components = list(direction)
    axis = int(np.argmax(np.abs(components)))
    positive, negative = (("L", "R"), ("P", "A"), ("H", "F"))[axis]
    return positive if components[axis] >= 0 else negative


def rescale_slope(largest: float) -> float:
    """A slope, exact in its DS text, mapping ``largest`` to at most 65535; 1 when nothing is positive."""
    if largest <= 0:
        return 1.0
    # Nine significant digits fit DS's 16 characters; rounding the nudged
    # value can only land at or above the exact slope, so nothing overflows.
    return float(f"{largest / _UINT16_MAX * (1.0 + 1e-8):.9g}")


def to_uint16(values: np.ndarray, slope: float) -> np.ndarray:
    """Stored pixel values for ``values`` (negative values, never physical, become 0)."""
    stored = np.rint(np.clip(values, 0.0, None) / slope)
    encoded: np.ndarray = np.clip(stored, 0, _UINT16_MAX).astype(np.uint16)
    return encoded
