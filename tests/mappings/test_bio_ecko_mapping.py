"""Mapping tests for Bio Ecko invoice details, from JSON fixtures alone: the example built from
the vendor doc, the status table, the vendor's quirks (GST and discounts folded into net
amounts, IST timestamps, payments, insurance) and malformed payloads."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from connector.errors import RecordError
from connector.issues import Reason
from connector.mapping.kit import CategoryMatch, MappingContext
from connector.model import Category, Invoice, InvoiceStatus, to_cents
from connector.pipeline.validation import normalized, validate_invoice
from mappings.bio_ecko import MAPPING, STATUS_MAP, to_canonical

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bio_ecko"
DEPARTMENT_CATEGORIES = {
    "General Medicine": Category.CONSULTATION,
    "Surgery": Category.SURGERY,
    "Pharmacy": Category.PHARMACY,
    "Radiology": Category.RADIOLOGY,
    "Physiotherapy": Category.PHYSIOTHERAPY,
}


def load(name: str) -> Any:
    # orjson, as the adapter decodes: amounts arrive as floats, exactly as in production.
    return orjson.loads((FIXTURES / name).read_bytes())


def context(**overrides: Any) -> MappingContext:
    options: dict[str, Any] = {"currency": "INR", "timezone": "Asia/Kolkata", **overrides}
    return MAPPING.context("bio_ecko", **options)


def by_department(word: str | None, description: str | None) -> CategoryMatch:
    category = DEPARTMENT_CATEGORIES.get(word or "")
    return CategoryMatch(category, f"test:{word}" if category else None)


def codes(invoice: Invoice) -> set[str]:
    return {issue.code.value for issue in validate_invoice(invoice)}


def record_error_codes(raw: Any) -> dict[str, str]:
    with pytest.raises(RecordError) as caught:
        to_canonical(raw, context())
    return {issue.path: issue.code.value for issue in caught.value.issues}


# -- the documented example --------------------------------------------------------------


def test_documented_example_maps_to_the_expected_invoice_to_the_cent() -> None:
    invoice = to_canonical(load("detail_documented.json"), context())
    expected = load("detail_documented.expected.json")
    assert normalized(invoice).model_dump(mode="json") == expected
    # Grand total = the sum of the tax-inclusive line amounts = the sum of canonical items.
    assert invoice.total_amount == Decimal("3555.80")
    assert sum((item.total for item in invoice.items), Decimal(0)) == invoice.total_amount
    for item in invoice.items:
        assert to_cents(item.quantity * item.unit_price) == item.total


def test_documented_example_is_accepted_once_departments_are_categorized() -> None:
    raw = load("detail_documented.json")
    # The baseline rules only know words that already are categories: "General Medicine" is not.
    assert codes(to_canonical(raw, context())) == {"CATEGORY_UNMAPPED"}
    assert codes(to_canonical(raw, context(categorize=by_department))) == set()


# -- status table ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("word", "status"),
    [
        ("draft", InvoiceStatus.PENDING),
        ("finalized", InvoiceStatus.UNPAID),
        ("paid", InvoiceStatus.PAID),
        ("partially_paid", InvoiceStatus.UNPAID),
        ("cancelled", InvoiceStatus.VOID),
        ("Paid", InvoiceStatus.PAID),
    ],
)
def test_status_table(word: str, status: InvoiceStatus) -> None:
    raw = {**load("detail_documented.json"), "status": word}
    invoice = to_canonical(raw, context())
    assert invoice.status is status
    assert invoice.source_status == word


def test_the_status_table_is_explicit_and_complete() -> None:
    assert set(STATUS_MAP) == {"draft", "finalized", "paid", "partially_paid", "cancelled"}


@pytest.mark.parametrize("word", ["refunded", "written_off", "canceled", "void"])
def test_an_unknown_status_word_is_never_guessed(word: str) -> None:
    raw = {**load("detail_documented.json"), "status": word}
    invoice = to_canonical(raw, context(categorize=by_department))
    assert invoice.status is None
    assert invoice.source_status == word
    assert codes(invoice) == {"STATUS_UNMAPPED"}


def test_config_status_map_overrides_the_table() -> None:
    raw = {**load("detail_documented.json"), "status": "refunded"}
    ctx = context(status_overrides={"refunded": "void", "finalized": "pending"})
    assert to_canonical(raw, ctx).status is InvoiceStatus.VOID
    raw["status"] = "finalized"
    assert to_canonical(raw, ctx).status is InvoiceStatus.PENDING


def test_partially_paid_keeps_the_paid_amount() -> None:
    invoice = to_canonical(load("detail_documented.json"), context())
    assert invoice.status is InvoiceStatus.UNPAID
    assert invoice.paid_amount == Decimal("1500.00")


# -- quirks ------------------------------------------------------------------------------


def test_timestamps_with_an_ist_offset_become_utc() -> None:
    invoice = to_canonical(load("detail_documented.json"), context())
    assert invoice.source_updated_at == datetime(2026, 3, 15, 5, 0, tzinfo=UTC)


def test_a_timestamp_without_offset_is_read_in_the_configured_zone() -> None:
    raw = load("detail_inter_state.json")  # "2026-03-16T09:15:00", no offset
    assert to_canonical(raw, context()).source_updated_at == datetime(
        2026, 3, 16, 3, 45, tzinfo=UTC
    )
    assert to_canonical(raw, context(timezone="UTC")).source_updated_at == datetime(
        2026, 3, 16, 9, 15, tzinfo=UTC
    )


def test_igst_and_discount_lines_fold_into_one_unit_at_their_net_amount() -> None:
    invoice = to_canonical(load("detail_inter_state.json"), context(categorize=by_department))
    mri, physio = invoice.items
    # 1 × 5000.00 - 500.00 + IGST 810.00
    assert (mri.quantity, mri.unit_price, mri.total) == (
        Decimal(1),
        Decimal("5310.00"),
        Decimal("5310.00"),
    )
    assert mri.description == "MRI Scan (1 × 5000.00, less 500.00, +18% GST 810.00)"
    # A discount alone also changes the amount: 3 × 600.00 - 180.00, exempt from GST.
    assert (physio.quantity, physio.unit_price) == (Decimal(1), Decimal("1620.00"))
    assert physio.description == "Physiotherapy Session (3 × 600.00, less 180.00)"
    assert invoice.total_amount == Decimal("6930.00")
    assert codes(invoice) == {"POLICY_MISSING"}


def test_a_line_without_discount_or_tax_keeps_quantity_and_rate() -> None:
    raw = load("detail_inter_state.json")
    raw["line_items"] = [
        {
            "service_name": "Lipid Panel",
            "department": "Pathology",
            "quantity": 2,
            "rate": 350.0,
            "discount": 0,
            "tax_rate": 0,
            "tax": 0,
            "amount": 700.0,
        }
    ]
    raw["totals"]["grand_total"] = 700.0
    (item,) = to_canonical(raw, context()).items
    assert (item.quantity, item.unit_price, item.total) == (Decimal(2), Decimal(350), Decimal(700))
    assert item.description == "Lipid Panel"


def test_gst_without_a_stated_rate_is_still_explained() -> None:
    raw = load("detail_documented.json")
    del raw["line_items"][1]["tax_rate"]
    item = to_canonical(raw, context()).items[1]
    assert item.description == "Minor Surgery (1 × 2500.00, less 250.00, +GST 405.00)"
    assert item.unit_price == Decimal("2655.00")


@pytest.mark.parametrize(
    ("rate", "shown"), [("18%", "+18% GST"), (12.5, "+12.5% GST"), ("n/a", "+GST")]
)
def test_the_gst_rate_is_read_leniently(rate: Any, shown: str) -> None:
    raw = load("detail_documented.json")
    raw["line_items"][1]["tax_rate"] = rate
    item = to_canonical(raw, context()).items[1]
    assert f"{shown} 405.00)" in (item.description or "")
    assert item.unit_price == Decimal("2655.00")


def test_patient_without_insurance_has_no_policy_but_keeps_the_vendor_patient_id() -> None:
    invoice = to_canonical(load("detail_inter_state.json"), context())
    assert invoice.patient.name == "Rahul Menon"
    assert invoice.patient.policy_number is None
    assert invoice.patient.source_ref == "pat_20931"


def test_insured_patient_carries_the_policy_number() -> None:
    patient = to_canonical(load("detail_documented.json"), context()).patient
    assert (patient.policy_number, patient.source_ref) == ("POL-482913", "pat_10482")


@pytest.mark.parametrize(
    ("payments", "paid"),
    [
        (None, None),
        ([], Decimal("0.00")),
        ([{"amount": 1000.0}, {"amount": 555.5}], Decimal("1555.50")),
    ],
)
def test_paid_amount_is_the_sum_of_payments_received(
    payments: list[dict[str, Any]] | None, paid: Decimal | None
) -> None:
    raw = load("detail_documented.json")
    if payments is None:
        del raw["payments"]
    else:
        raw["payments"] = payments
    assert to_canonical(raw, context()).paid_amount == paid


def test_departments_are_the_source_category_and_go_through_the_rules() -> None:
    seen: list[tuple[str | None, str | None]] = []

    def rules(word: str | None, description: str | None) -> CategoryMatch:
        seen.append((word, description))
        return by_department(word, description)

    invoice = to_canonical(load("detail_documented.json"), context(categorize=rules))
    assert seen == [
        ("General Medicine", "General Consultation"),
        ("Surgery", "Minor Surgery"),
        ("Pharmacy", "Paracetamol 500mg (strip of 10)"),
    ]
    assert [i.source_category for i in invoice.items] == ["General Medicine", "Surgery", "Pharmacy"]
    assert [i.category for i in invoice.items] == [
        Category.CONSULTATION,
        Category.SURGERY,
        Category.PHARMACY,
    ]
    assert invoice.items[0].category_rule == "test:General Medicine"


def test_currency_comes_from_config_unless_the_record_names_one() -> None:
    raw = load("detail_documented.json")
    assert to_canonical(raw, context()).currency == "INR"
    assert to_canonical({**raw, "currency": "usd"}, context()).currency == "USD"


def test_branch_is_the_facility_and_may_be_absent() -> None:
    raw = load("detail_documented.json")
    assert to_canonical(raw, context()).facility == "Bio Ecko Clinic, Indiranagar"
    del raw["branch"]
    assert to_canonical(raw, context()).facility is None


def test_a_line_whose_parts_do_not_add_up_is_an_item_total_mismatch() -> None:
    raw = load("detail_documented.json")
    raw["line_items"][1]["amount"] = 2665.0  # parts give 2655.00
    raw["totals"]["grand_total"] = 3565.8
    assert codes(to_canonical(raw, context(categorize=by_department))) == {"ITEM_TOTAL_MISMATCH"}


def test_a_grand_total_that_is_not_the_sum_of_the_lines_is_an_invoice_total_mismatch() -> None:
    raw = load("detail_documented.json")
    raw["totals"]["grand_total"] = 3560.8
    assert codes(to_canonical(raw, context(categorize=by_department))) == {"INVOICE_TOTAL_MISMATCH"}


def test_missing_invoice_number_and_no_items_are_reported_by_validation() -> None:
    raw = load("detail_documented.json")
    del raw["invoice_number"]
    raw["line_items"] = []
    assert codes(to_canonical(raw, context())) == {"FIELD_MISSING", "NO_ITEMS"}


def test_a_list_summary_is_not_a_detail() -> None:
    # The list rows lack patient, line items and totals: the adapter must fetch the detail.
    found = record_error_codes(load("summary_row.json"))
    assert found == {"patient": "FIELD_MISSING", "totals": "FIELD_MISSING"}


def test_mapping_is_deterministic() -> None:
    raw = load("detail_documented.json")
    first = to_canonical(copy.deepcopy(raw), context())
    second = to_canonical(copy.deepcopy(raw), context())
    assert normalized(first).content_hash() == normalized(second).content_hash()


def test_record_id_reads_the_vendor_id() -> None:
    assert MAPPING.record_id(load("detail_documented.json")) == "inv_7f3a9c21"
    assert MAPPING.record_id({"invoice_number": "x"}) is None
    assert MAPPING.record_id(["not", "a", "record"]) is None


# -- malformed payloads ------------------------------------------------------------------


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(raw: dict[str, Any]) -> None:
        node: Any = raw
        *parents, last = path.split(".")
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        key: Any = int(last) if isinstance(node, list) else last
        if value is _DELETE:
            del node[key]
        else:
            node[key] = value

    return change


_DELETE = object()


@pytest.mark.parametrize(
    ("change", "path", "code"),
    [
        (_set("id", _DELETE), "id", Reason.FIELD_MISSING),
        (_set("id", "  "), "id", Reason.FIELD_MISSING),
        (_set("date", "14-03-2026"), "date", Reason.FIELD_INVALID),
        (_set("date", "2026-02-30"), "date", Reason.FIELD_INVALID),
        (_set("status", None), "status", Reason.FIELD_MISSING),
        (_set("totals.grand_total", 3555.805), "totals.grand_total", Reason.MONEY_PRECISION),
        (_set("totals.grand_total", "lots"), "totals.grand_total", Reason.AMOUNT_INVALID),
        (_set("totals", _DELETE), "totals", Reason.FIELD_MISSING),
        (_set("line_items.0.rate", -800.0), "line_items.0.rate", Reason.AMOUNT_INVALID),
        (_set("line_items.1.quantity", 0), "line_items.1.quantity", Reason.AMOUNT_INVALID),
        (_set("line_items.1.tax", 405.005), "line_items.1.tax", Reason.MONEY_PRECISION),
        (_set("line_items.2.amount", None), "line_items.2.amount", Reason.AMOUNT_INVALID),
        (_set("line_items.2.amount", _DELETE), "line_items.2.amount", Reason.FIELD_MISSING),
        (_set("line_items", "none"), "line_items", Reason.PAYLOAD_INVALID),
        (_set("line_items.0", "a line"), "line_items.0", Reason.PAYLOAD_INVALID),
        (_set("patient", "Ananya"), "patient", Reason.PAYLOAD_INVALID),
        (_set("payments.0.amount", -1500.0), "payments.0.amount", Reason.AMOUNT_INVALID),
        (_set("updated_at", "yesterday"), "updated_at", Reason.FIELD_INVALID),
    ],
)
def test_malformed_payloads_give_specific_reason_codes(
    change: Callable[[dict[str, Any]], None], path: str, code: Reason
) -> None:
    raw = load("detail_documented.json")
    change(raw)
    assert record_error_codes(raw) == {path: code.value}


def test_every_problem_of_a_record_is_reported_at_once() -> None:
    raw = load("detail_documented.json")
    del raw["id"]
    raw["date"] = "14/03/2026"
    raw["line_items"][0]["rate"] = 800.001
    assert record_error_codes(raw) == {
        "id": "FIELD_MISSING",
        "date": "FIELD_INVALID",
        "line_items.0.rate": "MONEY_PRECISION",
    }


@pytest.mark.parametrize("raw", [None, [], "invoice", 42])
def test_a_record_that_is_not_an_object_is_a_payload_error(raw: Any) -> None:
    assert set(record_error_codes(raw).values()) == {"PAYLOAD_INVALID"}


# -- the fold rule as a property -----------------------------------------------------------

parse_cents = st.integers(min_value=0, max_value=5_000_000).map(lambda c: Decimal(c).scaleb(-2))


@given(
    quantity=st.integers(min_value=1, max_value=20),
    rate=parse_cents,
    discount_share=st.integers(min_value=0, max_value=100),
    tax_percent=st.sampled_from([0, 5, 12, 18, 28]),
)
def test_a_consistent_vendor_line_always_folds_into_a_valid_item(
    quantity: int, rate: Decimal, discount_share: int, tax_percent: int
) -> None:
    gross = to_cents(quantity * rate)
    discount = to_cents(gross * discount_share / 100)
    tax = to_cents((gross - discount) * tax_percent / 100)
    amount = gross - discount + tax
    raw = load("detail_documented.json")
    raw["line_items"] = [
        {
            "service_name": "Service",
            "department": "Surgery",
            "quantity": quantity,
            "rate": str(rate),
            "discount": str(discount),
            "tax_rate": tax_percent,
            "tax": str(tax),
            "amount": str(amount),
        }
    ]
    raw["totals"]["grand_total"] = str(amount)
    invoice = to_canonical(raw, context())
    assert codes(invoice) == set()
    (item,) = invoice.items
    assert item.total == amount
    if discount or tax:
        assert item.quantity == 1 and item.unit_price == amount
    else:
        assert (item.quantity, item.unit_price) == (Decimal(quantity), rate)
