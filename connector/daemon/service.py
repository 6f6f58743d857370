"""`connector run`: the long-running daemon that syncs every source on its schedule.

One asyncio loop holds the scheduler (see `connector.daemon.scheduler`), the source runs and the
signal handlers. Each run takes the source's lock first (one replica per source, see
`connector.store.coordination`) and a freshly wired engine (so a registry import is seen
without a restart). SIGTERM/SIGINT stop new work, let the batch in flight commit, end running
syncs as "interrupted" with their resume point kept, and return within the shutdown timeout;
a second signal cuts the wait short. SIGHUP, or a new mtime of the config file or of a
source's `category_rules` file (read once, when the config loads), reloads the config and the
schedules; a config or rules file with a problem is refused and the running config kept. An
optional HTTP endpoint serves /healthz and Prometheus /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import structlog
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MAX_INSTANCES, JobExecutionEvent

from connector.config import load_config
from connector.daemon.scheduler import JOB_PREFIX, apply_schedules, new_scheduler
from connector.errors import ConfigError, ConnectorError
from connector.logging import register_secrets
from connector.pipeline.engine import Engine, RunResult
from connector.pipeline.wiring import build_engine
from connector.settings import AppConfig
from connector.store import Store
from connector.store.coordination import SourceLock, close_own_running_runs, source_lock

log = structlog.get_logger("connector.daemon.service")

EngineFactory = Callable[[AppConfig, Store], Engine]
# How often the mtimes of the config file and of its category rules files are looked at.
CONFIG_POLL_SECONDS = 2.0


class RunStats:
    """Counters of this process for /metrics; written on the loop, read by the HTTP thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.runs: Counter[tuple[str, str]] = Counter()
        self.records: Counter[tuple[str, str]] = Counter()

    def count_run(self, source: str, outcome: str) -> None:
        with self._lock:
            self.runs[(source, outcome)] += 1

    def record(self, result: RunResult) -> None:
        outcome = "ok" if result.ok else "interrupted" if result.interrupted else "failed"
        with self._lock:
            self.runs[(result.source, outcome)] += 1
            for name, value in result.counts.as_dict().items():
                self.records[(result.source, name)] += value

    def snapshot(self) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int]]:
        with self._lock:
            return dict(self.runs), dict(self.records)


