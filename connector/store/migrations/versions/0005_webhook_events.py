"""Webhook events: signed vendor pushes, stored before they are answered and processed later
through the normal fetch → mapping → validation → store path (docs/webhooks.md).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

from connector.store.schema import UtcDateTime

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    # A store stamped back to an older revision keeps its newer tables
    # (tests/test_store_migrate.py does that): create the table only where it is missing.
    if "webhook_event" in sa.inspect(op.get_bind()).get_table_names():
        return
    op.create_table(
        "webhook_event",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("source", sa.String(100), nullable=False),
        sa.Column("webhook_id", sa.String(200), nullable=False),
        sa.Column("event", sa.String(40), nullable=False),
        sa.Column("invoice_id", sa.String(200), nullable=False),
        sa.Column("event_at", UtcDateTime(), nullable=False),
        sa.Column("received_at", UtcDateTime(), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", UtcDateTime(), nullable=False),
        sa.Column("processed_at", UtcDateTime(), nullable=True),
        sa.Column("outcome", sa.String(20), nullable=True),
        sa.Column("run_id", sa.BigInteger, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.UniqueConstraint("source", "webhook_id", name="uq_webhook_event"),
    )
    op.create_index("ix_webhook_event_due", "webhook_event", ["status", "next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_webhook_event_due", table_name="webhook_event")
    op.drop_table("webhook_event")
