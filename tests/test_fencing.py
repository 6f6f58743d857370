"""Fencing tokens, called on the store directly: a run whose source lock was lost can neither
write a batch nor move its checkpoint, and the database itself refuses it (issue 15, item 6).

PostgreSQL: the lock is a session advisory lock; its backend is killed with
`pg_terminate_backend`, as a server restart or a dropped connection would end it. SQLite: the
lock is a lease row, expired by moving a stopped clock. In both, the new holder's epoch is one
more than the old, it closes the old run at the moment it takes over (so the run history shows
no overlap) and names the previous owner.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url

from connector.errors import LockLost
from connector.model import Category, Invoice, InvoiceStatus, LineItem, Patient
from connector.pipeline.validation import normalized
from connector.store import Accepted, Store, leases
from connector.store.coordination import (
    AdvisorySourceLock,
    BackfillWindows,
    LeaseSourceLock,
    backfill_key,
    source_lock,
)
from connector.store.schema import source_lock as lock_rows
from connector.store.store import sqlite_url_for, utcnow

SOURCE = "clinic"
LEASE = timedelta(seconds=30)
CURSOR = datetime(2025, 3, 2, 8, 30, tzinfo=UTC)
SINCE, UNTIL = date(2025, 1, 1), date(2025, 1, 31)


def invoice(invoice_id: str) -> Accepted:
    item = LineItem(
        category=Category.LABORATORY,
        description="Blood panel",
        quantity=Decimal("1"),
        unit_price=Decimal("40.00"),
        total=Decimal("40.00"),
        source_category="lab",
        category_rule="exact:category",
    )
    made = normalized(
        Invoice(
            source=SOURCE,
            id=invoice_id,
            invoice_number=f"N-{invoice_id}",
            invoice_date=date(2025, 3, 1),
            total_amount=Decimal("40.00"),
            currency="USD",
            status=InvoiceStatus.PAID,
            source_status="paid",
            facility="Riverside Family Clinic",
            patient=Patient(name="Ruth Mensah", policy_number="POL-123456"),
            items=[item],
            source_updated_at=CURSOR,
        )
    )
    return Accepted(made, made.content_hash())


def write(store: Store, run_id: int, *ids: str) -> None:
    store.write_batch(
        run_id,
        SOURCE,
        [invoice(i) for i in ids],
        [],
        fetched=len(ids),
        resume={"position": ids[-1]},
    )


def assert_fenced_off(store: Store, stale_run: int) -> None:
    """The stale run's batch and its ending "ok" are both refused, and nothing moved."""
    before = store.count_invoices(SOURCE)
    state = store.get_state(SOURCE)
    with pytest.raises(LockLost, match="lock of this run was lost"):
        write(store, stale_run, "INV-STALE")
    with pytest.raises(LockLost):
        store.finish_run(stale_run, SOURCE, status="ok", cursor_after=CURSOR, clear_resume=True)
    assert store.count_invoices(SOURCE) == before
    assert "INV-STALE" not in store.content_hashes(SOURCE)
    after = store.get_state(SOURCE)
    assert (after.cursor, after.resume) == (state.cursor, state.resume)


def run_row(store: Store, run_id: int) -> tuple[str, datetime | None, str | None]:
    (run,) = [r for r in store.runs(SOURCE) if r.id == run_id]
    return run.status, run.finished_at, run.error


# ----------------------------------------------------------------------------- PostgreSQL


def lock_backend(store: Store) -> int:
    with store.engine.connect() as conn:
        pid = conn.execute(
            select(lock_rows.c.backend_pid).where(lock_rows.c.source == SOURCE)
        ).scalar_one()
    assert pid is not None
    return int(pid)


