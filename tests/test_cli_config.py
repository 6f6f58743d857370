"""`connector --version` and `connector config check`, run as the installed executable: every
config problem named in one run, the documented exit codes, the --json shape, and no secret
(source credentials or the store URL's password) ever printed."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

from tests.conftest import write_config

Run = Callable[..., subprocess.CompletedProcess[str]]

STORE_PASSWORD = "s3cr3t-store-pw"
API_KEY = "plain-api-key-123"


def _source(name: str, **fields: Any) -> dict[str, Any]:
    # A loopback base URL: valid without TLS, and never contacted (the check has no network).
    return {
        "name": name,
        "type": "meditrak",
        "base_url": "http://127.0.0.1:9/",
        "api_key": "${CHECK_API_KEY}",
        **fields,
    }


def _valid(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "store": {"url": str(tmp_path / "never-created.db")},
        "sources": [_source("north"), _source("south")],
        **extra,
    }


ENV = {"CHECK_API_KEY": "from-the-environment"}


def test_version_prints_the_installed_version(connector: Run) -> None:
    done = connector("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"invoice-connector {version('invoice-connector')}"


def test_a_valid_config_is_summarised_and_exits_0_without_touching_the_store(
    connector: Run, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "c.yaml", _valid(tmp_path))
    done = connector("-c", str(config), "config", "check", env=ENV)
    assert done.returncode == 0, done.stderr
    assert "config OK: 2 sources (north, south), store " in done.stdout
    assert str(tmp_path / "never-created.db") in done.stdout
    assert not (tmp_path / "never-created.db").exists()


def test_the_config_env_var_names_the_file(connector: Run, tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", _valid(tmp_path))
    done = connector("config", "check", env={**ENV, "CONNECTOR_CONFIG": str(config)})
    assert done.returncode == 0, done.stderr
    assert "config OK: 2 sources" in done.stdout


def test_every_problem_is_named_in_one_run_and_exits_2(connector: Run, tmp_path: Path) -> None:
    document = _valid(tmp_path)
    document["sources"] = [
        {**_source("bad-type"), "type": "no_such_vendor"},
        _source("bad-duration", lookback="five minutes"),
        _source("bad-env", api_key="${CHECK_UNSET_VARIABLE}"),
    ]
    config = write_config(tmp_path / "c.yaml", document)
    done = connector("-c", str(config), "config", "check", env=ENV)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "3 problem(s)" in done.stderr
    assert "sources[0] (bad-type).type: 'no_such_vendor' is not one of" in done.stderr
    assert "sources[1] (bad-duration).lookback" in done.stderr
    assert "CHECK_UNSET_VARIABLE is not set" in done.stderr
    assert "config OK" not in done.stdout


def test_an_unreadable_file_exits_2(connector: Run, tmp_path: Path) -> None:
    done = connector("-c", str(tmp_path / "missing.yaml"), "config", "check")
    assert done.returncode == 2
    assert "cannot read" in done.stderr


def test_a_plaintext_secret_warns_exits_0_and_1_with_strict(connector: Run, tmp_path: Path) -> None:
    document = _valid(tmp_path)
    document["sources"][0]["api_key"] = API_KEY
    config = write_config(tmp_path / "c.yaml", document)
    done = connector("-c", str(config), "config", "check", env=ENV)
    assert done.returncode == 0, done.stderr
    assert "sources (north).api_key holds a secret in plain text" in done.stderr
    assert "config OK: 2 sources" in done.stdout
    strict = connector("-c", str(config), "config", "check", "--strict", env=ENV)
    assert strict.returncode == 1
    assert "holds a secret in plain text" in strict.stderr
    for output in (done.stdout, done.stderr, strict.stdout, strict.stderr):
        assert API_KEY not in output


def test_json_has_the_documented_shape(connector: Run, tmp_path: Path) -> None:
    document = _valid(tmp_path)
    document["sources"][1]["api_key"] = API_KEY
    good = write_config(tmp_path / "good.yaml", document)
    done = connector("-c", str(good), "config", "check", "--json", env=ENV)
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    assert payload["ok"] is True
    assert payload["problems"] == []
    assert len(payload["warnings"]) == 1 and "(south).api_key" in payload["warnings"][0]
    assert payload["sources"] == [
        {"name": "north", "type": "meditrak", "enabled": True},
        {"name": "south", "type": "meditrak", "enabled": True},
    ]
    assert API_KEY not in done.stdout

    bad = write_config(tmp_path / "bad.yaml", {"sources": [{"name": "x", "type": "nope"}]})
    done = connector("-c", str(bad), "config", "check", "--json")
    assert done.returncode == 2
    payload = json.loads(done.stdout)
    assert payload["ok"] is False
    assert len(payload["problems"]) == 1 and "'nope' is not one of" in payload["problems"][0]
    assert payload["sources"] == []


def test_the_store_password_is_never_printed(connector: Run, tmp_path: Path) -> None:
    url = f"postgresql+psycopg://ops:{STORE_PASSWORD}@db.internal:5432/connector?sslmode=require"
    config = write_config(tmp_path / "c.yaml", {**_valid(tmp_path), "store": {"url": url}})
    text = connector("-c", str(config), "config", "check", env=ENV)
    as_json = connector("-c", str(config), "config", "check", "--json", env=ENV)
    assert text.returncode == 0 and as_json.returncode == 0, (text.stderr, as_json.stderr)
    assert "store postgresql+psycopg://ops:***@db.internal:5432/connector" in text.stdout
    assert json.loads(as_json.stdout)["store"].startswith("postgresql+psycopg://ops:***@")
    for output in (text.stdout, text.stderr, as_json.stdout, as_json.stderr):
        assert STORE_PASSWORD not in output


def test_a_password_in_the_store_url_query_is_masked_too(connector: Run, tmp_path: Path) -> None:
    url = f"postgresql+psycopg://db.internal/connector?user=ops&password={STORE_PASSWORD}"
    config = write_config(tmp_path / "c.yaml", {**_valid(tmp_path), "store": {"url": url}})
    done = connector("-c", str(config), "config", "check", env=ENV)
    assert done.returncode == 0, done.stderr
    assert "password=***" in done.stdout
    assert STORE_PASSWORD not in done.stdout + done.stderr
