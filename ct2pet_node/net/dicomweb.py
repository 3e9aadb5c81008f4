"""The node as a DICOMweb client: one authenticated HTTP session per endpoint, and the client on it.

dicomweb-client speaks STOW-RS, QIDO-RS and WADO-RS; this module gives it a
``requests`` session that carries the endpoint's authentication (basic, bearer
or a client certificate) and its TLS verification, which is on unless the
configuration turns it off. Secrets are read from their file or variable here,
at the moment a session is made, and are never logged.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests
from dicomweb_client.api import DICOMwebClient

from ct2pet_node.config import DicomwebEndpoint
from ct2pet_node.errors import DeliveryError

# How much of a server's error body goes into a reason: enough for "invalid token", not a whole HTML page.
_BODY_EXCERPT_CHARS = 200
_ERRNO = re.compile(r"\[Errno -?\d+\] [^'\")\]]+")


class _BearerAuth(requests.auth.AuthBase):
    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request


class _EndpointSession(requests.Session):
    """A session whose own TLS verification is not overridden by the environment.

    requests lets ``REQUESTS_CA_BUNDLE`` or ``CURL_CA_BUNDLE`` take the place
    of a session's ``verify``, so on a host that sets them an endpoint's
    ``ca_certificates`` would be ignored and ``verify_tls = false`` too. With
    neither set, the environment's bundle still stands in for the system's.
    """

    def merge_environment_settings(
        self,
        url: str,
        proxies: Any,
        stream: Any,
        verify: Any,
        cert: Any,
    ) -> dict[str, Any]:
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if self.verify is not True:
            settings["verify"] = self.verify
        return settings


def session_for(endpoint: DicomwebEndpoint) -> requests.Session:
    session = _EndpointSession()
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


def client_for(
    endpoint: DicomwebEndpoint,
    timeout: float | tuple[float, float] = 20.0,
    chunk_bytes: int = 10**6,
    on_response: Callable[[requests.Response], None] | None = None,
    session: requests.Session | None = None,
    attempts: int = 1,
) -> DICOMwebClient:
    """A client for the endpoint's service root (STOW-RS, QIDO-RS and WADO-RS paths below it).

    Parameters
    ----------
    timeout : float or (connect, read) seconds
    chunk_bytes : int
        A request body larger than this is sent with chunked transfer encoding.
    on_response : callable, optional
        Shown every HTTP response as it arrives.
    session : requests.Session, optional
        From :func:`session_for`, for a caller that closes it when done
        (dicomweb-client never closes its session); None makes one.
    attempts : int
        HTTP attempts per request. One for a destination: the outbox owns
        retries and their schedule, and a second, hidden layer would multiply
        the waits. An operator's query may ride out a blip with two.
    """

    def hook(response: requests.Response, *_: object, **__: object) -> None:
        if on_response is not None:
            on_response(response)

    client = DICOMwebClient(
        url=endpoint.url,
        session=session or session_for(endpoint),
        timeout=timeout,
        chunk_size=chunk_bytes,
        callback=hook if on_response is not None else None,
    )
    if attempts > 1:
        client.set_http_retry_params(max_attempts=attempts)
    else:
        client.set_http_retry_params(retry=False)
    return client


def http_reason(response: requests.Response, endpoint: DicomwebEndpoint) -> str:
    """``HTTP 401 Unauthorized: <start of the body>``, with any secret of the endpoint blanked out."""
    body = " ".join(response.text.split())[:_BODY_EXCERPT_CHARS]
    for secret in (endpoint.password(), endpoint.token()):
        if secret:
            body = body.replace(secret, "***")
    reason = f"HTTP {response.status_code} {response.reason or ''}".rstrip()
    return f"{reason}: {body}" if body else reason


def broke_off(error: requests.RequestException) -> bool:
    """Whether a connection was made and then lost mid-exchange (rather than never made)."""
    if isinstance(error, requests.exceptions.ChunkedEncodingError):
        return True
    return isinstance(error, requests.ConnectionError) and "Connection aborted" in str(error)


def transport_reason(error: requests.RequestException, endpoint: DicomwebEndpoint) -> str:
    """Why no HTTP answer came, in one short sentence that names the service and no credentials."""
    where = endpoint.public_url
    if isinstance(error, requests.exceptions.SSLError):
        return (
            f"TLS with {where} failed ({_short(error)}); check ca_certificates and the server's certificate"
        )
    if isinstance(error, requests.Timeout):
        return f"{where} did not answer in time ({type(error).__name__})"
    if broke_off(error):
        return f"the connection to {where} broke off mid-request ({_short(error)})"
    if isinstance(error, requests.ConnectionError):
        return f"cannot connect to {where}: {_short(error)}; check that the server is running and the URL"
    return f"the exchange with {where} failed: {_short(error)}"


def _innermost(error: BaseException) -> BaseException:
    # requests wraps urllib3, which wraps the socket's error: the last one names the cause.
    for cause in (*reversed(error.args), getattr(error, "reason", None)):
        if isinstance(cause, BaseException):
            return _innermost(cause)
    return error


def _short(error: Exception) -> str:
    found = _ERRNO.search(str(error))
    if found:
        return found.group(0).strip()
    inner = _innermost(error)
    text = " ".join(str(inner).split())[:_BODY_EXCERPT_CHARS]
    return f"{type(inner).__name__}: {text}" if text else type(inner).__name__


@dataclass(frozen=True, slots=True)
class QidoEcho:
    """A QIDO-RS query that was answered: the HTTP status and the wall-clock seconds it took."""

    url: str
    status: int
    seconds: float


def echo(endpoint: DicomwebEndpoint, timeout: float | tuple[float, float] = 20.0) -> QidoEcho:
    """Ask for at most one study (QIDO-RS): the DICOMweb counterpart of a C-ECHO.

    Raises
    ------
    DeliveryError
        When no answer comes or the answer is not a success; the message
        names the service (without credentials) and the server's reason.
    """
    answered: list[int] = []
    started = time.monotonic()
    try:
        with session_for(endpoint) as session:
            client = client_for(
                endpoint, timeout, on_response=lambda r: answered.append(r.status_code), session=session
            )
            client.search_for_studies(limit=1, fields=["StudyInstanceUID"])
    except requests.RequestException as error:
        if isinstance(error, requests.HTTPError) and error.response is not None:
            reason = http_reason(error.response, endpoint)
            raise DeliveryError(f"echo failed: {endpoint.public_url} answered {reason}") from None
        raise DeliveryError(f"echo failed: {transport_reason(error, endpoint)}") from None
    except OSError as error:  # the secret's file, read as the session is made
        raise DeliveryError(
            f"echo failed: cannot read the credentials for {endpoint.public_url}: {error}"
        ) from None
    except ValueError as error:  # a 2xx whose body is not DICOM JSON: not a DICOMweb service there
        raise DeliveryError(
            f"echo failed: {endpoint.public_url} answered, but not as a QIDO-RS service ({error}); "
            "check the URL's path (the service root, e.g. .../dicom-web)"
        ) from None
    return QidoEcho(endpoint.public_url, answered[-1] if answered else 200, time.monotonic() - started)
