"""Mapping of Splose invoices (`GET /v1/invoices` rows, line items included) to the canonical
invoice: Title Case statuses, fractional quantities, "$20.00" discounts and per-item tax rates
folded into MediTrak's quantity x unit price items, candidate policy numbers from the
`referenceNumbers` entries labelled by `policy_reference_prefixes` (never Medicare/DVA numbers
by default); validation chooses among them and the patient link.

Splose rows name the patient only by `patientId`; the adapter attaches the patient resource
(`GET /v1/patients/{id}`) under `_patient`, and this mapping reads the name from there.

Line arithmetic, per item, each step rounded half-up to cents:
    gross = quantity x unitPrice;  after discount = gross - discount
    tax   = after discount x taxRate % (only when the invoice's taxStatus is "excluding")
    net   = after discount + tax
A line with neither a discount nor added tax keeps its quantity and unit price; any other line
becomes quantity 1 x net, its description ending in "(qty x price, less discount, +tax)".
With taxStatus "including" the tax is already inside the prices, and "no tax" ignores rates.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from connector.mapping.kit import (
    PATIENT_LOOKUP_KEY,
    MappingContext,
    SourceMapping,
    id_field,
    parse_payload,
)
from connector.mapping.lines import added_tax, discount, percent_of, vendor_line
from connector.mapping.types import (
    Money,
    OptionalText,
    Quantity,
    Text,
    Timestamp,
    parse_decimal,
    to_utc,
)
from connector.model import (
    Invoice,
    InvoiceStatus,
    LineItem,
    Patient,
    PolicyCandidate,
    to_cents,
)

# Splose's three documented words. A Draft is not yet billable; "Awaiting Payment" is issued.
STATUS_MAP = {
    "Draft": InvoiceStatus.PENDING,
    "Awaiting Payment": InvoiceStatus.UNPAID,
    "Paid": InvoiceStatus.PAID,
}

# `referenceNumbers` entries ("Policy: POL-123456") whose label names an insurance policy, in
# order of preference; config `policy_reference_prefixes` replaces the list. Splose documents
# the field as the invoice's provider numbers ("Medicare: 12345678"): Medicare and DVA numbers
# are government schemes, not the clinic's insurance policy, so they are not candidates unless
# a source lists them (and even then a number failing the registry format never wins).
DEFAULT_POLICY_PREFIXES: tuple[str, ...] = ("Policy", "Insurance")
PROVIDER_NUMBER_LABELS: tuple[str, ...] = ("Medicare", "DVA")
POLICY_PREFIXES_OPTION = "policy_reference_prefixes"

TaxStatus = Literal["including", "excluding", "no tax"]
_ZERO = Decimal(0)
_HUNDRED = Decimal(100)


def _present(value: Any) -> Any:
    # Splose documents `total` and friends as "number | null": null is a missing value, not a
    # malformed amount.
    if value is None:
        raise PydanticCustomError("field_missing", "required")
    return value


def _optional_discount(value: Any) -> Any:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return value


def _tax_rate(value: Any) -> Decimal | None:
    if value is None:
        return None
    rate = parse_decimal(value)
    if rate < 0 or rate > _HUNDRED:
        raise PydanticCustomError("amount_invalid", "tax rate must be 0-100 %")
    return rate


def _tax_status(value: Any) -> str:
    if value is None:
        raise PydanticCustomError("field_missing", "required")
    word = value.strip().lower() if isinstance(value, str) else value
    if word not in ("including", "excluding", "no tax"):
        raise PydanticCustomError(
            "field_invalid",
            "taxStatus must be including, excluding or no tax, got '{v}'",
            {"v": str(value)[:40]},
        )
    return str(word)


def _issue_moment(value: Any) -> date | datetime:
    """`2023-07-01`, `2023-07-01T00:00:00Z` or `...00.000Z`: a plain date stays a date."""
    if value is None:
        raise PydanticCustomError("field_missing", "required")
    if isinstance(value, str) and len(value.strip()) == 10:
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            pass
    if isinstance(value, str) and len(value.strip()) > 10:
        try:
            return datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            pass
    raise PydanticCustomError(
        "date_format", "expected an ISO 8601 date or timestamp, got '{v}'", {"v": str(value)[:40]}
    )


def _items_or_empty(value: Any) -> Any:
    return [] if value is None else value


RequiredMoney = Annotated[Money, BeforeValidator(_present)]
Discount = Annotated[Money | None, BeforeValidator(_optional_discount)]
TaxRate = Annotated[Decimal | None, BeforeValidator(_tax_rate)]
IssueMoment = Annotated[date | datetime, BeforeValidator(_issue_moment)]


class _SploseModel(BaseModel):
    # Field names are Splose's camelCase; error paths therefore name the vendor's own fields.
    model_config = ConfigDict(extra="ignore", alias_generator=to_camel)


class SploseItemPayload(_SploseModel):
    type: OptionalText = None
    code: OptionalText = None
    description: OptionalText = None
    unit_price: RequiredMoney
    quantity: Quantity
    discount: Discount = None
    tax_type: OptionalText = None
    tax_rate: TaxRate = None


class SplosePatientPayload(_SploseModel):
    """The `GET /v1/patients/{id}` answer the adapter attaches (only the name is used)."""

    first_name: OptionalText = None
    last_name: OptionalText = None


class SploseInvoicePayload(_SploseModel):
    id: Text
    invoice_number: Text
    issue_date: IssueMoment
    patient_id: Text
    tax_status: Annotated[TaxStatus, BeforeValidator(_tax_status)]
    total: RequiredMoney
    paid_amount: Money | None = None
    status: Text
    invoice_items: Annotated[list[SploseItemPayload], BeforeValidator(_items_or_empty)]
    reference_numbers: list[str | None] | None = None
    is_archived: bool | None = None
    updated_at: Timestamp | None = None
    # Not a Splose field: the patient resource attached by the adapter (None when not fetched).
    patient: SplosePatientPayload | None = Field(None, alias=PATIENT_LOOKUP_KEY)


def canonical_item(item: SploseItemPayload, tax_status: TaxStatus, ctx: MappingContext) -> LineItem:
    """One Splose line as a MediTrak item, discount and added tax folded into the amount."""
    adjustments = []
    if item.discount:
        adjustments.append(discount(item.discount))
    rate = item.tax_rate
    if tax_status == "excluding" and rate:
        after_discount = to_cents(item.quantity * item.unit_price) - (item.discount or _ZERO)
        adjustments.append(added_tax(percent_of(after_discount, rate), rate))
    return vendor_line(
        ctx, item.code or item.type, item.description, item.quantity, item.unit_price, adjustments
    )


def policy_candidates(
    references: Sequence[str | None] | None, prefixes: Sequence[str]
) -> tuple[PolicyCandidate, ...]:
    """Every "Label: value" reference whose label is a policy prefix, as candidates in order
    of preference: by prefix (labels compared case-insensitively), then by entry order; the
    origin names the field and the prefix, e.g. `referenceNumbers[Policy]`."""
    labelled: dict[str, list[str]] = {}
    for entry in references or ():
        if not entry or ":" not in entry:
            continue
        label, _, value = entry.partition(":")
        if value.strip():
            labelled.setdefault(label.strip().lower(), []).append(value.strip())
    found: list[PolicyCandidate] = []
    seen: set[str] = set()
    for prefix in prefixes:
        key = prefix.strip().lower()
        if key in seen:
            continue
        seen.add(key)
        origin = f"referenceNumbers[{prefix.strip()}]"
        found.extend(PolicyCandidate(number=v, origin=origin) for v in labelled.get(key, ()))
    return tuple(found)


def policy_from_references(
    references: Sequence[str | None] | None, prefixes: Sequence[str]
) -> str | None:
    """The most preferred candidate's number (`policy_candidates`), or None."""
    found = policy_candidates(references, prefixes)
    return found[0].number if found else None


