"""Opening a store: a new database is created from the table models and stamped, a current one
costs one query, an older one is upgraded by Alembic. Neither of the first two loads Alembic.
Checked on SQLite and PostgreSQL against a database that Alembic's migrations built."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, inspect

from connector.store import Store
from connector.store.database import HEAD_REVISION, current_revision, run_migrations

MIGRATIONS = "connector/store/migrations"


def schema_of(engine: Engine) -> dict[str, Any]:
    """Everything a migration decides about each table, as the database reports it."""
    inspector = inspect(engine)
    found: dict[str, Any] = {}
    for table in sorted(inspector.get_table_names()):
        found[table] = {
            "columns": [
                (c["name"], str(c["type"]), c["nullable"], str(c.get("default")))
                for c in inspector.get_columns(table)
            ],
            "pk": inspector.get_pk_constraint(table),
            "indexes": sorted(
                (i["name"], tuple(i["column_names"]), bool(i["unique"]))
                for i in inspector.get_indexes(table)
            ),
            "unique": sorted(
                (u["name"], tuple(u["column_names"]))
                for u in inspector.get_unique_constraints(table)
            ),
            "foreign_keys": sorted(
                (f["referred_table"], tuple(f["constrained_columns"]))
                for f in inspector.get_foreign_keys(table)
            ),
        }
    return found


def migrated_by_alembic(url: str, revision: str = "head") -> None:
    engine = create_engine(url)
    with engine.begin() as connection:
        run_migrations(connection, revision)
    engine.dispose()


def test_the_newest_revision_is_the_migration_scripts_head() -> None:
    config = AlembicConfig()
    config.set_main_option("script_location", MIGRATIONS)
    assert ScriptDirectory.from_config(config).get_current_head() == HEAD_REVISION


def test_a_new_store_equals_one_built_by_the_migrations(store_url: str) -> None:
    with Store(store_url) as created:
        from_models = schema_of(created.engine)
        with created.engine.connect() as conn:
            assert current_revision(conn) == HEAD_REVISION
    # The same database again, rebuilt by Alembic's upgrade, one migration after another.
    with Store(store_url) as store, store.engine.begin() as conn:
        for table in inspect(conn).get_table_names():
            conn.exec_driver_sql(
                f'DROP TABLE "{table}" CASCADE'
                if "postgres" in store_url
                else f'DROP TABLE "{table}"'
            )
    migrated_by_alembic(store_url)
    engine = create_engine(store_url)
    try:
        assert schema_of(engine) == from_models
    finally:
        engine.dispose()


def test_an_older_store_is_upgraded_by_the_migrations(store_url: str) -> None:
    migrated_by_alembic(store_url, "0002")
    with Store(store_url) as store:
        with store.engine.connect() as conn:
            assert current_revision(conn) == HEAD_REVISION
        assert {"backfill_window", "source_lock"} <= set(inspect(store.engine).get_table_names())


def _loads_alembic(url: str) -> bool:
    code = (
        "import sys\n"
        "from connector.store import Store\n"
        f"Store({url!r}).close()\n"
        "print('alembic' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return done.stdout.strip() == "True"


def test_only_a_store_that_is_behind_loads_alembic(store_url: str) -> None:
    assert _loads_alembic(store_url) is False  # new: created from the models
    assert _loads_alembic(store_url) is False  # current: one query
    with Store(store_url) as store, store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0002'")
        conn.exec_driver_sql("DROP TABLE source_lock")
        conn.exec_driver_sql("DROP TABLE backfill_window")
    assert _loads_alembic(store_url) is True  # behind: Alembic runs 0003
    with Store(store_url) as store, store.engine.connect() as conn:
        assert current_revision(conn) == HEAD_REVISION
