"""The SQLite equivalent of the killed lock session: two real `connector run` replicas on one
SQLite store, the one syncing frozen (SIGSTOP) past its lease so that the other takes the
source over, then thawed (SIGCONT). The thawed replica must notice the loss, and the store must
refuse whatever it still tries to write: no overlap in `sync_run`, nothing committed by the
stale run after its close, and an exact store.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from connector.sandbox import SandboxOptions, SandboxServer
from connector.store import Store
from connector.store.schema import invoice, source_lock
from connector.store.store import sqlite_url_for
from tests.daemon_helpers import (
    assert_exact,
    connector_processes,
    overlap_seconds,
    seed_registry,
    terminate,
    wait_for,
    write_config,
)

SOURCE = "meditrak"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    options = SandboxOptions(invoices=80, seed=29, latency_ms=20, dialects=(SOURCE,))
    with SandboxServer(options) as server:
        yield server


def test_a_frozen_holder_whose_lease_ran_out_cannot_commit_when_it_wakes(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    url = sqlite_url_for(tmp_path / "store.db")
    cfg = write_config(
        tmp_path / "connector.yaml",
        sandbox,
        url,
        [SOURCE],
        source_fields={"page_size": 5, "schedule": "1s"},
        daemon={
            "jitter": "0s",
            "shutdown_timeout": "10s",
            "lease": "2s",
            "lock_check_interval": "500ms",
        },
    )
    with Store(url) as store:
        seed_registry(sandbox, store)
    sandbox.set_faults(SOURCE, latency_ms=400)
    try:
        with connector_processes(tmp_path) as start, Store(url) as store:
            replicas = [start("--config", str(cfg), "run") for _ in "ab"]

            def mid_run() -> int | None:
                last = store.runs(SOURCE, limit=1)
                running = last and last[0].status == "running" and last[0].counts["batches"]
                return last[0].id if running else None

            stale_run = wait_for(mid_run, timeout=60, interval=0.05)
            with store.engine.connect() as conn:
                owner = conn.execute(select(source_lock.c.owner)).scalar_one()
            (old,) = [r for r in replicas if r.pid == int(owner.split(":")[1])]
            (new,) = [r for r in replicas if r is not old]
            old.signal(signal.SIGSTOP)
            try:
                taken = wait_for(lambda: new.events("daemon.lock_taken_over"), timeout=30)[0]
            finally:
                old.signal(signal.SIGCONT)
            lost = wait_for(lambda: old.events("daemon.lock_lost"), timeout=30)[0]
            sandbox.set_faults(SOURCE, latency_ms=20)

            def synced_fully() -> bool:
                ok = [r for r in store.runs(SOURCE) if r.status == "ok"]
                return bool(ok) and store.get_state(SOURCE).resume is None

            wait_for(synced_fully, timeout=90, interval=0.25)
            codes = [terminate(replica, timeout=20)[0] for replica in replicas]
            refused = [
                e for e in old.events("sync.failed") if "lock of this run was lost" in e["error"]
            ]
    finally:
        sandbox.set_faults(SOURCE, latency_ms=20)

    assert codes == [143, 143]
    assert taken["previous_owner"] == owner
    with Store(url) as store:
        overlap = overlap_seconds(store, SOURCE)
        assert overlap == 0.0
        (stale,) = [r for r in store.runs(SOURCE) if r.id == stale_run]
        assert stale.status == "interrupted" and stale.finished_at is not None
        with store.engine.connect() as conn:
            late = conn.execute(
                select(func.count())
                .select_from(invoice)
                .where(invoice.c.last_run_id == stale_run, invoice.c.written_at > stale.finished_at)
            ).scalar_one()
        assert late == 0
        stored, quarantined, money = assert_exact(store, sandbox, SOURCE)
    print(
        f"\nfrozen past a 2s lease: taken over, loss noticed on waking ({lost['reason']}); "
        f"overlap {overlap}s; {len(refused)} stale write(s) refused; "
        f"stored {stored} + quarantined {quarantined}, total {money}"
    )
