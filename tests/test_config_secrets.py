"""Plain-text secret warnings see every secret of a source, at any depth: a `rest` source's
`auth.password` written into the file is named by its YAML path, one given as `${ENV_VAR}` is
not, and no warning ever shows the secret itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from connector.config import load_config
from tests.conftest import write_config

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SECRET = "s3cret-value-never-shown"


def rest_source(name: str, auth: dict[str, Any]) -> dict[str, Any]:
    text = (EXAMPLES / "invoice_api.rest.yaml").read_text(encoding="utf-8")
    source: dict[str, Any] = yaml.safe_load(text)["sources"][0]
    return {**source, "name": name, "base_url": "https://billing.example.com/api/", "auth": auth}


def warnings_for(tmp_path: Path, *sources: dict[str, Any], env: dict[str, str]) -> list[str]:
    path = write_config(tmp_path / "c.yaml", {"store": {"url": "s.db"}, "sources": list(sources)})
    found: list[str] = []
    load_config(path, env=env, warnings=found)
    assert all(SECRET not in warning for warning in found), found
    return found


def test_a_nested_auth_secret_in_plain_text_is_named_by_its_yaml_path(tmp_path: Path) -> None:
    auth = {"kind": "oauth2_password", "token_path": "token", "username": "u", "password": SECRET}
    (warning,) = warnings_for(tmp_path, rest_source("acme", auth), env={})
    assert "sources (acme).auth.password holds a secret in plain text" in warning
    assert "write password: ${ACME_AUTH_PASSWORD}" in warning
    assert warning.startswith(str(tmp_path / "c.yaml"))


def test_every_kind_of_nested_secret_is_seen(tmp_path: Path) -> None:
    sources = [
        rest_source("bearer-one", {"kind": "bearer", "token": SECRET}),
        rest_source("header", {"kind": "header", "header": "X-Api-Key", "key": SECRET}),
        rest_source(
            "client",
            {
                "kind": "oauth2_client_credentials",
                "token_path": "oauth/token",
                "client_id": "id",
                "client_secret": SECRET,
            },
        ),
    ]
    found = warnings_for(tmp_path, *sources, env={})
    named = [warning.split(": ", 1)[1].split(" holds")[0] for warning in found]
    assert named == [
        "sources (bearer-one).auth.token",
        "sources (header).auth.key",
        "sources (client).auth.client_secret",
    ]
    assert "${BEARER_ONE_AUTH_TOKEN}" in found[0]


def test_secrets_given_as_environment_references_do_not_warn(tmp_path: Path) -> None:
    auth = {
        "kind": "oauth2_password",
        "token_path": "token",
        "username": "u",
        "password": "${ACME_PASSWORD}",
    }
    defaulted = {"kind": "bearer", "token": "${OTHER_TOKEN:-fallback}"}
    found = warnings_for(
        tmp_path,
        rest_source("acme", auth),
        rest_source("other", defaulted),
        env={"ACME_PASSWORD": SECRET},
    )
    assert found == []


def test_top_level_secrets_still_warn_beside_nested_ones(tmp_path: Path) -> None:
    hand = {
        "type": "meditrak_import",
        "name": "north",
        "base_url": "https://north.example.com/api/",
        "api_key": SECRET,
    }
    nested = rest_source("south", {"kind": "bearer", "token": SECRET})
    found = warnings_for(tmp_path, hand, nested, env={})
    assert len(found) == 2
    assert "sources (north).api_key holds a secret in plain text" in found[0]
    assert "sources (south).auth.token holds a secret in plain text" in found[1]


def test_a_source_without_auth_secrets_warns_nothing(tmp_path: Path) -> None:
    found = warnings_for(tmp_path, rest_source("open", {"kind": "none"}), env={})
    assert found == []
