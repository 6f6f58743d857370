"""The store's tables as SQLModel models, shared by the store, the migrations and (later) the
HTTP server's responses.

Each model (`InvoiceRow`, `QuarantineRow`, ...) is the typed row of one table; the module-level
aliases (`invoice = InvoiceRow.__table__`, ...) are the same tables for Core statements, which
the write paths use (bulk inserts and upserts: no ORM session, no identity map). The models
live in their own MetaData (`metadata`), so Alembic and the tests see these tables and nothing
else registered with SQLModel. Every name, type, index and constraint here is exactly what
migrations 0001-0006 create; `tests/test_store_schema.py` holds the two to each other.

Money is exact: NUMERIC on PostgreSQL, decimal text on SQLite (whose NUMERIC is a float).
Timestamps are timezone-aware UTC on the way in and out, whatever the backend keeps.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Dialect,
    Index,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import registry
from sqlalchemy.types import TypeDecorator, TypeEngine
from sqlmodel import Field, SQLModel


class ExactDecimal(TypeDecorator[Decimal]):
    """Decimal that never passes through a float."""

    impl = String(40)
    cache_ok = True

    def __init__(self, precision: int = 14, scale: int = 2) -> None:
        super().__init__()
        self.precision = precision
        self.scale = scale

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(Numeric(self.precision, self.scale, asdecimal=True))
        return dialect.type_descriptor(String(40))

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        return value if dialect.name == "postgresql" else str(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return value if isinstance(value, Decimal) else Decimal(str(value))


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes; SQLite keeps them as naive UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime reached the store")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)  # the column type guarantees it
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData()


class StoreTable(SQLModel, registry=registry(metadata=metadata)):
    """Base of the store's table models: their own registry and MetaData (see module doc)."""


# Shorthands for the column kinds the tables repeat; `nullable` is always said explicitly,
# so that a column's NULL-ability never depends on how SQLModel reads an annotation.
def _text(length: int, *, nullable: bool, **kw: Any) -> Any:
    return Field(sa_type=String(length), nullable=nullable, **kw)


def _money(*, nullable: bool, precision: int = 14, scale: int = 2) -> Any:
    return Field(sa_type=ExactDecimal(precision, scale), nullable=nullable)


def _utc(*, nullable: bool) -> Any:
    return Field(sa_type=UtcDateTime(), nullable=nullable)


def _run_id() -> Any:
    return Field(default=None, sa_type=BigInteger, nullable=True)


def _serial() -> Any:
    """An autoincrementing integer id (None until the database assigns it)."""
    return Field(default=None, primary_key=True, sa_column_kwargs={"autoincrement": True})


class InvoiceRow(StoreTable, table=True):
    __tablename__ = "invoice"
    __table_args__ = (
        PrimaryKeyConstraint("source", "source_id", name="pk_invoice"),
        Index("ix_invoice_date", "source", "invoice_date"),
    )

    source: str = _text(100, nullable=False)
    source_id: str = _text(200, nullable=False)
    invoice_number: str = _text(200, nullable=False)
    invoice_date: date = Field(nullable=False)
    total_amount: Decimal = _money(nullable=False)
    paid_amount: Decimal | None = _money(nullable=True)
    currency: str = _text(3, nullable=False)
    status: str = _text(10, nullable=False)
    source_status: str | None = _text(100, nullable=True)
    facility: str | None = _text(300, nullable=True)
    patient_name: str = _text(300, nullable=False)
    policy_number: str | None = _text(100, nullable=True)
    patient_ref: str | None = _text(200, nullable=True)
    source_updated_at: datetime | None = _utc(nullable=True)
    content_hash: str = _text(64, nullable=False)
    first_seen_at: datetime = _utc(nullable=False)
    written_at: datetime = _utc(nullable=False)
    last_run_id: int | None = _run_id()


class InvoiceItemRow(StoreTable, table=True):
    __tablename__ = "invoice_item"
    __table_args__ = (
        PrimaryKeyConstraint("source", "source_id", "line_no", name="pk_invoice_item"),
    )

    source: str = _text(100, nullable=False)
    source_id: str = _text(200, nullable=False)
    line_no: int = Field(nullable=False)
    category: str = _text(20, nullable=False)
    description: str = _text(1000, nullable=False)
    quantity: Decimal = _money(nullable=False, precision=18, scale=6)
    unit_price: Decimal = _money(nullable=False)
    total: Decimal = _money(nullable=False)
    source_category: str | None = _text(300, nullable=True)
    category_rule: str | None = _text(200, nullable=True)


