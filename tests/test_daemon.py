"""`connector run` as operators run it: scheduled runs, SIGHUP reload, health endpoints, and a
SIGTERM mid-run that exits 0 in time with a consistent store the next sync resumes from.
Plus incremental runs at the cursor boundary (`>=` and lookback): nothing lost, nothing twice."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from connector.cli.demo import sandbox_config
from connector.pipeline.engine import Engine
from connector.pipeline.wiring import build_engine
from connector.sandbox import SandboxOptions, SandboxServer
from connector.store import Store, leases
from connector.store.coordination import source_lock
from connector.store.store import sqlite_url_for, utcnow
from tests.conftest import run_connector
from tests.daemon_helpers import (
    FAST_HTTP,
    assert_store_consistent,
    connector_processes,
    seed_registry,
    terminate,
    wait_for,
    write_config,
)
from tests.test_daemon_hosting import labels, samples

SOURCES = ("meditrak", "meditrak_import")
SHUTDOWN_TIMEOUT_S = 10
SLOW_LATENCY_MS = 40


@pytest.fixture(scope="module")
def slow_sandbox() -> Iterator[SandboxServer]:
    # Latency stretches a meditrak run (6 pages, a detail call per invoice) to ~1-2 s, long
    # enough to be caught mid-run; the import source answers in one call per page.
    options = SandboxOptions(invoices=60, seed=11, latency_ms=SLOW_LATENCY_MS, dialects=SOURCES)
    with SandboxServer(options) as server:
        yield server


def test_daemon_runs_on_schedule_and_stops_cleanly_mid_run(
    slow_sandbox: SandboxServer, tmp_path: Path
) -> None:
    url = sqlite_url_for(tmp_path / "store.db")
    cfg = write_config(
        tmp_path / "connector.yaml",
        slow_sandbox,
        url,
        SOURCES,
        source_fields={"page_size": 5, "schedule": "1s"},
        daemon={
            "jitter": "0s",
            "shutdown_timeout": f"{SHUTDOWN_TIMEOUT_S}s",
            "health_port": 0,
        },
    )
    with Store(url) as store:
        seed_registry(slow_sandbox, store)
    with connector_processes(tmp_path) as start:
        daemon = start("--config", str(cfg), "run")
        # Several runs of each source (the first one stores everything).
        wait_for(lambda: len(daemon.events("sync.finished")) >= 4, timeout=40)
        started = daemon.events("daemon.started")[0]
        assert sorted(started["jobs"]) == [
            "meditrak: every 1s, jitter 0s",
            "meditrak_import: every 1s, jitter 0s",
        ]

        # SIGHUP reloads the schedules without duplicating a job.
        daemon.signal(signal.SIGHUP)
        reloaded = wait_for(lambda: daemon.events("daemon.reloaded"), timeout=10)[0]
        assert reloaded["added"] == reloaded["rescheduled"] == reloaded["removed"] == []
        assert sorted(reloaded["unchanged"]) == ["sync:meditrak", "sync:meditrak_import"]

        with httpx.Client(base_url=started["health"], timeout=5) as client:
            health = client.get("/healthz")
            metrics = client.get("/metrics").text
        assert health.status_code == 200
        assert health.json()["jobs"] == 2
        found = samples(metrics)  # prometheus_client's own parser (tests/test_daemon_hosting.py)
        assert found[("connector_source_last_run_success", labels(source="meditrak_import"))] == 1
        assert found[("connector_runs_total", labels(source="meditrak", outcome="ok"))] >= 1
        assert ("connector_source_lag_seconds", labels(source="meditrak")) in found

        # SIGTERM while meditrak is mid-run, with at least one batch of it committed. Its
        # requests are slowed first, and it is caught early (at most 3 of its 12 batches
        # written): 45 detail calls remain, at most 8 of them already in flight, 8 at a time
        # and 300 ms each, so the run lasts >= 1.5 s after the check and a loaded machine
        # cannot let it finish before the signal lands.
        slow_sandbox.set_faults("meditrak", latency_ms=300)
        try:
            with Store(url) as store:

                def meditrak_mid_run() -> bool:
                    last = store.runs("meditrak", limit=1)
                    return (
                        bool(last)
                        and last[0].status == "running"
                        and 1 <= last[0].counts["batches"] <= 3
                    )

                wait_for(meditrak_mid_run, timeout=30, interval=0.01)
            code, seconds = terminate(daemon, timeout=SHUTDOWN_TIMEOUT_S + 10)
        finally:
            slow_sandbox.set_faults("meditrak", latency_ms=SLOW_LATENCY_MS)
        # 128 + SIGTERM: stopped by a signal, its run recorded interrupted (issue 16).
        assert code == 143, daemon.stderr()[-2000:]
        assert seconds < SHUTDOWN_TIMEOUT_S, seconds
        stopped = daemon.events("daemon.stopped")
        assert stopped, daemon.stderr()[-2000:]
        print(f"\nSIGTERM → exit in {seconds:.2f}s (daemon shutdown {stopped[0]['seconds']}s)")

    with Store(url) as store:
        runs = store.runs()
        assert len([r for r in runs if r.status == "ok"]) >= 4
        interrupted = [r for r in runs if r.status == "interrupted"]
        assert [r.source for r in interrupted] == ["meditrak"], [(r.source, r.status) for r in runs]
        # Stopped between batches: its committed batches are counted, its resume point kept.
        assert interrupted[0].counts["batches"] >= 1
        assert store.get_state("meditrak").resume is not None
        assert_store_consistent(store)

    # The next `connector sync` resumes the interrupted run and finishes cleanly.
    finished = run_connector("--config", str(cfg), "sync")
    assert finished.returncode == 0, finished.stdout + finished.stderr
    with Store(url) as store:
        assert store.get_state("meditrak").resume is None
        last = store.runs("meditrak", limit=1)[0]
        assert last.status == "ok"
        # It read only the pages after the resume point.
        assert last.counts["fetched"] < 60
        assert_store_consistent(store)
        truth = set(slow_sandbox.dataset("meditrak").ids())
        stored = set(store.content_hashes("meditrak"))
        quarantined = {q.record_key for q in store.quarantine_entries("meditrak")}
        assert stored | quarantined == truth
        assert not stored & quarantined


# ----------------------------------------------------------------------------- boundaries


@pytest.fixture
def import_sandbox() -> Iterator[SandboxServer]:
    options = SandboxOptions(invoices=40, seed=23, defect_rate=0.0, dialects=("meditrak_import",))
    with SandboxServer(options) as server:
        yield server


def _sync(engine: Engine) -> dict[str, int]:
    (result,) = asyncio.run(engine.sync(["meditrak_import"]))
    assert result.ok, result.error
    return result.counts.as_dict()


def test_records_sharing_the_cursor_timestamp_are_neither_lost_nor_duplicated(
    import_sandbox: SandboxServer, tmp_path: Path
) -> None:
    name = "meditrak_import"
    dataset = import_sandbox.dataset(name)
    fields = {"page_size": 7, "lookback": "0s", "http": FAST_HTTP}
    config = sandbox_config(
        import_sandbox, sqlite_url_for(tmp_path / "s.db"), [name], **{name: fields}
    )
    with Store(config.store.sqlalchemy_url()) as store:
        seed_registry(import_sandbox, store)
        engine = build_engine(config, store)
        assert _sync(engine)["inserted"] == 40
        cursor = store.get_state(name).cursor
        assert cursor == dataset.max_updated_at()
        at_boundary = [inv.id for inv in dataset.invoices if inv.updated_at == cursor]

        # A new invoice written in the very second of the cursor, after the sync read it.
        added = dataset.add()
        with dataset.lock:
            added.updated_at = cursor
            dataset.version += 1
        counts = _sync(engine)
        # `>=` at the vendor: the boundary records come again (unchanged: no write) and the
        # newcomer of the same second is not lost.
        assert counts["inserted"] == 1
        assert counts["unchanged"] == len(at_boundary)
        assert counts["fetched"] == len(at_boundary) + 1
        assert added.id in store.content_hashes(name)

        # Nothing new: the boundary is read again and nothing is written twice.
        again = _sync(engine)
        assert again["inserted"] == again["updated"] == 0
        assert store.count_invoices(name) == 41
        assert store.get_state(name).cursor == cursor


def test_lookback_catches_a_late_write_with_an_older_timestamp(
    import_sandbox: SandboxServer, tmp_path: Path
) -> None:
    name = "meditrak_import"
    dataset = import_sandbox.dataset(name)
    fields = {"page_size": 50, "lookback": "5m", "http": FAST_HTTP}
    config = sandbox_config(
        import_sandbox, sqlite_url_for(tmp_path / "s.db"), [name], **{name: fields}
    )
    with Store(config.store.sqlalchemy_url()) as store:
        seed_registry(import_sandbox, store)
        engine = build_engine(config, store)
        _sync(engine)
        cursor = store.get_state(name).cursor
        assert cursor is not None
        late = dataset.add()
        with dataset.lock:
            # Committed at the vendor after our sync, stamped two minutes before the cursor.
            late.updated_at = cursor - timedelta(minutes=2)
            dataset.version += 1
        counts = _sync(engine)
        assert counts["inserted"] == 1
        assert late.id in store.content_hashes(name)
        assert store.get_state(name).cursor == cursor  # the cursor never moves backwards
        assert_store_consistent(store)


def test_sigterm_waits_for_no_more_than_the_batch_in_flight(
    slow_sandbox: SandboxServer, tmp_path: Path
) -> None:
    """The in-process view of the shutdown hook: a stop request ends the run at the next batch
    boundary, recorded as interrupted with its resume point; the next run resumes there."""
    name = "meditrak"
    fields = {"page_size": 10, "http": FAST_HTTP}
    config = sandbox_config(
        slow_sandbox, sqlite_url_for(tmp_path / "s.db"), [name], **{name: fields}
    )
    with Store(config.store.sqlalchemy_url()) as store:
        seed_registry(slow_sandbox, store)
        engine = build_engine(config, store)

        async def stop_after_first_batch() -> tuple[bool, float]:
            task = asyncio.create_task(engine.sync_source(config.source(name)))
            for _ in range(2000):  # the store is polled: there is no event to wait on
                runs = store.runs(name, limit=1)
                if runs and runs[0].counts["batches"] >= 1:
                    break
                await asyncio.sleep(0.01)
            asked = time.monotonic()
            engine.request_stop()
            result = await task
            return result.interrupted, time.monotonic() - asked

        interrupted, waited = asyncio.run(stop_after_first_batch())
        assert interrupted
        assert waited < 2.0
        run = store.runs(name)[0]
        assert run.status == "interrupted"
        assert store.get_state(name).resume is not None
        assert_store_consistent(store)
        (resumed,) = asyncio.run(build_engine(config, store).sync([name]))
        assert resumed.ok and resumed.resumed
        assert store.count_invoices(name) + store.count_quarantined(name) == 60
        assert_store_consistent(store)


def test_source_lock_rows_exclude_a_second_holder_until_released_or_expired(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SQLite leases read this process's clock: a stopped one, moved on by the test, so that a
    # stall of a loaded machine between two steps cannot expire a lease the test relies on.
    now = [utcnow()]
    monkeypatch.setattr(leases, "utcnow", lambda: now[0])
    with Store(sqlite_url_for(tmp_path / "s.db")) as store:
        first = source_lock(store, "meditrak", timedelta(seconds=0.3))
        second = source_lock(store, "meditrak", timedelta(seconds=0.3))
        other = source_lock(store, "splose", timedelta(seconds=0.3))
        assert first.acquire()
        assert not second.acquire()
        assert other.acquire()
        assert first.renew()
        first.release()
        assert second.acquire()
        # second stops renewing, as a killed daemon would: held until its lease ends.
        now[0] += timedelta(seconds=0.2)
        assert not first.acquire()
        now[0] += timedelta(seconds=0.2)
        assert first.acquire()
        assert not second.renew()
