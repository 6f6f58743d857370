"""CitaBox end to end over loopback: the sandbox dialect, the engine and a real SQLite store.

Two stand-ins for work in progress elsewhere are passed to the engine: Spanish keyword
category rules (the rules engine) and a patient-link policy check (the registry of patient
links), because CitaBox carries neither a category word nor a policy number.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from connector.cli.demo import sandbox_config
from connector.config import SourceConfig
from connector.issues import Issue, Reason
from connector.mapping.kit import CategoryMatch, CategoryRules
from connector.model import Category, Invoice, InvoiceStatus
from connector.pipeline.engine import Engine, RunResult
from connector.sandbox import EXPECTED_REASON, SandboxOptions, SandboxServer
from connector.sandbox.citabox import consecutive, payment_and_hacienda
from connector.store import Store

SOURCE = "citabox"

# Keyword → category, first match wins; what the rules engine is expected to provide.
SPANISH_KEYWORDS: tuple[tuple[str, Category], ...] = (
    ("consulta", Category.CONSULTATION),
    ("control de seguimiento", Category.CONSULTATION),
    ("hemograma", Category.LABORATORY),
    ("orina", Category.LABORATORY),
    ("lipídico", Category.LABORATORY),
    ("glicemia", Category.LABORATORY),
    ("radiografía", Category.RADIOLOGY),
    ("ultrasonido abdominal", Category.RADIOLOGY),
    ("tomografía", Category.RADIOLOGY),
    ("resonancia", Category.RADIOLOGY),
    ("medicamento", Category.PHARMACY),
    ("antibiótico", Category.PHARMACY),
    ("analgésico", Category.PHARMACY),
    ("insulina", Category.PHARMACY),
    ("emergencia", Category.EMERGENCY),
    ("trauma", Category.EMERGENCY),
    ("ambulancia", Category.EMERGENCY),
    ("cirugía", Category.SURGERY),
    ("curación", Category.SURGERY),
    ("sutura", Category.SURGERY),
    ("drenaje", Category.SURGERY),
    ("dental", Category.DENTAL),
    ("conducto", Category.DENTAL),
    ("fisioterapia", Category.PHYSIOTHERAPY),
    ("rehabilitación", Category.PHYSIOTHERAPY),
    ("masaje", Category.PHYSIOTHERAPY),
    ("prenatal", Category.OBSTETRICS),
    ("obstétrico", Category.OBSTETRICS),
    ("parto", Category.OBSTETRICS),
    ("vista", Category.OPTICAL),
    ("anteojos", Category.OPTICAL),
    ("lentes", Category.OPTICAL),
)


def spanish_rules(word: str | None, description: str | None) -> CategoryMatch:
    text = (description or "").lower()
    for keyword, category in SPANISH_KEYWORDS:
        if keyword in text:
            return CategoryMatch(category, f"keyword:{keyword}")
    return CategoryMatch(None, None)


def categorize(source: SourceConfig) -> CategoryRules:
    return spanish_rules


def linked_policies(invoice: Invoice) -> list[Issue]:
    """Every CitaBox patient is taken as linked to a policy (the link registry's job)."""
    if invoice.patient.source_ref:
        return []
    return [Issue(Reason.POLICY_MISSING, "patient.policy_number", "no patient link")]


@pytest.fixture
def server() -> Iterator[SandboxServer]:
    options = SandboxOptions(invoices=300, seed=21, defect_rate=0.1, dialects=(SOURCE,))
    with SandboxServer(options) as running:
        yield running


def sync(engine: Engine, *, full: bool = False) -> RunResult:
    (result,) = asyncio.run(engine.sync([SOURCE], full=full))
    assert result.ok, result.error
    return result


def make_engine(server: SandboxServer, store: Store, *, linked: bool = True) -> Engine:
    config = sandbox_config(server, store.url, names=[SOURCE])
    return Engine(
        config,
        store,
        categorize=categorize,
        policy_check=linked_policies if linked else None,
    )


def test_full_sync_resync_and_incremental_update(server: SandboxServer, tmp_path: Path) -> None:
    dialect = server.dialect(SOURCE)
    dataset = server.dataset(SOURCE)
    truth = {dialect.vendor_id(inv): inv for inv in dataset.invoices}
    defects = {vid: inv.defect for vid, inv in truth.items() if inv.defect}
    assert set(defects.values()) == set(dialect.default_defects), "every kind is seeded"

    with Store(f"sqlite:///{tmp_path / 'connector.db'}") as store:
        engine = make_engine(server, store)

        # -- full sync: everything served is stored or quarantined, nothing else
        first = sync(engine)
        stored = store.count_invoices(SOURCE)
        quarantined = store.count_quarantined(SOURCE)
        assert first.counts.fetched == len(truth)
        assert stored + quarantined == len(truth)
        assert first.counts.inserted == stored
        entries = {e.record_key: e for e in store.quarantine_entries(SOURCE)}
        assert set(entries) == set(defects), "exactly the seeded defects are quarantined"
        for vid, kind in defects.items():
            codes = {issue.code.value for issue in entries[vid].issues}
            assert EXPECTED_REASON[kind] in codes, (vid, kind, codes)

        # -- the clean invoices agree with the truth to the cent
        invoices = {inv.id: inv for inv in store.iter_invoices(SOURCE)}
        assert len(invoices) == stored
        for vid, invoice in invoices.items():
            expected = truth[vid]
            (truth_item,) = expected.items
            (item,) = invoice.items
            assert invoice.total_amount == expected.total
            assert (item.quantity, item.unit_price, item.total) == (
                Decimal(1),
                expected.total,
                expected.total,
            )
            assert item.category == Category(truth_item.category)
            assert item.description == truth_item.description
            assert invoice.status == InvoiceStatus(expected.status)
            assert invoice.invoice_date == expected.invoice_date
            assert invoice.patient.name == expected.patient_name
            assert invoice.currency == "CRC"
            assert invoice.facility == "Clínica San José Centro"
            payment, hacienda = payment_and_hacienda(expected)
            assert invoice.source_status == f"{payment}/{hacienda}"
            number = vid if hacienda == "DRAFT" else consecutive(expected)
            assert invoice.invoice_number == number
            if payment == "PAID":
                assert invoice.paid_amount == expected.total
            elif payment == "PARTIAL":
                assert invoice.paid_amount is not None
                assert Decimal(0) < invoice.paid_amount < expected.total

        # -- a re-sync writes nothing: a full one reads everything again, an incremental one
        # only what changed since the cursor (minus the lookback)
        second = sync(engine, full=True)
        assert (second.counts.inserted, second.counts.updated) == (0, 0)
        assert second.counts.unchanged == stored
        assert second.counts.quarantined == len(defects)
        again = sync(engine)
        assert (again.counts.inserted, again.counts.updated) == (0, 0)
        assert again.counts.fetched < len(truth)

        # -- an incremental sync after one change updates exactly that invoice
        changed = next(inv for inv in dataset.invoices if inv.defect is None)
        before = invoices[dialect.vendor_id(changed)].total_amount
        dataset.mutate(changed.id)
        third = sync(engine)
        assert (third.counts.inserted, third.counts.updated) == (0, 1)
        assert third.counts.fetched < len(truth), "the updatedAt filter was not applied"
        after = {inv.id: inv for inv in store.iter_invoices(SOURCE)}
        assert after[dialect.vendor_id(changed)].total_amount == changed.total != before
        assert {vid for vid in after if after[vid] != invoices[vid]} == {dialect.vendor_id(changed)}


def test_without_patient_links_every_invoice_is_policy_missing(
    server: SandboxServer, tmp_path: Path
) -> None:
    """Today's behaviour until the patient-link registry lands: CitaBox has no policy number."""
    with Store(f"sqlite:///{tmp_path / 'connector.db'}") as store:
        result = sync(make_engine(server, store, linked=False))
        assert store.count_invoices(SOURCE) == 0
        assert store.count_quarantined(SOURCE) == result.counts.fetched == 300
        by_reason = store.quarantine_by_reason()[SOURCE]
        # Records that could not be mapped at all (bad date, fractional cents) never reach
        # the policy check; every other one is POLICY_MISSING.
        unmappable = sum(
            1
            for inv in server.dataset(SOURCE).invoices
            if inv.defect in ("bad_date", "three_decimal_amount")
        )
        assert by_reason["POLICY_MISSING"] == 300 - unmappable
