"""Opening the store's database: the engine and its SQLite tuning, migrations, and the one
public way to write (`Database.transaction()`), which every store module uses.

A write transaction is serialised per process (batches of concurrent sources queue on a lock
instead of contending for SQLite's single write lock), starts with `BEGIN IMMEDIATE` on SQLite
(the write lock is taken up front, so a writer waits `busy_timeout` rather than failing midway)
and turns every database failure into a `StoreError` after rolling back.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    create_engine,
    event,
    insert,
    inspect,
    select,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

from connector.errors import StoreError, StoreUnreachable
from connector.store.schema import metadata

# SQLite allows 32766 bound parameters; keep IN lists far below that.
IN_CHUNK = 500
# Execution option marking a connection whose transactions write (SQLite: BEGIN IMMEDIATE).
_WRITE_OPTION = "connector_write"
T = TypeVar("T")


def utcnow() -> datetime:
    return datetime.now(UTC)


def chunks(items: Sequence[T], size: int = IN_CHUNK) -> Iterator[Sequence[T]]:
    """`items` in slices of `size`: IN lists short enough for every backend's bind limit."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def sqlite_url_for(path: str | os.PathLike[str]) -> str:
    return f"sqlite:///{Path(path)}"


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


def describe_store_failure(exc: SQLAlchemyError) -> str:
    """A failed write as the operator reads it, with a hint where the cause is the disk."""
    detail = str(getattr(exc, "orig", exc)) or exc.__class__.__name__
    hint = ""
    lowered = detail.lower()
    if isinstance(exc, OperationalError) and (
        "full" in lowered or "readonly" in lowered or "read-only" in lowered
    ):
        hint = " (check free disk space and that the database file is writable)"
    return f"store write failed, nothing of this batch was kept: {detail}{hint}"


def store_failure(exc: SQLAlchemyError, *, connecting: bool = False) -> StoreError:
    """The `StoreError` of a failed database call: `StoreUnreachable` when the server could
    not be reached (a refused or dropped connection), which the daemon retries on a schedule."""
    unreachable = (isinstance(exc, DBAPIError) and exc.connection_invalidated) or (
        connecting and isinstance(exc, OperationalError)
    )
    kind = StoreUnreachable if unreachable else StoreError
    return kind(describe_store_failure(exc))


# The newest migration in migrations/versions (a test holds the two equal).
HEAD_REVISION = "0006"
_ALEMBIC_VERSION = Table(
    "alembic_version",
    MetaData(),
    Column("version_num", String(32), nullable=False),
    PrimaryKeyConstraint("version_num", name="alembic_version_pkc"),
)


def current_revision(connection: Connection) -> str | None:
    """The migration the database is at, or None when it has never been migrated."""
    if not inspect(connection).has_table(_ALEMBIC_VERSION.name):
        return None
    return connection.execute(select(_ALEMBIC_VERSION.c.version_num)).scalar()


def create_newest_schema(connection: Connection) -> None:
    """An empty database made equal to one migrated to `HEAD_REVISION`: the tables from the
    models, and Alembic's version table stamped as Alembic itself would."""
    metadata.create_all(connection)
    _ALEMBIC_VERSION.create(connection)
    connection.execute(insert(_ALEMBIC_VERSION).values(version_num=HEAD_REVISION))


def run_migrations(connection: Connection, revision: str = "head") -> None:
    """Alembic's upgrade of this database, in the caller's transaction."""
    from alembic import command  # only stores that are behind pay for loading Alembic
    from alembic.config import Config as AlembicConfig

    alembic_cfg = AlembicConfig()
    alembic_cfg.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
    alembic_cfg.attributes["connection"] = connection
    command.upgrade(alembic_cfg, revision)


class Database:
    """The connection side of the store: engine, migrations and write transactions.

    `Store` builds on it; the store's other modules (policies, quarantine operations, leases)
    write through `transaction()` and read through `engine.connect()`.
    """

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
        # Source → epoch of the source lock this process holds (`connector.store.locks`):
        # a sync run started while it is held carries the epoch as its fencing token.
        self._held_epochs: dict[str, int] = {}
        self._held_guard = threading.Lock()
        if migrate:
            self.migrate()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        self.engine.dispose()

    def hold_epoch(self, source: str, epoch: int) -> None:
        """Runs of `source` started from now on carry `epoch` (this process took its lock)."""
        with self._held_guard:
            self._held_epochs[source] = epoch

    def drop_epoch(self, source: str, epoch: int) -> None:
        """The lock of `epoch` is released or lost (a newer hold in this process is kept)."""
        with self._held_guard:
            if self._held_epochs.get(source) == epoch:
                del self._held_epochs[source]

    def held_epoch(self, source: str) -> int | None:
        with self._held_guard:
            return self._held_epochs.get(source)

    def migrate(self) -> None:
        """Bring the schema to the newest migration (idempotent).

        A store already there costs one query; a new, empty database is created from the table
        models in one step and stamped with the newest revision (the models are held equal to
        the migrations by tests/test_store_schema.py); only an older store runs Alembic. So the
        common cases never load Alembic (about 11 MB of memory and 0.1 s of start-up)."""
        try:
            with self.engine.connect() as connection:
                connection.execution_options(**{_WRITE_OPTION: True})
                with connection.begin():
                    if self.dialect == "postgresql":
                        # Replicas starting together must not run the migrations twice.
                        connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7236460019)")
                    revision = current_revision(connection)
                    if revision == HEAD_REVISION:
                        return
                    if revision is None and not inspect(connection).get_table_names():
                        create_newest_schema(connection)
                    else:
                        run_migrations(connection)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot migrate the store: {exc.__class__.__name__}: {exc}") from exc

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One write transaction: committed when the block ends, rolled back if it raises.

        Serialised with every other write transaction of this process, and on SQLite begun
        with `BEGIN IMMEDIATE`. A database failure (at any statement or at commit) surfaces
        as `StoreError` once rolled back; other exceptions roll back and pass through.
        """
        with self._write_lock:
            try:
                conn = self.engine.connect()
            except SQLAlchemyError as exc:
                raise store_failure(exc, connecting=True) from exc
            try:
                try:
                    conn.execution_options(**{_WRITE_OPTION: True})
                    conn.begin()
                except SQLAlchemyError as exc:
                    raise store_failure(exc, connecting=True) from exc
                try:
                    yield conn
                except SQLAlchemyError as exc:
                    _rollback(conn)
                    raise store_failure(exc) from exc
                except BaseException:
                    _rollback(conn)
                    raise
                try:
                    conn.commit()
                except SQLAlchemyError as exc:
                    _rollback(conn)
                    raise store_failure(exc) from exc
            finally:
                conn.close()


def _rollback(conn: Connection) -> None:
    """Roll back after a failure; a connection the failure already broke has nothing to undo."""
    try:
        conn.rollback()
    except SQLAlchemyError:
        conn.invalidate()
