"""Mapping of Bio Ecko invoice details (Billing API v1) to the canonical invoice.

Bio Ecko bills in decimal INR with Indian GST: a line's `amount` is quantity × rate, less its
discount, plus its tax (CGST + SGST, or IGST). Lines with a discount or tax are folded into one
unit at their net amount; the invoice total is `totals.grand_total`, which must equal the sum
of the line amounts. The detail's JSON keys are prose in the vendor doc (unconfirmed): this
follows the shape the sandbox serves.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict

from connector.mapping.kit import MappingContext, SourceMapping, id_field, parse_payload
from connector.mapping.lines import added_tax, discount, vendor_line
from connector.mapping.types import IsoDate, Money, OptionalText, Quantity, Text, Timestamp
from connector.model import Invoice, InvoiceStatus, LineItem, Patient

ZERO = Decimal("0.00")


def _percent_or_none(value: Any) -> Decimal | None:
    """A GST rate such as 18, 18.0 or "18%"; anything else is dropped, because the rate only
    explains a folded line and must not quarantine an invoice whose amounts are fine."""
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        return None
    try:
        number = Decimal(str(value).strip().removesuffix("%"))
    except InvalidOperation:
        return None
    return number if number.is_finite() and number >= 0 else None


Percent = Annotated[Decimal | None, BeforeValidator(_percent_or_none)]


class InsurancePayload(BaseModel):
    model_config = ConfigDict(extra="ignore")

    provider: OptionalText = None
    policy_number: OptionalText = None


class PatientPayload(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: OptionalText = None
    # Optional here so that validation names a missing patient name among all other issues.
    name: OptionalText = None
    insurance: InsurancePayload | None = None


class BranchPayload(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: OptionalText = None
    name: OptionalText = None


class LinePayload(BaseModel):
    model_config = ConfigDict(extra="ignore")

    service_name: OptionalText = None
    department: OptionalText = None
    quantity: Quantity
    rate: Money
    discount: Money = ZERO
    # GST percent, only used to explain a folded line.
    tax_rate: Percent = None
    # The line's GST amount (CGST + SGST or IGST), added on top of the discounted value.
    tax: Money = ZERO
    amount: Money


class TotalsPayload(BaseModel):
    model_config = ConfigDict(extra="ignore")

    grand_total: Money


class PaymentPayload(BaseModel):
    model_config = ConfigDict(extra="ignore")

    amount: Money


class InvoicePayload(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: Text
    invoice_number: OptionalText = None
    date: IsoDate
    status: Text
    patient: PatientPayload
    branch: BranchPayload | None = None
    line_items: list[LinePayload] = []
    totals: TotalsPayload
    payments: list[PaymentPayload] | None = None
    # Not in the vendor doc; used when present (Bio Ecko's timestamps carry +05:30 offsets).
    updated_at: Timestamp | None = None
    currency: OptionalText = None


# Explicit table; config `status_map` may override or extend it. A part-paid invoice is still
# owed money (unpaid) and keeps its paid amount; a cancelled one is kept but never billable.
STATUS_MAP: dict[str, InvoiceStatus] = {
    "draft": InvoiceStatus.PENDING,
    "finalized": InvoiceStatus.UNPAID,
    "paid": InvoiceStatus.PAID,
    "partially_paid": InvoiceStatus.UNPAID,
    "cancelled": InvoiceStatus.VOID,
}


def canonical_item(line: LinePayload, ctx: MappingContext) -> LineItem:
    """One Bio Ecko line: as billed when unadjusted, else one unit at its net amount (the
    gross in whole paise, less the discount, plus GST).

    The item total is the vendor's stated `amount`, so a line whose parts do not add up to
    its amount fails validation as ITEM_TOTAL_MISMATCH instead of being silently trusted.
    """
    adjustments = []
    if line.discount:
        adjustments.append(discount(line.discount))
    if line.tax:
        adjustments.append(added_tax(line.tax, line.tax_rate, "GST"))
    return vendor_line(
        ctx,
        line.department,
        line.service_name,
        line.quantity,
        line.rate,
        adjustments,
        stated_total=line.amount,
    )


def to_canonical(raw: Any, ctx: MappingContext) -> Invoice:
    record = parse_payload(InvoicePayload, raw)
    insurance = record.patient.insurance
    paid = (
        None
        if record.payments is None
        else sum((payment.amount for payment in record.payments), ZERO)
    )
    return Invoice(
        source=ctx.source,
        id=record.id,
        invoice_number=record.invoice_number,
        invoice_date=record.date,
        total_amount=record.totals.grand_total,
        paid_amount=paid,
        currency=(record.currency or ctx.currency).upper(),
        status=ctx.map_status(record.status),
        source_status=record.status,
        facility=record.branch.name if record.branch else None,
        patient=Patient(
            name=record.patient.name,
            policy_number=insurance.policy_number if insurance else None,
            source_ref=record.patient.id,
        ),
        items=tuple(canonical_item(line, ctx) for line in record.line_items),
        source_updated_at=ctx.utc(record.updated_at),
    )


# Which vendor field feeds each canonical field (`SourceMapping.field_sources`); a folded line's
# unit price is its net amount, its total the vendor's stated `amount`.
FIELD_SOURCES: dict[str, tuple[str, ...]] = {
    "id": ("id",),
    "invoice_number": ("invoice_number",),
    "invoice_date": ("date",),
    "total_amount": ("totals.grand_total",),
    "status": ("status",),
    "facility": ("branch.name",),
    "patient.name": ("patient.name",),
    "patient.policy_number": ("patient.insurance.policy_number", "policy_link"),
    "items": ("line_items",),
    "items[].category": ("line_items[].department", "line_items[].service_name"),
    "items[].description": ("line_items[].service_name",),
    "items[].quantity": ("line_items[].quantity",),
    "items[].unit_price": (
        "line_items[].rate",
        "line_items[].quantity",
        "line_items[].discount",
        "line_items[].tax",
    ),
    "items[].total": ("line_items[].amount",),
}


MAPPING = SourceMapping(
    vendor="bio_ecko",
    status_map=STATUS_MAP,
    to_canonical=to_canonical,
    record_id=id_field("id"),
    field_sources=FIELD_SOURCES,
)
