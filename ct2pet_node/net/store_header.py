"""The few header keys the C-STORE handler reads from an encoded data set, without decoding the rest.

Runs on pynetdicom's association threads on a peer's bytes, so nothing here
may raise anything but :class:`Refusal` and nothing may trigger pydicom's
value validation (a hostile value would only be a warning, but warnings are
errors in the tests and noise in the log).
"""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID, CTImageStorage, EnhancedCTImageStorage

from ct2pet_node.domain.records import InstanceRecord
from ct2pet_node.domain.uids import (
    AeTitle,
    SeriesUid,
    SopInstanceUid,
    StudyUid,
    Uid,
    is_valid_uid,
    require_uid,
)
from ct2pet_node.errors import InputError

# What the node translates; every receiver decides "CT or not" by this.
CT_STORAGE_SOP_CLASSES: tuple[UID, ...] = (CTImageStorage, EnhancedCTImageStorage)

CANNOT_PARSE = 0xC210
INVALID_HEADER = 0xC211

_SOP_CLASS = Tag(0x0008, 0x0016)
_SOP_INSTANCE = Tag(0x0008, 0x0018)
_MODALITY = Tag(0x0008, 0x0060)
_STUDY = Tag(0x0020, 0x000D)
_SERIES = Tag(0x0020, 0x000E)
_HEADER_TAGS: list[BaseTag] = [_SOP_CLASS, _SOP_INSTANCE, _MODALITY, _STUDY, _SERIES]


class Refusal(Exception):
    """An instance the handler answers with a failure status (a peer's problem, not ours)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class StoreHeader:
    sop_class_uid: Uid
    sop_instance_uid: SopInstanceUid
    series_uid: SeriesUid
    study_uid: StudyUid
    modality: str

    def record(
        self, transfer_syntax_uid: Uid, calling_ae_title: AeTitle, path: Path, received_at: float
    ) -> InstanceRecord:
        """The job store's record of this instance, once it is spooled at ``path``."""
        return InstanceRecord(
            sop_instance_uid=self.sop_instance_uid,
            sop_class_uid=self.sop_class_uid,
            series_uid=self.series_uid,
            study_uid=self.study_uid,
            modality=self.modality,
            transfer_syntax_uid=transfer_syntax_uid,
            calling_ae_title=calling_ae_title,
            path=path,
            received_at=received_at,
        )


def _raw_text(dataset: Dataset, tag: BaseTag) -> str | None:
    # The raw bytes, not pydicom's converted value: a hostile value must not
    # trigger pydicom's validation warnings on the association thread.
    if tag not in dataset:
        return None
    raw = dataset.get_item(tag)
    value = getattr(raw, "value", None)
    if isinstance(value, bytes):
        return value.decode("ascii", errors="replace").strip("\x00 ")
    return None if value is None else str(value).strip("\x00 ")


def _read_keys(stream: bytes, is_implicit_vr: bool, is_little_endian: bool) -> Dataset:
    return read_dataset(
        BytesIO(stream),
        is_implicit_vr,
        is_little_endian,
        stop_when=lambda tag, _vr, _length: tag > _SERIES,
        specific_tags=list(_HEADER_TAGS),
    )


def read_header(stream: bytes, is_implicit_vr: bool, is_little_endian: bool) -> StoreHeader:
    """The keys an instance is spooled and recorded by; :class:`Refusal` with the status to answer."""
    try:
        dataset = _read_keys(stream, is_implicit_vr, is_little_endian)
        values = {tag: _raw_text(dataset, tag) for tag in _HEADER_TAGS}
    except Exception as error:  # any parse failure of a peer's bytes means "cannot understand"
        raise Refusal(CANNOT_PARSE, f"data set cannot be parsed: {error}") from error
    for tag in _HEADER_TAGS:
        vr = getattr(dataset.get_item(tag), "VR", None) if tag in dataset else None
        expected = "CS" if tag == _MODALITY else "UI"
        if vr not in (None, expected, "UN"):  # None: implicit VR; UN: a sender that lost its dictionary
            raise Refusal(INVALID_HEADER, f"element {tag} is encoded with VR {vr}, not {expected}")
    try:
        modality = values[_MODALITY]
        if not modality:
            raise InputError("Modality is missing or empty")
        return StoreHeader(
            sop_class_uid=require_uid(values[_SOP_CLASS], "SOPClassUID"),
            sop_instance_uid=SopInstanceUid(require_uid(values[_SOP_INSTANCE], "SOPInstanceUID")),
            series_uid=SeriesUid(require_uid(values[_SERIES], "SeriesInstanceUID")),
            study_uid=StudyUid(require_uid(values[_STUDY], "StudyInstanceUID")),
            modality=modality,
        )
    except InputError as error:
        raise Refusal(INVALID_HEADER, str(error)) from error


def series_uid_of(stream: bytes, is_implicit_vr: bool, is_little_endian: bool) -> SeriesUid | None:
    """The Series Instance UID of a data set's first bytes, or None when it cannot be read.

    For instances the node drops: the UID only goes into a log event, so
    anything unreadable or not a valid UID is simply left out.
    """
    try:
        value = _raw_text(_read_keys(stream, is_implicit_vr, is_little_endian), _SERIES)
    except Exception:  # a truncated or hostile header: the UID is a nicety, never a reason to fail
        return None
    return SeriesUid(value) if value and is_valid_uid(value) else None
