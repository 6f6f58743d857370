"""TLS against a real HTTPS server on 127.0.0.1: a throwaway CA signs the sandbox's certificate.

Without the CA the sync fails at once with a certificate error naming `http.ca_bundle`, and
`connector validate` diagnoses it; with `http.ca_bundle` the sync succeeds over TLS on both
transports; a certificate for another host fails however the CA is trusted. TLS contexts are
cached per CA file.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from typer.testing import CliRunner

from connector.config import AppConfig, HttpSettings, build_config
from connector.sandbox import SandboxOptions, SandboxServer
from connector.sources.http import CertificateRejected, SourceClient, verified_tls_context
from connector.sources.tls import tls_context_for
from connector.store import Store
from connector.validate import ValidateOptions, validate_source
from tests.conftest import FAST_HTTP, seed_registry, sources_for, write_config
from tests.conftest import sync_wired as sync

DIALECT = "meditrak"
INVOICES = 24

# A connection whose TLS handshake this module makes fail (unknown CA, another host's
# certificate) is at times left to the garbage collector by the client stack, and its
# "unclosed socket" ResourceWarning then surfaces in whichever test of this module runs the
# collector (seen twice in 1,300-test runs). Not root-caused; tolerated here only.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass
class Pki:
    """A throwaway CA (as a clinic's on-premise vendor runs one) and the server certificates
    it signs, written as PEM files into `directory`."""

    directory: Path
    ca_key: ec.EllipticCurvePrivateKey
    ca_cert: x509.Certificate
    ca_file: Path

    @classmethod
    def create(cls, directory: Path, common_name: str = "Clinic Vendor Test CA") -> Pki:
        directory.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(_name(common_name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        ca_file = directory / "ca.pem"
        ca_file.write_bytes(_pem(cert))
        return cls(directory, key, cert, ca_file)

    def server_context(self, *hosts: str) -> ssl.SSLContext:
        """A server-side TLS context whose certificate, signed by this CA, names `hosts`."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(hosts[0]))
            .issuer_name(self.ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca_key.public_key()), False
            )
            .sign(self.ca_key, hashes.SHA256())
        )
        chain = self.directory / f"server-{'-'.join(hosts)}.pem"
        chain.write_bytes(_pem(cert) + _key_pem(key))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(chain)
        return context


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.create(tmp_path_factory.mktemp("pki"))


def tls_sandbox(context: ssl.SSLContext) -> SandboxServer:
    options = SandboxOptions(
        invoices=INVOICES, seed=11, defect_rate=0.0, dialects=(DIALECT,), ssl_context=context
    )
    return SandboxServer(options)


@pytest.fixture
def vendor(pki: Pki) -> Iterator[SandboxServer]:
    """The MediTrak sandbox over HTTPS with a certificate for 127.0.0.1 from the private CA."""
    with tls_sandbox(pki.server_context("127.0.0.1")) as server:
        yield server


def tls_config(server: SandboxServer, store: Path, **http: Any) -> AppConfig:
    sources = sources_for(server, (DIALECT,), page_size=10, http={**FAST_HTTP, **http})
    return build_config({"store": {"url": str(store)}, "sources": sources}, env={})


def run_validate(config: AppConfig) -> dict[str, Any]:
    return asyncio.run(validate_source(config, DIALECT, options=ValidateOptions(sample=20)))


def step(report: dict[str, Any], name: str) -> dict[str, str]:
    (found,) = [s for s in report["connection"]["steps"] if s["name"] == name]
    return dict(found)


# ----------------------------------------------------------------------------- sync


def test_without_the_ca_the_sync_fails_with_a_certificate_error(
    vendor: SandboxServer, tmp_path: Path
) -> None:
    assert vendor.api_url(DIALECT).startswith("https://127.0.0.1:")
    config = tls_config(vendor, tmp_path / "store.db")
    with Store(config.store.sqlalchemy_url()) as store:
        result = sync(config, store)[DIALECT]
        assert not result.ok
        assert store.count_invoices() == 0
    error = result.error or ""
    assert "TLS certificate of 127.0.0.1 was rejected" in error, error
    assert "unable to get local issuer certificate" in error
    assert "http.ca_bundle" in error
    # The handshake failed before any HTTP request reached the vendor.
    assert vendor.stats(DIALECT)["requests"] == 0


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_with_ca_bundle_the_sync_succeeds_over_tls(
    vendor: SandboxServer, pki: Pki, tmp_path: Path, transport: str
) -> None:
    config = tls_config(
        vendor, tmp_path / "store.db", ca_bundle=str(pki.ca_file), transport=transport
    )
    seed_registry(vendor, config.store.sqlalchemy_url())
    with Store(config.store.sqlalchemy_url()) as store:
        result = sync(config, store)[DIALECT]
        assert result.ok, result.error
        assert result.counts.fetched == INVOICES
        assert result.counts.inserted == INVOICES
        assert store.count_invoices() == INVOICES
    # The list pages and one detail call per invoice all went over the verified connection.
    assert vendor.stats(DIALECT)["requests"] >= INVOICES + 3


