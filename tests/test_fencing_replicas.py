"""Two real `connector run` replicas on one PostgreSQL database, and the lock's backend killed
with `pg_terminate_backend` mid-sync (what a server restart or a dropped connection does to a
session advisory lock; the shared server itself is never stopped). Shown from the store: no
two runs of the source overlap in `sync_run`, the stale run committed nothing after it was
closed, and the store ends exact (ids, counts and money equal to the sandbox's). Also a
database that refuses connections for a while: one `store.unreachable`, one `store.recovered`.

Each test gets a database of its own (`private_pg_database`); without PostgreSQL they skip.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from connector.sandbox import SandboxOptions, SandboxServer
from connector.store import Store
from connector.store.schema import invoice, source_lock
from tests.daemon_helpers import (
    ConnectorProcess,
    assert_exact,
    connector_processes,
    overlap_seconds,
    private_pg_database,
    seed_registry,
    terminate,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.postgres

SOURCE = "meditrak"
LOCK_CHECK_S = 1.0


@pytest.fixture
def pg_store_url() -> Iterator[str]:
    with private_pg_database() as url:
        Store(url).close()  # migrated once, before the replicas start
        yield url


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    options = SandboxOptions(invoices=80, seed=23, latency_ms=20, dialects=(SOURCE,))
    with SandboxServer(options) as server:
        yield server


def admin_sql(url: str, statement: str, **params: object) -> object:
    """One statement on the server's `postgres` database (autocommit)."""
    engine = create_engine(make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            result = conn.execute(text(statement), params)
            return result.scalar() if result.returns_rows else None
    finally:
        engine.dispose()


def event_time(event: dict[str, object]) -> datetime:
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00"))


def holder(store: Store, replicas: list[ConnectorProcess]) -> tuple[ConnectorProcess, int]:
    """The replica holding the source lock now, and its lock's backend pid."""
    with store.engine.connect() as conn:
        owner, pid = conn.execute(
            select(source_lock.c.owner, source_lock.c.backend_pid).where(
                source_lock.c.source == SOURCE
            )
        ).one()
    process_pid = int(owner.split(":")[1])
    (replica,) = [r for r in replicas if r.pid == process_pid]
    return replica, int(pid)


def test_a_killed_lock_session_mid_sync_never_lets_two_replicas_overlap(
    sandbox: SandboxServer, pg_store_url: str, tmp_path: Path
) -> None:
    cfg = write_config(
        tmp_path / "connector.yaml",
        sandbox,
        pg_store_url,
        [SOURCE],
        source_fields={"page_size": 5, "schedule": "1s"},
        daemon={
            "jitter": "200ms",
            "shutdown_timeout": "10s",
            "lock_check_interval": f"{LOCK_CHECK_S}s",
        },
    )
    with Store(pg_store_url) as store:
        seed_registry(sandbox, store)
    # Slow answers: the first run lasts well over ten seconds, long enough to be cut mid-way.
    sandbox.set_faults(SOURCE, latency_ms=400)
    try:
        with connector_processes(tmp_path) as start, Store(pg_store_url, migrate=False) as store:
            replicas = [start("--config", str(cfg), "run") for _ in "ab"]

            def mid_run() -> int | None:
                runs = [r for r in store.runs(SOURCE, limit=1) if r.status == "running"]
                return runs[0].id if runs and runs[0].counts["batches"] >= 1 else None

            stale_run = wait_for(mid_run, timeout=60, interval=0.05)
            old, backend = holder(store, replicas)
            killed_at = datetime.now(UTC)
            assert admin_sql(pg_store_url, "SELECT pg_terminate_backend(:pid)", pid=backend)

            lost = wait_for(lambda: old.events("daemon.lock_lost"), timeout=30)[0]
            detection_s = (event_time(lost) - killed_at).total_seconds()
            sandbox.set_faults(SOURCE, latency_ms=20)

            def synced_fully() -> bool:
                ok = [r for r in store.runs(SOURCE) if r.status == "ok"]
                return bool(ok) and store.get_state(SOURCE).resume is None

            wait_for(synced_fully, timeout=90, interval=0.25)
            codes = [terminate(replica, timeout=20)[0] for replica in replicas]
            # Logged when the new holder closed the stale run itself (if the stale replica
            # had closed it first, on noticing, there is no run to take over).
            taken = [e for r in replicas for e in r.events("daemon.lock_taken_over")]
            refused = [
                e for e in old.events("sync.failed") if "lock of this run was lost" in e["error"]
            ]
            stderr = {replica.pid: replica.stderr() for replica in replicas}
    finally:
        sandbox.set_faults(SOURCE, latency_ms=20)

    assert codes == [143, 143], stderr
    for event in taken:
        assert event["previous_owner"].split(":")[1] == str(old.pid)
    with Store(pg_store_url, migrate=False) as store:
        overlap = overlap_seconds(store, SOURCE)
        assert overlap == 0.0
        (stale,) = [r for r in store.runs(SOURCE) if r.id == stale_run]
        assert stale.status == "interrupted" and stale.finished_at is not None
        assert "lock" in (stale.error or "")
        with store.engine.connect() as conn:
            # Nothing the stale run wrote is dated after the moment its run was closed.
            late = conn.execute(
                select(func.count())
                .select_from(invoice)
                .where(invoice.c.last_run_id == stale_run, invoice.c.written_at > stale.finished_at)
            ).scalar_one()
        assert late == 0
        stored, quarantined, money = assert_exact(store, sandbox, SOURCE)
        runs = len([r for r in store.runs(SOURCE) if r.kind == "sync"])
    print(
        f"\nlock loss noticed {detection_s:.2f}s after pg_terminate_backend "
        f"(check every {LOCK_CHECK_S}s); overlap {overlap}s; {runs} runs; "
        f"stored {stored} + quarantined {quarantined}, total {money}; "
        f"{len(refused)} stale write(s) refused by the fence, {len(taken)} takeover log(s)"
    )
    # The documented bound: one check interval plus the check's own timeout (5 s).
    assert detection_s <= LOCK_CHECK_S + 5.0


def test_an_unreachable_database_is_logged_once_and_its_recovery_once(
    sandbox: SandboxServer, pg_store_url: str, tmp_path: Path
) -> None:
    name = make_url(pg_store_url).database
    cfg = write_config(
        tmp_path / "connector.yaml",
        sandbox,
        pg_store_url,
        [SOURCE],
        source_fields={"page_size": 20, "schedule": "1s"},
        daemon={"jitter": "0s", "shutdown_timeout": "10s", "lock_check_interval": "1s"},
    )
    with connector_processes(tmp_path) as start:
        daemon = start("--config", str(cfg), "run")
        wait_for(lambda: daemon.events("sync.finished"), timeout=60)
        # The database refuses every connection, and the open ones are cut.
        admin_sql(pg_store_url, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        try:
            admin_sql(
                pg_store_url,
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = :name AND pid <> pg_backend_pid()",
                name=name,
            )
            wait_for(lambda: daemon.events("store.unreachable"), timeout=30)
            time.sleep(4)  # several scheduled runs fall due meanwhile
        finally:
            admin_sql(pg_store_url, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        recovered = wait_for(lambda: daemon.events("store.recovered"), timeout=60)[0]
        finished_before = len(daemon.events("sync.finished"))
        wait_for(lambda: len(daemon.events("sync.finished")) > finished_before, timeout=30)
        code, _seconds = terminate(daemon, timeout=20)
        unreachable = daemon.events("store.unreachable")
        lock_failed = daemon.events("daemon.lock_failed")
    assert code == 143, daemon.stderr()[-3000:]
    assert len(unreachable) == 1, unreachable
    assert unreachable[0]["next_retry_in_s"] == 1.0
    assert unreachable[0]["retry_schedule_s"][:3] == [1.0, 2.0, 4.0]
    assert len(daemon.events("store.recovered")) == 1
    assert lock_failed == []
    print(f"\nstore down {recovered['down_s']}s, back after {recovered['attempts']} probe(s)")
