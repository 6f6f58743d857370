"""What a batch write hands the store (`Accepted`, `Rejected`) and the bulk steps of the write
that differ between backends (`BulkPath`), with the portable implementation (`CoreBulk`).

The batch write (`connector.store.writes`) is the same on every backend except for four
steps: reading the stored hashes of a batch's ids, inserting new invoices, inserting item
rows, and releasing quarantine rows. `CoreBulk` does them with SQLAlchemy (used on
PostgreSQL); `connector.store.sqlite_bulk.SqliteBulk` does them with SQLite's native values
(docs/performance.md, third round). Both store exactly the same values.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import orjson
from sqlalchemy import Connection, Table, delete, insert, select

from connector.issues import Issue
from connector.model import Invoice
from connector.store.database import chunks
from connector.store.schema import invoice, invoice_item, quarantine


class Accepted:
    """An invoice that passed validation, with its content hash.

    The pipeline makes it from the model (and the model's `content_json`, made for the hash).
    The writer process makes it from `content_json` and the id alone: the model is then built
    only if a step needs it (an update, PostgreSQL's insert), and SQLite's insert of a new
    invoice takes its rows straight from the JSON (`record`), which costs a fifth of
    rebuilding the model (docs/performance.md, "Issue 19, session 5")."""

    __slots__ = ("_invoice", "_record", "content_hash", "content_json", "id")

    def __init__(
        self,
        invoice: Invoice | None,
        content_hash: str,
        content_json: bytes | None = None,
        *,
        invoice_id: str | None = None,
    ) -> None:
        if invoice is None and (content_json is None or invoice_id is None):
            raise ValueError("an Accepted without its invoice needs its JSON and its id")
        self._invoice = invoice
        self._record: dict[str, Any] | None = None
        self.content_hash = content_hash
        self.content_json = content_json
        self.id: str = invoice.id if invoice is not None else str(invoice_id)

    @property
    def invoice(self) -> Invoice:
        if self._invoice is None:
            assert self.content_json is not None
            self._invoice = Invoice.model_validate_json(self.content_json)
        return self._invoice

    def record(self) -> dict[str, Any] | None:
        """The invoice as its JSON has it, when no model was ever built from it (else None:
        the model is the source of the row)."""
        if self._invoice is not None or self.content_json is None:
            return None
        if self._record is None:
            self._record = orjson.loads(self.content_json)
        return self._record


@dataclass(frozen=True, slots=True)
class Rejected:
    record_key: str
    raw: Any
    canonical: Invoice | None
    issues: Sequence[Issue]


class BulkPath(Protocol):
    """The backend-specific steps of one batch write, all inside the batch's transaction."""

    def known_hashes(self, conn: Connection, source: str, ids: Sequence[str]) -> dict[str, str]:
        """Stored content hash of each of `ids` that the store already holds."""
        ...

    def insert_invoices(
        self, conn: Connection, new: Sequence[Accepted], run_id: int, now: datetime
    ) -> None:
        """Insert invoices not stored yet, first seen and written `now`."""
        ...

    def insert_items(self, conn: Connection, accepted: Iterable[Accepted]) -> None:
        """Insert every item row of `accepted` (whose old items are already deleted)."""
        ...

    def release_quarantined(self, conn: Connection, source: str, keys: Sequence[str]) -> int:
        """Delete the quarantine rows of `keys` (records that now pass); how many there were."""
        ...


def invoice_values(a: Accepted, run_id: int, now: datetime) -> dict[str, Any]:
    """An invoice's row, every column but `first_seen_at` (which an update keeps)."""
    inv = a.invoice
    return {
        "source": inv.source,
        "source_id": inv.id,
        "invoice_number": inv.invoice_number,
        "invoice_date": inv.invoice_date,
        "total_amount": inv.total_amount,
        "paid_amount": inv.paid_amount,
        "currency": inv.currency,
        "status": inv.status.value if inv.status else None,
        "source_status": inv.source_status,
        "facility": inv.facility,
        "patient_name": inv.patient.name,
        "policy_number": inv.patient.policy_number,
        "patient_ref": inv.patient.source_ref,
        "source_updated_at": inv.source_updated_at,
        "content_hash": a.content_hash,
        "written_at": now,
        "last_run_id": run_id,
    }


def item_values(inv: Invoice) -> Iterable[dict[str, Any]]:
    for line_no, item in enumerate(inv.items, start=1):
        yield {
            "source": inv.source,
            "source_id": inv.id,
            "line_no": line_no,
            "category": item.category.value if item.category else None,
            "description": item.description,
            "quantity": item.quantity,
            "unit_price": item.unit_price,
            "total": item.total,
            "source_category": item.source_category,
            "category_rule": item.category_rule,
        }


_InsertPlan = tuple[str, bool, list[tuple[str, Any]]]
_insert_plans: dict[tuple[str, str], _InsertPlan] = {}


def _insert_plan(conn: Connection, table: Table) -> _InsertPlan:
    """The compiled INSERT of every column and each column's bind processor, once per dialect."""
    dialect = conn.dialect
    key = (dialect.name, table.name)
    plan = _insert_plans.get(key)
    if plan is None:
        compiled = insert(table).compile(dialect=dialect)
        names = list(compiled.positiontup or []) if compiled.positional else list(table.c.keys())
        processors = [
            (name, table.c[name].type.dialect_impl(dialect).bind_processor(dialect))
            for name in names
        ]
        plan = _insert_plans[key] = (compiled.string, compiled.positional, processors)
    return plan


def insert_many(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """One executemany through the driver, values converted by SQLAlchemy's own bind
    processors: the same stored values as `conn.execute(insert(table), rows)` without its
    per-row parameter machinery, which cost three times the insert itself (docs/performance.md).
    Every row must carry every column."""
    sql, positional, processors = _insert_plan(conn, table)
    names = [name for name, _ in processors]
    convert = [(i, p) for i, (_, p) in enumerate(processors) if p is not None]
    converted: list[Any] = []
    for row in rows:
        values = [row[name] for name in names]
        for i, process in convert:
            values[i] = process(values[i])
        converted.append(tuple(values) if positional else dict(zip(names, values, strict=True)))
    conn.exec_driver_sql(sql, converted)


class CoreBulk:
    """The bulk steps in SQLAlchemy Core, correct on every backend (used on PostgreSQL)."""

    def known_hashes(self, conn: Connection, source: str, ids: Sequence[str]) -> dict[str, str]:
        known: dict[str, str] = {}
        for chunk in chunks(ids):
            rows = conn.execute(
                select(invoice.c.source_id, invoice.c.content_hash).where(
                    invoice.c.source == source, invoice.c.source_id.in_(chunk)
                )
            )
            known.update({r.source_id: r.content_hash for r in rows})
        return known

    def insert_invoices(
        self, conn: Connection, new: Sequence[Accepted], run_id: int, now: datetime
    ) -> None:
        rows = [invoice_values(a, run_id, now) | {"first_seen_at": now} for a in new]
        insert_many(conn, invoice, rows)

    def insert_items(self, conn: Connection, accepted: Iterable[Accepted]) -> None:
        rows = [row for a in accepted for row in item_values(a.invoice)]
        if rows:
            insert_many(conn, invoice_item, rows)

    def release_quarantined(self, conn: Connection, source: str, keys: Sequence[str]) -> int:
        released = 0
        for chunk in chunks(keys):
            released += conn.execute(
                delete(quarantine).where(
                    quarantine.c.source == source, quarantine.c.record_key.in_(chunk)
                )
            ).rowcount
        return released
