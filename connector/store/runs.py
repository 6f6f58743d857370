"""Run bookkeeping: the `sync_run` audit trail (one row per run, its counters and outcome) and
`sync_state` (each source's cursor and the resume point of an unfinished run)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select, update

from connector.errors import LockLost, StoreError
from connector.store.database import Database, utcnow
from connector.store.leases import LeaseClock
from connector.store.locks import LOST_MESSAGE, fence_holds
from connector.store.schema import sync_run, sync_state


@dataclass(slots=True)
class BatchCounts:
    fetched: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    quarantined: int = 0
    released: int = 0

    def add(self, other: BatchCounts) -> None:
        for name in self.__slots__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(frozen=True, slots=True)
class SyncState:
    source: str
    cursor: datetime | None = None
    resume: dict[str, Any] | None = None
    last_run_id: int | None = None
    carry: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class RunRecord:
    id: int
    source: str
    kind: str
    status: str
    started_at: datetime
    finished_at: datetime | None
    owner: str
    error: str | None
    counts: dict[str, int] = field(default_factory=dict)
    cursor_before: datetime | None = None
    cursor_after: datetime | None = None


def upsert_state(conn: Connection, source: str, values: dict[str, Any]) -> None:
    """Set `values` on the source's sync_state row, creating the row on its first run."""
    changed = conn.execute(
        update(sync_state).where(sync_state.c.source == source).values(values)
    ).rowcount
    if not changed:
        conn.execute(insert(sync_state).values(source=source, **values))


def record_batch(
    conn: Connection,
    run_id: int,
    source: str,
    counts: BatchCounts,
    *,
    resume: dict[str, Any] | None,
    now: datetime,
    track_state: bool,
) -> None:
    """Add a batch's counts to its run and move the resume point, in the batch's transaction."""
    conn.execute(
        update(sync_run)
        .where(sync_run.c.id == run_id)
        .values(
            {
                **{
                    name: getattr(sync_run.c, name) + getattr(counts, name)
                    for name in BatchCounts.__slots__
                },
                "batches": sync_run.c.batches + 1,
            }
        )
    )
    if track_state:
        upsert_state(conn, source, {"resume": resume, "last_run_id": run_id, "updated_at": now})


def close_own_running_runs(
    store: Database,
    source: str,
    kind: str = "sync",
    *,
    status: str = "interrupted",
    error: str = "cut off at shutdown; the next run resumes",
) -> int:
    """This process's runs of `source` still marked running (cut off at shutdown, at the run
    bound, or after a lost lock) → `status` with `error`.

    Scoped to our owner and kind: another replica's or a backfill's live run is left alone,
    and so is a run another replica already closed when it took the source over.
    """
    with store.transaction() as conn:
        return int(
            conn.execute(
                update(sync_run)
                .where(
                    sync_run.c.source == source,
                    sync_run.c.kind == kind,
                    sync_run.c.owner == store.owner,
                    sync_run.c.status == "running",
                )
                .values(status=status, finished_at=utcnow(), error=error)
            ).rowcount
        )


class RunBookkeeping(Database):
    """The `Store` methods that start, finish and list runs and read sync state."""

    def get_state(self, source: str) -> SyncState:
        with self.engine.connect() as conn:
            row = conn.execute(select(sync_state).where(sync_state.c.source == source)).first()
        if row is None:
            return SyncState(source)
        return SyncState(source, row.cursor, row.resume, row.last_run_id, row.carry)

    def all_states(self) -> list[SyncState]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(sync_state).order_by(sync_state.c.source)).all()
        return [SyncState(r.source, r.cursor, r.resume, r.last_run_id, r.carry) for r in rows]

    def start_run(self, source: str, kind: str, cursor_before: datetime | None) -> int:
        """Record a new run as running. A sync run started while this process holds the
        source's lock carries the lock's epoch: its writes are fenced by it."""
        values = {
            "source": source,
            "kind": kind,
            "status": "running",
            "started_at": utcnow(),
            "owner": self.owner,
            "cursor_before": cursor_before,
            **{name: 0 for name in BatchCounts.__slots__},
            "batches": 0,
            "lock_epoch": self.held_epoch(source) if kind in ("sync", "webhook") else None,
        }
        with self.transaction() as conn:
            result = conn.execute(insert(sync_run).values(values))
            run_id = result.inserted_primary_key[0] if result.inserted_primary_key else None
        if run_id is None:
            raise StoreError("the store did not return a run id")
        return int(run_id)

    def finish_run(
        self,
        run_id: int,
        source: str,
        *,
        status: str,
        error: str | None = None,
        cursor_after: datetime | None = None,
        clear_resume: bool = False,
        track_state: bool = True,
        carry: dict[str, Any] | None = None,
    ) -> None:
        """End a run. A fenced run whose lock is lost moves no cursor and no resume point: an
        "ok" raises `LockLost`; any other end is recorded as "interrupted" unless the new
        holder already closed the run."""
        now = utcnow()
        with self.transaction() as conn:
            if fence_holds(conn, run_id, LeaseClock(self)) is False:
                if status == "ok":
                    raise LockLost(LOST_MESSAGE.replace("this batch", "the run's end"))
                conn.execute(
                    update(sync_run)
                    .where(sync_run.c.id == run_id, sync_run.c.status == "running")
                    .values(
                        status="interrupted",
                        finished_at=now,
                        error=f"source lock lost: {error}" if error else "source lock lost",
                    )
                )
                return
            conn.execute(
                update(sync_run)
                .where(sync_run.c.id == run_id)
                .values(status=status, error=error, finished_at=now, cursor_after=cursor_after)
            )
            if not track_state:
                return
            values: dict[str, Any] = {"last_run_id": run_id, "updated_at": now}
            if cursor_after is not None:
                values["cursor"] = cursor_after
            if clear_resume:
                values["resume"] = None
            if carry is not None:
                values["carry"] = carry
            upsert_state(conn, source, values)

    def runs(self, source: str | None = None, *, limit: int | None = None) -> list[RunRecord]:
        query = select(sync_run).order_by(sync_run.c.id.desc())
        if source:
            query = query.where(sync_run.c.source == source)
        if limit:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            RunRecord(
                id=r.id,
                source=r.source,
                kind=r.kind,
                status=r.status,
                started_at=r.started_at,
                finished_at=r.finished_at,
                owner=r.owner,
                error=r.error,
                counts={name: getattr(r, name) for name in (*BatchCounts.__slots__, "batches")},
                cursor_before=r.cursor_before,
                cursor_after=r.cursor_after,
            )
            for r in rows
        ]

    def mark_abandoned_runs(self, source: str, kind: str = "sync") -> int:
        """Close runs of this kind that never finished (a killed process). Only sound while the
        caller holds the source's sync lock: then no other live run of this kind can exist."""
        with self.transaction() as conn:
            return conn.execute(
                update(sync_run)
                .where(
                    sync_run.c.source == source,
                    sync_run.c.kind == kind,
                    sync_run.c.status == "running",
                )
                .values(status="interrupted", finished_at=utcnow(), error="process stopped mid-run")
            ).rowcount
