"""The one line-folding rule (`connector.mapping.lines`) that the Splose, Bio Ecko and Invoice
API mappings share: when a line folds, what it becomes, the one description format, and that
nothing is rounded beyond the gross."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connector.issues import Reason
from connector.mapping.kit import CategoryMatch, MappingContext
from connector.mapping.lines import (
    LineAmounts,
    added_tax,
    discount,
    fold_line,
    invoice_discount_share,
    money_text,
    number_text,
    percent_of,
    vendor_line,
)
from connector.model import Category, Invoice, InvoiceStatus
from connector.pipeline.validation import validate_invoice
from mappings import splose

D = Decimal


def test_a_line_without_adjustments_is_kept_as_billed() -> None:
    assert fold_line("Consult", D("0.5"), D("193.99")) == LineAmounts(
        "Consult", D("0.5"), D("193.99"), D("97.00")
    )
    # The vendor's own total is kept, so that validation can judge the vendor's arithmetic.
    assert fold_line("Consult", D(2), D("10.00"), stated_total=D("21.00")).total == D("21.00")


def test_a_discounted_and_taxed_line_folds_into_one_unit_at_its_net_amount() -> None:
    folded = fold_line(
        "Initial Assessment",
        D("0.5"),
        D("193.99"),
        [discount(D("20.00")), added_tax(D("7.70"), D(10))],
    )
    # 0.5 x 193.99 = 96.995 -> 97.00 (half-up, the vendors' rule), - 20.00 + 7.70
    assert folded == LineAmounts(
        "Initial Assessment (0.5 × 193.99, less 20.00, +10% tax 7.70)",
        D(1),
        D("84.70"),
        D("84.70"),
    )


def test_the_stated_total_is_kept_and_only_invoice_shares_come_off_it() -> None:
    folded = fold_line(
        "Physiotherapy Session",
        D(3),
        D("50.00"),
        [discount(D("30.00")), invoice_discount_share(D("4.00"))],
        stated_total=D("121.00"),  # one cent off the vendor's own arithmetic
    )
    assert (folded.unit_price, folded.total) == (D("116.00"), D("117.00"))
    assert folded.description == (
        "Physiotherapy Session (3 × 50.00, less 30.00, less 4.00 invoice discount)"
    )


def test_every_applied_adjustment_is_shown_even_when_it_is_zero() -> None:
    """The deliberate format: a line folded by an invoice discount of which it gets no share
    (or by a tax that rounds to nothing) still says why it was folded."""
    assert fold_line("Swab", D(1), D("0.04"), [added_tax(D("0.00"), D(10))]).description == (
        "Swab (1 × 0.04, +10% tax 0.00)"
    )
    assert fold_line("Swab", D(1), D("0.04"), [invoice_discount_share(D(0))]).description == (
        "Swab (1 × 0.04, less 0.00 invoice discount)"
    )


def test_without_a_description_a_folded_line_has_none() -> None:
    assert fold_line(None, D(2), D("5.00"), [discount(D(1))]).description is None


@pytest.mark.parametrize(
    ("number", "text"),
    [("2.000", "2"), ("0.50", "0.5"), ("1E+2", "100"), ("12.5", "12.5"), ("0.000001", "0.000001")],
)
def test_quantities_and_rates_are_plain_numbers(number: str, text: str) -> None:
    assert number_text(D(number)) == text


@pytest.mark.parametrize(
    ("amount", "text"),
    [("20", "20.00"), ("20.5", "20.50"), ("1E+3", "1000.00"), ("193.99", "193.99")],
)
def test_amounts_have_two_places(amount: str, text: str) -> None:
    assert money_text(D(amount)) == text


def test_a_fractional_cent_is_neither_rounded_nor_hidden() -> None:
    """A discount of 20.005 stays 20.005: the unit price keeps the extra place, validation
    quarantines it as MONEY_PRECISION, and the note shows what was subtracted."""
    item = vendor_line(
        _ctx(), "consultation", "Consult", D(1), D("100.00"), [discount(D("20.005"))]
    )
    assert item.unit_price == item.total == D("79.995")
    assert item.description == "Consult (1 × 100.00, less 20.005)"
    invoice = Invoice(
        source="t",
        id="1",
        invoice_number="1",
        invoice_date=date(2026, 1, 5),
        total_amount=D("79.995"),
        status=InvoiceStatus.UNPAID,
        source_status="unpaid",
        currency="USD",
        items=(item,),
    )
    paths = {(i.code, i.path) for i in validate_invoice(invoice, lambda _i: [])}
    assert (Reason.MONEY_PRECISION, "items[0].unit_price") in paths


def test_the_rules_see_the_vendor_description_not_the_folded_one() -> None:
    seen: list[tuple[str | None, str | None]] = []

    def rules(word: str | None, description: str | None) -> CategoryMatch:
        seen.append((word, description))
        return CategoryMatch(Category.DENTAL, "test")

    ctx = splose.MAPPING.context("t", currency="AUD", categorize=rules)
    item = vendor_line(ctx, "D1", "Filling", D(2), D("80.00"), [discount(D("15.00"))])
    assert seen == [("D1", "Filling")]
    assert (item.category, item.category_rule, item.source_category) == (
        Category.DENTAL,
        "test",
        "D1",
    )
    assert item.description == "Filling (2 × 80.00, less 15.00)"


def test_percent_of_rounds_half_up_to_the_cent() -> None:
    assert percent_of(D("76.99"), D(10)) == D("7.70")
    assert percent_of(D("0.05"), D(10)) == D("0.01")


@given(
    quantity=st.decimals(min_value=D("0.01"), max_value=D(1000), places=2),
    price=st.decimals(min_value=D(0), max_value=D(100000), places=2),
    off=st.decimals(min_value=D(0), max_value=D(1000), places=2),
    tax=st.decimals(min_value=D(0), max_value=D(1000), places=2),
)
def test_a_folded_line_is_exact_to_the_cent(
    quantity: Decimal, price: Decimal, off: Decimal, tax: Decimal
) -> None:
    folded = fold_line("x", quantity, price, [discount(off), added_tax(tax)])
    gross = (quantity * price).quantize(D("0.01"), rounding="ROUND_HALF_UP")
    assert folded.quantity == 1
    assert folded.unit_price == folded.total == gross - off + tax
    assert folded.unit_price.as_tuple().exponent == -2


def _ctx() -> MappingContext:
    return splose.MAPPING.context("t", currency="AUD")
