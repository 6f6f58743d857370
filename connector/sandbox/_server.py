"""Runs sandbox dialects as real HTTP servers on 127.0.0.1, one port each, in a background thread.

The server adds what every fake vendor shares: request statistics, artificial latency, injected
faults (429 with Retry-After, 500, 502, 503, stalls longer than a client's timeout, connections
dropped without an answer), overload above K concurrent requests (queueing or 503), pagination
anomalies and hostile bodies (oversized, gzip bomb, slow drip) of the list endpoints, and the
unauthenticated
/_sandbox/ admin routes that tests and benchmarks use to inspect the truth and change it.
"""

from __future__ import annotations

import asyncio
import csv
import io
import random
import signal
import ssl
import threading
import time
import zlib
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from types import FrameType, TracebackType
from typing import Any

from aiohttp import web

from ._anomaly import HostileBody, ListAnomaly, Overload, overload_route
from ._dataset import EXPECTED_REASON, Dataset, generate_dataset
from ._dialect import Dialect, available_dialects, iso_z, json_response, load_dialect, port_offset

_ADMIN_PREFIX = "/_sandbox/"
_WINDOW_S = 60.0
# The most recent requests kept per dialect for `SandboxServer.request_log`.
_LOG_SIZE = 50_000
# In-flight requests get this long to finish when the server stops; idle keep-alive
# connections are closed at once.
_SHUTDOWN_TIMEOUT_S = 2.0

# Injected fault kinds: an HTTP status, "timeout" (the answer is held back `stall_s` seconds,
# longer than a client's read timeout) or "drop" (the connection is closed without an answer).
FAULT_KINDS: tuple[str, ...] = ("429", "500", "502", "503", "timeout", "drop")
# What `fault_rate` injects unless `fault_kinds` says otherwise (the sandbox's first behaviour).
DEFAULT_FAULT_KINDS: tuple[str, ...] = ("429", "503")


@dataclass(frozen=True)
class SandboxOptions:
    """How to run the sandbox. `dialects=()` means every registered dialect.

    `tokens` overrides a dialect's default credential (dialect name → token); `defect_kinds`
    overrides which defect kinds a dialect generates (filtered to what it supports).
    """

    invoices: int = 200
    seed: int = 42
    defect_rate: float = 0.05
    latency_ms: float = 0.0
    fault_rate: float = 0.0
    retry_after_s: int = 1
    host: str = "127.0.0.1"
    base_port: int = 0
    dialects: tuple[str, ...] = ()
    tokens: Mapping[str, str] = field(default_factory=dict)
    defect_kinds: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Kinds `fault_rate` spreads over evenly (see FAULT_KINDS), and how long a "timeout"
    # fault holds its answer back.
    fault_kinds: tuple[str, ...] = DEFAULT_FAULT_KINDS
    stall_s: float = 5.0
    # Dialect name → pagination anomaly (see `ANOMALIES` in ._anomaly) armed from the start.
    anomalies: Mapping[str, str] = field(default_factory=dict)
    # The window of `max_requests_per_window` in the stats (60 s, like vendors' limits).
    stats_window_s: float = _WINDOW_S
    # Serve HTTPS with this server-side context (certificate and key loaded) instead of HTTP.
    ssl_context: ssl.SSLContext | None = None


def derived_seed(seed: int, *parts: str) -> int:
    """A stable per-purpose seed (hash() is randomised per process, crc32 is not)."""
    return zlib.crc32(":".join((str(seed), *parts)).encode())


@dataclass(frozen=True, slots=True)
class RequestLogEntry:
    """One vendor request as the sandbox saw it (monotonic clock), for timing assertions."""

    method: str
    target: str  # path and query string
    credential: str
    started: float
    finished: float
    status: int  # 0: the connection was dropped without an answer
    fault: str | None


