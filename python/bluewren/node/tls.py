"""TLS for the node's listeners: the server context from ``tls_cert`` and ``tls_key``.

:func:`server_context` reads both PEM files and checks them one by one, so that a
node with a bad TLS setup refuses to start with one line naming the file and the reason:
missing, unreadable, not a PEM certificate, not a (usable) PEM private key, an encrypted
key, or a key that does not belong to the certificate. The context accepts TLS 1.2 and
later only.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Final

from bluewren.errors import BlueWrenError

__all__ = ["TlsError", "server_context"]

CERT_MARK: Final = "-----BEGIN CERTIFICATE-----"
KEY_MARK: Final = "PRIVATE KEY-----"


class TlsError(BlueWrenError, ValueError):
    """A TLS file is unusable; ``field`` is ``tls_cert`` or ``tls_key``."""

    def __init__(self, field: str, path: Path, reason: str) -> None:
        self.field = field
        self.path = path
        self.reason = reason
        super().__init__(f"{field} {path}: {reason}")


def _read(field: str, path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TlsError(field, path, "no such file") from None
    except IsADirectoryError:
        raise TlsError(field, path, "not readable: it is a directory") from None
    except OSError as exc:
        raise TlsError(field, path, f"not readable: {exc.strerror or exc}") from None
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise TlsError(field, path, "not a PEM file (binary data; DER must be converted)") from None


class _Encrypted(Exception):
    pass


def _no_password() -> str:
    raise _Encrypted


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A TLS server context serving ``cert`` (PEM, leaf first, then any intermediates)
    with ``key`` (PEM, unencrypted); TlsError naming the file and the reason if not."""
    cert_text = _read("tls_cert", cert)
    key_text = _read("tls_key", key)
    if CERT_MARK not in cert_text:
        raise TlsError("tls_cert", cert, f"not a PEM certificate (no {CERT_MARK} line)")
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        probe.load_verify_locations(cadata=cert_text)
    except ssl.SSLError as exc:
        raise TlsError(
            "tls_cert", cert, f"not a valid PEM certificate ({exc.reason or exc})"
        ) from None
    if KEY_MARK not in key_text:
        raise TlsError("tls_key", key, "not a PEM private key (no BEGIN ... PRIVATE KEY line)")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:  # an encrypted key asks for its passphrase: _no_password refuses, never prompts
        context.load_cert_chain(cert, key, password=_no_password)
    except _Encrypted:
        raise TlsError(
            "tls_key", key, "the key is encrypted: store it without a passphrase"
        ) from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TlsError(
                "tls_key", key, f"the key does not match the certificate in {cert}"
            ) from None
        raise TlsError(
            "tls_key", key, f"not a usable PEM private key ({exc.reason or exc})"
        ) from None
    except OSError as exc:  # the file changed between the checks
        raise TlsError("tls_key", key, f"not readable: {exc.strerror or exc}") from None
    return context
