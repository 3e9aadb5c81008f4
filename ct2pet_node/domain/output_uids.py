"""Deterministic identities of the synthetic PET series the node produces.

Output Series and SOP Instance UIDs derive from the source CT series UID,
the model id and the output kind only, so a resent CT series or a retried
push re-sends the same instances instead of making a second series. They
deliberately do not depend on sampling steps or seed: the node keeps one
synthetic series per (CT series, model, kind), and a re-run replaces it.

UIDs are ``2.25.`` followed by the decimal value of a name-based UUID
(PS3.5 B.2), so they need no registered root and never exceed 44 characters.
"""

from __future__ import annotations

import uuid
from typing import Final

from ct2pet_node.domain.uids import SeriesUid, SopInstanceUid, Uid, is_valid_uid
from ct2pet_node.errors import InputError

SECONDARY_CAPTURE: Final = "secondary-capture"
PET: Final = "pet"
OUTPUT_KINDS: Final = (SECONDARY_CAPTURE, PET)

# Fixed for the life of the product: changing it would re-identify every
# output series ever sent.
_NAMESPACE: Final = uuid.UUID("6f1c2a8e-3b9d-5c47-9e21-c7d0b4a5f318")


def _require_inputs(ct_series_uid: str, model_id: str, kind: str) -> None:
    if not is_valid_uid(ct_series_uid):
        raise InputError(f"CT series UID {ct_series_uid!r} is not a valid DICOM UID")
    if not model_id or "\n" in model_id:
        raise InputError(f"model id {model_id!r} must be a non-empty single-line name")
    if kind not in OUTPUT_KINDS:
        raise InputError(f"output kind {kind!r} is unknown; use one of {OUTPUT_KINDS}")


def _uid_from_name(*parts: str) -> Uid:
    # A separator no part may contain keeps ("a", "bc") and ("ab", "c") apart.
    name = "\n".join(parts)
    return Uid(f"2.25.{uuid.uuid5(_NAMESPACE, name).int}")


def output_series_uid(ct_series_uid: str, model_id: str, kind: str) -> SeriesUid:
    """The Series Instance UID of the ``kind`` output made from a CT series by a model.

    Parameters
    ----------
    ct_series_uid : str
        Series Instance UID of the source CT series.
    model_id : str
        Identifier of the weights that produced the output.
    kind : str
        One of :data:`OUTPUT_KINDS`.
    """
    _require_inputs(ct_series_uid, model_id, kind)
    return SeriesUid(_uid_from_name("series", ct_series_uid, model_id, kind))


def output_sop_instance_uid(ct_series_uid: str, model_id: str, kind: str, index: int) -> SopInstanceUid:
    """The SOP Instance UID of output slice ``index`` (0-based, in increasing slice position)."""
    _require_inputs(ct_series_uid, model_id, kind)
    if index < 0:
        raise InputError(f"slice index {index} is negative; indices start at 0")
    return SopInstanceUid(_uid_from_name("instance", ct_series_uid, model_id, kind, str(index)))


def output_frame_of_reference_uid(kind: str, ct_frame_of_reference_uid: str) -> Uid | None:
    """The Frame of Reference UID an output of ``kind`` carries.

    The PET output lies in the CT's patient space, so it shares the CT's frame
    of reference (that is what lets a viewer fuse the two). A secondary
    capture has no Frame of Reference module, so it carries none.
    """
    if kind not in OUTPUT_KINDS:
        raise InputError(f"output kind {kind!r} is unknown; use one of {OUTPUT_KINDS}")
    if kind == SECONDARY_CAPTURE:
        return None
    if not is_valid_uid(ct_frame_of_reference_uid):
        raise InputError(f"CT frame of reference UID {ct_frame_of_reference_uid!r} is not a valid DICOM UID")
    return Uid(ct_frame_of_reference_uid)
