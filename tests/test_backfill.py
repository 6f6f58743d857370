"""`connector backfill`: windows stored and claimed in the database; a killed backfill re-run
ends equal to an uninterrupted one; Ctrl-C gives windows back; workers share the source's
limits; progress lines off a terminal."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from connector.cli.demo import sandbox_config
from connector.config import AppConfig
from connector.daemon.backfill import (
    Backfill,
    LogProgress,
    per_worker_source,
    split_windows,
)
from connector.daemon.backfill import parse_window as parse_window_days
from connector.errors import ConfigError
from connector.pipeline.wiring import build_engine
from connector.sandbox import SandboxOptions, SandboxServer
from connector.store import Store
from connector.store.coordination import BackfillWindows
from connector.store.schema import sync_run
from connector.store.store import sqlite_url_for
from tests.daemon_helpers import (
    FAST_HTTP,
    assert_store_consistent,
    connector_processes,
    seed_registry,
    wait_for,
    write_config,
)

SOURCE = "meditrak"
SINCE, UNTIL = date(2025, 1, 1), date(2025, 12, 31)


def test_split_windows_covers_the_range_once() -> None:
    windows = split_windows(date(2025, 1, 1), date(2025, 1, 20), 7)
    assert windows == [
        (date(2025, 1, 1), date(2025, 1, 7)),
        (date(2025, 1, 8), date(2025, 1, 14)),
        (date(2025, 1, 15), date(2025, 1, 20)),
    ]
    assert split_windows(date(2025, 1, 1), date(2025, 1, 1), 7) == [
        (date(2025, 1, 1), date(2025, 1, 1))
    ]
    assert parse_window_days("2w") == 14
    with pytest.raises(ValueError, match="whole number of days"):
        parse_window_days("36h")


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    options = SandboxOptions(invoices=80, seed=31, latency_ms=20, dialects=(SOURCE,))
    with SandboxServer(options) as server:
        yield server


def make_config(server: SandboxServer, path: Path, **fields: Any) -> AppConfig:
    source = {"page_size": 10, "http": FAST_HTTP, **fields}
    return sandbox_config(server, sqlite_url_for(path), [SOURCE], **{SOURCE: source})


def run_backfill(config: AppConfig, store: Store, **options: Any) -> Any:
    job = Backfill(
        config,
        store,
        build_engine(config, store),
        source=SOURCE,
        since=SINCE,
        until=UNTIL,
        progress=lambda key: LogProgress(key, 3600),
        **{"window_days": 30, **options},
    )
    return asyncio.run(job.run(handle_signals=False))


def snapshot(store: Store) -> tuple[dict[str, str], set[str]]:
    quarantined = {q.record_key for q in store.quarantine_entries(SOURCE)}
    return store.content_hashes(SOURCE), quarantined


@pytest.fixture(scope="module")
def reference(sandbox: SandboxServer, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """What an uninterrupted backfill stores."""
    path = tmp_path_factory.mktemp("reference") / "store.db"
    config = make_config(sandbox, path)
    with Store(config.store.sqlalchemy_url()) as store:
        seed_registry(sandbox, store)
        report = run_backfill(config, store)
        assert report.complete and report.summary.total == 13
        assert_store_consistent(store)
        hashes, quarantined = snapshot(store)
    assert set(hashes) | quarantined == set(sandbox.dataset(SOURCE).ids())
    return hashes, quarantined


def test_killed_backfill_rerun_equals_an_uninterrupted_one(
    sandbox: SandboxServer, reference: Any, tmp_path: Path
) -> None:
    url = sqlite_url_for(tmp_path / "store.db")
    cfg = write_config(tmp_path / "connector.yaml", sandbox, url, [SOURCE])
    with Store(url) as store:
        seed_registry(sandbox, store)
    command = (
        *("--config", str(cfg), "backfill", "--source", SOURCE),
        *("--since", str(SINCE), "--until", str(UNTIL), "--window", "30d"),
        *("--lease", "1s", "--progress-every", "0.2s"),
    )
    with connector_processes(tmp_path) as start:
        first = start(*command)
        key = f"{SOURCE}:{SINCE}:{UNTIL}"
        with Store(url) as store:
            windows = BackfillWindows(store, key, SOURCE)

            def part_way() -> bool:
                try:
                    summary = windows.summary()
                except Exception:  # the table may not exist before the first migration
                    return False
                return summary.done >= 3 and summary.running >= 1

            wait_for(part_way, timeout=40, interval=0.01)
        # Kill it inside a window, whatever the machine's speed: from now on every request
        # stalls (5 s, three attempts), so once one has stalled the worker holds a window it
        # cannot finish; killed at a moment of its own choosing it could sit between windows.
        faults_before = sandbox.stats(SOURCE)["faults_injected"]
        sandbox.set_faults(SOURCE, fault_rate=1.0, fault_kinds=("timeout",), stall_s=5)
        try:
            wait_for(lambda: sandbox.stats(SOURCE)["faults_injected"] > faults_before, timeout=10)
            first.signal(signal.SIGKILL)
            assert first.wait(10) == -signal.SIGKILL
        finally:
            sandbox.set_faults(SOURCE, fault_rate=0.0)  # the other fault settings then do nothing
        with Store(url) as store:
            summary = BackfillWindows(store, key, SOURCE).summary()
            assert 3 <= summary.done < summary.total
            assert summary.running == 1  # the killed worker's window, still leased

        again = start(*command)
        assert again.wait(60) == 0, again.stderr()[-3000:]
        # However short the rerun, its last progress line gives the end state.
        progress = again.events("backfill.progress")
        assert progress, again.stderr()[-2000:]
        assert progress[-1]["windows_total"] == progress[-1]["windows_done"] == 13

    with Store(url) as store:
        stored_windows = BackfillWindows(store, key, SOURCE).windows()
        assert [w.status for w in stored_windows] == ["done"] * 13
        taken_over = [w for w in stored_windows if w.attempts == 2]
        assert len(taken_over) == 1, [(w.date_from, w.attempts) for w in stored_windows]
        assert snapshot(store) == reference
        with store.engine.connect() as conn:
            statuses = conn.execute(select(sync_run.c.status)).scalars().all()
        assert "running" not in statuses
        assert_store_consistent(store)


def test_ctrl_c_gives_windows_back_and_the_rerun_completes(
    sandbox: SandboxServer, reference: Any, tmp_path: Path
) -> None:
    config = make_config(sandbox, tmp_path / "store.db")
    with Store(config.store.sqlalchemy_url()) as store:
        seed_registry(sandbox, store)
        job = Backfill(
            config,
            store,
            build_engine(config, store),
            source=SOURCE,
            since=SINCE,
            until=UNTIL,
            window_days=30,
            workers=2,
            progress=lambda key: LogProgress(key, 3600),
        )

        async def interrupt() -> Any:
            task = asyncio.create_task(job.run(handle_signals=False))
            for _ in range(4000):  # polls the store: there is no event to wait on
                if job.windows is not None and job.windows.summary().done >= 2:
                    break
                await asyncio.sleep(0.01)
            job.request_stop()  # what SIGINT does
            return await task

        report = asyncio.run(interrupt())
        assert report.interrupted and not report.complete
        summary = BackfillWindows(store, report.key, SOURCE).summary()
        # Windows in flight were given back, not left leased.
        assert summary.running == 0 and summary.pending > 0
        assert "running" not in {r.status for r in store.runs()}

        finished = run_backfill(config, store)
        assert finished.complete
        assert finished.windows_synced == summary.pending
        assert snapshot(store) == reference
        assert_store_consistent(store)


def test_workers_share_the_source_limits_and_split_the_work(
    sandbox: SandboxServer, reference: Any, tmp_path: Path
) -> None:
    http = {**FAST_HTTP, "concurrency": 3, "requests_per_minute": 6000}
    config = make_config(sandbox, tmp_path / "store.db", http=http)
    shared = per_worker_source(config.source(SOURCE), 3)
    assert shared.http.concurrency == 1
    assert shared.http.requests_per_minute == 2000
    sandbox.reset_stats(SOURCE)
    with Store(config.store.sqlalchemy_url()) as store:
        seed_registry(sandbox, store)
        report = run_backfill(config, store, workers=3)
        assert report.complete
        owners = {w.lease_owner for w in BackfillWindows(store, report.key, SOURCE).windows()}
        assert len(owners) == 3
        assert snapshot(store) == reference
        assert_store_consistent(store)
    # Three workers, yet never more requests in flight than the source's concurrency.
    assert sandbox.stats(SOURCE)["max_in_flight"] <= 3


def test_backfill_rejects_reversed_ranges_and_unknown_sources(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    config = make_config(sandbox, tmp_path / "store.db")
    with Store(config.store.sqlalchemy_url()) as store:
        engine = build_engine(config, store)
        job = Backfill(
            config, store, engine, source=SOURCE, since=SINCE, until=SINCE - timedelta(days=1)
        )
        with pytest.raises(ConfigError, match="before --since"):
            job.plan()
        with pytest.raises(ConfigError, match="no source named"):
            Backfill(config, store, engine, source="nope", since=SINCE)


def test_the_last_progress_line_is_the_end_state_even_when_throttled() -> None:
    from structlog.testing import capture_logs

    from connector.store.coordination import WindowSummary

    reporter = LogProgress("k", every=3600)
    with capture_logs() as logs:
        reporter.update(WindowSummary(total=4, done=1), 10.0, 30.0)
        reporter.update(WindowSummary(total=4, done=3), 10.0, 10.0)  # throttled
        reporter.update(WindowSummary(total=4, done=4), 0.0, None)  # throttled
        reporter.close()
        reporter.close()  # nothing left to say
    lines = [e for e in logs if e["event"] == "backfill.progress"]
    assert [(e["windows_done"], e["windows_total"]) for e in lines] == [(1, 4), (4, 4)]
