"""Mapping of the FastAPI-style "Invoice API" invoice (plus the patient the adapter attaches
under `"_patient"`) to the canonical invoice.

Money is decimal. `issue_date` is a naive datetime read in the source's `timezone`; the invoice
date is its calendar date there (an aware value is first converted to that zone).

Line items are not documented by the vendor; the mapping reads `name` (or `description`),
`category`, `quantity`, `unit_price`, `discount_amount` and `total`. A line is kept as quantity x
unit price unless an adjustment changes its amount; then it is folded into quantity 1 x its net
amount with the original "q × price, less discount" in a suffix of the description:
- a line `discount_amount` folds that line;
- an invoice-level discount folds every line: the discount (`discount_amount`, or
  `discount_percent` of `subtotal` when no amount is given) is allocated over the lines in
  proportion to their own net amounts, rounded per line, the remainder cent on the last line,
  so the lines sum to `subtotal - discount` exactly.
A folded line's unit price is computed from the vendor's quantity, price and discounts, while
its total is the vendor's line total less its share, so a vendor line whose `total` disagrees
with its own arithmetic is still an ITEM_TOTAL_MISMATCH.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from connector.mapping.kit import (
    MappingContext,
    Money,
    OptionalText,
    Quantity,
    SourceMapping,
    Text,
    Timestamp,
    id_field,
    parse_decimal,
    parse_payload,
    to_utc,
)
from connector.model import Invoice, InvoiceStatus, LineItem, Patient, to_cents

ZERO = Decimal("0.00")


def _percent(value: Any) -> Decimal:
    number = parse_decimal(value)
    if not 0 <= number <= 100:
        raise PydanticCustomError("amount_invalid", "percent must be between 0 and 100")
    return number


def _list_or_empty(value: Any) -> Any:
    # FastAPI serialises an absent relationship as null; that is an invoice without items.
    return [] if value is None else value


def _none_if_blank(value: Any) -> Any:
    return None if isinstance(value, str) and not value.strip() else value


Percent = Annotated[Decimal, BeforeValidator(_percent)]


class ItemPayload(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: OptionalText = None
    description: OptionalText = None
    category: OptionalText = None
    quantity: Quantity
    unit_price: Money
    discount_amount: Money | None = None
    total: Money | None = None


class PatientPayload(BaseModel):
    model_config = ConfigDict(extra="ignore")

    first_name: OptionalText = None
    last_name: OptionalText = None
    insurance_policy_number: OptionalText = None


class InvoicePayload(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: Text
    reg_number: OptionalText = None
    # Absent or null: the invoice has no date, which validation reports as FIELD_MISSING.
    issue_date: Annotated[Timestamp | None, BeforeValidator(_none_if_blank)] = None
    status: Text
    subtotal: Money | None = None
    discount_amount: Money | None = None
    discount_percent: Percent | None = None
    total_amount: Money
    paid_amount: Money | None = None
    patient_id: Text
    items: Annotated[list[ItemPayload], BeforeValidator(_list_or_empty)] = []
    updated_at: Timestamp | None = None
    # Attached by the adapter from GET patient/{id}; absent when `fetch_patients` is off.
    patient: PatientPayload | None = Field(None, alias="_patient")


# The vendor's words exactly as it sends them; PARTIALY_PAID is the vendor's own spelling.
STATUS_MAP = {
    "DRAFT": InvoiceStatus.PENDING,
    "ISSUED": InvoiceStatus.UNPAID,
    "PARTIALY_PAID": InvoiceStatus.UNPAID,
    "PAID": InvoiceStatus.PAID,
    "VOID": InvoiceStatus.VOID,
    "WRITTEN_OFF": InvoiceStatus.VOID,
}


def invoice_discount(record: InvoicePayload, line_nets: Sequence[Decimal]) -> Decimal:
    """The invoice-level discount: the amount when given, else the percent of the subtotal."""
    if record.discount_amount:
        return record.discount_amount
    if record.discount_percent:
        base = record.subtotal if record.subtotal is not None else sum(line_nets, ZERO)
        return to_cents(base * record.discount_percent / 100)
    return ZERO


def allocate(amount: Decimal, weights: Sequence[Decimal]) -> list[Decimal]:
    """`amount` split in proportion to `weights`, each share rounded to cents and the
    remainder on the last, so the shares always sum to `amount` exactly."""
    if not weights:
        return []
    whole = sum(weights, ZERO)
    if whole <= 0:
        return [ZERO] * (len(weights) - 1) + [amount]
    shares = [to_cents(amount * weight / whole) for weight in weights[:-1]]
    return [*shares, amount - sum(shares, ZERO)]


def _folded_description(
    name: str | None, item: ItemPayload, line_discount: Decimal, share: Decimal
) -> str | None:
    if name is None:
        return None
    parts = [f"{item.quantity.normalize():f} × {item.unit_price:.2f}"]
    if line_discount:
        parts.append(f"less {line_discount:.2f}")
    if share:
        parts.append(f"less {share:.2f} invoice discount")
    return f"{name} ({', '.join(parts)})"


def canonical_items(record: InvoicePayload, ctx: MappingContext) -> tuple[LineItem, ...]:
    line_discounts = [item.discount_amount or ZERO for item in record.items]
    nets = [
        to_cents(item.quantity * item.unit_price) - discount
        for item, discount in zip(record.items, line_discounts, strict=True)
    ]
    discount = invoice_discount(record, nets)
    shares = allocate(discount, nets) if discount else [ZERO] * len(nets)
    mapped = []
    for item, line_discount, net, share in zip(
        record.items, line_discounts, nets, shares, strict=True
    ):
        name = item.name or item.description
        match = ctx.categorize(item.category, name)
        vendor_total = item.total if item.total is not None else net
        if discount or line_discount:
            quantity, unit_price = Decimal(1), net - share
            total = vendor_total - share
            description = _folded_description(name, item, line_discount, share)
        else:
            quantity, unit_price, total, description = (
                item.quantity,
                item.unit_price,
                vendor_total,
                name,
            )
        mapped.append(
            LineItem(
                category=match.category,
                description=description,
                quantity=quantity,
                unit_price=unit_price,
                total=total,
                source_category=item.category,
                category_rule=match.rule,
            )
        )
    return tuple(mapped)


def invoice_date(issued: datetime, ctx: MappingContext) -> date:
    """The calendar date of the issue time in the source's zone (naive means that zone)."""
    return to_utc(issued, ctx.timezone).astimezone(ctx.timezone).date()


def canonical_patient(record: InvoicePayload) -> Patient:
    patient = record.patient
    if patient is None:
        return Patient(source_ref=record.patient_id)
    name = " ".join(part for part in (patient.first_name, patient.last_name) if part)
    return Patient(
        name=name or None,
        policy_number=patient.insurance_policy_number,
        source_ref=record.patient_id,
    )


def to_canonical(raw: Any, ctx: MappingContext) -> Invoice:
    record = parse_payload(InvoicePayload, raw)
    return Invoice(
        source=ctx.source,
        id=record.id,
        invoice_number=record.reg_number,
        invoice_date=invoice_date(record.issue_date, ctx) if record.issue_date else None,
        total_amount=record.total_amount,
        paid_amount=record.paid_amount,
        currency=ctx.currency,
        status=ctx.map_status(record.status),
        source_status=record.status,
        patient=canonical_patient(record),
        items=canonical_items(record, ctx),
        source_updated_at=to_utc(record.updated_at, ctx.timezone) if record.updated_at else None,
    )


MAPPING = SourceMapping(
    vendor="invoice_api",
    status_map=STATUS_MAP,
    to_canonical=to_canonical,
    record_id=id_field("id"),
)
