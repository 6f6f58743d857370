"""`connector backfill`: one source's history, window by window, resumable and shareable.

The range [since, until] is split into date windows stored in `backfill_window`; workers
claim a window under a lease, sync it with `Engine.sync_source(kind="backfill")` and mark it
done (see `connector.store.coordination`). Running the same command again after a crash or
Ctrl-C continues with the windows not done; what was stored is never inserted again (the
upsert is idempotent). Workers in other processes or on other machines pointed at the same
PostgreSQL split the windows between them; a worker that finds nothing to claim waits for the
others, taking over any window whose lease runs out, so the command returns when the whole
backfill is done.

Rate limits: every `sync_source` builds its own HTTP client, each with its own limiter. With
N workers in one process each client gets 1/N of the source's `requests_per_minute` and of its
`concurrency` (the division is exact and needs no shared state). A shared limiter would keep
the full rate when fewer windows than workers remain, but it would have to reach inside the
adapter the engine builds. Workers in *other* processes are not counted: give each process's
config its share.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol

import structlog
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from connector.errors import ConfigError, ConnectorError
from connector.pipeline.engine import Engine
from connector.schedule import parse_duration
from connector.settings import AppConfig, SourceConfig
from connector.sources.discovery import source_type
from connector.store import BatchCounts, Store
from connector.store.coordination import (
    BackfillWindows,
    Window,
    WindowSummary,
    backfill_key,
    open_backfill_keys,
)

log = structlog.get_logger("connector.daemon.backfill")

# How often an idle worker looks again for a window (others may fail or lose their lease).
IDLE_POLL_SECONDS = 1.0


def split_windows(since: date, until: date, days: int) -> list[tuple[date, date]]:
    """Inclusive [from, to] slices of `days` days covering [since, until]; the last is clipped."""
    if days < 1:
        raise ValueError("a window is at least one day")
    slices = []
    start = since
    while start <= until:
        end = min(start + timedelta(days=days - 1), until)
        slices.append((start, end))
        start = end + timedelta(days=1)
    return slices


def parse_window(text: str) -> int:
    """`7d`, `2w`, `30d` → whole days."""
    span = parse_duration(text)
    days = span / timedelta(days=1)
    if days < 1 or days != int(days):
        raise ValueError(f"--window must be a whole number of days (7d, 2w), not {text!r}")
    return int(days)


def per_worker_source(source: SourceConfig, workers: int) -> SourceConfig:
    """The source with its rate limit and concurrency divided among `workers` clients."""
    http = source.http
    changes: dict[str, Any] = {"concurrency": max(1, http.concurrency // workers)}
    if http.requests_per_minute:
        changes["requests_per_minute"] = max(1, http.requests_per_minute // workers)
    return source.model_copy(update={"http": http.model_copy(update=changes)})


def effective_workers(source: SourceConfig, workers: int) -> int:
    """No more workers than requests per minute allows (each needs at least 1/min)."""
    limit = source.http.requests_per_minute
    return max(1, min(workers, limit) if limit else workers)


@dataclass
class BackfillReport:
    key: str
    summary: WindowSummary
    counts: BatchCounts = field(default_factory=BatchCounts)
    windows_synced: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    # The signal that interrupted it (None when stopped otherwise, e.g. by a test).
    stop_signal: int | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.summary.finished and self.summary.failed == 0


class ProgressReporter(Protocol):
    def update(self, summary: WindowSummary, invoices_per_s: float, eta_s: float | None) -> None:
        """Called about twice a second with the backfill's state (all workers)."""

    def close(self) -> None: ...


class RichProgress:
    """A progress bar on the terminal: windows, invoices, rate, ETA."""

    def __init__(self, label: str, console: Console | None = None) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("windows · {task.fields[invoices]} invoices · {task.fields[rate]}/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console or Console(stderr=True),
            transient=False,
        )
        self._task = self._progress.add_task(label, total=None, invoices=0, rate="-")
        self._progress.start()

    def update(self, summary: WindowSummary, invoices_per_s: float, eta_s: float | None) -> None:
        self._progress.update(
            self._task,
            total=summary.total,
            completed=summary.done,
            invoices=summary.fetched,
            rate=f"{invoices_per_s:.0f}",
        )

    def close(self) -> None:
        self._progress.stop()