def test_a_certificate_for_another_host_fails_even_with_the_ca(pki: Pki, tmp_path: Path) -> None:
    with tls_sandbox(pki.server_context("vendor.example")) as server:
        config = tls_config(server, tmp_path / "store.db", ca_bundle=str(pki.ca_file))
        with Store(config.store.sqlalchemy_url()) as store:
            result = sync(config, store)[DIALECT]
        assert not result.ok
        error = result.error or ""
        assert "not valid for '127.0.0.1'" in error, error
        assert "it is not issued for 127.0.0.1 - base_url must use a host name" in error
        assert "ca_bundle" not in error  # trust is not the problem: no misleading advice
        assert server.stats(DIALECT)["requests"] == 0


def test_a_ca_bundle_without_the_issuing_ca_says_so(vendor: SandboxServer, tmp_path: Path) -> None:
    other = Pki.create(tmp_path / "other", "Some Other CA")
    config = tls_config(vendor, tmp_path / "store.db", ca_bundle=str(other.ca_file))
    with Store(config.store.sqlalchemy_url()) as store:
        result = sync(config, store)[DIALECT]
    assert not result.ok
    assert f"nor by a CA in http.ca_bundle ({other.ca_file})" in (result.error or "")


def test_a_self_signed_vendor_certificate_is_trusted_by_naming_it(tmp_path: Path) -> None:
    """Why no switch turns verification off: a self-signed certificate is its own CA, so the
    vendor's certificate itself is the `ca_bundle`, and host names are still checked."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(_name("127.0.0.1"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([_san("127.0.0.1")]), False)
        .sign(key, hashes.SHA256())
    )
    public, chain = tmp_path / "vendor-cert.pem", tmp_path / "vendor-chain.pem"
    public.write_bytes(_pem(cert))
    chain.write_bytes(_pem(cert) + _key_pem(key))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(chain)
    with tls_sandbox(context) as server:
        config = tls_config(server, tmp_path / "store.db")
        with Store(config.store.sqlalchemy_url()) as store:
            refused = sync(config, store)[DIALECT]
        assert not refused.ok
        assert "http.ca_bundle" in (refused.error or "")
        trusted = tls_config(server, tmp_path / "store.db", ca_bundle=str(public))
        seed_registry(server, trusted.store.sqlalchemy_url())
        with Store(trusted.store.sqlalchemy_url()) as store:
            result = sync(trusted, store)[DIALECT]
        assert result.ok, result.error
        assert result.counts.inserted == INVOICES


def test_a_rejected_certificate_is_not_retried(vendor: SandboxServer) -> None:
    settings = HttpSettings.model_validate({"max_retries": 4, "backoff_base": "1s"})

    async def scenario() -> SourceClient:
        async with SourceClient(vendor.api_url(DIALECT), settings) as client:
            with pytest.raises(CertificateRejected, match=r"http\.ca_bundle"):
                await client.get_json("invoices/")
            return client

    client = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert (client.stats.requests, client.stats.retries) == (1, 0)


def test_streamed_requests_report_a_rejected_certificate_too(vendor: SandboxServer) -> None:
    async def scenario() -> None:
        async with SourceClient(vendor.api_url(DIALECT), HttpSettings()) as client:
            with pytest.raises(CertificateRejected, match="not signed by a trusted CA"):
                async with client.stream("GET", "invoices/"):
                    pass

    asyncio.run(scenario())


# ----------------------------------------------------------------------------- validate


def test_validate_diagnoses_the_missing_ca_and_passes_with_it(
    vendor: SandboxServer, pki: Pki, tmp_path: Path
) -> None:
    report = run_validate(tls_config(vendor, tmp_path / "store.db"))
    assert report["exit_code"] == 2
    tls = step(report, "tls")
    assert tls["status"] == "fail"
    assert "not signed by a trusted CA" in tls["detail"]
    assert "set the source's http.ca_bundle to that CA's certificate" in tls["detail"]
    assert step(report, "list")["status"] == "skip"

    trusted = run_validate(tls_config(vendor, tmp_path / "store.db", ca_bundle=str(pki.ca_file)))
    assert trusted["connection"]["ok"], trusted["connection"]
    assert trusted["exit_code"] in (0, 1)  # ready, or blocked by records: connected either way
    tls = step(trusted, "tls")
    assert tls["status"] == "pass"
    assert tls["detail"].endswith(f"(trusted through http.ca_bundle {pki.ca_file})")
    assert step(trusted, "list")["status"] == "pass"


def test_validate_diagnoses_a_certificate_for_another_host(pki: Pki, tmp_path: Path) -> None:
    with tls_sandbox(pki.server_context("vendor.example")) as server:
        config = tls_config(server, tmp_path / "store.db", ca_bundle=str(pki.ca_file))
        report = run_validate(config)
    assert report["exit_code"] == 2
    detail = step(report, "tls")["detail"]
    assert "not issued for 127.0.0.1" in detail, detail


def test_validate_command_reads_a_relative_ca_bundle_from_another_directory(
    vendor: SandboxServer, pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator's view: `connector -c site/connector.yaml validate` run from elsewhere,
    with `ca_bundle: certs/vendor-ca.pem` relative to the config file."""
    from connector.cli.app import get_app

    site = tmp_path / "site"
    (site / "certs").mkdir(parents=True)
    (site / "certs" / "vendor-ca.pem").write_bytes(pki.ca_file.read_bytes())
    (source,) = sources_for(
        vendor, (DIALECT,), http={**FAST_HTTP, "ca_bundle": "certs/vendor-ca.pem"}
    )
    config = write_config(site / "connector.yaml", {"sources": [source]})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    runner = CliRunner()
    result = runner.invoke(get_app(), ["-c", str(config), "validate", "-s", DIALECT, "-n", "5"])
    assert result.exit_code in (0, 1), result.output
    assert "certificate valid for 127.0.0.1" in result.output

    del source["http"]["ca_bundle"]
    write_config(site / "connector.yaml", {"sources": [source]})
    refused = runner.invoke(get_app(), ["-c", str(config), "validate", "-s", DIALECT])
    assert refused.exit_code == 2, refused.output
    assert "ca_bundle" in refused.output
    assert list(elsewhere.iterdir()) == []  # nothing written to the working directory


