"""Source locks: one replica syncs a source at a time (`source_lock()`), fenced so that a
holder that lost its lock can no longer commit (`fence_holds`).

PostgreSQL holds a session advisory lock on a dedicated connection for the run (released by
the server if the process dies); elsewhere (SQLite) a lease row in `source_lock`, renewed while
the run lasts, whose times come from the lease clock (`connector.store.leases.LeaseClock`).

Fencing: each new holder adds one to the source's `source_lock.epoch` (never reset), and a
sync run started under the lock records that epoch (`sync_run.lock_epoch`). Every batch write
and every checkpoint of the run first updates the lock row on the condition that the epoch is
still the run's and the lock still held (PostgreSQL: the advisory lock's backend is still in
`pg_locks`; SQLite: the lease has not run out), inside the batch's own transaction. A stale
holder's write therefore fails in the database (`LockLost`) and is rolled back; on PostgreSQL
the row lock it takes also orders it strictly before or after a new holder's epoch bump. The
new holder closes the runs left running in the same transaction as its bump, so the run
history never shows two runs of one source at once.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
import weakref
from datetime import UTC, datetime, timedelta
from typing import Protocol

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    TextClause,
    create_engine,
    func,
    insert,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from connector.errors import LockLost, StoreError, StoreUnreachable
from connector.store.database import Database, store_failure, utcnow
from connector.store.leases import LeaseClock
from connector.store.schema import UtcDateTime, sync_run
from connector.store.schema import source_lock as _LOCK_ROWS

# A released lease row ends at the epoch of time: free at once, whatever a taker's clock says.
_RELEASED = datetime(1970, 1, 1, tzinfo=UTC)
# How long a new PostgreSQL holder waits for a stale holder's batch transaction to end before
# it gives the source up for this round (that transaction holds the lock row).
_BUMP_LOCK_TIMEOUT = "10s"
# The lock session answers within this or is taken for dead (also bounds a connect).
_SESSION_TIMEOUT_S = 5
LOST_MESSAGE = (
    "the source lock of this run was lost (its session or lease ended, or another replica "
    "took the source over): nothing of this batch was stored"
)


class SourceLock(Protocol):
    """Exclusive right to sync one source, held for the length of a run."""

    owner: str
    # The fencing token of the current hold (None while not held).
    epoch: int | None
    # Set by `acquire` when it took the source over from a holder whose run was left running.
    previous_owner: str | None

    def acquire(self) -> bool:
        """Take the lock if free (never waits); True when this process now holds it."""

    def renew(self) -> bool:
        """Keep holding it (a lease is extended); False when it was lost, for good."""

    def release(self) -> None: ...


def source_lock(store: Database, source: str, lease: timedelta) -> SourceLock:
    """The best lock the backend offers: an advisory lock on PostgreSQL, else a lease row."""
    if store.dialect == "postgresql":
        return AdvisorySourceLock(store, source)
    return LeaseSourceLock(store, source, lease)


def fence_holds(conn: Connection, run_id: int, clock: LeaseClock) -> bool | None:
    """Whether `run_id`'s lock epoch is still the current, held one, checked in the caller's
    transaction (and, on PostgreSQL, the lock row locked until it ends). None: the run was not
    started under a source lock, so there is nothing to check."""
    run = conn.execute(
        select(sync_run.c.source, sync_run.c.lock_epoch).where(sync_run.c.id == run_id)
    ).first()
    if run is None or run.lock_epoch is None:
        return None
    current: list[ColumnElement[bool] | TextClause] = [
        _LOCK_ROWS.c.source == run.source,
        _LOCK_ROWS.c.epoch == run.lock_epoch,
    ]
    if conn.dialect.name == "postgresql":
        current.append(
            text(
                "EXISTS (SELECT 1 FROM pg_locks WHERE pg_locks.pid = source_lock.backend_pid"
                " AND pg_locks.locktype = 'advisory' AND pg_locks.granted)"
            )
        )
    else:
        current.append(_LOCK_ROWS.c.expires_at > clock.now())
    # A no-op update: it matches only while the fence holds, and locks the row till commit.
    touched = conn.execute(
        update(_LOCK_ROWS).where(*current).values(epoch=_LOCK_ROWS.c.epoch)
    ).rowcount
    return bool(touched)


def require_fence(conn: Connection, run_id: int, clock: LeaseClock) -> None:
    """`LockLost` (rolling the caller's transaction back) unless the run's fence holds."""
    if fence_holds(conn, run_id, clock) is False:
        raise LockLost(LOST_MESSAGE)


def _close_runs_left_running(
    conn: Connection, source: str, taker: str, epoch: int, now: datetime
) -> int:
    """A new holder's first act: runs of the source still "running" belong to holders that
    lost the lock (their writes are fenced off from now on), so they end here, at the moment
    the new epoch begins, before the new holder's own run starts."""
    return int(
        conn.execute(
            update(sync_run)
            .where(
                sync_run.c.source == source,
                sync_run.c.kind == "sync",
                sync_run.c.status == "running",
            )
            .values(
                status="interrupted",
                finished_at=now,
                error=(
                    f"source lock lost mid-run; taken over by {taker} (lock epoch {epoch}); "
                    "nothing of this run was stored after that"
                ),
            )
        ).rowcount
    )


def _reason(exc: SQLAlchemyError) -> str:
    """The driver's own message, without SQLAlchemy's statement and background link."""
    return " ".join(str(getattr(exc, "orig", None) or exc).split())


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
            options = {}
            if store.dialect == "postgresql":
                # A dead server or network must fail a lock check, not hang it: libpq's own
                # connect timeout and TCP keepalives (the daemon also bounds each check).
                options["connect_args"] = {
                    "connect_timeout": _SESSION_TIMEOUT_S,
                    "keepalives": 1,
                    "keepalives_idle": 5,
                    "keepalives_interval": 2,
                    "keepalives_count": 2,
                }
            engine = create_engine(store.url, poolclass=NullPool, **options)
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
        self.epoch: int | None = None
        self.previous_owner: str | None = None
        self._conn: Connection | None = None

    def acquire(self) -> bool:
        if self._conn is not None:
            return True
        try:
            conn = _lock_engine(self.store).connect()
        except SQLAlchemyError as exc:
            failure = store_failure(exc, connecting=True)
            raise type(failure)(f"cannot lock source {self.source}: {_reason(exc)}") from exc
        try:
            held = bool(
                conn.execute(
                    text(f"SELECT pg_try_advisory_lock({self._KEY})"), {"source": self.source}
                ).scalar()
            )
            # Session-level locks outlive the transaction; do not sit "idle in transaction".
            conn.commit()
            if held:
                self._begin_epoch(conn)
        except SQLAlchemyError as exc:
            # Ending the session also gives back an advisory lock taken just before.
            conn.invalidate()
            conn.close()
            failure = store_failure(exc)
            raise type(failure)(f"cannot lock source {self.source}: {_reason(exc)}") from exc
        if not held:
            conn.close()
            return False
        self._conn = conn
        assert self.epoch is not None
        self.store.hold_epoch(self.source, self.epoch)
        return True

    def _begin_epoch(self, conn: Connection) -> None:
        """The new hold's epoch (the row's plus one), its backend pid, and the runs that the
        previous holder left running closed: one transaction on the lock's own session."""
        conn.execute(text(f"SET LOCAL lock_timeout = '{_BUMP_LOCK_TIMEOUT}'"))
        # FOR UPDATE waits for a stale holder's batch transaction, which holds this row.
        row = conn.execute(
            select(_LOCK_ROWS.c.owner, _LOCK_ROWS.c.epoch)
            .where(_LOCK_ROWS.c.source == self.source)
            .with_for_update()
        ).first()
        epoch = (row.epoch if row is not None else 0) + 1
        now = utcnow()
        values = {
            "owner": self.owner,
            "acquired_at": now,
            "expires_at": now,
            "epoch": epoch,
            "backend_pid": func.pg_backend_pid(),
        }
        if row is None:
            conn.execute(insert(_LOCK_ROWS).values(source=self.source, **values))
        else:
            conn.execute(
                update(_LOCK_ROWS).where(_LOCK_ROWS.c.source == self.source).values(**values)
            )
        closed = _close_runs_left_running(conn, self.source, self.owner, epoch, now)
        conn.commit()
        self.epoch = epoch
        self.previous_owner = row.owner if row is not None and closed else None

    def renew(self) -> bool:
        """The lock's session still answers and the row still carries this hold's epoch."""
        if self._conn is None:
            return False
        try:
            epoch = self._conn.execute(
                select(_LOCK_ROWS.c.epoch).where(_LOCK_ROWS.c.source == self.source)
            ).scalar()
            self._conn.commit()
        except SQLAlchemyError:
            # The session is gone (and the advisory lock with it): nothing to give back.
            self._lost()
            conn, self._conn = self._conn, None
            conn.invalidate()
            conn.close()
            return False
        if epoch != self.epoch:
            self._lost()
            return False
        return True

    def _lost(self) -> None:
        if self.epoch is not None:
            self.store.drop_epoch(self.source, self.epoch)

    def release(self) -> None:
        conn, self._conn = self._conn, None
        self._lost()
        if conn is None:
            self.epoch = None
            return
        try:
            conn.execute(
                update(_LOCK_ROWS)
                .where(_LOCK_ROWS.c.source == self.source, _LOCK_ROWS.c.epoch == self.epoch)
                .values(backend_pid=None)
            )
            conn.execute(text(f"SELECT pg_advisory_unlock({self._KEY})"), {"source": self.source})
            conn.commit()
        except SQLAlchemyError:
            # Ending the session is what releases the lock for sure.
            conn.invalidate()
        finally:
            conn.close()
            self.epoch = None


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
        self.epoch: int | None = None
        self.previous_owner: str | None = None

    def acquire(self) -> bool:
        clock = LeaseClock(self.store)
        values = {
            "owner": self.owner,
            "acquired_at": clock.now(),
            "expires_at": clock.plus(self.lease),
            "backend_pid": None,
        }
        try:
            with self.store.transaction() as conn:
                holder = conn.execute(
                    select(_LOCK_ROWS.c.owner, _LOCK_ROWS.c.epoch).where(
                        _LOCK_ROWS.c.source == self.source
                    )
                ).first()
                epoch = (holder.epoch if holder is not None else 0) + 1
                if holder is None:
                    conn.execute(
                        insert(_LOCK_ROWS).values(source=self.source, epoch=epoch, **values)
                    )
                else:
                    # Conditional on what was read, so that a concurrent taker wins only once.
                    takeable = (
                        _LOCK_ROWS.c.owner == holder.owner
                        if holder.owner == self.owner or _dead_here(holder.owner)
                        else _LOCK_ROWS.c.expires_at <= clock.now()
                    )
                    taken = conn.execute(
                        update(_LOCK_ROWS)
                        .where(
                            _LOCK_ROWS.c.source == self.source,
                            _LOCK_ROWS.c.epoch == holder.epoch,
                            takeable,
                        )
                        .values(epoch=epoch, **values)
                    ).rowcount
                    if not taken:
                        return False
                now = utcnow()
                closed = _close_runs_left_running(conn, self.source, self.owner, epoch, now)
        except StoreUnreachable:
            raise
        except StoreError:
            # Another replica inserted the row between our read and our write.
            return False
        self.epoch = epoch
        self.previous_owner = holder.owner if holder is not None and closed else None
        self.store.hold_epoch(self.source, epoch)
        return True

    def renew(self) -> bool:
        """Extend the lease while it is live; an expired one is lost, never revived (another
        replica may be taking it)."""
        if self.epoch is None:
            return False
        clock = LeaseClock(self.store)
        with self.store.transaction() as conn:
            changed = conn.execute(
                update(_LOCK_ROWS)
                .where(
                    _LOCK_ROWS.c.source == self.source,
                    _LOCK_ROWS.c.owner == self.owner,
                    _LOCK_ROWS.c.epoch == self.epoch,
                    _LOCK_ROWS.c.expires_at > clock.now(),
                )
                .values(expires_at=clock.plus(self.lease))
            ).rowcount
        if not changed:
            self.store.drop_epoch(self.source, self.epoch)
        return bool(changed)

    def release(self) -> None:
        if self.epoch is None:
            return
        self.store.drop_epoch(self.source, self.epoch)
        with self.store.transaction() as conn:
            conn.execute(
                update(_LOCK_ROWS)
                .where(
                    _LOCK_ROWS.c.source == self.source,
                    _LOCK_ROWS.c.owner == self.owner,
                    _LOCK_ROWS.c.epoch == self.epoch,
                )
                .values(expires_at=literal(_RELEASED, UtcDateTime()))
            )
        self.epoch = None
