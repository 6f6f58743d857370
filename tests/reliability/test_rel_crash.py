"""SIGKILL at random points of a backfill, 20 seeds per backend, restarting until it completes:
the final store equals an uninterrupted backfill's (same invoice ids, content hashes, items and
quarantine), on SQLite and on PostgreSQL.

Each attempt is a real process killed with SIGKILL: the test process forks a child that runs
`Backfill` (what `connector backfill` runs) against the sandbox served from the parent. Forking
skips the interpreter start and imports (seconds per process on a small CI machine), which is
what makes 20 trials per backend, with several kills each, fit in the suite's time budget.
`test_the_cli_backfill_survives_a_kill` runs the installed `connector backfill` itself once.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from connector.config import AppConfig
from connector.daemon.backfill import Backfill, LogProgress
from connector.logging import configure_logging
from connector.pipeline.wiring import build_engine
from connector.sandbox import SandboxOptions, SandboxServer
from connector.store import Store
from connector.store.store import sqlite_url_for
from tests.reliability.rel_helpers import (
    RETRYING_HTTP,
    private_pg_database,
    raw_sources,
    sandbox_app_config,
    seeded_store,
    snapshot,
)

SOURCE = "meditrak_import"
SINCE, UNTIL = date(2025, 1, 1), date(2025, 12, 31)
WINDOW_DAYS = 92
TRIALS = 20
MAX_KILLS_PER_TRIAL = 2
# Trials run side by side (each its own store): most of a trial is waiting for leases.
PARALLEL_TRIALS = 3
# A killed worker's window is taken over once its lease runs out: short, to keep trials fast.
LEASE = timedelta(seconds=0.5)
CHILD_DEADLINE_S = 60.0
CONNECTOR_BIN = Path(sys.executable).with_name("connector")


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    options = SandboxOptions(
        invoices=60, seed=29, defect_rate=0.1, latency_ms=2, dialects=(SOURCE,)
    )
    with SandboxServer(options) as server:
        yield server


CRASH_HTTP = {**RETRYING_HTTP, "concurrency": 2}


def config_for(server: SandboxServer, url: str) -> AppConfig:
    return sandbox_app_config(server, url, http=CRASH_HTTP)


def backfill_to_the_end(config: AppConfig) -> int:
    """The child's work: the backfill `connector backfill` runs; exit status as the CLI's."""
    configure_logging("error", "json", stream=open(os.devnull, "w"))  # noqa: SIM115
    with Store(config.store.sqlalchemy_url()) as store:
        job = Backfill(
            config,
            store,
            build_engine(config, store),
            source=SOURCE,
            since=SINCE,
            until=UNTIL,
            window_days=WINDOW_DAYS,
            lease=LEASE,
            progress=lambda key: LogProgress(key, 3600),
        )
        report = asyncio.run(job.run(handle_signals=False))
    return 0 if report.complete else 1


def fork_backfill(config: AppConfig) -> int:
    """Start the backfill in a forked child process; its pid."""
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        status = 3
        try:
            status = backfill_to_the_end(config)
        finally:
            os._exit(status)
    return pid


def fork_run(config: AppConfig) -> tuple[str, float]:
    """One uninterrupted backfill in a child: ("exit <status>", seconds it took)."""
    started = time.monotonic()
    pid = fork_backfill(config)
    while True:
        done, wait_status = os.waitpid(pid, os.WNOHANG)
        if done:
            return f"exit {os.waitstatus_to_exitcode(wait_status)}", time.monotonic() - started
        if time.monotonic() - started > CHILD_DEADLINE_S:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"the backfill did not finish within {CHILD_DEADLINE_S}s")
        time.sleep(0.005)


@dataclass
class Trial:
    """One seed: start, SIGKILL at a random moment (up to MAX_KILLS_PER_TRIAL times), restart,
    until a process completes the backfill."""

    seed: int
    url: str
    config: AppConfig
    rng: random.Random
    kills: int = 0
    attempts: int = 0
    pid: int | None = None
    kill_at: float | None = None
    started: float = 0.0
    equal: bool | None = None

    def start(self, lifetime: float) -> None:
        self.attempts += 1
        now = time.monotonic()
        self.started = now
        self.kill_at = (
            now + self.rng.uniform(0.02, lifetime) if self.kills < MAX_KILLS_PER_TRIAL else None
        )
        self.pid = fork_backfill(self.config)

    def poll(self) -> str | None:
        """None while running; "killed", or "exit <status>"."""
        assert self.pid is not None
        done, wait_status = os.waitpid(self.pid, os.WNOHANG)
        if done:
            self.pid = None
            return f"exit {os.waitstatus_to_exitcode(wait_status)}"
        now = time.monotonic()
        if self.kill_at is not None and now >= self.kill_at:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self.pid = None
            self.kills += 1
            return "killed"
        if now - self.started > CHILD_DEADLINE_S:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            pytest.fail(f"seed {self.seed}: a backfill ran over {CHILD_DEADLINE_S}s")
        return None


def run_trials(
    server: SandboxServer, new_store_url: Callable[[str], str]
) -> tuple[list[Trial], dict[str, Any]]:
    reference_url = new_store_url("reference")
    reference_config = config_for(server, reference_url)
    seeded_store(server, reference_url).close()
    outcome, lifetime = fork_run(reference_config)
    assert outcome == "exit 0", outcome
    with Store(reference_url) as store:
        expected = snapshot(store, [SOURCE])
    served = len(server.dataset(SOURCE))
    assert len(expected[SOURCE]["hashes"]) + len(expected[SOURCE]["quarantined"]) == served

    waiting: list[Trial] = []
    for seed in range(TRIALS):
        url = new_store_url(f"trial{seed}")
        seeded_store(server, url).close()
        waiting.append(Trial(seed, url, config_for(server, url), random.Random(seed)))
    finished: list[Trial] = []
    running: list[Trial] = []
    try:
        while waiting or running:
            while waiting and len(running) < PARALLEL_TRIALS:
                trial = waiting.pop(0)
                trial.start(lifetime)
                running.append(trial)
            for trial in list(running):
                result = trial.poll()
                if result is None:
                    continue
                if result == "exit 0" and trial.attempts == 1:
                    # Kill points are drawn from (0, lifetime): a reference run slowed by a burst
                    # of load would put most of them after the trials end (too few kills), so the
                    # estimate follows the fastest whole backfill (a first attempt) seen so far.
                    lifetime = min(lifetime, time.monotonic() - trial.started)
                if result == "exit 0":
                    running.remove(trial)
                    finished.append(trial)
                    continue
                # Killed (or, never expected, ended with windows failed): start again.
                assert trial.attempts < 10, f"seed {trial.seed}: never completed ({result})"
                trial.start(lifetime)
            time.sleep(0.005)
    finally:
        for trial in running:
            if trial.pid is not None:
                os.kill(trial.pid, signal.SIGKILL)
                os.waitpid(trial.pid, 0)
    for trial in finished:
        with Store(trial.url) as store:
            trial.equal = snapshot(store, [SOURCE]) == expected
    return sorted(finished, key=lambda t: t.seed), expected


def report(backend: str, outcomes: list[Trial]) -> None:
    kills = sum(o.kills for o in outcomes)
    print(
        f"\n{backend}: {len(outcomes)} trials, {kills} SIGKILLs, "
        f"{sum(o.attempts for o in outcomes)} processes, "
        f"{sum(bool(o.equal) for o in outcomes)} ended equal to the clean run"
    )


@pytest.mark.slow
def test_sigkilled_backfills_end_equal_to_a_clean_run_on_sqlite(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    outcomes, _ = run_trials(sandbox, lambda tag: sqlite_url_for(tmp_path / f"{tag}.db"))
    report("sqlite", outcomes)
    assert sum(o.kills for o in outcomes) >= TRIALS, "most trials must actually kill"
    assert [o.seed for o in outcomes if not o.equal] == []


@pytest.mark.slow
@pytest.mark.postgres
def test_sigkilled_backfills_end_equal_to_a_clean_run_on_postgres(
    sandbox: SandboxServer,
) -> None:
    with private_pg_database() as database_url:
        admin = create_engine(database_url)

        def new_schema(tag: str) -> str:
            schema = f"{tag}_{uuid.uuid4().hex[:8]}"
            with admin.begin() as conn:
                conn.execute(text(f'CREATE SCHEMA "{schema}"'))
            url = make_url(database_url).update_query_dict({"options": f"-csearch_path={schema}"})
            return url.render_as_string(hide_password=False)

        try:
            outcomes, _ = run_trials(sandbox, new_schema)
        finally:
            admin.dispose()
    report("postgres", outcomes)
    assert sum(o.kills for o in outcomes) >= TRIALS, "most trials must actually kill"
    assert [o.seed for o in outcomes if not o.equal] == []


@pytest.mark.slow
def test_the_cli_backfill_survives_a_kill(sandbox: SandboxServer, tmp_path: Path) -> None:
    """The installed `connector backfill`, SIGKILLed once mid-run and started again."""
    url = sqlite_url_for(tmp_path / "cli.db")
    seeded_store(sandbox, url).close()
    config_path = tmp_path / "connector.yaml"
    config_path.write_text(
        yaml.safe_dump(
            {
                "store": {"url": str(tmp_path / "cli.db")},
                "logging": {"format": "json"},
                "sources": raw_sources(sandbox, CRASH_HTTP),
            },
            sort_keys=False,
        )
    )
    command = [
        str(CONNECTOR_BIN),
        *("--config", str(config_path), "backfill", "--source", SOURCE),
        *("--since", str(SINCE), "--until", str(UNTIL), "--window", f"{WINDOW_DAYS}d"),
        *("--lease", "0.5s", "--progress-every", "0.1s"),
    ]
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    log = tmp_path / "first.err"
    with log.open("wb") as err:
        first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, env=env)
        # Kill once the first window's progress shows up: mid-run, not during imports.
        deadline = time.monotonic() + 60
        while b"backfill.planned" not in log.read_bytes() and first.poll() is None:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.01)
        time.sleep(0.2)
        first.send_signal(signal.SIGKILL)
        first.wait()
    second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert second.returncode == 0, second.stdout + second.stderr
    reference_url = sqlite_url_for(tmp_path / "reference.db")
    seeded_store(sandbox, reference_url).close()
    assert fork_run(config_for(sandbox, reference_url))[0] == "exit 0"
    with Store(url) as store, Store(reference_url) as reference:
        assert snapshot(store, [SOURCE]) == snapshot(reference, [SOURCE])