class Daemon:
    def __init__(
        self,
        config_path: Path,
        config: AppConfig,
        store: Store,
        engine_factory: EngineFactory | None = None,
    ) -> None:
        self.config_path = config_path
        self.config = config
        self.store = store
        self.engine_factory = engine_factory or build_engine
        self.stats = RunStats()
        self.scheduler = new_scheduler()
        self.health_url: str | None = None
        self._runs: dict[str, asyncio.Task[Any]] = {}
        self._engines: set[Engine] = set()
        self._stop_requested = asyncio.Event()
        self._stopping = False
        self._force = False
        # What the running config was read from: the config file's mtime, then each rules file's.
        self._loaded_from = (_mtime(config_path), *_rules_mtimes(config))
        self._background: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT; 0 after a clean stop."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_shutdown, signal.Signals(signum).name)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self.reload("SIGHUP")))
        # Skipped runs are reported through the job listener below, as structured events.
        logging.getLogger("apscheduler").setLevel(logging.ERROR)
        health = self._start_health()
        self.scheduler.add_listener(self._on_job_event, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_ERROR)
        changes = apply_schedules(self.scheduler, self.config, self.run_source)
        self.scheduler.start()
        log.info(
            "daemon.started",
            owner=self.store.owner,
            jobs=[job.name for job in self.scheduler.get_jobs()],
            health=self.health_url,
            added=len(changes.added),
        )
        watcher = asyncio.create_task(self._watch_config())
        try:
            await self._stop_requested.wait()
            return await self._shutdown()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
            if health is not None:
                await asyncio.to_thread(health.shutdown)
                health.server_close()

    def request_shutdown(self, reason: str = "request") -> None:
        if self._stopping:
            # A second signal: stop waiting for runs to reach a batch boundary.
            log.warning("daemon.shutdown.forced", reason=reason)
            self._force = True
            for task in self._runs.values():
                task.cancel()
            return
        log.info("daemon.stopping", reason=reason, running=sorted(self._runs))
        self._stopping = True
        for engine in self._engines:
            engine.request_stop()
        self._stop_requested.set()

    async def _shutdown(self) -> int:
        started = time.monotonic()
        # No new runs from here on; the jobs already going were asked to stop between batches.
        self.scheduler.pause()
        timeout = self.config.daemon.shutdown_timeout.total_seconds()
        running = list(self._runs.values())
        if running:
            _done, late = await asyncio.wait(running, timeout=timeout)
            if late:
                log.warning("daemon.shutdown.cut_off", sources=sorted(self._late_sources(late)))
                for task in late:
                    task.cancel()
                await asyncio.gather(*late, return_exceptions=True)
        self.scheduler.shutdown(wait=False)
        # APScheduler's asyncio shutdown runs on the loop: let it happen before we return.
        await asyncio.sleep(0)
        log.info("daemon.stopped", seconds=round(time.monotonic() - started, 3))
        return 0

    def _late_sources(self, late: set[asyncio.Task[Any]]) -> list[str]:
        return [name for name, task in self._runs.items() if task in late]

    # ------------------------------------------------------------------ one source run

    async def run_source(self, name: str) -> None:
        """The scheduled job of one source: lock, sync incrementally, unlock."""
        if self._stopping:
            return
        try:
            source = self.config.source(name)
        except ConfigError:
            return  # removed by a reload after this run was already due
        lock = source_lock(self.store, name, self.config.daemon.lease)
        try:
            held = await asyncio.to_thread(lock.acquire)
        except ConnectorError as exc:
            log.error("daemon.lock_failed", source=name, error=str(exc))
            self.stats.count_run(name, "lock_failed")
            return
        if not held:
            log.info("daemon.run.skipped", source=name, reason="another replica is syncing it")
            self.stats.count_run(name, "skipped_locked")
            return
        task = asyncio.current_task()
        assert task is not None
        self._runs[name] = task
        keeper: asyncio.Task[None] | None = None
        engine: Engine | None = None
        try:
            if self._stopping:
                return
            try:
                engine = await asyncio.to_thread(self.engine_factory, self.config, self.store)
            except ConnectorError as exc:
                log.error("sync.failed", source=name, kind="sync", error=str(exc))
                self.stats.count_run(name, "failed")
                return
            if self._stopping:
                return
            self._engines.add(engine)
            keeper = asyncio.create_task(self._keep_lock(lock, name, engine))
            result = await engine.sync_source(source)
            self.stats.record(result)
        except asyncio.CancelledError:
            # Cut off at the shutdown bound: the engine already let its batch commit.
            await asyncio.to_thread(close_own_running_runs, self.store, name)
            self.stats.count_run(name, "interrupted")
            raise
        finally:
            if keeper is not None:
                keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keeper
            if engine is not None:
                self._engines.discard(engine)
            self._runs.pop(name, None)
            try:
                await asyncio.to_thread(lock.release)
            except ConnectorError as exc:
                log.warning("daemon.unlock_failed", source=name, error=str(exc))

    async def _keep_lock(self, lock: SourceLock, name: str, engine: Engine) -> None:
        interval = max(0.5, self.config.daemon.lease.total_seconds() / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                renewed = await asyncio.to_thread(lock.renew)
            except ConnectorError as exc:
                renewed = False
                log.warning("daemon.lock_renew_failed", source=name, error=str(exc))
            if not renewed:
                # Another replica may take the source now: end this run at the next batch
                # boundary (it is recorded as interrupted and resumes later) rather than race.
                log.warning("daemon.lock_lost", source=name)
                engine.request_stop()
                return

    def _on_job_event(self, event: JobExecutionEvent) -> None:
        name = str(event.job_id).removeprefix(JOB_PREFIX)
        if event.code == EVENT_JOB_MAX_INSTANCES:
            log.info("daemon.run.skipped", source=name, reason="its previous run is still going")
            self.stats.count_run(name, "skipped_busy")
        elif event.exception is not None:
            log.error("daemon.job_crashed", source=name, error=repr(event.exception))

    # ------------------------------------------------------------------ reload

    async def reload(self, reason: str) -> None:
        """Re-read the config file (and its rules files) and bring the jobs in line; a config
        with any problem, a broken rules file included, is refused and the old one kept."""
        # Taken before reading, so that an edit made while reading is seen at the next poll;
        # kept after a refusal too, so that the same broken files are not retried every poll.
        self._loaded_from = self._watched_mtimes()
        try:
            config = await asyncio.to_thread(load_config, self.config_path)
        except ConfigError as exc:
            log.error("daemon.reload_rejected", reason=reason, problems=exc.problems)
            return
        self._loaded_from = (self._loaded_from[0], *_rules_mtimes(config))
        if config.store.sqlalchemy_url() != self.config.store.sqlalchemy_url():
            log.warning("daemon.reload_store_ignored", detail="a store change needs a restart")
            config = config.model_copy(update={"store": self.config.store})
        register_secrets(config.secrets())
        self.config = config
        if self._stopping:
            return
        changes = apply_schedules(self.scheduler, config, self.run_source)
        log.info("daemon.reloaded", reason=reason, **changes.as_dict())

    async def _watch_config(self) -> None:
        while True:
            await asyncio.sleep(CONFIG_POLL_SECONDS)
            now = self._watched_mtimes()
            if now[0] != self._loaded_from[0]:
                await self.reload("config file changed")
            elif now != self._loaded_from:
                await self.reload("category rules file changed")

    def _watched_mtimes(self) -> tuple[int | None, ...]:
        """The config file's mtime, then those of the running config's rules files."""
        rules = (s.category_rules for s in self.config.sources if s.category_rules)
        return (_mtime(self.config_path), *(_mtime(Path(path)) for path in rules))

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ health & metrics

    def _start_health(self) -> ThreadingHTTPServer | None:
        settings = self.config.daemon
        if settings.health_port is None:
            return None
        server = ThreadingHTTPServer(
            (settings.health_host, settings.health_port), _handler_for(self)
        )
        server.daemon_threads = True
        host, port = server.server_address[:2]
        self.health_url = f"http://{host!s}:{port}"
        threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
        return server

    def health(self) -> tuple[int, dict[str, Any]]:
        jobs = [job.id for job in self.scheduler.get_jobs() if job.id.startswith(JOB_PREFIX)]
        body = {
            "status": "stopping" if self._stopping else "ok",
            "owner": self.store.owner,
            "jobs": len(jobs),
            "running": sorted(self._runs),
        }
        return (503 if self._stopping else 200), body

    def metrics(self) -> str:
        """Prometheus text exposition: per source last run, outcome, lag, counters."""
        now = datetime.now(UTC)
        lines: list[str] = []

        def family(name: str, kind: str, text: str) -> None:
            lines.extend((f"# HELP {name} {text}", f"# TYPE {name} {kind}"))

        family("connector_up", "gauge", "1 while the daemon serves (0 while stopping).")
        lines.append(f"connector_up {0 if self._stopping else 1}")
        per_source: dict[str, dict[str, float | None]] = {}
        for source in self.config.sources:
            last = self.store.runs(source.name, limit=1)
            run = last[0] if last else None
            state = self.store.get_state(source.name)
            per_source[source.name] = {
                "last_run": run.started_at.timestamp() if run else None,
                "last_ok": (1.0 if run.status == "ok" else 0.0) if run else None,
                "running": 1.0 if run and run.status == "running" else 0.0,
                "cursor": state.cursor.timestamp() if state.cursor else None,
                "lag": (now - state.cursor).total_seconds() if state.cursor else None,
            }
        gauges = (
            ("connector_source_last_run_timestamp_seconds", "last_run", "Start of the last run."),
            ("connector_source_last_run_success", "last_ok", "1 if the last run ended ok."),
            ("connector_source_running", "running", "1 while a run of the source is going."),
            ("connector_source_cursor_timestamp_seconds", "cursor", "Stored cursor (UTC)."),
            ("connector_source_lag_seconds", "lag", "Now minus the stored cursor."),
        )
        for metric, key, text in gauges:
            family(metric, "gauge", text)
            for name, values in per_source.items():
                value = values[key]
                if value is not None:
                    lines.append(f"{metric}{{source={_label(name)}}} {value:.3f}")
        runs, records = self.stats.snapshot()
        family("connector_runs_total", "counter", "Runs attempted by this process, by outcome.")
        for (name, outcome), count in sorted(runs.items()):
            lines.append(
                f"connector_runs_total{{source={_label(name)},outcome={_label(outcome)}}} {count}"
            )
        family("connector_records_total", "counter", "Records handled by this process.")
        for (name, kind), count in sorted(records.items()):
            lines.append(
                f"connector_records_total{{source={_label(name)},result={_label(kind)}}} {count}"
            )
        return "\n".join(lines) + "\n"


def _label(value: str) -> str:
    return json.dumps(value)  # Prometheus label escaping (\\, \", \n) matches JSON's


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def _rules_mtimes(config: AppConfig) -> tuple[int | None, ...]:
    """Each rules file's mtime as it was when the config read it (see `_watched_mtimes`)."""
    mtimes: list[int | None] = []
    for source in config.sources:
        if source.category_rules:
            kept = source.loaded_category_rules()
            mtimes.append(kept.mtime_ns if kept else _mtime(Path(source.category_rules)))
    return tuple(mtimes)


def _handler_for(daemon: Daemon) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "invoice-connector"

        def do_GET(self) -> None:
            try:
                if self.path == "/healthz":
                    status, body = daemon.health()
                    self._send(status, "application/json", json.dumps(body))
                elif self.path == "/metrics":
                    self._send(200, "text/plain; version=0.0.4", daemon.metrics())
                else:
                    self._send(404, "text/plain", "not found\n")
            except Exception as exc:  # a scrape must get an answer, whatever the store did
                self._send(503, "text/plain", f"store unavailable: {type(exc).__name__}\n")

        def _send(self, status: int, content_type: str, text: str) -> None:
            data = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # scrapes every few seconds would drown the logs

    return Handler
