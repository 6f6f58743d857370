"""Store-side coordination of several workers and replicas sharing one database.

Two mechanisms, both usable on SQLite and PostgreSQL:

* **Backfill windows** (`BackfillWindows`): date slices of one backfill, each claimed under a
  lease. PostgreSQL claims with `SELECT ... FOR UPDATE SKIP LOCKED`, so concurrent workers on
  several machines never wait for each other nor claim the same window; SQLite serialises the
  claim in one `BEGIN IMMEDIATE` transaction. A lease that is not renewed expires, and the
  window becomes claimable again: a killed worker's window is taken over.
* **Source locks** (`source_lock()`): one daemon replica syncs a source at a time. PostgreSQL
  holds a session advisory lock on a dedicated connection for the run (released by the server
  if the process dies); elsewhere a lease row in `source_lock`, renewed while the run lasts.

Times are the workers' UTC clocks: leases are far longer than the clock skew of NTP'd hosts.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import (
    Connection,
    Engine,
    Row,
    and_,
    create_engine,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from connector.errors import StoreError
from connector.store import schema
from connector.store.schema import backfill_window, sync_run
from connector.store.store import Store, utcnow

WINDOW_COUNTS = ("fetched", "inserted", "updated", "unchanged", "quarantined")
_LOCK_ROWS = schema.source_lock
PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"


@dataclass(frozen=True, slots=True)
class Window:
    id: int
    backfill_key: str
    source: str
    date_from: date
    date_to: date
    status: str
    lease_owner: str | None
    lease_expires_at: datetime | None
    attempts: int
    error: str | None
    counts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class WindowSummary:
    total: int = 0
    pending: int = 0
    running: int = 0
    done: int = 0
    failed: int = 0
    fetched: int = 0
    # When the earliest lease of a running window runs out (a wait bound for idle workers).
    next_expiry: datetime | None = None

    @property
    def finished(self) -> bool:
        return self.pending == 0 and self.running == 0


def backfill_key(source: str, since: date, until: date) -> str:
    return f"{source}:{since.isoformat()}:{until.isoformat()}"


def open_backfill_keys(store: Store, source: str, since: date) -> list[str]:
    """Keys of this source's backfills from `since` that still have windows to do, newest first."""
    prefix = f"{source}:{since.isoformat()}:"
    query = (
        select(backfill_window.c.backfill_key, func.max(backfill_window.c.updated_at))
        .where(
            backfill_window.c.source == source,
            backfill_window.c.backfill_key.startswith(prefix, autoescape=True),
            backfill_window.c.status != DONE,
        )
        .group_by(backfill_window.c.backfill_key)
        .order_by(func.max(backfill_window.c.updated_at).desc())
    )
    with store.engine.connect() as conn:
        return [row[0] for row in conn.execute(query)]


