"""The read queries behind `connector serve`: accepted invoices, filtered and paged in a key
order that writes cannot disturb, with their totals; read-only (nothing here writes).

The order is the invoice's primary key (source, source_id): it never changes for a record,
so an update never moves a record between pages, and the primary key index serves it on every
backend. A pass of a paging client is pinned to a horizon (`ServeFilters.horizon`): only
versions written up to it are listed, so a record changed during the pass is not listed in
the pass and its new version comes in the next one (its `written_at` is past the horizon).
Quarantined records are never listed, even when an older accepted version is still stored.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Engine,
    Select,
    and_,
    bindparam,
    create_engine,
    exists,
    func,
    select,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from connector.errors import StoreError
from connector.store.database import HEAD_REVISION, Database, current_revision
from connector.store.runs import RunBookkeeping
from connector.store.schema import invoice, invoice_item, quarantine

VOID = "void"

# What a served record needs of an invoice row (not the content hash or run bookkeeping).
_INVOICE_COLUMNS = (
    invoice.c.source,
    invoice.c.source_id,
    invoice.c.invoice_number,
    invoice.c.invoice_date,
    invoice.c.total_amount,
    invoice.c.currency,
    invoice.c.status,
    invoice.c.facility,
    invoice.c.patient_name,
    invoice.c.policy_number,
    invoice.c.source_updated_at,
    invoice.c.written_at,
)
_ITEM_COLUMNS = (
    invoice_item.c.line_no,
    invoice_item.c.category,
    invoice_item.c.description,
    invoice_item.c.quantity,
    invoice_item.c.unit_price,
    invoice_item.c.total,
)


@dataclass(frozen=True, slots=True)
class ServeFilters:
    """What a list request asks for, within what its consumer may read."""

    # None: every source.
    sources: tuple[str, ...] | None
    date_from: date | None = None
    date_to: date | None = None
    status: str | None = None
    include_void: bool = False
    updated_since: datetime | None = None
    # Versions written after this moment are left out (the pass's snapshot); None: no bound.
    horizon: datetime | None = None


@dataclass(frozen=True, slots=True)
class ServedInvoice:
    """An accepted invoice row and its item rows in line order (Core rows, read as is)."""

    row: Any
    items: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class ServedPage:
    invoices: list[ServedInvoice]
    total: int | None
    # The key of the last invoice when more follow it, else None.
    last_key: tuple[str, str] | None


@contextmanager
def _reading() -> Iterator[None]:
    """Database failures as `StoreError`, named by class only (their text can quote values)."""
    try:
        yield
    except SQLAlchemyError as exc:
        raise StoreError(f"store read failed: {exc.__class__.__name__}") from exc


def _not_quarantined() -> ColumnElement[bool]:
    return ~exists().where(
        quarantine.c.source == invoice.c.source, quarantine.c.record_key == invoice.c.source_id
    )


def _conditions(filters: ServeFilters) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = [_not_quarantined()]
    if filters.sources is not None:
        where.append(invoice.c.source.in_(filters.sources))
    if filters.status is not None:
        where.append(invoice.c.status == filters.status)
    elif not filters.include_void:
        where.append(invoice.c.status != VOID)
    if filters.date_from is not None:
        where.append(invoice.c.invoice_date >= filters.date_from)
    if filters.date_to is not None:
        where.append(invoice.c.invoice_date <= filters.date_to)
    if filters.updated_since is not None:
        where.append(invoice.c.written_at >= filters.updated_since)
    if filters.horizon is not None:
        where.append(invoice.c.written_at <= filters.horizon)
    return where


class ServingReads(RunBookkeeping, Database):
    """The store opened for serving: never migrated or created by the server, read only."""

    def __init__(self, url: str) -> None:
        database = make_url(url).database if url.startswith("sqlite") else None
        if database and database != ":memory:" and not Path(database).exists():
            raise StoreError(f"no store at {database}: run `connector sync` first")
        super().__init__(url, migrate=False)
        if self.dialect == "postgresql":
            # No ping before each checkout: it doubled the round trips of a get-by-id. After a
            # database restart one request fails (503) and the pool starts over.
            self.engine.dispose()
            self.engine = create_engine(url, pool_size=10, max_overflow=10)
        try:
            with self.engine.connect() as conn:
                revision = current_revision(conn)
        except SQLAlchemyError as exc:
            self.close()
            raise StoreError(f"cannot read the store: {exc.__class__.__name__}") from exc
        if revision != HEAD_REVISION:
            self.close()
            raise StoreError(
                f"the store is at schema revision {revision or 'none'}, this connector reads "
                f"{HEAD_REVISION}: run `connector sync` (it migrates) before serving"
            )
        # One snapshot for a whole list answer (its total, page and items agree): SQLite's
        # deferred BEGIN gives one under WAL; PostgreSQL needs REPEATABLE READ for it.
        self.read_engine: Engine = (
            self.engine.execution_options(isolation_level="REPEATABLE READ")
            if self.dialect == "postgresql"
            else self.engine
        )

    def ping(self) -> None:
        """One round trip to the database (for /healthz); raises StoreError when it fails."""
        with _reading(), self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def list_invoices(
        self,
        filters: ServeFilters,
        *,
        limit: int,
        offset: int = 0,
        after: tuple[str, str] | None = None,
        count: bool = True,
    ) -> ServedPage:
        """One page in key order: after `after` when given (keyset), else from `offset`; with
        the number of invoices the filters match (unless `count` is false: a keyset page
        costs what its rows cost, a count costs the whole filtered set), all read in one
        snapshot."""
        where = _conditions(filters)
        base: Select[Any] = select(*_INVOICE_COLUMNS).where(*where)
        order = (invoice.c.source, invoice.c.source_id)
        count_query = select(func.count()).select_from(invoice).where(*where)
        with _reading(), self.read_engine.connect() as conn:
            if after is None:
                query = base.order_by(*order).limit(limit + 1)
                rows = list(conn.execute(query.offset(offset) if offset else query).all())
            else:
                # The rest of the cursor's source, then the sources after it: two range scans
                # of the primary key index. One `(source, source_id) > (...)` condition is
                # answered by SQLite scanning the source from its start (late pages of a big
                # source cost more and more).
                source, source_id = after
                rows = list(
                    conn.execute(
                        base.where(invoice.c.source == source, invoice.c.source_id > source_id)
                        .order_by(*order)
                        .limit(limit + 1)
                    ).all()
                )
                if len(rows) <= limit:
                    rows += conn.execute(
                        base.where(invoice.c.source > source)
                        .order_by(*order)
                        .limit(limit + 1 - len(rows))
                    ).all()
            total = int(conn.execute(count_query).scalar_one()) if count else None
            more = len(rows) > limit
            rows = rows[:limit]
            items = self._items(conn, rows)
        served = [ServedInvoice(r, items.get((r.source, r.source_id), ())) for r in rows]
        last = (rows[-1].source, rows[-1].source_id) if more and rows else None
        return ServedPage(served, total, last)

    def _items(self, conn: Any, rows: Sequence[Any]) -> dict[tuple[str, str], tuple[Any, ...]]:
        by_source: dict[str, list[str]] = {}
        for r in rows:
            by_source.setdefault(r.source, []).append(r.source_id)
        found: dict[tuple[str, str], list[Any]] = {}
        for source, ids in by_source.items():
            query = (
                select(invoice_item.c.source_id, *_ITEM_COLUMNS)
                .where(invoice_item.c.source == source, invoice_item.c.source_id.in_(ids))
                .order_by(invoice_item.c.source_id, invoice_item.c.line_no)
            )
            for item in conn.execute(query).all():  # fetchall: a third of fetchone's cost
                found.setdefault((source, item.source_id), []).append(item)
        return {key: tuple(values) for key, values in found.items()}

    def get_invoice(
        self, source: str, source_id: str, *, include_void: bool = False
    ) -> ServedInvoice | None:
        """One accepted, not quarantined invoice with its items (one query), or None."""
        query = _GET_ANY if include_void else _GET_NOT_VOID
        with _reading(), self.engine.connect() as conn:
            rows = conn.execute(query, {"source": source, "source_id": source_id}).all()
        if not rows:
            return None
        items = tuple(r for r in rows if r.line_no is not None)
        return ServedInvoice(rows[0], items)


def _get_query(*, include_void: bool) -> Select[Any]:
    """Get-by-id, built once: constructing a statement cost more than running it."""
    conditions = [
        invoice.c.source == bindparam("source"),
        invoice.c.source_id == bindparam("source_id"),
        _not_quarantined(),
    ]
    if not include_void:
        conditions.append(invoice.c.status != VOID)
    return (
        select(*_INVOICE_COLUMNS, *_ITEM_COLUMNS)
        .select_from(
            invoice.outerjoin(
                invoice_item,
                and_(
                    invoice_item.c.source == invoice.c.source,
                    invoice_item.c.source_id == invoice.c.source_id,
                ),
            )
        )
        .where(*conditions)
        .order_by(invoice_item.c.line_no)
    )


_GET_ANY = _get_query(include_void=True)
_GET_NOT_VOID = _get_query(include_void=False)
