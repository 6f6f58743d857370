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

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Engine,
    Select,
    String,
    and_,
    bindparam,
    cast,
    create_engine,
    exists,
    func,
    select,
    text,
    type_coerce,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from connector.errors import StoreError
from connector.store.database import HEAD_REVISION, Database, current_revision
from connector.store.runs import RunBookkeeping
from connector.store.schema import invoice, invoice_item, quarantine

VOID = "void"

# What a served record needs of an invoice row (not the content hash or run bookkeeping).
# Money, dates and times are read as text in the served spelling where the database can
# spell it (`_served_columns`): turning each column into a Decimal, date or datetime and
# back into text was most of a list page's cost (docs/performance.md).
_MONEY, _DATE, _MOMENT = "money", "date", "moment"
_INVOICE_COLUMNS: tuple[tuple[Any, str | None], ...] = (
    (invoice.c.source, None),
    (invoice.c.source_id, None),
    (invoice.c.invoice_number, None),
    (invoice.c.invoice_date, _DATE),
    (invoice.c.total_amount, _MONEY),
    (invoice.c.currency, None),
    (invoice.c.status, None),
    (invoice.c.facility, None),
    (invoice.c.patient_name, None),
    (invoice.c.policy_number, None),
    (invoice.c.source_updated_at, _MOMENT),
    (invoice.c.written_at, _MOMENT),
)
# In line order (by line_no), which a served item leaves out.
_ITEM_COLUMNS: tuple[tuple[Any, str | None], ...] = (
    (invoice_item.c.category, None),
    (invoice_item.c.description, None),
    (invoice_item.c.quantity, _MONEY),
    (invoice_item.c.unit_price, _MONEY),
    (invoice_item.c.total, _MONEY),
)


