"""Mapping of CitaBox (Costa Rica) invoices to the canonical invoice.

A CitaBox invoice is flat: integer CRC cents, one free-text Spanish `service_description` and
no line items, a payment status and a Hacienda e-invoice status. It becomes one canonical item
(quantity 1 x the invoice total) that the category rules classify from its description.

A source reading several clinics tags each record with the clinic it was read from (`_clinic`,
see adapters/citabox.py): its invoices are then keyed "<clinic id>:<CitaBox id>", and the
clinic's name is the facility unless the `facility` setting names one. Untagged records (one
clinic) keep the plain CitaBox id, as stores written before several clinics expect.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from connector.errors import RecordError
from connector.issues import Issue, Reason
from connector.mapping.kit import MappingContext, SourceMapping, parse_payload
from connector.mapping.lines import line_item
from connector.mapping.types import Cents, OptionalText, Text, Timestamp
from connector.model import Invoice, InvoiceStatus, LineItem, Patient


class PatientPayload(BaseModel):
    """The embedded `patient` object. CitaBox does not document its shape; the names below
    are what its Prisma-style models use, with `full_name`/`name` accepted as fallbacks."""

    model_config = ConfigDict(extra="ignore")

    id: OptionalText = None
    first_name: OptionalText = None
    last_name: OptionalText = None
    full_name: OptionalText = None
    name: OptionalText = None

    def display_name(self) -> str | None:
        parts = [p for p in (self.first_name, self.last_name) if p]
        if parts:
            return " ".join(parts)
        return self.full_name or self.name


class ClinicTag(BaseModel):
    """The clinic the adapter read a record from (only when the source reads several)."""

    model_config = ConfigDict(extra="ignore")

    clinic_id: Text
    clinic_name: OptionalText = None


# Where the adapter tags a record read for several clinics with the clinic it was read from.
CLINIC_TAG = "_clinic"


class CitaBoxInvoicePayload(BaseModel):
    """One element of `GET /billing/invoices` (snake_case, but camelCase timestamps)."""

    model_config = ConfigDict(extra="ignore")

    id: Text
    clinic_id: OptionalText = None
    patient_id: OptionalText = None
    appointment_id: OptionalText = None
    hacienda_consecutive: OptionalText = None
    numeric_key: OptionalText = None
    total_amount: Cents
    service_description: OptionalText = None
    hacienda_status: Text
    payment_status: Text
    payment_method: OptionalText = None
    payment_reference: OptionalText = None
    paid_amount: Cents | None = None
    paid_at: Timestamp | None = None
    notes: OptionalText = None
    created_at: Timestamp = Field(alias="createdAt")
    updated_at: Timestamp | None = Field(None, alias="updatedAt")
    patient: PatientPayload | None = None
    clinic: ClinicTag | None = Field(None, alias=CLINIC_TAG)


def clinic_key(clinic_id: str, invoice_id: str) -> str:
    """The key of an invoice of a source that reads several clinics: CitaBox ids are only
    promised unique within a clinic."""
    return f"{clinic_id}:{invoice_id}"


def record_id(raw: Any) -> str | None:
    """The record's key, as `to_canonical` keys its invoice (quarantine and release agree)."""
    if not isinstance(raw, dict):
        return None
    value = raw.get("id")
    if not isinstance(value, str | int) or isinstance(value, bool) or not str(value).strip():
        return None
    invoice_id = str(value).strip()
    tag = raw.get(CLINIC_TAG)
    clinic = tag.get("clinic_id") if isinstance(tag, dict) else None
    if isinstance(clinic, str) and clinic.strip():
        invoice_id = clinic_key(clinic.strip(), invoice_id)
    return invoice_id[:200]


def status_word(payment_status: str, hacienda_status: str) -> str:
    """The source status word: both vendor words, so a `status_map` override can target e.g.
    `UNPAID/REJECTED` alone."""
    return f"{payment_status}/{hacienda_status}"


