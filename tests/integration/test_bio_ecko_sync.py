"""End-to-end Bio Ecko sync over loopback: sandbox dialect → adapter → mapping → validation →
SQLite store, through the real `Engine`: a full sync, an idempotent re-sync, an incremental
sync after one invoice changes, and a date-window backfill."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from connector.cli.demo import sandbox_config
from connector.config import AppConfig, SourceConfig
from connector.mapping.kit import CategoryMatch, CategoryRules
from connector.model import Category, InvoiceStatus
from connector.pipeline.engine import Engine, RunResult
from connector.sandbox import EXPECTED_REASON, SandboxOptions, SandboxServer, item_total
from connector.sandbox.bio_ecko import DEPARTMENTS, bio_ecko_status
from connector.store import Store
from connector.store.store import sqlite_url_for

DIALECT = "bio_ecko"
FAST_HTTP = {"max_retries": 2, "backoff_base": 0.01, "backoff_max": 0.05}
# Until the shared category rules ship, the test supplies Bio Ecko's departments itself.
DEPARTMENT_RULES = {word: Category(category) for category, word in DEPARTMENTS.items()}
STATUS_OF_WORD = {
    "draft": InvoiceStatus.PENDING,
    "finalized": InvoiceStatus.UNPAID,
    "paid": InvoiceStatus.PAID,
    "partially_paid": InvoiceStatus.UNPAID,
    "cancelled": InvoiceStatus.VOID,
}


def by_department(word: str | None, description: str | None) -> CategoryMatch:
    category = DEPARTMENT_RULES.get(word or "")
    return CategoryMatch(category, f"department:{word}" if category else None)


def department_rules(source: SourceConfig) -> CategoryRules:
    return by_department


@pytest.fixture
def server() -> Iterator[SandboxServer]:
    options = SandboxOptions(invoices=160, seed=23, defect_rate=0.15, dialects=(DIALECT,))
    with SandboxServer(options) as running:
        yield running


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(sqlite_url_for(tmp_path / "connector.db")) as opened:
        yield opened


def app_config(server: SandboxServer, store: Store, **fields: Any) -> AppConfig:
    return sandbox_config(
        server, store.url, names=[DIALECT], **{DIALECT: {"http": FAST_HTTP, **fields}}
    )


def sync(engine: Engine) -> RunResult:
    (result,) = asyncio.run(engine.sync([DIALECT]))
    assert result.ok, result.error
    return result


def test_full_sync_stores_clean_invoices_and_quarantines_every_defect(
    server: SandboxServer, store: Store
) -> None:
    engine = Engine(app_config(server, store), store, categorize=department_rules)
    result = sync(engine)
    dataset = server.dataset(DIALECT)
    served = len(dataset)
    defects = dataset.defects()
    assert len(set(defects.values())) == len(server.dialect(DIALECT).default_defects)

    assert result.counts.fetched == served
    assert result.counts.inserted + result.counts.quarantined == served
    assert store.count_invoices(DIALECT) + store.count_quarantined(DIALECT) == served
    assert store.count_quarantined(DIALECT) == len(defects)

    quarantined = {entry.record_key: entry for entry in store.quarantine_entries(DIALECT)}
    assert set(quarantined) == set(defects)
    for invoice_id, kind in defects.items():
        found = {issue.code.value for issue in quarantined[invoice_id].issues}
        assert EXPECTED_REASON[kind] in found, (invoice_id, kind, found)

    stored = {invoice.id: invoice for invoice in store.iter_invoices(DIALECT)}
    assert set(stored) == {inv.id for inv in dataset if inv.defect is None}
    for invoice_id, invoice in stored.items():
        truth = dataset.get(invoice_id)
        assert truth is not None
        # To the cent: the canonical total and every item total are the truth's.
        assert invoice.total_amount == truth.total
        assert [item.total for item in invoice.items] == [item_total(i) for i in truth.items]
        assert [item.category for item in invoice.items] == [
            Category(i.category) for i in truth.items
        ]
        assert [item.source_category for item in invoice.items] == [
            DEPARTMENTS[i.category] for i in truth.items
        ]
        assert invoice.currency == "INR"
        assert invoice.invoice_number == truth.number
        assert invoice.invoice_date == truth.invoice_date
        assert invoice.facility == truth.facility
        assert invoice.patient.name == truth.patient_name
        assert invoice.patient.policy_number == truth.policy_number
        assert invoice.patient.source_ref == truth.patient_ref
        word = bio_ecko_status(truth)
        assert (invoice.source_status, invoice.status) == (word, STATUS_OF_WORD[word])
        assert invoice.paid_amount is not None
        if word == "paid":
            assert invoice.paid_amount == truth.total
        elif word == "partially_paid":
            assert 0 < invoice.paid_amount < truth.total
        assert invoice.source_updated_at == truth.updated_at


def test_resync_writes_nothing_and_a_changed_invoice_is_updated_alone(
    server: SandboxServer, store: Store
) -> None:
    engine = Engine(app_config(server, store), store, categorize=department_rules)
    first = sync(engine)
    assert first.counts.inserted > 0

    again = sync(engine)
    assert (again.counts.inserted, again.counts.updated) == (0, 0)
    assert again.counts.unchanged == first.counts.inserted
    assert again.counts.released == 0

    dataset = server.dataset(DIALECT)
    changed = next(inv.id for inv in dataset if inv.defect is None and inv.status == "paid")
    before = {inv.id: inv.content_hash() for inv in store.iter_invoices(DIALECT)}
    truth = dataset.mutate(changed)

    after_change = sync(engine)
    assert (after_change.counts.inserted, after_change.counts.updated) == (0, 1)
    now = {inv.id: inv for inv in store.iter_invoices(DIALECT)}
    assert {i for i in now if now[i].content_hash() != before[i]} == {changed}
    assert now[changed].total_amount == truth.total
    assert now[changed].source_updated_at == truth.updated_at


def test_without_department_rules_only_category_words_are_accepted(
    server: SandboxServer, store: Store
) -> None:
    # The baseline rules accept "Radiology", "Surgery"... but not "Pathology" or "General
    # Medicine": those items wait in quarantine for the rules engine.
    sync(Engine(app_config(server, store), store))
    dataset = server.dataset(DIALECT)
    for entry in store.quarantine_entries(DIALECT):
        truth = dataset.get(entry.record_key)
        assert truth is not None
        if truth.defect is None:
            assert {issue.code.value for issue in entry.issues} == {"CATEGORY_UNMAPPED"}
            assert any(DEPARTMENTS[i.category].lower() != i.category for i in truth.items)
    for invoice in store.iter_invoices(DIALECT):
        assert all(item.category_rule == "exact:category" for item in invoice.items)


def test_a_backfill_window_fetches_only_its_dates(server: SandboxServer, store: Store) -> None:
    engine = Engine(app_config(server, store), store, categorize=department_rules)
    source = engine.config.source(DIALECT)
    start, end = date(2025, 3, 1), date(2025, 3, 31)
    result = asyncio.run(engine.sync_source(source, kind="backfill", date_from=start, date_to=end))
    assert result.ok, result.error
    in_window = [inv for inv in server.dataset(DIALECT) if start <= inv.invoice_date <= end]
    assert 0 < result.counts.fetched == len(in_window)
    assert {inv.id for inv in store.iter_invoices(DIALECT)} == {
        inv.id for inv in in_window if inv.defect is None
    }


def test_wrong_credentials_fail_the_source_without_leaking_the_secret(
    server: SandboxServer, store: Store
) -> None:
    config = app_config(server, store, client_secret="wrong-secret-value")
    (result,) = asyncio.run(Engine(config, store).sync([DIALECT]))
    assert not result.ok
    assert result.error is not None
    assert "invalid_client" in result.error and "wrong-secret-value" not in result.error
    assert store.count_invoices(DIALECT) == 0