def _patient_name(patient: SplosePatientPayload | None) -> str | None:
    if patient is None:
        return None
    name = " ".join(part for part in (patient.first_name, patient.last_name) if part)
    return name or None


def _invoice_date(moment: date | datetime, ctx: MappingContext) -> date:
    if isinstance(moment, datetime):
        return to_utc(moment, ctx.timezone).date()
    return moment


def to_canonical(raw: Any, ctx: MappingContext) -> Invoice:
    record = parse_payload(SploseInvoicePayload, raw)
    prefixes = ctx.options.get(POLICY_PREFIXES_OPTION) or DEFAULT_POLICY_PREFIXES
    candidates = policy_candidates(record.reference_numbers, prefixes)
    return Invoice(
        source=ctx.source,
        id=record.id,
        invoice_number=record.invoice_number,
        invoice_date=_invoice_date(record.issue_date, ctx),
        total_amount=record.total,
        paid_amount=record.paid_amount,
        # Splose has no currency field: it is the account's, given in config.
        currency=ctx.currency.upper(),
        status=ctx.map_status(record.status),
        source_status=record.status,
        facility=None,
        patient=Patient(
            name=_patient_name(record.patient),
            # The vendor's preferred candidate until validation resolves the policy against
            # the registry and the patient's link (connector.policies).
            policy_number=candidates[0].number if candidates else None,
            source_ref=record.patient_id,
            policy_candidates=candidates,
        ),
        items=tuple(canonical_item(i, record.tax_status, ctx) for i in record.invoice_items),
        source_updated_at=ctx.utc(record.updated_at),
    )


# A Splose line has no total of its own: the item's amounts are computed from these.
_LINE_AMOUNT = (
    "invoiceItems[].unitPrice",
    "invoiceItems[].quantity",
    "invoiceItems[].discount",
    "invoiceItems[].taxRate",
    "taxStatus",
)

# Which vendor field feeds each canonical field (`SourceMapping.field_sources`); Splose has no
# facility, and the patient comes from the lookup the adapter attaches.
FIELD_SOURCES: dict[str, tuple[str, ...]] = {
    "id": ("id",),
    "invoice_number": ("invoiceNumber",),
    "invoice_date": ("issueDate",),
    "total_amount": ("total",),
    "status": ("status",),
    "facility": (),
    "patient.name": ("patient_lookup:firstName", "patient_lookup:lastName"),
    "patient.policy_number": ("referenceNumbers", "policy_link"),
    "items": ("invoiceItems",),
    "items[].category": (
        "invoiceItems[].code",
        "invoiceItems[].type",
        "invoiceItems[].description",
    ),
    "items[].description": ("invoiceItems[].description",),
    "items[].quantity": ("invoiceItems[].quantity",),
    "items[].unit_price": _LINE_AMOUNT,
    "items[].total": _LINE_AMOUNT,
}


MAPPING = SourceMapping(
    vendor="splose",
    status_map=STATUS_MAP,
    to_canonical=to_canonical,
    record_id=id_field("id"),
    field_sources=FIELD_SOURCES,
)