class DialectStats:
    """Request counters for one dialect; updated on the server loop, read from any thread."""

    def __init__(self, window_s: float = _WINDOW_S) -> None:
        self._lock = threading.Lock()
        self.window_s = window_s
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.requests = 0
            self.in_flight = 0
            self.max_in_flight = 0
            self.faults_injected = 0
            self.faults_by_kind: Counter[str] = Counter()
            self.max_requests_per_60s = 0
            self.max_requests_per_window = 0
            self._short_windows: dict[str, deque[float]] = {}
            self.by_path: Counter[str] = Counter()
            self.by_status: Counter[int] = Counter()
            self.log: deque[RequestLogEntry] = deque(maxlen=_LOG_SIZE)
            self._windows: dict[str, deque[float]] = {}

    def started(self, path: str, credential: str) -> None:
        now = time.monotonic()
        with self._lock:
            self.requests += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.by_path[path] += 1
            window = self._windows.setdefault(credential, deque())
            window.append(now)
            while window[0] <= now - _WINDOW_S:
                window.popleft()
            self.max_requests_per_60s = max(self.max_requests_per_60s, len(window))
            if self.window_s != _WINDOW_S:
                window = self._short_windows.setdefault(credential, deque())
                window.append(now)
                while window[0] <= now - self.window_s:
                    window.popleft()
            self.max_requests_per_window = max(self.max_requests_per_window, len(window))

    def finished(self, status: int, *, entry: RequestLogEntry | None = None) -> None:
        """`status` 0 means no answer was sent (a dropped connection)."""
        with self._lock:
            if entry is not None:
                self.log.append(entry)
            self.in_flight -= 1
            self.by_status[status] += 1

    def injected(self, fault: str) -> None:
        """Counted when decided, not when answered: a stalled answer may still be pending."""
        with self._lock:
            self.faults_injected += 1
            self.faults_by_kind[fault] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self.requests,
                "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight,
                "max_requests_per_60s": self.max_requests_per_60s,
                "max_requests_per_window": self.max_requests_per_window,
                "window_s": self.window_s,
                "faults_injected": self.faults_injected,
                "faults_by_kind": dict(self.faults_by_kind),
                "by_path": dict(self.by_path),
                "by_status": {str(code): n for code, n in sorted(self.by_status.items())},
            }


@dataclass
class FaultSettings:
    """Latency and fault injection for one dialect; plain attributes, changeable at runtime."""

    fault_rate: float
    latency_ms: float
    retry_after_s: int
    rng: random.Random
    fault_kinds: tuple[str, ...] = DEFAULT_FAULT_KINDS
    stall_s: float = 5.0

    def draw(self) -> str | None:
        """The fault to inject into the next request, or None."""
        if self.fault_rate <= 0 or self.rng.random() >= self.fault_rate:
            return None
        kinds = self.fault_kinds
        return kinds[min(len(kinds) - 1, int(self.rng.random() * len(kinds)))]


@dataclass
class _Mounted:
    dialect: Dialect
    stats: DialectStats
    faults: FaultSettings
    app: web.Application
    port: int = 0
    runner: web.AppRunner | None = None
    anomaly: ListAnomaly | None = None
    hostile: HostileBody | None = None
    overload: Overload | None = None


