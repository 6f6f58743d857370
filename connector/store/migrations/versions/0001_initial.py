"""Initial store: invoices, items, quarantine, sync state and run audit trail.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from connector.store.schema import ExactDecimal, UtcDateTime

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "invoice",
        sa.Column("source", sa.String(100), nullable=False),
        sa.Column("source_id", sa.String(200), nullable=False),
        sa.Column("invoice_number", sa.String(200), nullable=False),
        sa.Column("invoice_date", sa.Date, nullable=False),
        sa.Column("total_amount", ExactDecimal(), nullable=False),
        sa.Column("paid_amount", ExactDecimal(), nullable=True),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("source_status", sa.String(100), nullable=True),
        sa.Column("facility", sa.String(300), nullable=True),
        sa.Column("patient_name", sa.String(300), nullable=False),
        sa.Column("policy_number", sa.String(100), nullable=True),
        sa.Column("patient_ref", sa.String(200), nullable=True),
        sa.Column("source_updated_at", UtcDateTime(), nullable=True),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("first_seen_at", UtcDateTime(), nullable=False),
        sa.Column("written_at", UtcDateTime(), nullable=False),
        sa.Column("last_run_id", sa.BigInteger, nullable=True),
        sa.PrimaryKeyConstraint("source", "source_id", name="pk_invoice"),
    )
    op.create_index("ix_invoice_date", "invoice", ["source", "invoice_date"])
    op.create_table(
        "invoice_item",
        sa.Column("source", sa.String(100), nullable=False),
        sa.Column("source_id", sa.String(200), nullable=False),
        sa.Column("line_no", sa.Integer, nullable=False),
        sa.Column("category", sa.String(20), nullable=False),
        sa.Column("description", sa.String(1000), nullable=False),
        sa.Column("quantity", ExactDecimal(18, 6), nullable=False),
        sa.Column("unit_price", ExactDecimal(), nullable=False),
        sa.Column("total", ExactDecimal(), nullable=False),
        sa.Column("source_category", sa.String(300), nullable=True),
        sa.Column("category_rule", sa.String(200), nullable=True),
        sa.PrimaryKeyConstraint("source", "source_id", "line_no", name="pk_invoice_item"),
    )
    op.create_table(
        "quarantine",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("source", sa.String(100), nullable=False),
        sa.Column("record_key", sa.String(200), nullable=False),
        sa.Column("raw_payload", sa.JSON, nullable=False),
        sa.Column("canonical", sa.JSON, nullable=True),
        sa.Column("issues", sa.JSON, nullable=False),
        sa.Column("reason_codes", sa.String(500), nullable=False),
        sa.Column("first_seen_at", UtcDateTime(), nullable=False),
        sa.Column("last_seen_at", UtcDateTime(), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_run_id", sa.BigInteger, nullable=True),
        sa.UniqueConstraint("source", "record_key", name="uq_quarantine_record"),
    )
    op.create_table(
        "sync_state",
        sa.Column("source", sa.String(100), primary_key=True),
        sa.Column("cursor", UtcDateTime(), nullable=True),
        sa.Column("resume", sa.JSON, nullable=True),
        sa.Column("last_run_id", sa.BigInteger, nullable=True),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
    )
    op.create_table(
        "sync_run",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("source", sa.String(100), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("started_at", UtcDateTime(), nullable=False),
        sa.Column("finished_at", UtcDateTime(), nullable=True),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("fetched", sa.Integer, nullable=False),
        sa.Column("inserted", sa.Integer, nullable=False),
        sa.Column("updated", sa.Integer, nullable=False),
        sa.Column("unchanged", sa.Integer, nullable=False),
        sa.Column("quarantined", sa.Integer, nullable=False),
        sa.Column("released", sa.Integer, nullable=False),
        sa.Column("batches", sa.Integer, nullable=False),
        sa.Column("cursor_before", UtcDateTime(), nullable=True),
        sa.Column("cursor_after", UtcDateTime(), nullable=True),
    )
    op.create_index("ix_sync_run_source", "sync_run", ["source", "started_at"])


def downgrade() -> None:
    for table in ("sync_run", "sync_state", "quarantine", "invoice_item", "invoice"):
        op.drop_table(table)
