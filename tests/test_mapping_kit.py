"""The tolerant value types of `connector.mapping.kit` and how their failures become reason
codes: money text and numbers, integer cents, strict ISO dates, timestamps to aware UTC."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import BaseModel, ValidationError

from connector.errors import RecordError
from connector.issues import Reason
from connector.mapping.kit import (
    MappingContext,
    build_status_map,
    exact_category,
    id_field,
    issues_from_validation_error,
    parse_payload,
    record_path,
)
from connector.mapping.types import (
    Cents,
    DateOrTimestamp,
    IsoDate,
    Money,
    OptionalText,
    Quantity,
    SignedMoney,
    Text,
    Timestamp,
    to_utc,
)
from connector.model import Category, InvoiceStatus


class MoneyField(BaseModel):
    value: Money


class SignedMoneyField(BaseModel):
    value: SignedMoney


class CentsField(BaseModel):
    value: Cents


class QuantityField(BaseModel):
    value: Quantity


class DateField(BaseModel):
    value: IsoDate


class DateOrTimestampField(BaseModel):
    value: DateOrTimestamp


class TimestampField(BaseModel):
    value: Timestamp


class TextFields(BaseModel):
    required: Text
    optional: OptionalText = None


def reasons_of(model: type[BaseModel], raw: Any) -> list[Reason]:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(raw)
    return [issue.code for issue in issues_from_validation_error(caught.value)]


# -- money -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("$1,250.00", Decimal("1250.00")),
        ("1250.00", Decimal("1250.00")),
        (" 20 ", Decimal("20")),
        ("USD 20.50", Decimal("20.50")),
        ("€3.10", Decimal("3.10")),
        (12.5, Decimal("12.5")),
        (1250.05, Decimal("1250.05")),
        (450, Decimal("450")),
        (0, Decimal("0")),
        (Decimal("99.99"), Decimal("99.99")),
        ("999999999999.99", Decimal("999999999999.99")),
    ],
)
def test_money_accepts_the_ways_vendors_write_amounts(raw: Any, expected: Decimal) -> None:
    parsed = MoneyField.model_validate({"value": raw}).value
    assert parsed == expected
    assert isinstance(parsed, Decimal)


def test_money_keeps_the_digits_it_was_given() -> None:
    # 1250.05 as a float is 1250.0499999...; going through repr keeps the vendor's number.
    assert str(MoneyField.model_validate({"value": 1250.05}).value) == "1250.05"
    assert str(MoneyField.model_validate({"value": "$1,250.00"}).value) == "1250.00"


@pytest.mark.parametrize("raw", ["12.345", 12.345, "1250.005", 0.1 + 0.2, Decimal("1.001")])
def test_money_with_more_than_two_places_is_money_precision(raw: Any) -> None:
    assert reasons_of(MoneyField, {"value": raw}) == [Reason.MONEY_PRECISION]


@pytest.mark.parametrize(
    "raw",
    [
        float("nan"),
        float("inf"),
        float("-inf"),
        "NaN",
        "Infinity",
        Decimal("NaN"),
        Decimal("Infinity"),
        True,
        False,
        None,
        "twelve",
        "",
        "1.2.3",
        [12],
        {"amount": 12},
        "-5.00",
        -0.01,
        "1000000000000",
        10**13,
    ],
)
def test_money_that_is_not_a_finite_sane_amount_is_amount_invalid(raw: Any) -> None:
    assert reasons_of(MoneyField, {"value": raw}) == [Reason.AMOUNT_INVALID]


def test_signed_money_allows_negative_amounts_but_not_extra_places() -> None:
    assert SignedMoneyField.model_validate({"value": "-$5.25"}).value == Decimal("-5.25")
    assert reasons_of(SignedMoneyField, {"value": "-5.255"}) == [Reason.MONEY_PRECISION]
    assert reasons_of(SignedMoneyField, {"value": float("nan")}) == [Reason.AMOUNT_INVALID]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (1500000, "15000.00"),
        (1, "0.01"),
        (0, "0.00"),
        ("250", "2.50"),
        (1999.0, "19.99"),
    ],
)
def test_cents_become_two_place_decimals(raw: Any, expected: str) -> None:
    parsed = CentsField.model_validate({"value": raw}).value
    assert str(parsed) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (12.5, Reason.MONEY_PRECISION),
        ("99.9", Reason.MONEY_PRECISION),
        (-100, Reason.AMOUNT_INVALID),
        (True, Reason.AMOUNT_INVALID),
        (None, Reason.AMOUNT_INVALID),
        ([100], Reason.AMOUNT_INVALID),
        (float("nan"), Reason.AMOUNT_INVALID),
    ],
)
def test_cents_that_are_not_whole_non_negative_numbers(raw: Any, reason: Reason) -> None:
    assert reasons_of(CentsField, {"value": raw}) == [reason]


def test_quantity_may_be_fractional_but_must_be_positive() -> None:
    assert QuantityField.model_validate({"value": "1.5"}).value == Decimal("1.5")
    assert QuantityField.model_validate({"value": 0.25}).value == Decimal("0.25")
    assert reasons_of(QuantityField, {"value": 0}) == [Reason.AMOUNT_INVALID]
    assert reasons_of(QuantityField, {"value": -1}) == [Reason.AMOUNT_INVALID]


# -- dates and timestamps --------------------------------------------------------------------


def test_iso_date_accepts_only_yyyy_mm_dd() -> None:
    assert DateField.model_validate({"value": "2025-01-15"}).value == date(2025, 1, 15)
    assert DateField.model_validate({"value": date(2025, 1, 15)}).value == date(2025, 1, 15)


@pytest.mark.parametrize(
    "raw", ["15/01/2025", "01/15/2025", "2025-02-30", "20250115", "2025-1-5", 20250115, None, ""]
)
def test_iso_date_rejects_other_spellings_as_field_invalid(raw: Any) -> None:
    assert reasons_of(DateField, {"value": raw}) == [Reason.FIELD_INVALID]


def test_date_or_timestamp_takes_the_date_part_of_a_timestamp() -> None:
    parsed = DateOrTimestampField.model_validate({"value": "2025-01-15T23:30:00Z"}).value
    assert parsed == date(2025, 1, 15)
    assert DateOrTimestampField.model_validate({"value": "2025-01-15"}).value == date(2025, 1, 15)
    assert reasons_of(DateOrTimestampField, {"value": "15/01/2025 10:00"}) == [Reason.FIELD_INVALID]


@pytest.mark.parametrize(
    "raw",
    [
        "2025-01-15T10:00:00Z",
        "2025-01-15T10:00:00z",
        "2025-01-15T10:00:00+00:00",
        "2025-01-15T12:00:00+02:00",
        "2025-01-15T05:00:00-05:00",
        "2025-01-15T15:30:00.000+05:30",
        "2025-01-15 10:00:00Z",
    ],
)
def test_timestamps_with_a_zone_convert_to_the_same_utc_instant(raw: str) -> None:
    parsed = to_utc(TimestampField.model_validate({"value": raw}).value)
    assert parsed == datetime(2025, 1, 15, 10, 0, tzinfo=UTC)
    assert parsed.utcoffset() == timedelta(0)
    assert parsed.tzinfo is UTC


def test_naive_timestamps_are_read_in_the_source_time_zone() -> None:
    naive = TimestampField.model_validate({"value": "2025-01-15T10:00:00"}).value
    assert naive.tzinfo is None
    assert to_utc(naive) == datetime(2025, 1, 15, 10, 0, tzinfo=UTC)
    # New York is UTC-5 in January and UTC-4 in July.
    new_york = ZoneInfo("America/New_York")
    assert to_utc(naive, new_york) == datetime(2025, 1, 15, 15, 0, tzinfo=UTC)
    summer = TimestampField.model_validate({"value": "2025-07-15T10:00:00"}).value
    assert to_utc(summer, new_york) == datetime(2025, 7, 15, 14, 0, tzinfo=UTC)
    # An explicit offset wins over the assumed zone.
    aware = TimestampField.model_validate({"value": "2025-01-15T10:00:00Z"}).value
    assert to_utc(aware, new_york) == datetime(2025, 1, 15, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize("raw", ["yesterday", "2025-13-01T00:00:00Z", 1736935200, None])
def test_unparseable_timestamps_are_field_invalid(raw: Any) -> None:
    assert reasons_of(TimestampField, {"value": raw}) == [Reason.FIELD_INVALID]


# -- text ------------------------------------------------------------------------------------


def test_text_is_stripped_and_empty_text_is_missing() -> None:
    parsed = TextFields.model_validate({"required": "  INV-1 ", "optional": "   "})
    assert parsed.required == "INV-1"
    assert parsed.optional is None
    assert TextFields.model_validate({"required": 42}).required == "42"
    assert reasons_of(TextFields, {"required": "  "}) == [Reason.FIELD_MISSING]
    assert reasons_of(TextFields, {"required": None}) == [Reason.FIELD_MISSING]
    assert reasons_of(TextFields, {}) == [Reason.FIELD_MISSING]
    assert reasons_of(TextFields, {"required": {"a": 1}}) == [Reason.FIELD_INVALID]


# -- all issues at once ----------------------------------------------------------------------


class Line(BaseModel):
    total: Money
    quantity: Quantity


class Record(BaseModel):
    number: Text
    day: IsoDate
    amount: Money
    cents: Cents
    updated: Timestamp
    lines: list[Line]


def test_every_problem_of_a_record_is_reported_at_once() -> None:
    raw = {
        "number": "",
        "day": "15/01/2025",
        "amount": "12.345",
        "cents": float("inf"),
        "updated": "soon",
        "lines": [{"total": "1.00", "quantity": 1}, {"total": -3}, "not an object"],
    }
    with pytest.raises(ValidationError) as caught:
        Record.model_validate(raw)
    found = {(issue.path, issue.code) for issue in issues_from_validation_error(caught.value)}
    assert found == {
        ("number", Reason.FIELD_MISSING),
        ("day", Reason.FIELD_INVALID),
        ("amount", Reason.MONEY_PRECISION),
        ("cents", Reason.AMOUNT_INVALID),
        ("updated", Reason.FIELD_INVALID),
        ("lines.1.total", Reason.AMOUNT_INVALID),
        ("lines.1.quantity", Reason.FIELD_MISSING),
        ("lines.2", Reason.PAYLOAD_INVALID),
    }
    for issue in issues_from_validation_error(caught.value):
        assert issue.message
        assert issue.severity == "error"


def test_parse_payload_raises_a_record_error_carrying_every_issue() -> None:
    with pytest.raises(RecordError) as caught:
        parse_payload(Record, {"number": "A-1", "amount": "$1.999"})
    codes = sorted(issue.code.value for issue in caught.value.issues)
    assert codes == sorted(
        [
            Reason.FIELD_MISSING.value,  # day
            Reason.MONEY_PRECISION.value,  # amount
            Reason.FIELD_MISSING.value,  # cents
            Reason.FIELD_MISSING.value,  # updated
            Reason.FIELD_MISSING.value,  # lines
        ]
    )
    assert "MONEY_PRECISION at amount" in str(caught.value)


def test_a_payload_that_is_not_an_object_is_payload_invalid() -> None:
    with pytest.raises(RecordError) as caught:
        parse_payload(Record, ["not", "a", "record"])
    assert [(i.code, i.path) for i in caught.value.issues] == [(Reason.PAYLOAD_INVALID, "$")]


# -- statuses, categories, ids -----------------------------------------------------------------


def test_status_map_matches_case_insensitively_and_config_overrides_win() -> None:
    table = build_status_map(
        {"Paid": InvoiceStatus.PAID, "open": InvoiceStatus.UNPAID},
        {"Refunded": "void", "open": "pending"},
    )
    context = MappingContext(source="s", currency="USD", status_map=table)
    assert context.map_status("paid") is InvoiceStatus.PAID
    assert context.map_status(" PAID ") is InvoiceStatus.PAID
    assert context.map_status("refunded") is InvoiceStatus.VOID
    assert context.map_status("open") is InvoiceStatus.PENDING
    assert context.map_status("mystery") is None
    assert context.map_status(None) is None


def test_exact_category_accepts_only_the_ten_categories() -> None:
    assert exact_category(" Laboratory ").category is Category.LABORATORY
    assert exact_category("laboratory").rule == "exact:category"
    assert exact_category("miscellaneous").category is None
    assert exact_category(None).category is None


def test_id_field_reads_the_first_usable_field() -> None:
    record_id = id_field("invoice_id", "id")
    assert record_id({"invoice_id": " INV-1 "}) == "INV-1"
    assert record_id({"invoice_id": "", "id": 7}) == "7"
    assert record_id({"invoice_id": True}) is None
    assert record_id(["INV-1"]) is None


def test_record_path_finds_a_declared_source_in_the_raw_record() -> None:
    assert record_path("line_items[].amount") == "line_items[].amount"
    assert record_path("patient_lookup:first_name") == "_patient.first_name"
    assert record_path("policy_link") is None
    assert record_path("setting:facility") is None


# -- the context's clock-free time helpers --------------------------------------------------


def test_context_reads_naive_vendor_times_in_the_source_zone() -> None:
    context = MappingContext(
        source="s", currency="CRC", status_map={}, timezone=ZoneInfo("America/Costa_Rica")
    )
    evening = datetime(2025, 2, 28, 21, 30)  # naive: San José time, 03:30 UTC the next day
    assert context.utc(evening) == datetime(2025, 3, 1, 3, 30, tzinfo=UTC)
    assert context.local_date(evening) == date(2025, 2, 28)
    assert context.local_date(datetime(2025, 3, 1, 3, 30, tzinfo=UTC)) == date(2025, 2, 28)
    assert context.utc(None) is None
