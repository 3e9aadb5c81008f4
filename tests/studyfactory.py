"""The rest of a PET/CT study, made by code: PET slices and a structured report beside the CT.

They share :data:`ctfactory.STUDY_UID` and the fake patient, so together
with :func:`ctfactory.make_ct_series` they make one study, as a PACS holds
it and forwards it::

    ct = make_ct_series(tmp_path / "study", n=20)
    pet = make_pet_series(tmp_path / "study", n=5)
    report = make_structured_report(tmp_path / "study")
"""

from __future__ import annotations

from pathlib import Path

from ctfactory import PATIENT_ID, PATIENT_NAME, STUDY_UID, make_ct_series, series_uid_for
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    BasicTextSRStorage,
    ExplicitVRLittleEndian,
    PositronEmissionTomographyImageStorage,
    generate_uid,
)

_UID_PREFIX = "1.2.826.0.1.3680043.8.498."  # pydicom's documented example root, as in ctfactory


def make_pet_series(directory: Path, n: int = 5, *, name: str = "pet") -> list[Path]:
    """``n`` PET Image Storage slices (modality PT, Bq/ml) of series ``name`` in the shared study."""

    def as_pet(_: int, ds: Dataset) -> None:
        ds.Units = "BQML"
        ds.SeriesDescription = f"SYNTHETIC PET {name}"
        for keyword in ("KVP", "RescaleType"):
            if keyword in ds:
                delattr(ds, keyword)

    return make_ct_series(
        directory,
        n=n,
        name=name,
        rows=32,
        cols=32,
        modality="PT",
        sop_class_uid=PositronEmissionTomographyImageStorage,
        image_type=("ORIGINAL", "PRIMARY"),
        mutate=as_pet,
    )


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    code = Dataset()
    code.CodeValue = value
    code.CodingSchemeDesignator = scheme
    code.CodeMeaning = meaning
    return code


def make_structured_report(directory: Path, *, name: str = "report", text: str = "No findings.") -> Path:
    """One Basic Text SR (modality SR) of series ``name`` in the shared study."""
    directory.mkdir(parents=True, exist_ok=True)
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = BasicTextSRStorage
    ds.SOPInstanceUID = generate_uid(prefix=_UID_PREFIX)
    ds.StudyInstanceUID = STUDY_UID
    ds.SeriesInstanceUID = series_uid_for(name)
    ds.Modality = "SR"
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.StudyDate = ds.ContentDate = "20240101"
    ds.StudyTime = ds.ContentTime = "120000"
    ds.StudyID = "1"
    ds.SeriesNumber = 9
    ds.InstanceNumber = 1
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.ConceptNameCodeSequence = DicomSequence([_code("18748-4", "LN", "Diagnostic Imaging Report")])
    finding = Dataset()
    finding.RelationshipType = "CONTAINS"
    finding.ValueType = "TEXT"
    finding.ConceptNameCodeSequence = DicomSequence([_code("121071", "DCM", "Finding")])
    finding.TextValue = text
    ds.ContentSequence = DicomSequence([finding])
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = directory / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


__all__ = ["make_pet_series", "make_structured_report"]
