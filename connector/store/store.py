"""Idempotent invoice store with checkpoints written in the same transaction as each batch.

Upsert key: (source, source invoice id). A batch classifies every accepted invoice as new,
changed (content hash differs: row updated, items replaced) or unchanged (no write at all),
releases quarantine rows of records that now pass, quarantines the rejected ones, and
advances the run's counters and resume point, all in one transaction: a crash between
batches can never move the cursor past unsaved data.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import (
    Connection,
    Engine,
    Table,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from connector.errors import StoreError
from connector.issues import Issue
from connector.model import Category, Invoice, InvoiceStatus, LineItem, Patient, plain_quantity
from connector.store import schema
from connector.store.schema import invoice, invoice_item, quarantine, sync_run, sync_state

# SQLite allows 32766 bound parameters; keep IN lists far below that.
_IN_CHUNK = 500
# Execution option marking a connection whose transactions write (SQLite: BEGIN IMMEDIATE).
_WRITE_OPTION = "connector_write"
T = TypeVar("T")


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Accepted:
    invoice: Invoice
    content_hash: str


@dataclass(frozen=True, slots=True)
class Rejected:
    record_key: str
    raw: Any
    canonical: Invoice | None
    issues: Sequence[Issue]


@dataclass(slots=True)
class BatchCounts:
    fetched: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    quarantined: int = 0
    released: int = 0

    def add(self, other: BatchCounts) -> None:
        for name in self.__slots__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(frozen=True, slots=True)
class SyncState:
    source: str
    cursor: datetime | None = None
    resume: dict[str, Any] | None = None
    last_run_id: int | None = None


@dataclass(frozen=True, slots=True)
class RunRecord:
    id: int
    source: str
    kind: str
    status: str
    started_at: datetime
    finished_at: datetime | None
    owner: str
    error: str | None
    counts: dict[str, int] = field(default_factory=dict)
    cursor_before: datetime | None = None
    cursor_after: datetime | None = None


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


def _chunks(items: Sequence[T], size: int = _IN_CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _prepare_sqlite_file(url: str) -> None:
    """Create the SQLite file owner-only before SQLite creates it with the umask."""
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))


def _tune_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's begin() emit BEGIN IMMEDIATE: a write transaction takes the write
        # lock up front, so concurrent writers wait (busy_timeout) instead of failing mid-way.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # Only write transactions take the lock up front: a read that did so would block every
        # writer, and a second read beside it (export streams invoices while it looks up their
        # items on another connection) would wait for itself until busy_timeout. Deferred reads
        # see a consistent snapshot under WAL without blocking anyone.
        write = connection.get_execution_options().get(_WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def sqlite_url_for(path: str | os.PathLike[str]) -> str:
    return f"sqlite:///{Path(path)}"


class Store:
    """All reads and writes of the connector's database."""

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            try:
                _prepare_sqlite_file(url)
            except OSError as exc:
                # A StoreError, so that the CLI reports it instead of a traceback.
                raise StoreError(f"cannot create the store file for {url}: {exc}") from exc
        try:
            self.engine = create_engine(url, future=True, pool_pre_ping=not self.is_sqlite)
        except (SQLAlchemyError, ValueError) as exc:
            raise StoreError(
                f"cannot open store {make_url(url).render_as_string()}: {exc}"
            ) from exc
        if self.is_sqlite:
            _tune_sqlite(self.engine)
        # One writer at a time within a process: batches from concurrent sources queue here
        # rather than contending for SQLite's single write lock.
        self._write_lock = threading.Lock()
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        if migrate:
            self.migrate()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def migrate(self) -> None:
        """Bring the schema to the newest migration (idempotent)."""
        alembic_cfg = AlembicConfig()
        alembic_cfg.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
        try:
            with self.engine.connect() as connection:
                connection.execution_options(**{_WRITE_OPTION: True})
                with connection.begin():
                    if self.dialect == "postgresql":
                        # Replicas starting together must not run the migrations twice.
                        connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7236460019)")
                    alembic_cfg.attributes["connection"] = connection
                    command.upgrade(alembic_cfg, "head")
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot migrate the store: {exc.__class__.__name__}: {exc}") from exc

    # ----------------------------------------------------------------- sync state & runs

    def get_state(self, source: str) -> SyncState:
        with self.engine.connect() as conn:
            row = conn.execute(select(sync_state).where(sync_state.c.source == source)).first()
        if row is None:
            return SyncState(source)
        return SyncState(source, row.cursor, row.resume, row.last_run_id)

    def all_states(self) -> list[SyncState]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(sync_state).order_by(sync_state.c.source)).all()
        return [SyncState(r.source, r.cursor, r.resume, r.last_run_id) for r in rows]

    def start_run(self, source: str, kind: str, cursor_before: datetime | None) -> int:
        values = {
            "source": source,
            "kind": kind,
            "status": "running",
            "started_at": utcnow(),
            "owner": self.owner,
            "cursor_before": cursor_before,
            **{name: 0 for name in BatchCounts.__slots__},
            "batches": 0,
        }
        with self._transaction() as conn:
            result = conn.execute(insert(sync_run).values(values))
            run_id = result.inserted_primary_key[0] if result.inserted_primary_key else None
        if run_id is None:
            raise StoreError("the store did not return a run id")
        return int(run_id)

    def finish_run(
        self,
        run_id: int,
        source: str,
        *,
        status: str,
        error: str | None = None,
        cursor_after: datetime | None = None,
        clear_resume: bool = False,
        track_state: bool = True,
    ) -> None:
        now = utcnow()
        with self._transaction() as conn:
            conn.execute(
                update(sync_run)
                .where(sync_run.c.id == run_id)
                .values(status=status, error=error, finished_at=now, cursor_after=cursor_after)
            )
            if not track_state:
                return
            values: dict[str, Any] = {"last_run_id": run_id, "updated_at": now}
            if cursor_after is not None:
                values["cursor"] = cursor_after
            if clear_resume:
                values["resume"] = None
            self._upsert_state(conn, source, values)

    def _upsert_state(self, conn: Connection, source: str, values: dict[str, Any]) -> None:
        changed = conn.execute(
            update(sync_state).where(sync_state.c.source == source).values(values)
        ).rowcount
        if not changed:
            conn.execute(insert(sync_state).values(source=source, **values))

    def runs(self, source: str | None = None, *, limit: int | None = None) -> list[RunRecord]:
        query = select(sync_run).order_by(sync_run.c.id.desc())
        if source:
            query = query.where(sync_run.c.source == source)
        if limit:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            RunRecord(
                id=r.id,
                source=r.source,
                kind=r.kind,
                status=r.status,
                started_at=r.started_at,
                finished_at=r.finished_at,
                owner=r.owner,
                error=r.error,
                counts={name: getattr(r, name) for name in (*BatchCounts.__slots__, "batches")},
                cursor_before=r.cursor_before,
                cursor_after=r.cursor_after,
            )
            for r in rows
        ]

    def mark_abandoned_runs(self, source: str, kind: str = "sync") -> int:
        """Close runs of this kind that never finished (a killed process). Only sound while the
        caller holds the source's sync lock: then no other live run of this kind can exist."""
        with self._transaction() as conn:
            return conn.execute(
                update(sync_run)
                .where(
                    sync_run.c.source == source,
                    sync_run.c.kind == kind,
                    sync_run.c.status == "running",
                )
                .values(status="interrupted", finished_at=utcnow(), error="process stopped mid-run")
            ).rowcount

    # ----------------------------------------------------------------- the batch write

    def write_batch(
        self,
        run_id: int,
        source: str,
        accepted: Sequence[Accepted],
        rejected: Sequence[Rejected],
        *,
        fetched: int,
        resume: dict[str, Any] | None,
        track_state: bool = True,
    ) -> BatchCounts:
        """Upsert one batch, quarantine its rejects and move the checkpoint: all or nothing."""
        counts = BatchCounts(fetched=fetched)
        now = utcnow()
        with self._transaction() as conn:
            self._upsert_invoices(conn, run_id, source, accepted, counts, now)
            self._quarantine(conn, run_id, source, rejected, counts, now)
            conn.execute(
                update(sync_run)
                .where(sync_run.c.id == run_id)
                .values(
                    {
                        **{
                            name: getattr(sync_run.c, name) + getattr(counts, name)
                            for name in BatchCounts.__slots__
                        },
                        "batches": sync_run.c.batches + 1,
                    }
                )
            )
            if track_state:
                self._upsert_state(
                    conn, source, {"resume": resume, "last_run_id": run_id, "updated_at": now}
                )
        return counts

    def _upsert_invoices(
        self,
        conn: Connection,
        run_id: int,
        source: str,
        accepted: Sequence[Accepted],
        counts: BatchCounts,
        now: datetime,
    ) -> None:
        if not accepted:
            return
        # The last copy of an id within one batch wins, as it would across batches.
        by_id = {a.invoice.id: a for a in accepted}
        ids = list(by_id)
        sqlite = conn.dialect.name == "sqlite"
        known: dict[str, str] = {}
        for chunk in _chunks(ids):
            if sqlite:
                # Plain SQL: SQLAlchemy's IN-list handling costs ~10 µs per id here.
                found = conn.exec_driver_sql(
                    "SELECT source_id, content_hash FROM invoice"
                    f" WHERE source = ? AND source_id IN ({_marks(len(chunk))})",
                    (source, *chunk),
                )
                known.update({r[0]: r[1] for r in found})
                continue
            rows = conn.execute(
                select(invoice.c.source_id, invoice.c.content_hash).where(
                    invoice.c.source == source, invoice.c.source_id.in_(chunk)
                )
            )
            known.update({r.source_id: r.content_hash for r in rows})
        new = [by_id[i] for i in ids if i not in known]
        changed = [by_id[i] for i in ids if i in known and known[i] != by_id[i].content_hash]
        counts.unchanged += len(ids) - len(new) - len(changed)
        counts.inserted += len(new)
        counts.updated += len(changed)
        if new:
            if sqlite:
                now_text = _sqlite_datetime(now)
                _sqlite_insert(
                    conn,
                    _SQLITE_INVOICE_INSERT,
                    [_sqlite_invoice_row(a, run_id, now_text) for a in new],
                )
            else:
                _insert_many(
                    conn,
                    invoice,
                    [_invoice_row(a, run_id, now) | {"first_seen_at": now} for a in new],
                )
        if changed:
            changed_ids = [a.invoice.id for a in changed]
            # One compiled statement, one driver executemany (was one compiled UPDATE per row).
            conn.execute(
                _INVOICE_UPDATE,
                [_keyed(_invoice_row(a, run_id, now), _INVOICE_KEY) for a in changed],
            )
            for chunk in _chunks(changed_ids):
                conn.execute(
                    delete(invoice_item).where(
                        invoice_item.c.source == source, invoice_item.c.source_id.in_(chunk)
                    )
                )
        if sqlite:
            item_tuples = [row for a in (*new, *changed) for row in _sqlite_item_rows(a.invoice)]
            if item_tuples:
                _sqlite_insert(conn, _SQLITE_ITEM_INSERT, item_tuples)
        else:
            item_rows = [row for a in (*new, *changed) for row in _item_rows(a.invoice)]
            if item_rows:
                _insert_many(conn, invoice_item, item_rows)
        for chunk in _chunks(ids):
            if sqlite:
                counts.released += conn.exec_driver_sql(
                    "DELETE FROM quarantine"
                    f" WHERE source = ? AND record_key IN ({_marks(len(chunk))})",
                    (source, *chunk),
                ).rowcount
                continue
            counts.released += conn.execute(
                delete(quarantine).where(
                    quarantine.c.source == source, quarantine.c.record_key.in_(chunk)
                )
            ).rowcount

    def _quarantine(
        self,
        conn: Connection,
        run_id: int,
        source: str,
        rejected: Sequence[Rejected],
        counts: BatchCounts,
        now: datetime,
    ) -> None:
        if not rejected:
            return
        by_key = {r.record_key: r for r in rejected}
        keys = list(by_key)
        existing: set[str] = set()
        for chunk in _chunks(keys):
            existing.update(
                conn.execute(
                    select(quarantine.c.record_key).where(
                        quarantine.c.source == source, quarantine.c.record_key.in_(chunk)
                    )
                ).scalars()
            )
        counts.quarantined += len(keys)
        fresh = [by_key[k] for k in keys if k not in existing]
        if fresh:
            conn.execute(
                insert(quarantine),
                [
                    _quarantine_row(r, run_id, now)
                    | {"source": source, "first_seen_at": now, "attempts": 1}
                    for r in fresh
                ],
            )
        seen_again = [
            _keyed(_quarantine_row(by_key[key], run_id, now) | {"source": source}, _QUARANTINE_KEY)
            for key in keys
            if key in existing
        ]
        if seen_again:
            conn.execute(_QUARANTINE_UPDATE, seen_again)

    def _transaction(self) -> _Transaction:
        return _Transaction(self)

    # ----------------------------------------------------------------- reads

    def count_invoices(self, source: str | None = None) -> int:
        query = select(func.count()).select_from(invoice)
        if source:
            query = query.where(invoice.c.source == source)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def count_quarantined(self, source: str | None = None) -> int:
        query = select(func.count()).select_from(quarantine)
        if source:
            query = query.where(quarantine.c.source == source)
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
                for chunk in _chunks(ids):
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

    def quarantine_entries(
        self, source: str | None = None, reason: str | None = None
    ) -> list[QuarantineEntry]:
        query = select(quarantine).order_by(quarantine.c.id)
        if source:
            query = query.where(quarantine.c.source == source)
        if reason:
            query = query.where(quarantine.c.reason_codes.like(f"%,{reason},%"))
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [quarantine_entry_of(r) for r in rows]

    def quarantine_by_reason(self) -> dict[str, dict[str, int]]:
        """source → reason code → number of quarantined records carrying it."""
        summary: dict[str, dict[str, int]] = {}
        with self.engine.connect() as conn:
            for source, codes in conn.execute(
                select(quarantine.c.source, quarantine.c.reason_codes)
            ):
                per_source = summary.setdefault(source, {})
                for code in filter(None, codes.split(",")):
                    per_source[code] = per_source.get(code, 0) + 1
        return summary


