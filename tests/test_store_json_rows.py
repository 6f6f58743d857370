"""SQLite's insert rows built from an accepted invoice's JSON (the writer process's path)
equal the rows built from the model, value for value: hypothesis over every field's shapes
(decimal exponents, timestamps with and without microseconds, other UTC offsets, absent
values, any text). tests/test_store_writer.py holds whole syncs of the sandbox equal both ways.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from connector.model import Category, Invoice, InvoiceStatus, LineItem, Patient
from connector.store.bulk import Accepted
from connector.store.sqlite_bulk import (
    accepted_item_tuples,
    invoice_tuple,
    item_tuples,
    sqlite_datetime,
    sqlite_datetime_of_json,
)

decimals = st.decimals(allow_nan=False, allow_infinity=False, places=None).filter(
    lambda d: abs(d) < Decimal("1e15")
) | st.sampled_from([Decimal("0"), Decimal("-0.00"), Decimal("1E+2"), Decimal("80.00")])
texts = st.none() | st.text(max_size=40)
zones = st.sampled_from(
    [UTC, timezone(timedelta(hours=10)), timezone(timedelta(hours=-5, minutes=-30))]
)
moments = st.builds(
    lambda d, zone: d.replace(tzinfo=zone),
    st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2100, 1, 1)),
    zones,
)
items = st.builds(
    LineItem,
    category=st.none() | st.sampled_from(list(Category)),
    description=texts,
    quantity=decimals,
    unit_price=decimals,
    total=decimals,
    source_category=texts,
    category_rule=texts,
)
invoices = st.builds(
    Invoice,
    source=st.text(min_size=1, max_size=20),
    id=st.text(min_size=1, max_size=30),
    invoice_number=texts,
    invoice_date=st.none() | st.dates(min_value=date(1000, 1, 1)),
    total_amount=decimals,
    paid_amount=st.none() | decimals,
    currency=st.sampled_from(["AUD", "EUR", "USD"]),
    status=st.none() | st.sampled_from(list(InvoiceStatus)),
    source_status=texts,
    facility=texts,
    patient=st.builds(Patient, name=texts, policy_number=texts, source_ref=texts),
    items=st.lists(items, max_size=4).map(tuple),
    source_updated_at=st.none() | moments,
)


def both_ways(invoice: Invoice) -> tuple[Accepted, Accepted]:
    content = invoice.content_json()
    digest = invoice.content_hash()
    return Accepted(invoice, digest), Accepted(None, digest, content, invoice_id=invoice.id)


@settings(max_examples=400, deadline=None)
@given(invoices)
def test_rows_from_the_json_equal_rows_from_the_model(invoice: Invoice) -> None:
    from_model, from_json = both_ways(invoice)
    now = "2026-12-06 07:00:00.000000"
    assert invoice_tuple(from_json, 7, now) == invoice_tuple(from_model, 7, now)
    assert list(accepted_item_tuples(from_json)) == list(item_tuples(invoice))
    assert list(accepted_item_tuples(from_model)) == list(item_tuples(invoice))
    # The model is built from the JSON only when asked for, and is then the same invoice.
    assert from_json.invoice == invoice


@settings(max_examples=300, deadline=None)
@given(moments)
def test_a_json_timestamp_converts_as_the_datetime_does(moment: datetime) -> None:
    written = Invoice.model_validate(
        {
            "source": "s",
            "id": "i",
            "invoice_number": None,
            "invoice_date": None,
            "total_amount": "1",
            "currency": "AUD",
            "status": None,
            "source_status": None,
            "source_updated_at": moment,
        }
    ).model_dump(mode="json")["source_updated_at"]
    assert sqlite_datetime_of_json(written) == sqlite_datetime(moment)