_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _vendor_middleware(mounted: _Mounted) -> Any:
    dialect, stats, faults = mounted.dialect, mounted.stats, mounted.faults

    @web.middleware
    async def middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
        if request.path.startswith(_ADMIN_PREFIX):
            return await handler(request)
        credential = dialect.credential_of(request) or request.headers.get("Authorization") or ""
        # Count by route pattern, not raw path: 100k detail calls would otherwise make 100k keys.
        resource = request.match_info.route.resource
        stats.started(resource.canonical if resource is not None else request.path, credential)
        began = time.monotonic()
        status = 500
        fault = faults.draw()
        if fault is not None:
            stats.injected(fault)
        overload, admitted = mounted.overload, False
        try:
            if overload is not None:
                admitted = await overload.enter()
                fault = fault if admitted else "503"
            if faults.latency_ms > 0:
                await asyncio.sleep(faults.latency_ms / 1000)
            response: web.StreamResponse
            if fault == "drop":
                # No status line at all: the client sees the connection end mid-request.
                if request.transport is not None:
                    request.transport.abort()
                status = 0
                return web.Response(status=503)
            if fault == "timeout":
                # Longer than the client waits; whatever comes after is answered to nobody.
                await asyncio.sleep(faults.stall_s)
                response = dialect.fault_response(503, faults.retry_after_s)
            elif fault is not None:
                response = dialect.fault_response(int(fault), faults.retry_after_s)
            else:
                response = await handler(request)
                anomaly = mounted.anomaly
                if anomaly is not None and isinstance(response, web.Response):
                    response = anomaly.apply(request, response)
                hostile = mounted.hostile
                if hostile is not None and hostile.applies(request, response, dialect):
                    assert isinstance(response, web.Response), "applies() checked it"
                    response = await hostile.send(request, response)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            if admitted and overload is not None:
                overload.leave()
            entry = RequestLogEntry(
                request.method, request.path_qs, credential, began, time.monotonic(), status, fault
            )
            stats.finished(status, entry=entry)

    return middleware


