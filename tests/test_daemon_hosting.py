"""What a real `connector run` serves over loopback HTTP (issue 17 item 6, and item 1's "the
daemon can host it"): /healthz with the daemon's own body and Prometheus /metrics from the
ASGI app of `connector serve`, parsed with prometheus_client's parser (per-source run and
record counters after a sync, store gauges, request counts and latency by route and status);
with `daemon.serve_api` also the import-contract API and Bio Ecko's signed webhooks. Every
line the process writes stays JSON, no key reaches it, and SIGTERM still exits 143."""

from __future__ import annotations

import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from connector.config import build_config
from connector.daemon.hosting import RunStats, listen_settings, start_hosting
from connector.errors import ConfigError
from connector.sandbox import SandboxOptions, SandboxServer
from connector.store import Store
from connector.store.store import sqlite_url_for
from tests.conftest import FAST_HTTP, seed_registry, sources_for, write_config
from tests.daemon_helpers import ConnectorProcess, connector_processes, terminate, wait_for
from tests.test_daemon_shutdown import assert_only_json
from tests.test_serve_kit import ALL_KEY, consumers
from tests.test_webhooks import offline_webhook_source

POLLED = ("meditrak", "meditrak_import")
PUSHED = "bio_ecko"
SECRET = "whsec-daemon-hosting-test-77c1"
# Bounds on waiting, not timing assertions.
WAIT_S = 60.0

Labels = frozenset[tuple[str, str]]


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    options = SandboxOptions(invoices=20, seed=5, dialects=(*POLLED, PUSHED), defect_rate=0.0)
    with SandboxServer(options) as server:
        yield server


