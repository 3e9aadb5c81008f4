"""One synthetic PET slice as a Secondary Capture Image (highdicom ``SCImage``).

The SC IOD has no Frame of Reference and no Image Plane module, so what
geometry it can keep is kept: PixelSpacing (SC Image module), the dominant
PatientOrientation letters (General Image), InstanceNumber in increasing
slice position, and the first pixel's position written out in ImageComments
for a human reader. docs/output.md says what a viewer can do with that.
"""

from __future__ import annotations

import datetime

import numpy as np
from highdicom.sc import SCImage
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from ct2pet_node.dicom import labels
from ct2pet_node.dicom.output_common import (
    OutputSlice,
    SliceGeometry,
    contributing_equipment,
    copy_anatomy,
    copy_patient_and_study,
    patient_orientation_letters,
    source_image_item,
)
from ct2pet_node.domain.output_uids import SECONDARY_CAPTURE

# Fixed so a PACS query or a rule can recognise our captures: WSD is
# "Workstation", the conversion type of an image computed by software.
CONVERSION_TYPE = "WSD"


def build_sc_slice(
    out: OutputSlice,
    stored: np.ndarray,
    slope: float,
) -> Dataset:
    """The SC dataset of output slice ``out``.

    Parameters
    ----------
    out : OutputSlice
    stored : numpy.ndarray
        uint16 (rows, columns) stored values; output value = stored * ``slope``.
    """
    row_letter = patient_orientation_letters(out.geometry.orientation[:3])
    column_letter = patient_orientation_letters(out.geometry.orientation[3:])
    image = SCImage(
        pixel_array=stored,
        photometric_interpretation="MONOCHROME2",
        bits_allocated=16,
        coordinate_system="PATIENT",
        study_instance_uid=out.ct.study_uid,
        series_instance_uid=out.series_uid,
        series_number=out.series_number,
        sop_instance_uid=out.sop_instance_uid,
        instance_number=out.index + 1,
        manufacturer=labels.MANUFACTURER,
        pixel_spacing=out.geometry.pixel_spacing,
        patient_orientation=(row_letter, column_letter),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        contributing_equipment=contributing_equipment(out.info, out.ct_header),
        series_description=labels.series_description(SECONDARY_CAPTURE, out.info),
        manufacturer_model_name=labels.MANUFACTURER,
        software_versions=out.info.software_version[:64],
        content_date=out.now.date(),
        content_time=out.now.time(),
        series_date=out.now.date(),
        series_time=out.now.time(),
    )
    copy_patient_and_study(out.ct_header, image)
    copy_anatomy(out.ct_header, image)
    _describe(image, out.info, out.geometry, out.now)
    image.SourceImageSequence = [source_image_item(out.ct, out.index)]
    # Modality LUT and VOI LUT modules (both allowed in the SC IOD): one
    # slope for the whole series, so stored values compare across slices.
    image.RescaleIntercept = "0"
    image.RescaleSlope = f"{slope:.9g}"
    image.RescaleType = "US"
    center, width = out.window
    image.WindowCenter = f"{center:.6g}"
    image.WindowWidth = f"{width:.6g}"
    image.WindowCenterWidthExplanation = labels.units_phrase(out.info.output_units)[:64]
    return image


def _describe(
    image: Dataset, info: labels.SynthesisInfo, geometry: SliceGeometry, now: datetime.datetime
) -> None:
    """What the capture is and who made it."""
    image.ConversionType = CONVERSION_TYPE
    image.SecondaryCaptureDeviceManufacturer = labels.MANUFACTURER
    image.SecondaryCaptureDeviceManufacturerModelName = info.model_id[:64]
    image.SecondaryCaptureDeviceSoftwareVersions = [info.software_version[:64], info.model_version[:64]]
    image.DateOfSecondaryCapture = now.strftime("%Y%m%d")
    image.TimeOfSecondaryCapture = now.strftime("%H%M%S")
    image.InstanceCreationDate = now.strftime("%Y%m%d")
    image.InstanceCreationTime = now.strftime("%H%M%S")
    image.BurnedInAnnotation = "NO"
    image.LossyImageCompression = "00"
    image.DerivationDescription = labels.derivation_description(info)
    image.ImageComments = labels.image_comments(info, geometry.position)
