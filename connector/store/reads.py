"""Reads of stored invoices and quarantined records.

Two shapes: the canonical `connector.model.Invoice` (export, reports: streamed in chunks) and
the table models of `connector.store.schema` (`InvoiceRow` + its `InvoiceItemRow`s,
`QuarantineRow`), the typed rows an HTTP API can return as they are.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlmodel import Session
from sqlmodel import select as select_rows

from connector.issues import Issue
from connector.model import Category, Invoice, InvoiceStatus, LineItem, Patient, plain_quantity
from connector.store.database import Database, chunks
from connector.store.schema import InvoiceItemRow, InvoiceRow, QuarantineRow, invoice, invoice_item
from connector.store.schema import quarantine as quarantine_table


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    id: int
    source: str
    record_key: str
    raw_payload: Any
    canonical: dict[str, Any] | None
    issues: list[Issue]
    first_seen_at: datetime
    last_seen_at: datetime
    attempts: int


@dataclass(frozen=True, slots=True)
class StoredInvoice:
    """An invoice row with its item rows in line order, as stored."""

    invoice: InvoiceRow
    items: tuple[InvoiceItemRow, ...]


def quarantine_entry_of(row: Any) -> QuarantineEntry:
    """A quarantine row (a Core row or a `QuarantineRow`) as the rest of the connector reads it."""
    return QuarantineEntry(
        id=row.id,
        source=row.source,
        record_key=row.record_key,
        raw_payload=row.raw_payload,
        canonical=row.canonical,
        issues=[Issue.from_dict(i) for i in row.issues],
        first_seen_at=row.first_seen_at,
        last_seen_at=row.last_seen_at,
        attempts=row.attempts,
    )


class InvoiceReads(Database):
    """The `Store` methods that read invoices and quarantine."""

    def count_invoices(self, source: str | None = None) -> int:
        query = select(func.count()).select_from(invoice)
        if source:
            query = query.where(invoice.c.source == source)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def count_quarantined(self, source: str | None = None) -> int:
        query = select(func.count()).select_from(quarantine_table)
        if source:
            query = query.where(quarantine_table.c.source == source)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def content_hashes(self, source: str) -> dict[str, str]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(invoice.c.source_id, invoice.c.content_hash).where(
                    invoice.c.source == source
                )
            )
            return {r.source_id: r.content_hash for r in rows}

    def iter_invoices(
        self, source: str | None = None, *, include_void: bool = True, chunk: int = 500
    ) -> Iterator[Invoice]:
        """Stored invoices with their items, streamed in chunks (bounded memory)."""
        query = select(invoice).order_by(invoice.c.source, invoice.c.source_id)
        if source:
            query = query.where(invoice.c.source == source)
        if not include_void:
            query = query.where(invoice.c.status != InvoiceStatus.VOID.value)
        with self.engine.connect() as conn:
            result = conn.execution_options(yield_per=chunk).execute(query)
            for rows in result.partitions():
                yield from self._with_items(rows)

    def _with_items(self, rows: Sequence[Any]) -> Iterator[Invoice]:
        keys = [(r.source, r.source_id) for r in rows]
        items: dict[tuple[str, str], list[LineItem]] = {key: [] for key in keys}
        with self.engine.connect() as conn:
            for source in {k[0] for k in keys}:
                ids = [k[1] for k in keys if k[0] == source]
                for chunk in chunks(ids):
                    for item in conn.execute(
                        select(invoice_item)
                        .where(invoice_item.c.source == source, invoice_item.c.source_id.in_(chunk))
                        .order_by(invoice_item.c.source_id, invoice_item.c.line_no)
                    ):
                        items[(source, item.source_id)].append(
                            LineItem(
                                category=Category(item.category),
                                description=item.description,
                                # PostgreSQL answers NUMERIC(18, 6) as 1.500000.
                                quantity=plain_quantity(item.quantity),
                                unit_price=item.unit_price,
                                total=item.total,
                                source_category=item.source_category,
                                category_rule=item.category_rule,
                            )
                        )
        for r in rows:
            yield Invoice(
                source=r.source,
                id=r.source_id,
                invoice_number=r.invoice_number,
                invoice_date=r.invoice_date,
                total_amount=r.total_amount,
                paid_amount=r.paid_amount,
                currency=r.currency,
                status=InvoiceStatus(r.status),
                source_status=r.source_status,
                facility=r.facility,
                patient=Patient(
                    name=r.patient_name, policy_number=r.policy_number, source_ref=r.patient_ref
                ),
                items=tuple(items[(r.source, r.source_id)]),
                source_updated_at=r.source_updated_at,
            )

    def stored_invoice(self, source: str, source_id: str) -> StoredInvoice | None:
        """One stored invoice as its table rows (items in line order), or None."""
        with Session(self.engine) as session:
            row = session.get(InvoiceRow, (source, source_id))
            if row is None:
                return None
            items = session.exec(
                select_rows(InvoiceItemRow)
                .where(invoice_item.c.source == source, invoice_item.c.source_id == source_id)
                .order_by(invoice_item.c.line_no)
            ).all()
        return StoredInvoice(row, tuple(items))

    def quarantine_rows(
        self, source: str | None = None, reason: str | None = None
    ) -> list[QuarantineRow]:
        """Quarantined records as table rows, oldest first; `reason` filters by a reason code."""
        query = select_rows(QuarantineRow).order_by(quarantine_table.c.id)
        if source:
            query = query.where(quarantine_table.c.source == source)
        if reason:
            query = query.where(quarantine_table.c.reason_codes.like(f"%,{reason},%"))
        with Session(self.engine) as session:
            return list(session.exec(query).all())

    def quarantine_entries(
        self, source: str | None = None, reason: str | None = None
    ) -> list[QuarantineEntry]:
        return [quarantine_entry_of(r) for r in self.quarantine_rows(source, reason)]

    def quarantine_by_reason(self) -> dict[str, dict[str, int]]:
        """source → reason code → number of quarantined records carrying it."""
        summary: dict[str, dict[str, int]] = {}
        with self.engine.connect() as conn:
            for source, codes in conn.execute(
                select(quarantine_table.c.source, quarantine_table.c.reason_codes)
            ):
                per_source = summary.setdefault(source, {})
                for code in filter(None, codes.split(",")):
                    per_source[code] = per_source.get(code, 0) + 1
        return summary
