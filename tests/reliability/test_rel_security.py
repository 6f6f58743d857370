"""Secrets and patient data: sandbox syncs of every source with sentinel credentials, through
the real CLI commands (sync at debug level, a source with wrong credentials, status, export,
report, quarantine list, validate), and every byte they produce — logs, CLI output, exported
and report files, the SQLite file and its WAL — is searched for the sentinels. Patient names
and policy numbers are masked in the logs. Files are owner-only; config and auth reprs show
no secret; plain-text secrets in a config file draw a warning; the health endpoint binds to
127.0.0.1 by default."""

from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from pydantic import SecretStr
from typer.testing import CliRunner

from connector.cli.app import get_app
from connector.config import DaemonSettings, build_config, load_config
from connector.logging import configure_logging, mask_patient_data
from connector.sandbox import SandboxOptions, SandboxServer
from connector.sandbox.splose import SploseDialect
from connector.sources.auth import BearerKey, OAuth2ClientCredentials, OAuth2Password
from tests.reliability.rel_helpers import raw_sources

SENTINEL = f"SENTINEL{uuid.uuid4().hex[:12]}"


def sentinel_for(name: str) -> str:
    return f"{SENTINEL}-{name}"


def run_cli(runner: CliRunner, *args: str) -> str:
    result = runner.invoke(get_app(), list(args), catch_exceptions=False)
    return (result.stdout or "") + (result.stderr or "")


@pytest.fixture
def sandbox() -> Any:
    names = ("meditrak", "meditrak_import", "splose", "bio_ecko", "citabox", "invoice_api")
    options = SandboxOptions(
        invoices=40,
        seed=13,
        defect_rate=0.2,
        tokens={name: sentinel_for(name) for name in names},
    )
    with SandboxServer(options) as server:
        splose = server.dialect("splose")
        assert isinstance(splose, SploseDialect)
        splose.rate_limit = 10_000
        yield server
    # structlog stays configured for the files of this test otherwise.
    configure_logging("info", "console")