class BackfillWindows:
    """The window rows of one backfill (one key), and the lease protocol over them."""

    def __init__(self, store: Store, key: str, source: str) -> None:
        self.store = store
        self.key = key
        self.source = source

    def ensure(self, slices: Sequence[tuple[date, date]]) -> int:
        """Create the windows not stored yet; concurrent callers may race, none duplicates."""
        now = utcnow()
        rows = [
            {
                "backfill_key": self.key,
                "source": self.source,
                "date_from": start,
                "date_to": end,
                "status": PENDING,
                "attempts": 0,
                **{name: 0 for name in WINDOW_COUNTS},
                "updated_at": now,
            }
            for start, end in slices
        ]
        if not rows:
            return 0
        dialect = self.store.dialect
        statement = (
            postgresql.insert(backfill_window).on_conflict_do_nothing()
            if dialect == "postgresql"
            else sqlite.insert(backfill_window).on_conflict_do_nothing()
        )
        with self.store._transaction() as conn:
            return int(conn.execute(statement, rows).rowcount or 0)

    def reset_failed(self) -> int:
        """Failed windows become pending again: re-running the command retries them."""
        with self.store._transaction() as conn:
            return int(
                conn.execute(
                    update(backfill_window)
                    .where(backfill_window.c.backfill_key == self.key)
                    .where(backfill_window.c.status == FAILED)
                    .values(status=PENDING, updated_at=utcnow())
                ).rowcount
            )

    def claim(self, owner: str, lease: timedelta) -> Window | None:
        """Lease the earliest pending (or lease-expired) window to `owner`; None if none is free."""
        now = utcnow()
        claimable = or_(
            backfill_window.c.status == PENDING,
            and_(backfill_window.c.status == RUNNING, backfill_window.c.lease_expires_at < now),
        )
        query = (
            select(backfill_window.c.id)
            .where(backfill_window.c.backfill_key == self.key, claimable)
            .order_by(backfill_window.c.date_from)
            .limit(1)
        )
        if self.store.dialect == "postgresql":
            # Rows another worker is claiming right now are skipped, not waited for.
            query = query.with_for_update(skip_locked=True)
        with self.store._transaction() as conn:
            window_id = conn.execute(query).scalar()
            if window_id is None:
                return None
            previous = conn.execute(
                select(backfill_window.c.status, backfill_window.c.lease_owner).where(
                    backfill_window.c.id == window_id
                )
            ).one()
            if previous.status == RUNNING and previous.lease_owner:
                # Taking over an expired lease: the worker that held it is gone, so the run it
                # left "running" is closed here rather than showing as live forever.
                conn.execute(
                    update(sync_run)
                    .where(
                        sync_run.c.source == self.source,
                        sync_run.c.kind == "backfill",
                        sync_run.c.status == "running",
                        sync_run.c.owner == previous.lease_owner.rsplit(":w", 1)[0],
                    )
                    .values(
                        status="interrupted",
                        finished_at=now,
                        error="worker lost its window lease; the window was taken over",
                    )
                )
            conn.execute(
                update(backfill_window)
                .where(backfill_window.c.id == window_id)
                .values(
                    status=RUNNING,
                    lease_owner=owner,
                    lease_expires_at=now + lease,
                    attempts=backfill_window.c.attempts + 1,
                    error=None,
                    updated_at=now,
                )
            )
            return self._get(conn, window_id)

    def renew(self, window_id: int, owner: str, lease: timedelta) -> bool:
        """Extend a held lease; False when it was lost (expired and taken over)."""
        now = utcnow()
        return self._update_held(window_id, owner, lease_expires_at=now + lease, updated_at=now)

    def finish(
        self, window_id: int, owner: str, counts: Mapping[str, int], run_id: int | None
    ) -> bool:
        values = {name: int(counts.get(name, 0)) for name in WINDOW_COUNTS}
        return self._update_held(
            window_id,
            owner,
            status=DONE,
            lease_expires_at=None,
            run_id=run_id,
            error=None,
            updated_at=utcnow(),
            **values,
        )

    def fail(self, window_id: int, owner: str, error: str, run_id: int | None) -> bool:
        return self._update_held(
            window_id,
            owner,
            status=FAILED,
            lease_expires_at=None,
            run_id=run_id,
            error=error[:2000],
            updated_at=utcnow(),
        )

    def release(self, window_id: int, owner: str) -> bool:
        """Give a window back untouched (a graceful stop): the next claim takes it at once."""
        return self._update_held(
            window_id, owner, status=PENDING, lease_expires_at=None, updated_at=utcnow()
        )

    def _update_held(self, window_id: int, owner: str, **values: object) -> bool:
        with self.store._transaction() as conn:
            changed = conn.execute(
                update(backfill_window)
                .where(
                    backfill_window.c.id == window_id,
                    backfill_window.c.lease_owner == owner,
                    backfill_window.c.status == RUNNING,
                )
                .values(**values)
            ).rowcount
        return bool(changed)

    def windows(self) -> list[Window]:
        with self.store.engine.connect() as conn:
            rows = conn.execute(
                select(backfill_window)
                .where(backfill_window.c.backfill_key == self.key)
                .order_by(backfill_window.c.date_from)
            ).all()
        return [_window(row) for row in rows]

    def summary(self) -> WindowSummary:
        by_status: dict[str, int] = {}
        fetched = 0
        next_expiry: datetime | None = None
        for window in self.windows():
            by_status[window.status] = by_status.get(window.status, 0) + 1
            fetched += window.counts.get("fetched", 0) if window.status == DONE else 0
            if window.status == RUNNING and window.lease_expires_at is not None:
                expiry = window.lease_expires_at
                next_expiry = expiry if next_expiry is None else min(next_expiry, expiry)
        return WindowSummary(
            total=sum(by_status.values()),
            pending=by_status.get(PENDING, 0),
            running=by_status.get(RUNNING, 0),
            done=by_status.get(DONE, 0),
            failed=by_status.get(FAILED, 0),
            fetched=fetched,
            next_expiry=next_expiry,
        )

    def _get(self, conn: Connection, window_id: int) -> Window:
        row = conn.execute(select(backfill_window).where(backfill_window.c.id == window_id)).one()
        return _window(row)


