"""Mapping tests for the "Invoice API" from JSON fixtures: the documented example, status words,
the vendor's quirks (misspelt status, naive datetimes, decimal strings, discount folding) and
malformed payloads."""

from __future__ import annotations

import copy
import json
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connector.errors import RecordError
from connector.issues import Reason
from connector.mapping.kit import CategoryMatch, MappingContext, exact_category
from connector.mapping.lines import allocate
from connector.model import Category, Invoice, InvoiceStatus, to_cents
from connector.pipeline.validation import validate_invoice
from mappings.invoice_api import MAPPING, STATUS_MAP

ONE = Decimal(1)
ZERO = Decimal(0)
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "invoice_api"
# Department words the rules engine will own; the test stands in for it.
DEPARTMENTS = {
    "LAB": Category.LABORATORY,
    "PHYSIO": Category.PHYSIOTHERAPY,
    "PROCEDURE": Category.SURGERY,
}


def departments(word: str | None, description: str | None) -> CategoryMatch:
    if word in DEPARTMENTS:
        return CategoryMatch(DEPARTMENTS[word], "department")
    return exact_category(word)


def fixture(name: str) -> Any:
    # Plain floats, as orjson decodes the vendor's JSON numbers in production.
    return json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))


def context(**overrides: Any) -> MappingContext:
    options: dict[str, Any] = {"currency": "USD", "categorize": departments, **overrides}
    return MAPPING.context("invoice_api", **options)


def canonical(raw: Any, **overrides: Any) -> Invoice:
    result: Invoice = MAPPING.to_canonical(raw, context(**overrides))
    return result


def codes_of(raw: Any) -> set[str]:
    with pytest.raises(RecordError) as caught:
        canonical(raw)
    return {issue.code.value for issue in caught.value.issues}


def issues_of(invoice: Invoice) -> set[str]:
    return {issue.code.value for issue in validate_invoice(invoice)}


# -- fixtures against their expected canonical invoices ----------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "documented_example",
        "partially_paid_plain_lines",
        "line_discount",
        "invoice_discount_percent",
        "invoice_discount_amount",
    ],
)
def test_fixture_maps_to_the_expected_invoice_to_the_cent(name: str) -> None:
    expected = Invoice.model_validate(fixture(f"{name}.expected"))
    invoice = canonical(fixture(name))
    # Model equality compares Decimals by value: 210.5 == 210.50, to the cent.
    assert invoice == expected
    for got, want in zip(invoice.items, expected.items, strict=True):
        assert got.total == want.total and got.unit_price == want.unit_price


def test_documented_example_keeps_what_the_vendor_says() -> None:
    invoice = canonical(fixture("documented_example"))
    assert invoice.id == "uuid"
    assert invoice.invoice_number == "string"
    assert invoice.invoice_date == date(2026, 6, 1)
    assert (invoice.status, invoice.source_status) == (InvoiceStatus.PENDING, "DRAFT")
    assert invoice.total_amount == Decimal(0) and invoice.paid_amount == Decimal(0)
    assert invoice.patient.source_ref == "uuid"
    # The documented example has no items and no patient details: validation says so.
    assert {"NO_ITEMS", "FIELD_MISSING", "POLICY_MISSING"} <= issues_of(invoice)


def test_clean_fixtures_pass_validation() -> None:
    for name in ("partially_paid_plain_lines", "line_discount", "invoice_discount_amount"):
        assert issues_of(canonical(fixture(name))) == set(), name
    # This patient has no insurance policy number on file.
    assert issues_of(canonical(fixture("invoice_discount_percent"))) == {"POLICY_MISSING"}


# -- statuses ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("word", "status"),
    [
        ("DRAFT", InvoiceStatus.PENDING),
        ("ISSUED", InvoiceStatus.UNPAID),
        ("PARTIALY_PAID", InvoiceStatus.UNPAID),
        ("PAID", InvoiceStatus.PAID),
        ("VOID", InvoiceStatus.VOID),
        ("WRITTEN_OFF", InvoiceStatus.VOID),
    ],
)
def test_status_table(word: str, status: InvoiceStatus) -> None:
    raw = fixture("partially_paid_plain_lines") | {"status": word}
    invoice = canonical(raw)
    assert (invoice.status, invoice.source_status) == (status, word)


def test_status_table_is_exactly_the_documented_words() -> None:
    assert set(STATUS_MAP) == {"DRAFT", "ISSUED", "PARTIALY_PAID", "PAID", "VOID", "WRITTEN_OFF"}


@pytest.mark.parametrize("word", ["REFUNDED", "PARTIALLY_PAID", "CANCELLED"])
def test_unknown_status_words_are_never_guessed(word: str) -> None:
    # "PARTIALLY_PAID" is the correct English spelling, which the vendor does not send.
    invoice = canonical(fixture("partially_paid_plain_lines") | {"status": word})
    assert invoice.status is None and invoice.source_status == word
    assert "STATUS_UNMAPPED" in issues_of(invoice)