def samples(text: str) -> dict[tuple[str, Labels], float]:
    """Every sample of an exposition, parsed by prometheus_client: (name, labels) → value."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def labels(**pairs: str) -> Labels:
    return frozenset(pairs.items())


def config_for(
    tmp_path: Path,
    server: SandboxServer,
    url: str,
    names: tuple[str, ...],
    *,
    daemon: dict[str, Any],
    serve: dict[str, Any] | None = None,
    webhooks: bool = False,
) -> Path:
    fields = {"http": FAST_HTTP, "schedule": "1h"}  # one run each, at start
    polled = [n for n in names if n != PUSHED]
    document: dict[str, Any] = {
        "store": {"url": url},
        "logging": {"level": "info", "format": "json"},
        "daemon": {"jitter": "0s", "shutdown_timeout": "20s", **daemon},
        "sources": sources_for(server, polled, **fields)
        + (sources_for(server, [PUSHED], webhook_secret=SECRET, **fields) if webhooks else []),
    }
    if serve is not None:
        document["serve"] = serve
    return write_config(tmp_path / "connector.yaml", document)


def first_runs_recorded(base: str, names: tuple[str, ...]) -> dict[tuple[str, Labels], float]:
    """Waits until /metrics counts one finished run of every source; the parsed samples."""

    def counted() -> dict[tuple[str, Labels], float] | None:
        found = samples(httpx.get(f"{base}/metrics", timeout=10).text)
        runs = {dict(key)["source"] for (name, key) in found if name == "connector_runs_total"}
        return found if runs >= set(names) else None

    result: dict[tuple[str, Labels], float] = wait_for(counted, timeout=WAIT_S, interval=0.2)
    return result


def started_url(daemon: ConnectorProcess) -> str:
    started = wait_for(lambda: daemon.events("daemon.started"), timeout=WAIT_S)[0]
    url = started["health"]
    assert isinstance(url, str) and url.startswith("http://127.0.0.1:")
    return url


def test_daemon_serves_healthz_and_prometheus_metrics_from_the_asgi_app(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    url = sqlite_url_for(tmp_path / "store.db")
    seed_registry(sandbox, url)
    cfg = config_for(tmp_path, sandbox, url, POLLED, daemon={"health_port": 0})
    with connector_processes(tmp_path) as start:
        daemon = start("--config", str(cfg), "run")
        base = started_url(daemon)
        assert daemon.events("daemon.started")[0]["serve_api"] is False
        found = first_runs_recorded(base, POLLED)

        # The counters the daemon has always had, now through prometheus_client.
        with Store(url) as store:
            for source in POLLED:
                (run,) = store.runs(source)
                assert run.status == "ok"
                stored = store.count_invoices(source)
                assert stored > 0
                assert found[("connector_runs_total", labels(source=source, outcome="ok"))] == 1
                inserted = ("connector_records_total", labels(source=source, result="inserted"))
                assert found[inserted] == run.counts["inserted"] == stored
                fetched = ("connector_records_total", labels(source=source, result="fetched"))
                assert found[fetched] == run.counts["fetched"]
                # Store gauges, read at the scrape.
                success = ("connector_source_last_run_success", labels(source=source))
                assert found[success] == 1
                assert ("connector_source_lag_seconds", labels(source=source)) in found
        assert found[("connector_up", labels())] == 1

        # /healthz keeps the daemon's body; the app adds nothing but the store check.
        with httpx.Client(base_url=base, timeout=10) as client:
            for _ in range(2):
                health = client.get("/healthz")
                assert health.status_code == 200
                assert health.json() == {
                    "status": "ok",
                    "store": "ok",
                    "owner": daemon.events("daemon.started")[0]["owner"],
                    "jobs": 2,
                    "running": [],
                }
            # Without daemon.serve_api there is no API, no OpenAPI document, no webhooks.
            absent = client.get("/api/v1/invoices")
            assert absent.status_code == 404
            assert absent.json() == {
                "success": False,
                "error": "no such endpoint",
                "code": "NOT_FOUND",
            }
            assert client.get("/openapi.json").status_code == 404
            after = samples(client.get("/metrics").text)

        # The server's own requests, by route template and status (counter and histogram).
        healthz_ok = labels(route="/healthz", method="GET", status="200")
        assert after[("connector_serve_requests_total", healthz_ok)] == 2
        assert after[("connector_serve_request_duration_seconds_count", healthz_ok)] == 2
        unmatched = labels(route="unmatched", method="GET", status="404")
        assert after[("connector_serve_requests_total", unmatched)] == 2
        scrapes = labels(route="/metrics", method="GET", status="200")
        assert after[("connector_serve_requests_total", scrapes)] >= 1

        code, _seconds = terminate(daemon, timeout=30)
        assert code == 143, daemon.stderr()[-2000:]
        events = assert_only_json(daemon)
    # Scrapes are not access-logged by the health-only server.
    assert not [e for e in events if e.get("event") == "serve.request"]


def test_daemon_hosts_the_import_api_and_webhooks_with_serve_api(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    url = sqlite_url_for(tmp_path / "store.db")
    seed_registry(sandbox, url)
    names = ("meditrak_import", PUSHED)
    cfg = config_for(
        tmp_path,
        sandbox,
        url,
        names,
        daemon={"health_port": 0, "serve_api": True},
        serve={"consumers": consumers(), "max_page_size": 500},
        webhooks=True,
    )
    with connector_processes(tmp_path) as start:
        daemon = start("--config", str(cfg), "run")
        base = started_url(daemon)
        assert daemon.events("daemon.started")[0]["serve_api"] is True
        first_runs_recorded(base, names)

        with Store(url) as store, httpx.Client(base_url=base, timeout=10) as client:
            stored = store.count_invoices()
            key = {"Authorization": f"Bearer {ALL_KEY}"}
            params = {"include_void": "true", "limit": "500"}
            listed = client.get("/api/v1/invoices", params=params, headers=key)
            assert listed.status_code == 200, listed.text
            body = listed.json()
            assert body["success"] is True
            assert body["total"] == len(body["data"]) == stored
            assert {r["source"] for r in body["data"]} == set(names)
            one = body["data"][0]["id"]
            got = client.get(f"/api/v1/invoices/{one}", params=params, headers=key)
            assert got.status_code == 200 and got.json()["id"] == one

            refused = client.get("/api/v1/invoices")
            assert refused.status_code == 401
            assert refused.json()["success"] is False
            assert refused.json()["code"] == "INVALID_API_KEY"
            assert "/api/v1/invoices" in client.get("/openapi.json").json()["paths"]
            assert client.get("/healthz").json()["jobs"] == 2

            # A Bio Ecko invoice pushed to the daemon's port: signed, stored, then fetched
            # through the adapter → mapping → validation → store path by the daemon.
            subscribe = {"url": f"{base}/webhooks/bio_ecko/{PUSHED}", "secret": SECRET}
            vendor = sandbox.base_url(PUSHED)
            assert httpx.post(f"{vendor}/_sandbox/webhooks", json=subscribe).status_code < 300
            # A changed invoice (the next poll is an hour away): the sandbox pushes the change.
            changed = sandbox.dataset(PUSHED).ids()[3]
            before = store.content_hashes(PUSHED)[changed]
            assert httpx.post(f"{vendor}/_sandbox/mutate/{changed}", timeout=30).status_code < 300
            wait_for(lambda: store.content_hashes(PUSHED)[changed] != before, timeout=WAIT_S)
            assert [run.kind for run in store.runs(PUSHED)] == ["webhook", "sync"]

            found = samples(client.get("/metrics").text)
        listing = labels(route="/api/v1/invoices", method="GET", status="200")
        assert found[("connector_serve_requests_total", listing)] == 1
        anonymous = labels(route="/api/v1/invoices", method="GET", status="401")
        assert found[("connector_serve_requests_total", anonymous)] == 1
        hook = labels(route="/webhooks/bio_ecko/{source_name}", method="POST", status="200")
        assert found[("connector_serve_requests_total", hook)] >= 1

        code, _seconds = terminate(daemon, timeout=40)
        assert code == 143, daemon.stderr()[-2000:]
        events = assert_only_json(daemon)
        log_text = daemon.stdout() + daemon.stderr()
    # The API's requests are access-logged through the project logging, without the key.
    routes = {e.get("route") for e in events if e.get("event") == "serve.request"}
    assert "/api/v1/invoices" in routes
    assert ALL_KEY not in log_text and SECRET not in log_text


def test_a_taken_port_stops_the_daemon_at_start_with_exit_2(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    url = sqlite_url_for(tmp_path / "store.db")
    seed_registry(sandbox, url)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        cfg = config_for(tmp_path, sandbox, url, POLLED, daemon={"health_port": port})
        with connector_processes(tmp_path) as start:
            daemon = start("--config", str(cfg), "run")
            assert daemon.wait(WAIT_S) == 2
            (failed,) = daemon.events("daemon.serve_failed")
            assert f"127.0.0.1:{port}" in failed["error"]
            assert not daemon.events("daemon.started")
    with Store(url) as store:
        assert all(not store.runs(source) for source in POLLED)


def test_serve_api_needs_the_health_port() -> None:
    with pytest.raises(ConfigError, match="serve_api needs health_port"):
        build_config({"daemon": {"serve_api": True}}, env={})
    config = build_config({"daemon": {"serve_api": True, "health_port": 0}}, env={})
    assert config.daemon.serve_api


def test_sigterm_still_exits_143_with_the_server_up(sandbox: SandboxServer, tmp_path: Path) -> None:
    """The hosted server stops inside the daemon's shutdown: a keep-alive client connected
    to it does not hold the process."""
    url = sqlite_url_for(tmp_path / "store.db")
    seed_registry(sandbox, url)
    cfg = config_for(tmp_path, sandbox, url, POLLED, daemon={"health_port": 0})
    with connector_processes(tmp_path) as start, httpx.Client(timeout=10) as client:
        daemon = start("--config", str(cfg), "run")
        base = started_url(daemon)
        assert client.get(f"{base}/healthz").status_code == 200  # keeps its connection open
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(WAIT_S) == 143
        assert_only_json(daemon)
        with pytest.raises(httpx.TransportError):
            client.get(f"{base}/healthz")


def test_a_reload_adds_gauges_for_a_new_source_and_warns_that_the_server_stays(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    url = sqlite_url_for(tmp_path / "store.db")
    seed_registry(sandbox, url)
    cfg = config_for(tmp_path, sandbox, url, POLLED[:1], daemon={"health_port": 0})
    with connector_processes(tmp_path) as start:
        daemon = start("--config", str(cfg), "run")
        base = started_url(daemon)
        first_runs_recorded(base, POLLED[:1])
        # One more source; and a new port, which only a restart applies.
        config_for(tmp_path, sandbox, url, POLLED, daemon={"health_port": 1})
        daemon.signal(signal.SIGHUP)
        wait_for(lambda: daemon.events("daemon.reloaded"), timeout=WAIT_S)
        (warning,) = daemon.events("daemon.reload_serve_ignored")
        assert "restart" in warning["detail"]
        found = first_runs_recorded(base, POLLED)
        assert found[("connector_source_last_run_success", labels(source=POLLED[1]))] == 1
        assert terminate(daemon, timeout=30)[0] == 143


def test_the_daemon_listens_with_serve_tls_only_when_it_serves_the_api(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    for path in (cert, key):
        path.write_text("placeholder: only the settings are looked at here\n")
    raw: dict[str, Any] = {
        "daemon": {"health_port": 9108},
        "serve": {"tls_certfile": str(cert), "tls_keyfile": str(key), "consumers": consumers()},
    }
    health_only = listen_settings(build_config(raw, env={}))
    assert (health_only.host, health_only.port) == ("127.0.0.1", 9108)
    assert health_only.tls_certfile is None and health_only.access_log is False
    assert health_only.consumers == ()
    raw["daemon"]["serve_api"] = True
    with_api = listen_settings(build_config(raw, env={}))
    assert (with_api.host, with_api.port) == ("127.0.0.1", 9108)
    assert with_api.tls_certfile is not None and Path(with_api.tls_certfile).name == "cert.pem"
    assert len(with_api.consumers) == 2 and with_api.access_log is True


def test_the_webhook_worker_gets_the_daemon_shutdown_timeout_to_finish(tmp_path: Path) -> None:
    url = sqlite_url_for(tmp_path / "store.db")
    Store(url).close()  # created and migrated, as a first sync leaves it
    source = offline_webhook_source(PUSHED, SECRET)
    raw = {
        "store": {"url": url},
        "daemon": {"health_port": 0, "serve_api": True, "shutdown_timeout": "7s"},
        "serve": {"consumers": consumers()},
        "sources": [source],
    }
    hosted = start_hosting(
        build_config(raw, env={}), RunStats(), lambda: (200, {}), lambda: True, lambda: [PUSHED]
    )
    assert hosted is not None
    try:
        assert hosted.app.state.webhooks is not None
        assert hosted.worker_timeout == 7.0
    finally:
        hosted.stop(5.0)
