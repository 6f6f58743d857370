"""`connector policies import --json`: the counts as one JSON object on stdout, for scripts.

Every outcome that has counts prints them — an import, a replace, a dry run, a refused
replace (dry or not) — with the same exit codes as the text output; policy numbers never
appear (removed policies are counted, not listed) and messages stay on stderr.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import Result

from connector.model import Patient
from connector.policies import PatientLink, PolicyRecord
from connector.store import Store
from connector.store.policies import import_links, list_policies
from connector.store.store import sqlite_url_for
from tests.conftest import run_connector
from tests.test_policies_replace import invoke, registry_text
from tests.test_store import accepted, make

KEYS = {
    "file",
    "policies_in_file",
    "replace",
    "dry_run",
    "written",
    "refused",
    "refusal",
    "new",
    "updated",
    "unchanged",
    "removed",
    "invoices_on_removed",
    "links_to_removed",
    "registry_before",
    "registry_after",
}


def people(count: int, start: int = 0) -> list[PolicyRecord]:
    return [
        PolicyRecord(f"POL-4567{i:02d}", f"Holder Number{i}", "active", None, None)
        for i in range(start, start + count)
    ]


def csv_file(tmp_path: Path, name: str, records: list[PolicyRecord]) -> str:
    path = tmp_path / name
    path.write_text(registry_text(records), encoding="utf-8")
    return str(path)


def config_file(tmp_path: Path) -> Path:
    config = tmp_path / "connector.yaml"
    config.write_text(f"store:\n  url: {tmp_path / 'cli.db'}\n", encoding="utf-8")
    return config


def counts(result: Result) -> dict[str, Any]:
    """The one JSON object on stdout, with no policy number or holder anywhere in the output."""
    assert "POL-4567" not in result.output and "Holder" not in result.output, result.output
    document = json.loads(result.stdout)
    assert isinstance(document, dict) and set(document) == KEYS, document
    return document


def test_json_counts_of_an_import_and_a_replace(tmp_path: Path) -> None:
    config = config_file(tmp_path)
    first = invoke(config, "policies", "import", "--json", csv_file(tmp_path, "a.csv", people(20)))
    assert first.exit_code == 0, first.output
    assert counts(first) == {
        "file": str(tmp_path / "a.csv"),
        "policies_in_file": 20,
        "replace": False,
        "dry_run": False,
        "written": True,
        "refused": False,
        "refusal": None,
        "new": 20,
        "updated": 0,
        "unchanged": 0,
        "removed": 0,
        "invoices_on_removed": 0,
        "links_to_removed": 0,
        "registry_before": 0,
        "registry_after": 20,
    }
    # An invoice and a patient link name POL-456719, which the next file drops.
    with Store(sqlite_url_for(tmp_path / "cli.db")) as store:
        run = store.start_run("vendor", "sync", None)
        stored = make("INV-1", patient=Patient(name="Ruth Mensah", policy_number="POL-456719"))
        store.write_batch(run, "vendor", [accepted(stored)], [], fetched=1, resume=None)
        import_links(store, [PatientLink("citabox", "p-1", "POL-456719")])
    second = [*people(19), *people(1, start=50)]
    second[0] = PolicyRecord("POL-456700", "Holder Number0", "cancelled", None, None)
    path = csv_file(tmp_path, "b.csv", second)
    dry = invoke(config, "policies", "import", "--replace", "--dry-run", "--json", path)
    assert dry.exit_code == 0, dry.output
    planned = counts(dry)
    assert planned["dry_run"] is True and planned["written"] is False
    expected = {"new": 1, "updated": 1, "unchanged": 18, "removed": 1}
    assert {k: planned[k] for k in expected} == expected
    assert (planned["invoices_on_removed"], planned["links_to_removed"]) == (1, 1)
    assert (planned["registry_before"], planned["registry_after"]) == (20, 20)
    done = invoke(config, "policies", "import", "--replace", "--json", path)
    assert done.exit_code == 0, done.output
    assert counts(done) == {**planned, "dry_run": False, "written": True}
    assert "reprocess" not in done.output  # the text hint is not mixed into the JSON
    with Store(sqlite_url_for(tmp_path / "cli.db")) as store:
        assert [r.policy_number for r in list_policies(store)] == sorted(
            r.policy_number for r in second
        )


def test_json_of_a_refused_replace_keeps_exit_1(tmp_path: Path) -> None:
    config = config_file(tmp_path)
    assert (
        invoke(config, "policies", "import", csv_file(tmp_path, "a.csv", people(20))).exit_code == 0
    )
    truncated = csv_file(tmp_path, "t.csv", people(15))
    for extra in ((), ("--dry-run",)):
        refused = invoke(config, "policies", "import", "--replace", "--json", *extra, truncated)
        assert refused.exit_code == 1, refused.output
        summary = counts(refused)
        assert summary["refused"] is True and summary["written"] is False
        assert summary["dry_run"] is bool(extra)
        assert "5 of the 20" in summary["refusal"] and "--force" in summary["refusal"]
        assert (summary["removed"], summary["unchanged"], summary["new"]) == (5, 15, 0)
        assert "refused" in refused.stderr  # the message for a human, on stderr
    forced = invoke(config, "policies", "import", "--replace", "--force", "--json", truncated)
    assert forced.exit_code == 0, forced.output
    assert counts(forced)["removed"] == 5 and counts(forced)["refused"] is False


def test_json_with_bad_rows_prints_nothing_on_stdout(tmp_path: Path) -> None:
    config = config_file(tmp_path)
    bad = tmp_path / "bad.csv"
    bad.write_text(registry_text(people(2)) + "POL-1,Ann,sleeping,,\n", encoding="utf-8")
    result = invoke(config, "policies", "import", "--json", str(bad))
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "nothing was imported" in result.stderr


def test_json_from_the_installed_command_is_the_whole_stdout(tmp_path: Path) -> None:
    config = config_file(tmp_path)
    path = csv_file(tmp_path, "a.csv", people(3))
    done = run_connector("-c", str(config), "policies", "import", "--json", path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["new"] == 3
    assert "POL-4567" not in done.stdout + done.stderr
