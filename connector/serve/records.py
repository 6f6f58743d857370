"""The import record as `connector serve` writes it (MediTrak's documented shape, plus the
served extras `source`, `updated_at` and `source_updated_at`), and the models that describe
the record, the list envelope and the error body in the OpenAPI document.

Answers are rendered straight to JSON bytes with orjson: money as numbers with exactly two
decimals (1250.00 stays 1250.00, which a float would spell 1250.0), dates as YYYY-MM-DD. The
store hands money, dates and times over as text (`connector.store.serving`); the common
spellings are served as they are and anything else goes through Decimal or datetime.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from orjson import Fragment
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


# The spellings the store hands over in the common case are served as they are, after a
# check of their shape cheaper than a regular expression; anything else (SQLite text written
# with more or fewer decimals, an exponent) goes through Decimal or datetime.


def _plain_number(text: str) -> bool:
    """A JSON number without exponent: optional minus, ASCII digits without a leading zero
    (but 0 itself), optionally a dot and ASCII digits."""
    unsigned = text[1:] if text[:1] == "-" else text
    whole, dot, fraction = unsigned.partition(".")
    return (
        whole.isascii()
        and whole.isdigit()
        and (whole[0] != "0" or len(whole) == 1)
        and (not dot or (fraction.isascii() and fraction.isdigit()))
    )


def money_text(value: str | Decimal) -> str:
    """Exactly two decimals, rounded half up (1250 and 1250.0 are 1250.00)."""
    if isinstance(value, str) and value[-3:-2] == "." and _plain_number(value):
        return value
    return str(Decimal(value).quantize(CENT, rounding=ROUND_HALF_UP))


def quantity_text(value: str | Decimal) -> str:
    """A quantity in its plain spelling (1.500000 is 1.5, 2.000000 is 2: `plain_quantity`)."""
    if isinstance(value, str) and _plain_number(value):
        return value.rstrip("0").rstrip(".") if "." in value else value
    return format(plain_quantity(Decimal(value)), "f")


def date_text(value: str | date) -> str:
    if isinstance(value, str) and len(value) == 10 and value[4] == "-" and value[7] == "-":
        return value
    return (value if isinstance(value, date) else date.fromisoformat(value)).isoformat()


def moment_text(value: str | datetime) -> str:
    """A stored UTC time as `iso_utc` spells it, from either backend's text: PostgreSQL's
    is already that; SQLite's is "YYYY-MM-DD HH:MM:SS.ffffff" (naive UTC)."""
    if isinstance(value, str):
        if len(value) == 27 and value[10] == "T" and value[-1] == "Z":
            return value
        if len(value) == 26 and value[10] == " " and value[19] == ".":
            return f"{value[:10]}T{value[11:]}Z"
        moment = datetime.fromisoformat(value)
        value = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
    return iso_utc(value)


def iso_utc(moment: datetime) -> str:
    """UTC with microseconds and a Z: exact enough to be fed back as `updated_since`."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def record(served: ServedInvoice) -> dict[str, Any]:
    """One import record, ready for orjson (money and quantities as number fragments, so
    that 1250.00 keeps its decimals)."""
    (
        source,
        source_id,
        invoice_number,
        invoice_date,
        total_amount,
        currency,
        status,
        facility,
        patient_name,
        policy_number,
        source_updated_at,
        written_at,
    ) = served.row
    return {
        "id": f"{source}{ID_SEPARATOR}{source_id}",
        "source": source,
        "invoice_number": invoice_number,
        "invoice_date": date_text(invoice_date),
        "total_amount": Fragment(money_text(total_amount)),
        "currency": currency,
        "status": status,
        "facility": facility,
        "patient": {"name": patient_name, "policy_number": policy_number},
        "items": [
            {
                "category": category,
                "description": description,
                "quantity": Fragment(quantity_text(quantity)),
                "unit_price": Fragment(money_text(unit_price)),
                "total": Fragment(money_text(total)),
            }
            for category, description, quantity, unit_price, total in served.items
        ],
        "updated_at": moment_text(written_at),
        "source_updated_at": moment_text(source_updated_at) if source_updated_at else None,
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
