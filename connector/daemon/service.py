"""`connector run`: the long-running daemon that syncs every source on its schedule.

One asyncio loop holds the scheduler (see `connector.daemon.scheduler`), the source runs and the
signal handlers. Each run takes the source's lock first (one replica per source, fenced, see
`connector.store.locks`) and a freshly wired engine (so a registry import is seen without a
restart). While it runs, its lock is checked every `daemon.lock_check_interval` and the run is
cancelled at once if the lock is lost (`connector.daemon.guard`), or once it has lasted
`daemon.run_timeout`. An unreachable store is logged once, retried on a schedule, and its
recovery logged once. SIGTERM/SIGINT stop new work and cancel the runs in flight (a batch being
written still commits; the page being fetched is dropped), record them "interrupted" with their
resume point kept, log one summary line and exit 143/130; a second signal exits at once. A
cancelled run is never an error of the scheduler's job. SIGHUP, or a new mtime of the config
file or of a source's `category_rules` file (read once, when the config loads), reloads the
config and the schedules; a config or rules file with a problem is refused and the running
config kept. With `daemon.health_port` set, the ASGI app of `connector serve` answers /healthz
and Prometheus /metrics there, and with `daemon.serve_api` the import-contract API too
(`connector.daemon.hosting`); it stops last, so /healthz says "stopping" during a shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MAX_INSTANCES, JobExecutionEvent

from connector.config import load_config
from connector.daemon.guard import LockWatch, StoreOutage, check_interval, detection_bound
from connector.daemon.hosting import HostedServer, RunStats, start_hosting
from connector.daemon.scheduler import JOB_PREFIX, apply_schedules, new_scheduler
from connector.errors import ConfigError, ConnectorError, StoreUnreachable
from connector.logging import register_secrets
from connector.pipeline.engine import Engine
from connector.pipeline.wiring import build_engine
from connector.schedule import short_span
from connector.settings import AppConfig
from connector.store import Store
from connector.store.coordination import SourceLock, close_own_running_runs, source_lock

log = structlog.get_logger("connector.daemon.service")

EngineFactory = Callable[[AppConfig, Store], Engine]
# How often the mtimes of the config file and of its category rules files are looked at.
CONFIG_POLL_SECONDS = 2.0
# Why a run was cancelled: what its run row says, and how the run is counted.
SHUTDOWN, LOCK_LOST, RUN_TIMEOUT = "shutdown", "lock_lost", "run_timeout"
# At the end of a shutdown, how long the hosted server's requests in flight may take.
HOSTED_STOP_SECONDS = 5.0


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
        self._signal: signal.Signals | None = None
        # source → why its run task was cancelled (SHUTDOWN, LOCK_LOST, RUN_TIMEOUT).
        self._cancelled: dict[str, str] = {}
        self._interrupted: list[str] = []
        self._outage = StoreOutage(store)
        self._wiring = asyncio.Lock()
        # What the running config was read from: the config file's mtime, then each rules file's.
        self._loaded_from = (_mtime(config_path), *_rules_mtimes(config))
        self._background: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT: then 128 + the signal's number (143, 130)."""
        try:
            hosted = await asyncio.to_thread(self._start_hosting)
        except ConnectorError as exc:
            log.error("daemon.serve_failed", error=str(exc))
            return 2
        try:
            return await self._run_scheduled()
        finally:
            if hosted is not None:
                # Last, so /healthz answers "stopping" (503) all through a shutdown. Not in a
                # worker thread: the loop's executor is already shut down here.
                hosted.stop(HOSTED_STOP_SECONDS)

    async def _run_scheduled(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.on_signal, signal.Signals(signum))
        loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self.reload("SIGHUP")))
        # Skipped runs are reported through the job listener below, as structured events.
        logging.getLogger("apscheduler").setLevel(logging.ERROR)
        self.scheduler.add_listener(self._on_job_event, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_ERROR)
        changes = apply_schedules(self.scheduler, self.config, self.run_source)
        self.scheduler.start()
        settings = self.config.daemon
        log.info(
            "daemon.started",
            owner=self.store.owner,
            jobs=[job.name for job in self.scheduler.get_jobs()],
            health=self.health_url,
            serve_api=bool(self.health_url and settings.serve_api),
            added=len(changes.added),
            lock_loss_detected_within_s=detection_bound(
                settings.lock_check_interval, settings.lease
            ),
            run_timeout_s=settings.run_timeout.total_seconds(),
        )
        watcher = asyncio.create_task(self._watch_config())
        try:
            await self._stop_requested.wait()
            await self._shutdown()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await self._outage.close()
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
        return 0 if self._signal is None else 128 + self._signal.value

    def on_signal(self, signum: signal.Signals) -> None:
        if self._stopping and self._signal is not None:
            # A second signal: the operator will not wait for the runs to be recorded.
            log.warning("daemon.shutdown.forced", signal=signum.name, running=sorted(self._runs))
            _flush_logs()
            os._exit(128 + signum.value)
        self._signal = signum
        self.request_shutdown(signum.name)

    def request_shutdown(self, reason: str = "request") -> None:
        """Stop: no new runs, the runs in flight cancelled (their batch being written commits)."""
        if self._stopping:
            return
        log.info("daemon.stopping", reason=reason, running=sorted(self._runs))
        self._stopping = True
        for engine in self._engines:
            engine.request_stop()
        for name in list(self._runs):
            self._cancel_run(name, SHUTDOWN)
        self._stop_requested.set()

    def _cancel_run(self, name: str, why: str) -> None:
        task = self._runs.get(name)
        if task is None or task.done() or name in self._cancelled:
            return
        self._cancelled[name] = why
        task.cancel()

    async def _shutdown(self) -> None:
        started = time.monotonic()
        # No new runs from here on; the runs going were cancelled by request_shutdown.
        self.scheduler.pause()
        timeout = self.config.daemon.shutdown_timeout.total_seconds()
        running = list(self._runs.values())
        if running:
            _done, late = await asyncio.wait(running, timeout=timeout)
            if late:
                log.warning("daemon.shutdown.cut_off", sources=sorted(self._late_sources(late)))
        self.scheduler.shutdown(wait=False)
        # APScheduler's asyncio shutdown runs on the loop: let it happen before we return.
        await asyncio.sleep(0)
        # A store call of a cancelled run may still be finishing in its thread (a run row
        # being started): wait for those, then close whatever this process left running.
        loop = asyncio.get_running_loop()
        left = max(0.1, timeout - (time.monotonic() - started))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(loop.shutdown_default_executor(), timeout=left)
        closed = 0
        for source in self.config.sources:
            with contextlib.suppress(ConnectorError):
                closed += close_own_running_runs(self.store, source.name)
        _runs, records = self.stats.snapshot()
        stored = sum(v for (_, kind), v in records.items() if kind in ("inserted", "updated"))
        log.info(
            "daemon.stopped",
            reason=self._signal.name if self._signal else "request",
            interrupted=sorted(set(self._interrupted)),
            runs_closed=closed,
            stored=stored,
            seconds=round(time.monotonic() - started, 3),
            detail="interrupted runs resume where they stopped at their next run",
        )

    def _late_sources(self, late: set[asyncio.Task[Any]]) -> list[str]:
        return [name for name, task in self._runs.items() if task in late]

    # ------------------------------------------------------------------ one source run

    async def run_source(self, name: str) -> None:
        """The scheduled job of one source: lock, sync incrementally, unlock. Never raises:
        a cancelled run (shutdown, lost lock, run bound) is recorded here, not by APScheduler."""
        if self._stopping or self._outage.active:
            return
        try:
            source = self.config.source(name)
        except ConfigError:
            return  # removed by a reload after this run was already due
        settings = self.config.daemon
        lock = source_lock(self.store, name, settings.lease)
        try:
            held = await asyncio.to_thread(lock.acquire)
        except StoreUnreachable as exc:
            self._outage.report(str(exc))
            self.stats.count_run(name, "store_unreachable")
            return
        except ConnectorError as exc:
            log.error("daemon.lock_failed", source=name, error=str(exc))
            self.stats.count_run(name, "lock_failed")
            return
        if not held:
            log.info("daemon.run.skipped", source=name, reason="another replica is syncing it")
            self.stats.count_run(name, "skipped_locked")
            return
        if lock.previous_owner is not None:
            log.warning(
                "daemon.lock_taken_over",
                source=name,
                previous_owner=lock.previous_owner,
                epoch=lock.epoch,
            )
        task = asyncio.current_task()
        assert task is not None
        self._runs[name] = task
        self._cancelled.pop(name, None)
        watch = LockWatch(
            lock,
            name,
            check_interval(settings.lock_check_interval, settings.lease),
            lambda _reason: self._cancel_run(name, LOCK_LOST),
        )
        loop = asyncio.get_running_loop()
        deadline = loop.call_later(
            settings.run_timeout.total_seconds(), self._cancel_run, name, RUN_TIMEOUT
        )
        keeper: asyncio.Task[None] | None = None
        engine: Engine | None = None
        try:
            if self._stopping:
                return
            async with self._wiring:
                # One engine built at a time: wiring is not known to be thread-safe (the
                # category stemmer shared by two sources' wiring once crashed).
                engine = await asyncio.to_thread(self.engine_factory, self.config, self.store)
            if self._stopping:
                return
            self._engines.add(engine)
            keeper = asyncio.create_task(watch.run())
            result = await engine.sync_source(source)
            why = self._cancelled.get(name)
            if why is None and not result.ok:
                # The store may have refused a write for a lost lock before the watch saw it.
                why = await watch.confirm_lost()
            if why is None:
                self.stats.record(result)
            else:
                # Cancelled while a batch was being written, which then failed its fence.
                await self._record_cancelled(name, why)
        except asyncio.CancelledError:
            await self._record_cancelled(name, self._cancelled.get(name, SHUTDOWN))
        except ConnectorError as exc:
            log.error("sync.failed", source=name, kind="sync", error=str(exc))
            self.stats.count_run(name, "failed")
        except Exception:
            # A bug, logged here with its traceback (as JSON): the daemon and the other
            # sources go on, and the scheduler never sees an exception.
            log.exception("daemon.run_crashed", source=name)
            self.stats.count_run(name, "crashed")
        finally:
            deadline.cancel()
            if keeper is not None:
                keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keeper
            if engine is not None:
                self._engines.discard(engine)
            self._runs.pop(name, None)
            self._cancelled.pop(name, None)
            await self._release(lock, name, hung=watch.hung)

    async def _record_cancelled(self, name: str, why: str) -> None:
        """The run row of a cancelled run: interrupted (shutdown, lost lock: it resumes) or
        failed (past its bound), unless the replica that took the source over closed it."""
        if why == RUN_TIMEOUT:
            bound = self.config.daemon.run_timeout
            error = f"the run exceeded daemon.run_timeout ({short_span(bound)}) and was cancelled"
            log.error("daemon.run_timeout", source=name, run_timeout_s=bound.total_seconds())
            status, outcome = "failed", "timed_out"
        elif why == LOCK_LOST:
            error = "source lock lost; the run was cancelled and resumes at its next run"
            status, outcome = "interrupted", "lock_lost"
        else:
            error = "cut off at shutdown; the next run resumes"
            status, outcome = "interrupted", "interrupted"
            self._interrupted.append(name)
        self.stats.count_run(name, outcome)
        try:
            await asyncio.to_thread(
                close_own_running_runs, self.store, name, status=status, error=error
            )
        except ConnectorError as exc:
            log.warning("daemon.run_record_failed", source=name, error=str(exc))

    async def _release(self, lock: SourceLock, name: str, *, hung: bool) -> None:
        if hung:
            # A lock check is stuck on the lock's connection: release beside it, unwaited.
            threading.Thread(target=_quietly(lock.release), daemon=True).start()
            return
        try:
            await asyncio.to_thread(lock.release)
        except ConnectorError as exc:
            log.warning("daemon.unlock_failed", source=name, error=str(exc))

    def _on_job_event(self, event: JobExecutionEvent) -> None:
        name = str(event.job_id).removeprefix(JOB_PREFIX)
        if event.code == EVENT_JOB_MAX_INSTANCES:
            log.info("daemon.run.skipped", source=name, reason="its previous run is still going")
            self.stats.count_run(name, "skipped_busy")
        elif isinstance(event.exception, asyncio.CancelledError):
            return  # a stop, recorded by run_source: never a crash
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
        if _served_as(config) != _served_as(self.config):
            log.warning(
                "daemon.reload_serve_ignored",
                detail="a change to serve: or daemon.health_*/serve_api needs a restart",
            )
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

    def _start_hosting(self) -> HostedServer | None:
        hosted = start_hosting(
            self.config,
            self.stats,
            self.health,
            up=lambda: not self._stopping,
            sources=lambda: [source.name for source in self.config.sources],
        )
        self.health_url = hosted.url if hosted is not None else None
        return hosted

    def health(self) -> tuple[int, dict[str, Any]]:
        jobs = [job.id for job in self.scheduler.get_jobs() if job.id.startswith(JOB_PREFIX)]
        body = {
            "status": "stopping" if self._stopping else "ok",
            "store": "unreachable" if self._outage.active else "ok",
            "owner": self.store.owner,
            "jobs": len(jobs),
            "running": sorted(self._runs),
        }
        return (503 if self._stopping else 200), body


def _flush_logs() -> None:
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    with contextlib.suppress(Exception):
        sys.stderr.flush()


def _quietly(call: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        with contextlib.suppress(Exception):
            call()

    return run


def _served_as(config: AppConfig) -> tuple[object, ...]:
    """What the hosted server was built from (`connector.daemon.hosting`), reload aside."""
    daemon = config.daemon
    api = config.serve if daemon.serve_api else None
    return (daemon.health_host, daemon.health_port, daemon.serve_api, api)


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
