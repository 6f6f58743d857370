"""Helpers of the daemon, backfill and replica tests: `connector` subprocesses with their logs
in files, configs for a running sandbox, a private PostgreSQL database per test module, and
the store consistency checks those tests share."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from itertools import pairwise
from pathlib import Path
from typing import IO, Any

import pytest
import yaml
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from connector.cli.demo import sandbox_sources
from connector.pipeline.engine import EXIT_AFTER_BATCHES_ENV
from connector.sandbox import SandboxServer
from connector.store import Store
from connector.store.schema import invoice, invoice_item, sync_run
from tests.conftest import CONNECTOR_BIN

PG_URL_ENV = "CONNECTOR_TEST_PG_URL"
PG_REQUIRED_ENV = "CONNECTOR_REQUIRE_PG"
PG_DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
# Retry fast: a test wants a failure in milliseconds, not after a production back-off.
FAST_HTTP = {"max_retries": 2, "backoff_base": "10ms", "backoff_max": "50ms", "timeout": "10s"}


# ----------------------------------------------------------------------------- subprocesses


class ConnectorProcess:
    """A running `connector` command whose stdout and stderr go to files (no pipes to drain)."""

    def __init__(self, args: Sequence[str], workdir: Path, env: dict[str, str] | None = None):
        tag = uuid.uuid4().hex[:6]
        self.stdout_path = workdir / f"{args[-1] if args else 'connector'}-{tag}.out"
        self.stderr_path = self.stdout_path.with_suffix(".err")
        environment = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
        for inherited in ("CONNECTOR_CONFIG", EXIT_AFTER_BATCHES_ENV):
            environment.pop(inherited, None)
        environment.update(env or {})
        self._stdout: IO[bytes] = self.stdout_path.open("wb")
        self._stderr: IO[bytes] = self.stderr_path.open("wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [str(CONNECTOR_BIN), *args],
            stdout=self._stdout,
            stderr=self._stderr,
            stdin=subprocess.DEVNULL,
            env=environment,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.returncode is not None:
                self.close()

    def close(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            self.proc.wait(10)
        for handle in (self._stdout, self._stderr):
            if not handle.closed:
                handle.close()

    def stdout(self) -> str:
        return self.stdout_path.read_text(encoding="utf-8", errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The JSON log lines written so far (optionally only one event name)."""
        found = []
        for line in self.stderr().splitlines():
            if line.startswith("{"):
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line being written right now
                if name is None or event.get("event") == name:
                    found.append(event)
        return found