class _Transaction:
    """A write transaction: serialised per process, failures surface as `StoreError`."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._conn: Connection | None = None

    def __enter__(self) -> Connection:
        self._store._write_lock.acquire()
        try:
            self._conn = self._store.engine.connect()
            self._conn.execution_options(**{_WRITE_OPTION: True})
            self._conn.begin()
        except SQLAlchemyError as exc:
            self._store._write_lock.release()
            raise StoreError(_describe_store_failure(exc)) from exc
        return self._conn

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, _tb: object
    ) -> None:
        conn = self._conn
        assert conn is not None
        try:
            if exc_type is None:
                try:
                    conn.commit()
                except SQLAlchemyError as error:
                    conn.rollback()
                    raise StoreError(_describe_store_failure(error)) from error
            else:
                conn.rollback()
                if isinstance(exc, SQLAlchemyError):
                    raise StoreError(_describe_store_failure(exc)) from exc
        finally:
            conn.close()
            self._store._write_lock.release()


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


def _insert_many(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
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


# SQLite fast path of the two bulk inserts. The values are converted here, once, to exactly
# what the columns' SQLAlchemy types would bind on SQLite (ExactDecimal: `str(Decimal)`;
# UtcDateTime: naive UTC in SQLAlchemy's SQLite DATETIME text, "YYYY-MM-DD HH:MM:SS.ffffff";
# Date: "YYYY-MM-DD"), and the rows are built as tuples: SQLAlchemy's per-value bind
# processors and the per-row dicts were most of the writer thread's CPU (docs/performance.md).
# PostgreSQL keeps `_insert_many`.
_SQLITE_INVOICE_COLUMNS = (
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
_SQLITE_ITEM_COLUMNS = (
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


def _sqlite_insert_sql(table: Table, columns: Sequence[str]) -> str:
    # Every column, so that a column added to the schema cannot be silently left out here.
    if sorted(columns) != sorted(table.c.keys()):
        raise RuntimeError(f"the SQLite insert of {table.name} does not list its columns")
    return f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({_marks(len(columns))})"


def _marks(count: int) -> str:
    """`count` SQLite placeholders: "?, ?, ?"."""
    return ", ".join("?" * count)


_SQLITE_INVOICE_INSERT = _sqlite_insert_sql(invoice, _SQLITE_INVOICE_COLUMNS)
_SQLITE_ITEM_INSERT = _sqlite_insert_sql(invoice_item, _SQLITE_ITEM_COLUMNS)


def _sqlite_insert(conn: Connection, sql: str, rows: list[tuple[Any, ...]]) -> None:
    # exec_driver_sql: one driver executemany in the batch's transaction, with driver errors
    # wrapped as SQLAlchemy's (so that they become a StoreError with its hint).
    conn.exec_driver_sql(sql, rows)


def _sqlite_datetime(value: datetime | None) -> str | None:
    """`schema.UtcDateTime` then SQLAlchemy's SQLite DATETIME, in one step."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("naive datetime reached the store")
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def _sqlite_date(value: date | None) -> str | None:
    """SQLAlchemy's SQLite DATE: "YYYY-MM-DD" (of a datetime too, as SQLAlchemy does)."""
    if value is None:
        return None
    if type(value) is date:
        return value.isoformat()  # the same text for every year SQLite can be given
    if not isinstance(value, date):
        raise TypeError("SQLite Date type only accepts Python date objects as input.")
    return f"{value.year:04d}-{value.month:02d}-{value.day:02d}"


