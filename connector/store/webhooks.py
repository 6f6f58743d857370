"""The `webhook_event` table: vendor webhooks recorded before they are answered, then claimed
by the push processor (`connector.pipeline.push`), retried with back-off while the vendor
cannot be reached, and marked done once their invoice went through the normal store path.

Recording is an insert that does nothing on a known `(source, webhook_id)` (SQLite's and
PostgreSQL's ON CONFLICT DO NOTHING), so two deliveries of one event racing each other still
store it once, and the caller learns which of them was first. Done events are deleted once
they are older than the retention (`prune`): a replay of one that old is refused as stale
long before (the timestamp tolerance is minutes), so its row no longer guards anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import case, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from connector.errors import StoreError
from connector.store.database import Database, chunks, utcnow
from connector.store.schema import webhook_event

PENDING, DONE, FAILED = "pending", "done", "failed"
# Rows deleted per transaction when pruning: a first prune of a big table never holds the
# write lock for long (a sync and new events get their turn between batches).
PRUNE_BATCH = 1000
# How often the worker prunes (its rounds are seconds apart).
PRUNE_EVERY = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """One stored event as the processor needs it (no payload: only what to fetch)."""

    id: int
    source: str
    webhook_id: str
    event: str
    invoice_id: str
    event_at: datetime
    attempts: int


class WebhookEvents:
    """Reads and writes of `webhook_event` over an opened store."""

    def __init__(self, store: Database) -> None:
        self.store = store
        self._pruned_at: datetime | None = None

    def record(
        self, source: str, webhook_id: str, event: str, invoice_id: str, event_at: datetime
    ) -> bool:
        """Store one event as pending, durably (committed on return). False: that webhook id
        of that source was stored before (a replay or a redelivery), and nothing changed."""
        now = utcnow()
        values = {
            "source": source,
            "webhook_id": webhook_id,
            "event": event,
            "invoice_id": invoice_id,
            "event_at": event_at,
            "received_at": now,
            "status": PENDING,
            "attempts": 0,
            "next_attempt_at": now,
        }
        dialect = postgresql if self.store.dialect == "postgresql" else sqlite
        statement = (
            dialect.insert(webhook_event)
            .values(values)
            .on_conflict_do_nothing(index_elements=["source", "webhook_id"])
            # A returned id says the row is new (rowcount is not reliable here on psycopg).
            .returning(webhook_event.c.id)
        )
        with self.store.transaction() as conn:
            return conn.execute(statement).first() is not None

    def due(
        self, source: str, *, limit: int = 100, now: datetime | None = None
    ) -> list[WebhookEvent]:
        """Pending events of `source` whose next attempt is due, oldest first."""
        moment = now or utcnow()
        query = (
            select(webhook_event)
            .where(
                webhook_event.c.source == source,
                webhook_event.c.status == PENDING,
                webhook_event.c.next_attempt_at <= moment,
            )
            .order_by(webhook_event.c.id)
            .limit(limit)
        )
        with _reading(), self.store.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            WebhookEvent(
                r.id, r.source, r.webhook_id, r.event, r.invoice_id, r.event_at, r.attempts
            )
            for r in rows
        ]

    def sources_due(self, now: datetime | None = None) -> list[str]:
        """The sources with at least one pending event due now."""
        moment = now or utcnow()
        query = (
            select(webhook_event.c.source)
            .where(webhook_event.c.status == PENDING, webhook_event.c.next_attempt_at <= moment)
            .distinct()
            .order_by(webhook_event.c.source)
        )
        with _reading(), self.store.engine.connect() as conn:
            return list(conn.execute(query).scalars())

    def next_due_at(self) -> datetime | None:
        """When the earliest pending event is due (None: nothing pending)."""
        query = select(func.min(webhook_event.c.next_attempt_at)).where(
            webhook_event.c.status == PENDING
        )
        with _reading(), self.store.engine.connect() as conn:
            value = conn.execute(query).scalar()
        return _utc(value)

    def mark_done(self, ids: Sequence[int], *, run_id: int, outcome: str) -> None:
        now = utcnow()
        with self.store.transaction() as conn:
            for chunk in chunks(list(ids)):
                conn.execute(
                    update(webhook_event)
                    .where(webhook_event.c.id.in_(chunk), webhook_event.c.status == PENDING)
                    .values(
                        status=DONE,
                        processed_at=now,
                        outcome=outcome,
                        run_id=run_id,
                        attempts=webhook_event.c.attempts + 1,
                        error=None,
                    )
                )

    def mark_retry(
        self,
        ids: Sequence[int],
        *,
        error: str,
        next_attempt_at: datetime,
        give_up_after: int,
        run_id: int | None = None,
    ) -> None:
        """One more failed attempt: due again at `next_attempt_at`, or failed for good once
        it has had `give_up_after` attempts (the next poll still brings the invoice)."""
        now = utcnow()
        attempts = webhook_event.c.attempts + 1
        with self.store.transaction() as conn:
            for chunk in chunks(list(ids)):
                conn.execute(
                    update(webhook_event)
                    .where(webhook_event.c.id.in_(chunk), webhook_event.c.status == PENDING)
                    .values(
                        attempts=attempts,
                        error=error[:1000],
                        run_id=run_id,
                        next_attempt_at=next_attempt_at,
                        status=_status_after(attempts, give_up_after),
                        processed_at=now,
                    )
                )

    def prune(self, retention: timedelta, *, now: datetime | None = None) -> int:
        """Delete done events processed more than `retention` ago; returns how many. Pending
        and failed events stay (a failed one is what an operator looks into)."""
        cutoff = (now or utcnow()) - retention
        old_done = (
            select(webhook_event.c.id)
            .where(webhook_event.c.status == DONE, webhook_event.c.processed_at < cutoff)
            .order_by(webhook_event.c.id)
            .limit(PRUNE_BATCH)
        )
        deleted = 0
        while True:
            with self.store.transaction() as conn:
                ids = list(conn.execute(old_done).scalars())
                if ids:
                    conn.execute(delete(webhook_event).where(webhook_event.c.id.in_(ids)))
            deleted += len(ids)
            if len(ids) < PRUNE_BATCH:
                return deleted

    def prune_if_due(
        self, retention: timedelta, *, now: datetime | None = None, every: timedelta = PRUNE_EVERY
    ) -> int | None:
        """`prune` at most once per `every` (the worker calls this each round); None when it
        was not due yet."""
        moment = now or utcnow()
        if self._pruned_at is not None and moment - self._pruned_at < every:
            return None
        self._pruned_at = moment
        return self.prune(retention, now=moment)

    def counts(self, source: str | None = None) -> dict[str, int]:
        """Events per status (pending, done, failed), of one source or all."""
        query = select(webhook_event.c.status, func.count()).group_by(webhook_event.c.status)
        if source is not None:
            query = query.where(webhook_event.c.source == source)
        with _reading(), self.store.engine.connect() as conn:
            found = {status: int(n) for status, n in conn.execute(query).all()}
        return {status: found.get(status, 0) for status in (PENDING, DONE, FAILED)}

    def all(self, source: str | None = None) -> list[dict[str, Any]]:
        """Every stored event as a dict, oldest first (for `status`-like views and tests)."""
        query = select(webhook_event).order_by(webhook_event.c.id)
        if source is not None:
            query = query.where(webhook_event.c.source == source)
        with _reading(), self.store.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]


def _status_after(attempts: Any, give_up_after: int) -> Any:
    return case((attempts >= give_up_after, FAILED), else_=PENDING)


def _utc(value: Any) -> datetime | None:
    # An aggregate loses the column type: SQLite hands back its naive UTC text.
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class _reading:
    """Read failures as `StoreError`, named by class only."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: Any, _tb: Any) -> None:
        if isinstance(exc, SQLAlchemyError):
            raise StoreError(f"store read failed: {exc.__class__.__name__}") from exc
