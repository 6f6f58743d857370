"""`connector run` stopped by real signals, and a source stuck past `daemon.run_timeout`
(issue 16 item 1, daemon part; issue 15 item 2, the bound of a source's whole run).

SIGTERM mid-sync cancels the run in flight at once (the batch being written still commits),
records it "interrupted", logs one `daemon.stopped` summary and exits 143; SIGINT exits 130;
a second signal exits at once. Every line the process writes, the libraries' and the
scheduler's included, is one JSON object, and a stop is never `daemon.job_crashed`. A source
whose vendor drips its answer one byte at a time is cancelled at its run bound and recorded
failed, while another source goes on syncing.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from connector.sandbox import SandboxOptions, SandboxServer
from connector.sandbox._anomaly import HostileBody
from connector.store import Store
from connector.store.store import sqlite_url_for
from tests.daemon_helpers import (
    ConnectorProcess,
    assert_store_consistent,
    connector_processes,
    seed_registry,
    wait_for,
    write_config,
)

SOURCES = ("meditrak", "meditrak_import")
SHUTDOWN_TIMEOUT_S = 20


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    options = SandboxOptions(invoices=60, seed=31, latency_ms=20, dialects=SOURCES)
    with SandboxServer(options) as server:
        yield server


def assert_only_json(process: ConnectorProcess) -> list[dict[str, object]]:
    """Every line of stdout and stderr parses as a JSON object; the events, in order."""
    events = []
    for stream in (process.stdout(), process.stderr()):
        for line in stream.splitlines():
            parsed = json.loads(line)  # a plain-text line (a traceback) fails here
            assert isinstance(parsed, dict), line
            events.append(parsed)
    names = [str(e.get("event")) for e in events]
    assert "daemon.job_crashed" not in names
    assert "daemon.run_crashed" not in names
    assert not any("Traceback" in json.dumps(e) for e in events if e.get("level") == "error")
    return events


def start_daemon(
    start: object, tmp_path: Path, sandbox: SandboxServer, url: str, **daemon: str
) -> ConnectorProcess:
    cfg = write_config(
        tmp_path / "connector.yaml",
        sandbox,
        url,
        SOURCES,
        source_fields={"page_size": 5, "schedule": "1s"},
        daemon={"jitter": "0s", "shutdown_timeout": f"{SHUTDOWN_TIMEOUT_S}s", **daemon},
    )
    assert callable(start)
    process = start("--config", str(cfg), "run")
    assert isinstance(process, ConnectorProcess)
    return process


def wait_mid_run(store: Store) -> int:
    def mid_run() -> int | None:
        last = store.runs("meditrak", limit=1)
        if last and last[0].status == "running" and last[0].counts["batches"] >= 1:
            return last[0].id
        return None

    run_id: int = wait_for(mid_run, timeout=60, interval=0.02)
    return run_id


def test_sigterm_mid_sync_interrupts_the_run_and_every_line_is_json(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    url = sqlite_url_for(tmp_path / "store.db")
    with Store(url) as store:
        seed_registry(sandbox, store)
    # Slow answers: the first meditrak run lasts many seconds, far more than its stop should.
    sandbox.set_faults("meditrak", latency_ms=400)
    try:
        with connector_processes(tmp_path) as start, Store(url) as store:
            # With the hosted server up (its lines must be JSON too), scraped mid-run.
            daemon = start_daemon(start, tmp_path, sandbox, url, health_port="0")
            run_id = wait_mid_run(store)
            health = daemon.events("daemon.started")[0]["health"]
            assert "meditrak" in httpx.get(f"{health}/healthz", timeout=10).json()["running"]
            daemon.signal(signal.SIGTERM)
            code = daemon.wait(SHUTDOWN_TIMEOUT_S + 10)
            events = assert_only_json(daemon)
    finally:
        sandbox.set_faults("meditrak", latency_ms=20)
    assert code == 143
    names = [e["event"] for e in events]
    # Cancelled at once, not waited for until the shutdown bound cut it off.
    assert "daemon.shutdown.cut_off" not in names
    (stopped,) = [e for e in events if e["event"] == "daemon.stopped"]
    assert stopped["reason"] == "SIGTERM"
    assert stopped["interrupted"] == ["meditrak"]
    with Store(url) as store:
        (run,) = [r for r in store.runs("meditrak") if r.id == run_id]
        assert run.status == "interrupted"
        assert run.counts["batches"] >= 1
        assert store.get_state("meditrak").resume is not None
        assert_store_consistent(store)
    print(f"\nSIGTERM mid-sync: daemon stopped in {stopped['seconds']}s, exit {code}")


def test_sigint_twice_exits_130_at_once(sandbox: SandboxServer, tmp_path: Path) -> None:
    url = sqlite_url_for(tmp_path / "store.db")
    sandbox.set_faults("meditrak", latency_ms=400)
    try:
        with connector_processes(tmp_path) as start, Store(url) as store:
            daemon = start_daemon(start, tmp_path, sandbox, url)
            wait_mid_run(store)
            daemon.signal(signal.SIGINT)
            daemon.signal(signal.SIGINT)
            code = daemon.wait(SHUTDOWN_TIMEOUT_S + 10)
            events = assert_only_json(daemon)
    finally:
        sandbox.set_faults("meditrak", latency_ms=20)
    assert code == 130
    names = [e["event"] for e in events]
    assert names.count("daemon.stopping") == 1
    # The second signal either found the stop done or forced the exit; never a traceback.
    assert "daemon.stopped" in names or "daemon.shutdown.forced" in names


def test_a_source_stuck_past_its_run_bound_fails_loudly_and_the_others_go_on(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    url = sqlite_url_for(tmp_path / "store.db")
    with Store(url) as store:
        seed_registry(sandbox, store)
    # meditrak's list answers drip one byte every 0.5 s: each request stays inside its own
    # deadline (http.timeout 10s) but the run as a whole would take hours.
    sandbox.set_hostile_body("meditrak", HostileBody("slow_drip", interval_s=0.5))
    try:
        with connector_processes(tmp_path) as start:
            daemon = start_daemon(start, tmp_path, sandbox, url, run_timeout="3s")
            timed_out = wait_for(lambda: daemon.events("daemon.run_timeout"), timeout=60)
            finished_before = len(
                [e for e in daemon.events("sync.finished") if e["source"] == "meditrak_import"]
            )

            def import_source_keeps_going() -> bool:
                ok = [e for e in daemon.events("sync.finished") if e["source"] == "meditrak_import"]
                return len(ok) >= finished_before + 2

            wait_for(import_source_keeps_going, timeout=60)
            daemon.signal(signal.SIGTERM)
            code = daemon.wait(SHUTDOWN_TIMEOUT_S + 10)
            assert_only_json(daemon)
    finally:
        sandbox.set_hostile_body("meditrak", None)
    assert code == 143
    assert timed_out[0]["source"] == "meditrak"
    assert timed_out[0]["level"] == "error"
    assert timed_out[0]["run_timeout_s"] == 3.0
    with Store(url) as store:
        failed = [r for r in store.runs("meditrak") if r.status == "failed"]
        assert failed, [(r.id, r.status) for r in store.runs("meditrak")]
        assert "daemon.run_timeout" in (failed[0].error or "")
        assert [r for r in store.runs("meditrak_import") if r.status == "ok"]
        assert not [r for r in store.runs() if r.status == "running"]
