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

Lease times come from the database's clock on PostgreSQL (`now()` inside the statements that
set, renew and test a lease), so a replica whose host clock is skewed can neither take over a
live lease nor hold one past its end. SQLite is one host: its leases use this process's clock.
The same statements run on both; only the SQL that stands for "now" differs (`_Clock`).
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
    ColumnElement,
    Connection,
    Engine,
    Interval,
    Row,
    and_,
    case,
    create_engine,
    func,
    insert,
    literal,
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
from connector.store.schema import UtcDateTime, backfill_window, sync_run
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
    # When the earliest lease of a running window runs out (a wait bound for idle workers),
    # and "now" on the clock that decides it: compare the two, never with a local clock.
    next_expiry: datetime | None = None
    as_of: datetime | None = None

    @property
    def finished(self) -> bool:
        return self.pending == 0 and self.running == 0


class _Clock:
    """What "now" is for lease decisions, as SQL to put inside the statement that decides.

    PostgreSQL: the server's `now()` (the start of the transaction, so every statement of one
    claim agrees), whatever the clock of the host the worker runs on says. Elsewhere (SQLite,
    one host): this process's clock, read once when the clock is made.
    """

    def __init__(self, store: Store) -> None:
        self._local = None if store.dialect == "postgresql" else utcnow()

    def now(self) -> ColumnElement[datetime]:
        if self._local is None:
            return func.now(type_=UtcDateTime())
        return literal(self._local, UtcDateTime())

    def plus(self, span: timedelta) -> ColumnElement[datetime]:
        if self._local is None:
            return func.now(type_=UtcDateTime()) + literal(span, Interval())
        return literal(self._local + span, UtcDateTime())


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
        rows = [
            {
                "backfill_key": self.key,
                "source": self.source,
                "date_from": start,
                "date_to": end,
                "status": PENDING,
                "attempts": 0,
                **{name: 0 for name in WINDOW_COUNTS},
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
        ).values(updated_at=_Clock(self.store).now())
        # Counted from RETURNING: an executemany's rowcount is -1 on psycopg.
        with self.store._transaction() as conn:
            return len(conn.execute(statement.returning(backfill_window.c.id), rows).all())

    def reset_failed(self) -> int:
        """Failed windows become pending again: re-running the command retries them."""
        with self.store._transaction() as conn:
            return int(
                conn.execute(
                    update(backfill_window)
                    .where(backfill_window.c.backfill_key == self.key)
                    .where(backfill_window.c.status == FAILED)
                    .values(status=PENDING, updated_at=_Clock(self.store).now())
                ).rowcount
            )

    def claim(self, owner: str, lease: timedelta) -> Window | None:
        """Lease the earliest pending (or lease-expired) window to `owner`; None if none is free."""
        clock = _Clock(self.store)
        claimable = or_(
            backfill_window.c.status == PENDING,
            and_(
                backfill_window.c.status == RUNNING,
                backfill_window.c.lease_expires_at < clock.now(),
            ),
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
                        finished_at=clock.now(),
                        error="worker lost its window lease; the window was taken over",
                    )
                )
            conn.execute(
                update(backfill_window)
                .where(backfill_window.c.id == window_id)
                .values(
                    status=RUNNING,
                    lease_owner=owner,
                    lease_expires_at=clock.plus(lease),
                    attempts=backfill_window.c.attempts + 1,
                    error=None,
                    updated_at=clock.now(),
                )
            )
            return self._get(conn, window_id)

    def renew(self, window_id: int, owner: str, lease: timedelta) -> bool:
        """Extend a held lease; False when it was lost: expired (taken over or not) by the
        deciding clock. An expired lease is not revived: another worker may be taking it."""
        clock = _Clock(self.store)
        values = {"lease_expires_at": clock.plus(lease), "updated_at": clock.now()}
        return self._update_held(window_id, owner, values, live_at=clock.now())

    def finish(
        self, window_id: int, owner: str, counts: Mapping[str, int], run_id: int | None
    ) -> bool:
        values: dict[str, object] = {name: int(counts.get(name, 0)) for name in WINDOW_COUNTS}
        values.update(status=DONE, lease_expires_at=None, run_id=run_id, error=None)
        return self._update_held(window_id, owner, values)

    def fail(self, window_id: int, owner: str, error: str, run_id: int | None) -> bool:
        values = {
            "status": FAILED,
            "lease_expires_at": None,
            "run_id": run_id,
            "error": error[:2000],
        }
        return self._update_held(window_id, owner, values)

    def release(self, window_id: int, owner: str) -> bool:
        """Give a window back untouched (a graceful stop): the next claim takes it at once."""
        return self._update_held(window_id, owner, {"status": PENDING, "lease_expires_at": None})

    def _update_held(
        self,
        window_id: int,
        owner: str,
        values: Mapping[str, object],
        *,
        live_at: ColumnElement[datetime] | None = None,
    ) -> bool:
        """Change a window `owner` holds (with `live_at`: only while its lease runs past it)."""
        held = [
            backfill_window.c.id == window_id,
            backfill_window.c.lease_owner == owner,
            backfill_window.c.status == RUNNING,
        ]
        if live_at is not None:
            held.append(backfill_window.c.lease_expires_at > live_at)
        statement = update(backfill_window).where(*held)
        statement = statement.values({"updated_at": _Clock(self.store).now(), **values})
        with self.store._transaction() as conn:
            changed = conn.execute(statement).rowcount
        return bool(changed)

    def windows(self) -> list[Window]:
        with self.store.engine.connect() as conn:
            return self._windows(conn)

    def _windows(self, conn: Connection) -> list[Window]:
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
        with self.store.engine.connect() as conn:
            as_of = conn.execute(select(_Clock(self.store).now())).scalar_one()
            windows = self._windows(conn)
        for window in windows:
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
            as_of=as_of,
        )

    def _get(self, conn: Connection, window_id: int) -> Window:
        row = conn.execute(select(backfill_window).where(backfill_window.c.id == window_id)).one()
        return _window(row)


