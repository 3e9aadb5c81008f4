"""Identifiers that cross every seam: DICOM UIDs and AE titles.

UIDs are validated before they are ever used as a file name, so a hostile
SOP Instance UID cannot walk out of the spool.
"""

from __future__ import annotations

import re
from typing import NewType

from ct2pet_node.errors import InputError

Uid = NewType("Uid", str)
SopInstanceUid = NewType("SopInstanceUid", str)
SeriesUid = NewType("SeriesUid", str)
StudyUid = NewType("StudyUid", str)
AeTitle = NewType("AeTitle", str)

# PS3.5 9.1: digits and dots, no leading zero in a component (tolerated: many
# scanners emit them), at most 64 characters.
_UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_AE_PATTERN = re.compile(r"^[\x20-\x7e]{1,16}$")


def is_valid_uid(value: str) -> bool:
    """Whether ``value`` is a syntactically valid DICOM UID (safe as a file name)."""
    return len(value) <= 64 and _UID_PATTERN.match(value) is not None


def require_uid(value: object, what: str) -> Uid:
    """Return ``value`` as a UID or raise :class:`InputError` naming ``what``."""
    text = str(value).strip().rstrip("\x00") if value is not None else ""
    if not is_valid_uid(text):
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise InputError(
            f"{what} {shown!r} is not a valid DICOM UID (digits and dots, at most 64 characters)"
        )
    return Uid(text)


def is_valid_ae_title(value: str) -> bool:
    """Whether ``value`` is a usable AE title: 1-16 printable ASCII characters, not all blank."""
    return _AE_PATTERN.match(value) is not None and value.strip() != "" and "\\" not in value