class QuarantineRow(StoreTable, table=True):
    __tablename__ = "quarantine"
    __table_args__ = (UniqueConstraint("source", "record_key", name="uq_quarantine_record"),)

    id: int | None = _serial()
    source: str = _text(100, nullable=False)
    # The source invoice id, or "sha256:<digest of the payload>" when the record has none.
    record_key: str = _text(200, nullable=False)
    raw_payload: Any = Field(sa_type=JSON, nullable=False)
    canonical: dict[str, Any] | None = Field(default=None, sa_type=JSON, nullable=True)
    issues: list[dict[str, str]] = Field(sa_type=JSON, nullable=False)
    # ",CODE_A,CODE_B," so that a reason filter is a plain LIKE on every backend.
    reason_codes: str = _text(500, nullable=False)
    first_seen_at: datetime = _utc(nullable=False)
    last_seen_at: datetime = _utc(nullable=False)
    attempts: int = Field(nullable=False)
    last_run_id: int | None = _run_id()


class SyncStateRow(StoreTable, table=True):
    __tablename__ = "sync_state"

    source: str = _text(100, nullable=False, primary_key=True)
    # High-water mark of source updated-at over completed runs (UTC).
    cursor: datetime | None = _utc(nullable=True)
    # Where an unfinished run stopped: {"since":..., "position":..., "high_water":...}.
    resume: dict[str, Any] | None = Field(default=None, sa_type=JSON, nullable=True)
    last_run_id: int | None = _run_id()
    updated_at: datetime = _utc(nullable=False)
    # What the adapter hands its next run (`SourcePage.carry`), set when a run finishes ok.
    carry: dict[str, Any] | None = Field(default=None, sa_type=JSON, nullable=True)


class SyncRunRow(StoreTable, table=True):
    __tablename__ = "sync_run"
    __table_args__ = (Index("ix_sync_run_source", "source", "started_at"),)

    id: int | None = _serial()
    source: str = _text(100, nullable=False)
    kind: str = _text(20, nullable=False)
    status: str = _text(20, nullable=False)
    started_at: datetime = _utc(nullable=False)
    finished_at: datetime | None = _utc(nullable=True)
    owner: str = _text(200, nullable=False)
    error: str | None = Field(default=None, sa_type=Text, nullable=True)
    fetched: int = Field(default=0, nullable=False)
    inserted: int = Field(default=0, nullable=False)
    updated: int = Field(default=0, nullable=False)
    unchanged: int = Field(default=0, nullable=False)
    quarantined: int = Field(default=0, nullable=False)
    released: int = Field(default=0, nullable=False)
    batches: int = Field(default=0, nullable=False)
    cursor_before: datetime | None = _utc(nullable=True)
    cursor_after: datetime | None = _utc(nullable=True)
    # The epoch of the source lock the run was started under (a fencing token, migration
    # 0004): every batch and checkpoint of the run commits only while it is still current.
    lock_epoch: int | None = Field(default=None, sa_type=BigInteger, nullable=True)


class PolicyRow(StoreTable, table=True):
    """The MediTrak policy registry as last imported (`connector policies import`)."""

    __tablename__ = "policy"

    policy_number: str = _text(100, nullable=False, primary_key=True)
    holder_name: str | None = _text(300, nullable=True)
    # active / inactive / suspended / cancelled / expired: only "active" is billable.
    status: str = _text(20, nullable=False)
    valid_from: date | None = Field(default=None, nullable=True)
    valid_to: date | None = Field(default=None, nullable=True)
    imported_at: datetime = _utc(nullable=False)


class PatientLinkRow(StoreTable, table=True):
    """How sources that carry no policy number reach one: their own patient id → policy."""

    __tablename__ = "patient_link"
    __table_args__ = (PrimaryKeyConstraint("source", "patient_ref", name="pk_patient_link"),)

    source: str = _text(100, nullable=False)
    patient_ref: str = _text(200, nullable=False)
    policy_number: str = _text(100, nullable=False)
    imported_at: datetime = _utc(nullable=False)


