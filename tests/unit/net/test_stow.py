"""STOW-RS sends against a small real HTTP server on loopback: batches, answers, HTTP errors, echo.

The server parses each multipart request for real (the SOP instance UIDs it
carries) and answers as a test tells it to, so what is checked is the wire:
what was posted, with which credentials, and what its answer became.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from ctfactory import make_ct_series
from pydicom import dcmread
from pydicom.dataset import Dataset

from ct2pet_node.config import Destination, DicomwebEndpoint
from ct2pet_node.errors import DeliveryError
from ct2pet_node.net.dicomweb import echo
from ct2pet_node.net.stow import StowLimits, batches, results_from_answer, send_files
from ct2pet_node.routing.delivery import DeliveryOutcome, EntryState, TransferProblem, decide_attempt

TOKEN = "s3cret-token"
# (HTTP status, reason phrase, content type, body) for the SOP instance UIDs of one request.
Answer = tuple[int, str, str, bytes]


def stored(uids: list[str], failed: dict[str, int] | None = None) -> bytes:
    """A STOW-RS answer in DICOM JSON: every UID referenced, except those failed with their reason."""
    failed = failed or {}
    answer = Dataset()
    answer.ReferencedSOPSequence = [_item(uid) for uid in uids if uid not in failed]
    if failed:
        answer.FailedSOPSequence = [_item(uid, FailureReason=reason) for uid, reason in failed.items()]
    return json.dumps(answer.to_json_dict()).encode()


def _item(uid: str, **extra: int) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    item.ReferencedSOPInstanceUID = uid
    for key, value in extra.items():
        setattr(item, key, value)
    return item


@dataclass
class StowServer:
    """A loopback STOW-RS and QIDO-RS service; ``answer`` decides each POST's reply."""

    answer: Callable[[list[str]], Answer] = lambda uids: (200, "OK", "application/dicom+json", stored(uids))
    requests: list[list[str]] = field(default_factory=list)
    authorizations: list[str] = field(default_factory=list)
    tls: ssl.SSLContext | None = None

    def serve(self) -> Iterator[str]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                boundary = self.headers["Content-Type"].split('boundary="')[1].rstrip('"').encode()
                parts = [p for p in body.split(b"--" + boundary) if b"\r\n\r\n" in p]
                uids = [
                    str(dcmread(BytesIO(p.split(b"\r\n\r\n", 1)[1].removesuffix(b"\r\n"))).SOPInstanceUID)
                    for p in parts
                ]
                owner.requests.append(uids)
                owner.authorizations.append(self.headers.get("Authorization", ""))
                answer = owner.answer(uids)
                if answer[0] == 0:  # hang up without a word, as a server that crashed mid-request
                    self.close_connection = True
                    return
                self._reply(*answer)

            def do_GET(self) -> None:
                owner.authorizations.append(self.headers.get("Authorization", ""))
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    self._reply(401, "Unauthorized", "text/plain", b"invalid token")
                else:
                    self._reply(200, "OK", "application/dicom+json", b"[]")

            def _reply(self, code: int, reason: str, content_type: str, body: bytes) -> None:
                self.send_response(code, reason)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if self.tls is not None:
            server.socket = self.tls.wrap_socket(server.socket, server_side=True)
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        try:
            scheme = "https" if self.tls is not None else "http"
            yield f"{scheme}://127.0.0.1:{server.server_port}/dicom-web"
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)


@pytest.fixture
def server() -> Iterator[tuple[StowServer, str]]:
    stow = StowServer()
    for url in stow.serve():
        yield stow, url


