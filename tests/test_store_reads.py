"""Typed reads (the table models an HTTP API can return) and the public transaction API, on
every backend."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from sqlalchemy import func, insert, select

from connector.errors import StoreError
from connector.issues import Issue, Reason
from connector.model import Category, Invoice, InvoiceStatus, LineItem, Patient
from connector.store import Accepted, Rejected, Store
from connector.store.schema import InvoiceItemRow, InvoiceRow, QuarantineRow, sync_state

SOURCE = "vendor"
UPDATED = datetime(2025, 3, 2, 8, 30, tzinfo=UTC)


def two_line_invoice(invoice_id: str) -> Invoice:
    items = (
        LineItem(
            category=Category.LABORATORY,
            description="Full Blood Count",
            quantity=Decimal("1.5"),
            unit_price=Decimal("10.00"),
            total=Decimal("15.00"),
        ),
        LineItem(
            category=Category.PHARMACY,
            description="Insulin",
            quantity=Decimal("1"),
            unit_price=Decimal("0.10"),
            total=Decimal("0.10"),
        ),
    )
    return Invoice(
        source=SOURCE,
        id=invoice_id,
        invoice_number=f"N-{invoice_id}",
        invoice_date=date(2025, 3, 1),
        total_amount=Decimal("15.10"),
        currency="USD",
        status=InvoiceStatus.PAID,
        source_status="paid",
        patient=Patient(name="Ruth Mensah", policy_number="POL-1"),
        items=items,
        source_updated_at=UPDATED,
    )


def test_a_stored_invoice_reads_back_as_its_table_models(store: Store) -> None:
    run = store.start_run(SOURCE, "sync", None)
    inv = two_line_invoice("A")
    store.write_batch(run, SOURCE, [Accepted(inv, inv.content_hash())], [], fetched=1, resume=None)

    stored = store.stored_invoice(SOURCE, "A")
    assert stored is not None
    assert isinstance(stored.invoice, InvoiceRow)
    assert stored.invoice.total_amount == Decimal("15.10")
    assert isinstance(stored.invoice.total_amount, Decimal)
    assert stored.invoice.source_updated_at == UPDATED
    assert stored.invoice.source_updated_at.tzinfo is not None
    assert stored.invoice.last_run_id == run
    assert [type(item) for item in stored.items] == [InvoiceItemRow, InvoiceItemRow]
    assert [(i.line_no, i.category, i.total) for i in stored.items] == [
        (1, "laboratory", Decimal("15.00")),
        (2, "pharmacy", Decimal("0.10")),
    ]
    assert stored.items[0].quantity == Decimal("1.5")
    assert store.stored_invoice(SOURCE, "missing") is None


def test_quarantined_records_read_back_as_their_table_model(store: Store) -> None:
    run = store.start_run(SOURCE, "sync", None)
    issues = [Issue(Reason.NO_ITEMS, "items", "no items"), Issue(Reason.FIELD_MISSING, "x", "m")]
    bad = [Rejected("K1", {"id": "K1"}, None, issues), Rejected("K2", {"id": "K2"}, None, [])]
    store.write_batch(run, SOURCE, [], bad, fetched=2, resume=None)

    rows = store.quarantine_rows(SOURCE, reason=Reason.NO_ITEMS.value)
    assert [type(r) for r in rows] == [QuarantineRow]
    (row,) = rows
    assert (row.record_key, row.raw_payload, row.attempts) == ("K1", {"id": "K1"}, 1)
    assert row.reason_codes == ",FIELD_MISSING,NO_ITEMS,"
    assert row.first_seen_at.tzinfo is not None
    assert [e.record_key for e in store.quarantine_entries(SOURCE)] == ["K1", "K2"]
    assert store.quarantine_entries(SOURCE)[0].issues == issues


def test_transaction_commits_at_the_end_and_rolls_back_on_any_error(store: Store) -> None:
    now = datetime.now(UTC)
    with store.transaction() as conn:
        conn.execute(insert(sync_state).values(source="a", updated_at=now))

    with pytest.raises(RuntimeError), store.transaction() as conn:
        conn.execute(insert(sync_state).values(source="b", updated_at=now))
        raise RuntimeError("the caller gave up")

    # A database failure surfaces as StoreError, and nothing of the block is kept.
    failure = pytest.raises(StoreError, match="nothing of this batch was kept")
    with failure, store.transaction() as conn:
        conn.execute(insert(sync_state).values(source="c", updated_at=now))
        conn.execute(insert(sync_state).values(source="a", updated_at=now))

    with store.engine.connect() as conn:
        sources = conn.execute(select(sync_state.c.source).order_by(sync_state.c.source))
        assert list(sources.scalars()) == ["a"]
        assert conn.execute(select(func.count()).select_from(sync_state)).scalar_one() == 1
    # The write lock was given back each time: another transaction can start.
    with store.transaction() as conn:
        conn.execute(insert(sync_state).values(source="d", updated_at=now))
