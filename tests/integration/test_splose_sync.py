"""Splose end to end over loopback: the engine syncs the sandbox dialect into a real SQLite
file; every served record is stored or quarantined, defects carry their expected reasons, a
re-sync writes nothing and an incremental sync picks up exactly the changed invoice."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from connector.cli.demo import sandbox_config
from connector.config import AppConfig, SourceConfig
from connector.issues import Reason
from connector.mapping.kit import CategoryMatch, CategoryRules
from connector.model import Category
from connector.pipeline.engine import Engine, RunResult
from connector.sandbox import EXPECTED_REASON, SandboxOptions, SandboxServer
from connector.sandbox.splose import ITEM_CODES, SploseDialect
from connector.store import Store
from connector.store.store import sqlite_url_for

DIALECT = "splose"
STATUS = {"paid": "paid", "unpaid": "unpaid", "pending": "pending"}


def splose_codes(word: str | None, description: str | None) -> CategoryMatch:
    """Stands in for the category rules engine: the sandbox's price-list codes."""
    if word is not None and word.isdigit() and int(word) in ITEM_CODES:
        return CategoryMatch(Category(ITEM_CODES[int(word)]), "test:splose-code")
    return CategoryMatch(None, None)


def categorize(source: SourceConfig) -> CategoryRules:
    return splose_codes


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    options = SandboxOptions(invoices=120, seed=21, defect_rate=0.15, dialects=(DIALECT,))
    with SandboxServer(options) as server:
        dialect = server.dialect(DIALECT)
        assert isinstance(dialect, SploseDialect)
        # Three syncs in a row within a minute: the key's real limit is exercised elsewhere.
        dialect.rate_limit = 10_000
        yield server


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("splose") / "connector.db"


@pytest.fixture(scope="module")
def config(server: SandboxServer, store_path: Path) -> AppConfig:
    return sandbox_config(server, str(store_path), names=[DIALECT])


def sync(config: AppConfig, *, full: bool = False) -> RunResult:
    with Store(sqlite_url_for(Path(config.store.url))) as store:
        engine = Engine(config, store, categorize=categorize)
        (result,) = asyncio.run(engine.sync([DIALECT], full=full))
    assert result.ok, result.error
    return result


@pytest.fixture(scope="module")
def first_run(config: AppConfig) -> RunResult:
    return sync(config)


def served_rows(server: SandboxServer) -> list[dict[str, Any]]:
    """Every invoice row as the sandbox serves it, following its own links."""
    headers = {"Authorization": f"Bearer {server.token(DIALECT)}"}
    rows: list[dict[str, Any]] = []
    with httpx.Client(base_url=server.base_url(DIALECT), headers=headers) as client:
        link: str | None = "/v1/invoices"
        while link:
            body = client.get(link).json()
            rows.extend(body["data"])
            link = body["links"]["nextPage"]
    return rows


def test_the_sandbox_serves_every_documented_quirk(server: SandboxServer) -> None:
    rows = served_rows(server)
    items = [item for row in rows for item in row["invoiceItems"]]
    assert {row["taxStatus"] for row in rows} == {"including", "excluding", "no tax"}
    assert {row["status"] for row in rows} >= {"Draft", "Awaiting Payment", "Paid"}
    forms = {
        "date": re.compile(r"^\d{4}-\d{2}-\d{2}$"),
        "seconds": re.compile(r"T\d{2}:\d{2}:\d{2}Z$"),
        "millis": re.compile(r"T\d{2}:\d{2}:\d{2}\.\d{3}Z$"),
    }
    for pattern in forms.values():
        assert any(pattern.search(row["issueDate"]) for row in rows)
    assert any(item["quantity"] % 1 for item in items), "no fractional quantity"
    assert any(item["discount"] not in (None, "$0.00") for item in items), "no discount"
    assert any(item["taxRate"] for item in items)
    assert all(isinstance(row["id"], int) and isinstance(row["patientId"], int) for row in rows)
    assert any(
        row["referenceNumbers"] and row["referenceNumbers"][0].startswith("Policy: POL-")
        for row in rows
    )
    # Newest first, every invoice once.
    ids = [row["id"] for row in rows]
    assert ids == sorted(ids, reverse=True) and len(ids) == len(server.dataset(DIALECT))


def test_config_from_the_sandbox(config: AppConfig) -> None:
    (source,) = config.sources
    assert source.type == DIALECT
    assert source.currency == "AUD"
    assert source.http.requests_per_minute == 60


