"""The HTTP session a DICOMweb endpoint gets: its authentication and TLS verification."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from ct2pet_node.config import DicomwebEndpoint
from ct2pet_node.net.dicomweb import session_for


def prepared(session: requests.Session) -> requests.PreparedRequest:
    return session.prepare_request(requests.Request("GET", "https://pacs.example/dicom-web/studies"))


def test_a_bearer_token_is_sent_and_tls_is_verified_by_default(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("abc\n")
    session = session_for(DicomwebEndpoint(url="https://pacs.example/dicom-web", token_file=token))
    assert prepared(session).headers["Authorization"] == "Bearer abc"
    assert session.verify is True and session.cert is None


def test_basic_authentication_a_private_ca_and_a_client_certificate(tmp_path: Path) -> None:
    password, ca, cert, key = (tmp_path / name for name in ("pw", "ca.pem", "c.pem", "k.pem"))
    password.write_text("pw")
    session = session_for(
        DicomwebEndpoint(
            url="https://pacs.example/dicom-web",
            username="orthanc",
            password_file=password,
            ca_certificates=ca,
            client_certificate=cert,
            client_private_key=key,
        )
    )
    assert prepared(session).headers["Authorization"].startswith("Basic ")
    assert session.verify == str(ca)
    assert session.cert == (str(cert), str(key))


def test_no_secret_no_header() -> None:
    session = session_for(DicomwebEndpoint(url="http://127.0.0.1:8042/dicom-web"))
    assert "Authorization" not in prepared(session).headers


def test_the_endpoints_tls_settings_win_over_a_ca_bundle_in_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle, ca = tmp_path / "host-bundle.pem", tmp_path / "private-ca.pem"
    bundle.write_text("")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    monkeypatch.setenv("CURL_CA_BUNDLE", str(bundle))
    url = "https://pacs.example/dicom-web/studies"

    def verify(endpoint: DicomwebEndpoint) -> object:
        session = session_for(endpoint)
        return session.merge_environment_settings(url, {}, None, None, None)["verify"]

    assert verify(DicomwebEndpoint(url=url, ca_certificates=ca)) == str(ca)
    assert verify(DicomwebEndpoint(url=url, verify_tls=False)) is False
    assert verify(DicomwebEndpoint(url=url)) == str(bundle)  # the host's own trust, when none is configured
