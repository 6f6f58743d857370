"""The tolerant value types vendor payload models are written with: money (text such as
"$20.00", numbers, integer cents), quantities, ISO dates and timestamps, and text.

Each type turns the many ways vendors write a value into `Decimal`, `date`, aware-able
`datetime` or stripped `str`, and fails with a pydantic error type that
`connector.mapping.kit.issues_from_validation_error` turns into a stable reason code, so that
one record reports all of its problems at once. The `parse_*` functions are the same checks for
code that reads a payload without a model (the MediTrak import fast path).
"""

from __future__ import annotations

import math
import re
from datetime import UTC, date, datetime, tzinfo
from decimal import Decimal, DecimalException, InvalidOperation
from typing import Annotated, Any

from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError

from connector.masking import is_plain_value

# An invoice amount above this is a data error, not a bill (and guards Decimal arithmetic).
MAX_AMOUNT = Decimal("1000000000000")
_MAX_INT = int(MAX_AMOUNT)
_MONEY_TEXT = re.compile(r"^\s*(?P<sign>-)?\s*(?:[$₡₹€£]|[A-Z]{3}\s?)?\s*(?P<num>[\d,]*\.?\d+)\s*$")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def quoted(value: Any) -> str:
    """`value` quoted for an error message when it cannot be patient data (an amount-, date- or
    timestamp-like text), else a placeholder: a name or note sent in the wrong field would
    otherwise reach quarantine issues, logs and reports."""
    text = str(value)[:40]
    return f"'{text}'" if is_plain_value(text) else "(text withheld)"


def parse_decimal(value: Any) -> Decimal:
    """A finite Decimal from a JSON number or numeric text; floats go through their shortest
    repr so that 1250.005 stays exactly 1250.005."""
    kind = type(value)
    # Fast paths for what JSON gives (exact types: bool is an int, subclasses take the long way).
    if kind is float:
        if not math.isfinite(value):
            raise PydanticCustomError("amount_invalid", "not a finite number")
        number = Decimal(repr(value))
        if -MAX_AMOUNT < number < MAX_AMOUNT:
            return number
        raise PydanticCustomError("amount_invalid", "amount out of range")
    if kind is int:
        if -_MAX_INT < value < _MAX_INT:
            return Decimal(value)
        raise PydanticCustomError("amount_invalid", "amount out of range")
    if isinstance(value, bool) or value is None:
        raise PydanticCustomError(
            "amount_invalid", "expected a number, got {kind}", {"kind": type(value).__name__}
        )
    if isinstance(value, Decimal):
        number = value
    elif isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise PydanticCustomError("amount_invalid", "not a finite number")
        number = Decimal(repr(value))
    elif isinstance(value, str):
        match = _MONEY_TEXT.match(value)
        if not match:
            raise PydanticCustomError(
                "amount_invalid", "not a number: {text}", {"text": quoted(value)}
            )
        try:
            number = Decimal(match["num"].replace(",", ""))
        except InvalidOperation as exc:
            raise PydanticCustomError("amount_invalid", "not a number") from exc
        if match["sign"]:
            number = -number
    else:
        raise PydanticCustomError(
            "amount_invalid", "expected a number, got {kind}", {"kind": type(value).__name__}
        )
    if not number.is_finite():
        raise PydanticCustomError("amount_invalid", "not a finite number")
    if abs(number) >= MAX_AMOUNT:
        raise PydanticCustomError("amount_invalid", "amount out of range")
    return number


# Places → the quantum with that many places, for the common precision checks.
_QUANTA = {places: Decimal(1).scaleb(-places) for places in range(7)}


def more_places_than(number: Decimal, places: int) -> bool:
    """Whether a finite number needs more than `places` decimals (1.500 needs one)."""
    quantum = _QUANTA.get(places)
    if quantum is not None:
        # Rounding to `places` changes the value exactly when more places are needed; this
        # costs a fifth of reading the exponent through `as_tuple()` (docs/performance.md).
        try:
            rounded = number.quantize(quantum)
        except DecimalException:
            pass  # beyond the context's precision (or not finite): decide by the exponent
        else:
            if rounded.is_finite():
                return rounded != number
    exponent = number.as_tuple().exponent
    # Normalizing only ever raises the exponent: most amounts are decided without it.
    if not isinstance(exponent, int) or exponent >= -places:
        return False
    exponent = number.normalize().as_tuple().exponent
    return isinstance(exponent, int) and exponent < -places


# Floats below this (and their shortest repr) are below MAX_AMOUNT.
_MAX_FLOAT = float(MAX_AMOUNT)


