"""The import record as `connector serve` writes it (MediTrak's documented shape, plus the
served extras `source`, `updated_at` and `source_updated_at`), and the models that describe
the record, the list envelope and the error body in the OpenAPI document.

Answers are rendered straight to JSON bytes with orjson: money as numbers with exactly two
decimals (1250.00 stays 1250.00, which a float would spell 1250.0), dates as YYYY-MM-DD.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import orjson
from pydantic import BaseModel, Field

from connector.model import CENT, plain_quantity
from connector.store.serving import ServedInvoice

# Invoice ids are "<source>:<source id>": unique across sources, and source names cannot
# hold a colon (settings.SOURCE_NAME), so the first colon splits them.
ID_SEPARATOR = ":"


def served_id(source: str, source_id: str) -> str:
    return f"{source}{ID_SEPARATOR}{source_id}"


def split_id(invoice_id: str) -> tuple[str, str] | None:
    source, separator, source_id = invoice_id.partition(ID_SEPARATOR)
    return (source, source_id) if separator and source and source_id else None


def _money(value: Decimal) -> orjson.Fragment:
    return orjson.Fragment(str(value.quantize(CENT, rounding=ROUND_HALF_UP)))


def _quantity(value: Decimal) -> orjson.Fragment:
    return orjson.Fragment(format(plain_quantity(value), "f"))


def iso_utc(moment: datetime) -> str:
    """UTC with microseconds and a Z: exact enough to be fed back as `updated_since`."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def record(served: ServedInvoice) -> dict[str, Any]:
    """One import record, ready for orjson."""
    row = served.row
    return {
        "id": served_id(row.source, row.source_id),
        "source": row.source,
        "invoice_number": row.invoice_number,
        "invoice_date": row.invoice_date.isoformat(),
        "total_amount": _money(row.total_amount),
        "currency": row.currency,
        "status": row.status,
        "facility": row.facility,
        "patient": {"name": row.patient_name, "policy_number": row.policy_number},
        "items": [
            {
                "category": item.category,
                "description": item.description,
                "quantity": _quantity(item.quantity),
                "unit_price": _money(item.unit_price),
                "total": _money(item.total),
            }
            for item in served.items
        ],
        "updated_at": iso_utc(row.written_at),
        "source_updated_at": iso_utc(row.source_updated_at) if row.source_updated_at else None,
    }


# ------------------------------------------------------------------ OpenAPI models
# Documentation only: answers are rendered by `record` above and returned as they are.


class ItemModel(BaseModel):
    category: str = Field(description="consultation, laboratory, radiology, pharmacy, ...")
    description: str
    quantity: float
    unit_price: float = Field(description="Two decimal places.")
    total: float = Field(description="quantity x unit_price, two decimal places.")


class PatientModel(BaseModel):
    name: str
    policy_number: str | None


class ImportRecordModel(BaseModel):
    id: str = Field(description='"<source>:<source id>", unique across the served sources.')
    source: str = Field(description="The connector source the invoice came from.")
    invoice_number: str
    invoice_date: str = Field(description="YYYY-MM-DD.")
    total_amount: float = Field(description="Two decimal places.")
    currency: str
    status: str = Field(description="paid, unpaid, pending (void only when asked for).")
    facility: str | None
    patient: PatientModel
    items: list[ItemModel]
    updated_at: str = Field(description="When the connector stored this version (UTC, ISO).")
    source_updated_at: str | None = Field(description="The source's own update time, if any.")


class InvoiceListModel(BaseModel):
    success: bool
    data: list[ImportRecordModel]
    total: int = Field(
        description="How many invoices the filters match, all pages: counted for each numbered "
        "page, and once per cursor pass (its first page; later pages repeat that count)."
    )
    page: int | None = Field(description="The page number asked for (null with a cursor).")
    limit: int
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the page after this one; null on the last page."
    )
    as_of: str = Field(description="The pass's horizon: versions written up to it are listed.")


class ErrorModel(BaseModel):
    success: bool = False
    error: str
    code: str
