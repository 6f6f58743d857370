"""Scale-out on PostgreSQL: replicas of `connector run` never sync one source at once (shown from
the sync_run timestamps), backfill workers in two processes split the windows, and a killed
worker's window is taken over once its lease runs out.

Each test gets a database of its own (see `private_pg_database`); without a reachable
PostgreSQL the tests skip, saying how to enable them (CI sets CONNECTOR_REQUIRE_PG=1)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import pytest

from connector.pipeline.engine import EXIT_AFTER_BATCHES_ENV
from connector.sandbox import SandboxOptions, SandboxServer
from connector.store import Store
from connector.store.coordination import (
    AdvisorySourceLock,
    BackfillWindows,
    backfill_key,
    source_lock,
)
from tests.daemon_helpers import (
    assert_store_consistent,
    connector_processes,
    private_pg_database,
    seed_registry,
    sync_intervals,
    terminate,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.postgres

SOURCES = ("meditrak", "meditrak_import")
SINCE, UNTIL = date(2025, 1, 1), date(2025, 12, 31)
LATENCY_MS = 40


@pytest.fixture
def pg_store_url() -> Iterator[str]:
    with private_pg_database() as url:
        # Migrate once up front: replicas starting together would race to create the schema.
        Store(url).close()
        yield url


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    options = SandboxOptions(invoices=60, seed=17, latency_ms=LATENCY_MS, dialects=SOURCES)
    with SandboxServer(options) as server:
        yield server


def test_replicas_never_sync_one_source_at_once(
    sandbox: SandboxServer, pg_store_url: str, tmp_path: Path
) -> None:
    cfg = write_config(
        tmp_path / "connector.yaml",
        sandbox,
        pg_store_url,
        SOURCES,
        source_fields={"page_size": 10, "schedule": "1s"},
        # Jitter spreads the two replicas' attempts, so each wins some of the races.
        daemon={"jitter": "500ms", "shutdown_timeout": "10s"},
    )
    with Store(pg_store_url) as store:
        seed_registry(sandbox, store)
    with connector_processes(tmp_path) as start:
        replicas = [start("--config", str(cfg), "run") for _ in range(2)]

        def enough_runs() -> bool:
            with Store(pg_store_url, migrate=False) as store:
                runs = [r for r in store.runs() if r.kind == "sync" and r.status == "ok"]
            owners = {r.owner for r in runs}
            return len(runs) >= 8 and len(owners) == 2

        wait_for(enough_runs, timeout=45, interval=0.25)
        stop_seconds = []
        for replica in replicas:
            code, seconds = terminate(replica, timeout=20)
            assert code == 143, replica.stderr()[-2000:]  # 128 + SIGTERM
            stop_seconds.append(round(seconds, 2))
        skipped = sum(
            1
            for replica in replicas
            for event in replica.events("daemon.run.skipped")
            if event["reason"] == "another replica is syncing it"
        )

    with Store(pg_store_url, migrate=False) as store:
        intervals = sync_intervals(store)
        assert sorted(intervals) == sorted(SOURCES)
        for source, spans in intervals.items():
            for (_, finished), (started, _) in pairwise(spans):
                assert finished <= started, f"{source}: two runs overlapped"
        owners_by_source = {
            source: {r.owner for r in store.runs(source) if r.kind == "sync"} for source in SOURCES
        }
        assert_store_consistent(store)
    runs = sum(len(spans) for spans in intervals.values())
    print(f"\n{runs} sync runs, {skipped} skipped for a held lock, stop {stop_seconds}s")
    print(f"owners per source: {owners_by_source}")
    # The lock was contended, not merely unused.
    assert skipped > 0


def backfill_command(cfg: Path, *extra: str) -> tuple[str, ...]:
    return (
        *("--config", str(cfg), "backfill", "--source", "meditrak"),
        *("--since", str(SINCE), "--until", str(UNTIL), "--window", "30d"),
        *("--progress-every", "1s", *extra),
    )


def assert_complete(store: Store, server: SandboxServer) -> None:
    truth = set(server.dataset("meditrak").ids())
    stored = set(store.content_hashes("meditrak"))
    quarantined = {q.record_key for q in store.quarantine_entries("meditrak")}
    assert stored | quarantined == truth
    assert not stored & quarantined
    assert store.count_invoices("meditrak") == len(stored)
    assert_store_consistent(store)


def test_two_backfill_processes_split_the_windows(
    sandbox: SandboxServer, pg_store_url: str, tmp_path: Path
) -> None:
    cfg = write_config(
        tmp_path / "connector.yaml", sandbox, pg_store_url, ["meditrak"], source_fields={}
    )
    with Store(pg_store_url) as store:
        seed_registry(sandbox, store)
    key = backfill_key("meditrak", SINCE, UNTIL)

    def processes_holding_windows() -> set[str]:
        with Store(pg_store_url, migrate=False) as store:
            owners = [w.lease_owner for w in BackfillWindows(store, key, "meditrak").windows()]
        return {owner.rsplit(":", 1)[0] for owner in owners if owner}

    with connector_processes(tmp_path) as start:
        # Slow answers until both processes hold a window: on a loaded machine the second one
        # may start seconds after the first, which at full speed could take every window alone.
        sandbox.set_faults("meditrak", latency_ms=1000)
        try:
            workers = [
                start(*backfill_command(cfg, "--workers", "1", "--lease", "5s")) for _ in "ab"
            ]
            wait_for(lambda: len(processes_holding_windows()) == 2, timeout=60, interval=0.1)
        finally:
            sandbox.set_faults("meditrak", latency_ms=LATENCY_MS)
        for worker in workers:
            assert worker.wait(90) == 0, worker.stderr()[-3000:]
    with Store(pg_store_url, migrate=False) as store:
        done = BackfillWindows(store, key, "meditrak").windows()
        assert {w.status for w in done} == {"done"}
        assert len(done) == 13
        # Each window synced exactly once, and both processes took some.
        assert {w.attempts for w in done} == {1}
        by_process: dict[str, int] = {}
        for window in done:
            assert window.lease_owner is not None
            process = window.lease_owner.rsplit(":", 1)[0]
            by_process[process] = by_process.get(process, 0) + 1
        print(f"\nwindows per process: {by_process}")
        assert len(by_process) == 2
        assert_complete(store, sandbox)


def test_a_killed_workers_window_is_taken_over_after_its_lease(
    sandbox: SandboxServer, pg_store_url: str, tmp_path: Path
) -> None:
    lease_s = 3
    cfg = write_config(
        tmp_path / "connector.yaml",
        sandbox,
        pg_store_url,
        ["meditrak"],
        source_fields={},
    )
    with Store(pg_store_url) as store:
        seed_registry(sandbox, store)
    key = backfill_key("meditrak", SINCE, UNTIL)
    command = backfill_command(cfg, "--workers", "1", "--lease", f"{lease_s}s")
    with connector_processes(tmp_path) as start:
        # Dies hard (os._exit) right after committing its first batch, mid-window.
        doomed = start(*command, env={EXIT_AFTER_BATCHES_ENV: "1"})
        assert doomed.wait(60) == 99, doomed.stderr()[-2000:]
        with Store(pg_store_url, migrate=False) as store:
            (orphan,) = [
                w
                for w in BackfillWindows(store, key, "meditrak").windows()
                if w.status == "running"
            ]
        assert orphan.lease_expires_at is not None
        survivor = start(*command)
        assert survivor.wait(90) == 0, survivor.stderr()[-3000:]
        taken = survivor.events("backfill.window_taken_over")
    assert len(taken) == 1
    taken_at = datetime.fromisoformat(taken[0]["timestamp"].replace("Z", "+00:00"))
    # Not before the dead worker's lease ran out.
    assert taken_at >= orphan.lease_expires_at
    print(f"\ntaken over {(taken_at - orphan.lease_expires_at).total_seconds():.2f}s after expiry")
    with Store(pg_store_url, migrate=False) as store:
        windows = BackfillWindows(store, key, "meditrak").windows()
        assert {w.status for w in windows} == {"done"}
        retaken = next(w for w in windows if w.id == orphan.id)
        assert retaken.attempts == 2
        assert retaken.lease_owner != orphan.lease_owner
        assert "running" not in {r.status for r in store.runs()}
        assert_complete(store, sandbox)


def test_advisory_source_locks_are_exclusive_and_die_with_their_session(
    pg_store_url: str,
) -> None:
    with Store(pg_store_url, migrate=False) as store:
        first = source_lock(store, "meditrak", timedelta(seconds=30))
        second = source_lock(store, "meditrak", timedelta(seconds=30))
        assert first.acquire()
        assert not second.acquire()
        assert source_lock(store, "meditrak_import", timedelta(seconds=30)).acquire()
        assert first.renew()
        first.release()
        assert second.acquire()
        # A replica that dies loses its session, and the lock with it: no lease to wait out.
        assert isinstance(second, AdvisorySourceLock)
        held = second._conn  # the replica "dies": its session ends
        assert held is not None
        held.invalidate()
        assert first.acquire()
        first.release()
