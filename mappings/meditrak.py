"""Mapping of MediTrak API v1 invoice details to the canonical invoice.

MediTrak does not document its detail schema; this follows the shape our sandbox serves
(list summary fields plus patient and items as in the import record). Status words are
MediTrak's claim workflow: draft / submitted / approved / rejected / paid.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from connector.mapping_kit import (
    IsoDate,
    MappingContext,
    Money,
    OptionalText,
    SourceMapping,
    Text,
    Timestamp,
    id_field,
    parse_payload,
    to_utc,
)
from connector.model import Invoice, InvoiceStatus, Patient
from mappings.meditrak_import import ItemPayload, PatientPayload, canonical_items


class MediTrakInvoicePayload(BaseModel):
    model_config = ConfigDict(extra="ignore")

    invoice_id: Text
    invoice_number: Text
    service_date: IsoDate
    status: Text
    total_amount: Money
    currency: OptionalText = None
    facility: OptionalText = None
    patient: PatientPayload
    items: list[ItemPayload] = []
    updated_at: Timestamp | None = None


# Approved claims are billable but not yet paid; a rejected claim is not billable (void).
STATUS_MAP = {
    "draft": InvoiceStatus.PENDING,
    "submitted": InvoiceStatus.PENDING,
    "approved": InvoiceStatus.UNPAID,
    "paid": InvoiceStatus.PAID,
    "rejected": InvoiceStatus.VOID,
}


def to_canonical(raw: Any, ctx: MappingContext) -> Invoice:
    record = parse_payload(MediTrakInvoicePayload, raw)
    return Invoice(
        source=ctx.source,
        id=record.invoice_id,
        invoice_number=record.invoice_number,
        invoice_date=record.service_date,
        total_amount=record.total_amount,
        currency=(record.currency or ctx.currency).upper(),
        status=ctx.map_status(record.status),
        source_status=record.status,
        facility=record.facility,
        patient=Patient(name=record.patient.name, policy_number=record.patient.policy_number),
        items=canonical_items(record.items, ctx),
        source_updated_at=to_utc(record.updated_at, ctx.timezone) if record.updated_at else None,
    )


MAPPING = SourceMapping(
    vendor="meditrak",
    status_map=STATUS_MAP,
    to_canonical=to_canonical,
    record_id=id_field("invoice_id"),
)
