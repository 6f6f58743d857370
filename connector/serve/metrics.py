"""Prometheus metrics of the served app, through `prometheus_client` with a registry per app:
request counts and latency histograms by route and status, and at each scrape the store and
sync gauges the daemon's hand-written exposition had (per source: last run, its outcome,
running, cursor, lag; `connector_up`). A host adds its own collectors to `registry`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from connector.store.serving import ServingReads

log = structlog.get_logger("connector.serve.access")

# Seconds; fine at the low end, where answers from a local store fall.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
_SOURCE_GAUGES = (
    ("connector_source_last_run_timestamp_seconds", "last_run", "Start of the last run."),
    ("connector_source_last_run_success", "last_ok", "1 if the last run ended ok."),
    ("connector_source_running", "running", "1 while a run of the source is going."),
    ("connector_source_cursor_timestamp_seconds", "cursor", "Stored cursor (UTC)."),
    ("connector_source_lag_seconds", "lag", "Now minus the stored cursor."),
)


class StoreGauges(Collector):
    """Per configured source, read from the store at each scrape."""

    def __init__(self, reads: ServingReads, sources: Sequence[str], up: Callable[[], bool]) -> None:
        self._reads = reads
        self._sources = tuple(sources)
        self._up = up

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily("connector_up", "1 while the process serves (0 while stopping).")
        up.add_metric([], 1.0 if self._up() else 0.0)
        yield up
        now = datetime.now(UTC)
        families = {
            key: GaugeMetricFamily(name, text, labels=["source"])
            for name, key, text in _SOURCE_GAUGES
        }
        for source in self._sources:
            last = self._reads.runs(source, limit=1)
            run = last[0] if last else None
            state = self._reads.get_state(source)
            values: dict[str, float | None] = {
                "last_run": run.started_at.timestamp() if run else None,
                "last_ok": (1.0 if run.status == "ok" else 0.0) if run else None,
                "running": 1.0 if run and run.status == "running" else 0.0,
                "cursor": state.cursor.timestamp() if state.cursor else None,
                "lag": (now - state.cursor).total_seconds() if state.cursor else None,
            }
            for key, value in values.items():
                if value is not None:
                    families[key].add_metric([source], value)
        yield from families.values()


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("route", "method", "status")
        self.requests = Counter(
            "connector_serve_requests_total",
            "HTTP requests answered, by route template, method and status.",
            labels,
            registry=self.registry,
        )
        self.latency = Histogram(
            "connector_serve_request_duration_seconds",
            "Time to answer, by route template, method and status.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )


class ObservedRequests:
    """ASGI middleware: counts and times every request by its route template (never the raw
    path or query, which hold ids and filter values), and writes the access log line through
    the connector's logging when asked to."""

    def __init__(self, app: Any, metrics: ServeMetrics, access_log: bool) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log
        # Route templates of plain Starlette routes (the OpenAPI document's), by endpoint.
        self._plain_routes: dict[Any, str] = {}

    def _template(self, scope: Any) -> str:
        """The matched route's template. FastAPI's routes put themselves in the scope; a
        plain Starlette route (FastAPI's /openapi.json) leaves only its endpoint there."""
        path = getattr(scope.get("route"), "path", None)
        if path:
            return str(path)
        endpoint = scope.get("endpoint")
        if endpoint is None:
            return "unmatched"
        if endpoint not in self._plain_routes:
            routes = getattr(scope.get("app"), "routes", ())
            found = [r.path for r in routes if getattr(r, "endpoint", None) is endpoint]
            self._plain_routes[endpoint] = found[0] if found else "unmatched"
        return self._plain_routes[endpoint]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def observed_send(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            elapsed = time.perf_counter() - started
            route = self._template(scope)
            labels = (route, scope["method"], str(status))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.latency.labels(*labels).observe(elapsed)
            if self.access_log:
                consumer = (scope.get("state") or {}).get("consumer")
                log.info(
                    "serve.request",
                    method=scope["method"],
                    route=route,
                    status=status,
                    ms=round(elapsed * 1000, 2),
                    consumer=consumer,
                )
