"""The SQLModel table models (`connector/store/schema.py`) say exactly what migrations 0001-0003
create, on SQLite and PostgreSQL: Alembic autogenerate, comparing a database migrated by
Alembic's own upgrade with the models, finds nothing to do. (A new store is created from the
models directly, `connector/store/database.py`: this equality is what makes that safe.)

Compared (autogenerate with `compare_type` and `compare_server_default`): tables, columns,
column types (length, NUMERIC precision/scale and TIMESTAMP time zone on PostgreSQL), NULL-ability,
indexes, unique constraints, server defaults. Autogenerate does not look at primary keys, so
their names and columns are checked from the reflected schema here too. Two facts are
invisible on SQLite and only checked on PostgreSQL, by the backend itself rather than by an
exclusion: SQLite keeps every `ExactDecimal` as VARCHAR(40) (so a precision change is
not a schema change there) and has no time zone in DATETIME. Client-side defaults
(`default=0` of the run counters) are not schema and are not compared.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import DateTime, Index, MetaData, String, create_engine, inspect
from sqlmodel import SQLModel

from connector.store import Store
from connector.store.database import run_migrations
from connector.store.schema import ExactDecimal, metadata

TABLES = {
    "invoice",
    "invoice_item",
    "quarantine",
    "sync_state",
    "sync_run",
    "policy",
    "patient_link",
    "backfill_window",
    "source_lock",
    "webhook_event",
}


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """A store whose schema Alembic's migrations made, step by step (not the models)."""
    engine = create_engine(store_url)
    with engine.begin() as connection:
        run_migrations(connection)
    engine.dispose()
    with Store(store_url) as opened:
        yield opened


def differences(store: Store, target: MetaData) -> list[Any]:
    with store.engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        return list(compare_metadata(context, target))


def test_the_models_have_their_own_metadata_holding_only_the_store_tables() -> None:
    assert metadata is not SQLModel.metadata
    assert set(metadata.tables) == TABLES


def test_autogenerate_finds_no_difference_between_migrations_and_models(store: Store) -> None:
    assert differences(store, metadata) == []


def test_primary_keys_and_column_order_match_the_migrations(store: Store) -> None:
    inspector = inspect(store.engine)
    for name, table in metadata.tables.items():
        reflected = inspector.get_pk_constraint(name)
        assert reflected["constrained_columns"] == [c.name for c in table.primary_key.columns]
        if table.primary_key.name is not None:
            assert reflected["name"] == table.primary_key.name
        assert [c["name"] for c in inspector.get_columns(name)] == list(table.c.keys())


def test_the_comparison_sees_a_drifted_model(store: Store) -> None:
    """The check above can fail: a model that drifted from the migrations is reported."""
    drifted = MetaData()
    for table in metadata.sorted_tables:
        table.to_metadata(drifted)
    invoice, sync_run = drifted.tables["invoice"], drifted.tables["sync_run"]
    invoice.c.currency.type = String(4)
    invoice.c.facility.nullable = False
    invoice.c.total_amount.type = ExactDecimal(12, 2)
    invoice.c.first_seen_at.type = DateTime()
    sync_run.indexes.clear()
    Index("ix_sync_run_kind", sync_run.c.kind)
    found = {
        (d[0][0], d[0][3]) if isinstance(d, list) else (d[0], d[1].name)
        for d in differences(store, drifted)
    }
    expected = {
        ("modify_type", "currency"),
        ("modify_nullable", "facility"),
        ("remove_index", "ix_sync_run_source"),
        ("add_index", "ix_sync_run_kind"),
    }
    if store.dialect == "postgresql":
        # NUMERIC precision and TIMESTAMP WITH TIME ZONE exist only on PostgreSQL.
        expected |= {("modify_type", "total_amount"), ("modify_type", "first_seen_at")}
    assert found == expected


@pytest.mark.parametrize("name", sorted(TABLES))
def test_each_model_maps_its_table(name: str) -> None:
    """The Core alias each store module uses is the model's own table, not a copy."""
    from connector.store import schema

    table = getattr(schema, name)
    assert table is metadata.tables[name]
