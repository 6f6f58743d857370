"""Mapping of the MediTrak import record (as served by any third-party API implementing the
contract) to the canonical invoice: the shapes are nearly the same, so this is mostly typing."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict

from connector.mapping.kit import MappingContext, SourceMapping, id_field, parse_payload
from connector.mapping.lines import line_item
from connector.mapping.types import (
    IsoDate,
    Money,
    OptionalText,
    Quantity,
    Text,
    Timestamp,
    parse_iso_date,
    parse_money,
    parse_optional_text,
    parse_quantity,
    parse_text,
    parse_timestamp,
    to_utc,
)
from connector.model import Invoice, InvoiceStatus, LineItem, Patient


class ItemPayload(BaseModel):
    model_config = ConfigDict(extra="ignore")

    category: OptionalText = None
    description: OptionalText = None
    quantity: Quantity
    unit_price: Money
    total: Money


class PatientPayload(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: Text
    policy_number: OptionalText = None


class ImportRecordPayload(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: Text
    invoice_number: Text
    invoice_date: IsoDate
    total_amount: Money
    status: Text
    facility: OptionalText = None
    patient: PatientPayload
    items: list[ItemPayload] = []
    # Not part of the contract, but implementations that filter by update time carry it.
    updated_at: Timestamp | None = None
    currency: OptionalText = None


STATUS_MAP = {
    "paid": InvoiceStatus.PAID,
    "unpaid": InvoiceStatus.UNPAID,
    "pending": InvoiceStatus.PENDING,
}


def canonical_items(items: Sequence[ItemPayload], ctx: MappingContext) -> tuple[LineItem, ...]:
    """Items that already carry quantity, unit price and total; categories via the rules."""
    return tuple(
        line_item(ctx, item.category, item.description, item.quantity, item.unit_price, item.total)
        for item in items
    )


def to_canonical(raw: Any, ctx: MappingContext) -> Invoice:
    parsed = _parse_plain(raw, ctx)
    # Anything unusual (a defect, an unexpected type or shape) takes the payload models, which
    # report every problem of the record at once.
    return parsed if parsed is not None else _via_models(raw, ctx)


class ParsedImportRecord(Protocol):
    """The import record's fields once parsed, whatever a payload model calls them at the
    source (`ImportRecordPayload`, or MediTrak's own detail)."""

    id: str
    invoice_number: str
    invoice_date: date
    total_amount: Decimal
    status: str
    facility: str | None
    patient: PatientPayload
    items: list[ItemPayload]
    updated_at: datetime | None
    currency: str | None


def _via_models(raw: Any, ctx: MappingContext) -> Invoice:
    return invoice_from_record(parse_payload(ImportRecordPayload, raw), ctx)


def invoice_from_record(record: ParsedImportRecord, ctx: MappingContext) -> Invoice:
    """The canonical invoice of a record parsed by a payload model."""
    return _invoice(
        ctx,
        record.id,
        record.invoice_number,
        record.invoice_date,
        record.total_amount,
        record.currency,
        record.status,
        record.facility,
        record.patient.name,
        record.patient.policy_number,
        canonical_items(record.items, ctx),
        record.updated_at,
    )


def _invoice(
    ctx: MappingContext,
    record_id: str,
    invoice_number: str,
    invoice_date: date,
    total_amount: Decimal,
    currency: str | None,
    status: str,
    facility: str | None,
    patient_name: str,
    policy_number: str | None,
    items: tuple[LineItem, ...],
    updated_at: datetime | None,
) -> Invoice:
    return Invoice(
        source=ctx.source,
        id=record_id,
        invoice_number=invoice_number,
        invoice_date=invoice_date,
        total_amount=total_amount,
        currency=(currency or ctx.currency).upper(),
        status=ctx.map_status(status),
        source_status=status,
        facility=facility,
        patient=Patient(name=patient_name, policy_number=policy_number),
        items=items,
        source_updated_at=to_utc(updated_at, ctx.timezone) if updated_at else None,
    )


def _parse_plain(raw: Any, ctx: MappingContext) -> Invoice | None:
    """The payload models' result for a well-formed record, by calling their field validators
    directly: no payload model instances and no per-field trip through pydantic-core, which
    cost about a third of mapping a record (docs/performance.md).

    Returns None, never raises, for anything that is not plainly well formed: any failing
    field, a missing required field, or containers of unexpected types. `parse_payload` then
    decides, so defects are reported exactly as before. Each field follows its annotation
    on `ImportRecordPayload`, `PatientPayload` and `ItemPayload` (a default when absent;
    `updated_at` None when null), which `tests/mappings` check against the models."""
    if type(raw) is not dict:
        return None
    patient = raw.get("patient")
    raw_items = raw.get("items", [])
    if type(patient) is not dict or type(raw_items) is not list:
        return None
    if any(type(item) is not dict for item in raw_items):
        return None
    updated = raw.get("updated_at")
    try:
        values = [
            (
                parse_optional_text(item.get("category")),
                parse_optional_text(item.get("description")),
                parse_quantity(item.get("quantity")),
                parse_money(item.get("unit_price")),
                parse_money(item.get("total")),
            )
            for item in raw_items
        ]
        record_id = parse_text(raw.get("id"))
        invoice_number = parse_text(raw.get("invoice_number"))
        invoice_date = parse_iso_date(raw.get("invoice_date"))
        total_amount = parse_money(raw.get("total_amount"))
        currency = parse_optional_text(raw.get("currency"))
        status = parse_text(raw.get("status"))
        facility = parse_optional_text(raw.get("facility"))
        patient_name = parse_text(patient.get("name"))
        policy_number = parse_optional_text(patient.get("policy_number"))
        updated_at = None if updated is None else parse_timestamp(updated)
    except Exception:  # any failing field: the models decide
        return None
    items = tuple(line_item(ctx, *item) for item in values)
    return _invoice(
        ctx,
        record_id,
        invoice_number,
        invoice_date,
        total_amount,
        currency,
        status,
        facility,
        patient_name,
        policy_number,
        items,
        updated_at,
    )


# Which vendor field feeds each canonical field (`SourceMapping.field_sources`); the category
# rules read the item's description after its category word.
FIELD_SOURCES: dict[str, tuple[str, ...]] = {
    "id": ("id",),
    "invoice_number": ("invoice_number",),
    "invoice_date": ("invoice_date",),
    "total_amount": ("total_amount",),
    "status": ("status",),
    "facility": ("facility",),
    "patient.name": ("patient.name",),
    "patient.policy_number": ("patient.policy_number",),
    "items": ("items",),
    "items[].category": ("items[].category", "items[].description"),
    "items[].description": ("items[].description",),
    "items[].quantity": ("items[].quantity",),
    "items[].unit_price": ("items[].unit_price",),
    "items[].total": ("items[].total",),
}


MAPPING = SourceMapping(
    vendor="meditrak_import",
    status_map=STATUS_MAP,
    to_canonical=to_canonical,
    record_id=id_field("id"),
    field_sources=FIELD_SOURCES,
)
