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
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from connector.mapping.kit import (
    PATIENT_LOOKUP_KEY,
    MappingContext,
    SourceMapping,
    id_field,
    parse_payload,
)
from connector.mapping.lines import (
    allocate,
    discount,
    invoice_discount_share,
    percent_of,
    vendor_line,
)
from connector.mapping.types import Money, OptionalText, Quantity, Text, Timestamp, parse_decimal
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
    patient: PatientPayload | None = Field(None, alias=PATIENT_LOOKUP_KEY)


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
        return percent_of(base, record.discount_percent)
    return ZERO


def canonical_items(record: InvoicePayload, ctx: MappingContext) -> tuple[LineItem, ...]:
    """Every line as an item; an invoice-level discount folds them all, each with its share."""
    line_discounts = [item.discount_amount or ZERO for item in record.items]
    nets = [
        to_cents(item.quantity * item.unit_price) - line_discount
        for item, line_discount in zip(record.items, line_discounts, strict=True)
    ]
    whole_discount = invoice_discount(record, nets)
    shares = allocate(whole_discount, nets) if whole_discount else [None] * len(nets)
    mapped = []
    for item, line_discount, share in zip(record.items, line_discounts, shares, strict=True):
        adjustments = []
        if line_discount:
            adjustments.append(discount(line_discount))
        if share is not None:
            adjustments.append(invoice_discount_share(share))
        mapped.append(
            vendor_line(
                ctx,
                item.category,
                item.name or item.description,
                item.quantity,
                item.unit_price,
                adjustments,
                stated_total=item.total,
            )
        )
    return tuple(mapped)


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
        invoice_date=ctx.local_date(record.issue_date) if record.issue_date else None,
        total_amount=record.total_amount,
        paid_amount=record.paid_amount,
        currency=ctx.currency,
        status=ctx.map_status(record.status),
        source_status=record.status,
        patient=canonical_patient(record),
        items=canonical_items(record, ctx),
        source_updated_at=ctx.utc(record.updated_at),
    )


# A line's own price and discount, then the invoice-level discount shared over the lines.
_LINE_ARITHMETIC = (
    "items[].unit_price",
    "items[].quantity",
    "items[].discount_amount",
    "discount_amount",
    "discount_percent",
    "subtotal",
)

# Which vendor field feeds each canonical field (`SourceMapping.field_sources`); the patient
# comes from the lookup the adapter attaches. No facility.
FIELD_SOURCES: dict[str, tuple[str, ...]] = {
    "id": ("id",),
    "invoice_number": ("reg_number",),
    "invoice_date": ("issue_date",),
    "total_amount": ("total_amount",),
    "status": ("status",),
    "facility": (),
    "patient.name": ("patient_lookup:first_name", "patient_lookup:last_name"),
    "patient.policy_number": ("patient_lookup:insurance_policy_number", "policy_link"),
    "items": ("items",),
    "items[].category": ("items[].category", "items[].name", "items[].description"),
    "items[].description": ("items[].name", "items[].description"),
    "items[].quantity": ("items[].quantity",),
    "items[].unit_price": _LINE_ARITHMETIC,
    "items[].total": ("items[].total", *_LINE_ARITHMETIC),
}


MAPPING = SourceMapping(
    vendor="invoice_api",
    status_map=STATUS_MAP,
    to_canonical=to_canonical,
    record_id=id_field("id"),
    field_sources=FIELD_SOURCES,
)