def _sqlite_invoice_row(a: Accepted, run_id: int, now_text: str | None) -> tuple[Any, ...]:
    """A new invoice's row in `_SQLITE_INVOICE_COLUMNS` order (first seen and written now)."""
    inv = a.invoice
    patient = inv.patient
    total = inv.total_amount
    paid = inv.paid_amount
    return (
        inv.source,
        inv.id,
        inv.invoice_number,
        _sqlite_date(inv.invoice_date),
        None if total is None else str(total),
        None if paid is None else str(paid),
        inv.currency,
        inv.status.value if inv.status else None,
        inv.source_status,
        inv.facility,
        patient.name,
        patient.policy_number,
        patient.source_ref,
        _sqlite_datetime(inv.source_updated_at),
        a.content_hash,
        now_text,
        now_text,
        run_id,
    )


def _sqlite_item_rows(inv: Invoice) -> Iterable[tuple[Any, ...]]:
    """`_item_rows` in `_SQLITE_ITEM_COLUMNS` order, money as SQLite keeps it."""
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


def _describe_store_failure(exc: SQLAlchemyError) -> str:
    detail = str(getattr(exc, "orig", exc)) or exc.__class__.__name__
    hint = ""
    lowered = detail.lower()
    if isinstance(exc, OperationalError) and (
        "full" in lowered or "readonly" in lowered or "read-only" in lowered
    ):
        hint = " (check free disk space and that the database file is writable)"
    return f"store write failed, nothing of this batch was kept: {detail}{hint}"


