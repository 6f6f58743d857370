"""Lease times come from the database's clock on PostgreSQL: a worker whose own clock is an hour
off can neither take over a live backfill-window lease (or source lock) nor hold a lease past
its end. The skew is made by patching the function the lease clock reads "now" from.

On SQLite (one host) the local clock decides; the same lease statements are checked there for
their plain behaviour: renew only while live, take over only once expired."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import date, datetime, timedelta

import pytest
from sqlalchemy import func, select

from connector.store import Store, leases
from connector.store.coordination import BackfillWindows, LeaseSourceLock, Window, backfill_key
from connector.store.schema import source_lock as source_lock_rows
from connector.store.store import utcnow

SOURCE = "meditrak"
SINCE, UNTIL = date(2025, 1, 1), date(2025, 1, 21)
KEY = backfill_key(SOURCE, SINCE, UNTIL)
SLICES = [(SINCE, date(2025, 1, 7)), (date(2025, 1, 8), date(2025, 1, 14))]
LIVE = timedelta(minutes=10)
# Waited out by several tests, yet long enough that a loaded machine stalling between two
# statements does not end a lease the next statement still needs live.
SHORT = timedelta(seconds=2)
SKEW = timedelta(hours=1)


@pytest.fixture
def pg_store(pg_url: str) -> Iterator[Store]:
    with Store(pg_url) as store:
        yield store


class SkewedClock:
    """This process's clock as the lease clock sees it, shifted by `offset` on demand."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.offset = timedelta(0)
        monkeypatch.setattr(leases, "utcnow", lambda: utcnow() + self.offset)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> SkewedClock:
    return SkewedClock(monkeypatch)


def database_now(store: Store) -> datetime:
    with store.engine.connect() as conn:
        now = conn.execute(select(func.now())).scalar_one()
    assert isinstance(now, datetime)
    return now


def wait_past(store: Store, moment: datetime | None) -> None:
    """Until the database's clock is past `moment` (a lease end)."""
    assert moment is not None
    deadline = time.monotonic() + 10
    while database_now(store) <= moment:
        assert time.monotonic() < deadline, "the database clock did not pass the lease end"
        time.sleep(0.05)


def claimed(windows: BackfillWindows, owner: str, lease: timedelta) -> Window:
    window = windows.claim(owner, lease)
    assert window is not None, f"{owner} found nothing to claim"
    return window


@pytest.mark.postgres
def test_a_fast_clock_cannot_take_over_a_live_lease(pg_store: Store, clock: SkewedClock) -> None:
    windows = BackfillWindows(pg_store, KEY, SOURCE)
    windows.ensure(SLICES)
    held = claimed(windows, "host-a:1:w0", LIVE)

    clock.offset = SKEW  # host b's clock runs an hour ahead: every lease looks over to it
    second = claimed(windows, "host-b:2:w0", LIVE)
    assert second.id != held.id  # the pending window, not host a's live one
    assert windows.claim("host-b:2:w0", LIVE) is None
    # Its own lease ends by the database's clock, not an hour later.
    assert second.lease_expires_at is not None
    assert second.lease_expires_at - database_now(pg_store) <= LIVE
    assert windows.renew(second.id, "host-b:2:w0", LIVE)
    (renewed,) = [w for w in windows.windows() if w.id == second.id]
    assert renewed.lease_expires_at is not None
    assert renewed.lease_expires_at - database_now(pg_store) <= LIVE

    clock.offset = timedelta(0)
    assert windows.renew(held.id, "host-a:1:w0", LIVE)
    (still,) = [w for w in windows.windows() if w.id == held.id]
    assert (still.lease_owner, still.attempts) == ("host-a:1:w0", 1)