class BackfillWindowRow(StoreTable, table=True):
    """Backfill date slices (`connector backfill`): claimed under a lease, so several workers
    on several machines split one backfill and a dead worker's slice is taken over at expiry."""

    __tablename__ = "backfill_window"
    __table_args__ = (
        UniqueConstraint("backfill_key", "date_from", name="uq_backfill_window"),
        Index("ix_backfill_window_claim", "backfill_key", "status"),
    )

    id: int | None = _serial()
    # "<source>:<since>:<until>": the same command run again finds its windows.
    backfill_key: str = _text(300, nullable=False)
    source: str = _text(100, nullable=False)
    date_from: date = Field(nullable=False)
    date_to: date = Field(nullable=False)
    # pending → running (leased) → done | failed; an expired lease makes it claimable again.
    status: str = _text(10, nullable=False)
    lease_owner: str | None = _text(200, nullable=True)
    lease_expires_at: datetime | None = _utc(nullable=True)
    attempts: int = Field(nullable=False)
    fetched: int = Field(nullable=False)
    inserted: int = Field(nullable=False)
    updated: int = Field(nullable=False)
    unchanged: int = Field(nullable=False)
    quarantined: int = Field(nullable=False)
    run_id: int | None = _run_id()
    error: str | None = Field(default=None, sa_type=Text, nullable=True)
    updated_at: datetime = _utc(nullable=False)


class SourceLockRow(StoreTable, table=True):
    """One daemon replica syncs a source at a time. On SQLite this row is the lock (a lease,
    renewed while the run lasts); on PostgreSQL a session advisory lock is, and the row keeps
    the holder, its epoch and its backend pid (`expires_at` is then the acquisition time).
    `epoch` grows by one with each new holder and is never reset: the fencing token that
    `connector.store.locks.fence_holds` checks in every batch transaction."""

    __tablename__ = "source_lock"

    source: str = _text(100, nullable=False, primary_key=True)
    owner: str = _text(200, nullable=False)
    acquired_at: datetime = _utc(nullable=False)
    expires_at: datetime = _utc(nullable=False)
    epoch: int = Field(
        default=0, sa_type=BigInteger, nullable=False, sa_column_kwargs={"server_default": "0"}
    )
    # PostgreSQL: the backend holding the advisory lock (NULL once released); SQLite: NULL.
    backend_pid: int | None = Field(default=None, nullable=True)


class WebhookEventRow(StoreTable, table=True):
    """A signed vendor webhook, stored before it is answered (migration 0005): a trigger to
    fetch the invoice it names through the adapter, never trusted content (no payload is kept).
    The unique `(source, webhook_id)` is what turns a replayed delivery into a duplicate."""

    __tablename__ = "webhook_event"
    __table_args__ = (
        UniqueConstraint("source", "webhook_id", name="uq_webhook_event"),
        Index("ix_webhook_event_due", "status", "next_attempt_at"),
    )

    id: int | None = _serial()
    source: str = _text(100, nullable=False)
    webhook_id: str = _text(200, nullable=False)
    event: str = _text(40, nullable=False)
    invoice_id: str = _text(200, nullable=False)
    # The vendor's own timestamp (with its offset), kept as UTC.
    event_at: datetime = _utc(nullable=False)
    received_at: datetime = _utc(nullable=False)
    # pending → done, or failed after its last attempt (polling still brings the invoice).
    status: str = _text(10, nullable=False)
    attempts: int = Field(nullable=False)
    next_attempt_at: datetime = _utc(nullable=False)
    processed_at: datetime | None = _utc(nullable=True)
    # What processing did: inserted, updated, unchanged, quarantined, not_found.
    outcome: str | None = _text(20, nullable=True)
    run_id: int | None = _run_id()
    error: str | None = Field(default=None, sa_type=Text, nullable=True)


def _table_of(model: type[StoreTable]) -> Table:
    """The Core table SQLAlchemy mapped `model` to (SQLModel's stubs do not declare it)."""
    table = model.__dict__["__table__"]
    assert isinstance(table, Table)
    return table


invoice = _table_of(InvoiceRow)
invoice_item = _table_of(InvoiceItemRow)
quarantine = _table_of(QuarantineRow)
sync_state = _table_of(SyncStateRow)
sync_run = _table_of(SyncRunRow)
policy = _table_of(PolicyRow)
patient_link = _table_of(PatientLinkRow)
backfill_window = _table_of(BackfillWindowRow)
source_lock = _table_of(SourceLockRow)
webhook_event = _table_of(WebhookEventRow)
