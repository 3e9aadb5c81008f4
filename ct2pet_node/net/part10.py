"""A DICOM Part 10 file as it arrives over HTTP (one STOW-RS part), made into an :class:`Arrival`.

The file meta group announces the SOP class, the SOP instance and the
transfer syntax, as a C-STORE's presentation context and request do; the
intake then checks the data set against them (:mod:`ct2pet_node.net.intake`).
Only the meta group is parsed here, never the data set.
"""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import _read_file_meta_info
from pydicom.filewriter import dcmwrite
from pydicom.uid import UID, ExplicitVRLittleEndian

from ct2pet_node.net.contexts import ACCEPTED_TRANSFER_SYNTAXES
from ct2pet_node.net.intake import Arrival, Outcome
from ct2pet_node.net.store_header import CANNOT_PARSE

# Referenced Transfer Syntax not supported (PS3.18 failure reasons): the SCP would not have
# negotiated it, so it would never have arrived over DIMSE.
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122

_PREAMBLE = 128


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A part that is not a Part 10 file the node can read: the outcome, and what it announced."""

    outcome: Outcome
    sop_class_uid: str = ""
    sop_instance_uid: str = ""


def arrival_of(
    content: bytes | None, head: bytes, size: int, source: str, study_uid: str | None = None
) -> Arrival | Unreadable:
    """The :class:`Arrival` of one Part 10 file, or why it is none.

    Parameters
    ----------
    content : bytes or None
        The whole file; None when it was larger than the node keeps (the intake refuses it).
    head : bytes
        Its first bytes (at least the file meta group), for naming an oversized file.
    size : int
        The file's size, bytes.
    source : str
        Who sent it, for the record.
    study_uid : str or None
        The study the request names, which the data set must belong to.
    """
    data = content if content is not None else head
    if len(data) < _PREAMBLE + 4 or data[_PREAMBLE : _PREAMBLE + 4] != b"DICM":
        return Unreadable(
            Outcome(CANNOT_PARSE, "not a DICOM Part 10 file (no DICM prefix after the preamble)")
        )
    stream = BytesIO(data)
    stream.seek(_PREAMBLE + 4)
    try:
        meta = _read_file_meta_info(stream)
        sop_class = str(meta.get("MediaStorageSOPClassUID", "")).strip()
        sop_instance = str(meta.get("MediaStorageSOPInstanceUID", "")).strip()
        syntax = str(meta.get("TransferSyntaxUID", "")).strip()
    except Exception as error:  # any failure on a peer's bytes means "cannot understand"
        return Unreadable(Outcome(CANNOT_PARSE, f"the file meta information cannot be parsed: {error}"))
    meta_end = stream.tell()
    if not (sop_class and sop_instance and syntax):
        return Unreadable(
            Outcome(
                CANNOT_PARSE, "the file meta information lacks the SOP class, instance or transfer syntax"
            ),
            sop_class,
            sop_instance,
        )
    if UID(syntax) not in ACCEPTED_TRANSFER_SYNTAXES:
        return Unreadable(
            Outcome(TRANSFER_SYNTAX_NOT_SUPPORTED, f"transfer syntax {syntax} is not one the node decodes"),
            sop_class,
            sop_instance,
        )
    return Arrival(
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        transfer_syntax=UID(syntax),
        meta=data[:meta_end] if content is not None else b"",
        dataset=content[meta_end:] if content is not None else None,
        size=size,
        source=source,
        study_uid=study_uid,
    )


def arrival_of_dataset(dataset: Dataset, source: str) -> Arrival | Unreadable:
    """A decoded data set (a WADO-RS retrieval) written back as the Part 10 file it came as, then read as one.

    Re-encoding in its own transfer syntax keeps the bytes a push would have
    brought, so the intake checks and spools it exactly as a pushed instance.
    """
    meta = getattr(dataset, "file_meta", None) or FileMetaDataset()
    syntax = UID(str(meta.get("TransferSyntaxUID", ExplicitVRLittleEndian)))
    meta.TransferSyntaxUID = syntax
    meta.MediaStorageSOPClassUID = UID(str(dataset.get("SOPClassUID", "")))
    meta.MediaStorageSOPInstanceUID = UID(str(dataset.get("SOPInstanceUID", "")))
    dataset.file_meta = meta
    buffer = BytesIO()
    try:
        dcmwrite(buffer, dataset, enforce_file_format=True)
    except Exception as error:  # a source's data set we cannot write back is one we cannot keep
        return Unreadable(Outcome(CANNOT_PARSE, f"the data set cannot be encoded in {syntax}: {error}"))
    content = buffer.getvalue()
    return arrival_of(content, content, len(content), source)