@pytest.mark.postgres
def test_a_fast_clock_cannot_hold_a_lease_past_its_end(pg_store: Store, clock: SkewedClock) -> None:
    windows = BackfillWindows(pg_store, KEY, SOURCE)
    windows.ensure(SLICES[:1])
    clock.offset = SKEW
    held = claimed(windows, "host-b:2:w0", SHORT)
    assert windows.renew(held.id, "host-b:2:w0", SHORT)
    (renewed,) = windows.windows()
    wait_past(pg_store, renewed.lease_expires_at)

    # Its worker stalled past the lease: it cannot renew it any more, by whatever clock.
    assert not windows.renew(held.id, "host-b:2:w0", SHORT)
    clock.offset = timedelta(0)
    taken = claimed(windows, "host-a:1:w0", LIVE)
    assert (taken.id, taken.attempts) == (held.id, 2)
    clock.offset = SKEW
    assert not windows.finish(held.id, "host-b:2:w0", {"fetched": 1}, None)
    assert not windows.renew(held.id, "host-b:2:w0", LIVE)
    (window,) = windows.windows()
    assert (window.status, window.lease_owner) == ("running", "host-a:1:w0")


@pytest.mark.postgres
def test_a_slow_clock_cannot_keep_an_expired_lease_nor_block_its_takeover(
    pg_store: Store, clock: SkewedClock
) -> None:
    windows = BackfillWindows(pg_store, KEY, SOURCE)
    windows.ensure(SLICES[:1])
    clock.offset = -SKEW  # host c's clock runs an hour behind: leases look live for an hour
    held = claimed(windows, "host-c:3:w0", SHORT)
    assert held.lease_expires_at is not None
    assert held.lease_expires_at > database_now(pg_store)  # not ended an hour ago
    wait_past(pg_store, held.lease_expires_at)
    assert not windows.renew(held.id, "host-c:3:w0", LIVE)

    # A slow clock does not hold back a takeover either: host c itself takes a dead lease.
    other = BackfillWindows(pg_store, KEY, SOURCE)
    clock.offset = timedelta(0)
    dead = claimed(other, "host-a:1:w0", SHORT)
    wait_past(pg_store, dead.lease_expires_at)
    clock.offset = -SKEW
    taken = claimed(windows, "host-c:3:w1", LIVE)
    assert (taken.id, taken.attempts, taken.lease_owner) == (held.id, 3, "host-c:3:w1")


@pytest.mark.postgres
def test_a_skewed_clock_cannot_take_a_live_lease_lock(pg_store: Store, clock: SkewedClock) -> None:
    # The lease-row lock (SQLite's source lock) follows the database clock too where it has one.
    first = LeaseSourceLock(pg_store, SOURCE, LIVE)
    assert first.acquire()
    clock.offset = SKEW
    fast = LeaseSourceLock(pg_store, SOURCE, LIVE)
    assert not fast.acquire()
    clock.offset = timedelta(0)
    first.release()
    clock.offset = SKEW
    assert fast.acquire()
    clock.offset = -SKEW
    slow = LeaseSourceLock(pg_store, SOURCE, SHORT)
    assert not slow.acquire()
    # The fast host's lock ends by the database's clock, so a slow host gets it after that.
    assert fast.renew()
    fast.lease = SHORT
    assert fast.renew()
    with pg_store.engine.connect() as conn:
        ends = conn.execute(select(source_lock_rows.c.expires_at)).scalar_one()
    wait_past(pg_store, ends)
    assert slow.acquire()


def test_leases_renew_only_while_live_and_are_taken_over_once_expired(store: Store) -> None:
    windows = BackfillWindows(store, KEY, SOURCE)
    windows.ensure(SLICES[:1])
    held = claimed(windows, "host-a:1:w0", SHORT)
    assert windows.claim("host-b:2:w0", LIVE) is None
    assert windows.renew(held.id, "host-a:1:w0", SHORT)
    (renewed,) = windows.windows()
    assert renewed.lease_expires_at is not None
    assert held.lease_expires_at is not None
    assert renewed.lease_expires_at >= held.lease_expires_at
    summary = windows.summary()
    assert summary.as_of is not None and summary.next_expiry == renewed.lease_expires_at

    deadline = time.monotonic() + 10
    while (windows.summary().as_of or renewed.lease_expires_at) <= renewed.lease_expires_at:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert not windows.renew(held.id, "host-a:1:w0", LIVE)
    taken = claimed(windows, "host-b:2:w0", LIVE)
    assert (taken.id, taken.attempts, taken.lease_owner) == (held.id, 2, "host-b:2:w0")
    assert not windows.finish(held.id, "host-a:1:w0", {}, None)
    assert windows.finish(held.id, "host-b:2:w0", {"fetched": 3}, None)
    assert windows.summary().done == 1