def test_full_sync_stores_or_quarantines_every_served_invoice(
    server: SandboxServer, config: AppConfig, first_run: RunResult
) -> None:
    dialect = server.dialect(DIALECT)
    dataset = server.dataset(DIALECT)
    served = {dialect.vendor_id(inv) for inv in dataset.invoices}
    with Store(sqlite_url_for(Path(config.store.url))) as store:
        stored = {inv.id: inv for inv in store.iter_invoices(DIALECT)}
        quarantined = {q.record_key: q for q in store.quarantine_entries(DIALECT)}
    assert first_run.counts.fetched == len(served)
    assert first_run.counts.inserted == len(stored)
    assert set(stored) | set(quarantined) == served
    assert not set(stored) & set(quarantined)

    defects = {dialect.vendor_id(inv): inv.defect for inv in dataset.invoices if inv.defect}
    assert {"no_items", "bad_date", "unknown_status", "unknown_category"} <= set(defects.values())
    for vendor_id, kind in defects.items():
        assert vendor_id in quarantined, f"defect {kind} on {vendor_id} was stored"
        codes = {issue.code.value for issue in quarantined[vendor_id].issues}
        assert EXPECTED_REASON[kind] in codes, (vendor_id, kind, codes)
    # Clean invoices are only held back for a missing policy (no "Policy:"/"Insurance:"
    # reference: none at all, or only a Medicare number, which is never a policy); the
    # patient-link registry resolves those (tests/test_policy_resolution_sandbox.py).
    for vendor_id, entry in quarantined.items():
        if vendor_id not in defects:
            assert {i.code for i in entry.issues} == {Reason.POLICY_MISSING}
            references = entry.raw_payload["referenceNumbers"] or []
            assert not [r for r in references if r.startswith(("Policy:", "Insurance:"))]
            assert all(r.startswith("Medicare: ") for r in references)


def test_stored_invoices_agree_with_the_truth_to_the_cent(
    server: SandboxServer, config: AppConfig, first_run: RunResult
) -> None:
    dataset = server.dataset(DIALECT)
    with Store(sqlite_url_for(Path(config.store.url))) as store:
        stored = list(store.iter_invoices(DIALECT))
    assert len(stored) > 60
    for invoice in stored:
        truth = dataset.get(f"SPL-{int(invoice.id):06d}")
        assert truth is not None
        assert invoice.total_amount == truth.total
        assert sum(item.total for item in invoice.items) == truth.total
        assert len(invoice.items) == len(truth.items)
        assert [item.category for item in invoice.items] == [
            Category(item.category) for item in truth.items
        ]
        assert invoice.invoice_number == truth.number
        assert invoice.invoice_date == truth.invoice_date
        assert invoice.status is not None and invoice.status.value == STATUS[truth.status]
        assert invoice.patient.name == truth.patient_name
        assert invoice.patient.policy_number == truth.policy_number
        assert invoice.patient.source_ref == truth.patient_ref.removeprefix("PAT-").lstrip("0")
        assert invoice.currency == "AUD"
        assert invoice.source_updated_at == truth.updated_at
        if truth.status == "paid":
            assert invoice.paid_amount == truth.total


def test_a_second_sync_writes_nothing(config: AppConfig, first_run: RunResult) -> None:
    again = sync(config, full=True)
    assert again.counts.inserted == 0
    assert again.counts.updated == 0
    assert again.counts.unchanged == first_run.counts.inserted
    incremental = sync(config)
    assert (incremental.counts.inserted, incremental.counts.updated) == (0, 0)


def test_an_incremental_sync_updates_exactly_the_mutated_invoice(
    server: SandboxServer, config: AppConfig, first_run: RunResult
) -> None:
    dialect = server.dialect(DIALECT)
    dataset = server.dataset(DIALECT)
    with Store(sqlite_url_for(Path(config.store.url))) as store:
        before = {inv.id: inv for inv in store.iter_invoices(DIALECT)}
    target = next(inv for inv in dataset.invoices if dialect.vendor_id(inv) in before)
    dataset.mutate(target.id)
    result = sync(config)
    assert (result.counts.inserted, result.counts.updated) == (0, 1)
    assert result.counts.fetched < len(dataset), "the incremental filter was not applied"
    with Store(sqlite_url_for(Path(config.store.url))) as store:
        after = {inv.id: inv for inv in store.iter_invoices(DIALECT)}
    changed = {i for i in after if after[i] != before.get(i)}
    assert changed == {dialect.vendor_id(target)}
    assert after[dialect.vendor_id(target)].total_amount == target.total
