"""Source locks: one replica syncs a source at a time (`source_lock()`).

PostgreSQL holds a session advisory lock on a dedicated connection for the run (released by
the server if the process dies); elsewhere (SQLite) a lease row in `source_lock`, renewed while
the run lasts, whose times come from the lease clock (`connector.store.leases.LeaseClock`).
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
import weakref
from datetime import timedelta
from typing import Protocol

from sqlalchemy import Connection, Engine, create_engine, insert, select, text, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from connector.errors import StoreError
from connector.store.database import Database
from connector.store.leases import LeaseClock
from connector.store.schema import source_lock as _LOCK_ROWS


class SourceLock(Protocol):
    """Exclusive right to sync one source, held for the length of a run."""

    owner: str

    def acquire(self) -> bool:
        """Take the lock if free (never waits); True when this process now holds it."""

    def renew(self) -> bool:
        """Keep holding it; False when it was lost."""

    def release(self) -> None: ...


def source_lock(store: Database, source: str, lease: timedelta) -> SourceLock:
    """The best lock the backend offers: an advisory lock on PostgreSQL, else a lease row."""
    if store.dialect == "postgresql":
        return AdvisorySourceLock(store, source)
    return LeaseSourceLock(store, source, lease)


def _lock_owner(store: Database) -> str:
    # A token per lock object: two runs in one process must not both "hold" it.
    return f"{store.owner}:{uuid.uuid4().hex[:8]}"


# Lock sessions live outside the store's pool: a daemon with many sources would otherwise tie
# up pooled connections for whole runs, and a closed lock connection must really end its
# session (which is what frees an advisory lock whatever else went wrong).
_lock_engines: weakref.WeakKeyDictionary[Database, Engine] = weakref.WeakKeyDictionary()
_lock_engines_guard = threading.Lock()


def _lock_engine(store: Database) -> Engine:
    with _lock_engines_guard:
        engine = _lock_engines.get(store)
        if engine is None:
            engine = create_engine(store.url, poolclass=NullPool)
            _lock_engines[store] = engine
        return engine


class AdvisorySourceLock:
    """`pg_try_advisory_lock` on a connection kept for the run; dies with the session."""

    # The schema is part of the key: deployments sharing one database in different schemas
    # must not lock each other's sources.
    _KEY = "hashtext('connector.sync:' || current_schema() || ':' || :source)"

    def __init__(self, store: Database, source: str) -> None:
        self.store = store
        self.source = source
        self.owner = _lock_owner(store)
        self._conn: Connection | None = None

    def acquire(self) -> bool:
        if self._conn is not None:
            return True
        try:
            conn = _lock_engine(self.store).connect()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot lock source {self.source}: {exc}") from exc
        try:
            held = bool(
                conn.execute(
                    text(f"SELECT pg_try_advisory_lock({self._KEY})"), {"source": self.source}
                ).scalar()
            )
            # Session-level locks outlive the transaction; do not sit "idle in transaction".
            conn.commit()
        except SQLAlchemyError as exc:
            conn.invalidate()
            conn.close()
            raise StoreError(f"cannot lock source {self.source}: {exc}") from exc
        if not held:
            conn.close()
            return False
        self._conn = conn
        return True

    def renew(self) -> bool:
        if self._conn is None:
            return False
        try:
            self._conn.execute(text("SELECT 1"))
            self._conn.commit()
        except SQLAlchemyError:
            return False
        return True

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.execute(text(f"SELECT pg_advisory_unlock({self._KEY})"), {"source": self.source})
            conn.commit()
        except SQLAlchemyError:
            # Ending the session is what releases the lock for sure.
            conn.invalidate()
        finally:
            conn.close()


def _dead_here(owner: str) -> bool:
    """Whether a lock owner ("host:pid:token") is a process of this host that has died.

    Lease rows are the SQLite lock, and SQLite is one machine: a killed `connector sync`
    must not keep the next one from resuming until its lease runs out.
    """
    host, _, rest = owner.partition(":")
    pid_text = rest.split(":", 1)[0]
    if host != socket.gethostname() or not pid_text.isdigit() or int(pid_text) == os.getpid():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, owned by another user
        return False
    return False


class LeaseSourceLock:
    """A row in `source_lock` naming the holder until `expires_at`; renewed while held."""

    def __init__(self, store: Database, source: str, lease: timedelta) -> None:
        self.store = store
        self.source = source
        self.lease = lease
        self.owner = _lock_owner(store)

    def acquire(self) -> bool:
        clock = LeaseClock(self.store)
        values = {
            "owner": self.owner,
            "acquired_at": clock.now(),
            "expires_at": clock.plus(self.lease),
        }
        try:
            with self.store.transaction() as conn:
                holder = conn.execute(
                    select(_LOCK_ROWS.c.owner).where(_LOCK_ROWS.c.source == self.source)
                ).scalar()
                if holder is None:
                    conn.execute(insert(_LOCK_ROWS).values(source=self.source, **values))
                    return True
                # Conditional on what was read, so that a concurrent taker wins only once.
                takeable = (
                    _LOCK_ROWS.c.owner == holder
                    if holder == self.owner or _dead_here(holder)
                    else _LOCK_ROWS.c.expires_at <= clock.now()
                )
                taken = conn.execute(
                    update(_LOCK_ROWS)
                    .where(_LOCK_ROWS.c.source == self.source, takeable)
                    .values(**values)
                ).rowcount
                return bool(taken)
        except StoreError:
            # Another replica inserted the row between our read and our write.
            return False

    def renew(self) -> bool:
        with self.store.transaction() as conn:
            changed = conn.execute(
                update(_LOCK_ROWS)
                .where(_LOCK_ROWS.c.source == self.source, _LOCK_ROWS.c.owner == self.owner)
                .values(expires_at=LeaseClock(self.store).plus(self.lease))
            ).rowcount
        return bool(changed)

    def release(self) -> None:
        with self.store.transaction() as conn:
            conn.execute(
                _LOCK_ROWS.delete().where(
                    _LOCK_ROWS.c.source == self.source, _LOCK_ROWS.c.owner == self.owner
                )
            )
