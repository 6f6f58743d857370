"""Pagination anomalies and token expiry, served by the sandbox over loopback.

Each anomaly is either handled (nothing skipped, nothing stored twice) or stopped with a clear
ContractError, and every sync runs under a deadline: an endless loop fails the test instead of
hanging it. Tokens that expire mid-run are refreshed once and the run goes on.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from connector.pipeline.engine import RunResult
from connector.pipeline.wiring import build_engine
from connector.sandbox import SandboxOptions, SandboxServer
from connector.sandbox._server import FaultSettings
from connector.sandbox.splose import SploseDialect
from connector.store import Store
from connector.store.store import sqlite_url_for
from tests.reliability.rel_helpers import RETRYING_HTTP, sandbox_app_config, seeded_store

DEADLINE_S = 30.0
INDEXED = ("meditrak", "meditrak_import", "invoice_api")
HANDLED = ("duplicate", "insert", "delete", "total_drift", "empty_page")


def vendor_ids(server: SandboxServer, name: str) -> set[str]:
    dialect = server.dialect(name)
    with server.dataset(name).lock:
        return {dialect.vendor_id(inv) for inv in server.dataset(name).invoices}


def sync_one(server: SandboxServer, name: str, store_path: Path) -> tuple[RunResult, Store]:
    config = sandbox_app_config(server, sqlite_url_for(store_path), names=[name])
    store = seeded_store(server, config.store.sqlalchemy_url())

    async def bounded() -> RunResult:
        engine = build_engine(config, store)
        return await asyncio.wait_for(engine.sync_source(config.source(name)), DEADLINE_S)

    return asyncio.run(bounded()), store


def kept_keys(store: Store, name: str) -> list[str]:
    return list(store.content_hashes(name)) + [e.record_key for e in store.quarantine_entries(name)]


@pytest.mark.parametrize("mode", HANDLED)
@pytest.mark.parametrize("name", INDEXED)
def test_indexed_anomalies_are_handled_exactly(name: str, mode: str, tmp_path: Path) -> None:
    options = SandboxOptions(
        invoices=100, seed=17, defect_rate=0.1, dialects=(name,), anomalies={name: mode}
    )
    with SandboxServer(options) as server:
        before = vendor_ids(server, name)
        result, store = sync_one(server, name, tmp_path / "store.db")
        with store:
            did = server.anomaly_log(name)
            assert did or mode == "total_drift", "the anomaly never fired"
            assert result.ok, result.error
            keys = kept_keys(store, name)
            # Nothing stored twice; everything served at any moment of the run kept once
            # (a record deleted after it was served stays stored, as it was when read).
            assert len(keys) == len(set(keys)), f"{mode}: a record was kept twice"
            assert set(keys) == before | vendor_ids(server, name), (mode, did)


@pytest.mark.parametrize("name", INDEXED)
def test_a_total_that_never_settles_stops_with_a_contract_error(name: str, tmp_path: Path) -> None:
    options = SandboxOptions(
        invoices=100, seed=17, dialects=(name,), anomalies={name: "total_flapping"}
    )
    with SandboxServer(options) as server:
        result, store = sync_one(server, name, tmp_path / "store.db")
        with store:
            assert not result.ok
            assert "total kept changing over 3 passes" in str(result.error), result.error
            (run,) = store.runs(name)
            assert run.status == "failed" and run.error


def test_a_next_link_that_loops_back_stops_with_a_contract_error(tmp_path: Path) -> None:
    options = SandboxOptions(
        invoices=160, seed=17, dialects=("splose",), anomalies={"splose": "next_loop"}
    )
    with SandboxServer(options) as server:
        splose = server.dialect("splose")
        assert isinstance(splose, SploseDialect)
        splose.rate_limit = 10_000
        result, store = sync_one(server, "splose", tmp_path / "store.db")
        with store:
            assert server.anomaly_log("splose"), "the anomaly never fired"
            assert not result.ok
            assert "loops back" in str(result.error), result.error
            # What was read before the loop is kept once and can be resumed from.
            keys = kept_keys(store, "splose")
            assert len(keys) == len(set(keys))
        assert server.stats("splose")["by_path"]["/v1/invoices"] <= 4


@pytest.mark.parametrize("name", ["bio_ecko", "invoice_api", "citabox"])
def test_a_token_expiring_mid_run_is_refreshed_once(name: str, tmp_path: Path) -> None:
    options = SandboxOptions(invoices=120, seed=23, defect_rate=0.1, dialects=(name,))
    with SandboxServer(options) as server:
        # The tokens die as the first data request (after the login) arrives, before it is
        # authorised: decided in the sandbox's own request path, where a watcher thread could be
        # scheduled too late on a loaded machine (citabox's whole run is one data request).
        mounted = server._get(name)
        faults = mounted.faults
        expired = threading.Event()

        def expire_on_the_second_request() -> str | None:
            if mounted.stats.requests >= 2 and not expired.is_set():
                server.dialect(name).expire_tokens()
                expired.set()
            return FaultSettings.draw(faults)

        faults.draw = expire_on_the_second_request  # type: ignore[method-assign]
        try:
            result, store = sync_one(server, name, tmp_path / "store.db")
        finally:
            del faults.draw
        with store:
            assert expired.is_set()
            assert result.ok, result.error
            kept = store.count_invoices(name) + store.count_quarantined(name)
            assert kept == len(server.dataset(name))
        logins = {
            path: count
            for path, count in server.stats(name)["by_path"].items()
            if "token" in path or "login" in path
        }
        # One login at the start, one refresh after the expiry: never a login storm.
        assert sum(logins.values()) == 2, logins
        assert server.stats(name)["by_status"].get("401", 0) >= 1


def test_http_settings_used_here_retry(tmp_path: Path) -> None:
    """Guard: the retrying settings these tests rely on are accepted by every source."""
    with SandboxServer(SandboxOptions(invoices=5, seed=1)) as server:
        config = sandbox_app_config(server, sqlite_url_for(tmp_path / "s.db"))
        for source in config.sources:
            assert source.http.max_retries == RETRYING_HTTP["max_retries"]