class LogProgress:
    """Off a terminal: one structured `backfill.progress` line every `every` seconds."""

    def __init__(self, key: str, every: float) -> None:
        self.key = key
        self.every = every
        self._last = -math.inf  # the first update is always logged, however young the clock
        # The latest figures not yet logged: `close` logs them, so the last line is the end.
        self._unsaid: tuple[WindowSummary, float, float | None] | None = None

    def update(self, summary: WindowSummary, invoices_per_s: float, eta_s: float | None) -> None:
        now = time.monotonic()
        if now - self._last < self.every:
            self._unsaid = (summary, invoices_per_s, eta_s)
            return
        self._last = now
        self._unsaid = None
        self._log(summary, invoices_per_s, eta_s)

    def _log(self, summary: WindowSummary, invoices_per_s: float, eta_s: float | None) -> None:
        log.info(
            "backfill.progress",
            backfill=self.key,
            windows_done=summary.done,
            windows_total=summary.total,
            windows_running=summary.running,
            windows_failed=summary.failed,
            invoices=summary.fetched,
            invoices_per_s=round(invoices_per_s, 1),
            eta_s=None if eta_s is None else round(eta_s),
        )

    def close(self) -> None:
        if self._unsaid is not None:
            self._log(*self._unsaid)
            self._unsaid = None


def default_progress(key: str, every: float) -> ProgressReporter:
    if sys.stderr.isatty():
        return RichProgress(f"backfill {key}")
    return LogProgress(key, every)


