"""DICOM TLS on the storage SCP, against dcmtk's TLS-enabled echoscu and storescu.

A throwaway PKI is made per module: a CA, the node's certificate, a client
certificate from the same CA and one from a rogue CA.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
import socket
import ssl
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from ctfactory import make_ct_series
from flood import STALLED_CLIENT_HELLO, EchoProbe, IdleConnections
from fuzz.harness import RunningScp, node_config
from peers import DCMTK_ENV, dcmtk_tool
from structlog.testing import capture_logs

from ct2pet_node.config import load_config
from ct2pet_node.errors import ConfigError
from ct2pet_node.net.tls import server_context

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path
    rogue_key: Path


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _cert(
    name: str, key: rsa.RSAPrivateKey, issuer: tuple[str, rsa.RSAPrivateKey] | None, ca: bool
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer[0])]) if issuer else subject
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


def _write(folder: Path, name: str, cert: x509.Certificate, key: rsa.RSAPrivateKey) -> tuple[Path, Path]:
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca_key, rogue_ca_key = _key(), _key()
    ca_cert = _cert("ct2pet test CA", ca_key, None, ca=True)
    ca_path, _ = _write(folder, "ca", ca_cert, ca_key)
    server_key, client_key, rogue_key = _key(), _key(), _key()
    server = _write(
        folder, "server", _cert("ct2pet-node", server_key, ("ct2pet test CA", ca_key), False), server_key
    )
    client = _write(
        folder, "client", _cert("SCANNER", client_key, ("ct2pet test CA", ca_key), False), client_key
    )
    rogue = _write(
        folder, "rogue", _cert("INTRUDER", rogue_key, ("rogue CA", rogue_ca_key), False), rogue_key
    )
    return Pki(ca_path, *server, *client, *rogue)


@pytest.fixture(scope="module")
def tools() -> dict[str, str]:
    found = {name: dcmtk_tool(name) for name in ("echoscu", "storescu")}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        pytest.skip(f"dcmtk's {', '.join(missing)} not found; install dcmtk")
    help_text = subprocess.run([found["storescu"], "--help"], capture_output=True, text=True).stdout  # type: ignore[list-item]
    if "--enable-tls" not in help_text:
        pytest.skip("this dcmtk build has no TLS (storescu --help lists no --enable-tls)")
    return {name: str(path) for name, path in found.items()}


@pytest.fixture
def tls_node(tmp_path: Path, pki: Pki) -> Iterator[RunningScp]:
    config = node_config(
        tmp_path / "data",
        tls_certificate=pki.server_cert,
        tls_private_key=pki.server_key,
        tls_ca_certificates=pki.ca,
        require_client_certificate=True,
    )
    node = RunningScp(config)
    yield node
    node.stop()


def _dcmtk(
    tool: str, port: int, *options: str, calling: str = "SCANNER", files: tuple[Path, ...] = ()
) -> str:
    result = subprocess.run(
        [tool, "-v", *options, "-aet", calling, "-aec", "CT2PET", "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
        env=DCMTK_ENV,
    )
    return f"rc={result.returncode}\n{result.stdout}{result.stderr}"


def _client_tls(pki: Pki, cert: Path, key: Path) -> list[str]:
    return ["+tls", str(key), str(cert), "+cf", str(pki.ca)]


def test_echo_and_store_over_tls_with_a_client_certificate(
    tls_node: RunningScp, tools: dict[str, str], pki: Pki, tmp_path: Path
) -> None:
    client = _client_tls(pki, pki.client_cert, pki.client_key)
    echoed = _dcmtk(tools["echoscu"], tls_node.port, *client)
    assert echoed.startswith("rc=0"), echoed
    files = make_ct_series(tmp_path / "ct", n=3)
    stored = _dcmtk(tools["storescu"], tls_node.port, *client, files=tuple(files))
    assert stored.startswith("rc=0"), stored
    assert stored.count("Received Store Response (Success)") == 3
    assert len(tls_node.spooled()) == 3


def test_client_without_a_certificate_is_refused(
    tls_node: RunningScp, tools: dict[str, str], pki: Pki
) -> None:
    anonymous = _dcmtk(tools["echoscu"], tls_node.port, "+tla", "+cf", str(pki.ca))
    assert not anonymous.startswith("rc=0"), anonymous
    assert "Association Accepted" not in anonymous
    assert tls_node.echo(tls=None) is False  # and plain TCP on the TLS port gets nowhere


def test_client_certificate_from_another_ca_is_refused(
    tls_node: RunningScp, tools: dict[str, str], pki: Pki
) -> None:
    rogue = _dcmtk(tools["echoscu"], tls_node.port, *_client_tls(pki, pki.rogue_cert, pki.rogue_key))
    assert not rogue.startswith("rc=0"), rogue
    assert "Association Accepted" not in rogue


def test_plain_client_cannot_talk_to_the_tls_port(
    tls_node: RunningScp, tools: dict[str, str], pki: Pki, tmp_path: Path
) -> None:
    plain = _dcmtk(tools["storescu"], tls_node.port, files=tuple(make_ct_series(tmp_path / "ct", n=1)))
    assert not plain.startswith("rc=0"), plain
    assert "Association Accepted" not in plain
    assert tls_node.spooled() == []
    # The listener is unharmed: a proper TLS client still gets through.
    assert _dcmtk(
        tools["echoscu"], tls_node.port, *_client_tls(pki, pki.client_cert, pki.client_key)
    ).startswith("rc=0")


def test_a_plain_request_on_the_tls_port_is_rejected_as_tls_required(
    tls_node: RunningScp, tools: dict[str, str], pki: Pki
) -> None:
    with capture_logs() as logs:
        plain = _dcmtk(tools["echoscu"], tls_node.port, calling="PLAINSCU")
    assert "Association Rejected" in plain, plain  # told, not reset: the sender's log says why
    (event,) = [e for e in logs if e["event"] == "association_rejected"]
    assert (event["reason"], event["called_ae"], event["calling_ae"], event["peer"], event["log_level"]) == (
        "tls_required",
        "CT2PET",
        "PLAINSCU",
        "127.0.0.1",
        "warning",
    )
    status = tls_node.scp.listener_status()
    assert [
        (r["reason"], r["called_ae"], r["calling_ae"], r["peer"]) for r in status["recent_rejections"]
    ] == [("tls_required", "CT2PET", "PLAINSCU", "127.0.0.1")]
    assert status["associations_rejected"] == {"tls_required": 1}
    assert "tls_required" not in status["connections_dropped"]  # counted once, as a rejection


def test_calling_ae_allow_list_applies_over_tls(tmp_path: Path, tools: dict[str, str], pki: Pki) -> None:
    config = node_config(
        tmp_path / "data",
        tls_certificate=pki.server_cert,
        tls_private_key=pki.server_key,
        tls_ca_certificates=pki.ca,
        require_client_certificate=True,
        allowed_calling_ae_titles=("SCANNER",),
    )
    node = RunningScp(config)
    try:
        client = _client_tls(pki, pki.client_cert, pki.client_key)
        refused = _dcmtk(tools["echoscu"], node.port, *client, calling="INTRUDER")
        assert not refused.startswith("rc=0") and "Association Rejected" in refused, refused
        assert _dcmtk(tools["echoscu"], node.port, *client, calling="SCANNER").startswith("rc=0")
    finally:
        node.stop()


def test_a_silent_client_does_not_block_the_tls_listener(
    tls_node: RunningScp, tools: dict[str, str], pki: Pki
) -> None:
    # Regression: pynetdicom does the TLS handshake on the accept loop, so a
    # client that connects and says nothing stopped every other client.
    with socket.create_connection(("127.0.0.1", tls_node.port)):
        started = time.monotonic()
        echoed = _dcmtk(tools["echoscu"], tls_node.port, *_client_tls(pki, pki.client_cert, pki.client_key))
        assert echoed.startswith("rc=0"), echoed
        assert time.monotonic() - started < 4.0  # well inside the node's 5 s network timeout


def test_idle_connections_and_stalled_handshakes_do_not_block_tls_clients(
    tmp_path: Path, tools: dict[str, str], pki: Pki
) -> None:
    config = node_config(
        tmp_path / "data",
        timeout=2.0,
        tls_certificate=pki.server_cert,
        tls_private_key=pki.server_key,
        tls_ca_certificates=pki.ca,
        require_client_certificate=True,
    )
    node = RunningScp(
        dataclasses.replace(
            config, node=dataclasses.replace(config.node, association_request_timeout_seconds=1.0)
        )
    )
    client = _client_tls(pki, pki.client_cert, pki.client_key)
    python_client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=pki.ca)
    python_client.load_cert_chain(pki.client_cert, pki.client_key)
    files = tuple(make_ct_series(tmp_path / "ct", n=41, rows=32, cols=32))
    try:
        with (
            IdleConnections(node.port, 30) as idle,
            IdleConnections(node.port, 30, first_bytes=STALLED_CLIENT_HELLO) as stalled,
            EchoProbe(lambda: node.echo(tls=python_client), interval=0.3) as probe,
        ):
            time.sleep(3.5)  # past the 2 s network timeout: every one closed and re-opened
            echoed = _dcmtk(tools["echoscu"], node.port, *client)
            stored = _dcmtk(tools["storescu"], node.port, *client, files=files)
        assert echoed.startswith("rc=0"), echoed
        assert stored.startswith("rc=0"), stored
        assert stored.count("Received Store Response (Success)") == 41
        assert len(node.spooled()) == 41
        assert probe.tried >= 8 and probe.succeeded == probe.tried, probe.results
        assert idle.reopened >= 30 and stalled.reopened >= 30
        assert node.scp.listener_status()["connections_dropped"]["request_timeout"] >= 60
    finally:
        node.stop()


def test_optional_client_certificate_lets_anonymous_tls_in(
    tmp_path: Path, tools: dict[str, str], pki: Pki
) -> None:
    config = node_config(
        tmp_path / "data",
        tls_certificate=pki.server_cert,
        tls_private_key=pki.server_key,
        tls_ca_certificates=pki.ca,
    )
    node = RunningScp(config)
    try:
        assert _dcmtk(tools["echoscu"], node.port, "+tla", "+cf", str(pki.ca)).startswith("rc=0")
        rogue = _dcmtk(tools["echoscu"], node.port, *_client_tls(pki, pki.rogue_cert, pki.rogue_key))
        assert not rogue.startswith("rc=0"), rogue  # a certificate shown must still verify
    finally:
        node.stop()


def test_python_client_context_round_trip(tls_node: RunningScp, pki: Pki) -> None:
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=pki.ca)
    client.load_cert_chain(pki.client_cert, pki.client_key)
    assert tls_node.echo(tls=client) is True


# Configuration ------------------------------------------------------------------------------------


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text("[security]\n" + text)
    return path


def test_config_reports_missing_and_unreadable_tls_files(tmp_path: Path, pki: Pki) -> None:
    unreadable = tmp_path / "secret.key"
    unreadable.write_text("x")
    unreadable.chmod(0)
    readable_to_us = os.access(unreadable, os.R_OK)  # root reads anything
    path = _toml(
        tmp_path,
        f'tls_certificate = "{tmp_path / "absent.crt"}"\ntls_private_key = "{unreadable}"\n'
        f'tls_ca_certificates = "{tmp_path}"\nrequire_client_certificate = true\n',
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    text = "\n".join(caught.value.problems)
    assert "[security] tls_certificate: " in text and "absent.crt' is not a file" in text
    assert "[security] tls_ca_certificates: " in text and "is not a file" in text
    if not readable_to_us:
        assert "[security] tls_private_key: " in text and "not readable by this user" in text
    assert stat.S_IMODE(unreadable.stat().st_mode) == 0


def test_config_needs_certificate_and_key_together_and_a_ca_to_require_clients(
    tmp_path: Path, pki: Pki
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(
            _toml(tmp_path, f'tls_certificate = "{pki.server_cert}"\nrequire_client_certificate = true\n')
        )
    text = "\n".join(caught.value.problems)
    assert "set both (TLS on) or neither" in text
    assert "require_client_certificate: needs" in text
    with pytest.raises(ConfigError, match="max_instance_mb"):
        load_config(_toml(tmp_path, "max_instance_mb = 0\n"))
    config = load_config(
        _toml(tmp_path, f'tls_certificate = "{pki.server_cert}"\ntls_private_key = "{pki.server_key}"\n')
    )
    assert config.security.tls_enabled and config.security.tls_ca_certificates is None


def test_a_key_not_matching_the_certificate_is_a_config_error(tmp_path: Path, pki: Pki) -> None:
    config = load_config(
        _toml(tmp_path, f'tls_certificate = "{pki.server_cert}"\ntls_private_key = "{pki.client_key}"\n')
    )
    with pytest.raises(ConfigError, match=r"tls_certificate, tls_private_key: cannot load"):
        server_context(config.security)
    not_pem = tmp_path / "ca.txt"
    not_pem.write_text("not a certificate")
    config = load_config(
        _toml(
            tmp_path,
            f'tls_certificate = "{pki.server_cert}"\ntls_private_key = "{pki.server_key}"\n'
            f'tls_ca_certificates = "{not_pem}"\n',
        )
    )
    with pytest.raises(ConfigError, match=r"tls_ca_certificates: cannot load"):
        server_context(config.security)
