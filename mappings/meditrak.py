"""Mapping of MediTrak API v1 invoice details to the canonical invoice.

MediTrak does not document its detail schema; this follows the shape our sandbox serves
(list summary fields plus patient and items as in the import record). Status words are
MediTrak's claim workflow: draft / submitted / approved / rejected / paid.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from connector.mapping.kit import MappingContext, SourceMapping, id_field, parse_payload
from connector.mapping.types import IsoDate, Money, OptionalText, Text, Timestamp
from connector.model import Invoice, InvoiceStatus
from mappings import meditrak_import
from mappings.meditrak_import import ItemPayload, PatientPayload, invoice_from_record


class MediTrakInvoicePayload(BaseModel):
    """MediTrak's detail is the import record with two fields renamed (`invoice_id`,
    `service_date`): the aliases give it the import record's attribute names, so one function
    maps both. Fields stay in MediTrak's order, in which defects are reported."""

    model_config = ConfigDict(extra="ignore")

    id: Text = Field(validation_alias="invoice_id")
    invoice_number: Text
    invoice_date: IsoDate = Field(validation_alias="service_date")
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
    return invoice_from_record(parse_payload(MediTrakInvoicePayload, raw), ctx)


# The import record's field sources (see `SourceMapping.field_sources`), two fields renamed.
FIELD_SOURCES = {
    **meditrak_import.FIELD_SOURCES,
    "id": ("invoice_id",),
    "invoice_date": ("service_date",),
}


MAPPING = SourceMapping(
    vendor="meditrak",
    status_map=STATUS_MAP,
    to_canonical=to_canonical,
    record_id=id_field("invoice_id"),
    field_sources=FIELD_SOURCES,
)
