"""Configuration: YAML with `${ENV}` interpolation, every problem reported at once, TLS unless
the vendor is on loopback, secrets kept out of reprs."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from connector.config import AppConfig, build_config, load_config, parse_duration
from connector.errors import ConfigError

VALID_YAML = """\
store:
  url: ${STORE_PATH:-data/connector.db}
logging:
  level: warning
sources:
  - type: meditrak
    name: meditrak
    base_url: https://api.meditrak.example/api/v1
    api_key: ${MEDITRAK_KEY}
    page_size: 50
    http:
      timeout: 15s
      max_retries: 2
      backoff_base: 250ms
    lookback: 10m
  - type: meditrak_import
    name: partner
    base_url: ${PARTNER_URL:-https://partner.example/api/}
    api_key: "${PARTNER_KEY:-}"
    status_map:
      Refunded: void
"""


def load_text(tmp_path: Path, text: str, env: dict[str, str]) -> AppConfig:
    path = tmp_path / "connector.yaml"
    path.write_text(text, encoding="utf-8")
    return load_config(path, env=env)


def test_yaml_with_env_references_and_defaults(tmp_path: Path) -> None:
    config = load_text(tmp_path, VALID_YAML, {"MEDITRAK_KEY": "s3cret-key"})
    meditrak, partner = config.sources
    assert meditrak.secrets() == ["s3cret-key"]
    assert meditrak.base_url == "https://api.meditrak.example/api/v1/"
    assert meditrak.page_size == 50
    assert meditrak.http.timeout == timedelta(seconds=15)
    assert meditrak.http.backoff_base == timedelta(milliseconds=250)
    assert meditrak.lookback == timedelta(minutes=10)
    assert partner.base_url == "https://partner.example/api/"
    assert partner.secrets() == []  # ${PARTNER_KEY:-} is an explicit empty default
    assert partner.status_map == {"Refunded": "void"}
    assert config.logging.level == "warning"
    # A relative SQLite path is relative to the config file, not to the working directory.
    assert config.store.sqlalchemy_url() == f"sqlite:///{tmp_path / 'data' / 'connector.db'}"


def test_env_values_replace_defaults(tmp_path: Path) -> None:
    env = {
        "MEDITRAK_KEY": "k1",
        "PARTNER_KEY": "k2",
        "PARTNER_URL": "http://127.0.0.1:9000/api",
        "STORE_PATH": "postgresql+psycopg://svc@db.internal/connector",
    }
    config = load_text(tmp_path, VALID_YAML, env)
    assert config.source("partner").base_url == "http://127.0.0.1:9000/api/"
    assert config.source("partner").secrets() == ["k2"]
    assert config.store.sqlalchemy_url() == "postgresql+psycopg://svc@db.internal/connector"
    assert sorted(config.secrets()) == ["k1", "k2"]


def test_secrets_never_show_in_reprs(tmp_path: Path) -> None:
    config = load_text(tmp_path, VALID_YAML, {"MEDITRAK_KEY": "s3cret-key"})
    assert "s3cret-key" not in repr(config)
    assert "s3cret-key" not in str(config.model_dump())


def test_an_invalid_config_lists_every_problem_at_once() -> None:
    raw = {
        "store": {"url": "x.db", "pool": 3},
        "sources": [
            {"type": "carrier_pigeon", "name": "birds", "base_url": "https://x.example/"},
            {"type": "meditrak", "name": "meditrak", "base_url": "https://m.example/"},
            {
                "type": "meditrak_import",
                "name": "partner",
                "base_url": "ftp://partner.example/",
                "api_key": "k",
            },
            {
                "type": "meditrak_import",
                "name": "other",
                "base_url": "https://o.example/",
                "api_key": "${OTHER_KEY}",
                "page_size": 0,
                "timezone": "Mars/Olympus",
            },
            {"type": "meditrak_import", "name": "Bad Name!", "base_url": "https://b.example/",
             "api_key": "k"},
            {"type": "meditrak_import", "name": "other", "base_url": "https://c.example/",
             "api_key": "k"},
        ],
    }  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        build_config(raw, env={})
    problems = caught.value.problems
    text = str(caught.value)

    def one_problem(*needles: str) -> None:
        matching = [p for p in problems if all(n in p for n in needles)]
        assert len(matching) == 1, (needles, problems)

    one_problem("sources[0]", "type", "carrier_pigeon", "meditrak")
    one_problem("sources[1] (meditrak)", "api_key")
    one_problem("sources[2] (partner)", "base_url", "ftp://partner.example/")
    one_problem("environment variable OTHER_KEY is not set")
    one_problem("sources[3] (other)", "page_size")
    one_problem("sources[3] (other)", "timezone", "Mars/Olympus")
    one_problem("sources[4]", "name")
    one_problem("sources[5]", "duplicate source name 'other'")
    one_problem("store.pool")
    assert len(problems) == 9, problems
    assert f"{len(problems)} problem(s)" in text
    assert all(p in text for p in problems)


def test_unknown_type_missing_key_bad_url_and_unset_env_in_one_error(tmp_path: Path) -> None:
    text = """\
sources:
  - {type: quickbooks, name: qb, base_url: "https://qb.example/"}
  - {type: meditrak, name: meditrak, base_url: "https://m.example/api/v1/"}
  - {type: meditrak_import, name: imp, base_url: "not a url", api_key: "${IMPORT_KEY}"}
"""
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text, {})
    problems = caught.value.problems
    assert len(problems) == 4, problems
    assert any("quickbooks" in p for p in problems)
    assert any("(meditrak).api_key" in p and "required" in p.lower() for p in problems)
    assert any("(imp).base_url" in p and "not a url" in p for p in problems)
    assert any("IMPORT_KEY" in p and "not set" in p for p in problems)
    assert caught.value.origin == str(tmp_path / "connector.yaml")


@pytest.mark.parametrize(
    "url",
    [
        "http://api.vendor.example/",
        "http://10.0.0.5:8000/api/",
        "http://[2001:db8::1]/api/",
        "http://localhost.evil.example/",
    ],
)
def test_plain_http_to_a_remote_host_is_refused(url: str) -> None:
    raw = {"sources": [{"type": "meditrak", "name": "m", "base_url": url, "api_key": "k"}]}
    with pytest.raises(ConfigError) as caught:
        build_config(raw, env={})
    (problem,) = caught.value.problems
    assert "plain http" in problem and "allow_insecure_http" in problem


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8700/api/v1/", "http://localhost:8700/", "http://[::1]:80/"]
)
def test_plain_http_to_loopback_is_allowed(url: str) -> None:
    raw = {"sources": [{"type": "meditrak", "name": "m", "base_url": url, "api_key": "k"}]}
    assert build_config(raw, env={}).sources[0].base_url.startswith("http://")


def test_allow_insecure_http_is_an_explicit_opt_in() -> None:
    source = {
        "type": "meditrak",
        "name": "m",
        "base_url": "http://legacy.vendor.example/api/v1/",
        "api_key": "k",
        "allow_insecure_http": True,
    }
    config = build_config({"sources": [source]}, env={})
    assert config.sources[0].allow_insecure_http


def test_vendor_specific_fields_are_validated_by_the_adapter_config() -> None:
    raw = {
        "sources": [
            {
                "type": "meditrak",
                "name": "m",
                "base_url": "https://m.example/",
                "api_key": "k",
                "page_size": 500,  # MediTrak caps limit at 100
                "status_filter": "archived",
                "surprise": 1,
            },
            {
                "type": "meditrak_import",
                "name": "i",
                "base_url": "https://i.example/",
                "api_key": "k",
                "detail_path": "invoices/by-id",
            },
        ]
    }
    with pytest.raises(ConfigError) as caught:
        build_config(raw, env={})
    problems = caught.value.problems
    assert len(problems) == 4, problems
    assert any("page_size" in p for p in problems)
    assert any("status_filter" in p for p in problems)
    assert any("surprise" in p for p in problems)
    assert any("{id}" in p for p in problems)


def test_unreadable_or_non_yaml_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml", env={})
    broken = tmp_path / "broken.yaml"
    broken.write_text("sources: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken, env={})
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listed, env={})


def test_an_empty_file_is_a_config_with_no_sources(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("", encoding="utf-8")
    config = load_config(empty, env={})
    assert config.sources == ()
    with pytest.raises(ConfigError, match="no source named 'x'"):
        config.source("x")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), (90, 90), ("250ms", 0.25), ("15m", 900), ("2h", 7200), ("1d", 86400)],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


def test_bad_durations_are_listed_like_any_other_problem() -> None:
    raw = {
        "sources": [
            {
                "type": "meditrak",
                "name": "m",
                "base_url": "https://m.example/",
                "api_key": "k",
                "lookback": "soon",
                "http": {"timeout": "-5s"},
            }
        ]
    }
    with pytest.raises(ConfigError) as caught:
        build_config(raw, env={})
    assert len(caught.value.problems) == 2, caught.value.problems