# The status rule: money received decides (PAID -> paid; PARTIAL -> unpaid, paid_amount kept).
# With nothing paid, an invoice is only due once Hacienda accepted it: a DRAFT (not submitted
# yet) or REJECTED (must be corrected and re-issued) e-invoice is not yet a valid tax document,
# so it is `pending`. CitaBox has no cancel/void word. Unknown words in either half map to
# nothing, so validation reports STATUS_UNMAPPED instead of a guess.
STATUS_MAP: dict[str, InvoiceStatus] = {
    status_word("PAID", "ACCEPTED"): InvoiceStatus.PAID,
    status_word("PAID", "DRAFT"): InvoiceStatus.PAID,
    status_word("PAID", "REJECTED"): InvoiceStatus.PAID,
    status_word("PARTIAL", "ACCEPTED"): InvoiceStatus.UNPAID,
    status_word("PARTIAL", "DRAFT"): InvoiceStatus.UNPAID,
    status_word("PARTIAL", "REJECTED"): InvoiceStatus.UNPAID,
    status_word("UNPAID", "ACCEPTED"): InvoiceStatus.UNPAID,
    status_word("UNPAID", "DRAFT"): InvoiceStatus.PENDING,
    status_word("UNPAID", "REJECTED"): InvoiceStatus.PENDING,
}


def service_item(total: Decimal, description: str | None, ctx: MappingContext) -> LineItem:
    """The invoice's one service as a canonical item. CitaBox has no category word of its own,
    so the rules see only the (Spanish) description."""
    return line_item(ctx, None, description, Decimal(1), total, total)


def to_canonical(raw: Any, ctx: MappingContext) -> Invoice:
    record = parse_payload(CitaBoxInvoicePayload, raw)
    word = status_word(record.payment_status, record.hacienda_status)
    facility = ctx.options.get("facility")
    invoice_id = record.id
    if record.clinic is not None:
        read_from = record.clinic.clinic_id
        if record.clinic_id is not None and record.clinic_id != read_from:
            # Served for one clinic but naming another: which clinic it belongs to is unknown.
            said = f"the record was served for clinic {read_from} but names another clinic"
            raise RecordError([Issue(Reason.FIELD_INVALID, "clinic_id", said)])
        invoice_id = clinic_key(read_from, record.id)
        if not (isinstance(facility, str) and facility):
            facility = record.clinic.clinic_name
    return Invoice(
        source=ctx.source,
        id=invoice_id,
        # Drafts have no Hacienda consecutive yet; the CitaBox id is then the only number.
        invoice_number=record.hacienda_consecutive or record.id,
        # The clinic's day (config `timezone`), not the UTC day.
        invoice_date=ctx.local_date(record.created_at),
        total_amount=record.total_amount,
        paid_amount=record.paid_amount,
        # CitaBox bills in colones only and carries no currency field.
        currency=ctx.currency,
        status=ctx.map_status(word),
        source_status=word,
        facility=facility if isinstance(facility, str) and facility else None,
        patient=Patient(
            name=record.patient.display_name() if record.patient else None,
            policy_number=None,
            source_ref=record.patient_id or (record.patient.id if record.patient else None),
        ),
        items=(service_item(record.total_amount, record.service_description, ctx),),
        source_updated_at=ctx.utc(record.updated_at),
    )


# Which vendor field feeds each canonical field (`SourceMapping.field_sources`). The one item is
# the invoice's service, quantity 1; the facility is a setting, the policy a patient link.
FIELD_SOURCES: dict[str, tuple[str, ...]] = {
    "id": ("id",),
    "invoice_number": ("hacienda_consecutive", "id"),
    "invoice_date": ("createdAt",),
    "total_amount": ("total_amount",),
    "status": ("payment_status", "hacienda_status"),
    "facility": ("setting:facility",),
    "patient.name": (
        "patient.first_name",
        "patient.last_name",
        "patient.full_name",
        "patient.name",
    ),
    "patient.policy_number": ("policy_link",),
    "items": ("service_description", "total_amount"),
    "items[].category": ("service_description",),
    "items[].description": ("service_description",),
    "items[].quantity": (),
    "items[].unit_price": ("total_amount",),
    "items[].total": ("total_amount",),
}


MAPPING = SourceMapping(
    vendor="citabox",
    status_map=STATUS_MAP,
    to_canonical=to_canonical,
    record_id=record_id,
    field_sources=FIELD_SOURCES,
)
