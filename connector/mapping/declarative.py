"""A vendor mapping described as data: where each canonical field is in a raw record (dotted
paths, into arrays of line items), how its value is written, and what feeds the line folds.

The `rest` source type configures one `FieldMapping` per source in YAML; `map_record` turns a
raw record into a canonical `Invoice` by it, and `trace_record` shows which vendor value fed
which canonical field. Both run the same reader, so a trace never disagrees with a sync. Every
problem of a record is collected and raised together as one `RecordError`; nothing else is
raised for any payload.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from connector.errors import RecordError
from connector.issues import Issue, Reason
from connector.mapping.kit import MappingContext
from connector.mapping.lines import (
    Adjustment,
    added_tax,
    allocate,
    discount,
    invoice_discount_share,
    percent_of,
    vendor_line,
)
from connector.mapping.types import (
    more_places_than,
    parse_decimal,
    parse_iso_date,
    parse_money,
    parse_optional_text,
    parse_quantity,
    parse_timestamp,
)
from connector.model import CENT, Invoice, LineItem, Patient, PolicyCandidate, to_cents

T = TypeVar("T")
ZERO = Decimal("0.00")
MONEY_UNITS = ("decimal", "minor")
# Date formats by name; anything else must be a strptime pattern (it contains a '%').
DATE_FORMATS = ("iso_date", "iso_datetime", "date_or_datetime")
TIMESTAMP_FORMATS = ("iso_datetime",)

# The reason code of each value error the parse functions of `connector.mapping.types` raise.
_REASONS = {
    "field_missing": Reason.FIELD_MISSING,
    "money_precision": Reason.MONEY_PRECISION,
    "amount_invalid": Reason.AMOUNT_INVALID,
    "date_format": Reason.FIELD_INVALID,
    "field_invalid": Reason.FIELD_INVALID,
}


# ----------------------------------------------------------------------------- the spec


def _as_spec(value: Any) -> Any:
    """`field: some.path` and `field: [a, b]` are shorthands of `field: {path: ...}`."""
    if isinstance(value, str | list):
        return {"path": value}
    return value


def _as_paths(value: Any) -> Any:
    return (value,) if isinstance(value, str) else value


def _check_path(path: Any) -> str:
    if not isinstance(path, str):
        raise ValueError(f"expected a dotted path, got {type(path).__name__}")
    if not path or any(not part.strip() for part in path.split(".")):
        raise ValueError(f"{path!r} is not a dotted path (like patient.name or lines.0.amount)")
    return path


Paths = Annotated[
    tuple[Annotated[str, BeforeValidator(_check_path)], ...], BeforeValidator(_as_paths)
]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Sourced(_Spec):
    """A value read at the first present path (or given as a constant `value`)."""

    path: Paths = ()
    required: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> _Sourced:
        constant = getattr(self, "value", None)
        if not self.path and constant is None:
            raise ValueError("give a path (or a constant value)")
        if self.path and constant is not None:
            raise ValueError("give a path or a constant value, not both")
        return self


class TextField(_Sourced):
    value: str | None = None
    # Join every present path's text with this separator ("first last") instead of taking
    # the first present one.
    join: str | None = None


class MoneyField(_Sourced):
    # decimal: 12.50 / "12.50" / "$12.50"; minor: integer minor units (1250 cents).
    unit: str = "decimal"
    # Places of the minor unit: 2 for cents, 0 for a currency without one.
    scale: int = Field(2, ge=0, le=6)

    @field_validator("unit")
    @classmethod
    def _known_unit(cls, value: str) -> str:
        if value not in MONEY_UNITS:
            raise ValueError(f"unknown money unit {value!r} (decimal or minor)")
        return value


class QuantityField(_Sourced):
    value: Decimal | None = Field(None, gt=0)


class DateField(_Sourced):
    # iso_date (YYYY-MM-DD), iso_datetime (its calendar day in the source's time zone),
    # date_or_datetime, or a strptime pattern such as "%d/%m/%Y".
    format: str = "iso_date"

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        return _check_format(value, DATE_FORMATS)


class TimestampField(_Sourced):
    # iso_datetime or a strptime pattern; naive timestamps are in the source's `timezone`.
    format: str = "iso_datetime"

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        return _check_format(value, TIMESTAMP_FORMATS)


def _check_format(value: str, named: Sequence[str]) -> str:
    if value in named:
        return value
    if "%" not in value:
        raise ValueError(f"unknown format {value!r} ({', '.join(named)} or a strptime pattern)")
    try:
        datetime(2001, 2, 3, 4, 5, 6).strftime(value)
    except ValueError as exc:
        raise ValueError(f"format {value!r} is not a strptime pattern: {exc}") from None
    return value


Text = Annotated[TextField, BeforeValidator(_as_spec)]
Money = Annotated[MoneyField, BeforeValidator(_as_spec)]
Quantity = Annotated[QuantityField, BeforeValidator(_as_spec)]
DateSpec = Annotated[DateField, BeforeValidator(_as_spec)]
TimestampSpec = Annotated[TimestampField, BeforeValidator(_as_spec)]


class TaxSpec(_Spec):
    """A tax added on top of each line: `+10% GST 7.70` in the folded description."""

    amount: Money
    rate: Money | None = None
    name: str = Field("tax", min_length=1, max_length=20)


class ItemsSpec(_Spec):
    """Where the line items are and where each item field is, relative to one item."""

    path: Annotated[str, BeforeValidator(_check_path)] = "items"
    description: Text
    # The vendor's category word; without it the category rules read the description alone.
    category: Text | None = None
    quantity: Quantity = QuantityField(value=Decimal(1))
    unit_price: Money
    # The vendor's own line total (its adjustments included): kept, so that a line whose
    # parts do not add up to it is an ITEM_TOTAL_MISMATCH. Without it: the computed total.
    total: Money | None = None
    discount: Money | None = None
    tax: TaxSpec | None = None


class InvoiceDiscountSpec(_Spec):
    """An invoice-level discount, shared over the lines in proportion to their net amounts
    (rounded per line, the remainder cent on the last): the amount when given and non-zero,
    else `percent` of `base` (or of the lines' nets when no base is given)."""

    amount: Money | None = None
    percent: Money | None = None
    base: Money | None = None


class PatientSpec(_Spec):
    name: Text | None = None
    # A policy number in the record, or in the looked-up patient (`_patient.<path>`).
    policy_number: Text | None = None
    # The vendor's patient id: the key of policy links (`connector policies link`).
    ref: Text | None = None


class FieldMapping(_Spec):
    """Every canonical field's source in a raw record (see docs/adding-a-source.md)."""

    id: Text
    invoice_number: Text | None = None
    invoice_date: DateSpec | None = None
    total_amount: Money
    paid_amount: Money | None = None
    status: Text
    currency: Text | None = None
    facility: Text | None = None
    updated_at: TimestampSpec | None = None
    patient: PatientSpec = PatientSpec()
    items: ItemsSpec
    invoice_discount: InvoiceDiscountSpec | None = None


# ----------------------------------------------------------------------------- reading


MISSING: Any = object()


def dig(node: Any, path: str) -> Any:
    """The value at a dotted path (digits index arrays), or MISSING."""
    for part in path.split("."):
        if isinstance(node, dict):
            node = node.get(part, MISSING)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return MISSING
        if node is MISSING:
            return MISSING
    return node


def _blank(value: Any) -> bool:
    return value is MISSING or value is None or (isinstance(value, str) and not value.strip())


@dataclass(frozen=True, slots=True)
class TraceRow:
    """One canonical field and the vendor value it was read from."""

    canonical: str
    vendor_path: str | None  # None for a constant or a computed value
    vendor_value: Any
    result: Any


class _Reader:
    """Reads one raw record by a `FieldMapping`, collecting every problem as an issue."""

    def __init__(self, ctx: MappingContext, trace: list[TraceRow] | None) -> None:
        self.ctx = ctx
        self.issues: list[Issue] = []
        self.trace = trace

    def _raw(self, node: Any, spec: _Sourced) -> tuple[str | None, Any]:
        """(the path that had a value, the raw value), MISSING when none had one."""
        constant = getattr(spec, "value", None)
        if constant is not None:
            return None, constant
        for path in spec.path:
            found = dig(node, path)
            if not _blank(found):
                return path, found
        return (spec.path[0] if spec.path else None), MISSING

    def _note(self, where: str, path: str | None, raw: Any, result: Any) -> None:
        if self.trace is not None:
            shown = None if raw is MISSING else raw
            self.trace.append(TraceRow(where, path, shown, result))

    def _parsed(self, where: str, spec: _Sourced, node: Any, parse: Callable[[Any], T]) -> T | None:
        path, raw = self._raw(node, spec)
        if raw is MISSING:
            if spec.required:
                self.issues.append(Issue(Reason.FIELD_MISSING, where, "required"))
            self._note(where, path, raw, None)
            return None
        result: T | None
        try:
            result = parse(raw)
        except PydanticCustomError as exc:
            reason = _REASONS.get(exc.type, Reason.FIELD_INVALID)
            self.issues.append(Issue(reason, where, exc.message()))
            result = None
        except (ValueError, ArithmeticError, TypeError, OverflowError):
            self.issues.append(Issue(Reason.FIELD_INVALID, where, "unreadable value"))
            result = None
        self._note(where, path, raw, result)
        return result

    def text(self, where: str, spec: TextField | None, node: Any) -> str | None:
        if spec is None:
            return None
        if spec.join is None or spec.value is not None:
            return self._parsed(where, spec, node, parse_optional_text)
        parts = []
        for path in spec.path:
            part = self._parsed(where, TextField(path=(path,)), node, parse_optional_text)
            if part:
                parts.append(part)
        joined = spec.join.join(parts) or None
        if joined is None and spec.required:
            self.issues.append(Issue(Reason.FIELD_MISSING, where, "required"))
        return joined

    def money(self, where: str, spec: MoneyField | None, node: Any) -> Decimal | None:
        if spec is None:
            return None
        if spec.unit == "minor":
            scale = spec.scale
            return self._parsed(where, spec, node, lambda v: _minor_units(v, scale))
        return self._parsed(where, spec, node, parse_money)

    def percent(self, where: str, spec: MoneyField | None, node: Any) -> Decimal | None:
        return None if spec is None else self._parsed(where, spec, node, _percent)

    def quantity(self, where: str, spec: QuantityField, node: Any) -> Decimal | None:
        return self._parsed(where, spec, node, parse_quantity)

    def day(self, where: str, spec: DateField | None, node: Any) -> date | None:
        if spec is None:
            return None
        fmt = spec.format
        return self._parsed(where, spec, node, lambda v: self._date(v, fmt))

    def moment(self, where: str, spec: TimestampField | None, node: Any) -> datetime | None:
        if spec is None:
            return None
        fmt = spec.format
        # Converted inside the read: a far-off year can overflow the move to UTC.
        return self._parsed(where, spec, node, lambda v: self.ctx.utc(_timestamp(v, fmt)))

    def _date(self, value: Any, fmt: str) -> date:
        if fmt == "iso_date":
            return parse_iso_date(value)
        if fmt == "iso_datetime":
            return self.ctx.local_date(parse_timestamp(value))
        if fmt == "date_or_datetime":
            if isinstance(value, str) and len(value.strip()) > 10:
                return self.ctx.local_date(parse_timestamp(value))
            return parse_iso_date(value)
        moment = _timestamp(value, fmt)
        has_time = any(code in fmt for code in ("%H", "%I", "%M", "%S"))
        return self.ctx.local_date(moment) if has_time else moment.date()


def _minor_units(value: Any, scale: int) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise PydanticCustomError("amount_invalid", "expected whole minor units")
    number = parse_decimal(value)
    if number != number.to_integral_value():
        raise PydanticCustomError(
            "money_precision", "minor units must be a whole number: {n}", {"n": str(number)}
        )
    if number < 0:
        raise PydanticCustomError("amount_invalid", "negative amount")
    amount = number.scaleb(-scale)
    if more_places_than(amount, 2):
        raise PydanticCustomError(
            "money_precision", "more than two decimal places: {n}", {"n": str(amount)}
        )
    return amount.quantize(CENT)


def _percent(value: Any) -> Decimal:
    number = parse_decimal(value)
    if not 0 <= number <= 100:
        raise PydanticCustomError("amount_invalid", "percent must be between 0 and 100")
    return number


def _timestamp(value: Any, fmt: str) -> datetime:
    if fmt == "iso_datetime":
        return parse_timestamp(value)
    if not isinstance(value, str):
        raise PydanticCustomError("date_format", "expected text in the format {f}", {"f": fmt})
    try:
        return datetime.strptime(value.strip(), fmt)
    except ValueError:
        raise PydanticCustomError(
            "date_format", "'{v}' is not in the format {f}", {"v": value[:40], "f": fmt}
        ) from None


# ----------------------------------------------------------------------------- mapping


def _items_of(raw: dict[str, Any], spec: ItemsSpec, read: _Reader) -> list[Any] | None:
    found = dig(raw, spec.path)
    # An absent or null list is an invoice without items, which validation reports.
    if found is MISSING or found is None:
        return []
    if not isinstance(found, list):
        read.issues.append(Issue(Reason.PAYLOAD_INVALID, "items", "expected a list of items"))
        return None
    if any(not isinstance(item, dict) for item in found):
        read.issues.append(Issue(Reason.PAYLOAD_INVALID, "items", "every item must be an object"))
        return None
    return found


@dataclass(frozen=True, slots=True)
class _Line:
    category: str | None
    description: str | None
    quantity: Decimal
    unit_price: Decimal
    total: Decimal | None
    discount: Decimal
    tax: Decimal | None
    tax_rate: Decimal | None


def _read_lines(raw_items: list[Any], spec: ItemsSpec, read: _Reader) -> list[_Line] | None:
    lines: list[_Line] = []
    complete = True
    for index, item in enumerate(raw_items):
        at = f"items[{index}]"
        category = read.text(f"{at}.category", spec.category, item)
        description = read.text(f"{at}.description", spec.description, item)
        required_quantity = spec.quantity.model_copy(update={"required": True})
        quantity = read.quantity(f"{at}.quantity", required_quantity, item)
        unit_price = read.money(
            f"{at}.unit_price", spec.unit_price.model_copy(update={"required": True}), item
        )
        total = read.money(f"{at}.total", spec.total, item)
        line_discount = read.money(f"{at}.discount", spec.discount, item)
        tax = read.money(f"{at}.tax", spec.tax.amount if spec.tax else None, item)
        rate = read.percent(f"{at}.tax_rate", spec.tax.rate if spec.tax else None, item)
        if quantity is None or unit_price is None:
            complete = False
            continue
        lines.append(
            _Line(
                category,
                description,
                quantity,
                unit_price,
                total,
                line_discount or ZERO,
                tax,
                rate,
            )
        )
    return lines if complete else None


def _invoice_discount(
    raw: dict[str, Any], spec: InvoiceDiscountSpec | None, nets: Sequence[Decimal], read: _Reader
) -> Decimal:
    if spec is None:
        return ZERO
    amount = read.money("invoice_discount.amount", spec.amount, raw)
    percent = read.percent("invoice_discount.percent", spec.percent, raw)
    base = read.money("invoice_discount.base", spec.base, raw)
    if amount:
        return amount
    if percent:
        return percent_of(base if base is not None else sum(nets, ZERO), percent)
    return ZERO


def _items(raw: dict[str, Any], fields: FieldMapping, read: _Reader) -> tuple[LineItem, ...] | None:
    spec = fields.items
    raw_items = _items_of(raw, spec, read)
    lines = None if raw_items is None else _read_lines(raw_items, spec, read)
    if lines is None:
        return None
    nets = [to_cents(line.quantity * line.unit_price) - line.discount for line in lines]
    whole = _invoice_discount(raw, fields.invoice_discount, nets, read)
    shares: list[Decimal | None] = list(allocate(whole, nets)) if whole else [None] * len(nets)
    items = []
    for line, share in zip(lines, shares, strict=True):
        adjustments: list[Adjustment] = []
        if line.discount:
            adjustments.append(discount(line.discount))
        if share is not None:
            adjustments.append(invoice_discount_share(share))
        if line.tax:
            name = spec.tax.name if spec.tax else "tax"
            adjustments.append(added_tax(line.tax, line.tax_rate, name))
        items.append(
            vendor_line(
                read.ctx,
                line.category,
                line.description,
                line.quantity,
                line.unit_price,
                adjustments,
                stated_total=line.total,
            )
        )
    return tuple(items)


def _policies(
    raw: dict[str, Any], spec: TextField | None, read: _Reader
) -> tuple[str | None, tuple[PolicyCandidate, ...]]:
    """The policy number, and with several paths every present one as a candidate (origin:
    its path) for validation to choose among with the patient link."""
    where = "patient.policy_number"
    if spec is None or len(spec.path) < 2:
        return read.text(where, spec, raw), ()
    found: list[PolicyCandidate] = []
    for path in spec.path:
        number = read.text(where, TextField(path=(path,)), raw)
        if number and all(c.number != number for c in found):
            found.append(PolicyCandidate(number=number, origin=path))
    if not found and spec.required:
        read.issues.append(Issue(Reason.FIELD_MISSING, where, "required"))
    return (found[0].number if found else None), tuple(found)


def _required(spec: TextField) -> TextField:
    return spec.model_copy(update={"required": True})


def _read_invoice(raw: Any, fields: FieldMapping, read: _Reader) -> Invoice | None:
    if not isinstance(raw, dict):
        read.issues.append(Issue(Reason.PAYLOAD_INVALID, "$", "a record must be a JSON object"))
        return None
    record_id = read.text("id", _required(fields.id), raw)
    number = read.text("invoice_number", fields.invoice_number, raw)
    day = read.day("invoice_date", fields.invoice_date, raw)
    total = read.money(
        "total_amount", fields.total_amount.model_copy(update={"required": True}), raw
    )
    paid = read.money("paid_amount", fields.paid_amount, raw)
    status = read.text("status", _required(fields.status), raw)
    currency = read.text("currency", fields.currency, raw)
    facility = read.text("facility", fields.facility, raw)
    updated = read.moment("updated_at", fields.updated_at, raw)
    policy, candidates = _policies(raw, fields.patient.policy_number, read)
    patient = Patient(
        name=read.text("patient.name", fields.patient.name, raw),
        policy_number=policy,
        source_ref=read.text("patient.ref", fields.patient.ref, raw),
        policy_candidates=candidates,
    )
    items = _items(raw, fields, read)
    if read.issues or record_id is None or total is None or status is None or items is None:
        return None
    ctx = read.ctx
    return Invoice(
        source=ctx.source,
        id=record_id,
        invoice_number=number,
        invoice_date=day,
        total_amount=total,
        paid_amount=paid,
        currency=(currency or ctx.currency).upper(),
        status=ctx.map_status(status),
        source_status=status,
        facility=facility,
        patient=patient,
        items=items,
        source_updated_at=updated,
    )


def map_record(raw: Any, fields: FieldMapping, ctx: MappingContext) -> Invoice:
    """The canonical invoice of a raw record; a `RecordError` with every problem otherwise."""
    read = _Reader(ctx, None)
    invoice = _read_invoice(raw, fields, read)
    if invoice is None:
        raise RecordError(read.issues or [Issue(Reason.PAYLOAD_INVALID, "$", "unreadable")])
    return invoice


def trace_record(
    raw: Any, fields: FieldMapping, ctx: MappingContext
) -> tuple[list[TraceRow], Invoice | None, list[Issue]]:
    """Which vendor value fed which canonical field, the invoice (None when the mapping
    rejects the record) and the mapping's issues."""
    rows: list[TraceRow] = []
    read = _Reader(ctx, rows)
    invoice = _read_invoice(raw, fields, read)
    return rows, invoice, read.issues
