"""What an adapter hands its next run: `sync_state.carry` (JSON), set when a run finishes ok
(e.g. CitaBox's cursor per clinic of a clinic group).

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    present = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("sync_state")}
    if "carry" not in present:
        op.add_column("sync_state", sa.Column("carry", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("sync_state", "carry")
