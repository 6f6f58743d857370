"""`connector schema`: the JSON Schema it prints accepts every record a real sync exports (and
rejects broken ones), and the field mapping of every built-in source type names every canonical
field. In-process through a Typer app holding only the command, and as the real executable.

jsonschema is not a dependency, so `conforms` checks the keywords pydantic's schema uses (type,
enum, required, properties, additionalProperties, items, minItems, minLength, $ref, anyOf,
format date) itself; `test_checker_rejects_broken_records` shows it is not vacuous.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.testing import CliRunner, Result

from connector.cli import schema
from connector.config import build_config
from connector.mapping.kit import CANONICAL_FIELDS
from connector.sandbox import SandboxOptions, SandboxServer
from connector.store import Store
from tests.conftest import FAST_HTTP, seed_registry, sources_for, sync_wired, write_config
from tests.test_rest_equivalence import EXAMPLES

BUILTIN_TYPES = ("bio_ecko", "citabox", "invoice_api", "meditrak", "meditrak_import", "splose")
Run = Callable[..., subprocess.CompletedProcess[str]]
JSON_TYPES: dict[str, type | tuple[type, ...]] = {
    "string": str,
    "object": dict,
    "array": list,
    "null": type(None),
    "boolean": bool,
    "integer": int,
    "number": (int, float),
}


def invoke(*args: str) -> Result:
    app = typer.Typer()
    app.add_typer(schema.commands)
    return CliRunner().invoke(app, list(args))


def problems(value: Any, node: dict[str, Any], root: dict[str, Any], at: str = "$") -> list[str]:
    """Where `value` breaks the JSON Schema `node` (the subset pydantic emits)."""
    if "$ref" in node:
        name = node["$ref"].removeprefix("#/$defs/")
        return problems(value, root["$defs"][name], root, at)
    if "anyOf" in node:
        if any(not problems(value, option, root, at) for option in node["anyOf"]):
            return []
        return [f"{at}: matches no anyOf option"]
    kinds = node.get("type")
    if kinds is not None:
        names = kinds if isinstance(kinds, list) else [kinds]
        if not any(isinstance(value, JSON_TYPES[n]) for n in names):
            return [f"{at}: {type(value).__name__} is not {kinds}"]
    found = []
    if "enum" in node and value not in node["enum"]:
        found.append(f"{at}: {value!r} not in enum")
    if isinstance(value, str):
        if len(value) < node.get("minLength", 0):
            found.append(f"{at}: shorter than {node['minLength']}")
        if node.get("format") == "date" and not _parses(date.fromisoformat, value):
            found.append(f"{at}: not a date")
        if node.get("format") == "date-time" and not _parses(datetime.fromisoformat, value):
            found.append(f"{at}: not a date-time")
    if isinstance(value, list):
        if len(value) < node.get("minItems", 0):
            found.append(f"{at}: fewer than {node['minItems']} items")
        for index, element in enumerate(value):
            found += problems(element, node.get("items", {}), root, f"{at}[{index}]")
    if isinstance(value, dict):
        properties = node.get("properties", {})
        found += [f"{at}: {key} missing" for key in node.get("required", ()) if key not in value]
        for key, element in value.items():
            if key in properties:
                found += problems(element, properties[key], root, f"{at}.{key}")
            elif node.get("additionalProperties") is False:
                found.append(f"{at}: {key} not allowed")
    return found


def _parses(parse: Callable[[str], object], text: str) -> bool:
    try:
        parse(text)
    except ValueError:
        return False
    return True


@pytest.fixture(scope="module")
def json_schema() -> dict[str, Any]:
    done = invoke("schema")
    assert done.exit_code == 0, done.output
    parsed: dict[str, Any] = json.loads(done.output)
    return parsed


@dataclass
class Synced:
    config_path: Path
    records: list[dict[str, Any]]


@pytest.fixture(scope="module")
def synced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Synced]:
    """Every sandbox vendor synced once into SQLite, its invoices as `export -f jsonl` writes
    them (the same call, through JSON text), and a config naming the sources."""
    directory = tmp_path_factory.mktemp("schema")
    options = SandboxOptions(invoices=15, seed=16, defect_rate=0.0)
    with SandboxServer(options) as server:
        sources = sources_for(server, http=FAST_HTTP)
        document = {"store": {"url": str(directory / "store.db")}, "sources": sources}
        config_path = write_config(directory / "connector.yaml", document)
        config = build_config(document, env={})
        seed_registry(server, config.store.sqlalchemy_url())
        with Store(config.store.sqlalchemy_url()) as store:
            results = sync_wired(config, store)
            assert all(r.ok for r in results.values()), [r.error for r in results.values()]
            records = [
                json.loads(json.dumps(invoice.to_import_record(), ensure_ascii=False))
                for invoice in store.iter_invoices()
            ]
        yield Synced(config_path, records)


def test_schema_accepts_every_exported_record_of_every_vendor(
    json_schema: dict[str, Any], synced: Synced
) -> None:
    assert {r["source"] for r in synced.records} == set(BUILTIN_TYPES), "a vendor stored nothing"
    for record in synced.records:
        assert problems(record, json_schema, json_schema) == [], record["id"]


def test_schema_declares_every_key_an_export_writes(
    json_schema: dict[str, Any], synced: Synced
) -> None:
    declared = set(json_schema["properties"])
    item_keys = set(json_schema["$defs"]["ImportRecordItem"]["properties"])
    for record in synced.records:
        assert set(record) <= declared
        assert all(set(item) <= item_keys for item in record["items"])
    assert json_schema["$schema"].startswith("https://json-schema.org/")


def test_checker_rejects_broken_records(json_schema: dict[str, Any], synced: Synced) -> None:
    good = synced.records[0]
    broken = [
        {k: v for k, v in good.items() if k != "invoice_number"},
        {**good, "total_amount": 12.5},  # the export writes decimals as strings
        {**good, "invoice_date": "2025-02-30"},
        {**good, "status": "refunded"},
        {**good, "items": []},
        {**good, "items": [{**good["items"][0], "category": "massage"}]},
        {**good, "items": [{**good["items"][0], "colour": "red"}]},
        {**good, "patient": {"name": "", "policy_number": "P-1"}},
    ]
    for record in broken:
        assert problems(record, json_schema, json_schema) != []


@pytest.mark.parametrize("type_name", BUILTIN_TYPES)
def test_type_mapping_names_every_canonical_field(type_name: str) -> None:
    done = invoke("schema", "--type", type_name, "--json")
    assert done.exit_code == 0, done.output
    shown = json.loads(done.output)
    assert shown["type"] == type_name
    assert list(shown["fields"]) == list(CANONICAL_FIELDS)
    # Every vendor has an id and line items; what it lacks is an empty list, not a guess.
    assert shown["fields"]["id"] and shown["fields"]["items"]
    text = invoke("schema", "--type", type_name)
    assert text.exit_code == 0, text.output
    assert all(name in text.output for name in CANONICAL_FIELDS)


def test_unknown_type_exits_2_naming_the_known_ones() -> None:
    done = invoke("schema", "--type", "quickbooks")
    assert done.exit_code == 2
    assert "quickbooks" in done.output
    assert all(name in done.output for name in BUILTIN_TYPES)


def test_source_and_type_together_exit_2() -> None:
    assert invoke("schema", "--source", "a", "--type", "splose").exit_code == 2


# The real executable: these need `schema` in COMMAND_MODULES of connector/cli/app.py.


def test_executable_prints_the_schema_and_a_configured_source_mapping(
    connector: Run, synced: Synced
) -> None:
    done = connector("schema")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["title"] == "ImportRecord"
    done = connector("-c", str(synced.config_path), "schema", "--source", "splose", "--json")
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["source"] == "splose" and shown["type"] == "splose"
    assert list(shown["fields"]) == list(CANONICAL_FIELDS)
    # Off a terminal the table is plain columns, without box drawing.
    done = connector("schema", "--type", "meditrak")
    assert done.returncode == 0, done.stderr
    assert "patient.policy_number" in done.stdout and "┃" not in done.stdout


def test_executable_exits_2_on_an_unknown_type_or_source(connector: Run, synced: Synced) -> None:
    done = connector("schema", "--type", "quickbooks")
    assert done.returncode == 2
    assert "unknown source type 'quickbooks'" in done.stderr and "splose" in done.stderr
    done = connector("-c", str(synced.config_path), "schema", "--source", "nowhere")
    assert done.returncode == 2
    assert "no source named 'nowhere'" in done.stderr


def test_a_rest_source_shows_the_vendor_paths_of_its_own_fields(
    connector: Run, tmp_path: Path
) -> None:
    """A `rest` source is mapped by its config: `schema --source` reads that source's
    `fields:` (the shipped Invoice API example) instead of saying "setting:fields.*"."""
    text = (EXAMPLES / "invoice_api.rest.yaml").read_text(encoding="utf-8")
    # Never called: schema reads the config alone.
    for variable, value in (
        ("INVOICE_API_URL", "http://127.0.0.1:9/api/"),
        ("INVOICE_API_USER", "schema-user"),
        ("INVOICE_API_PASSWORD", "schema-password-0001"),
    ):
        text = text.replace(f"${{{variable}}}", value)
    (source,) = yaml.safe_load(text)["sources"]
    config = write_config(tmp_path / "connector.yaml", {"sources": [source]})
    name = source["name"]
    done = connector("-c", str(config), "schema", "--source", name, "--json")
    assert done.returncode == 0, done.stderr
    fields = json.loads(done.stdout)["fields"]
    assert list(fields) == list(CANONICAL_FIELDS)
    assert fields["id"] == ["id"] and fields["invoice_number"] == ["reg_number"]
    assert fields["patient.name"] == ["_patient.first_name", "_patient.last_name"]
    assert fields["patient.policy_number"] == ["_patient.insurance_policy_number", "policy_link"]
    assert fields["items"] == ["items"]
    assert fields["items[].category"] == [
        "items[].category",
        "items[].name",
        "items[].description",
    ]
    assert fields["items[].total"][0] == "items[].total"
    assert fields["facility"] == []
    assert not any(p.startswith("setting:") for paths in fields.values() for p in paths)
    # The table off a terminal: plain lines, the real paths, no box drawing.
    done = connector("-c", str(config), "schema", "--source", name)
    assert done.returncode == 0, done.stderr
    assert "_patient.insurance_policy_number, policy_link" in done.stdout
    assert "items[].unit_price" in done.stdout and "setting:" not in done.stdout
    assert not set("┃━│─┏┓┗┛") & set(done.stdout)
