"""End-to-end sync of the "Invoice API" sandbox into a real SQLite file: every served invoice is
stored or quarantined with its seeded reason, a re-sync writes nothing, and a changed invoice is
updated alone."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from connector.cli.demo import sandbox_config
from connector.config import AppConfig, SourceConfig
from connector.mapping.kit import CategoryMatch, CategoryRules, exact_category
from connector.model import Category, Invoice, InvoiceStatus
from connector.pipeline.engine import Engine, RunResult
from connector.sandbox import EXPECTED_REASON, SandboxOptions, SandboxServer
from connector.sandbox.invoice_api import CATEGORY_WORDS, InvoiceApiDialect
from connector.store import Store
from connector.store.store import sqlite_url_for

DIALECT = "invoice_api"
# The vendor's department words, as the category rules engine will know them.
DEPARTMENTS = {word: Category(category) for category, word in CATEGORY_WORDS.items()}
CANONICAL_OF = {
    "PAID": InvoiceStatus.PAID,
    "ISSUED": InvoiceStatus.UNPAID,
    "PARTIALY_PAID": InvoiceStatus.UNPAID,
    "DRAFT": InvoiceStatus.PENDING,
    "VOID": InvoiceStatus.VOID,
    "WRITTEN_OFF": InvoiceStatus.VOID,
}


def iapi(server: SandboxServer) -> InvoiceApiDialect:
    dialect = server.dialect(DIALECT)
    assert isinstance(dialect, InvoiceApiDialect)
    return dialect


def departments(word: str | None, description: str | None) -> CategoryMatch:
    if word in DEPARTMENTS:
        return CategoryMatch(DEPARTMENTS[word], "test:department")
    return exact_category(word)


def rules_for(source: SourceConfig) -> CategoryRules:
    return departments


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    options = SandboxOptions(invoices=400, seed=17, defect_rate=0.08, dialects=(DIALECT,))
    with SandboxServer(options) as server:
        yield server


@pytest.fixture(scope="module")
def setup(
    server: SandboxServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[AppConfig, Store]]:
    path: Path = tmp_path_factory.mktemp("invoice_api") / "connector.db"
    config = sandbox_config(server, str(path), names=[DIALECT])
    store = Store(sqlite_url_for(path))
    yield config, store
    store.close()


def sync(config: AppConfig, store: Store) -> RunResult:
    engine = Engine(config, store, categorize=rules_for)
    (result,) = asyncio.run(engine.sync())
    assert result.ok, result.error
    return result


def stored(store: Store) -> dict[str, Invoice]:
    return {inv.id: inv for inv in store.iter_invoices(DIALECT)}


# The tests below run in order: full sync, re-sync, incremental change.


def test_full_sync_stores_or_quarantines_every_served_invoice(
    server: SandboxServer, setup: tuple[AppConfig, Store]
) -> None:
    config, store = setup
    assert Path(store.url.removeprefix("sqlite:///")).exists()
    dialect = iapi(server)
    dataset = server.dataset(DIALECT)
    result = sync(config, store)
    served = {dialect.vendor_id(inv): inv for inv in dataset}
    assert result.counts.fetched == len(served)
    assert result.counts.inserted + result.counts.quarantined == len(served)
    assert store.count_invoices(DIALECT) + store.count_quarantined(DIALECT) == len(served)

    quarantined = {entry.record_key: entry for entry in store.quarantine_entries(DIALECT)}
    defective = {vendor_id: truth for vendor_id, truth in served.items() if truth.defect}
    # Every seeded defect is quarantined, and nothing else is.
    assert set(defective) == set(quarantined)
    assert {truth.defect for truth in defective.values()} == set(dialect.default_defects)
    for vendor_id, truth in defective.items():
        kind = truth.defect or ""
        entry = quarantined[vendor_id]
        codes = {issue.code.value for issue in entry.issues}
        assert EXPECTED_REASON[kind] in codes, (truth.id, kind, codes)

    invoices = stored(store)
    for vendor_id, truth in served.items():
        if truth.defect is not None:
            continue
        invoice = invoices[vendor_id]
        # The sandbox truth and the mapping agree to the cent.
        assert invoice.total_amount == truth.total
        assert sum(item.total for item in invoice.items) == truth.total
        assert len(invoice.items) == len(truth.items)
        assert [item.category for item in invoice.items] == [
            Category(item.category) for item in truth.items
        ]
        assert invoice.invoice_number == truth.number
        assert invoice.invoice_date == truth.invoice_date
        assert invoice.status is not None and invoice.status.value == truth.status
        assert invoice.status == CANONICAL_OF[invoice.source_status or ""]
        assert invoice.patient.name == truth.patient_name
        assert invoice.patient.policy_number == truth.policy_number
        assert invoice.patient.source_ref == dialect.patient_id(truth)
        assert invoice.source_updated_at == truth.updated_at
        assert invoice.currency == "USD"
        if invoice.status is InvoiceStatus.PAID:
            assert invoice.paid_amount == invoice.total_amount


def test_resync_writes_nothing(setup: tuple[AppConfig, Store]) -> None:
    config, store = setup
    before = store.count_invoices(DIALECT), store.count_quarantined(DIALECT)
    result = sync(config, store)
    assert (result.counts.inserted, result.counts.updated) == (0, 0)
    assert result.counts.unchanged == before[0]
    assert (store.count_invoices(DIALECT), store.count_quarantined(DIALECT)) == before


def test_incremental_sync_updates_exactly_the_changed_invoice(
    server: SandboxServer, setup: tuple[AppConfig, Store]
) -> None:
    config, store = setup
    dialect = iapi(server)
    dataset = server.dataset(DIALECT)
    truth = next(inv for inv in dataset if inv.defect is None)
    vendor_id = dialect.vendor_id(truth)
    hashes = store.content_hashes(DIALECT)
    old_total = stored(store)[vendor_id].total_amount

    dataset.mutate(truth.id)
    result = sync(config, store)

    assert (result.counts.inserted, result.counts.updated) == (0, 1)
    changed = {key for key, value in store.content_hashes(DIALECT).items() if hashes[key] != value}
    assert changed == {vendor_id}
    invoice = stored(store)[vendor_id]
    assert invoice.total_amount == truth.total != old_total
    assert invoice.source_updated_at == truth.updated_at