@contextmanager
def connector_processes(workdir: Path) -> Iterator[Callable[..., ConnectorProcess]]:
    """Start `connector` subprocesses; any still running at the end are killed and reaped."""
    if not CONNECTOR_BIN.exists():
        pytest.fail(f"{CONNECTOR_BIN} is missing: install the project (pip install -e .)")
    started: list[ConnectorProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> ConnectorProcess:
        process = ConnectorProcess(args, workdir, env)
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in started:
            process.close()


def terminate(process: ConnectorProcess, timeout: float) -> tuple[int, float]:
    """SIGTERM, then wait: (exit code, seconds it took to exit)."""
    sent = time.monotonic()
    process.signal(signal.SIGTERM)
    code = process.wait(timeout)
    return code, time.monotonic() - sent


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


# ----------------------------------------------------------------------------- configs


def write_config(
    path: Path,
    server: SandboxServer,
    store_url: str,
    names: Sequence[str],
    *,
    source_fields: dict[str, Any] | None = None,
    daemon: dict[str, Any] | None = None,
) -> Path:
    fields = {"http": FAST_HTTP, **(source_fields or {})}
    document: dict[str, Any] = {
        "store": {"url": store_url},
        "logging": {"level": "info", "format": "json"},
        "sources": sandbox_sources(server, names, **{name: dict(fields) for name in names}),
    }
    if daemon:
        document["daemon"] = daemon
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def seed_registry(server: SandboxServer, store: Store) -> None:
    """Import the sandbox's policy registry, so that only the seeded defects are quarantined."""
    from connector.cli.sandbox import seed_sandbox_registry

    seed_sandbox_registry(server, store)


# ----------------------------------------------------------------------------- PostgreSQL


def pg_server_url() -> str:
    return os.environ.get(PG_URL_ENV, PG_DEFAULT_URL)


@contextmanager
def private_pg_database() -> Iterator[str]:
    """A fresh database `connector_t_<hex>` on the test server, dropped afterwards.

    A database of its own, not a schema: advisory locks are per database, and other test
    modules lock the same source names concurrently. Skips when PostgreSQL is unreachable,
    unless CONNECTOR_REQUIRE_PG=1 (CI), where that is a failure.
    """
    base = make_url(pg_server_url())
    admin = create_engine(
        base.set(database="postgres"),
        isolation_level="AUTOCOMMIT",
        connect_args={"connect_timeout": 3},
    )
    name = f"connector_t_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        shown = base.render_as_string(hide_password=True)
        reason = (
            f"PostgreSQL not usable at {shown} ({type(exc).__name__}): start it there, or set "
            f"{PG_URL_ENV}=postgresql+psycopg://USER@HOST:PORT/DB (a role that may create "
            "databases) to run the replica tests"
        )
        if os.environ.get(PG_REQUIRED_ENV) == "1":
            pytest.fail(f"{reason}; {PG_REQUIRED_ENV}=1 makes this a failure")
        pytest.skip(reason)
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# ----------------------------------------------------------------------------- store checks


def assert_store_consistent(store: Store) -> None:
    """No run left running; every run's counters add up; every invoice has all its items."""
    runs = store.runs()
    assert not [r.id for r in runs if r.status == "running"], "a run was left running"
    for run in runs:
        c = run.counts
        handled = c["inserted"] + c["updated"] + c["unchanged"] + c["quarantined"]
        assert handled == c["fetched"], f"run {run.id} counters do not add up: {c}"
    per_source_inserted: dict[str, int] = {}
    for run in runs:
        per_source_inserted[run.source] = (
            per_source_inserted.get(run.source, 0) + run.counts["inserted"]
        )
    for source, inserted in per_source_inserted.items():
        # Each invoice was inserted exactly once over all runs: nothing written twice or lost.
        assert inserted == store.count_invoices(source), source
    with store.engine.connect() as conn:
        orphans = conn.execute(
            select(func.count())
            .select_from(invoice_item)
            .where(
                ~select(invoice.c.source_id)
                .where(
                    invoice.c.source == invoice_item.c.source,
                    invoice.c.source_id == invoice_item.c.source_id,
                )
                .exists()
            )
        ).scalar_one()
    assert orphans == 0
    stored_hashes = {
        (source, source_id): digest
        for source in per_source_inserted
        for source_id, digest in store.content_hashes(source).items()
    }
    for stored in store.iter_invoices():
        # The hash covers the items: a half-written batch could not reproduce it.
        assert stored.items, f"{stored.id} has no items"
        assert stored.content_hash() == stored_hashes[(stored.source, stored.id)], stored.id


def sync_intervals(store: Store, kind: str = "sync") -> dict[str, list[tuple[datetime, datetime]]]:
    """source → [(started_at, finished_at)] of its finished runs of `kind`, by start."""
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(sync_run.c.source, sync_run.c.started_at, sync_run.c.finished_at)
            .where(sync_run.c.kind == kind)
            .order_by(sync_run.c.source, sync_run.c.started_at)
        ).all()
    intervals: dict[str, list[tuple[datetime, datetime]]] = {}
    for source, started, finished in rows:
        assert finished is not None, f"a {kind} run of {source} never finished"
        intervals.setdefault(source, []).append((started, finished))
    return intervals


def overlap_seconds(store: Store, source: str) -> float:
    """Total time two sync runs of `source` were open at once, by their sync_run rows."""
    with store.engine.connect() as conn:
        spans = conn.execute(
            select(sync_run.c.started_at, sync_run.c.finished_at)
            .where(sync_run.c.source == source, sync_run.c.kind == "sync")
            .order_by(sync_run.c.started_at)
        ).all()
    intervals: list[tuple[datetime, datetime]] = [(start, end) for start, end in spans]
    assert all(end is not None for _, end in intervals)
    overlap = 0.0
    for (_, earlier_end), (later_start, _) in pairwise(intervals):
        overlap += max(0.0, (earlier_end - later_start).total_seconds())
    return overlap


def assert_exact(store: Store, server: SandboxServer, source: str) -> tuple[int, int, Decimal]:
    """The store holds exactly the sandbox's records of `source` (each stored or quarantined,
    never both) and the stored money equals what the sandbox served; (stored, quarantined,
    money)."""
    dataset = server.dataset(source)
    stored = store.content_hashes(source)
    quarantined = {q.record_key for q in store.quarantine_entries(source)}
    assert set(stored) | quarantined == set(dataset.ids())
    assert not set(stored) & quarantined
    money = sum((i.total_amount for i in store.iter_invoices(source)), Decimal(0))
    expected = Decimal(0)
    for invoice_id in stored:
        served = dataset.get(invoice_id)
        assert served is not None
        expected += served.total
    assert money == expected
    assert_store_consistent(store)
    return len(stored), len(quarantined), money