class SandboxServer:
    """Fake vendor APIs on local ports, usable from synchronous code as a context manager.

    >>> with SandboxServer(SandboxOptions(invoices=50)) as server:
    ...     url = server.api_url("meditrak")  # e.g. http://127.0.0.1:41234/api/v1/
    """

    def __init__(self, options: SandboxOptions | None = None) -> None:
        self.options = options = options or SandboxOptions()
        names = options.dialects or available_dialects()
        self._mounted: dict[str, _Mounted] = {}
        for name in names:
            cls = load_dialect(name)
            kinds = options.defect_kinds.get(name, cls.default_defects)
            kinds = tuple(k for k in kinds if k in cls.supported_defects)
            dataset = generate_dataset(
                options.invoices,
                derived_seed(options.seed, name),
                defect_rate=options.defect_rate,
                defect_kinds=kinds,
                currency=cls.currency,
                id_prefix=cls.id_prefix,
                statuses=cls.generated_statuses,
            )
            dialect = cls(dataset, options.tokens.get(name, cls.default_token))
            faults = FaultSettings(
                fault_rate=options.fault_rate,
                latency_ms=options.latency_ms,
                retry_after_s=options.retry_after_s,
                rng=random.Random(derived_seed(options.seed, name, "faults")),
            )
            _apply_faults(faults, None, None, options.fault_kinds, options.stall_s)
            mounted = _Mounted(
                dialect, DialectStats(options.stats_window_s), faults, web.Application()
            )
            if name in options.anomalies:
                mounted.anomaly = ListAnomaly.create(dialect, options.anomalies[name])
            mounted.app.middlewares.append(_vendor_middleware(mounted))
            dialect.add_routes(mounted.app)
            _add_admin_routes(mounted)
            self._mounted[name] = mounted
        self._ports = self._fixed_ports()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --

    def __enter__(self) -> SandboxServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start the server thread; returns once every dialect is listening."""
        if self._thread is not None:
            raise RuntimeError("sandbox server already started")
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                try:
                    loop.run_until_complete(self._bind())
                except BaseException as exc:  # handed to the thread calling start()
                    failure.append(exc)
                    return
                finally:
                    ready.set()
                loop.run_forever()
            finally:
                loop.run_until_complete(self._unbind())
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
                asyncio.set_event_loop(None)
                loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="sandbox-server", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = self._loop = None
            raise failure[0]

    def stop(self) -> None:
        """Stop listening, finish in-flight requests briefly, and close the loop."""
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._thread = self._loop = None

    def _fixed_ports(self) -> dict[str, int]:
        """Dialect → port on a fixed base port: base_port + the manifest's port offset (a
        dialect without one gets a free port). Offsets are checked here, not at discovery:
        two vendors claiming one offset break only a sandbox that runs both."""
        if not self.options.base_port:
            return {}
        ports: dict[str, int] = {}
        for name in self._mounted:
            offset = port_offset(name)
            if offset is None:
                continue
            taken = [
                other for other, port in ports.items() if port == self.options.base_port + offset
            ]
            if taken:
                raise ValueError(f"dialects {taken[0]!r} and {name!r} share port offset {offset}")
            ports[name] = self.options.base_port + offset
        return ports

    async def _bind(self) -> None:
        for name, mounted in self._mounted.items():
            port = self._ports.get(name, 0)
            runner = web.AppRunner(
                mounted.app, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT_S
            )
            await runner.setup()
            mounted.runner = runner
            site = web.TCPSite(
                runner, self.options.host, port, ssl_context=self.options.ssl_context
            )
            await site.start()
            mounted.port = runner.addresses[0][1]

    async def _unbind(self) -> None:
        for mounted in self._mounted.values():
            if mounted.runner is not None:
                await mounted.runner.cleanup()
                mounted.runner = None

    # -- accessors --

    @property
    def dialect_names(self) -> tuple[str, ...]:
        return tuple(self._mounted)

    def _get(self, name: str) -> _Mounted:
        try:
            return self._mounted[name]
        except KeyError:
            raise KeyError(
                f"dialect {name!r} is not running; running: {self.dialect_names}"
            ) from None

    def dialect(self, name: str) -> Dialect:
        return self._get(name).dialect

    def port(self, name: str) -> int:
        return self._get(name).port

    def base_url(self, name: str) -> str:
        """Scheme, host and port of the dialect, e.g. "http://127.0.0.1:41234"."""
        mounted = self._get(name)
        if not mounted.port:
            raise RuntimeError("sandbox server is not started")
        scheme = "https" if self.options.ssl_context is not None else "http"
        return f"{scheme}://{self.options.host}:{mounted.port}"

    def api_url(self, name: str) -> str:
        """The base URL a connector config should use, e.g. "http://127.0.0.1:41234/api/v1/"."""
        return self.base_url(name) + self._get(name).dialect.api_root

    def api_urls(self) -> dict[str, str]:
        return {name: self.api_url(name) for name in self._mounted}

    def dataset(self, name: str) -> Dataset:
        return self._get(name).dialect.dataset

    def token(self, name: str) -> str:
        return self._get(name).dialect.token

    def credentials(self, name: str) -> dict[str, str]:
        return self._get(name).dialect.credentials()

    def stats(self, name: str) -> dict[str, Any]:
        return self._get(name).stats.snapshot()

    def request_log(self, name: str) -> list[RequestLogEntry]:
        """The dialect's most recent vendor requests, oldest first."""
        stats = self._get(name).stats
        with stats._lock:
            return list(stats.log)

    def reset_stats(self, name: str | None = None) -> None:
        for mounted in self._select(name):
            mounted.stats.reset()

    def set_faults(
        self,
        name: str | None = None,
        *,
        fault_rate: float | None = None,
        latency_ms: float | None = None,
        fault_kinds: tuple[str, ...] | None = None,
        stall_s: float | None = None,
    ) -> None:
        """Change fault rate, latency, fault kinds and/or stall of one dialect (or all)."""
        for mounted in self._select(name):
            _apply_faults(mounted.faults, fault_rate, latency_ms, fault_kinds, stall_s)

    def set_anomaly(self, name: str, mode: str | None) -> None:
        """Arm a pagination anomaly (`ANOMALIES` in ._anomaly) on a dialect's list endpoint;
        None disarms."""
        mounted = self._get(name)
        mounted.anomaly = None if mode is None else ListAnomaly.create(mounted.dialect, mode)

    def set_hostile_body(self, name: str, body: HostileBody | None) -> None:
        """Send a dialect's list answers hostile (see `HostileBody`); None: normal again."""
        self._get(name).hostile = body

    def set_overload(self, name: str, capacity: int | None, mode: str = "queue") -> None:
        """Degrade a dialect above `capacity` concurrent requests (`Overload`); None: no more."""
        mounted = self._get(name)
        mounted.overload = None if capacity is None else Overload(capacity, mode)

    def anomaly_log(self, name: str) -> list[str]:
        """What the armed anomaly did so far (e.g. "deleted INV-000003"), for test messages."""
        anomaly = self._get(name).anomaly
        return [] if anomaly is None else list(anomaly.log)

    def _select(self, name: str | None) -> list[_Mounted]:
        return list(self._mounted.values()) if name is None else [self._get(name)]


