"""SIGINT and SIGTERM sent to real `connector sync` and `connector validate` processes while
they work against a slowed sandbox: one summary line, JSON-only stderr (no traceback), the run
recorded "interrupted", exit 130 / 143, a second signal ending the process at once, and a rerun
that completes to exactly what an uninterrupted sync stores."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from connector.sandbox import SandboxOptions, SandboxServer
from connector.store import Store
from connector.store.database import sqlite_url_for
from tests.conftest import run_connector
from tests.daemon_helpers import (
    assert_store_consistent,
    connector_processes,
    seed_registry,
    wait_for,
    write_config,
)

SOURCE = "meditrak"
# Each page waits this long per request (list and every detail call): a run of 12 pages
# lasts several seconds, so a signal sent after the first batch lands mid-run.
SLOW_MS = 150


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    options = SandboxOptions(invoices=60, seed=23, latency_ms=SLOW_MS, dialects=(SOURCE,))
    with SandboxServer(options) as server:
        yield server


def _config(tmp_path: Path, server: SandboxServer, name: str, **fields: object) -> Path:
    url = sqlite_url_for(tmp_path / f"{name}.db")
    with Store(url) as store:
        seed_registry(server, store)
    return write_config(
        tmp_path / f"{name}.yaml",
        server,
        url,
        (SOURCE,),
        source_fields={"page_size": 5, **fields},
    )


def _counts(config: Path) -> tuple[int, int]:
    url = sqlite_url_for(config.with_suffix(".db"))
    with Store(url) as store:
        return store.count_invoices(SOURCE), store.count_quarantined(SOURCE)


def _json_lines(text: str) -> list[dict[str, object]]:
    events = []
    for line in text.splitlines():
        assert line.startswith("{"), f"not a JSON log line: {line!r}"
        events.append(json.loads(line))
    return events


@pytest.mark.parametrize(
    ("signum", "code", "name"), [(signal.SIGINT, 130, "SIGINT"), (signal.SIGTERM, 143, "SIGTERM")]
)
def test_a_signal_mid_sync_stops_cleanly_and_the_rerun_completes_exactly(
    sandbox: SandboxServer, tmp_path: Path, signum: int, code: int, name: str
) -> None:
    reference = _config(tmp_path, sandbox, "reference")
    done = run_connector("-c", str(reference), "sync", timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    expected = _counts(reference)
    assert expected[0] > 0

    config = _config(tmp_path, sandbox, "interrupted")
    url = sqlite_url_for(config.with_suffix(".db"))
    with connector_processes(tmp_path) as start:
        sync = start("-c", str(config), "sync")
        with Store(url) as store:

            def mid_run() -> bool:
                last = store.runs(SOURCE, limit=1)
                return bool(last) and last[0].status == "running" and last[0].counts["batches"] > 0

            wait_for(mid_run, timeout=60, interval=0.02)
        sync.signal(signum)
        assert sync.wait(60) == code, sync.stderr()[-2000:]
        stdout, stderr = sync.stdout(), sync.stderr()

    summary = [line for line in stdout.splitlines() if line.startswith("interrupted")]
    assert len(summary) == 1, stdout
    assert summary[0].startswith(f"interrupted by {name}; ")
    assert summary[0].endswith(" stored; run the same command to continue")
    assert "Traceback" not in stderr
    events = _json_lines(stderr)
    names = [e["event"] for e in events]
    assert "sync.interrupted" in names and "process.stopping" in names
    assert not [e for e in events if e.get("level") in ("error", "critical") and "crash" in str(e)]
    with Store(url) as store:
        last = store.runs(SOURCE, limit=1)[0]
        assert last.status == "interrupted"
        stored = last.counts["inserted"] + last.counts["updated"]
    assert summary[0] == f"interrupted by {name}; {stored} stored; run the same command to continue"

    rerun = run_connector("-c", str(config), "sync", timeout=120)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert _counts(config) == expected
    with Store(url) as store:
        assert_store_consistent(store)


def test_a_second_signal_exits_at_once(sandbox: SandboxServer, tmp_path: Path) -> None:
    config = _config(tmp_path, sandbox, "twice")
    path = config.with_suffix(".db")
    with connector_processes(tmp_path) as start:
        sync = start("-c", str(config), "sync")
        with Store(sqlite_url_for(path)) as store:
            wait_for(lambda: store.runs(SOURCE, limit=1), timeout=60, interval=0.02)
        # Another writer holds the store: the sync's next write waits for it, so the first
        # signal's clean stop cannot finish; the operator's second signal ends the wait.
        blocker = sqlite3.connect(path, isolation_level=None, timeout=30)
        try:
            blocker.execute("BEGIN IMMEDIATE")
            sync.signal(signal.SIGTERM)
            wait_for(lambda: sync.events("process.stopping"), timeout=30)
            sync.signal(signal.SIGINT)
            assert sync.wait(30) == 130
        finally:
            blocker.rollback()
            blocker.close()
        stderr = sync.stderr()
    assert "Traceback" not in stderr
    assert "process.stopped_at_once" in [e["event"] for e in _json_lines(stderr)]
    # Whatever was committed is whole: the next sync completes.
    assert run_connector("-c", str(config), "sync", timeout=120).returncode == 0


def test_validate_announces_a_rate_limit_wait_and_stops_on_sigint(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    # Two requests a minute: the third waits about a minute for the limit, announced.
    config = _config(tmp_path, sandbox, "limited", http={"requests_per_minute": 2})
    with connector_processes(tmp_path) as start:
        validate = start("-c", str(config), "validate", "--source", SOURCE)
        waits = wait_for(lambda: validate.events("source.rate_limit_wait"), timeout=60)
        validate.signal(signal.SIGINT)
        assert validate.wait(30) == 130, validate.stderr()[-2000:]
        stdout, stderr = validate.stdout(), validate.stderr()
    assert waits[0]["limit_per_minute"] == 2
    assert f"waiting {waits[0]['wait_s']} s for {SOURCE}'s rate limit (2/min)" == waits[0]["detail"]
    assert "Traceback" not in stderr
    events = _json_lines(stderr)
    assert "validate.interrupted" in [e["event"] for e in events]
    lines = [line for line in stdout.splitlines() if line.startswith("interrupted")]
    assert lines == ["interrupted by SIGINT; 0 stored; run the same command to continue"]


def test_sync_announces_a_rate_limit_wait_and_sigterm_ends_it(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    config = _config(tmp_path, sandbox, "limited-sync", http={"requests_per_minute": 3})
    url = sqlite_url_for(config.with_suffix(".db"))
    with connector_processes(tmp_path) as start:
        sync = start("-c", str(config), "sync")
        wait_for(lambda: sync.events("source.rate_limit_wait"), timeout=60)
        sync.signal(signal.SIGTERM)
        # The wait for the limit is abandoned: no minute passes before the exit.
        assert sync.wait(30) == 143, sync.stderr()[-2000:]
    with Store(url) as store:
        assert store.runs(SOURCE, limit=1)[0].status == "interrupted"


def test_a_rate_wait_names_the_configured_limit(sandbox: SandboxServer, tmp_path: Path) -> None:
    # The client's window is a minute plus a margin for arrival jitter: the line still says
    # 60/min, as configured (a rate computed from the widened window would read 59/min).
    config = _config(tmp_path, sandbox, "sixty", http={"requests_per_minute": 60})
    with connector_processes(tmp_path) as start:
        sync = start("-c", str(config), "sync")
        waits = wait_for(lambda: sync.events("source.rate_limit_wait"), timeout=90)
        sync.signal(signal.SIGTERM)
        assert sync.wait(30) == 143, sync.stderr()[-2000:]
    assert waits[0]["limit_per_minute"] == 60
    assert waits[0]["detail"].endswith(f"for {SOURCE}'s rate limit (60/min)")


def test_what_python_itself_would_print_is_a_json_log_line_too(tmp_path: Path) -> None:
    # A warning, an exception in a thread, one in a finalizer and an uncaught one: Python
    # would print each as plain text (a traceback) on stderr, outside JSON and masking.
    script = tmp_path / "noisy.py"
    script.write_text(
        "import gc, threading, warnings\n"
        "from connector.logging import configure_logging, register_secrets\n"
        "register_secrets(['s3cr3t-token'])\n"
        "configure_logging('info', 'json')\n"
        "warnings.warn('deprecated thing')\n"
        "worker = threading.Thread(target=lambda: 1 / 0)\n"
        "worker.start(); worker.join()\n"
        "class Leaky:\n"
        "    def __del__(self):\n"
        "        raise ValueError('in a finalizer')\n"
        "Leaky(); gc.collect()\n"
        "raise RuntimeError('uncaught, with s3cr3t-token in it')\n",
        encoding="utf-8",
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1
    events = _json_lines(done.stderr)
    messages = [str(e["event"]) for e in events]
    assert any("deprecated thing" in m for m in messages)
    assert "uncaught exception in a thread" in messages
    assert any("exception ignored" in m.lower() for m in messages)
    assert "uncaught exception" in messages
    assert "s3cr3t-token" not in done.stderr