# ----------------------------------------------------------------------------- contexts


def test_tls_contexts_are_cached_per_ca_file(pki: Pki, tmp_path: Path) -> None:
    default = verified_tls_context()
    assert verified_tls_context() is default
    assert verified_tls_context(None) is default
    with_ca = verified_tls_context(str(pki.ca_file))
    assert with_ca is not default
    assert verified_tls_context(str(pki.ca_file)) is with_ca
    other = Pki.create(tmp_path / "other", "Another CA")
    assert verified_tls_context(str(other.ca_file)) is not with_ca
    # A renewed CA file (same path, new content) is read again by the next client.
    stat = other.ca_file.stat()
    before = verified_tls_context(str(other.ca_file))
    os.utime(other.ca_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert verified_tls_context(str(other.ca_file)) is not before


def test_the_ca_bundle_adds_to_the_default_store(pki: Pki) -> None:
    default = verified_tls_context().get_ca_certs()
    extended = verified_tls_context(str(pki.ca_file)).get_ca_certs()
    assert len(default) > 50  # the public roots
    assert len(extended) == len(default) + 1
    subjects = []
    for cert in extended:
        subject = cert["subject"]
        assert isinstance(subject, tuple)
        names: dict[str, str] = {}
        for part in subject:
            for pair in part:
                assert not isinstance(pair, str)
                names[pair[0]] = pair[1]
        subjects.append(names)
    assert {"commonName": "Clinic Vendor Test CA"} in subjects
    for context in (verified_tls_context(), verified_tls_context(str(pki.ca_file))):
        assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_a_plain_http_client_gets_a_context_that_trusts_nothing(pki: Pki) -> None:
    # Links may only keep the base URL's scheme and host, so a plain-HTTP client never makes
    # a handshake; it is spared the verifying context's build, never given an unchecked one.
    plain = tls_context_for("http://127.0.0.1:8080/api/")
    assert plain.verify_mode == ssl.CERT_REQUIRED and plain.check_hostname
    assert plain.get_ca_certs() == []
    assert tls_context_for("https://vendor.example/api/") is verified_tls_context()
    assert tls_context_for("HTTPS://vendor.example/") is verified_tls_context()
    assert tls_context_for("http://h/", str(pki.ca_file)) is verified_tls_context(str(pki.ca_file))
    # Were it ever used for a handshake, it would refuse the certificate.
    with tls_sandbox(pki.server_context("127.0.0.1")) as server:
        host, port = "127.0.0.1", int(server.api_url(DIALECT).split(":")[2].split("/")[0])
        with (
            socket.create_connection((host, port), timeout=10) as raw,
            pytest.raises(ssl.SSLCertVerificationError),
        ):
            plain.wrap_socket(raw, server_hostname=host)
