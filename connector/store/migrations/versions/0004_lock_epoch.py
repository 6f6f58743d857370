"""Fencing tokens: the epoch of each source lock and of the runs started under it.

`source_lock.epoch` grows by one with each new holder of a source's lock;
`source_lock.backend_pid` is the PostgreSQL session holding the advisory lock;
`sync_run.lock_epoch` is the epoch a run was started under, which every batch write checks.

Revision ID: 0004
Revises: 0003
"""

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def _missing(table: str, columns: list[sa.Column[Any]]) -> list[sa.Column[Any]]:
    """The columns not there yet: a store stamped back to an older revision keeps its newer
    tables (tests/test_store_migrate.py does that), and adding a column twice fails."""
    present = {c["name"] for c in sa.inspect(op.get_bind()).get_columns(table)}
    return [column for column in columns if column.name not in present]


def upgrade() -> None:
    wanted: tuple[tuple[str, list[sa.Column[Any]]], ...] = (
        (
            "source_lock",
            [
                sa.Column("epoch", sa.BigInteger, nullable=False, server_default="0"),
                sa.Column("backend_pid", sa.Integer, nullable=True),
            ],
        ),
        ("sync_run", [sa.Column("lock_epoch", sa.BigInteger, nullable=True)]),
    )
    for table, columns in wanted:
        added = _missing(table, columns)
        if added:
            with op.batch_alter_table(table) as batch:
                for column in added:
                    batch.add_column(column)


def downgrade() -> None:
    with op.batch_alter_table("sync_run") as batch:
        batch.drop_column("lock_epoch")
    with op.batch_alter_table("source_lock") as batch:
        batch.drop_column("backend_pid")
        batch.drop_column("epoch")
