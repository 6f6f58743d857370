"""The canonical invoice: the MediTrak import record plus where it came from.

Every source maps into `Invoice`; validation decides whether it may be stored; the store and
the exports only ever see this shape. Money is `Decimal`, timestamps are timezone-aware UTC.
"""

from __future__ import annotations

import hashlib
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

CENT = Decimal("0.01")
_ONE = Decimal(1)


class Category(StrEnum):
    """The ten MediTrak item categories."""

    CONSULTATION = "consultation"
    LABORATORY = "laboratory"
    RADIOLOGY = "radiology"
    PHARMACY = "pharmacy"
    EMERGENCY = "emergency"
    SURGERY = "surgery"
    DENTAL = "dental"
    PHYSIOTHERAPY = "physiotherapy"
    OBSTETRICS = "obstetrics"
    OPTICAL = "optical"


CATEGORY_VALUES = frozenset(c.value for c in Category)


class InvoiceStatus(StrEnum):
    """MediTrak's statuses plus `void` for cancelled / voided / written-off invoices."""

    PAID = "paid"
    UNPAID = "unpaid"
    PENDING = "pending"
    VOID = "void"


def to_cents(value: Decimal) -> Decimal:
    """Round half-up to cents; used only where a source's own arithmetic defines the result."""
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


# The store keeps quantities as NUMERIC(18, 6): at most 12 integer and 6 decimal digits.
QUANTITY_PLACES = 6


def plain_quantity(value: Decimal) -> Decimal:
    """A quantity in one spelling whatever the source or backend wrote (1.500000 and 1.50 are
    1.5; 100 stays 100), so that stored and re-read invoices hash and export alike."""
    if not value.is_finite():
        return value
    normal = value.normalize()
    # A normalized whole number has an exponent >= 0 (100 became 1E+2): quantizing spells it
    # out, and is a no-op at exponent 0. Cheaper than reading the exponent via `as_tuple()`.
    return normal.quantize(_ONE) if normal == normal.to_integral_value() else normal


# Where a policy candidate came from when it is not a vendor field: the registry's patient link
# (`connector policies link`), or the record's one policy number (a mapping that sets
# `policy_number` without listing candidates).
LINK_ORIGIN = "patient link"
RECORD_ORIGIN = "policy_number"


def content_digest(content_json: bytes) -> str:
    """`Invoice.content_hash` of an invoice whose `content_json` is given."""
    return hashlib.sha256(content_json).hexdigest()


class PolicyCandidate(BaseModel):
    """One policy number an invoice could be billed to, and where it came from (a vendor
    field such as `referenceNumbers[Policy]`, or `LINK_ORIGIN`)."""

    model_config = ConfigDict(frozen=True)

    number: str
    origin: str


class Patient(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str | None = None
    # The policy billed: before resolution the mapping's first candidate, after it the one the
    # resolution rule chose (docs/sources.md, "Policy resolution").
    policy_number: str | None = None
    # The source's own patient id: how sources without policy numbers are linked to one.
    source_ref: str | None = None
    # Every candidate policy in order of preference (vendor fields from the mapping; resolution
    # puts the patient link first), and the origin of the one chosen. Provenance for
    # validation, not content: left out of every dump and of the content hash, so the store
    # keeps only the policy number and no record is rewritten for its provenance alone (and
    # hashing stays as cheap as before, docs/performance.md). The POLICY_CONFLICT warning
    # carries them to reports.
    policy_candidates: tuple[PolicyCandidate, ...] = Field(default=(), exclude=True)
    policy_source: str | None = Field(default=None, exclude=True)

    def candidates(self) -> tuple[PolicyCandidate, ...]:
        """The candidates listed by the mapping, or else the record's one policy number."""
        if self.policy_candidates:
            return self.policy_candidates
        number = (self.policy_number or "").strip()
        return (PolicyCandidate(number=number, origin=RECORD_ORIGIN),) if number else ()


class LineItem(BaseModel):
    model_config = ConfigDict(frozen=True)

    # None means no rule could assign one of the ten categories (CATEGORY_UNMAPPED).
    category: Category | None
    description: str | None
    quantity: Decimal
    unit_price: Decimal
    total: Decimal
    # What the vendor called it (category word, department, item type or code).
    source_category: str | None = None
    # Which category rule matched, so reports can explain the assignment.
    category_rule: str | None = None


class Invoice(BaseModel):
    """One canonical invoice. Fields that a defective record may lack are optional here;
    validation decides whether the invoice is complete enough to store."""

    model_config = ConfigDict(frozen=True)

    source: str
    id: str
    invoice_number: str | None
    invoice_date: date | None
    total_amount: Decimal
    paid_amount: Decimal | None = None
    currency: str
    # None means the source's status word is not in the status map (STATUS_UNMAPPED).
    status: InvoiceStatus | None
    source_status: str | None
    facility: str | None = None
    patient: Patient = Field(default_factory=Patient)
    items: tuple[LineItem, ...] = ()
    source_updated_at: datetime | None = None

    def content_json(self) -> bytes:
        """The model's own JSON: every field but the policy's provenance, in declaration order,
        as pydantic writes it. It is what `content_hash` digests, and what a store writer
        process is sent (`Invoice.model_validate_json` gives back an equal invoice)."""
        return self.__pydantic_serializer__.to_json(self)

    def content_hash(self) -> str:
        """A digest of everything the source said; equal hashes mean nothing to write.

        The JSON is hashed without a dict in between: half the cost of dump + sorted orjson. A
        new field, or a new order, changes every hash once, which costs one rewrite per stored
        record on the next sync (docs/performance.md)."""
        return content_digest(self.content_json())

    def to_import_record(self) -> dict[str, Any]:
        """The MediTrak import record, with provenance fields beside the contract's own."""
        return {
            "id": self.id,
            "invoice_number": self.invoice_number,
            "invoice_date": self.invoice_date.isoformat() if self.invoice_date else None,
            "total_amount": str(self.total_amount),
            "status": self.status.value if self.status else None,
            "facility": self.facility,
            "patient": {"name": self.patient.name, "policy_number": self.patient.policy_number},
            "items": [
                {
                    "category": item.category.value if item.category else None,
                    "description": item.description,
                    "quantity": str(item.quantity),
                    "unit_price": str(item.unit_price),
                    "total": str(item.total),
                }
                for item in self.items
            ],
            "source": self.source,
            "currency": self.currency,
            "source_status": self.source_status,
            "paid_amount": None if self.paid_amount is None else str(self.paid_amount),
            "source_updated_at": (
                self.source_updated_at.isoformat() if self.source_updated_at else None
            ),
        }


class ImportRecordItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    category: Category
    description: str = Field(min_length=1)
    quantity: Decimal = Field(gt=0)
    unit_price: Decimal = Field(ge=0, decimal_places=2)
    total: Decimal = Field(ge=0, decimal_places=2)


class ImportPatient(BaseModel):
    name: str = Field(min_length=1)
    policy_number: str = Field(min_length=1)


class ImportRecord(BaseModel):
    """The MediTrak import contract as a strict model: what `connector export` promises."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(min_length=1)
    invoice_number: str = Field(min_length=1)
    invoice_date: date
    total_amount: Decimal = Field(ge=0, decimal_places=2)
    status: InvoiceStatus
    facility: str | None = None
    patient: ImportPatient
    items: list[ImportRecordItem] = Field(min_length=1)