class Backfill:
    """One backfill command: plan the windows, run workers until none is left."""

    def __init__(
        self,
        config: AppConfig,
        store: Store,
        engine: Engine,
        *,
        source: str,
        since: date,
        until: date | None = None,
        window_days: int = 7,
        workers: int = 1,
        lease: timedelta | None = None,
        progress: Callable[[str], ProgressReporter] | None = None,
        idle_poll: float = IDLE_POLL_SECONDS,
    ) -> None:
        self.config = config
        self.store = store
        self.engine = engine
        self.source = config.source(source)
        if not source_type(self.source.type).adapter_class().narrows_by_date(self.source):
            raise ConfigError(
                [
                    f"source {source!r} ({self.source.type}) cannot ask its vendor for a date "
                    "range, so it cannot be backfilled by windows; use `connector sync --full`"
                ]
            )
        self.since = since
        self.until = until
        self.window_days = window_days
        self.workers = effective_workers(self.source, workers)
        self.lease = lease or config.daemon.lease
        self._progress_factory = progress
        self.idle_poll = idle_poll
        self._stop = asyncio.Event()
        self._stopping = False
        self._stop_signal: int | None = None
        self.key = ""
        self.windows: BackfillWindows | None = None

    def plan(self) -> BackfillWindows:
        """Find or create this backfill's windows (idempotent; safe from several processes)."""
        until = self.until
        if until is None:
            # "Until today" would name a new backfill every day: continue an open one instead.
            open_keys = open_backfill_keys(self.store, self.source.name, self.since)
            until = date.fromisoformat(open_keys[0].rsplit(":", 1)[1]) if open_keys else None
            until = until or datetime.now(UTC).date()
        if until < self.since:
            raise ConfigError([f"--until {until} is before --since {self.since}"])
        self.until = until
        self.key = backfill_key(self.source.name, self.since, until)
        windows = BackfillWindows(self.store, self.key, self.source.name)
        created = windows.ensure(split_windows(self.since, until, self.window_days))
        retried = windows.reset_failed()
        summary = windows.summary()
        if (
            not created
            and summary.total
            and summary.total != len(split_windows(self.since, until, self.window_days))
        ):
            log.warning(
                "backfill.window_size_kept",
                backfill=self.key,
                detail="this backfill exists with another --window; continuing its windows",
            )
        log.info(
            "backfill.planned",
            backfill=self.key,
            windows=summary.total,
            created=created,
            done=summary.done,
            retried_failed=retried,
            workers=self.workers,
        )
        self.windows = windows
        return windows

    def request_stop(self, signum: int | None = None) -> None:
        """Ctrl-C / SIGTERM: windows in flight end after their batch and go back to pending."""
        if not self._stopping:
            self._stop_signal = signum
            log.info("backfill.stopping", signal=signal.Signals(signum).name if signum else None)
        self._stopping = True
        self.engine.request_stop()
        self._stop.set()

    async def run(self, *, handle_signals: bool = True) -> BackfillReport:
        started = time.monotonic()
        windows = await asyncio.to_thread(self.plan)
        report = BackfillReport(self.key, await asyncio.to_thread(windows.summary))
        loop = asyncio.get_running_loop()
        if handle_signals:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, self.request_stop, signum)
        reporter = (self._progress_factory or (lambda key: default_progress(key, 10.0)))(self.key)
        watcher = asyncio.create_task(self._watch_progress(windows, reporter, report.summary))
        source = per_worker_source(self.source, self.workers)
        try:
            await asyncio.gather(
                *(self._worker(i, windows, source, report) for i in range(self.workers))
            )
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            if handle_signals:
                for signum in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(signum)
        report.summary = await asyncio.to_thread(windows.summary)
        reporter.update(report.summary, 0.0, None)
        reporter.close()
        report.seconds = time.monotonic() - started
        report.interrupted = self._stopping and not report.summary.finished
        report.stop_signal = self._stop_signal if report.interrupted else None
        log.info(
            "backfill.finished" if report.complete else "backfill.incomplete",
            backfill=self.key,
            windows_done=report.summary.done,
            windows_total=report.summary.total,
            windows_failed=report.summary.failed,
            synced_here=report.windows_synced,
            seconds=round(report.seconds, 3),
            **report.counts.as_dict(),
        )
        return report

    async def _worker(
        self, index: int, windows: BackfillWindows, source: SourceConfig, report: BackfillReport
    ) -> None:
        owner = f"{self.store.owner}:w{index}"
        while not self._stopping:
            window = await asyncio.to_thread(windows.claim, owner, self.lease)
            if window is None:
                summary = await asyncio.to_thread(windows.summary)
                if summary.finished:
                    return
                # The rest is leased to other workers: wait for them to finish, or for a
                # lease to run out so that its window can be taken over.
                wait = self.idle_poll
                if summary.next_expiry is not None and summary.as_of is not None:
                    # Both times from the clock that decides expiry (the database's on
                    # PostgreSQL): a skewed local clock must not make this a busy loop.
                    until_expiry = (summary.next_expiry - summary.as_of).total_seconds()
                    wait = min(wait, max(0.05, until_expiry + 0.05))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=wait)
                continue
            await self._sync_window(windows, window, owner, source, report)

    async def _sync_window(
        self,
        windows: BackfillWindows,
        window: Window,
        owner: str,
        source: SourceConfig,
        report: BackfillReport,
    ) -> None:
        bound = log.bind(
            backfill=self.key,
            window=f"{window.date_from}..{window.date_to}",
            owner=owner,
            attempt=window.attempts,
        )
        if window.attempts > 1:
            bound.info("backfill.window_taken_over", previous_owner=window.previous_owner)
        keeper = asyncio.create_task(self._keep_lease(windows, window.id, owner, bound))
        try:
            result = await self.engine.sync_source(
                source, kind="backfill", date_from=window.date_from, date_to=window.date_to
            )
        except asyncio.CancelledError:
            with contextlib.suppress(ConnectorError):
                await asyncio.to_thread(windows.release, window.id, owner)
            raise
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        report.counts.add(result.counts)
        if result.ok:
            kept = await asyncio.to_thread(
                windows.finish, window.id, owner, result.counts.as_dict(), result.run_id
            )
            report.windows_synced += 1
            if not kept:
                # Our lease ran out and another worker took the window: it re-syncs it, and
                # the idempotent upsert makes that harmless.
                bound.warning("backfill.lease_lost")
        elif result.interrupted:
            await asyncio.to_thread(windows.release, window.id, owner)
        else:
            await asyncio.to_thread(
                windows.fail, window.id, owner, result.error or "failed", result.run_id
            )
            report.failures.append(f"{window.date_from}..{window.date_to}: {result.error}")

    async def _keep_lease(
        self, windows: BackfillWindows, window_id: int, owner: str, bound: Any
    ) -> None:
        interval = max(0.2, self.lease.total_seconds() / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                if not await asyncio.to_thread(windows.renew, window_id, owner, self.lease):
                    bound.warning("backfill.lease_lost")
                    return
            except ConnectorError as exc:
                bound.warning("backfill.lease_renew_failed", error=str(exc))

    async def _watch_progress(
        self, windows: BackfillWindows, reporter: ProgressReporter, start: WindowSummary
    ) -> None:
        started = time.monotonic()
        while True:
            await asyncio.sleep(0.5)
            try:
                summary = await asyncio.to_thread(windows.summary)
            except ConnectorError:
                continue
            elapsed = max(1e-6, time.monotonic() - started)
            rate = (summary.fetched - start.fetched) / elapsed
            done_here = summary.done - start.done
            remaining = summary.total - summary.done - summary.failed
            eta = remaining * elapsed / done_here if done_here > 0 else None
            reporter.update(summary, rate, None if eta is None or math.isinf(eta) else eta)
