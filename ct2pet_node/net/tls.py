"""DICOM TLS for the storage SCP: one ``ssl.SSLContext`` built from ``[security]``.

When ``tls_certificate`` is set, the node's DICOM port speaks TLS only: a
plain TCP client cannot associate on it (there is no second, plain port to
slip through). The profile follows BCP 195 as DICOM PS3.15 B.9 asks: TLS
1.2 or newer, the ssl module's default (forward-secret, AEAD) ciphers.

Client certificates: with ``tls_ca_certificates`` alone, a client may show
none, but one it shows must verify against those CAs; with
``require_client_certificate`` a client without such a certificate fails the
handshake and never reaches association negotiation. The calling AE title
allow-list applies on top, either way.
"""

from __future__ import annotations

import ssl

from ct2pet_node.config import SecurityConfig
from ct2pet_node.errors import ConfigError


def server_context(security: SecurityConfig) -> ssl.SSLContext | None:
    """The SSL context the SCP wraps accepted sockets with, or None when TLS is off.

    Raises
    ------
    ConfigError
        The certificate, key or CA bundle cannot be loaded (not PEM, key not
        matching the certificate, wrong passphrase-protected key).
    """
    if security.tls_certificate is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    problems: list[str] = []
    try:
        context.load_cert_chain(security.tls_certificate, security.tls_private_key)
    except (ssl.SSLError, OSError) as error:
        problems.append(
            f"[security] tls_certificate, tls_private_key: cannot load {security.tls_certificate} "
            f"with {security.tls_private_key} ({error}); give a PEM certificate and its unencrypted key"
        )
    if security.tls_ca_certificates is not None:
        try:
            context.load_verify_locations(cafile=security.tls_ca_certificates)
        except (ssl.SSLError, OSError) as error:
            problems.append(
                f"[security] tls_ca_certificates: cannot load {security.tls_ca_certificates} ({error}); "
                "give a PEM bundle of CA certificates"
            )
        context.verify_mode = ssl.CERT_REQUIRED if security.require_client_certificate else ssl.CERT_OPTIONAL
    else:
        context.verify_mode = ssl.CERT_NONE
    if problems:
        raise ConfigError(problems)
    return context
