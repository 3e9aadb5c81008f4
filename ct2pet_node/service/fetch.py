"""Pull on demand: find a study's CT series at a source and retrieve them into the running node.

Runs inside the node because only its storage SCP can receive what a C-MOVE
sends; C-GET and WADO-RS instances are kept through the SCP's
:class:`~ct2pet_node.net.intake.Intake`. Either way the series
enters the spool and the router as a pushed one does, and completes by the
router's usual rules: settled soon after the retrieval ends when it is gap-free,
else the quiet time.
``ct2pet-node fetch`` and ``POST /fetch`` both end in :meth:`Fetcher.fetch`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable

import structlog

from ct2pet_node.config import Config, Source
from ct2pet_node.domain.fetch import FetchOutcome, FetchRecord, FetchRequest, FoundSeries, select_series
from ct2pet_node.domain.records import AssociationReleased, InstanceRecord
from ct2pet_node.domain.uids import AeTitle
from ct2pet_node.errors import ConfigError, Ct2PetError
from ct2pet_node.net import dicomweb_source, query_retrieve
from ct2pet_node.net.intake import Arrival, Intake, Outcome
from ct2pet_node.net.scu import ScuTimeouts
from ct2pet_node.spool.jobstore import JobStore

log = structlog.get_logger(__name__)

# Fetches `status` and the dashboard list (the log has them all).
RECENT_FETCHES = 10


class Fetcher:
    """Finds and retrieves for :class:`FetchRequest`; one fetch at a time.

    Parameters
    ----------
    intake : Intake
        The storage SCP's, so retrieved instances take the pushed ones' path.
    store : JobStore
        Read only, to name the job each retrieved series went to.
    timeouts : ScuTimeouts
        For the DIMSE associations (C-FIND, C-MOVE, C-GET); DIMSE timeout is
        the longest wait between two responses of a retrieval.
    on_released : callable or None
        Told what a finished C-GET or WADO-RS retrieval stored, as the storage
        SCP tells the router at a clean release, so a retrieved series settles
        instead of waiting for the quiet rule (a C-MOVE arrives through the SCP,
        which does this itself).
    on_record : callable or None
        Told each fetch as it ends, failed ones too (the node's metrics).
    """

    def __init__(
        self,
        config: Config,
        intake: Intake,
        store: JobStore,
        timeouts: ScuTimeouts,
        on_released: Callable[[AssociationReleased], None] | None = None,
        on_record: Callable[[FetchRecord], None] | None = None,
    ) -> None:
        self._config = config
        self._intake = intake
        self._on_released = on_released
        self._store = store
        self._timeouts = timeouts
        # Two fetches of one study at once would race for the same instances; the second waits.
        self._one_at_a_time = threading.Lock()
        self._recent: deque[FetchRecord] = deque(maxlen=RECENT_FETCHES)
        self._recent_lock = threading.Lock()
        self._on_record = on_record

    def recent(self) -> tuple[FetchRecord, ...]:
        """The last :data:`RECENT_FETCHES` fetches, oldest first, failed ones too."""
        with self._recent_lock:
            return tuple(self._recent)

    def _remember(self, record: FetchRecord) -> None:
        with self._recent_lock:
            self._recent.append(record)
        if self._on_record is None:
            return
        try:
            self._on_record(record)
        except Exception:  # a broken counter must not fail the fetch it counts
            log.exception("fetch_record_failed")

    def fetch(self, request: FetchRequest) -> FetchOutcome:
        """Find the study's series, select its CT series and retrieve them (unless a dry run); remembered.

        Raises
        ------
        ConfigError
            No source of that name.
        InputError
            The study has no CT series, or the asked series is not one of them.
        SourceError
            The source cannot be reached or refuses.
        """
        try:
            outcome = self._fetch(request)
        except Ct2PetError as error:
            method = "?"
            with contextlib.suppress(Ct2PetError):
                method = _method(self._config.source_named(request.source))
            self._remember(
                FetchRecord(
                    time.time(), request.source, request.study_uid, method, request.dry_run, error=str(error)
                )
            )
            raise
        self._remember(FetchRecord.of(time.time(), outcome))
        return outcome

    def _fetch(self, request: FetchRequest) -> FetchOutcome:
        source = self._config.source_named(request.source)
        method = _method(source)
        with self._one_at_a_time:
            log.info(
                "fetch_started",
                source=source.name,
                study_uid=request.study_uid,
                series_uid=request.series_uid,
                method=method,
                dry_run=request.dry_run,
            )
            taken = select_series(request.study_uid, self._find(source, request), request.series_uid)
            received: dict[str, int] = {}
            if not request.dry_run:
                for series in taken:
                    received[series.series_uid] = self._retrieve(source, series)
        jobs: dict[str, int] = {}
        for series in taken:
            if (job := self._store.job_for_series(series.series_uid)) is not None:
                jobs[series.series_uid] = job.id
        log.info(
            "fetch_finished",
            source=source.name,
            study_uid=request.study_uid,
            series=[series.series_uid for series in taken],
            instances=sum(received.values()),
            dry_run=request.dry_run,
        )
        return FetchOutcome(request, method, taken, received, jobs)

    def _find(self, source: Source, request: FetchRequest) -> list[FoundSeries]:
        if source.dicomweb is not None:
            return dicomweb_source.search_series(source.name, source.dicomweb, request.study_uid)
        return query_retrieve.find_series(
            source, self._config.node.ae_title, request.study_uid, self._timeouts
        )

    def _retrieve(self, source: Source, series: FoundSeries) -> int:
        stored: list[InstanceRecord] = []

        def receive(arrival: Arrival) -> Outcome:
            outcome = self._intake.receive(arrival)
            if outcome.record is not None:
                stored.append(outcome.record)
            return outcome

        ae_title = self._config.node.ae_title
        if source.dicomweb is not None:
            received = dicomweb_source.retrieve_series(
                source.name, source.dicomweb, series.study_uid, series.series_uid, receive
            )
        elif source.retrieve == "c-get":
            received = query_retrieve.get_series(
                source, ae_title, series.study_uid, series.series_uid, receive, self._timeouts
            )
        else:
            return query_retrieve.move_series(
                source, ae_title, series.study_uid, series.series_uid, self._timeouts
            )
        if stored and self._on_released is not None:
            self._on_released(AssociationReleased.of(AeTitle(source.name[:16]), time.time(), stored))
        return received


def _method(source: Source) -> str:
    if source.type == "dicomweb":
        if source.dicomweb is None:  # the configuration checks rule it out; a hand-built Source may not
            raise ConfigError([f"[[sources]] {source.name}: a dicomweb source needs its url"])
        return "WADO-RS"
    return "C-GET" if source.retrieve == "c-get" else "C-MOVE"
