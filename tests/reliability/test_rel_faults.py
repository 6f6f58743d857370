"""Network faults against every sandbox source over loopback: 10 % of the answers are 429 (with
Retry-After), 500, 502, 503, stalls longer than the client's timeout, or dropped connections.

Every sync still ends with exactly what a fault-free sync stores; each fault costs exactly one
extra request (retries are bounded), a 429 is retried no sooner than its Retry-After, other
faults are retried after a bounded back-off, and the rate limit holds while retrying. A vendor
that stays down fails its source alone, in bounded time, and the next run recovers.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connector.sandbox import SandboxOptions, SandboxServer
from connector.sandbox._server import FAULT_KINDS, FaultSettings, RequestLogEntry
from connector.sandbox.splose import SploseDialect
from connector.sources import http as connector_http
from connector.store.store import sqlite_url_for
from tests.reliability.rel_helpers import (
    RETRYING_HTTP,
    sandbox_app_config,
    seeded_store,
    served_count,
    snapshot,
    sync_all,
)

RETRY_AFTER_S = 1
# The client's timeout is well above a healthy answer's time on a loaded machine (up to
# ~0.15 s seen with the CPUs oversubscribed), so that only the injected stalls time out: a
# spurious timeout would cost an extra request that the bounded-retry check counts.
CLIENT_TIMEOUT_S = 1.5
STALL_S = CLIENT_TIMEOUT_S + 1.0
FAULT_HTTP = {**RETRYING_HTTP, "timeout": f"{CLIENT_TIMEOUT_S}s"}
BACKOFF_MAX_S = 0.2
# Scheduling slack on a loaded CI machine.
SLACK_S = 2.0
ARRIVAL_LAG_S = 0.25


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    options = SandboxOptions(
        invoices=150,
        seed=7,
        defect_rate=0.1,
        fault_kinds=FAULT_KINDS,
        stall_s=STALL_S,
        retry_after_s=RETRY_AFTER_S,
    )
    with SandboxServer(options) as server:
        splose = server.dialect("splose")
        assert isinstance(splose, SploseDialect)
        # Two syncs within a minute on one key: the limit itself has its own test below.
        splose.rate_limit = 10_000
        yield server


@pytest.fixture(scope="module")
def reference(
    sandbox: SandboxServer, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], dict[str, int]]:
    """A fault-free sync of every source: its store snapshot and the requests it took."""
    sandbox.set_faults(fault_rate=0.0)
    sandbox.reset_stats()
    path = tmp_path_factory.mktemp("reference") / "store.db"
    config = sandbox_app_config(sandbox, sqlite_url_for(path), http=FAULT_HTTP)
    with seeded_store(sandbox, config.store.sqlalchemy_url()) as store:
        results = sync_all(config, store)
        assert all(r.ok for r in results.values()), {n: r.error for n, r in results.items()}
        expected = snapshot(store, sandbox.dialect_names)
    requests = {name: sandbox.stats(name)["requests"] for name in sandbox.dialect_names}
    return expected, requests


def wait_for_stalled_answers(server: SandboxServer) -> None:
    """Until every answer the sandbox held back (a stall outlives the client's wait) is done."""
    deadline = time.monotonic() + STALL_S + SLACK_S
    while any(server.stats(n)["in_flight"] for n in server.dialect_names):
        assert time.monotonic() < deadline, "the sandbox never finished its stalled answers"
        time.sleep(0.05)


def next_attempt(log: list[RequestLogEntry], fault: RequestLogEntry) -> RequestLogEntry | None:
    """The retry of a faulted request: the next request for the same target."""
    later = [
        e
        for e in log
        if e.target == fault.target and e.method == fault.method and e.started > fault.started
    ]
    return min(later, key=lambda e: e.started, default=None)


def test_every_source_survives_ten_percent_mixed_faults(
    sandbox: SandboxServer, reference: tuple[dict[str, Any], dict[str, int]], tmp_path: Path
) -> None:
    expected, fault_free_requests = reference
    sandbox.reset_stats()
    sandbox.set_faults(fault_rate=0.1)
    try:
        config = sandbox_app_config(sandbox, sqlite_url_for(tmp_path / "store.db"), FAULT_HTTP)
        with seeded_store(sandbox, config.store.sqlalchemy_url()) as store:
            started = time.monotonic()
            results = sync_all(config, store)
            elapsed = time.monotonic() - started
            assert all(r.ok for r in results.values()), {n: r.error for n, r in results.items()}
            got = snapshot(store, sandbox.dialect_names)
            for name in sandbox.dialect_names:
                stored, held = store.count_invoices(name), store.count_quarantined(name)
                assert stored + held == served_count(sandbox, name), name
                assert results[name].counts.fetched == served_count(sandbox, name), name
    finally:
        sandbox.set_faults(fault_rate=0.0)

    # Stalled answers are still being held back: let them finish before reading the log.
    wait_for_stalled_answers(sandbox)
    by_kind: Counter[str] = Counter()
    retry_after_gaps: list[float] = []
    timeout_waits: list[float] = []
    for name in sandbox.dialect_names:
        assert got[name] == expected[name], f"{name}: the store differs from a fault-free sync"
        stats = sandbox.stats(name)
        by_kind.update(stats["faults_by_kind"])
        log = sandbox.request_log(name)
        # Bounded retries: every fault cost exactly one more request, nothing else did.
        clean = Counter((e.method, e.target) for e in log if e.fault is None)
        assert stats["requests"] - stats["faults_injected"] == fault_free_requests[name], (
            name,
            stats,
            len(log),
            [
                (t, [(x.status, x.fault) for x in log if (x.method, x.target) == t])
                for t, n in clean.items()
                if n > 1
            ],
        )
        for entry in log:
            if entry.fault is None:
                continue
            retry = next_attempt(log, entry)
            assert retry is not None, f"{name}: {entry.fault} on {entry.target} was never retried"
            if entry.fault == "429":
                gap = retry.started - entry.finished
                retry_after_gaps.append(gap)
                assert gap >= RETRY_AFTER_S - 0.05, f"{name}: Retry-After ignored ({gap:.3f}s)"
            elif entry.fault == "timeout":
                waited = retry.started - entry.started
                timeout_waits.append(waited)
                # The sandbox stamps a request when its handler runs, which under load can lag
                # the client's send by tens of milliseconds; hence the lower bound's allowance.
                assert (
                    CLIENT_TIMEOUT_S - ARRIVAL_LAG_S
                    <= waited
                    <= CLIENT_TIMEOUT_S + BACKOFF_MAX_S + SLACK_S
                ), f"{name}: timeout on {entry.target} retried after {waited:.3f}s"
            else:
                gap = retry.started - entry.finished
                assert -0.01 <= gap <= BACKOFF_MAX_S + SLACK_S, f"{name}: back-off {gap:.3f}s"
    # Every kind was injected somewhere (the seed is fixed: this is deterministic).
    assert set(by_kind) == set(FAULT_KINDS), by_kind
    assert retry_after_gaps
    # A client that gave up early would do so every time; a lagging stamp does not.
    assert max(timeout_waits) >= CLIENT_TIMEOUT_S - 0.05, timeout_waits
    print(
        f"\nfaults injected and survived: {dict(sorted(by_kind.items()))} "
        f"(total {sum(by_kind.values())}); min Retry-After gap {min(retry_after_gaps):.3f}s; "
        f"sync of {len(sandbox.dialect_names)} sources took {elapsed:.1f}s"
    )


def test_the_rate_limit_holds_while_retrying(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Splose allows N requests per window and retries count: with 10 % faults (429s among
    them) the vendor never sees more than N requests in any window and never has to refuse one.
    The window is scaled from 60 s to 3 s on both sides so the test takes seconds; the
    sandbox's window is shorter than the client's, so that the lag between the client's stamp
    and the sandbox's cannot make an honest client look guilty. A retry that skipped the
    limiter would still show: it follows its fault within the back-off, inside any window."""
    limit = 8
    # 0.5 s of lag allowance: a loaded machine delays single answers by a tenth of a second.
    vendor_window_s = 2.5

    class ScaledLimiter(connector_http.SlidingWindowLimiter):
        def __init__(self, limit: int, window: float = 60.0) -> None:
            super().__init__(limit, 3.0)

    monkeypatch.setattr(connector_http, "SlidingWindowLimiter", ScaledLimiter)
    options = SandboxOptions(
        invoices=60,
        seed=11,
        dialects=("splose",),
        fault_rate=0.1,
        fault_kinds=FAULT_KINDS,
        stall_s=STALL_S,
        retry_after_s=RETRY_AFTER_S,
        stats_window_s=vendor_window_s,
    )
    with SandboxServer(options) as server:
        dialect = server.dialect("splose")
        assert isinstance(dialect, SploseDialect)
        dialect.rate_limit, dialect.rate_window_s = limit, vendor_window_s
        http = {**FAULT_HTTP, "requests_per_minute": limit}
        config = sandbox_app_config(server, sqlite_url_for(tmp_path / "s.db"), http=http)
        with seeded_store(server, config.store.sqlalchemy_url()) as store:
            results = sync_all(config, store)
            assert results["splose"].ok, results["splose"].error
            stored = store.count_invoices("splose") + store.count_quarantined("splose")
            assert stored == served_count(server, "splose")
        wait_for_stalled_answers(server)  # not cut off (and reported) when the server stops
        stats = server.stats("splose")
    assert stats["requests"] > 2 * limit, "the test must span several windows"
    assert stats["faults_injected"] > 0
    assert stats["max_requests_per_window"] <= limit, stats
    # Every 429 the client saw was an injected one: the vendor's own limiter never refused.
    assert stats["by_status"].get("429", 0) == stats["faults_by_kind"].get("429", 0), stats


def test_a_vendor_that_stays_down_fails_alone_and_the_next_run_resumes(tmp_path: Path) -> None:
    """meditrak goes down for good a few requests into its run: it fails with a clear error in
    bounded time while the other sources complete; once it is back, the next run resumes from
    the checkpoint and the store ends equal to an uninterrupted sync."""
    down = "meditrak"
    options = SandboxOptions(
        invoices=100,
        seed=3,
        defect_rate=0.1,
        dialects=("meditrak", "meditrak_import", "invoice_api"),
        fault_kinds=FAULT_KINDS,
        stall_s=STALL_S,
        retry_after_s=RETRY_AFTER_S,
        latency_ms=5,
    )
    http = {**FAULT_HTTP, "max_retries": 3}
    with SandboxServer(options) as server:
        reference_config = sandbox_app_config(server, sqlite_url_for(tmp_path / "ref.db"), http)
        with seeded_store(server, reference_config.store.sqlalchemy_url()) as store:
            assert all(r.ok for r in sync_all(reference_config, store).values())
            expected = snapshot(store, server.dialect_names)
        server.reset_stats()

        # Down from the 41st request on, decided as each request arrives: a thread watching
        # the count could be scheduled too late on a loaded machine, after the last page.
        mounted = server._get(down)
        faults = mounted.faults

        def down_after_a_few_pages() -> str | None:
            if mounted.stats.requests > 40:
                faults.fault_rate = 1.0
            return FaultSettings.draw(faults)

        faults.draw = down_after_a_few_pages  # type: ignore[method-assign]
        config = sandbox_app_config(server, sqlite_url_for(tmp_path / "store.db"), http)
        with seeded_store(server, config.store.sqlalchemy_url()) as store:
            started = time.monotonic()
            first = sync_all(config, store)
            elapsed = time.monotonic() - started
            del faults.draw  # back to the class's own draw, driven by fault_rate
            assert not first[down].ok
            assert "still failing after 4 attempts" in str(first[down].error), first[down].error
            for name in server.dialect_names:
                if name != down:
                    assert first[name].ok, first[name].error
            # Four attempts of one request, each at worst a stall (timeout) plus a 1 s
            # Retry-After, and each may wait for one other attempt in flight (the adaptive
            # bound is cut to its minimum by the failures): the source gives up in seconds,
            # never hangs. A bound on hanging, not a speed measurement.
            assert elapsed < 8 * (CLIENT_TIMEOUT_S + RETRY_AFTER_S) + 20, elapsed
            kept = store.count_invoices(down) + store.count_quarantined(down)
            assert 0 < kept < served_count(server, down), "the vendor fell over mid-list"
            assert store.get_state(down).resume is not None, "no checkpoint to resume from"

            server.set_faults(down, fault_rate=0.0)
            second = sync_all(config, store)
            assert all(r.ok for r in second.values()), {n: r.error for n, r in second.items()}
            assert second[down].resumed
            assert second[down].counts.fetched == served_count(server, down) - kept
            assert snapshot(store, server.dialect_names) == expected
            statuses = [r.status for r in store.runs(down)]
            assert statuses == ["ok", "failed"], statuses
        wait_for_stalled_answers(server)
