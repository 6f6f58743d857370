"""Business validation of canonical invoices: every reason code it can give, the item and
invoice arithmetic (fractional quantities included), and the normalized stored form."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest

from connector.issues import Issue, Reason, errors_only
from connector.model import Category, Invoice, InvoiceStatus, LineItem, Patient
from connector.pipeline.validation import normalized, validate_invoice


def item(**overrides: Any) -> LineItem:
    fields: dict[str, Any] = {
        "category": Category.CONSULTATION,
        "description": "General Consultation",
        "quantity": Decimal("1"),
        "unit_price": Decimal("450.00"),
        "total": Decimal("450.00"),
    }
    fields.update(overrides)
    return LineItem(**fields)


def invoice(*items: LineItem, **overrides: Any) -> Invoice:
    lines = items or (
        item(),
        item(
            category=Category.LABORATORY,
            description="Full Blood Count",
            quantity=Decimal("2"),
            unit_price=Decimal("400.00"),
            total=Decimal("800.00"),
        ),
    )
    fields: dict[str, Any] = {
        "source": "test",
        "id": "INV-001",
        "invoice_number": "INV-2025-001",
        "invoice_date": date(2025, 1, 15),
        "total_amount": sum((line.total for line in lines), Decimal("0.00")),
        "currency": "USD",
        "status": InvoiceStatus.PAID,
        "source_status": "paid",
        "facility": "CFB Medical Hospital",
        "patient": Patient(name="John Doe", policy_number="POL-456789"),
        "items": lines,
        "source_updated_at": datetime(2025, 1, 16, 9, 0, tzinfo=UTC),
    }
    fields.update(overrides)
    return Invoice(**fields)


def codes(issues: list[Issue]) -> set[tuple[Reason, str]]:
    return {(issue.code, issue.path) for issue in issues}


def test_the_documented_example_is_accepted() -> None:
    assert validate_invoice(invoice()) == []


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"invoice_number": None}, {(Reason.FIELD_MISSING, "invoice_number")}),
        ({"invoice_number": ""}, {(Reason.FIELD_MISSING, "invoice_number")}),
        ({"invoice_date": None}, {(Reason.FIELD_MISSING, "invoice_date")}),
        (
            {"patient": Patient(name=None, policy_number="POL-1")},
            {(Reason.FIELD_MISSING, "patient.name")},
        ),
        ({"status": None, "source_status": "refunded"}, {(Reason.STATUS_UNMAPPED, "status")}),
        (
            {"patient": Patient(name="John Doe", policy_number=None)},
            {(Reason.POLICY_MISSING, "patient.policy_number")},
        ),
        ({"paid_amount": Decimal("-1.00")}, {(Reason.AMOUNT_INVALID, "paid_amount")}),
        ({"paid_amount": Decimal("10.001")}, {(Reason.MONEY_PRECISION, "paid_amount")}),
        (
            {"total_amount": Decimal("1250.005")},
            {
                (Reason.MONEY_PRECISION, "total_amount"),
                (Reason.INVOICE_TOTAL_MISMATCH, "total_amount"),
            },
        ),
        (
            {"total_amount": Decimal("1255.00")},
            {(Reason.INVOICE_TOTAL_MISMATCH, "total_amount")},
        ),
        (
            {"total_amount": Decimal("1E+13")},
            {
                (Reason.AMOUNT_INVALID, "total_amount"),
                (Reason.INVOICE_TOTAL_MISMATCH, "total_amount"),
            },
        ),
        ({"items": (), "total_amount": Decimal("0.00")}, {(Reason.NO_ITEMS, "items")}),
    ],
)
def test_invoice_level_reason_codes(
    overrides: dict[str, Any], expected: set[tuple[Reason, str]]
) -> None:
    assert codes(validate_invoice(invoice(**overrides))) == expected


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            item(category=None, source_category="miscellaneous"),
            {(Reason.CATEGORY_UNMAPPED, "items[0].category")},
        ),
        (item(description=None), {(Reason.FIELD_MISSING, "items[0].description")}),
        (item(description=""), {(Reason.FIELD_MISSING, "items[0].description")}),
        (
            item(quantity=Decimal("0"), total=Decimal("0.00")),
            {(Reason.AMOUNT_INVALID, "items[0].quantity")},
        ),
        (
            item(total=Decimal("460.00")),
            {(Reason.ITEM_TOTAL_MISMATCH, "items[0].total")},
        ),
        (
            item(unit_price=Decimal("450.001"), total=Decimal("450.00")),
            {(Reason.MONEY_PRECISION, "items[0].unit_price")},
        ),
        (
            item(unit_price=Decimal("-450.00"), quantity=Decimal("-1")),
            {
                (Reason.AMOUNT_INVALID, "items[0].unit_price"),
                (Reason.AMOUNT_INVALID, "items[0].quantity"),
            },
        ),
    ],
)
def test_item_level_reason_codes(line: LineItem, expected: set[tuple[Reason, str]]) -> None:
    assert codes(validate_invoice(invoice(line, total_amount=line.total))) == expected


def test_every_issue_of_an_invoice_is_reported_together() -> None:
    broken = invoice(
        item(category=None, description=None, total=Decimal("1.00")),
        item(quantity=Decimal("2"), unit_price=Decimal("10.005"), total=Decimal("20.01")),
        invoice_number=None,
        status=None,
        patient=Patient(name="", policy_number=None),
        total_amount=Decimal("5.00"),
    )
    assert {issue.code for issue in validate_invoice(broken)} == {
        Reason.FIELD_MISSING,
        Reason.STATUS_UNMAPPED,
        Reason.CATEGORY_UNMAPPED,
        Reason.ITEM_TOTAL_MISMATCH,
        Reason.MONEY_PRECISION,
        Reason.INVOICE_TOTAL_MISMATCH,
        Reason.POLICY_MISSING,
    }
    paths = {issue.path for issue in validate_invoice(broken)}
    assert {"invoice_number", "patient.name", "items[0].category", "items[0].description"} <= paths
    assert {"items[0].total", "items[1].unit_price", "total_amount", "status"} <= paths


@pytest.mark.parametrize(
    ("quantity", "unit_price", "total"),
    [
        ("1.5", "33.33", "50.00"),  # 49.995 rounds half up
        ("0.5", "0.01", "0.01"),  # 0.005 rounds half up
        ("0.333", "30.00", "9.99"),
        ("2.25", "12.40", "27.90"),
        ("0.1", "0.10", "0.01"),
        ("3", "46.13", "138.39"),
    ],
)
def test_item_arithmetic_with_fractional_quantities(
    quantity: str, unit_price: str, total: str
) -> None:
    line = item(quantity=Decimal(quantity), unit_price=Decimal(unit_price), total=Decimal(total))
    assert validate_invoice(invoice(line, total_amount=Decimal(total))) == []
    off_by_a_cent = Decimal(total) + Decimal("0.01")
    wrong = item(quantity=Decimal(quantity), unit_price=Decimal(unit_price), total=off_by_a_cent)
    assert codes(validate_invoice(invoice(wrong, total_amount=off_by_a_cent))) == {
        (Reason.ITEM_TOTAL_MISMATCH, "items[0].total")
    }


def test_invoice_total_is_compared_to_the_cent_without_rounding() -> None:
    lines = (item(total=Decimal("450.00")), item(total=Decimal("450.00")))
    assert validate_invoice(invoice(*lines, total_amount=Decimal("900.00"))) == []
    assert validate_invoice(invoice(*lines, total_amount=Decimal("900"))) == []
    issues = validate_invoice(invoice(*lines, total_amount=Decimal("900.01")))
    assert codes(issues) == {(Reason.INVOICE_TOTAL_MISMATCH, "total_amount")}
    assert "900.01" in issues[0].message and "900.00" in issues[0].message


def test_policy_check_replaces_the_plain_policy_presence_rule() -> None:
    seen: list[str] = []

    def registry(candidate: Invoice) -> list[Issue]:
        seen.append(candidate.id)
        number = candidate.patient.policy_number or ""
        if not number.startswith("POL-"):
            return [Issue(Reason.POLICY_FORMAT, "patient.policy_number", "bad format")]
        if number == "POL-000000":
            return [Issue(Reason.POLICY_INACTIVE, "patient.policy_number", "inactive")]
        if number != "POL-456789":
            return [Issue(Reason.POLICY_UNKNOWN, "patient.policy_number", "unknown")]
        return []

    def with_policy(number: str | None) -> Invoice:
        return invoice(patient=Patient(name="John Doe", policy_number=number))

    assert validate_invoice(with_policy("POL-456789"), registry) == []
    assert codes(validate_invoice(with_policy("X-1"), registry)) == {
        (Reason.POLICY_FORMAT, "patient.policy_number")
    }
    assert codes(validate_invoice(with_policy("POL-999999"), registry)) == {
        (Reason.POLICY_UNKNOWN, "patient.policy_number")
    }
    assert codes(validate_invoice(with_policy("POL-000000"), registry)) == {
        (Reason.POLICY_INACTIVE, "patient.policy_number")
    }
    assert seen == ["INV-001"] * 4


def test_warnings_do_not_reject() -> None:
    issues = [
        Issue(Reason.POLICY_UNKNOWN, "patient.policy_number", "checked later", "warning"),
        Issue(Reason.FIELD_MISSING, "facility", "nice to have", "warning"),
    ]
    assert errors_only(issues) == []
    assert Issue.from_dict(issues[0].as_dict()) == issues[0]


def test_normalized_quantizes_every_amount_to_two_places() -> None:
    raw = invoice(
        item(quantity=Decimal("2"), unit_price=Decimal("12.5"), total=Decimal("25")),
        item(unit_price=Decimal("0.1"), total=Decimal("0.1")),
        total_amount=Decimal("25.1"),
        paid_amount=Decimal("10"),
    )
    assert validate_invoice(raw) == []
    stored = normalized(raw)
    assert str(stored.total_amount) == "25.10"
    assert str(stored.paid_amount) == "10.00"
    assert [str(line.unit_price) for line in stored.items] == ["12.50", "0.10"]
    assert [str(line.total) for line in stored.items] == ["25.00", "0.10"]
    assert [line.quantity for line in stored.items] == [Decimal("2"), Decimal("1")]
    assert normalized(invoice(paid_amount=None)).paid_amount is None
    # The same amounts written differently are the same stored invoice.
    spelled_out = invoice(
        item(quantity=Decimal("2"), unit_price=Decimal("12.50"), total=Decimal("25.00")),
        item(unit_price=Decimal("0.10"), total=Decimal("0.10")),
        total_amount=Decimal("25.10"),
        paid_amount=Decimal("10.00"),
    )
    assert normalized(spelled_out).content_hash() == stored.content_hash()
    assert normalized(stored) == stored


def test_content_hash_changes_with_any_content() -> None:
    base = normalized(invoice())
    assert base.content_hash() == normalized(invoice()).content_hash()
    assert normalized(invoice(facility="Elsewhere")).content_hash() != base.content_hash()
    later = invoice(source_updated_at=datetime(2025, 2, 1, tzinfo=UTC))
    assert normalized(later).content_hash() != base.content_hash()


@pytest.mark.parametrize("quantity", ["0.1234567", "1000000000000"], ids=["7-places", "huge"])
def test_quantities_the_store_cannot_keep_exactly_are_amount_invalid(quantity: str) -> None:
    line = item(quantity=Decimal(quantity), unit_price=Decimal("0.00"), total=Decimal("0.00"))
    found = codes(validate_invoice(invoice(line, total_amount=Decimal("0.00"))))
    assert (Reason.AMOUNT_INVALID, "items[0].quantity") in found


@pytest.mark.parametrize(
    ("written", "plain"),
    [
        ("1.500000", "1.5"),
        ("3.000", "3"),
        ("100", "100"),
        ("1E+2", "100"),
        ("0.123456", "0.123456"),
    ],
)
def test_normalized_spells_quantities_plainly(written: str, plain: str) -> None:
    line = item(quantity=Decimal(written), unit_price=Decimal("0.00"), total=Decimal("0.00"))
    stored = normalized(invoice(line, total_amount=Decimal("0.00")))
    assert str(stored.items[0].quantity) == plain


def test_text_longer_than_the_store_keeps_is_field_invalid() -> None:
    long_line = item(description="x" * 1001, source_category="y" * 301)
    found = validate_invoice(
        invoice(
            long_line,
            id="I" * 201,
            invoice_number="N" * 201,
            facility="F" * 301,
            patient=Patient(name="P" * 301, policy_number="POL-" + "9" * 97),
            total_amount=long_line.total,
        )
    )
    assert {(i.code, i.path) for i in found} == {
        (Reason.FIELD_INVALID, "id"),
        (Reason.FIELD_INVALID, "invoice_number"),
        (Reason.FIELD_INVALID, "facility"),
        (Reason.FIELD_INVALID, "patient.name"),
        (Reason.FIELD_INVALID, "patient.policy_number"),
        (Reason.FIELD_INVALID, "items[0].description"),
        (Reason.FIELD_INVALID, "items[0].source_category"),
    }
    at_the_limit = invoice(item(description="x" * 1000), invoice_number="N" * 200)
    assert validate_invoice(at_the_limit) == []


@pytest.mark.parametrize("currency", ["US Dollar", "usd", "US", ""])
def test_currency_must_be_an_iso_code(currency: str) -> None:
    assert codes(validate_invoice(invoice(currency=currency))) == {
        (Reason.FIELD_INVALID, "currency")
    }