def _apply_faults(
    faults: FaultSettings,
    fault_rate: float | None,
    latency_ms: float | None,
    fault_kinds: tuple[str, ...] | None = None,
    stall_s: float | None = None,
) -> None:
    if fault_kinds is not None:
        unknown = [k for k in fault_kinds if k not in FAULT_KINDS]
        if unknown or not fault_kinds:
            raise ValueError(f"fault_kinds must be a non-empty subset of {FAULT_KINDS}")
        faults.fault_kinds = tuple(fault_kinds)
    if stall_s is not None:
        if stall_s < 0:
            raise ValueError("stall_s must not be negative")
        faults.stall_s = stall_s
    if fault_rate is not None:
        if not 0.0 <= fault_rate <= 1.0:
            raise ValueError("fault_rate must be between 0 and 1")
        faults.fault_rate = fault_rate
    if latency_ms is not None:
        if latency_ms < 0:
            raise ValueError("latency_ms must not be negative")
        faults.latency_ms = latency_ms


# -- admin routes -------------------------------------------------------------------------


def _add_admin_routes(mounted: _Mounted) -> None:
    """Unauthenticated routes for tests and benchmarks; never delayed, faulted or counted.

    GET  /_sandbox/stats              request counters (see `DialectStats.snapshot`)
    POST /_sandbox/stats/reset        zero the counters
    GET  /_sandbox/truth              served ids, defects with expected reasons, policy count
    POST /_sandbox/mutate/{id}        real content change + updated_at bump
    POST /_sandbox/add                new clean invoice (201)
    DELETE /_sandbox/invoices/{id}    stop serving an invoice
    POST /_sandbox/faults             {"fault_rate", "latency_ms", "fault_kinds", "stall_s"},
                                      each optional
    POST /_sandbox/anomaly            {"mode": one of ANOMALIES (._anomaly) or null}
    POST /_sandbox/body               {"mode": one of BODY_MODES (._anomaly) or null, "size",
                                      "interval_s"}: hostile list answers (`HostileBody`)
    POST /_sandbox/overload           {"capacity": K or null, "mode": "queue" or "503"}
    GET  /_sandbox/registry.csv       the MediTrak policy registry
    """
    dialect, stats, faults = mounted.dialect, mounted.stats, mounted.faults
    dataset = dialect.dataset

    async def get_stats(request: web.Request) -> web.Response:
        return json_response(stats.snapshot())

    async def reset_stats(request: web.Request) -> web.Response:
        stats.reset()
        return json_response(stats.snapshot())

    async def truth(request: web.Request) -> web.Response:
        defects = dataset.defects()
        return json_response(
            {
                "dialect": dialect.name,
                "served_ids": dataset.ids(),
                "defects": {
                    invoice_id: {"kind": kind, "expected_reason": EXPECTED_REASON[kind]}
                    for invoice_id, kind in defects.items()
                },
                "registered_policies": len(dataset.registry_rows()),
            }
        )

    async def mutate(request: web.Request) -> web.Response:
        invoice_id = request.match_info["invoice_id"]
        try:
            invoice = dataset.mutate(invoice_id)
        except KeyError:
            return json_response({"error": f"no invoice {invoice_id}"}, status=404)
        return json_response({"id": invoice.id, "updated_at": iso_z(invoice.updated_at)})

    async def add(request: web.Request) -> web.Response:
        invoice = dataset.add()
        return json_response(
            {"id": invoice.id, "updated_at": iso_z(invoice.updated_at)}, status=201
        )

    async def delete(request: web.Request) -> web.Response:
        invoice_id = request.match_info["invoice_id"]
        try:
            dataset.delete(invoice_id)
        except KeyError:
            return json_response({"error": f"no invoice {invoice_id}"}, status=404)
        return json_response({"deleted": invoice_id})

    async def set_faults(request: web.Request) -> web.Response:
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
            fault_rate = body.get("fault_rate")
            latency_ms = body.get("latency_ms")
            stall_s = body.get("stall_s")
            for value in (fault_rate, latency_ms, stall_s):
                if value is not None and (
                    isinstance(value, bool) or not isinstance(value, int | float)
                ):
                    raise ValueError("fault_rate, latency_ms and stall_s must be numbers")
            kinds = body.get("fault_kinds")
            if kinds is not None and not (
                isinstance(kinds, list) and all(isinstance(k, str) for k in kinds)
            ):
                raise ValueError("fault_kinds must be a list of strings")
            _apply_faults(
                faults, fault_rate, latency_ms, None if kinds is None else tuple(kinds), stall_s
            )
        except ValueError as exc:
            return json_response({"error": str(exc)}, status=400)
        return json_response(
            {
                "fault_rate": faults.fault_rate,
                "latency_ms": faults.latency_ms,
                "retry_after_s": faults.retry_after_s,
                "fault_kinds": list(faults.fault_kinds),
                "stall_s": faults.stall_s,
            }
        )

    async def set_anomaly(request: web.Request) -> web.Response:
        try:
            body = await request.json()
            mode = body.get("mode") if isinstance(body, dict) else None
            if mode is not None and not isinstance(mode, str):
                raise ValueError("mode must be a string or null")
            mounted.anomaly = None if mode is None else ListAnomaly.create(dialect, mode)
        except ValueError as exc:
            return json_response({"error": str(exc)}, status=400)
        return json_response({"mode": mode})

    async def set_body(request: web.Request) -> web.Response:
        try:
            body = await request.json()
            mode = body.pop("mode", None) if isinstance(body, dict) else None
            mounted.hostile = None if mode is None else HostileBody(mode, **body)
        except (ValueError, TypeError) as exc:
            return json_response({"error": str(exc)}, status=400)
        return json_response({"mode": mode})

    async def registry_csv(request: web.Request) -> web.Response:
        buffer = io.StringIO()
        fields = ["policy_number", "holder_name", "status", "valid_from", "valid_to"]
        writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(dataset.registry_rows())
        return web.Response(text=buffer.getvalue(), content_type="text/csv")

    router = mounted.app.router
    router.add_get("/_sandbox/stats", get_stats)
    router.add_post("/_sandbox/stats/reset", reset_stats)
    router.add_get("/_sandbox/truth", truth)
    router.add_post("/_sandbox/mutate/{invoice_id}", mutate)
    router.add_post("/_sandbox/add", add)
    router.add_delete("/_sandbox/invoices/{invoice_id}", delete)
    router.add_post("/_sandbox/faults", set_faults)
    router.add_post("/_sandbox/anomaly", set_anomaly)
    router.add_post("/_sandbox/body", set_body)
    router.add_post("/_sandbox/overload", overload_route(partial(setattr, mounted, "overload")))
    router.add_get("/_sandbox/registry.csv", registry_csv)


# -- CLI entry point ----------------------------------------------------------------------


def serve_forever(
    options: SandboxOptions, on_ready: Callable[[SandboxServer], None] | None = None
) -> None:
    """Run the sandbox until Ctrl-C or SIGTERM; `on_ready` gets the running server."""
    stop = threading.Event()
    previous: Any = None
    in_main_thread = threading.current_thread() is threading.main_thread()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        stop.set()

    if in_main_thread:
        previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        with SandboxServer(options) as server:
            if on_ready is not None:
                on_ready(server)
            try:
                # Short waits keep the main thread responsive to KeyboardInterrupt.
                while not stop.wait(0.5):
                    pass
            except KeyboardInterrupt:
                pass
    finally:
        # None means the previous handler was not set from Python; it cannot be restored then.
        if in_main_thread and previous is not None:
            signal.signal(signal.SIGTERM, previous)
