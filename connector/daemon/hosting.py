"""What `connector run` serves over HTTP: the ASGI app of `connector serve` on
`daemon.health_port`, with /healthz and Prometheus /metrics always, and the import-contract API
(plus Bio Ecko webhooks when a source has a secret) when `daemon.serve_api` is set.

The server runs in a thread and event loop of its own (`connector.serve.start_in_thread`), so a
scrape or a busy API never waits for the daemon's loop, nor the loop for them. The daemon's run
counters join the app's Prometheus registry as a collector read at each scrape.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from fastapi import FastAPI
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from connector.errors import ConnectorError
from connector.pipeline.engine import RunResult
from connector.serve import HealthProbe, RunningServer, create_app, start_in_thread
from connector.serve.app import ops_router
from connector.serve.errors import install_error_handlers
from connector.serve.metrics import ObservedRequests, ServeMetrics, StoreGauges
from connector.settings import AppConfig, ServeSettings
from connector.store.serving import ServingReads


class RunStats:
    """Counters of this process for /metrics; written on the daemon's loop, read by scrapes."""

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


class RunCounters(Collector):
    """`connector_runs_total{source,outcome}` and `connector_records_total{source,result}`,
    the names the daemon's metrics have always had, from `RunStats` at each scrape."""

    def __init__(self, stats: RunStats) -> None:
        self._stats = stats

    def collect(self) -> Iterable[Metric]:
        runs, records = self._stats.snapshot()
        # prometheus_client appends "_total" to a counter family's name.
        run_family = CounterMetricFamily(
            "connector_runs",
            "Runs attempted by this process, by outcome.",
            labels=["source", "outcome"],
        )
        for (source, outcome), count in sorted(runs.items()):
            run_family.add_metric([source, outcome], count)
        record_family = CounterMetricFamily(
            "connector_records",
            "Records handled by this process, by result.",
            labels=["source", "result"],
        )
        for (source, result), count in sorted(records.items()):
            record_family.add_metric([source, result], count)
        return (run_family, record_family)


class LiveStoreGauges(Collector):
    """`StoreGauges` over the sources of the daemon's running config, so that a source added
    by a reload has its gauges at the next scrape, as the daemon's metrics always did."""

    def __init__(
        self, reads: ServingReads, sources: Callable[[], Sequence[str]], up: Callable[[], bool]
    ) -> None:
        self._reads = reads
        self._sources = sources
        self._up = up

    def collect(self) -> Iterable[Metric]:
        return StoreGauges(self._reads, self._sources(), self._up).collect()


def health_app(
    reads: ServingReads,
    sources: Callable[[], Sequence[str]],
    health: HealthProbe,
    up: Callable[[], bool],
) -> FastAPI:
    """/healthz and /metrics only: what the daemon serves without `daemon.serve_api`. The same
    routes, registry and request metrics as `create_app`, but no contract API, no OpenAPI
    document and no webhooks (those belong to whichever process serves the API)."""
    app = FastAPI(title="Invoice Connector daemon", docs_url=None, redoc_url=None, openapi_url=None)
    metrics = ServeMetrics()
    metrics.registry.register(LiveStoreGauges(reads, sources, up))
    app.state.reads = reads
    app.state.metrics = metrics
    app.state.webhooks = None
    install_error_handlers(app)
    app.include_router(ops_router(reads, metrics, health))
    # No access log: a scrape every few seconds would drown the daemon's own lines.
    app.add_middleware(ObservedRequests, metrics=metrics, access_log=False)
    return app


def listen_settings(config: AppConfig) -> ServeSettings:
    """Where and how the daemon listens: `daemon.health_host:health_port`; with the API on,
    `serve:`'s TLS files and access log apply too (the API carries keys and patient data)."""
    daemon = config.daemon
    where = {"host": daemon.health_host, "port": daemon.health_port}
    if daemon.serve_api:
        return config.serve.model_copy(update=where)
    return ServeSettings(host=daemon.health_host, port=daemon.health_port or 0, access_log=False)


@dataclass
class HostedServer:
    """The daemon's running server and what it holds open; `stop()` releases all of it."""

    app: FastAPI
    reads: ServingReads
    running: RunningServer
    # How long the webhook worker's round under way may take to finish at shutdown: the
    # daemon's `shutdown_timeout`, as for the runs it cancels.
    worker_timeout: float = 30.0

    @property
    def url(self) -> str:
        return self.running.url

    def stop(self, timeout: float) -> None:
        """Requests in flight finish (up to `timeout` s), then the webhook worker's round under
        way (up to `worker_timeout` s), then the store connections close."""
        self.running.stop(timeout)
        _release(self.app, self.reads, self.worker_timeout)


def start_hosting(
    config: AppConfig,
    stats: RunStats,
    health: HealthProbe,
    up: Callable[[], bool],
    sources: Callable[[], Sequence[str]],
) -> HostedServer | None:
    """Bind and start the daemon's server (None when `daemon.health_port` is unset); raises
    a ConnectorError when the store cannot be read or the port is taken. `sources` names the
    running config's sources (the health-only app follows reloads; the API app is built
    from `config` once, so a change to `serve:` takes a restart)."""
    if config.daemon.health_port is None:
        return None
    reads = ServingReads(config.store.sqlalchemy_url())
    app: FastAPI | None = None
    try:
        if config.daemon.serve_api:
            app = create_app(config, reads, health=health, up=up)
        else:
            app = health_app(reads, sources, health, up)
        app.state.metrics.registry.register(RunCounters(stats))
        running = start_in_thread(app, listen_settings(config))
    except BaseException:
        _release(app, reads)
        raise
    worker_timeout = config.daemon.shutdown_timeout.total_seconds()
    return HostedServer(app, reads, running, worker_timeout)


def _release(app: FastAPI | None, reads: ServingReads, worker_timeout: float = 30.0) -> None:
    webhooks = getattr(app.state, "webhooks", None) if app is not None else None
    if webhooks is not None:
        with contextlib.suppress(ConnectorError):
            webhooks.close(worker_timeout)
    reads.close()
