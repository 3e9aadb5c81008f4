"""What the node knows about one received instance.

Two layers on purpose: :class:`InstanceRecord` is what the storage handler
learns cheaply from a few header keys while the sender waits for its answer;
:class:`SliceHeader` is what the router parses later from the spooled file,
off the association thread.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ct2pet_node.domain.uids import AeTitle, SeriesUid, SopInstanceUid, StudyUid, Uid


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """One instance acknowledged to a sender: it is on disk at ``path``.

    Attributes
    ----------
    received_at : float
        Seconds since the epoch (wall clock) when it was stored.
    """

    sop_instance_uid: SopInstanceUid
    sop_class_uid: Uid
    series_uid: SeriesUid
    study_uid: StudyUid
    modality: str
    transfer_syntax_uid: Uid
    calling_ae_title: AeTitle
    path: Path
    received_at: float


@dataclass(frozen=True, slots=True)
class AssociationReleased:
    """A sender released its association cleanly, and what it stored in it.

    An aborted or dropped association has no such value: only a release says
    the sender finished what it meant to send.

    Attributes
    ----------
    released_at : float
        Seconds since the epoch (wall clock, as ``InstanceRecord.received_at``).
    delivered : mapping of SeriesUid to frozenset of SopInstanceUid
        The instances newly stored in this association, by series (re-sent
        duplicates are not in it: they were stored before).
    """

    calling_ae_title: AeTitle
    released_at: float
    delivered: Mapping[SeriesUid, frozenset[SopInstanceUid]]

    @classmethod
    def of(
        cls, calling_ae_title: AeTitle, released_at: float, stored: Iterable[InstanceRecord]
    ) -> AssociationReleased:
        """The release of a transfer that stored ``stored``: a STOW-RS request, a C-GET or WADO-RS retrieval."""
        delivered: dict[SeriesUid, set[SopInstanceUid]] = {}
        for record in stored:
            delivered.setdefault(record.series_uid, set()).add(record.sop_instance_uid)
        return cls(
            calling_ae_title, released_at, {series: frozenset(uids) for series, uids in delivered.items()}
        )


@dataclass(frozen=True, slots=True)
class SliceHeader:
    """Geometry and identity of one CT slice, parsed from its header only.

    Positions and directions are in patient LPS millimetres, as DICOM states
    them. ``frames`` is more than one only for an Enhanced CT instance, whose
    per-frame positions are in ``frame_positions``.

    Attributes
    ----------
    image_position : tuple of float or None
        ImagePositionPatient (x, y, z) of the first voxel, mm.
    image_orientation : tuple of float or None
        ImageOrientationPatient: row direction cosines then column direction cosines.
    pixel_spacing : tuple of float or None
        PixelSpacing as DICOM orders it: (between rows, between columns), mm.
    """

    sop_instance_uid: SopInstanceUid
    sop_class_uid: Uid
    series_uid: SeriesUid
    study_uid: StudyUid
    frame_of_reference_uid: Uid | None
    modality: str
    image_type: tuple[str, ...]
    instance_number: int | None
    rows: int
    columns: int
    image_position: tuple[float, float, float] | None
    image_orientation: tuple[float, float, float, float, float, float] | None
    pixel_spacing: tuple[float, float] | None
    slice_thickness: float | None
    gantry_tilt: float | None
    images_in_acquisition: int | None
    kvp: float | None
    frames: int
    frame_positions: tuple[tuple[float, float, float], ...]
    path: Path