def test_config_status_map_overrides_the_table() -> None:
    raw = fixture("partially_paid_plain_lines") | {"status": "REFUNDED"}
    invoice = canonical(raw, status_overrides={"REFUNDED": "void", "DRAFT": "unpaid"})
    assert invoice.status == InvoiceStatus.VOID
    draft = canonical(raw | {"status": "DRAFT"}, status_overrides={"DRAFT": "unpaid"})
    assert draft.status == InvoiceStatus.UNPAID


def test_partially_paid_keeps_paid_amount() -> None:
    invoice = canonical(fixture("partially_paid_plain_lines"))
    assert invoice.paid_amount == Decimal("100.00")
    assert invoice.total_amount == Decimal("210.50")


# -- quirks -----------------------------------------------------------------------------------


def test_naive_issue_date_is_read_in_the_source_time_zone() -> None:
    raw = fixture("partially_paid_plain_lines") | {
        "issue_date": "2026-06-01T05:53:48.451968",
        "updated_at": "2026-06-01T05:53:48.451968",
    }
    utc = canonical(raw)
    assert utc.invoice_date == date(2026, 6, 1)
    assert utc.source_updated_at == datetime(2026, 6, 1, 5, 53, 48, 451968, tzinfo=UTC)
    sydney = canonical(raw, timezone="Australia/Sydney")
    # The calendar date the clinic wrote stays; the instant moves to UTC (AEST is +10:00).
    assert sydney.invoice_date == date(2026, 6, 1)
    assert sydney.source_updated_at == datetime(2026, 5, 31, 19, 53, 48, 451968, tzinfo=UTC)
    assert sydney.source_updated_at is not None and sydney.source_updated_at.tzinfo is not None


def test_an_aware_issue_date_gives_the_date_in_the_source_zone() -> None:
    raw = fixture("partially_paid_plain_lines") | {"issue_date": "2026-05-31T22:00:00Z"}
    assert canonical(raw).invoice_date == date(2026, 5, 31)
    assert canonical(raw, timezone="Australia/Sydney").invoice_date == date(2026, 6, 1)


def test_decimal_strings_and_numbers_map_alike() -> None:
    # FastAPI on pydantic 2 serialises Decimal fields as strings.
    numbers = canonical(fixture("invoice_discount_amount"))
    raw = fixture("invoice_discount_amount")
    for key in ("discount_amount", "paid_amount", "subtotal", "total_amount"):
        raw[key] = float(raw[key])
    for item in raw["items"]:
        for key in ("unit_price", "discount_amount", "total"):
            item[key] = float(item[key])
    assert canonical(raw) == numbers


def test_patient_comes_from_the_attached_record() -> None:
    invoice = canonical(fixture("partially_paid_plain_lines"))
    assert invoice.patient.name == "Amina Mensah"
    assert invoice.patient.policy_number == "POL-456789"
    assert invoice.patient.source_ref == "0b6c3f4e-2d9a-4c55-9a51-3e4f3b0f9d21"


def test_without_a_patient_record_the_ref_is_kept_for_the_patient_links() -> None:
    raw = fixture("partially_paid_plain_lines")
    del raw["_patient"]
    invoice = canonical(raw)
    assert invoice.patient.name is None and invoice.patient.policy_number is None
    assert invoice.patient.source_ref == raw["patient_id"]
    assert {"FIELD_MISSING", "POLICY_MISSING"} <= issues_of(invoice)


def test_a_vendor_patient_field_is_not_mistaken_for_the_attached_one() -> None:
    raw = fixture("partially_paid_plain_lines")
    raw["patient"] = raw.pop("_patient")
    assert canonical(raw).patient.name is None


def test_items_null_is_an_invoice_without_items() -> None:
    invoice = canonical(fixture("partially_paid_plain_lines") | {"items": None})
    assert invoice.items == ()
    assert "NO_ITEMS" in issues_of(invoice)


def test_item_name_falls_back_to_description() -> None:
    raw = fixture("partially_paid_plain_lines")
    raw["items"][1]["name"] = None
    assert canonical(raw).items[1].description == "Follow-up in two weeks"
    raw["items"][1]["description"] = None
    invoice = canonical(raw)
    assert invoice.items[1].description is None
    assert "FIELD_MISSING" in issues_of(invoice)


