"""Table definitions of the local store (SQLAlchemy Core), shared by the store and migrations.

Money is exact: NUMERIC on PostgreSQL, decimal text on SQLite (whose NUMERIC is a float).
Timestamps are timezone-aware UTC on the way in and out, whatever the backend keeps.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Date,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.types import TypeDecorator, TypeEngine


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

invoice = Table(
    "invoice",
    metadata,
    Column("source", String(100), nullable=False),
    Column("source_id", String(200), nullable=False),
    Column("invoice_number", String(200), nullable=False),
    Column("invoice_date", Date, nullable=False),
    Column("total_amount", ExactDecimal(), nullable=False),
    Column("paid_amount", ExactDecimal(), nullable=True),
    Column("currency", String(3), nullable=False),
    Column("status", String(10), nullable=False),
    Column("source_status", String(100), nullable=True),
    Column("facility", String(300), nullable=True),
    Column("patient_name", String(300), nullable=False),
    Column("policy_number", String(100), nullable=True),
    Column("patient_ref", String(200), nullable=True),
    Column("source_updated_at", UtcDateTime(), nullable=True),
    Column("content_hash", String(64), nullable=False),
    Column("first_seen_at", UtcDateTime(), nullable=False),
    Column("written_at", UtcDateTime(), nullable=False),
    Column("last_run_id", BigInteger, nullable=True),
    PrimaryKeyConstraint("source", "source_id", name="pk_invoice"),
)
Index("ix_invoice_date", invoice.c.source, invoice.c.invoice_date)

invoice_item = Table(
    "invoice_item",
    metadata,
    Column("source", String(100), nullable=False),
    Column("source_id", String(200), nullable=False),
    Column("line_no", Integer, nullable=False),
    Column("category", String(20), nullable=False),
    Column("description", String(1000), nullable=False),
    Column("quantity", ExactDecimal(18, 6), nullable=False),
    Column("unit_price", ExactDecimal(), nullable=False),
    Column("total", ExactDecimal(), nullable=False),
    Column("source_category", String(300), nullable=True),
    Column("category_rule", String(200), nullable=True),
    PrimaryKeyConstraint("source", "source_id", "line_no", name="pk_invoice_item"),
)

quarantine = Table(
    "quarantine",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("source", String(100), nullable=False),
    # The source invoice id, or "sha256:<digest of the payload>" when the record has none.
    Column("record_key", String(200), nullable=False),
    Column("raw_payload", JSON, nullable=False),
    Column("canonical", JSON, nullable=True),
    Column("issues", JSON, nullable=False),
    # ",CODE_A,CODE_B," so that a reason filter is a plain LIKE on every backend.
    Column("reason_codes", String(500), nullable=False),
    Column("first_seen_at", UtcDateTime(), nullable=False),
    Column("last_seen_at", UtcDateTime(), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("last_run_id", BigInteger, nullable=True),
    UniqueConstraint("source", "record_key", name="uq_quarantine_record"),
)

sync_state = Table(
    "sync_state",
    metadata,
    Column("source", String(100), primary_key=True),
    # High-water mark of source updated-at over completed runs (UTC).
    Column("cursor", UtcDateTime(), nullable=True),
    # Where an unfinished run stopped: {"since":..., "position":..., "high_water":...}.
    Column("resume", JSON, nullable=True),
    Column("last_run_id", BigInteger, nullable=True),
    Column("updated_at", UtcDateTime(), nullable=False),
)

sync_run = Table(
    "sync_run",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("source", String(100), nullable=False),
    Column("kind", String(20), nullable=False),
    Column("status", String(20), nullable=False),
    Column("started_at", UtcDateTime(), nullable=False),
    Column("finished_at", UtcDateTime(), nullable=True),
    Column("owner", String(200), nullable=False),
    Column("error", Text, nullable=True),
    Column("fetched", Integer, nullable=False, default=0),
    Column("inserted", Integer, nullable=False, default=0),
    Column("updated", Integer, nullable=False, default=0),
    Column("unchanged", Integer, nullable=False, default=0),
    Column("quarantined", Integer, nullable=False, default=0),
    Column("released", Integer, nullable=False, default=0),
    Column("batches", Integer, nullable=False, default=0),
    Column("cursor_before", UtcDateTime(), nullable=True),
    Column("cursor_after", UtcDateTime(), nullable=True),
)
Index("ix_sync_run_source", sync_run.c.source, sync_run.c.started_at)

# The MediTrak policy registry as last imported (`connector policies import`).
policy = Table(
    "policy",
    metadata,
    Column("policy_number", String(100), primary_key=True),
    Column("holder_name", String(300), nullable=True),
    # active / inactive / suspended / cancelled / expired: only "active" is billable.
    Column("status", String(20), nullable=False),
    Column("valid_from", Date, nullable=True),
    Column("valid_to", Date, nullable=True),
    Column("imported_at", UtcDateTime(), nullable=False),
)

# How sources that carry no policy number reach one: their own patient id → policy number.
patient_link = Table(
    "patient_link",
    metadata,
    Column("source", String(100), nullable=False),
    Column("patient_ref", String(200), nullable=False),
    Column("policy_number", String(100), nullable=False),
    Column("imported_at", UtcDateTime(), nullable=False),
    PrimaryKeyConstraint("source", "patient_ref", name="pk_patient_link"),
)

# Backfill date slices (`connector backfill`): claimed under a lease, so several workers on
# several machines split one backfill and a dead worker's slice is taken over at expiry.
backfill_window = Table(
    "backfill_window",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    # "<source>:<since>:<until>": the same command run again finds its windows.
    Column("backfill_key", String(300), nullable=False),
    Column("source", String(100), nullable=False),
    Column("date_from", Date, nullable=False),
    Column("date_to", Date, nullable=False),
    # pending → running (leased) → done | failed; an expired lease makes it claimable again.
    Column("status", String(10), nullable=False),
    Column("lease_owner", String(200), nullable=True),
    Column("lease_expires_at", UtcDateTime(), nullable=True),
    Column("attempts", Integer, nullable=False),
    Column("fetched", Integer, nullable=False),
    Column("inserted", Integer, nullable=False),
    Column("updated", Integer, nullable=False),
    Column("unchanged", Integer, nullable=False),
    Column("quarantined", Integer, nullable=False),
    Column("run_id", BigInteger, nullable=True),
    Column("error", Text, nullable=True),
    Column("updated_at", UtcDateTime(), nullable=False),
    UniqueConstraint("backfill_key", "date_from", name="uq_backfill_window"),
)
Index("ix_backfill_window_claim", backfill_window.c.backfill_key, backfill_window.c.status)

# One daemon replica syncs a source at a time. PostgreSQL uses session advisory locks; this
# lease row is the portable fallback (SQLite), renewed while the run lasts.
source_lock = Table(
    "source_lock",
    metadata,
    Column("source", String(100), primary_key=True),
    Column("owner", String(200), nullable=False),
    Column("acquired_at", UtcDateTime(), nullable=False),
    Column("expires_at", UtcDateTime(), nullable=False),
)
