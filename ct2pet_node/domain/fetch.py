"""Pulling a study on demand: what a source says it holds, and which of it the node takes.

Pure values and the selection rule; finding (C-FIND, QIDO-RS) and
retrieving (C-MOVE, C-GET, WADO-RS) live in ``net/``, the orchestration in
:mod:`ct2pet_node.service.fetch`. Nothing here carries patient data: a
source's answer is reduced to UIDs, modality, series number and instance
count before it reaches these values.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ct2pet_node.domain.uids import SeriesUid, StudyUid, require_uid
from ct2pet_node.errors import InputError

# The node translates CT only; a study's PET, SR or localiser series are found but left where they are.
FETCHED_MODALITY = "CT"


@dataclass(frozen=True, slots=True)
class FoundSeries:
    """One series a source reports for a study.

    Attributes
    ----------
    modality : str
        As the source reports it (``""`` when it did not say).
    series_number : int or None
        Series Number, when reported.
    instances : int or None
        Number of Series Related Instances, when reported.
    """

    study_uid: StudyUid
    series_uid: SeriesUid
    modality: str
    series_number: int | None = None
    instances: int | None = None

    def __post_init__(self) -> None:
        require_uid(self.study_uid, "StudyInstanceUID")
        require_uid(self.series_uid, "SeriesInstanceUID")
        if self.instances is not None and self.instances < 0:
            raise InputError(f"series {self.series_uid}: a negative instance count ({self.instances})")

    def to_json(self) -> dict[str, Any]:
        return {
            "study_uid": self.study_uid,
            "series_uid": self.series_uid,
            "modality": self.modality,
            "series_number": self.series_number,
            "instances": self.instances,
        }


@dataclass(frozen=True, slots=True)
class FetchRequest:
    """What an operator or a script asks for: a study (or one series of it) from a named source."""

    source: str
    study_uid: StudyUid
    series_uid: SeriesUid | None = None
    dry_run: bool = False

    def __post_init__(self) -> None:
        if not self.source:
            raise InputError("fetch needs a source: the name of a [[sources]] table")
        require_uid(self.study_uid, "study")
        if self.series_uid is not None:
            require_uid(self.series_uid, "series")

    @classmethod
    def from_json(cls, body: object) -> FetchRequest:
        """The request of ``POST /fetch``'s JSON body; :class:`InputError` naming what is wrong."""
        if not isinstance(body, dict):
            raise InputError('the body must be a JSON object: {"source": ..., "study": ...}')
        unknown = sorted(set(body) - {"source", "study", "series", "dry_run"})
        if unknown:
            raise InputError(f"unknown keys {unknown}; known: source, study, series, dry_run")
        source, study, series, dry_run = (body.get(key) for key in ("source", "study", "series", "dry_run"))
        if not isinstance(source, str) or not isinstance(study, str):
            raise InputError('"source" and "study" are required strings')
        if series is not None and not isinstance(series, str):
            raise InputError('"series" must be a string (a Series Instance UID)')
        if not isinstance(dry_run, bool | None):
            raise InputError('"dry_run" must be true or false')
        return cls(
            source,
            StudyUid(study),
            SeriesUid(series) if series is not None else None,
            bool(dry_run),
        )


@dataclass(frozen=True, slots=True)
class FetchOutcome:
    """What a fetch found and took.

    Attributes
    ----------
    taken : tuple of FoundSeries
        The CT series selected (retrieved, unless ``dry_run``).
    received : dict
        Instances the source delivered per taken series UID (empty for a dry run).
        A series the node held already is delivered again and kept once.
    jobs : dict
        The node's job for each taken series UID, where it has one.
    """

    request: FetchRequest
    method: str
    taken: tuple[FoundSeries, ...]
    received: dict[str, int]
    jobs: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.request.source,
            "study_uid": self.request.study_uid,
            "dry_run": self.request.dry_run,
            "method": self.method,
            "series": [
                {
                    **found.to_json(),
                    "received": self.received.get(found.series_uid),
                    "job_id": self.jobs.get(found.series_uid),
                }
                for found in self.taken
            ],
        }


def select_series(
    study_uid: StudyUid, found: Iterable[FoundSeries], series_uid: SeriesUid | None = None
) -> tuple[FoundSeries, ...]:
    """The CT series of ``found`` to take, ordered by series number then UID.

    Raises
    ------
    InputError
        The study has no CT series (the message lists the modalities found),
        or ``series_uid`` is not one of its CT series.
    """
    found = [series for series in found if series.study_uid == study_uid]
    ct = [series for series in found if series.modality.upper() == FETCHED_MODALITY]
    if not ct:
        modalities = ", ".join(sorted({series.modality or "unknown" for series in found})) or "no series"
        raise InputError(f"study {study_uid} has no CT series (found: {modalities}); nothing to fetch")
    if series_uid is not None:
        ct = [series for series in ct if series.series_uid == series_uid]
        if not ct:
            others = {series.series_uid: series.modality for series in found}
            what = f"is {others[series_uid]}, not CT" if series_uid in others else "is not in it"
            raise InputError(f"series {series_uid} of study {study_uid} {what}; nothing to fetch")
    return tuple(
        sorted(
            ct,
            key=lambda series: (series.series_number is None, series.series_number or 0, series.series_uid),
        )
    )


@dataclass(frozen=True, slots=True)
class FetchRecord:
    """One fetch as ``status`` and the dashboard list it: when, from where, what came of it.

    Attributes
    ----------
    at : float
        When it ended, seconds since the epoch.
    series, instances : int
        CT series taken and instances received (0 for a dry run).
    jobs : tuple of int
        The node's jobs for the series taken.
    error : str or None
        Why it failed; None when it did not.
    """

    at: float
    source: str
    study_uid: str
    method: str
    dry_run: bool = False
    series: int = 0
    instances: int = 0
    jobs: tuple[int, ...] = ()
    error: str | None = None

    @classmethod
    def of(cls, at: float, outcome: FetchOutcome) -> FetchRecord:
        request = outcome.request
        return cls(
            at,
            request.source,
            request.study_uid,
            outcome.method,
            request.dry_run,
            len(outcome.taken),
            sum(outcome.received.values()),
            tuple(sorted(set(outcome.jobs.values()))),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "source": self.source,
            "study_uid": self.study_uid,
            "method": self.method,
            "dry_run": self.dry_run,
            "series": self.series,
            "instances": self.instances,
            "jobs": list(self.jobs),
            "error": self.error,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FetchRecord:
        return cls(
            float(data.get("at") or 0.0),
            str(data.get("source", "")),
            str(data.get("study_uid", "")),
            str(data.get("method", "")),
            bool(data.get("dry_run")),
            int(data.get("series") or 0),
            int(data.get("instances") or 0),
            tuple(int(job) for job in data.get("jobs") or ()),
            data.get("error"),
        )

    def describe(self) -> str:
        """One line for people: "study 1.2.3 from pacs by C-MOVE: 2 CT series, 494 instances, jobs 7, 8"."""
        head = f"study {self.study_uid} from {self.source} by {self.method}"
        if self.error is not None:
            return f"{head} failed: {self.error}"
        if self.dry_run:
            return f"{head} (dry run): {self.series} CT series found"
        jobs = ", ".join(str(job) for job in self.jobs) or "none yet"
        return f"{head}: {self.series} CT series, {self.instances} instances, jobs {jobs}"