def terminate_backend(pg_url: str, pid: int) -> None:
    engine = create_engine(make_url(pg_url), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_a_killed_lock_session_fences_off_its_run_on_postgresql(pg_url: str) -> None:
    with Store(pg_url) as store:
        first = source_lock(store, SOURCE, LEASE)
        assert isinstance(first, AdvisorySourceLock)
        assert first.acquire()
        assert first.epoch == 1
        stale = store.start_run(SOURCE, "sync", None)
        write(store, stale, "INV-1", "INV-2")

        terminate_backend(pg_url, lock_backend(store))
        # Lost before anyone took it over: already refused (the lock's backend is gone).
        assert_fenced_off(store, stale)
        assert not first.renew()

        second = source_lock(store, SOURCE, LEASE)
        assert second.acquire()
        assert second.epoch == 2
        assert second.previous_owner == first.owner
        status, finished, error = run_row(store, stale)
        assert status == "interrupted" and finished is not None
        assert error is not None and second.owner in error and "epoch 2" in error
        # After the takeover, refused by the epoch too.
        assert_fenced_off(store, stale)

        fresh = store.start_run(SOURCE, "sync", None)
        write(store, fresh, "INV-3")
        store.finish_run(fresh, SOURCE, status="ok", cursor_after=CURSOR, clear_resume=True)
        # The stale run's own end, arriving late, does not reopen or move its closed row.
        store.finish_run(stale, SOURCE, status="failed", error="boom")
        assert run_row(store, stale)[:2] == (status, finished)
        assert store.count_invoices(SOURCE) == 3
        assert store.get_state(SOURCE).cursor == CURSOR
        (started_fresh,) = [r.started_at for r in store.runs(SOURCE) if r.id == fresh]
        assert finished <= started_fresh
        second.release()
        first.release()


# ----------------------------------------------------------------------------- SQLite


@pytest.fixture
def stopped_clock(monkeypatch: pytest.MonkeyPatch) -> list[datetime]:
    now = [utcnow()]
    monkeypatch.setattr(leases, "utcnow", lambda: now[0])
    return now


def test_an_expired_lease_fences_off_its_run_on_sqlite(
    tmp_path: Path, stopped_clock: list[datetime]
) -> None:
    with Store(sqlite_url_for(tmp_path / "store.db")) as store:
        first = source_lock(store, SOURCE, LEASE)
        assert isinstance(first, LeaseSourceLock)
        assert first.acquire()
        stale = store.start_run(SOURCE, "sync", None)
        write(store, stale, "INV-1")
        assert first.renew()

        # The holder stalls past its lease: lost, even before anyone takes the source.
        stopped_clock[0] += LEASE + timedelta(seconds=1)
        assert_fenced_off(store, stale)
        # Expiry is loss: a late renewal does not revive the lease.
        assert not first.renew()

        second = source_lock(store, SOURCE, LEASE)
        assert second.acquire()
        assert (first.epoch, second.epoch) == (1, 2)
        assert second.previous_owner == first.owner
        assert run_row(store, stale)[0] == "interrupted"
        assert_fenced_off(store, stale)
        fresh = store.start_run(SOURCE, "sync", None)
        write(store, fresh, "INV-2")
        assert store.count_invoices(SOURCE) == 2


def test_epochs_only_grow_across_release_and_retake(
    tmp_path: Path, stopped_clock: list[datetime]
) -> None:
    # A released row is kept (never deleted): its epoch cannot come back for a stale run.
    with Store(sqlite_url_for(tmp_path / "store.db")) as store:
        epochs = []
        for _ in range(3):
            lock = source_lock(store, SOURCE, LEASE)
            assert lock.acquire()
            epochs.append(lock.epoch)
            # A clean hand-over closes nobody's run and names no previous owner.
            assert lock.previous_owner is None
            lock.release()
        assert epochs == [1, 2, 3]


def test_runs_outside_a_source_lock_are_not_fenced(tmp_path: Path) -> None:
    # `connector backfill` windows and direct store use carry no epoch: written as before.
    with Store(sqlite_url_for(tmp_path / "store.db")) as store:
        run_id = store.start_run(SOURCE, "backfill", None)
        write(store, run_id, "INV-1")
        store.finish_run(run_id, SOURCE, status="ok", track_state=False)
        assert store.count_invoices(SOURCE) == 1


def test_a_window_taken_over_names_its_previous_owner(
    tmp_path: Path, stopped_clock: list[datetime]
) -> None:
    # `backfill.window_taken_over` logs `Window.previous_owner`: the worker whose lease ran
    # out, not (as it once did) the worker taking the window.
    with Store(sqlite_url_for(tmp_path / "store.db")) as store:
        windows = BackfillWindows(store, backfill_key(SOURCE, SINCE, UNTIL), SOURCE)
        windows.ensure([(SINCE, UNTIL)])
        first = windows.claim("host-a:1:w0", LEASE)
        assert first is not None and first.previous_owner is None
        stopped_clock[0] += LEASE + timedelta(seconds=1)
        taken = windows.claim("host-b:2:w0", LEASE)
        assert taken is not None
        assert (taken.lease_owner, taken.previous_owner) == ("host-b:2:w0", "host-a:1:w0")
