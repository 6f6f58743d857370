"""The `rest` source's configuration: every problem listed at once with its path in the YAML,
the shipped examples valid, secrets known for scrubbing; and `connector mapping check`, which
fetches one page and shows which vendor value fed which canonical field, patient data masked."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from connector.config import build_config, load_config
from connector.errors import ConfigError
from connector.sandbox import SandboxOptions, SandboxServer
from connector.store.store import sqlite_url_for
from tests.conftest import invoke_cli, seed_registry, write_config
from tests.test_rest_equivalence import EXAMPLES, rest_source

BROKEN: dict[str, Any] = {
    "type": "rest",
    "name": "broken",
    "base_url": "https://billing.example.com/api/",
    "auth": {"kind": "bearer"},
    "list": {"path": "/invoices", "records": "data"},
    "detail": {"path": "invoices/id"},
    "pagination": {"kind": "page", "page_size": 3},
    "incremental": {"param": "since", "format": "yyyy"},
    "status_map": {"PAID": "settled"},
    "fields": {
        "id": "id",
        "invoice_date": {"path": "date", "format": "dd/mm"},
        "total_amount": {"path": "total_cents", "unit": "pennies"},
        "status": "status",
        "patient": {"name": {"path": "a..b"}},
        "items": {
            "path": "lines",
            "description": "text",
            "unit_price": {"path": "price", "unit": "pennies", "scale": 9},
            "quantity": {"value": 0},
            "colour": "red",
        },
    },
}


def problems_of(*sources: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        build_config({"sources": list(sources)}, env={})
    return caught.value.problems


def test_every_problem_of_a_rest_source_is_listed_at_once_with_its_yaml_path() -> None:
    fine = {"type": "meditrak", "name": "fine", "base_url": "https://x.example/", "api_key": "k"}
    found = problems_of(fine, BROKEN)
    where = "sources[1] (broken)."
    expected = [
        "status_map.PAID: Input should be",
        "auth.bearer.token: Field required",
        "list.path: '/invoices' must be relative to base_url",
        "detail.path: the detail path must contain {id}",
        "pagination.page_size: Extra inputs are not permitted",
        "incremental.format: unknown format 'yyyy'",
        "fields.invoice_date.format: unknown format 'dd/mm'",
        "fields.total_amount.unit: unknown money unit 'pennies'",
        "fields.patient.name.path.0: 'a..b' is not a dotted path",
        "fields.items.unit_price.unit: unknown money unit 'pennies'",
        "fields.items.unit_price.scale: Input should be less than or equal to 6",
        "fields.items.quantity.value: Input should be greater than 0",
        "fields.items.colour: Extra inputs are not permitted",
    ]
    for start in expected:
        assert any(p.startswith(where + start) for p in found), (start, found)
    assert len(found) == len(expected), found


def test_problems_across_keys_are_listed_together_with_their_keys() -> None:
    source = {
        **yaml.safe_load((EXAMPLES / "meditrak_import.rest.yaml").read_text())["sources"][0],
        "base_url": "https://billing.example.com/api/",
        "auth": {"kind": "bearer", "token": "t"},
        "pagination": {"kind": "next_link"},
        "status_map": {},
    }
    found = problems_of(source)
    where = "sources[0] (meditrak_import)."
    assert found == [
        where + "list.next: pagination next_link needs where the next link is",
        where + "status_map: list the vendor's status words (none are built in)",
    ]


def test_field_errors_and_problems_across_keys_are_listed_in_the_same_pass() -> None:
    source = {
        **yaml.safe_load((EXAMPLES / "invoice_api.rest.yaml").read_text())["sources"][0],
        "base_url": "https://billing.example.com/api/v1/",
        "pagination": {"kind": "next_link"},
    }
    source["auth"] = {**source["auth"], "username": "u", "password": "p"}
    source["auth"]["token_path"] = "http://login.example.com/token"
    source["list"] = {**source["list"], "total": None}
    source["fields"] = {**source["fields"], "total_amount": {"path": "t", "unit": "pennies"}}
    found = problems_of(source)
    where = "sources[0] (invoice_api)."
    assert found == [
        where + "fields.total_amount.unit: unknown money unit 'pennies' (decimal or minor)",
        where + "list.next: pagination next_link needs where the next link is",
        where + "auth.token_path: plain http to another host; use https",
    ]


def test_problems_across_keys_read_the_raw_yaml_defensively() -> None:
    source = {
        **yaml.safe_load((EXAMPLES / "meditrak_import.rest.yaml").read_text())["sources"][0],
        "base_url": "https://billing.example.com/api/",
        "auth": {"kind": "oauth2_password", "token_path": 5, "password": "p"},
        "list": {"path": "invoices", "records": "data", "total": ["not", "a", "path"]},
        "pagination": {"kind": "single_array", "page_param": 3},
    }
    found = problems_of(source)
    where = "sources[0] (meditrak_import)."
    assert where + "list.records: pagination single_array reads a plain JSON array" in found
    # A key of the wrong shape has its own error, and no guess across keys besides.
    (total,) = [p for p in found if p.startswith(where + "list.total")]
    assert total.startswith(where + "list.total: Input should be a valid string"), total
    assert any(p.startswith(where + "auth.oauth2_password.username: Field") for p in found)
    assert any(p.startswith(where + "pagination.page_param: Input should be") for p in found)
    assert all(p.startswith(where) for p in found)


def test_a_token_url_in_clear_text_to_another_host_is_refused() -> None:
    source = yaml.safe_load((EXAMPLES / "invoice_api.rest.yaml").read_text())["sources"][0]
    source["base_url"] = "https://billing.example.com/api/v1/"
    source["auth"] = {
        **source["auth"],
        "username": "user",
        "password": "pw",
        "token_path": "http://login.example.com/token",
    }
    (problem,) = problems_of(source)
    assert (
        problem == "sources[0] (invoice_api).auth.token_path: plain http to another host; use https"
    )


def test_the_shipped_examples_load_and_know_their_nested_secrets() -> None:
    env = {
        "MEDITRAK_IMPORT_URL": "https://a.example/api/",
        "MEDITRAK_IMPORT_KEY": "key-value",
        "INVOICE_API_URL": "https://b.example/api/v1/",
        "INVOICE_API_USER": "user",
        "INVOICE_API_PASSWORD": "password-value",
    }
    secrets = set()
    for path in sorted(EXAMPLES.glob("*.rest.yaml")):
        config = load_config(path, env=env)
        assert [s.type for s in config.sources] == ["rest"]
        secrets.update(config.secrets())
    assert secrets == {"key-value", "password-value"}


@pytest.fixture(scope="module")
def sandbox() -> Any:
    options = SandboxOptions(invoices=40, seed=5, defect_rate=0.3, dialects=("invoice_api",))
    with SandboxServer(options) as server:
        yield server


def test_mapping_check_shows_each_vendor_value_beside_its_canonical_field_masked(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    raw = {**rest_source(sandbox, "invoice_api"), "page_size": 10}
    path = write_config(tmp_path / "c.yaml", {"store": {"url": "s.db"}, "sources": [raw]})
    shown = invoke_cli(path, "mapping", "check", "-s", "invoice_api", "-n", "10", "--json")
    assert shown.exit_code == 0, shown.output
    report = json.loads(shown.output)
    assert len(report["records"]) == 10
    verdicts = {record["verdict"] for record in report["records"]}
    assert verdicts == {"accepted", "quarantined"}
    first = report["records"][0]
    rows = {row["canonical"]: row for row in first["fields"]}
    assert rows["invoice_date"]["vendor_path"] == "issue_date"
    assert rows["status"]["vendor_value"] == rows["status"]["read_as"]
    assert rows["items[0].unit_price"]["vendor_path"] == "unit_price"
    # Patient data is masked in every column; no name of the dataset appears anywhere.
    assert re.fullmatch(r"[A-Z]\*+ [A-Z]\*+", rows["patient.name"]["canonical_value"])
    assert rows["patient.policy_number"]["canonical_value"].startswith("POL-**")
    names = {inv.patient_name for inv in sandbox.dataset("invoice_api")}
    policies = {inv.policy_number for inv in sandbox.dataset("invoice_api")}
    leaked = [text for text in names | policies if text and text in shown.output]
    assert not leaked
    quarantined = [r for r in report["records"] if r["verdict"] == "quarantined"]
    assert all(record["issues"] for record in quarantined)


def test_mapping_check_prints_a_table_per_record(sandbox: SandboxServer, tmp_path: Path) -> None:
    raw = {**rest_source(sandbox, "invoice_api"), "page_size": 5}
    path = write_config(tmp_path / "c.yaml", {"store": {"url": "s.db"}, "sources": [raw]})
    shown = invoke_cli(path, "mapping", "check", "-s", "invoice_api", "-n", "2")
    assert shown.exit_code == 0, shown.output
    assert shown.output.count("invoice_api record ") == 2
    assert "vendor path" in shown.output and "issue_date" in shown.output


def test_mapping_check_reads_a_hand_written_vendor_by_its_declared_fields(
    tmp_path: Path,
) -> None:
    options = SandboxOptions(invoices=10, seed=5, dialects=("meditrak_import",))
    with SandboxServer(options) as server:
        raw = server.dialect("meditrak_import").connector_source(server.api_url("meditrak_import"))
        path = write_config(tmp_path / "c.yaml", {"store": {"url": "s.db"}, "sources": [raw]})
        shown = invoke_cli(path, "mapping", "check", "-s", "meditrak_import", "-n", "1", "--json")
    assert shown.exit_code == 0, shown.output
    (record,) = json.loads(shown.output)["records"]
    rows = {row["canonical"]: row for row in record["fields"]}
    assert rows["total_amount"]["vendor_path"] == "total_amount"
    assert rows["total_amount"]["vendor_value"] == rows["total_amount"]["canonical_value"] or (
        str(rows["total_amount"]["vendor_value"]) == rows["total_amount"]["canonical_value"]
    )


def test_mapping_check_names_an_unreachable_source(tmp_path: Path) -> None:
    source = yaml.safe_load((EXAMPLES / "meditrak_import.rest.yaml").read_text())["sources"][0]
    raw = {
        **source,
        "base_url": "http://127.0.0.1:9/api/",
        "auth": {"kind": "bearer", "token": "t"},
        "http": {"max_retries": 0, "timeout": "2s"},
    }
    path = write_config(tmp_path / "c.yaml", {"store": {"url": "s.db"}, "sources": [raw]})
    shown = invoke_cli(path, "mapping", "check", "-s", "meditrak_import")
    assert shown.exit_code == 1, shown.output


yaml_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text(max_size=8)
    | st.sampled_from(
        ["id", "a.b", "minor", "pennies", "iso_date", "%d/%m/%Y", "bearer", "page", "{id}"]
    ),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "path",
                    "unit",
                    "scale",
                    "format",
                    "value",
                    "join",
                    "required",
                    "kind",
                    "id",
                    "items",
                    "description",
                    "unit_price",
                    "total_amount",
                    "status",
                    "amount",
                ]
            ),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@given(fields=yaml_values, auth=yaml_values, pagination=yaml_values, listing=yaml_values)
def test_any_yaml_under_a_rest_source_loads_or_lists_problems_never_crashes(
    fields: Any, auth: Any, pagination: Any, listing: Any
) -> None:
    source = {
        "type": "rest",
        "name": "fuzzed",
        "base_url": "https://billing.example.com/",
        "auth": auth,
        "list": listing,
        "pagination": pagination,
        "status_map": {"x": "paid"},
        "fields": fields,
    }
    try:
        build_config({"sources": [source]}, env={})
    except ConfigError as exc:
        assert exc.problems
        assert all(p.startswith("sources[0] (fuzzed)") for p in exc.problems), exc.problems


def test_mapping_check_consults_the_registry_when_asked(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    raw = {**rest_source(sandbox, "invoice_api"), "page_size": 10}
    path = write_config(tmp_path / "c.yaml", {"store": {"url": "s.db"}, "sources": [raw]})
    # An empty registry: every policy number is unknown to it.
    empty = invoke_cli(path, "mapping", "check", "-s", "invoice_api", "--registry", "--json")
    assert empty.exit_code == 0, empty.output
    codes = {i["code"] for r in json.loads(empty.output)["records"] for i in r["issues"]}
    assert "POLICY_UNKNOWN" in codes
    seed_registry(sandbox, sqlite_url_for(tmp_path / "s.db"))
    seeded = invoke_cli(path, "mapping", "check", "-s", "invoice_api", "--registry", "--json")
    report = json.loads(seeded.output)
    assert report["note"] is None
    codes = {i["code"] for r in report["records"] for i in r["issues"]}
    assert "POLICY_UNKNOWN" not in codes
    assert any(r["verdict"] == "accepted" for r in report["records"])
