"""Policy registry: imported MediTrak policies and patient → policy links.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

from connector.store.schema import UtcDateTime

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.create_table(
        "policy",
        sa.Column("policy_number", sa.String(100), primary_key=True),
        sa.Column("holder_name", sa.String(300), nullable=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("valid_from", sa.Date, nullable=True),
        sa.Column("valid_to", sa.Date, nullable=True),
        sa.Column("imported_at", UtcDateTime(), nullable=False),
    )
    op.create_table(
        "patient_link",
        sa.Column("source", sa.String(100), nullable=False),
        sa.Column("patient_ref", sa.String(200), nullable=False),
        sa.Column("policy_number", sa.String(100), nullable=False),
        sa.Column("imported_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("source", "patient_ref", name="pk_patient_link"),
    )


def downgrade() -> None:
    op.drop_table("patient_link")
    op.drop_table("policy")