def test_vendor_category_words_go_through_the_category_rules() -> None:
    invoice = canonical(fixture("partially_paid_plain_lines"))
    assert [(i.source_category, i.category, i.category_rule) for i in invoice.items] == [
        ("LAB", Category.LABORATORY, "department"),
        ("CONSULTATION", Category.CONSULTATION, "exact:category"),
    ]
    # With only the baseline rules a department word stays unmapped, never guessed.
    baseline = MAPPING.to_canonical(
        fixture("partially_paid_plain_lines"), MAPPING.context("invoice_api", currency="USD")
    )
    assert baseline.items[0].category is None and baseline.items[0].source_category == "LAB"
    assert baseline.items[1].category == Category.CONSULTATION
    assert "CATEGORY_UNMAPPED" in issues_of(baseline)


def test_currency_comes_from_the_config() -> None:
    assert canonical(fixture("line_discount"), currency="KES").currency == "KES"


# -- discounts --------------------------------------------------------------------------------


def test_line_discount_folds_only_that_line() -> None:
    invoice = canonical(fixture("line_discount"))
    folded, plain = invoice.items
    assert (folded.quantity, folded.unit_price, folded.total) == (ONE, Decimal(120), Decimal(120))
    assert folded.description == "Physiotherapy Session (3 × 50.00, less 30.00)"
    assert (plain.quantity, plain.unit_price, plain.total) == (ONE, Decimal(20), Decimal(20))
    assert plain.description == "Eye Exam"


def test_invoice_discount_percent_is_spread_with_the_remainder_on_the_last_line() -> None:
    invoice = canonical(fixture("invoice_discount_percent"))
    assert [i.total for i in invoice.items] == [Decimal("30.00")] * 3
    assert invoice.items[0].description == "Urinalysis (1 × 33.33, less 3.33 invoice discount)"
    assert invoice.items[2].description == "HIV Test (2 × 16.67, less 3.34 invoice discount)"
    assert sum(i.total for i in invoice.items) == invoice.total_amount == Decimal("90.00")


def test_invoice_discount_amount_folds_every_line_and_reconciles() -> None:
    invoice = canonical(fixture("invoice_discount_amount"))
    assert [(i.quantity, i.unit_price, i.total) for i in invoice.items] == [
        (ONE, Decimal("28.12"), Decimal("28.12")),
        (ONE, Decimal("46.88"), Decimal("46.88")),
    ]
    assert sum(i.total for i in invoice.items) == invoice.total_amount


def test_a_line_with_no_share_of_the_invoice_discount_still_says_why_it_is_folded() -> None:
    """The one description format (docs/sources.md): every adjustment that folds a line is
    shown, a zero share too (before the fold rule was shared, such a line showed none)."""
    raw = fixture("invoice_discount_amount")
    # First: the last line takes the rounding remainder.
    raw["items"].insert(0, {"name": "Courtesy Check", "quantity": 1, "unit_price": 0, "total": 0})
    courtesy = canonical(raw).items[0]
    assert (courtesy.quantity, courtesy.unit_price, courtesy.total) == (ONE, ZERO, ZERO)
    assert courtesy.description == "Courtesy Check (1 × 0.00, less 0.00 invoice discount)"


def test_discount_amount_wins_over_percent() -> None:
    raw = fixture("invoice_discount_percent") | {"discount_amount": 10.00, "discount_percent": 50}
    invoice = canonical(raw)
    assert sum(i.total for i in invoice.items) == Decimal("90.00") == invoice.total_amount


def test_percent_without_subtotal_uses_the_lines() -> None:
    raw = fixture("invoice_discount_percent")
    del raw["subtotal"]
    assert sum(i.total for i in canonical(raw).items) == Decimal("90.00")


def test_unreconciled_invoice_discount_is_an_invoice_total_mismatch() -> None:
    # subtotal 100.00 - 10 % would be 90.00; the vendor claims 95.00.
    invoice = canonical(fixture("invoice_discount_percent") | {"total_amount": 95.00})
    assert "INVOICE_TOTAL_MISMATCH" in issues_of(invoice)


def test_a_folded_line_whose_vendor_total_is_off_is_an_item_total_mismatch() -> None:
    raw = fixture("line_discount")
    raw["items"][0]["total"] = 125.00
    codes = issues_of(canonical(raw))
    assert "ITEM_TOTAL_MISMATCH" in codes


def test_a_discount_larger_than_the_lines_is_rejected() -> None:
    raw = fixture("line_discount") | {"discount_amount": 500.00, "total_amount": 0}
    assert "AMOUNT_INVALID" in issues_of(canonical(raw))


