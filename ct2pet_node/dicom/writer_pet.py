"""One synthetic PET slice as a PET Image Storage instance, built with pydicom.

highdicom has no PET Image class, so the PET IOD (PS3.3 A.21) is filled here
module by module. The image shares the CT's frame of reference and carries
full Image Plane geometry, so viewers fuse it with the CT.

Nothing was acquired, so the PET acquisition attributes that the IOD
requires hold placeholders that claim nothing (see ``PLACEHOLDERS``): type 2
attributes are present and empty, type 1 ones take the value meaning
"none" or zero.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import UID, ExplicitVRLittleEndian, PositronEmissionTomographyImageStorage
from pydicom.valuerep import DS

from ct2pet_node.dicom import labels
from ct2pet_node.dicom.output_common import (
    OutputSlice,
    SliceGeometry,
    contributing_equipment,
    copy_anatomy,
    copy_patient_and_study,
    source_image_item,
)
from ct2pet_node.domain.output_uids import PET
from ct2pet_node.domain.volume import PetUnits

# Units (0054,1001): GML is SUVbw's unit. Relative output has no unit at
# all (each slice is scaled to its own maximum, so it is not even
# proportional to counts across the volume): NONE, "unitless", says so.
UNITS = {PetUnits.SUVBW: "GML", PetUnits.RELATIVE: "NONE"}

# Required PET attributes with nothing acquired to describe, and why each value.
PLACEHOLDERS: dict[str, object] = {
    "SeriesType": ["STATIC", "IMAGE"],  # one static frame of reconstructed slices
    "CountsSource": "EMISSION",  # what the values imitate; no counts exist
    "DecayCorrection": "NONE",  # no activity decayed; no DecayFactor follows
    "CorrectedImage": None,  # type 2, empty: no correction was applied
    "CollimatorType": None,  # type 2, empty: no collimator was used
    "RadiopharmaceuticalInformationSequence": [],  # type 2, empty: nothing injected
    "FrameReferenceTime": "0",  # type 1, ms: one frame starting at its own reference
    "ActualFrameDuration": None,  # type 2, empty: no frame was acquired
    "AcquisitionDate": None,  # type 2, empty: no acquisition
    "AcquisitionTime": None,
    "ReconstructionMethod": "SYNTHETIC CPDM FROM CT",  # type 3, says how the image arose
}

_ORIENTATION = {"HF": codes.SCT.Headfirst, "FF": codes.SCT.FeetFirst}
_MODIFIER = {
    "S": codes.SCT.Supine,
    "P": codes.SCT.Prone,
    "DR": codes.SCT.RightLateralDecubitus,
    "DL": codes.SCT.LeftLateralDecubitus,
}


def _code_item(code: object) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value  # type: ignore[attr-defined]
    item.CodingSchemeDesignator = code.scheme_designator  # type: ignore[attr-defined]
    item.CodeMeaning = code.meaning  # type: ignore[attr-defined]
    return item


def _patient_orientation(image: Dataset, patient_position: str) -> None:
    """NM/PET Patient Orientation module from the CT's PatientPosition (HFS, FFP, HFDR, ...)."""
    gantry = _ORIENTATION.get(patient_position[:2])
    modifier = _MODIFIER.get(patient_position[2:])
    if gantry is None or modifier is None:
        # Type 2: present and empty says "not known" rather than guessing.
        image.PatientOrientationCodeSequence = []
        image.PatientGantryRelationshipCodeSequence = []
        return
    orientation = _code_item(codes.SCT.Recumbent)
    orientation.PatientOrientationModifierCodeSequence = [_code_item(modifier)]
    image.PatientOrientationCodeSequence = [orientation]
    image.PatientGantryRelationshipCodeSequence = [_code_item(gantry)]


