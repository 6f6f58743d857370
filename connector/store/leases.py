"""Backfill windows under leases (`BackfillWindows`), and the clock every lease decision reads.

A backfill's date range is cut into windows, each claimed under a lease. PostgreSQL claims
with `SELECT ... FOR UPDATE SKIP LOCKED`, so concurrent workers on several machines never wait
for each other nor claim the same window; SQLite serialises the claim in one `BEGIN IMMEDIATE`
transaction. A lease that is not renewed expires, and the window becomes claimable again: a
killed worker's window is taken over.

Lease times come from the database's clock on PostgreSQL (`now()` inside the statements that
set, renew and test a lease), so a replica whose host clock is skewed can neither take over a
live lease nor hold one past its end. SQLite is one host: its leases use this process's clock
(`utcnow` here, which tests patch to skew it). The same statements run on both; only the SQL
that stands for "now" differs (`LeaseClock`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Interval,
    Row,
    and_,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from connector.store.database import Database, utcnow
from connector.store.schema import UtcDateTime, backfill_window, sync_run

WINDOW_COUNTS = ("fetched", "inserted", "updated", "unchanged", "quarantined")
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
    # Set by `claim` when it took the window over from a worker whose lease ran out.
    previous_owner: str | None = None


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


class LeaseClock:
    """What "now" is for lease decisions, as SQL to put inside the statement that decides.

    PostgreSQL: the server's `now()` (the start of the transaction, so every statement of one
    claim agrees), whatever the clock of the host the worker runs on says. Elsewhere (SQLite,
    one host): this process's clock, read once when the clock is made.
    """

    def __init__(self, store: Database) -> None:
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


class BackfillWindows:
    """The window rows of one backfill (one key), and the lease protocol over them."""

    def __init__(self, store: Database, key: str, source: str) -> None:
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
        ).values(updated_at=LeaseClock(self.store).now())
        # Counted from RETURNING: an executemany's rowcount is -1 on psycopg.
        with self.store.transaction() as conn:
            return len(conn.execute(statement.returning(backfill_window.c.id), rows).all())

    def reset_failed(self) -> int:
        """Failed windows become pending again: re-running the command retries them."""
        with self.store.transaction() as conn:
            return int(
                conn.execute(
                    update(backfill_window)
                    .where(backfill_window.c.backfill_key == self.key)
                    .where(backfill_window.c.status == FAILED)
                    .values(status=PENDING, updated_at=LeaseClock(self.store).now())
                ).rowcount
            )

    def claim(self, owner: str, lease: timedelta) -> Window | None:
        """Lease the earliest pending (or lease-expired) window to `owner`; None if none is free."""
        clock = LeaseClock(self.store)
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
        with self.store.transaction() as conn:
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
            taken_from = previous.lease_owner if previous.status == RUNNING else None
            return replace(self._get(conn, window_id), previous_owner=taken_from)

    def renew(self, window_id: int, owner: str, lease: timedelta) -> bool:
        """Extend a held lease; False when it was lost: expired (taken over or not) by the
        deciding clock. An expired lease is not revived: another worker may be taking it."""
        clock = LeaseClock(self.store)
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
        statement = statement.values({"updated_at": LeaseClock(self.store).now(), **values})
        with self.store.transaction() as conn:
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
        return [window_of(row) for row in rows]

    def summary(self) -> WindowSummary:
        by_status: dict[str, int] = {}
        fetched = 0
        next_expiry: datetime | None = None
        with self.store.engine.connect() as conn:
            as_of = conn.execute(select(LeaseClock(self.store).now())).scalar_one()
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
        return window_of(row)


def window_of(row: Row[Any]) -> Window:
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