@pytest.fixture
def token(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return path


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    return make_ct_series(tmp_path / "ct", n=5, rows=8, cols=8)


def _uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _destination(url: str, token: Path | None) -> Destination:
    return Destination(name="cloud", type="dicomweb", dicomweb=DicomwebEndpoint(url=url, token_file=token))


QUICK = StowLimits(batch_instances=2, connect_seconds=2, answer_seconds=5)


def test_files_go_in_batches_with_the_token_and_all_are_delivered(
    server: tuple[StowServer, str], files: list[Path], token: Path
) -> None:
    stow, url = server
    results = send_files(_destination(url, token), files, QUICK)
    assert [r.path for r in results] == files
    assert [r.status for r in results] == [0x0000] * 5
    assert stow.requests == [[_uid(f) for f in files[i : i + 2]] for i in (0, 2, 4)]
    assert stow.authorizations == [f"Bearer {TOKEN}"] * 3
    assert decide_attempt(results, 0, now=100.0).state is EntryState.DELIVERED


def test_failure_reasons_are_c_store_statuses_judged_like_dimse(
    server: tuple[StowServer, str], files: list[Path], token: Path
) -> None:
    stow, url = server
    busy, bad = _uid(files[0]), _uid(files[1])
    stow.answer = lambda uids: (
        202,
        "Accepted",
        "application/dicom+json",
        stored(uids, {busy: 0xA700, bad: 0xC000}),
    )
    results = send_files(_destination(url, token), files, QUICK)
    assert [r.status for r in results] == [0xA700, 0xC000, 0, 0, 0]
    assert [r.outcome for r in results[:2]] == [DeliveryOutcome.RETRYABLE, DeliveryOutcome.PERMANENT]
    assert len(stow.requests) == 3  # failures named per instance do not stop the other batches
    decision = decide_attempt(results, 0, now=100.0)
    assert decision.state is EntryState.DEAD
    assert decision.error is not None and f"{bad}: status 0xC000" in decision.error


def test_a_conflict_that_names_its_failures_lets_them_decide(
    server: tuple[StowServer, str], files: list[Path], token: Path
) -> None:
    stow, url = server
    stow.answer = lambda uids: (
        409,
        "Conflict",
        "application/dicom+json",
        stored(uids, dict.fromkeys(uids, 0xA700)),
    )
    results = send_files(_destination(url, token), files, QUICK)
    assert {r.status for r in results} == {0xA700}
    assert len(stow.requests) == 3
    assert decide_attempt(results, 0, now=100.0).state is EntryState.PENDING


def test_401_is_a_dead_letter_with_the_servers_reason_and_no_secret(
    server: tuple[StowServer, str], files: list[Path], tmp_path: Path
) -> None:
    stow, url = server
    wrong = tmp_path / "wrong"
    wrong.write_text("wrong-token")
    stow.answer = lambda uids: (401, "Unauthorized", "text/plain", b"token wrong-token is not valid\n")
    results = send_files(_destination(url, wrong), files, QUICK)
    assert len(stow.requests) == 1  # the other batches would meet the same refusal
    assert {r.problem for r in results} == {TransferProblem.REFUSED}
    assert results[0].detail == "HTTP 401 Unauthorized: token *** is not valid"
    assert results[4].detail == "not sent: HTTP 401 Unauthorized: token *** is not valid"
    decision = decide_attempt(results, 0, now=100.0)
    assert decision.state is EntryState.DEAD
    assert decision.error is not None
    assert (
        decision.error.startswith("refused, will not retry: ") and "HTTP 401 Unauthorized" in decision.error
    )
    assert "wrong-token" not in decision.error


@pytest.mark.parametrize(
    ("code", "reason", "problem"),
    [
        (503, "Service Unavailable", TransferProblem.SERVER_ERROR),
        (408, "Request Timeout", TransferProblem.TIMEOUT),
    ],
)
def test_a_server_error_is_retried_later(
    server: tuple[StowServer, str],
    files: list[Path],
    token: Path,
    code: int,
    reason: str,
    problem: TransferProblem,
) -> None:
    stow, url = server
    stow.answer = lambda uids: (code, reason, "text/html", b"<html><body>busy</body></html>")
    results = send_files(_destination(url, token), files, QUICK)
    assert {r.problem for r in results} == {problem}
    assert results[0].detail == f"HTTP {code} {reason}: <html><body>busy</body></html>"
    decision = decide_attempt(results, 0, now=100.0)
    assert decision.state is EntryState.PENDING and decision.next_attempt_at == 110.0


def test_a_bare_200_means_all_stored_a_bare_202_or_a_forgotten_instance_is_sent_again(
    server: tuple[StowServer, str], files: list[Path], token: Path
) -> None:
    stow, url = server
    stow.answer = lambda uids: (200, "OK", "application/dicom+json", b"")
    assert {r.status for r in send_files(_destination(url, token), files, QUICK)} == {0x0000}
    stow.answer = lambda uids: (202, "Accepted", "application/dicom+json", b"")
    assert {r.outcome for r in send_files(_destination(url, token), files, QUICK)} == {
        DeliveryOutcome.RETRYABLE
    }
    batch = [(files[0], "1.2.3"), (files[1], "1.2.4")]
    answer = Dataset.from_json(stored(["1.2.3"]).decode())
    first, second = results_from_answer(batch, answer, 200)
    assert first.status == 0x0000
    assert second.problem is TransferProblem.SERVER_ERROR
    assert second.detail == "the server's STOW-RS answer (HTTP 200) does not mention this instance"


def test_an_answer_with_a_charset_is_still_read(
    server: tuple[StowServer, str], files: list[Path], token: Path
) -> None:
    stow, url = server
    failing = _uid(files[3])
    stow.answer = lambda uids: (
        202,
        "Accepted",
        "application/dicom+json; charset=utf-8",
        stored(uids, {failing: 0xA700} if failing in uids else {}),
    )
    results = send_files(_destination(url, token), files, QUICK)
    assert [r.status for r in results] == [0, 0, 0, 0xA700, 0]


def test_a_closed_port_is_unreachable_and_retried(files: list[Path], token: Path) -> None:
    stow = StowServer()
    for url in stow.serve():
        closed = url  # the port is free again once the server is shut
    results = send_files(_destination(closed, token), files, QUICK)
    assert {r.problem for r in results} == {TransferProblem.UNREACHABLE}
    assert "Connection refused" in results[0].detail
    assert results[0].detail.startswith(f"cannot connect to {closed}: ")
    assert decide_attempt(results, 0, now=100.0).state is EntryState.PENDING


def test_a_server_that_hangs_up_mid_request_is_retried(
    server: tuple[StowServer, str], files: list[Path], token: Path
) -> None:
    stow, url = server
    stow.answer = lambda uids: (0, "", "", b"")
    results = send_files(_destination(url, token), files, QUICK)
    assert len(stow.requests) == 1
    assert {r.problem for r in results} == {TransferProblem.ABORTED}
    assert results[0].detail == (
        f"the connection to {url} broke off mid-request "
        "(RemoteDisconnected: Remote end closed connection without response)"
    )
    assert decide_attempt(results, 0, now=100.0).state is EntryState.PENDING


def test_a_secret_file_gone_since_start_is_a_dead_letter_that_names_it(
    server: tuple[StowServer, str], files: list[Path], tmp_path: Path
) -> None:
    stow, url = server
    gone = tmp_path / "gone.token"
    results = send_files(_destination(url, gone), files, QUICK)
    assert stow.requests == []
    assert {r.problem for r in results} == {TransferProblem.UNREADABLE}
    assert results[0].detail.startswith("cannot read the credentials of cloud: [Errno 2] No such file")
    assert str(gone) in results[0].detail
    assert decide_attempt(results, 0, now=100.0).state is EntryState.DEAD
    with pytest.raises(DeliveryError, match="echo failed: cannot read the credentials for"):
        echo(DicomwebEndpoint(url=url, token_file=gone), timeout=5)


def test_a_stopping_sender_sends_nothing_more(
    server: tuple[StowServer, str], files: list[Path], token: Path
) -> None:
    stow, url = server
    cancel = threading.Event()
    cancel.set()
    results = send_files(_destination(url, token), files, QUICK, cancel=cancel)
    assert stow.requests == []
    assert {r.outcome for r in results} == {DeliveryOutcome.CANCELLED}


def test_batches_respect_count_and_bytes_and_a_large_file_goes_alone() -> None:
    limits = StowLimits(batch_instances=3, batch_bytes=100)
    assert batches([10] * 7, limits) == [range(0, 3), range(3, 6), range(6, 7)]
    assert batches([60, 30, 20, 150, 40], limits) == [range(0, 2), range(2, 3), range(3, 4), range(4, 5)]
    assert batches([], limits) == []


def test_echo_is_a_qido_query_that_must_answer(server: tuple[StowServer, str], token: Path) -> None:
    _, url = server
    answer = echo(DicomwebEndpoint(url=url, token_file=token), timeout=5)
    assert answer.status == 200 and answer.url == url
    with pytest.raises(DeliveryError, match=r"echo failed: .* answered HTTP 401 Unauthorized: invalid token"):
        echo(DicomwebEndpoint(url=url), timeout=5)


def _issue(folder: Path, name: str, issuer: tuple[x509.Name, rsa.RSAPrivateKey] | None) -> tuple[Path, Path]:
    """A PEM certificate and key for 127.0.0.1, signed by ``issuer`` (None: a self-signed CA)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0] if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is not None:
        san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        builder = builder.add_extension(san, critical=False)
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def test_tls_is_verified_by_default_and_a_client_certificate_is_shown(
    tmp_path: Path, files: list[Path]
) -> None:
    ca_cert, ca_key = _issue(tmp_path, "ca", None)
    ca = (
        x509.load_pem_x509_certificate(ca_cert.read_bytes()).subject,
        serialization.load_pem_private_key(ca_key.read_bytes(), None),
    )
    assert isinstance(ca[1], rsa.RSAPrivateKey)
    server_cert, server_key = _issue(tmp_path, "server", (ca[0], ca[1]))
    client_cert, client_key = _issue(tmp_path, "client", (ca[0], ca[1]))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca_cert))
    context.load_cert_chain(server_cert, server_key)
    context.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: no client certificate, no connection
    stow = StowServer(tls=context)
    for url in stow.serve():
        unknown_ca = DicomwebEndpoint(url=url)
        results = send_files(Destination(name="tls", type="dicomweb", dicomweb=unknown_ca), files, QUICK)
        assert {r.problem for r in results} == {TransferProblem.UNREACHABLE}
        assert results[0].detail.startswith(f"TLS with {url} failed (")
        assert "CERTIFICATE_VERIFY_FAILED" in results[0].detail
        trusted = DicomwebEndpoint(
            url=url, ca_certificates=ca_cert, client_certificate=client_cert, client_private_key=client_key
        )
        results = send_files(Destination(name="tls", type="dicomweb", dicomweb=trusted), files, QUICK)
        assert {r.status for r in results} == {0x0000}
        assert len(stow.requests) == 3  # the refused handshakes never reached HTTP
