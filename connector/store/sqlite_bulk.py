"""SQLite fast path of a batch write's bulk steps (`SqliteBulk`, a `BulkPath`).

The values are converted here, once, to exactly what the columns' SQLAlchemy types would bind
on SQLite (ExactDecimal: `str(Decimal)`; UtcDateTime: naive UTC in SQLAlchemy's SQLite
DATETIME text, "YYYY-MM-DD HH:MM:SS.ffffff"; Date: "YYYY-MM-DD"), and the rows are built as
tuples: SQLAlchemy's per-value bind processors and the per-row dicts were most of the writer
thread's CPU (docs/performance.md). Statements are plain SQL with `?` placeholders: SQLAlchemy's
IN-list construction cost about 10 µs per id. They run through `exec_driver_sql`, one driver
executemany in the batch's transaction with driver errors wrapped as SQLAlchemy's (so that
they still become a StoreError with its hint).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import Connection, Table

from connector.model import Invoice
from connector.store.bulk import Accepted
from connector.store.database import chunks
from connector.store.schema import invoice, invoice_item

INVOICE_COLUMNS = (
    "source",
    "source_id",
    "invoice_number",
    "invoice_date",
    "total_amount",
    "paid_amount",
    "currency",
    "status",
    "source_status",
    "facility",
    "patient_name",
    "policy_number",
    "patient_ref",
    "source_updated_at",
    "content_hash",
    "first_seen_at",
    "written_at",
    "last_run_id",
)
ITEM_COLUMNS = (
    "source",
    "source_id",
    "line_no",
    "category",
    "description",
    "quantity",
    "unit_price",
    "total",
    "source_category",
    "category_rule",
)


def _marks(count: int) -> str:
    """`count` SQLite placeholders: "?, ?, ?"."""
    return ", ".join("?" * count)


def _insert_sql(table: Table, columns: Sequence[str]) -> str:
    # Every column, so that a column added to the schema cannot be silently left out here.
    if sorted(columns) != sorted(table.c.keys()):
        raise RuntimeError(f"the SQLite insert of {table.name} does not list its columns")
    return f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({_marks(len(columns))})"


_INVOICE_INSERT = _insert_sql(invoice, INVOICE_COLUMNS)
_ITEM_INSERT = _insert_sql(invoice_item, ITEM_COLUMNS)


def sqlite_datetime(value: datetime | None) -> str | None:
    """`schema.UtcDateTime` then SQLAlchemy's SQLite DATETIME, in one step."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("naive datetime reached the store")
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def sqlite_date(value: date | None) -> str | None:
    """SQLAlchemy's SQLite DATE: "YYYY-MM-DD" (of a datetime too, as SQLAlchemy does)."""
    if value is None:
        return None
    if type(value) is date:
        return value.isoformat()  # the same text for every year SQLite can be given
    if not isinstance(value, date):
        raise TypeError("SQLite Date type only accepts Python date objects as input.")
    return f"{value.year:04d}-{value.month:02d}-{value.day:02d}"


def sqlite_datetime_of_json(value: str | None) -> str | None:
    """`sqlite_datetime` of a timestamp as pydantic's JSON writes an aware UTC one
    ("2026-01-03T04:05:06Z", "….789000Z"); any other spelling goes the long way."""
    if value is None:
        return None
    if value[-1:] == "Z" and value[10:11] == "T":
        if len(value) == 20:
            return f"{value[:10]} {value[11:19]}.000000"
        if len(value) == 27 and value[19] == ".":
            return f"{value[:10]} {value[11:26]}"
    return sqlite_datetime(datetime.fromisoformat(value))


