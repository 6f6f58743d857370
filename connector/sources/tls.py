"""TLS for source clients: the cached certificate-verifying context of a source, and what a
rejected vendor certificate means in words a user can act on."""

from __future__ import annotations

import os
import ssl
from functools import lru_cache

import httpx

from connector.errors import SourceError


def verified_tls_context(ca_bundle: str | None = None) -> ssl.SSLContext:
    """The certificate-verifying TLS context of a source: the default trust store (certifi's
    Mozilla roots, or `SSL_CERT_FILE` / `SSL_CERT_DIR`) plus the CAs of `ca_bundle`, if any.

    One per process and CA file: building one costs ~100 ms of CPU, which every client (each
    run, each backfill window) would otherwise pay again. The file's modification time is part
    of the key, so a renewed CA file is read by the next run, without a restart."""
    if ca_bundle is None:
        return _tls_context(None, None)
    path = os.path.abspath(ca_bundle)
    try:
        stat = os.stat(path)
    except OSError as exc:
        raise SourceError(f"cannot read http.ca_bundle {path}: {exc.strerror}") from None
    return _tls_context(path, (stat.st_mtime_ns, stat.st_size))


@lru_cache(maxsize=32)
def _tls_context(ca_bundle: str | None, _version: tuple[int, int] | None) -> ssl.SSLContext:
    context = httpx.create_ssl_context(verify=True)
    if ca_bundle is not None:
        try:
            context.load_verify_locations(cafile=ca_bundle)
        except (OSError, ssl.SSLError) as exc:
            # Checked when the config loaded: the file changed since.
            raise SourceError(f"cannot load http.ca_bundle {ca_bundle}: {exc}") from None
    return context


def tls_context_for(base_url: str, ca_bundle: str | None = None) -> ssl.SSLContext:
    """The TLS context of a client of `base_url`. A client may only call its base URL's scheme
    and host (`SourceClient.resolve`), so one on plain HTTP never makes a TLS handshake: it
    gets a context that verifies and trusts nothing (a handshake would fail, never pass
    unchecked) instead of the verifying one, whose first build costs ~90 ms of CPU."""
    if base_url.lower().startswith("https:") or ca_bundle is not None:
        return verified_tls_context(ca_bundle)
    return _trusting_nothing()


@lru_cache(maxsize=1)
def _trusting_nothing() -> ssl.SSLContext:
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, host names checked


class CertificateRejected(SourceError):
    """The vendor's TLS certificate failed verification. Fatal at once rather than retried: no
    retry changes a certificate, and the message names the setting or the fix."""


def certificate_error(error: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure behind a transport error, if that is its cause
    (httpx and aiohttp both keep the `ssl` error in the exception chain). The deepest one:
    aiohttp's wrapper is an `ssl.CertificateError` too, without OpenSSL's verify code."""
    found = None
    cause: BaseException | None = error
    for _ in range(8):  # a chain is a few links long; a cycle must not hang us
        if cause is None:
            break
        if isinstance(cause, ssl.SSLCertVerificationError):
            found = cause
        cause = cause.__cause__ or cause.__context__
    return found


# OpenSSL's verify results (X509_V_ERR_*) that mean "signed by a CA we do not trust".
_UNTRUSTED_ISSUER = frozenset({2, 18, 19, 20, 21, 27})
_HOST_MISMATCH = frozenset({62, 64})
_EXPIRED, _NOT_YET_VALID = 10, 9


def describe_certificate_error(
    error: ssl.SSLCertVerificationError, host: str, ca_bundle: str | None
) -> str:
    """Why the certificate of `host` was rejected, and what to change."""
    reason = (getattr(error, "verify_message", None) or str(error)).rstrip(".")
    said = f"the TLS certificate of {host} was rejected ({reason})"
    code = getattr(error, "verify_code", None)
    if code in _HOST_MISMATCH:
        return (
            f"{said}: it is not issued for {host} - base_url must use a host name the "
            "certificate names (ask the vendor which), or the vendor must reissue it"
        )
    if code == _EXPIRED:
        return (
            f"{said}: it has expired (or this machine's clock is wrong) - the vendor must renew it"
        )
    if code == _NOT_YET_VALID:
        return f"{said}: it is not valid yet - check this machine's clock"
    if code in _UNTRUSTED_ISSUER:
        if ca_bundle is None:
            return (
                f"{said}: it is not signed by a trusted CA - if the vendor uses a private CA or "
                "a self-signed certificate, set the source's http.ca_bundle to that CA's "
                "certificate (PEM file)"
            )
        return (
            f"{said}: it is signed neither by a public CA nor by a CA in http.ca_bundle "
            f"({ca_bundle}) - check that the file holds the CA (and any intermediate) that "
            "issued the vendor's certificate"
        )
    return said