@dataclass(frozen=True, slots=True)
class HeldLease:
    """A running window's lease: who holds it and until when (by the deciding clock)."""

    date_from: date
    date_to: date
    owner: str | None
    expires_at: datetime | None
    # False once the lease ran out: the holder is presumably gone, the window claimable.
    live: bool


@dataclass(frozen=True, slots=True)
class FailedWindow:
    date_from: date
    date_to: date
    attempts: int
    error: str | None


@dataclass(frozen=True, slots=True)
class BackfillStatus:
    """Where one backfill stands, for `connector backfill-status`."""

    key: str
    source: str
    date_from: date
    date_to: date
    total: int
    pending: int
    leased: int  # running under a live lease
    expired: int  # running, lease run out: waiting for a worker to take it over
    done: int
    failed: int
    counts: dict[str, int]  # summed over the done windows
    last_activity: datetime
    as_of: datetime
    leases: tuple[HeldLease, ...] = ()
    failures: tuple[FailedWindow, ...] = ()

    @property
    def finished(self) -> bool:
        return self.done == self.total

    @property
    def state(self) -> str:
        """complete | running (a live lease) | failed (only failed windows left) | stopped."""
        if self.finished:
            return "complete"
        if self.leased:
            return "running"
        if self.pending == 0 and self.expired == 0:
            return "failed"
        return "stopped"


def backfill_statuses(store: Store, source: str | None = None) -> list[BackfillStatus]:
    """Every stored backfill (or one source's), by source and first date; read-only."""
    bw = backfill_window
    clock = _Clock(store)
    done = bw.c.status == DONE
    leased = and_(bw.c.status == RUNNING, bw.c.lease_expires_at > clock.now())

    def count(condition: ColumnElement[bool]) -> ColumnElement[int]:
        return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)

    # One statement, so that the counts agree with each other (and `total`) on a busy table.
    totals = select(
        bw.c.backfill_key,
        bw.c.source,
        func.min(bw.c.date_from).label("date_from"),
        func.max(bw.c.date_to).label("date_to"),
        func.count().label("total"),
        *(count(bw.c.status == status).label(status) for status in (PENDING, DONE, FAILED)),
        count(bw.c.status == RUNNING).label(RUNNING),
        count(leased).label("leased"),
        *(
            func.coalesce(func.sum(case((done, bw.c[name]), else_=0)), 0).label(name)
            for name in WINDOW_COUNTS
        ),
        func.max(bw.c.updated_at).label("last_activity"),
    ).group_by(bw.c.backfill_key, bw.c.source)
    open_windows = select(
        bw.c.backfill_key,
        bw.c.date_from,
        bw.c.date_to,
        bw.c.status,
        bw.c.lease_owner,
        bw.c.lease_expires_at,
        bw.c.attempts,
        bw.c.error,
    ).where(bw.c.status.in_((RUNNING, FAILED)))
    if source is not None:
        totals = totals.where(bw.c.source == source)
        open_windows = open_windows.where(bw.c.source == source)
    with store.engine.connect() as conn:
        # PostgreSQL's now() is the transaction's start: the same moment in every statement.
        as_of = conn.execute(select(clock.now())).scalar_one()
        rows = conn.execute(totals).all()
        details = conn.execute(open_windows.order_by(bw.c.date_from)).all()
    leases: dict[str, list[HeldLease]] = {}
    failures: dict[str, list[FailedWindow]] = {}
    for row in details:
        if row.status == RUNNING:
            live = row.lease_expires_at is not None and row.lease_expires_at > as_of
            leases.setdefault(row.backfill_key, []).append(
                HeldLease(row.date_from, row.date_to, row.lease_owner, row.lease_expires_at, live)
            )
        else:
            failures.setdefault(row.backfill_key, []).append(
                FailedWindow(row.date_from, row.date_to, row.attempts, row.error)
            )
    statuses = []
    for row in rows:
        statuses.append(
            BackfillStatus(
                key=row.backfill_key,
                source=row.source,
                date_from=row.date_from,
                date_to=row.date_to,
                total=int(row.total),
                pending=int(getattr(row, PENDING)),
                leased=int(row.leased),
                expired=int(getattr(row, RUNNING)) - int(row.leased),
                done=int(getattr(row, DONE)),
                failed=int(getattr(row, FAILED)),
                counts={name: int(getattr(row, name)) for name in WINDOW_COUNTS},
                last_activity=row.last_activity,
                as_of=as_of,
                leases=tuple(leases.get(row.backfill_key, ())),
                failures=tuple(failures.get(row.backfill_key, ())),
            )
        )
    return sorted(statuses, key=lambda status: (status.source, status.date_from, status.key))


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
        clock = _Clock(self.store)
        values = {
            "owner": self.owner,
            "acquired_at": clock.now(),
            "expires_at": clock.plus(self.lease),
        }
        try:
            with self.store._transaction() as conn:
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
        with self.store._transaction() as conn:
            changed = conn.execute(
                update(_LOCK_ROWS)
                .where(_LOCK_ROWS.c.source == self.source, _LOCK_ROWS.c.owner == self.owner)
                .values(expires_at=_Clock(self.store).plus(self.lease))
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
