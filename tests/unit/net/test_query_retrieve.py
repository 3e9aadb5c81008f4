"""C-FIND and C-MOVE against an in-process pynetdicom Q/R SCP; failures that say what to do."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)
from structlog.testing import capture_logs

from ct2pet_node.config import DicomwebEndpoint, Source
from ct2pet_node.domain.uids import SeriesUid, StudyUid
from ct2pet_node.errors import SourceError
from ct2pet_node.net.dicomweb_source import search_series
from ct2pet_node.net.query_retrieve import find_series, move_series
from ct2pet_node.net.scu import ScuTimeouts

STUDY = StudyUid("1.2.826.0.1.3680043.10.9")
TIMEOUTS = ScuTimeouts.uniform(5.0)


def _answer(series: str, modality: str, number: Any) -> Dataset:
    answer = Dataset()
    answer.QueryRetrieveLevel = "SERIES"
    answer.PatientName = "DOE^JANE"  # a PACS answers with it whether asked or not
    answer.StudyInstanceUID = STUDY
    answer.SeriesInstanceUID = series
    answer.Modality = modality
    answer.SeriesNumber = number
    answer.NumberOfSeriesRelatedInstances = 12
    return answer


@pytest.fixture
def pacs() -> Iterator[tuple[Source, list[Dataset]]]:
    asked: list[Dataset] = []

    def on_find(event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        asked.append(event.identifier)
        yield 0xFF00, _answer(f"{STUDY}.1", "CT", 2)
        yield 0xFF00, _answer(f"{STUDY}.2", "PT", "")
        yield 0xFF00, _answer("", "CT", 3)
        yield 0x0000, None

    def on_move(event: evt.Event) -> Iterator[Any]:
        asked.append(event.identifier)
        yield None, None  # the move destination is not known: PS3.4 C.4.2.1.4.1 0xA801
        yield 0xA801, None

    ae = AE(ae_title="PACS")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelMove)
    server = ae.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_FIND, on_find), (evt.EVT_C_MOVE, on_move)]
    )
    port = server.server_address[1]
    yield Source(name="pacs", ae_title="PACS", host="127.0.0.1", port=port), asked
    server.shutdown()


def test_find_reads_series_keys_and_nothing_of_the_patient(pacs: tuple[Source, list[Dataset]]) -> None:
    source, asked = pacs
    with capture_logs() as logs:
        found = find_series(source, "CT2PET", STUDY, TIMEOUTS)
    assert [(s.series_uid, s.modality, s.series_number, s.instances) for s in found] == [
        (f"{STUDY}.1", "CT", 2, 12),
        (f"{STUDY}.2", "PT", None, 12),
    ]
    [query] = asked
    assert query.QueryRetrieveLevel == "SERIES" and query.StudyInstanceUID == STUDY and query.Modality == ""
    assert "DOE" not in repr(logs) and any(entry["event"] == "source_answer_skipped" for entry in logs)


def test_a_move_the_pacs_cannot_route_says_to_configure_the_node(pacs: tuple[Source, list[Dataset]]) -> None:
    source, asked = pacs
    with pytest.raises(SourceError, match=r"C-MOVE with status 0xA801 .*know this node's AE title"):
        move_series(source, "CT2PET", STUDY, SeriesUid(f"{STUDY}.1"), TIMEOUTS)
    assert asked[-1].SeriesInstanceUID == f"{STUDY}.1"


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_unreachable_source_says_so() -> None:
    port = _closed_port()
    dimse = Source(name="pacs", ae_title="PACS", host="127.0.0.1", port=port)
    with pytest.raises(SourceError, match=r"source pacs: cannot connect to pacs \(PACS@127\.0\.0\.1:\d+\)"):
        find_series(dimse, "CT2PET", STUDY, TIMEOUTS)
    web = DicomwebEndpoint(url=f"http://127.0.0.1:{port}/dicom-web")
    with pytest.raises(
        SourceError, match=r"source web: QIDO-RS search at http://127\.0\.0\.1:\d+/dicom-web failed"
    ):
        search_series("web", web, STUDY)