def test_no_secret_reaches_any_output_and_patient_data_is_masked_in_logs(
    sandbox: SandboxServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sources = raw_sources(sandbox, {"max_retries": 1, "backoff_base": "10ms", "timeout": "5s"})
    wrong = dict(next(s for s in sources if s["name"] == "meditrak_import"))
    wrong.update(name="wrong-key", api_key=f"{SENTINEL}-wrong")
    sources.append(wrong)
    config_path = tmp_path / "connector.yaml"
    config_path.write_text(
        yaml.safe_dump(
            {
                "store": {"url": "store.db"},
                "logging": {"format": "json", "level": "debug"},
                "sources": sources,
            },
            sort_keys=False,
        )
    )
    from connector.cli.sandbox import seed_sandbox_registry
    from connector.store import Store
    from connector.store.store import sqlite_url_for

    with Store(sqlite_url_for(tmp_path / "store.db")) as store:
        seed_sandbox_registry(sandbox, store)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    config = ("--config", str(config_path), "--log-level", "debug")
    outputs = {
        "sync": run_cli(runner, *config, "sync"),
        "sync again": run_cli(runner, *config, "sync", "--full"),
        "status": run_cli(runner, *config, "status", "--json"),
        "export": run_cli(runner, *config, "export", "-o", "export.jsonl"),
        "export csv": run_cli(runner, *config, "export", "-f", "csv", "-o", "export.csv"),
        "report": run_cli(runner, *config, "report", "--format", "json", "-o", "report.json"),
        "quarantine": run_cli(runner, *config, "quarantine", "list"),
        "validate": run_cli(runner, *config, "validate", "--source", "bio_ecko", "--all"),
    }
    assert "wrong-key" in outputs["sync"] and "sync.finished" in outputs["sync"]
    assert "holds a secret in plain text" in outputs["sync"], "no plain-text secret warning"
    assert "config.warning" in outputs["sync"]

    files = {
        p.name: p.read_bytes()
        for p in tmp_path.iterdir()
        if p.is_file() and p.name != "connector.yaml"
    }
    assert {"store.db", "export.jsonl", "export.csv", "report.json"} <= set(files)
    leaks = [name for name, text in outputs.items() if SENTINEL in text]
    leaks += [name for name, data in files.items() if SENTINEL.encode() in data]
    assert leaks == [], f"a sentinel secret leaked into: {leaks}"

    # Patient data in logs: no patient name or policy number of the truth in clear.
    logs = outputs["sync"] + outputs["sync again"] + outputs["validate"]
    names = {inv.patient_name for n in sandbox.dialect_names for inv in sandbox.dataset(n)}
    policies = {inv.policy_number for n in sandbox.dialect_names for inv in sandbox.dataset(n)}
    log_lines = [line for line in logs.splitlines() if line.startswith("{")]
    assert log_lines, "no JSON log lines captured"
    joined = "\n".join(log_lines)
    assert [p for p in policies if p in joined] == []
    assert [n for n in names if n in joined] == []

    # Owner-only files: the store and the exports.
    for name in ("store.db", "export.jsonl", "export.csv"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o600, name


def test_log_processor_masks_patient_fields_and_policy_numbers_in_text() -> None:
    event = {
        "event": "validation.rejected",
        "patient_name": "John Doe",
        "patient": {"name": "Mary Smith", "policy_number": "POL-456789"},
        "error": "policy POL-456789 is not registered",
        "source": "meditrak",
    }
    masked = mask_patient_data(None, "info", dict(event))
    text = repr(masked)
    assert "John Doe" not in text and "Mary Smith" not in text and "POL-456789" not in text
    assert masked["source"] == "meditrak"
    assert masked["patient_name"] == "J*** D**"


def test_reprs_of_configs_and_auth_show_no_secret() -> None:
    secret = f"{SENTINEL}-repr"
    config = build_config(
        {
            "sources": [
                {
                    "type": "bio_ecko",
                    "name": "b",
                    "base_url": "https://vendor.example/api/v1/",
                    "client_id": "id",
                    "client_secret": secret,
                },
                {
                    "type": "meditrak",
                    "name": "m",
                    "base_url": "https://vendor.example/api/v1/",
                    "api_key": secret,
                },
            ]
        },
        env={},
    )
    auths = [
        BearerKey(SecretStr(secret)),
        OAuth2ClientCredentials("https://vendor.example/token", "id", SecretStr(secret)),
        OAuth2Password("https://vendor.example/token", "user", SecretStr(secret)),
    ]
    for shown in (repr(config), str(config), *(repr(s) for s in config.sources), *map(repr, auths)):
        assert secret not in shown


def test_plain_text_secrets_warn_and_env_references_do_not(tmp_path: Path) -> None:
    path = tmp_path / "connector.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "sources": [
                    {
                        "type": "meditrak",
                        "name": "plain",
                        "base_url": "https://vendor.example/api/v1/",
                        "api_key": f"{SENTINEL}-plain",
                    },
                    {
                        "type": "meditrak",
                        "name": "from-env",
                        "base_url": "https://vendor.example/api/v1/",
                        "api_key": "${MEDITRAK_KEY}",
                    },
                ]
            }
        )
    )
    warnings: list[str] = []
    load_config(path, env={"MEDITRAK_KEY": "x" * 8}, warnings=warnings)
    assert len(warnings) == 1, warnings
    assert "plain" in warnings[0] and "${PLAIN_API_KEY}" in warnings[0]
    assert SENTINEL not in warnings[0]


def test_plain_http_is_refused_unless_loopback_or_allowed() -> None:
    base = {"type": "meditrak", "name": "m", "api_key": "k" * 8}
    with pytest.raises(Exception, match="plain http"):
        build_config({"sources": [{**base, "base_url": "http://vendor.example/api/v1/"}]}, env={})
    build_config({"sources": [{**base, "base_url": "http://127.0.0.1:8000/api/v1/"}]}, env={})
    build_config(
        {
            "sources": [
                {**base, "base_url": "http://vendor.example/api/", "allow_insecure_http": True}
            ]
        },
        env={},
    )


def test_tls_is_verified_by_default_on_both_transports() -> None:
    import ssl

    from connector.config import HttpSettings
    from connector.sources.http import CountedAiohttpTransport, SourceClient

    transport = CountedAiohttpTransport()
    assert transport.ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert transport.ssl_context.check_hostname
    client = SourceClient("https://vendor.example/", HttpSettings(transport="httpx"))
    pool = client._client._transport
    assert isinstance(pool, httpx.AsyncHTTPTransport)
    context = pool._pool._ssl_context
    assert context is not None and context.verify_mode == ssl.CERT_REQUIRED


def test_health_endpoint_binds_loopback_by_default() -> None:
    assert DaemonSettings().health_host == "127.0.0.1"
    assert DaemonSettings().health_port is None, "the endpoint is off unless a port is given"