def _window(row: Row[Any]) -> Window:
    return Window(
        id=row.id,
        backfill_key=row.backfill_key,
        source=row.source,
        date_from=row.date_from,
        date_to=row.date_to,
        status=row.status,
        lease_owner=row.lease_owner,
        lease_expires_at=row.lease_expires_at,
        attempts=row.attempts,
        error=row.error,
        counts={name: getattr(row, name) for name in WINDOW_COUNTS},
    )


# ----------------------------------------------------------------------------- source locks


class SourceLock(Protocol):
    """Exclusive right to sync one source, held for the length of a run."""

    owner: str

    def acquire(self) -> bool:
        """Take the lock if free (never waits); True when this process now holds it."""

    def renew(self) -> bool:
        """Keep holding it; False when it was lost."""

    def release(self) -> None: ...


def source_lock(store: Store, source: str, lease: timedelta) -> SourceLock:
    """The best lock the backend offers: an advisory lock on PostgreSQL, else a lease row."""
    if store.dialect == "postgresql":
        return AdvisorySourceLock(store, source)
    return LeaseSourceLock(store, source, lease)


def _lock_owner(store: Store) -> str:
    # A token per lock object: two runs in one process must not both "hold" it.
    return f"{store.owner}:{uuid.uuid4().hex[:8]}"


# Lock sessions live outside the store's pool: a daemon with many sources would otherwise tie
# up pooled connections for whole runs, and a closed lock connection must really end its
# session (which is what frees an advisory lock whatever else went wrong).
_lock_engines: weakref.WeakKeyDictionary[Store, Engine] = weakref.WeakKeyDictionary()
_lock_engines_guard = threading.Lock()


def _lock_engine(store: Store) -> Engine:
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

    def __init__(self, store: Store, source: str) -> None:
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

    def __init__(self, store: Store, source: str, lease: timedelta) -> None:
        self.store = store
        self.source = source
        self.lease = lease
        self.owner = _lock_owner(store)

    def acquire(self) -> bool:
        now = utcnow()
        try:
            with self.store._transaction() as conn:
                row = conn.execute(
                    select(_LOCK_ROWS.c.owner, _LOCK_ROWS.c.expires_at).where(
                        _LOCK_ROWS.c.source == self.source
                    )
                ).first()
                values = {"owner": self.owner, "acquired_at": now, "expires_at": now + self.lease}
                if row is None:
                    conn.execute(insert(_LOCK_ROWS).values(source=self.source, **values))
                elif row.owner == self.owner or row.expires_at <= now or _dead_here(row.owner):
                    conn.execute(
                        update(_LOCK_ROWS)
                        .where(_LOCK_ROWS.c.source == self.source)
                        .values(**values)
                    )
                else:
                    return False
        except StoreError:
            # Another replica inserted the row between our read and our write.
            return False
        return True

    def renew(self) -> bool:
        now = utcnow()
        with self.store._transaction() as conn:
            changed = conn.execute(
                update(_LOCK_ROWS)
                .where(_LOCK_ROWS.c.source == self.source, _LOCK_ROWS.c.owner == self.owner)
                .values(expires_at=now + self.lease)
            ).rowcount
        return bool(changed)

    def release(self) -> None:
        with self.store._transaction() as conn:
            conn.execute(
                _LOCK_ROWS.delete().where(
                    _LOCK_ROWS.c.source == self.source, _LOCK_ROWS.c.owner == self.owner
                )
            )


def close_own_running_runs(store: Store, source: str, kind: str = "sync") -> int:
    """This process's runs of `source` still marked running (cut off at shutdown) → interrupted.

    Scoped to our owner and kind: another replica's or a backfill's live run is left alone.
    """
    with store._transaction() as conn:
        return int(
            conn.execute(
                update(sync_run)
                .where(
                    sync_run.c.source == source,
                    sync_run.c.kind == kind,
                    sync_run.c.owner == store.owner,
                    sync_run.c.status == "running",
                )
                .values(
                    status="interrupted",
                    finished_at=utcnow(),
                    error="cut off at shutdown; the next run resumes",
                )
            ).rowcount
        )
