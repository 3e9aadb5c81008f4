"""``convert --recursive``: an archive's files -> its CT series -> what to do with each, and the summary.

Reading headers is the only I/O here (through an injected reader); grouping,
planning and the summary are pure, so the rules are tested on values. A
series is planned exactly as the node's router decides it
(:func:`~ct2pet_node.routing.qualify.qualify_series`); a series with no CT
instance at all is ``skipped`` rather than ``refused``, because an archive of
PET/CT studies holds a PET series beside every CT and that is no fault.

Nothing here names a file: archive folders are often named after patients,
so the summary and the default-level log carry UIDs and counts only.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from ct2pet_node.config import RoutingConfig
from ct2pet_node.domain.records import SliceHeader
from ct2pet_node.domain.series import QualifiedSeries
from ct2pet_node.domain.uids import SeriesUid, StudyUid
from ct2pet_node.errors import InputError, SeriesRefused
from ct2pet_node.routing.qualify import qualify_series

log = structlog.get_logger(__name__)

SUMMARY_FORMAT = 1
# A DICOM Part 10 file: a 128-byte preamble, then these four bytes.
_DICOM_MAGIC_OFFSET = 128
_DICOM_MAGIC = b"DICM"


class SeriesState(enum.Enum):
    """What became of one series of the archive (the summary's ``state``)."""

    PENDING = "pending"
    CONVERTED = "converted"
    ALREADY_CONVERTED = "already converted"
    REFUSED = "refused"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class FoundSeries:
    """The headers of one series found in the archive, in file-path order."""

    series_uid: SeriesUid
    study_uid: StudyUid
    headers: tuple[SliceHeader, ...]

    @property
    def files(self) -> int:
        return len({header.path for header in self.headers})


@dataclass(frozen=True, slots=True)
class ArchiveScan:
    """Every series of an archive, and the files that belong to none."""

    series: tuple[FoundSeries, ...]
    not_dicom: int
    not_image: int


@dataclass(frozen=True, slots=True)
class PlannedSeries:
    """One series with the node's decision on it: ``qualified`` to translate, or a ``reason`` not to."""

    found: FoundSeries
    qualified: QualifiedSeries | None
    state: SeriesState
    reason: str | None

    @property
    def slices(self) -> int:
        return len(self.qualified.slices) if self.qualified is not None else 0


@dataclass(frozen=True, slots=True)
class SeriesOutcome:
    """One row of the summary."""

    series_uid: str
    study_uid: str
    files: int
    slices: int
    state: SeriesState
    reason: str | None = None
    output_dir: str | None = None

    def as_json(self) -> dict[str, object]:
        return {
            "series_uid": self.series_uid,
            "study_uid": self.study_uid,
            "files": self.files,
            "slices": self.slices,
            "state": self.state.value,
            "reason": self.reason,
            "output_dir": self.output_dir,
        }


@dataclass(frozen=True, slots=True)
class ArchiveSummary:
    """What ``summary.json`` and ``summary.txt`` say; ``outcomes`` in (study, series) order."""

    model_id: str
    engine: str
    not_dicom: int
    not_image: int
    outcomes: tuple[SeriesOutcome, ...] = field(default=())

    def counts(self) -> dict[str, int]:
        return {state.value: sum(o.state is state for o in self.outcomes) for state in SeriesState}

    def as_json(self) -> dict[str, object]:
        return {
            "format": SUMMARY_FORMAT,
            "model_id": self.model_id,
            "engine": self.engine,
            "skipped_files": {"not_dicom": self.not_dicom, "not_an_image": self.not_image},
            "counts": self.counts(),
            "series": [outcome.as_json() for outcome in self.outcomes],
        }

    def as_text(self) -> str:
        """The summary for people: the counts, then every series that was not converted, with why."""
        counts = ", ".join(f"{n} {state}" for state, n in self.counts().items() if n)
        lines = [
            f"{len(self.outcomes)} series ({counts or 'none'}); model {self.model_id} on {self.engine}",
            f"skipped files: {self.not_dicom} not DICOM, {self.not_image} DICOM but not an image",
        ]
        for outcome in self.outcomes:
            where = f" -> {outcome.output_dir}" if outcome.output_dir else ""
            why = f": {outcome.reason}" if outcome.reason else ""
            lines.append(
                f"{outcome.state.value.upper()} study {outcome.study_uid} series {outcome.series_uid} "
                f"({outcome.files} files){where}{why}"
            )
        return "\n".join(lines) + "\n"


def is_dicom_file(path: Path) -> bool:
    """Whether ``path`` starts like a DICOM Part 10 file (the check pydicom makes before parsing)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(_DICOM_MAGIC_OFFSET + len(_DICOM_MAGIC))
    except OSError:
        return False
    return head[_DICOM_MAGIC_OFFSET:] == _DICOM_MAGIC


def scan_archive(
    folder: Path,
    read_header: Callable[[Path], SliceHeader],
    is_dicom: Callable[[Path], bool] = is_dicom_file,
    exclude: Path | None = None,
) -> ArchiveScan:
    """Read the header of every file under ``folder`` (recursively) and group them by series.

    Parameters
    ----------
    read_header : callable
        Path -> SliceHeader, header only
        (:func:`ct2pet_node.dicom.headers.read_slice_header`); an
        :class:`InputError` marks a DICOM file that is not an image slice.
    exclude : pathlib.Path, optional
        A folder not to read (the results, when they are written inside the archive).

    Raises
    ------
    InputError
        ``folder`` is not a directory.
    """
    if not folder.is_dir():
        raise InputError(f"{folder} is not a directory; give the folder that holds the studies")
    headers: list[SliceHeader] = []
    not_dicom = not_image = 0
    skip = exclude.resolve() if exclude is not None else None
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if skip is not None and path.resolve().is_relative_to(skip):
            continue
        if not is_dicom(path):
            not_dicom += 1
            continue
        try:
            headers.append(read_header(path))
        except InputError as error:
            not_image += 1
            # The reason names the file, and an archive's file names may name the patient.
            log.debug("file_skipped", path=str(path), reason=str(error))
    series = group_series(headers)
    log.info("archive_scanned", series=len(series), not_dicom=not_dicom, not_image=not_image)
    return ArchiveScan(series, not_dicom, not_image)


def group_series(headers: Iterable[SliceHeader]) -> tuple[FoundSeries, ...]:
    """Headers grouped by SeriesInstanceUID, in (study UID, series UID) order.

    A series whose instances disagree on the study keeps the study of its
    first instance: qualification judges the series, not this grouping.
    """
    grouped: dict[SeriesUid, list[SliceHeader]] = {}
    for header in headers:
        grouped.setdefault(header.series_uid, []).append(header)
    found = [FoundSeries(uid, members[0].study_uid, tuple(members)) for uid, members in grouped.items()]
    return tuple(sorted(found, key=lambda s: (s.study_uid, s.series_uid)))


def plan_series(series: Sequence[FoundSeries], rules: RoutingConfig) -> list[PlannedSeries]:
    """Qualify every series as the router does: PENDING to translate, REFUSED or SKIPPED with the reason."""
    planned: list[PlannedSeries] = []
    for found in series:
        try:
            qualified = qualify_series(found.headers, rules)
        except SeriesRefused as refusal:
            is_ct = any(header.modality == "CT" for header in found.headers)
            state = SeriesState.REFUSED if is_ct else SeriesState.SKIPPED
            planned.append(PlannedSeries(found, None, state, str(refusal)))
            continue
        planned.append(PlannedSeries(found, qualified, SeriesState.PENDING, None))
    return planned


def without_paths(reason: str, headers: Iterable[SliceHeader]) -> str:
    """``reason`` with every file path of ``headers`` replaced by its instance UID (folder names may be PHI)."""
    for header in sorted(headers, key=lambda h: len(str(h.path)), reverse=True):
        reason = reason.replace(str(header.path), f"instance {header.sop_instance_uid}")
    return reason