@given(
    st.lists(
        st.tuples(
            st.integers(1, 4), st.integers(1, 100_000), st.integers(0, 100)
        ),  # quantity, price in cents, line discount in % of the line
        min_size=1,
        max_size=6,
    ),
    st.integers(1, 99),
)
def test_invoice_discount_always_reconciles_to_the_cent(
    lines: list[tuple[int, int, int]], percent: int
) -> None:
    items: list[dict[str, Any]] = []
    for index, (quantity, price_cents, line_percent) in enumerate(lines):
        price = Decimal(price_cents) / 100
        gross = to_cents(quantity * price)
        line_discount = to_cents(gross * line_percent / 100)
        items.append(
            {
                "name": f"Line {index}",
                "category": "LAB",
                "quantity": quantity,
                "unit_price": str(price),
                "discount_amount": str(line_discount),
                "total": str(gross - line_discount),
            }
        )
    subtotal = sum((Decimal(i["total"]) for i in items), Decimal(0))
    discount = to_cents(subtotal * percent / 100)
    raw = fixture("invoice_discount_percent") | {
        "items": items,
        "subtotal": str(subtotal),
        "discount_amount": 0,
        "discount_percent": percent,
        "total_amount": str(subtotal - discount),
        "paid_amount": 0,
    }
    invoice = canonical(raw)
    assert sum(i.total for i in invoice.items) == invoice.total_amount
    for item in invoice.items:
        assert item.total == to_cents(item.quantity * item.unit_price)
        if discount:
            assert item.quantity == 1
    arithmetic = {"ITEM_TOTAL_MISMATCH", "INVOICE_TOTAL_MISMATCH", "MONEY_PRECISION"}
    assert not issues_of(invoice) & arithmetic


def test_allocate_puts_the_remainder_on_the_last_share() -> None:
    assert allocate(Decimal("0.10"), [Decimal(1)] * 3) == [
        Decimal("0.03"),
        Decimal("0.03"),
        Decimal("0.04"),
    ]
    assert allocate(Decimal("5.00"), [Decimal(0), Decimal(0)]) == [Decimal(0), Decimal("5.00")]
    assert allocate(Decimal("5.00"), []) == []


# -- malformed payloads -----------------------------------------------------------------------


def _broken(change: Any) -> Any:
    raw = copy.deepcopy(fixture("partially_paid_plain_lines"))
    change(raw)
    return raw


@pytest.mark.parametrize(
    ("change", "codes"),
    [
        (lambda r: r.update(total_amount=210.505), {"MONEY_PRECISION"}),
        (lambda r: r["items"][0].update(unit_price="45.001"), {"MONEY_PRECISION"}),
        (lambda r: r.update(issue_date="01/06/2026 05:53"), {"FIELD_INVALID"}),
        (lambda r: r.pop("id"), {"FIELD_MISSING"}),
        (lambda r: r.pop("patient_id"), {"FIELD_MISSING"}),
        (lambda r: r.update(status=""), {"FIELD_MISSING"}),
        (lambda r: r.update(total_amount=-1), {"AMOUNT_INVALID"}),
        (lambda r: r.update(paid_amount="lots"), {"AMOUNT_INVALID"}),
        (lambda r: r.update(discount_percent=150), {"AMOUNT_INVALID"}),
        (lambda r: r["items"][0].update(quantity=0), {"AMOUNT_INVALID"}),
        (lambda r: r.update(items={"id": "x"}), {"PAYLOAD_INVALID"}),
        (lambda r: r.update(_patient=["Amina"]), {"PAYLOAD_INVALID"}),
        (lambda r: r.update(total_amount=210.505, issue_date="yesterday"), None),
    ],
    ids=[
        "three-decimal-total",
        "three-decimal-price",
        "bad-date",
        "no-id",
        "no-patient-id",
        "empty-status",
        "negative-total",
        "text-amount",
        "percent-over-100",
        "zero-quantity",
        "items-not-a-list",
        "patient-not-an-object",
        "every-problem-at-once",
    ],
)
def test_malformed_payloads_give_record_errors_with_reason_codes(
    change: Any, codes: set[str] | None
) -> None:
    found = codes_of(_broken(change))
    if codes is None:
        assert {"MONEY_PRECISION", "FIELD_INVALID"} <= found
    else:
        assert found == codes


@pytest.mark.parametrize("issue_date", [None, ""])
def test_a_missing_issue_date_is_a_missing_invoice_date(issue_date: str | None) -> None:
    invoice = canonical(fixture("line_discount") | {"issue_date": issue_date})
    assert invoice.invoice_date is None
    assert "FIELD_MISSING" in issues_of(invoice)


def test_not_an_object_is_payload_invalid() -> None:
    assert codes_of(["not", "an", "invoice"]) == {Reason.PAYLOAD_INVALID.value}


def test_record_id_reads_the_uuid() -> None:
    raw = fixture("partially_paid_plain_lines")
    assert MAPPING.record_id(raw) == "5f0e8a52-7c1b-4d7e-8f3a-9b2c6d1e4a70"
    assert MAPPING.record_id({"reg_number": "x"}) is None


def test_mapping_is_pure_and_deterministic() -> None:
    raw = fixture("invoice_discount_amount")
    before = copy.deepcopy(raw)
    first, second = canonical(raw), canonical(raw)
    assert first == second and first.content_hash() == second.content_hash()
    assert raw == before
