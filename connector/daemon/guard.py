"""What keeps a daemon run honest about the database: the lock watchdog of one run
(`LockWatch`: is the source lock still ours?) and the store outage tracker (`StoreOutage`:
one `store.unreachable` line with the retry schedule, one `store.recovered`, nothing between).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import timedelta

import structlog
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from connector.errors import ConnectorError
from connector.store import Store
from connector.store.coordination import SourceLock

log = structlog.get_logger("connector.daemon.guard")

# A lock check that has not answered after this long counts as a lost lock.
LOCK_CHECK_TIMEOUT_S = 5.0
# While the store is unreachable it is tried again after these waits (the last repeats).
RETRY_SCHEDULE_S = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)


def check_interval(lock_check: timedelta, lease: timedelta) -> float:
    """How often a run checks its lock: `daemon.lock_check_interval`, and at least three
    times a lease (a lease lock is renewed by the same check)."""
    return max(0.2, min(lock_check.total_seconds(), lease.total_seconds() / 3))


def detection_bound(lock_check: timedelta, lease: timedelta) -> float:
    """The longest a lost lock can go unnoticed by a running sync: one check interval, plus a
    check that hangs until its timeout."""
    return check_interval(lock_check, lease) + LOCK_CHECK_TIMEOUT_S


class LockWatch:
    """Checks one run's source lock every `interval` seconds; calls `on_lost` once when a check
    fails, says the lock is gone, or does not answer within `LOCK_CHECK_TIMEOUT_S`."""

    def __init__(
        self, lock: SourceLock, source: str, interval: float, on_lost: Callable[[str], None]
    ) -> None:
        self.lock = lock
        self.source = source
        self.interval = interval
        self.on_lost = on_lost
        # A check thread that never answered may still be using the lock's connection.
        self.hung = False
        self.last_ok = time.monotonic()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            reason = await self._check()
            if reason is None:
                self.last_ok = time.monotonic()
                continue
            log.warning(
                "daemon.lock_lost",
                source=self.source,
                epoch=self.lock.epoch,
                reason=reason,
                since_last_good_check_s=round(time.monotonic() - self.last_ok, 3),
            )
            self.on_lost(reason)
            return

    async def confirm_lost(self) -> str | None:
        """After a failed run: "lock_lost" (logged) when its lock is gone, the likely reason
        the store refused the run's write; None while it is still held."""
        reason = await self._check()
        if reason is None:
            return None
        log.warning(
            "daemon.lock_lost",
            source=self.source,
            epoch=self.lock.epoch,
            reason=f"{reason}; the store refused the run's write (fenced)",
            since_last_good_check_s=round(time.monotonic() - self.last_ok, 3),
        )
        return "lock_lost"

    async def _check(self) -> str | None:
        """None while the lock is held, else why it is not."""
        try:
            held = await asyncio.wait_for(
                asyncio.to_thread(self.lock.renew), timeout=LOCK_CHECK_TIMEOUT_S
            )
        except TimeoutError:
            self.hung = True
            return f"the lock check did not answer within {LOCK_CHECK_TIMEOUT_S:g}s"
        except ConnectorError as exc:
            return f"the lock check failed: {exc}"
        return None if held else "the lock's session or lease ended, or it was taken over"


class StoreOutage:
    """The store's reachability as the daemon sees it. The first failure logs
    `store.unreachable` with the retry schedule and starts probing on that schedule; runs are
    not attempted meanwhile; the first probe that connects logs `store.recovered`."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._probe: asyncio.Task[None] | None = None
        self._since = 0.0

    @property
    def active(self) -> bool:
        return self._probe is not None and not self._probe.done()

    def report(self, error: str) -> None:
        if self.active:
            return
        self._since = time.monotonic()
        log.error(
            "store.unreachable",
            error=error,
            next_retry_in_s=RETRY_SCHEDULE_S[0],
            retry_schedule_s=list(RETRY_SCHEDULE_S),
            detail="no source is synced until the store answers again",
        )
        self._probe = asyncio.get_running_loop().create_task(self._until_back())

    async def _until_back(self) -> None:
        attempt = 0
        while True:
            await asyncio.sleep(RETRY_SCHEDULE_S[min(attempt, len(RETRY_SCHEDULE_S) - 1)])
            attempt += 1
            if await asyncio.to_thread(self._reachable):
                log.info(
                    "store.recovered",
                    down_s=round(time.monotonic() - self._since, 3),
                    attempts=attempt,
                )
                return

    def _reachable(self) -> bool:
        try:
            with self.store.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except SQLAlchemyError:
            return False
        return True

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