def parse_money(value: Any) -> Decimal:
    # The two forms JSON amounts nearly always take, decided without a rounding step: an int
    # has no decimals, and a float's shortest repr (no exponent) shows its decimals. The same
    # result as below for them; everything else, and any failure, takes the full checks.
    kind = type(value)
    if kind is int:
        if 0 <= value < _MAX_INT:
            return Decimal(value)
    elif kind is float and 0 <= value < _MAX_FLOAT:
        text = repr(value)
        if "e" not in text and len(text) - text.index(".") <= 3:
            return Decimal(text)
    number = parse_decimal(value)
    if number < 0:
        raise PydanticCustomError("amount_invalid", "negative amount")
    if more_places_than(number, 2):
        raise PydanticCustomError(
            "money_precision", "more than two decimal places: {n}", {"n": str(number)}
        )
    return number


def parse_signed_money(value: Any) -> Decimal:
    number = parse_decimal(value)
    if more_places_than(number, 2):
        raise PydanticCustomError(
            "money_precision", "more than two decimal places: {n}", {"n": str(number)}
        )
    return number


def parse_quantity(value: Any) -> Decimal:
    if type(value) is int and 0 < value < _MAX_INT:  # the common case: a whole count
        return Decimal(value)
    number = parse_decimal(value)
    if number <= 0:
        raise PydanticCustomError("amount_invalid", "quantity must be positive")
    return number


def parse_cents(value: Any) -> Decimal:
    """Integer minor units (e.g. CRC cents) to a 2-place Decimal."""
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise PydanticCustomError("amount_invalid", "expected integer cents")
    number = parse_decimal(value)
    if number != number.to_integral_value():
        raise PydanticCustomError(
            "money_precision", "cents must be a whole number: {n}", {"n": str(number)}
        )
    if number < 0:
        raise PydanticCustomError("amount_invalid", "negative amount")
    return (number / 100).quantize(Decimal("0.01"))


def parse_iso_date(value: Any) -> date:
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _ISO_DATE.match(value.strip()):
        raise PydanticCustomError(
            "date_format", "expected YYYY-MM-DD, got {v}", {"v": quoted(value)}
        )
    try:
        return date.fromisoformat(value.strip())
    except ValueError as exc:
        raise PydanticCustomError(
            "date_format", "not a calendar date: {v}", {"v": quoted(value)}
        ) from exc


def parse_date_or_timestamp(value: Any) -> date:
    """A date, or the date part of an ISO timestamp (vendors that send issueDate as a datetime)."""
    if isinstance(value, str) and len(value.strip()) > 10:
        return parse_timestamp(value).date()
    return parse_iso_date(value)


def parse_timestamp(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise PydanticCustomError("date_format", "expected an ISO 8601 timestamp")
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        return datetime.fromisoformat(text)
    except ValueError as exc:
        raise PydanticCustomError(
            "date_format", "not an ISO 8601 timestamp: {v}", {"v": quoted(value)}
        ) from exc


# C0 controls except tab, newline and carriage return, DEL, and C1 controls.
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def parse_text(value: Any) -> str:
    if type(value) is str:
        stripped = value.strip()
    else:
        if value is None:
            raise PydanticCustomError("field_missing", "required")
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise PydanticCustomError("field_invalid", "expected text")
        stripped = value.strip()
    if not stripped:
        raise PydanticCustomError("field_missing", "empty")
    # Control characters are never printable: the regex runs only on the rare text that is not.
    if not stripped.isprintable() and _CONTROL_CHARS.search(stripped):
        # NUL cannot even be stored in PostgreSQL text; escapes would reach terminals and CSVs.
        raise PydanticCustomError("field_invalid", "contains control characters")
    return stripped


def parse_optional_text(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return parse_text(value)


Money = Annotated[Decimal, BeforeValidator(parse_money)]
SignedMoney = Annotated[Decimal, BeforeValidator(parse_signed_money)]
Cents = Annotated[Decimal, BeforeValidator(parse_cents)]
Quantity = Annotated[Decimal, BeforeValidator(parse_quantity)]
IsoDate = Annotated[date, BeforeValidator(parse_iso_date)]
DateOrTimestamp = Annotated[date, BeforeValidator(parse_date_or_timestamp)]
Timestamp = Annotated[datetime, BeforeValidator(parse_timestamp)]
Text = Annotated[str, BeforeValidator(parse_text)]
OptionalText = Annotated[str | None, BeforeValidator(parse_optional_text)]


def to_utc(moment: datetime, assumed: tzinfo = UTC) -> datetime:
    """Aware UTC; a naive timestamp is read in the source's configured time zone."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=assumed)
    return moment.astimezone(UTC)