def invoice_tuple(a: Accepted, run_id: int, now_text: str | None) -> tuple[Any, ...]:
    """A new invoice's row in `INVOICE_COLUMNS` order (first seen and written now)."""
    record = a.record()
    if record is not None:
        return _invoice_tuple_of_json(record, a.content_hash, run_id, now_text)
    inv = a.invoice
    patient = inv.patient
    total = inv.total_amount
    paid = inv.paid_amount
    return (
        inv.source,
        inv.id,
        inv.invoice_number,
        sqlite_date(inv.invoice_date),
        None if total is None else str(total),
        None if paid is None else str(paid),
        inv.currency,
        inv.status.value if inv.status else None,
        inv.source_status,
        inv.facility,
        patient.name,
        patient.policy_number,
        patient.source_ref,
        sqlite_datetime(inv.source_updated_at),
        a.content_hash,
        now_text,
        now_text,
        run_id,
    )


def _invoice_tuple_of_json(
    record: dict[str, Any], content_hash: str, run_id: int, now_text: str | None
) -> tuple[Any, ...]:
    """`invoice_tuple` from the invoice's JSON: decimals and dates are already the text SQLite
    keeps (pydantic writes a Decimal as `str()` does, a date as `isoformat()`)."""
    patient = record["patient"]
    return (
        record["source"],
        record["id"],
        record["invoice_number"],
        record["invoice_date"],
        record["total_amount"],
        record["paid_amount"],
        record["currency"],
        record["status"],
        record["source_status"],
        record["facility"],
        patient["name"],
        patient["policy_number"],
        patient["source_ref"],
        sqlite_datetime_of_json(record["source_updated_at"]),
        content_hash,
        now_text,
        now_text,
        run_id,
    )


def accepted_item_tuples(a: Accepted) -> Iterable[tuple[Any, ...]]:
    """`item_tuples` of an accepted invoice, from its JSON when no model was built."""
    record = a.record()
    if record is None:
        return item_tuples(a.invoice)
    source, source_id = record["source"], record["id"]
    return [
        (
            source,
            source_id,
            line_no,
            item["category"],
            item["description"],
            item["quantity"],
            item["unit_price"],
            item["total"],
            item["source_category"],
            item["category_rule"],
        )
        for line_no, item in enumerate(record["items"], start=1)
    ]


def item_tuples(inv: Invoice) -> Iterable[tuple[Any, ...]]:
    """`bulk.item_values` in `ITEM_COLUMNS` order, money as SQLite keeps it."""
    source = inv.source
    source_id = inv.id
    for line_no, item in enumerate(inv.items, start=1):
        quantity = item.quantity
        unit_price = item.unit_price
        total = item.total
        yield (
            source,
            source_id,
            line_no,
            item.category.value if item.category else None,
            item.description,
            None if quantity is None else str(quantity),
            None if unit_price is None else str(unit_price),
            None if total is None else str(total),
            item.source_category,
            item.category_rule,
        )


class SqliteBulk:
    """The bulk steps on SQLite: native values, plain SQL, one executemany each."""

    def known_hashes(self, conn: Connection, source: str, ids: Sequence[str]) -> dict[str, str]:
        known: dict[str, str] = {}
        for chunk in chunks(ids):
            found = conn.exec_driver_sql(
                "SELECT source_id, content_hash FROM invoice"
                f" WHERE source = ? AND source_id IN ({_marks(len(chunk))})",
                (source, *chunk),
            )
            known.update({r[0]: r[1] for r in found})
        return known

    def insert_invoices(
        self, conn: Connection, new: Sequence[Accepted], run_id: int, now: datetime
    ) -> None:
        now_text = sqlite_datetime(now)
        conn.exec_driver_sql(_INVOICE_INSERT, [invoice_tuple(a, run_id, now_text) for a in new])

    def insert_items(self, conn: Connection, accepted: Iterable[Accepted]) -> None:
        rows = [row for a in accepted for row in accepted_item_tuples(a)]
        if rows:
            conn.exec_driver_sql(_ITEM_INSERT, rows)

    def release_quarantined(self, conn: Connection, source: str, keys: Sequence[str]) -> int:
        released = 0
        for chunk in chunks(keys):
            released += conn.exec_driver_sql(
                f"DELETE FROM quarantine WHERE source = ? AND record_key IN ({_marks(len(chunk))})",
                (source, *chunk),
            ).rowcount
        return released
