"""``POST /fetch`` served for real, asked by the CLI's client: statuses, reasons, who asked, the token."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from structlog.testing import capture_logs

from ct2pet_node.domain.fetch import FetchOutcome, FetchRequest, FoundSeries, select_series
from ct2pet_node.domain.uids import SeriesUid, StudyUid
from ct2pet_node.errors import ConfigError, Ct2PetError, SourceError
from ct2pet_node.service.admin import request_fetch
from ct2pet_node.service.metrics import NodeMetrics
from ct2pet_node.service.status import StatusReport
from ct2pet_node.web.app import AdminSources
from ct2pet_node.web.pages import NodeFacts
from ct2pet_node.web.server import AdminServer

TOKEN = "s3cret"
STUDY = StudyUid("1.2.3")
HELD = [
    FoundSeries(STUDY, SeriesUid("1.2.3.1"), "CT", 1, 8),
    FoundSeries(STUDY, SeriesUid("1.2.3.2"), "PT", 2, 8),
]


class Source:
    """What the node's fetcher does with a request, minus the network: the real selection rule."""

    def __init__(self) -> None:
        self.asked: list[FetchRequest] = []

    def fetch(self, request: FetchRequest) -> FetchOutcome:
        self.asked.append(request)
        if request.source == "down":
            raise SourceError("source down (PACS@10.0.0.9:104): connection refused")
        if request.source != "pacs":
            raise ConfigError([f"[[sources]]: no source named {request.source!r} (known: pacs, down)"])
        held = [series for series in HELD if series.study_uid == request.study_uid]
        taken = select_series(request.study_uid, held, request.series_uid)
        received = {} if request.dry_run else {series.series_uid: 8 for series in taken}
        return FetchOutcome(request, "C-MOVE", taken, received)


@pytest.fixture
def served() -> Iterator[tuple[AdminServer, Source]]:
    source = Source()
    sources = AdminSources(
        status=lambda: StatusReport.from_json({"version": "x"}),
        metrics=NodeMetrics(),
        jobs=list,
        job=lambda _: None,
        facts=NodeFacts(tls=False, retention="", listen=""),
        token=TOKEN,
        fetch=source.fetch,
    )
    server = AdminServer("127.0.0.1", 0, sources)
    server.start()
    yield server, source
    server.stop()


def test_a_fetch_answers_the_series_taken_and_logs_who_asked(served: tuple[AdminServer, Source]) -> None:
    server, source = served
    host, port = server.address
    with capture_logs() as logs:
        answer = request_fetch(host, port, TOKEN, {"source": "pacs", "study": STUDY})
    assert [(s["series_uid"], s["received"]) for s in answer["series"]] == [("1.2.3.1", 8)]
    assert answer["method"] == "C-MOVE" and answer["dry_run"] is False
    (event,) = [entry for entry in logs if entry["event"] == "admin_fetch"]
    assert event["client"].startswith("127.0.0.1:") and event["study_uid"] == STUDY
    dry = request_fetch(host, port, TOKEN, {"source": "pacs", "study": STUDY, "dry_run": True})
    assert dry["dry_run"] is True and [s["received"] for s in dry["series"]] == [None]
    assert [asked.dry_run for asked in source.asked] == [False, True]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (
            {"source": "pacs", "study": "1.2.4"},
            r"answered 422: study 1\.2\.4 has no CT series \(found: no series\)",
        ),
        ({"source": "pacs", "study": STUDY, "series": "1.2.3.2"}, r"answered 422: .*is PT, not CT"),
        ({"source": "elsewhere", "study": STUDY}, r"answered 404: .*no source named 'elsewhere'"),
        ({"source": "down", "study": STUDY}, r"answered 502: source down .*connection refused"),
        ({"source": "pacs", "study": "PATIENT^NAME"}, r"answered 400: bad fetch request: study"),
    ],
)
def test_refusals_carry_the_reason(
    served: tuple[AdminServer, Source], body: dict[str, str], reason: str
) -> None:
    server, _ = served
    host, port = server.address
    with pytest.raises(Ct2PetError, match=reason):
        request_fetch(host, port, TOKEN, body)


def test_fetch_needs_the_token(served: tuple[AdminServer, Source]) -> None:
    server, source = served
    host, port = server.address
    with pytest.raises(Ct2PetError, match="answered 401: check \\[admin\\] token"):
        request_fetch(host, port, "wrong", {"source": "pacs", "study": STUDY})
    assert source.asked == []