def _as_text(column: Any, kind: str | None, dialect: str) -> Any:
    """The column as the text a served record spells it in, as far as the database can.

    PostgreSQL: NUMERIC as its own text (always `scale` decimals), dates as YYYY-MM-DD and
    times as UTC ISO with microseconds and a Z, whatever the session's DateStyle or zone.
    SQLite: the stored text as is (decimal text, YYYY-MM-DD, "YYYY-MM-DD HH:MM:SS.ffffff"
    naive UTC); `connector.serve.records` finishes the spelling and checks its shape."""
    if kind is None:
        return column
    expression: ColumnElement[Any]
    if dialect == "postgresql":
        if kind == _MONEY:
            expression = cast(column, String)
        elif kind == _DATE:
            expression = func.to_char(column, "YYYY-MM-DD")
        else:
            expression = func.to_char(func.timezone("UTC", column), 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
    else:
        expression = type_coerce(column, String)
    return expression.label(column.name)


def _served_columns(columns: tuple[tuple[Any, str | None], ...], dialect: str) -> list[Any]:
    return [_as_text(column, kind, dialect) for column, kind in columns]


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
    """An accepted invoice and its items in line order, as rows of values in the order of
    `_INVOICE_COLUMNS` / `_ITEM_COLUMNS` (money, dates and times as text). Positions, not
    names: a Core row's attribute access cost ten times an index (SQLAlchemy 2.1)."""

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
        # A get-by-id is one statement: on PostgreSQL it runs without a transaction around
        # it, which saves the BEGIN and ROLLBACK round trips (two of a lookup's three).
        self.lookup_engine: Engine = (
            self.engine.execution_options(isolation_level="AUTOCOMMIT")
            if self.dialect == "postgresql"
            else self.engine
        )
        self._invoice_columns = _served_columns(_INVOICE_COLUMNS, self.dialect)
        self._item_columns = _served_columns(_ITEM_COLUMNS, self.dialect)
        # Get-by-id, built once: constructing a statement cost more than running it.
        self._get_any = _get_query(self.dialect, include_void=True)
        self._get_not_void = _get_query(self.dialect, include_void=False)

    @property
    def local(self) -> bool:
        """Whether a read is a local file read (SQLite) rather than a network round trip:
        the server runs a get-by-id of a local store on its event loop, as a thread pool
        hop cost more than the read (docs/serving.md)."""
        return self.dialect == "sqlite"

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
        snapshot. Each page query brings its invoices' items along (one outer join)."""
        where = _conditions(filters)
        base: Select[Any] = select(*self._invoice_columns).where(*where)
        order = (invoice.c.source, invoice.c.source_id)
        count_query = select(func.count()).select_from(invoice).where(*where)
        with _reading(), self.read_engine.connect() as conn:
            if after is None:
                query = base.order_by(*order).limit(limit + 1)
                found = self._with_items(conn, query.offset(offset) if offset else query)
            else:
                # The rest of the cursor's source, then the sources after it: two range scans
                # of the primary key index. One `(source, source_id) > (...)` condition is
                # answered by SQLite scanning the source from its start (late pages of a big
                # source cost more and more).
                source, source_id = after
                found = self._with_items(
                    conn,
                    base.where(invoice.c.source == source, invoice.c.source_id > source_id)
                    .order_by(*order)
                    .limit(limit + 1),
                )
                if len(found) <= limit:
                    found += self._with_items(
                        conn,
                        base.where(invoice.c.source > source)
                        .order_by(*order)
                        .limit(limit + 1 - len(found)),
                    )
            total = int(conn.execute(count_query).scalar_one()) if count else None
        more = len(found) > limit
        served = found[:limit]
        last = (served[-1].row[0], served[-1].row[1]) if more and served else None
        return ServedPage(served, total, last)

    def _with_items(self, conn: Any, page: Select[Any]) -> list[ServedInvoice]:
        """The invoices of `page` (ordered and limited) with their items, in one query: one
        row per item (invoice columns repeated), or one with NULL item columns."""
        chosen = page.subquery("page")
        joined = (
            select(*chosen.c, *self._item_columns)
            .select_from(
                chosen.outerjoin(
                    invoice_item,
                    and_(
                        invoice_item.c.source == chosen.c.source,
                        invoice_item.c.source_id == chosen.c.source_id,
                    ),
                )
            )
            .order_by(chosen.c.source, chosen.c.source_id, invoice_item.c.line_no)
        )
        split = len(_INVOICE_COLUMNS)
        served: list[ServedInvoice] = []
        key: tuple[str, str] | None = None
        items: list[Any] = []
        for row in conn.execute(joined).all():  # fetchall: a third of fetchone's cost
            if (row[0], row[1]) != key:
                key = (row[0], row[1])
                items = []
                served.append(ServedInvoice(row[:split], items))  # type: ignore[arg-type]
            if row[split] is not None:
                items.append(row[split:])
        return served

    def get_invoice(
        self, source: str, source_id: str, *, include_void: bool = False
    ) -> ServedInvoice | None:
        """One accepted, not quarantined invoice with its items (one query), or None."""
        query = self._get_any if include_void else self._get_not_void
        with _reading(), self.lookup_engine.connect() as conn:
            rows = conn.execute(query, {"source": source, "source_id": source_id}).all()
        if not rows:
            return None
        # An invoice without items is one row whose item columns are NULL (outer join).
        split = len(_INVOICE_COLUMNS)
        items = tuple(r[split:] for r in rows if r[split] is not None)
        return ServedInvoice(rows[0][:split], items)


def _get_query(dialect: str, *, include_void: bool) -> Select[Any]:
    """Get-by-id: an invoice joined with its items, in line order."""
    conditions = [
        invoice.c.source == bindparam("source"),
        invoice.c.source_id == bindparam("source_id"),
        _not_quarantined(),
    ]
    if not include_void:
        conditions.append(invoice.c.status != VOID)
    return (
        select(
            *_served_columns(_INVOICE_COLUMNS, dialect), *_served_columns(_ITEM_COLUMNS, dialect)
        )
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