def _keyed_update(
    table: Table,
    key: tuple[str, ...],
    assigned: tuple[str, ...],
    kept: tuple[str, ...],
    **extra: Any,
) -> Any:
    """UPDATE of `assigned` columns by `key`, for executemany with `_keyed` rows: the key
    columns bind as "k_<name>" in WHERE, the assigned ones as "v_<name>" in SET (a bind
    parameter may not share its name with a column that SET assigns). Every column must be
    named somewhere, so that a column added to the schema cannot be silently left stale."""
    named = {*key, *assigned, *kept, *extra}
    if named != set(table.c.keys()):
        raise RuntimeError(f"the update of {table.name} does not account for every column")
    where = [table.c[name] == bindparam(f"k_{name}") for name in key]
    values = {name: bindparam(f"v_{name}", type_=table.c[name].type) for name in assigned}
    return update(table).where(*where).values(values).values(extra)


def _keyed(row: dict[str, Any], key: tuple[str, ...]) -> dict[str, Any]:
    """A row's values under the bind names of `_keyed_update`."""
    return {(f"k_{name}" if name in key else f"v_{name}"): value for name, value in row.items()}


def _invoice_row(a: Accepted, run_id: int, now: datetime) -> dict[str, Any]:
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


def _item_rows(inv: Invoice) -> Iterable[dict[str, Any]]:
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


