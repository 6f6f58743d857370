"""File paths in the config (`store.url`, `category_rules`, `http.ca_bundle`) are relative to
the config file's directory, whatever the working directory; a config built in code (no file)
keeps them relative to the working directory. A bad `ca_bundle` is a config error, listed with
every other problem."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from typer.testing import CliRunner

from connector.config import build_config, load_config
from connector.errors import ConfigError
from connector.pipeline.categories import categorizer_for
from tests.conftest import write_config
from tests.test_tls import Pki

RULES = "rules:\n  - category: optical\n    keywords: [zumba]\n"


def source(name: str = "clinic", **fields: Any) -> dict[str, Any]:
    # Splose: a type whose items are categorised by description rules.
    return {
        "type": "splose",
        "name": name,
        "base_url": "https://api.splose.example/v1/",
        "api_key": "${SPLOSE_KEY:-k-123456}",
        **fields,
    }


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A deployment directory: the config file with its rules and the vendor's CA beside it."""
    site = tmp_path / "site"
    (site / "rules").mkdir(parents=True)
    (site / "rules" / "extra.yaml").write_text(RULES, encoding="utf-8")
    pki = Pki.create(site / "certs")
    assert pki.ca_file == site / "certs" / "ca.pem"
    return site


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The working directory of a daemon started from somewhere else."""
    directory = tmp_path / "elsewhere"
    directory.mkdir()
    monkeypatch.chdir(directory)
    return directory


def test_relative_paths_are_relative_to_the_config_file(site: Path, elsewhere: Path) -> None:
    config_file = write_config(
        site / "connector.yaml",
        {
            "store": {"url": "data/connector.db"},
            "sources": [
                source(
                    category_rules="rules/extra.yaml",
                    http={"ca_bundle": "${CA_DIR:-./certs}/ca.pem"},
                )
            ],
        },
    )
    config = load_config(config_file, env={})
    (clinic,) = config.sources
    assert clinic.category_rules == str(site / "rules" / "extra.yaml")
    assert clinic.http.ca_bundle == str(site / "certs" / "ca.pem")
    assert config.store.sqlalchemy_url() == f"sqlite:///{site / 'data' / 'connector.db'}"
    # The rules really are read from there.
    assert categorizer_for(clinic)(None, "Zumba class").rule == "keyword:optical/zumba"


def test_a_relative_config_path_still_gives_absolute_paths(
    site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`connector -c site/connector.yaml` from the parent directory: the paths must not depend
    on the working directory staying where it was when the file was read."""
    write_config(
        site / "connector.yaml",
        {
            "sources": [
                source(category_rules="rules/extra.yaml", http={"ca_bundle": "certs/ca.pem"})
            ]
        },
    )
    monkeypatch.chdir(tmp_path)
    config = load_config(Path("site/connector.yaml"), env={})
    monkeypatch.chdir(site / "rules")
    (clinic,) = config.sources
    assert clinic.category_rules == str(site / "rules" / "extra.yaml")
    assert clinic.http.ca_bundle == str(site / "certs" / "ca.pem")
    # No `store` at all: the default file sits next to the config, not in the working dir.
    assert config.store.sqlalchemy_url() == f"sqlite:///{site / 'connector.db'}"


def test_absolute_paths_and_database_urls_are_kept(site: Path, elsewhere: Path) -> None:
    url = "postgresql+psycopg://svc@db.internal/connector"
    ca = str(site / "certs" / "ca.pem")
    config_file = write_config(
        elsewhere / "connector.yaml",
        {"store": {"url": url}, "sources": [source(http={"ca_bundle": ca})]},
    )
    config = load_config(config_file, env={})
    assert config.store.sqlalchemy_url() == url
    assert config.sources[0].http.ca_bundle == ca


def test_without_a_file_paths_stay_relative_to_the_working_directory(
    site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = {
        "store": {"url": "./local.db"},
        "sources": [source(category_rules="rules/extra.yaml", http={"ca_bundle": "certs/ca.pem"})],
    }
    monkeypatch.chdir(site)
    config = build_config(raw, env={})
    assert config.sources[0].http.ca_bundle == "certs/ca.pem"
    assert config.sources[0].category_rules == "rules/extra.yaml"
    assert config.store.sqlalchemy_url() == "sqlite:///local.db"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"http\.ca_bundle: no such file: certs/ca\.pem"):
        build_config(raw, env={})


def test_ca_bundle_problems_are_listed_with_every_other_problem(
    site: Path, elsewhere: Path
) -> None:
    (site / "certs" / "notes.pem").write_text("ask the vendor for the CA\n", encoding="utf-8")
    pki = Pki.create(site / "der")
    (site / "certs" / "ca.der").write_bytes(pki.ca_cert.public_bytes(serialization.Encoding.DER))
    config_file = write_config(
        site / "connector.yaml",
        {
            "sources": [
                source("missing", http={"ca_bundle": "certs/vendor-ca.pem"}),
                source("not-pem", http={"ca_bundle": "certs/notes.pem"}),
                source("der", http={"ca_bundle": "certs/ca.der"}),
                source("a-dir", http={"ca_bundle": "certs"}),
                source("bad-lookback", lookback="soon", http={"ca_bundle": "certs/ca.pem"}),
                source("no-key", api_key="${NO_SUCH_KEY}"),
            ]
        },
    )
    with pytest.raises(ConfigError) as caught:
        load_config(config_file, env={})
    problems = caught.value.problems
    certs = site / "certs"
    expected = [
        f"sources[0] (missing).http.ca_bundle: no such file: {certs / 'vendor-ca.pem'}",
        f"sources[1] (not-pem).http.ca_bundle: {certs / 'notes.pem'} holds no PEM certificate",
        f"sources[2] (der).http.ca_bundle: {certs / 'ca.der'} holds no PEM certificate",
        f"sources[3] (a-dir).http.ca_bundle: not a file: {certs}",
        "sources[4] (bad-lookback).lookback: not a duration",
        "sources[5].api_key: environment variable NO_SUCH_KEY is not set",
    ]
    for needle in expected:
        assert any(p.startswith(needle) for p in problems), (needle, problems)
    assert len(problems) == len(expected), problems
    assert "openssl x509 -inform der" in problems[2]


def test_categories_explain_from_another_directory_uses_the_configured_rules(
    site: Path, elsewhere: Path
) -> None:
    """The CLI, started elsewhere with `-c`, reads the source's rules beside its config."""
    from connector.cli.app import get_app

    config_file = write_config(
        site / "connector.yaml", {"sources": [source(category_rules="rules/extra.yaml")]}
    )
    result = CliRunner().invoke(
        get_app(), ["-c", str(config_file), "categories", "explain", "Zumba", "-s", "clinic"]
    )
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == "=> optical  (rule keyword:optical/zumba)"
