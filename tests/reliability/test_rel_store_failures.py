"""A full disk or a read-only database file: the sync fails with a clear store error, nothing of
the failed transaction is kept, and the store is intact afterwards (integrity check ok, earlier
data unchanged). A full disk is simulated with SQLite's `max_page_count` (no tiny filesystem is
available to the tests, and the tests run as root, for whom file modes do not stop writes), a
read-only database with `query_only`; both make SQLite answer exactly as the real conditions do
("database or disk is full", "attempt to write a readonly database")."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from connector.sandbox import SandboxOptions, SandboxServer
from connector.store import Store
from connector.store.store import sqlite_url_for
from tests.reliability.rel_helpers import sandbox_app_config, seeded_store, snapshot, sync_all

NAMES = ("meditrak_import", "meditrak")


def clamp(store: Store, pragma: str) -> None:
    """Every connection the store opens from now on runs `pragma` first."""
    store.engine.dispose()

    @event.listens_for(store.engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        if pragma == "disk_full":
            pages = cursor.execute("PRAGMA page_count").fetchone()[0]
            cursor.execute(f"PRAGMA max_page_count={pages}")
        else:
            cursor.execute("PRAGMA query_only=ON")
        cursor.close()


@pytest.mark.parametrize(
    ("condition", "message"),
    [("disk_full", "database or disk is full"), ("read_only", "readonly database")],
)
def test_a_store_that_refuses_writes_fails_clearly_and_stays_intact(
    condition: str, message: str, tmp_path: Path
) -> None:
    options = SandboxOptions(invoices=200, seed=41, defect_rate=0.1, dialects=NAMES)
    with SandboxServer(options) as server:
        # A first sync stores everything; then invoices change and new ones arrive.
        path = tmp_path / "store.db"
        config = sandbox_app_config(server, sqlite_url_for(path))
        with seeded_store(server, config.store.sqlalchemy_url()) as store:
            assert all(r.ok for r in sync_all(config, store).values())
            before = snapshot(store, NAMES)
            runs_before = len(store.runs())
        for name in NAMES:
            dataset = server.dataset(name)
            # A full disk still takes a write that fits in the pages the file already has (an
            # in-place update can), so that case brings only new invoices, which need new pages.
            if condition != "disk_full":
                for invoice_id in dataset.ids()[:40]:
                    dataset.mutate(invoice_id)
            for _ in range(300):
                dataset.add()

        with Store(config.store.sqlalchemy_url()) as store:
            clamp(store, condition)
            results = sync_all(config, store)
        for name in NAMES:
            assert not results[name].ok, f"{name}: the write should have been refused"
            error = str(results[name].error)
            assert message in error, error
            assert "check free disk space and that the database file is writable" in error

        # Afterwards (space freed, file writable again): intact, and nothing half written.
        with sqlite3.connect(path) as raw:
            assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        with Store(config.store.sqlalchemy_url()) as store:
            assert snapshot(store, NAMES) == before
            # The refused runs could not even be recorded, or were recorded as failed.
            assert all(r.status in ("ok", "failed") for r in store.runs())
            assert len(store.runs()) >= runs_before
            # And the next run completes.
            assert all(r.ok for r in sync_all(config, store).values())
            for name in NAMES:
                kept = store.count_invoices(name) + store.count_quarantined(name)
                assert kept == len(server.dataset(name))