def _quarantine_row(r: Rejected, run_id: int, now: datetime) -> dict[str, Any]:
    codes = sorted({i.code.value for i in r.issues if i.severity == "error"})
    return {
        "record_key": r.record_key,
        "raw_payload": r.raw,
        "canonical": r.canonical.model_dump(mode="json") if r.canonical else None,
        "issues": [i.as_dict() for i in r.issues],
        "reason_codes": "," + ",".join(codes) + ",",
        "last_seen_at": now,
        "last_run_id": run_id,
    }


_INVOICE_KEY = ("source", "source_id")
_QUARANTINE_KEY = ("source", "record_key")
# Exactly the columns `_invoice_row` / `_quarantine_row` carry: first_seen_at is kept.
_INVOICE_UPDATE = _keyed_update(
    invoice,
    _INVOICE_KEY,
    tuple(c for c in _SQLITE_INVOICE_COLUMNS if c not in (*_INVOICE_KEY, "first_seen_at")),
    kept=("first_seen_at",),
)
_QUARANTINE_UPDATE = _keyed_update(
    quarantine,
    _QUARANTINE_KEY,
    ("raw_payload", "canonical", "issues", "reason_codes", "last_seen_at", "last_run_id"),
    kept=("id", "first_seen_at"),
    attempts=quarantine.c.attempts + 1,
)

__all__ = ["Store", "schema", "sqlite_url_for"]


def quarantine_entry_of(row: Any) -> QuarantineEntry:
    """A quarantine table row as the value the rest of the connector reads."""
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
