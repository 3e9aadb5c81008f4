"""The node as a DICOMweb client: one authenticated HTTP session per endpoint, and the client on it.

dicomweb-client speaks STOW-RS, QIDO-RS and WADO-RS; this module gives it a
``requests`` session that carries the endpoint's authentication (basic, bearer
or a client certificate) and its TLS verification, which is on unless the
configuration turns it off. Secrets are read from their file or variable here,
at the moment a session is made, and are never logged.
"""

from __future__ import annotations

import requests
from dicomweb_client.api import DICOMwebClient

from ct2pet_node.config import DicomwebEndpoint


class _BearerAuth(requests.auth.AuthBase):
    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request


def session_for(endpoint: DicomwebEndpoint) -> requests.Session:
    session = requests.Session()
    password = endpoint.password()
    token = endpoint.token()
    if endpoint.username and password is not None:
        session.auth = requests.auth.HTTPBasicAuth(endpoint.username, password)
    elif token is not None:
        session.auth = _BearerAuth(token)
    if not endpoint.verify_tls:
        session.verify = False
    elif endpoint.ca_certificates is not None:
        session.verify = str(endpoint.ca_certificates)
    if endpoint.client_certificate is not None and endpoint.client_private_key is not None:
        session.cert = (str(endpoint.client_certificate), str(endpoint.client_private_key))
    return session


def client_for(endpoint: DicomwebEndpoint) -> DICOMwebClient:
    """A client for the endpoint's service root (STOW-RS, QIDO-RS and WADO-RS paths below it)."""
    return DICOMwebClient(url=endpoint.url, session=session_for(endpoint))