def build_pet_slice(
    out: OutputSlice,
    stored: np.ndarray,
    slope: float,
    n_slices: int,
) -> Dataset:
    """The PET Image Storage dataset of output slice ``out`` of ``n_slices``.

    Parameters
    ----------
    out : OutputSlice
    stored : numpy.ndarray
        uint16 (rows, columns); output value = stored * ``slope`` (this slice's own slope).
    """
    image = Dataset()
    image.file_meta = FileMetaDataset()
    image.file_meta.MediaStorageSOPClassUID = PositronEmissionTomographyImageStorage
    image.file_meta.MediaStorageSOPInstanceUID = UID(out.sop_instance_uid)
    image.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    copy_patient_and_study(out.ct_header, image)
    date, time = out.now.strftime("%Y%m%d"), out.now.strftime("%H%M%S")

    # SOP Common
    image.SOPClassUID = PositronEmissionTomographyImageStorage
    image.SOPInstanceUID = out.sop_instance_uid
    image.InstanceCreationDate, image.InstanceCreationTime = date, time
    # General Series + PET Series
    image.Modality = "PT"
    image.SeriesInstanceUID = out.series_uid
    image.SeriesNumber = out.series_number
    image.SeriesDate, image.SeriesTime = date, time
    image.SeriesDescription = labels.series_description(PET, out.info)
    copy_anatomy(out.ct_header, image)
    image.Units = UNITS[out.info.output_units]
    if out.info.output_units is PetUnits.SUVBW:
        image.SUVType = "BW"
    image.NumberOfSlices = n_slices
    for keyword, value in PLACEHOLDERS.items():
        setattr(image, keyword, value)
    _patient_orientation(image, str(out.ct_header.get("PatientPosition", "") or ""))
    # Frame of Reference: the CT's own, so the two fuse.
    image.FrameOfReferenceUID = out.ct.frame_of_reference_uid
    image.PositionReferenceIndicator = out.ct_header.get("PositionReferenceIndicator", None)
    # General Equipment
    image.Manufacturer = labels.MANUFACTURER
    image.ManufacturerModelName = labels.MANUFACTURER
    image.SoftwareVersions = [out.info.software_version[:64], out.info.model_version[:64]]
    image.ContributingEquipmentSequence = contributing_equipment(out.info, out.ct_header)
    # General Image + General Reference + PET Image
    image.InstanceNumber = out.index + 1
    image.ImageIndex = out.index + 1
    image.ContentDate, image.ContentTime = date, time
    image.ImageType = ["DERIVED", "PRIMARY"]
    image.BurnedInAnnotation = "NO"
    image.LossyImageCompression = "00"
    image.DerivationDescription = labels.derivation_description(out.info)
    image.ImageComments = labels.image_comments(out.info, out.geometry.position)
    image.SourceImageSequence = [source_image_item(out.ct, out.index)]
    _image_plane(image, out.geometry, out.ct_header)
    _pixels(image, stored, slope, out.window, out.info.output_units)
    return image


def _image_plane(image: Dataset, geometry: SliceGeometry, ct_header: Dataset) -> None:
    image.ImagePositionPatient = [DS(v, auto_format=True) for v in geometry.position]
    image.ImageOrientationPatient = [DS(v, auto_format=True) for v in geometry.orientation]
    image.PixelSpacing = [DS(v, auto_format=True) for v in geometry.pixel_spacing]
    # The synthetic slice stands for the CT slice it was made from, so it
    # inherits that slice's thickness (empty when the CT does not say).
    image.SliceThickness = ct_header.get("SliceThickness", None)
    image.SpacingBetweenSlices = DS(geometry.spacing_between_slices, auto_format=True)
    image.SliceLocation = DS(geometry.slice_location, auto_format=True)


def _pixels(
    image: Dataset, stored: np.ndarray, slope: float, window: tuple[float, float], units: PetUnits
) -> None:
    image.SamplesPerPixel = 1
    image.PhotometricInterpretation = "MONOCHROME2"
    image.Rows, image.Columns = int(stored.shape[0]), int(stored.shape[1])
    image.BitsAllocated = 16
    image.BitsStored = 16
    image.HighBit = 15
    image.PixelRepresentation = 0
    # PET Image module: intercept shall be 0; the slope is this slice's own,
    # so every slice keeps its full 16-bit dynamic range.
    image.RescaleIntercept = "0"
    image.RescaleSlope = f"{slope:.9g}"
    center, width = window
    image.WindowCenter = f"{center:.6g}"
    image.WindowWidth = f"{width:.6g}"
    image.WindowCenterWidthExplanation = labels.units_phrase(units)[:64]
    image.PixelData = np.ascontiguousarray(stored, dtype="<u2").tobytes()
