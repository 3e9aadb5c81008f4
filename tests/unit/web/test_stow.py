"""The STOW-RS receiver over real HTTP: the node's intake behind it, each part answered as the SCP would."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from ctfactory import STUDY_UID, make_ct_series, series_uid_for
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    EnhancedCTImageStorage,
    PositronEmissionTomographyImageStorage,
)

from ct2pet_node.domain.records import AssociationReleased, InstanceRecord
from ct2pet_node.net.intake import Intake, Outcome
from ct2pet_node.service.metrics import NodeMetrics
from ct2pet_node.spool.instances import InstanceSpool
from ct2pet_node.spool.jobstore import JobStore
from ct2pet_node.web.server import StowServer
from ct2pet_node.web.stow import StowSources

BOUNDARY = "stow-test-boundary"
TOKEN = "a-long-random-secret"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
REFERENCED, FAILED = "00081199", "00081198"


def multipart(*files: bytes) -> bytes:
    parts = [f"\r\n--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + f for f in files]
    return b"".join(parts) + f"\r\n--{BOUNDARY}--".encode()


@dataclass
class Node:
    """A STOW-RS listener on a free loopback port over a real spool and job store."""

    data_dir: Path
    max_instance_bytes: int = 1024 * 1024
    min_free_mb: int = 0
    other_sop_classes: str = "accept"
    token_file: Path | None = None
    stored: list[InstanceRecord] = field(default_factory=list)
    released: list[AssociationReleased] = field(default_factory=list)
    metrics: NodeMetrics = field(default_factory=NodeMetrics)

    def __post_init__(self) -> None:
        self.store = JobStore.open(self.data_dir)
        spool = InstanceSpool(self.data_dir, self.min_free_mb)
        self.intake = Intake(
            spool, self.store, self.stored.append, self.max_instance_bytes, self.other_sop_classes
        )
        token_file = self.token_file

        def counted(outcome: Outcome) -> None:
            if not outcome.succeeded:
                self.metrics.instance_rejected(outcome.status)

        self.server = StowServer(
            "127.0.0.1",
            0,
            StowSources(
                receive=self.intake.receive,
                max_instance_bytes=self.max_instance_bytes,
                token=(lambda: token_file.read_text().strip() or None) if token_file else None,
                on_instance=counted,
                on_request=self.metrics.stow_answered,
                on_released=self.released.append,
            ),
        )
        self.server.start()

    def post(
        self, body: bytes, path: str = "/studies", token: str | None = None, content_type: str = CONTENT_TYPE
    ) -> tuple[int, dict[str, str], Any]:
        host, port = self.server.address
        request = urllib.request.Request(f"http://{host}:{port}{path}", data=body, method="POST")
        request.add_header("Content-Type", content_type)
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, dict(response.headers), json.load(response)
        except urllib.error.HTTPError as error:
            raw = error.read()
            answer = json.loads(raw) if error.headers.get("content-type") == "application/dicom+json" else raw
            return error.code, dict(error.headers), answer

    def spooled(self) -> list[Path]:
        return sorted(p for p in (self.data_dir / "spool").rglob("*.dcm"))

    def close(self) -> None:
        self.server.stop()
        self.store.close()


@pytest.fixture
def make_node(tmp_path: Path) -> Iterator[Any]:
    nodes: list[Node] = []

    def make(**options: Any) -> Node:
        nodes.append(Node(tmp_path / f"data{len(nodes)}", **options))
        return nodes[-1]

    yield make
    for node in nodes:
        node.close()


@pytest.fixture(scope="module")
def ct_files(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    paths = make_ct_series(tmp_path_factory.mktemp("ct"), n=3, rows=16, cols=16, name="stow")
    return [path.read_bytes() for path in paths]


def items(answer: dict[str, Any], sequence: str) -> list[dict[str, Any]]:
    return list(answer.get(sequence, {}).get("Value", []))


def uid_of(item: dict[str, Any]) -> str:
    return str(item["00081155"]["Value"][0])


def test_a_series_is_spooled_recorded_and_referenced(make_node: Any, ct_files: list[bytes]) -> None:
    node = make_node()
    status, headers, answer = node.post(multipart(*ct_files))
    assert status == 200 and headers["content-type"] == "application/dicom+json"
    assert FAILED not in answer
    referenced = items(answer, REFERENCED)
    assert sorted(uid_of(item) for item in referenced) == sorted(r.sop_instance_uid for r in node.stored)
    assert all(item["00081150"]["Value"] == ["1.2.840.10008.5.1.4.1.1.2"] for item in referenced)
    assert len(node.spooled()) == 3
    assert {path.read_bytes() for path in node.spooled()} == set(ct_files)  # the files, byte for byte
    job = node.store.job_for_series(series_uid_for("stow"))
    assert job is not None and job.n_instances == 3
    assert {record.calling_ae_title for record in node.stored} == {"STOW-RS"}
    assert node.metrics.sample("ct2pet_stow_requests_total", code="200") == 1


def test_a_request_tells_the_router_what_it_stored_as_a_released_association_would(
    make_node: Any, ct_files: list[bytes]
) -> None:
    node = make_node()
    node.post(multipart(*ct_files))
    [release] = node.released
    assert release.calling_ae_title == "STOW-RS"
    assert release.delivered == {series_uid_for("stow"): frozenset(r.sop_instance_uid for r in node.stored)}
    node.post(multipart(*ct_files))  # stored nothing new: nothing to settle
    assert len(node.released) == 1


def test_a_resent_series_is_acknowledged_without_a_second_copy(make_node: Any, ct_files: list[bytes]) -> None:
    node = make_node()
    assert node.post(multipart(*ct_files))[0] == 200
    status, _, answer = node.post(multipart(*ct_files))
    assert status == 200 and len(items(answer, REFERENCED)) == 3
    assert len(node.stored) == 3 and len(node.spooled()) == 3


def test_a_wrong_or_missing_token_is_refused_and_nothing_is_stored(
    make_node: Any, ct_files: list[bytes], tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    node = make_node(token_file=token_file)
    for token in (None, "wrong", TOKEN + "x", ""):
        status, headers, _ = node.post(multipart(*ct_files), token=token)
        assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    assert node.spooled() == [] and node.stored == []
    assert node.metrics.sample("ct2pet_stow_requests_total", code="401") == 4
    assert node.post(multipart(*ct_files), token=TOKEN)[0] == 200
    token_file.write_text("")  # emptied by mistake: the door stays shut
    assert node.post(multipart(ct_files[0]), token="")[0] == 401


def test_an_instance_over_the_size_limit_is_refused_and_named(make_node: Any, ct_files: list[bytes]) -> None:
    node = make_node(max_instance_bytes=len(ct_files[0]) - 1)
    status, _, answer = node.post(multipart(ct_files[0]))
    assert status == 409 and REFERENCED not in answer
    (failed,) = items(answer, FAILED)
    assert failed["00081197"] == {"vr": "US", "Value": [0xA701]}
    assert uid_of(failed).startswith("1.")  # named from its file meta, though not kept
    assert node.spooled() == []
    assert node.metrics.sample("ct2pet_instances_rejected_total", status="0xA701") == 1


def test_garbage_among_good_parts_fails_alone(make_node: Any, ct_files: list[bytes]) -> None:
    node = make_node()
    status, _, answer = node.post(
        multipart(ct_files[0], b"not dicom at all", b"\x00" * 128 + b"DICM\xff\xff")
    )
    assert status == 202
    assert len(items(answer, REFERENCED)) == 1
    reasons = [item["00081197"]["Value"][0] for item in items(answer, FAILED)]
    assert reasons == [0xC210, 0xC210]
    assert len(node.spooled()) == 1


def test_disk_at_its_watermark_answers_out_of_resources(make_node: Any, ct_files: list[bytes]) -> None:
    node = make_node(min_free_mb=10**9)  # a watermark no disk clears: the real free-space check says full
    status, _, answer = node.post(multipart(*ct_files))
    assert status == 409
    assert [item["00081197"]["Value"][0] for item in items(answer, FAILED)] == [0xA700] * 3
    assert node.spooled() == [] and node.stored == []


@pytest.fixture(scope="module")
def pet_file(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    (path,) = make_ct_series(
        tmp_path_factory.mktemp("pet"),
        n=1,
        rows=8,
        cols=8,
        name="pet",
        modality="PT",
        sop_class_uid=PositronEmissionTomographyImageStorage,
    )
    return path.read_bytes()


def test_not_ct_is_dropped_with_success_when_other_classes_are_accepted(
    make_node: Any, pet_file: bytes
) -> None:
    node = make_node()
    status, _, answer = node.post(multipart(pet_file))
    assert status == 200 and len(items(answer, REFERENCED)) == 1
    assert node.spooled() == [] and node.stored == []
    assert node.intake.ignored_counts() == {"PositronEmissionTomographyImageStorage": 1}


def test_not_ct_is_refused_when_other_classes_are_refused(make_node: Any, pet_file: bytes) -> None:
    node = make_node(other_sop_classes="refuse")
    status, _, answer = node.post(multipart(pet_file))
    assert status == 409
    (failed,) = items(answer, FAILED)
    assert failed["00081197"]["Value"] == [0x0122]
    assert failed["00081150"]["Value"] == [str(PositronEmissionTomographyImageStorage)]


def test_under_a_study_path_only_instances_of_that_study_are_stored(
    make_node: Any, ct_files: list[bytes]
) -> None:
    node = make_node()
    status, _, answer = node.post(multipart(ct_files[0]), path="/studies/1.2.3.4")
    assert status == 409 and items(answer, FAILED)[0]["00081197"]["Value"] == [0xA900]
    assert node.spooled() == []
    status, _, _ = node.post(multipart(ct_files[0]), path=f"/studies/{STUDY_UID}")
    assert status == 200 and len(node.spooled()) == 1


@pytest.mark.parametrize(
    ("content_type", "body", "expected"),
    [
        ("application/dicom", b"x", 415),
        (f'multipart/related; type="application/dicom+json"; boundary={BOUNDARY}', b"x", 415),
        ('multipart/related; type="application/dicom"', b"x", 400),  # no boundary
        (CONTENT_TYPE, f"\r\n--{BOUNDARY}\r\n\r\nunfinished".encode(), 400),
        (CONTENT_TYPE, f"--{BOUNDARY}--".encode(), 400),  # no part
    ],
)
def test_a_request_that_is_not_a_stow_body_is_refused(
    make_node: Any, content_type: str, body: bytes, expected: int
) -> None:
    node = make_node()
    assert node.post(body, content_type=content_type)[0] == expected
    assert node.spooled() == []


def _with_meta(file: bytes, **meta: str) -> bytes:
    dataset = pydicom.dcmread(BytesIO(file))
    for keyword, value in meta.items():
        setattr(dataset.file_meta, keyword, value)
    out = BytesIO()
    dataset.save_as(out, enforce_file_format=False)  # True would put the data set's own UIDs back
    return out.getvalue()


@pytest.mark.parametrize(
    ("meta", "reason"),
    [
        ({"MediaStorageSOPInstanceUID": "1.2.3.4.5"}, 0xC212),  # the file meta names another instance
        ({"MediaStorageSOPClassUID": str(EnhancedCTImageStorage)}, 0xA900),  # ...or another CT class
        ({"TransferSyntaxUID": str(DeflatedExplicitVRLittleEndian)}, 0xC122),  # not one the SCP accepts
    ],
)
def test_a_file_whose_meta_contradicts_or_cannot_be_decoded_fails(
    make_node: Any, ct_files: list[bytes], meta: dict[str, str], reason: int
) -> None:
    node = make_node()
    status, _, answer = node.post(multipart(_with_meta(ct_files[0], **meta)))
    assert status == 409
    (failed,) = items(answer, FAILED)
    assert failed["00081197"]["Value"] == [reason]
    assert node.spooled() == []
