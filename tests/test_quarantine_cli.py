"""`connector quarantine list/show`, reprocess edge cases (records that need a sync, sources no
longer configured, records quarantined before they had an id) and the reason-code doc."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from connector.cli.quarantine import reason_codes_markdown
from connector.config import AppConfig, build_config
from connector.issues import REASON_HELP, Issue, Reason
from connector.pipeline.engine import payload_key
from connector.pipeline.reprocess import reprocess
from connector.pipeline.wiring import build_engine
from connector.policies import PolicyRecord
from connector.store import Rejected, Store
from connector.store.coordination import source_lock
from connector.store.policies import import_policies
from connector.store.store import sqlite_url_for
from tests.conftest import invoke_cli

DOC = Path(__file__).resolve().parents[1] / "docs" / "reason-codes.md"


def record(record_id: str | None, policy: str = "POL-456789", **extra: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "invoice_number": f"N-{record_id}",
        "invoice_date": "2025-05-01",
        "total_amount": "30.00",
        "status": "paid",
        "patient": {"name": "John Doe", "policy_number": policy},
        "items": [
            {
                "category": "laboratory",
                "description": "Full Blood Count",
                "quantity": 1,
                "unit_price": "30.00",
                "total": "30.00",
            }
        ],
        **extra,
    }
    if record_id is not None:
        raw["id"] = record_id
    return raw


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Path, AppConfig, Store]]:
    db = tmp_path / "store.db"
    config_path = tmp_path / "connector.yaml"
    config_path.write_text(
        f"store:\n  url: {db}\n"
        "sources:\n"
        "  - type: meditrak_import\n"
        "    name: clinic\n"
        "    base_url: http://127.0.0.1:9/api/\n"
        "    api_key: k\n",
        encoding="utf-8",
    )
    config = build_config(
        {
            "store": {"url": str(db)},
            "sources": [
                {
                    "type": "meditrak_import",
                    "name": "clinic",
                    "base_url": "http://127.0.0.1:9/api/",
                    "api_key": "k",
                }
            ],
        },
        env={},
    )
    with Store(sqlite_url_for(db)) as store:
        run = store.start_run("clinic", "sync", None)
        unknown = Issue(Reason.POLICY_UNKNOWN, "patient.policy_number", "policy POL-****89 …")
        rejected = [
            Rejected("INV-1", record("INV-1"), None, [unknown]),
            Rejected(
                "INV-2",
                record("INV-2"),
                None,
                [Issue(Reason.DETAIL_UNAVAILABLE, "$", "detail call failed"), unknown],
            ),
            Rejected(
                payload_key(record(None)),
                record(None),
                None,
                [Issue(Reason.FIELD_MISSING, "id", "required")],
            ),
        ]
        store.write_batch(run, "clinic", [], rejected, fetched=3, resume=None)
        other = store.start_run("gone", "sync", None)
        store.write_batch(
            other,
            "gone",
            [],
            [Rejected("G-1", record("G-1"), None, [unknown])],
            fetched=1,
            resume=None,
        )
        yield config_path, config, store


run_cli = invoke_cli


def test_quarantine_list_text_and_json_with_filters(
    setup: tuple[Path, AppConfig, Store],
) -> None:
    config_path, _config, _store = setup
    text = run_cli(config_path, "quarantine", "list")
    assert text.exit_code == 0, text.output
    assert "Quarantine: 4 record(s)" in text.output
    assert "by reason: DETAIL_UNAVAILABLE 1, FIELD_MISSING 1, POLICY_UNKNOWN 3" in text.output
    as_json = run_cli(config_path, "quarantine", "list", "--source", "clinic", "-f", "json")
    entries = json.loads(as_json.output)
    assert [e["record_key"] for e in entries][:2] == ["INV-1", "INV-2"]
    assert entries[1]["reasons"] == ["DETAIL_UNAVAILABLE", "POLICY_UNKNOWN"]
    assert {"code", "path", "message", "severity"} <= set(entries[0]["issues"][0])
    assert entries[0]["attempts"] == 1
    filtered = run_cli(config_path, "quarantine", "list", "--reason", "field_missing", "-f", "json")
    assert [e["record_key"] for e in json.loads(filtered.output)] == [payload_key(record(None))]
    assert run_cli(config_path, "quarantine", "list", "--reason", "NOPE").exit_code == 2
    assert run_cli(config_path, "quarantine", "list", "--format", "xml").exit_code == 2


def test_quarantine_show_masks_patient_data_unless_revealed(
    setup: tuple[Path, AppConfig, Store],
) -> None:
    config_path, _config, store = setup
    entry_id = store.quarantine_entries("clinic")[0].id
    shown = run_cli(config_path, "quarantine", "show", str(entry_id))
    assert shown.exit_code == 0, shown.output
    assert "John Doe" not in shown.output and "POL-456789" not in shown.output
    assert "J*** D**" in shown.output and "POL-****89" in shown.output
    assert "POLICY_UNKNOWN" in shown.output and "fix: Synchronise the registry" in shown.output
    assert "Full Blood Count" in shown.output  # not patient data
    revealed = run_cli(config_path, "quarantine", "show", str(entry_id), "--reveal", "-f", "json")
    body = json.loads(revealed.output)
    assert body["raw_payload"]["patient"] == {"name": "John Doe", "policy_number": "POL-456789"}
    assert run_cli(config_path, "quarantine", "show", "999999").exit_code == 1


def test_reprocess_skips_what_needs_a_sync_and_sources_not_configured(
    setup: tuple[Path, AppConfig, Store],
) -> None:
    _path, config, store = setup
    import_policies(store, [PolicyRecord("POL-456789", "John Doe", "active", None, None)])
    results = {r.source: r for r in reprocess(build_engine(config, store))}
    clinic = results["clinic"]
    assert (clinic.examined, clinic.moved, clinic.skipped) == (3, 1, 1)
    assert clinic.still_quarantined == 1  # the record without an id
    assert dict(clinic.moved_by_reason) == {"POLICY_UNKNOWN": 1}
    assert results["gone"].error is not None and results["gone"].moved == 0
    assert [e.record_key for e in store.quarantine_entries("clinic")] == [
        "INV-2",
        payload_key(record(None)),
    ]
    assert [i.id for i in store.iter_invoices("clinic")] == ["INV-1"]
    assert store.runs("clinic", limit=1)[0].kind == "reprocess"
    assert store.get_state("clinic").cursor is None


def test_a_record_quarantined_under_its_payload_key_is_released_when_it_moves(
    setup: tuple[Path, AppConfig, Store],
) -> None:
    _path, config, store = setup
    import_policies(store, [PolicyRecord("POL-456789", "John Doe", "active", None, None)])
    # Quarantined by hash (say, an older mapping could not read its id), now mappable.
    raw = record("INV-9")
    run = store.start_run("clinic", "sync", None)
    store.write_batch(
        run,
        "clinic",
        [],
        [Rejected(payload_key(raw), raw, None, [Issue(Reason.PAYLOAD_INVALID, "$", "old bug")])],
        fetched=1,
        resume=None,
    )
    reprocess(build_engine(config, store), sources=["clinic"], reason="PAYLOAD_INVALID")
    keys = [e.record_key for e in store.quarantine_entries("clinic")]
    assert payload_key(raw) not in keys
    assert "INV-9" in [i.id for i in store.iter_invoices("clinic")]


def test_reprocess_cli_validates_its_options(setup: tuple[Path, AppConfig, Store]) -> None:
    config_path, _config, _store = setup
    assert run_cli(config_path, "reprocess", "--reason", "BOGUS").exit_code == 2
    assert run_cli(config_path, "reprocess", "--source", "nope").exit_code == 2
    result = run_cli(config_path, "reprocess", "--source", "clinic")
    assert result.exit_code == 0, result.output
    assert "moved 0 record(s)" in result.output


def test_reason_code_doc_lists_every_reason_and_matches_the_code() -> None:
    text = DOC.read_text(encoding="utf-8")
    for reason in Reason:
        meaning, fix = REASON_HELP[reason]
        line = next(line for line in text.splitlines() if line.startswith(f"| `{reason.value}`"))
        assert meaning in line and fix in line
    assert set(REASON_HELP) == set(Reason)
    assert text == reason_codes_markdown(), (
        "docs/reason-codes.md is stale: run `connector quarantine reasons > docs/reason-codes.md`"
    )


def test_reprocess_waits_for_nobody_while_a_sync_holds_the_source(
    setup: tuple[Path, AppConfig, Store],
) -> None:
    _path, config, store = setup
    import_policies(store, [PolicyRecord("POL-456789", "John Doe", "active", None, None)])
    held = source_lock(store, "clinic", timedelta(minutes=5))
    assert held.acquire()
    try:
        (busy,) = reprocess(build_engine(config, store), sources=["clinic"])
        assert busy.error is not None and "another process" in busy.error
        assert busy.moved == 0 and store.count_invoices() == 0
    finally:
        held.release()
    (done,) = reprocess(build_engine(config, store), sources=["clinic"])
    assert done.error is None and done.moved == 1
