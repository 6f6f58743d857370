"""Read-only views of backfills for `connector backfill-status` and for resuming a backfill.

Nothing here changes a row: a status read never claims, renews or expires a lease. Whether a
lease is live is judged by the same clock that decides it (`LeaseClock`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import ColumnElement, and_, case, func, select

from connector.store.database import Database
from connector.store.leases import DONE, FAILED, PENDING, RUNNING, WINDOW_COUNTS, LeaseClock
from connector.store.schema import backfill_window


def open_backfill_keys(store: Database, source: str, since: date) -> list[str]:
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


def backfill_statuses(store: Database, source: str | None = None) -> list[BackfillStatus]:
    """Every stored backfill (or one source's), by source and first date; read-only."""
    bw = backfill_window
    clock = LeaseClock(store)
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
