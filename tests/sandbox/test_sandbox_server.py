"""Tests for the sandbox server machinery: ports, admin routes, stats, latency and faults."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from connector.sandbox import (
    SandboxOptions,
    SandboxServer,
    available_dialects,
    load_dialect,
    port_offset,
)
from tests.sandbox.sandbox_helpers import admin_for, client_for

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_dialects_are_found_from_the_vendor_manifests() -> None:
    assert set(available_dialects()) == {
        "meditrak",
        "meditrak_import",
        "splose",
        "bio_ecko",
        "citabox",
        "invoice_api",
    }
    cls = load_dialect("meditrak")
    assert cls.name == "meditrak" and cls.api_root == "/api/v1/"
    with pytest.raises(KeyError, match="unknown sandbox dialect"):
        load_dialect("nope")


def test_every_dialect_gets_its_own_port(sandbox: SandboxServer) -> None:
    ports = {sandbox.port(name) for name in sandbox.dialect_names}
    assert len(ports) == len(sandbox.dialect_names) >= 2
    assert sandbox.api_urls() == {n: sandbox.api_url(n) for n in sandbox.dialect_names}


def _free_port_block(size: int) -> int:
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1])
        if base + size >= 65535:
            continue
        try:
            holders = []
            for offset in range(size):
                sock = socket.socket()
                holders.append(sock)
                sock.bind(("127.0.0.1", base + offset))
            return base
        except OSError:
            continue
        finally:
            for sock in holders:
                sock.close()
    pytest.skip("no free port block")


def test_fixed_base_port_adds_each_manifests_port_offset(make_sandbox: Any) -> None:
    # The ports operators and docs know: they must not move when a vendor is added.
    offsets = {name: port_offset(name) for name in available_dialects()}
    assert offsets == {
        "meditrak": 0,
        "meditrak_import": 1,
        "splose": 2,
        "bio_ecko": 3,
        "citabox": 4,
        "invoice_api": 5,
    }
    base = _free_port_block(len(offsets))
    server = make_sandbox(base_port=base, dialects=("meditrak_import", "invoice_api"))
    assert server.port("meditrak_import") == base + 1
    assert server.port("invoice_api") == base + 5


def test_stop_is_clean_and_idempotent() -> None:
    server = SandboxServer(SandboxOptions(invoices=5, dialects=("meditrak",)))
    server.start()
    url = server.api_url("meditrak")
    with client_for(server, "meditrak") as client:
        assert client.get("invoices/").status_code == 200
    server.stop()
    server.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "invoices/")


def test_port_clash_is_reported_to_the_caller(make_sandbox: Any) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = SandboxServer(SandboxOptions(invoices=5, dialects=("meditrak",), base_port=port))
        with pytest.raises(OSError):
            server.start()


# -- admin routes --------------------------------------------------------------------------


def test_truth_and_registry_csv(sandbox: SandboxServer) -> None:
    with admin_for(sandbox, "meditrak") as admin:
        truth = admin.get("truth").json()
        response = admin.get("registry.csv")
    assert response.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert response.text.splitlines()[0] == "policy_number,holder_name,status,valid_from,valid_to"
    assert truth["registered_policies"] == len(rows) > 0
    dataset = sandbox.dataset("meditrak")
    assert {r["policy_number"] for r in rows} == {inv.policy_number for inv in dataset}
    assert all(r["status"] == "active" for r in rows)
    assert truth["served_ids"] == [inv.id for inv in dataset]


def test_admin_routes_need_no_auth_and_vendor_routes_do(sandbox: SandboxServer) -> None:
    with httpx.Client(base_url=sandbox.base_url("meditrak")) as client:
        assert client.get("/_sandbox/stats").status_code == 200
        assert client.get("/api/v1/invoices/").status_code == 401


def test_mutate_add_delete(make_sandbox: Any) -> None:
    server = make_sandbox(dialects=("meditrak",))
    with admin_for(server, "meditrak") as admin, client_for(server, "meditrak") as api:
        before = api.get("invoices/INV-000004/").json()["invoice"]
        changed = admin.post("mutate/INV-000004")
        assert changed.status_code == 200
        after = api.get("invoices/INV-000004/").json()["invoice"]
        assert after["updated_at"] == changed.json()["updated_at"] > before["updated_at"]
        assert after["items"][0]["unit_price"] != before["items"][0]["unit_price"]

        added = admin.post("add")
        assert added.status_code == 201
        new_id = added.json()["id"]
        assert new_id == "INV-000051"
        assert api.get(f"invoices/{new_id}/").status_code == 200
        assert api.get("invoices/").json()["pagination"]["total_count"] == 51

        assert admin.delete("invoices/INV-000002").status_code == 200
        assert api.get("invoices/INV-000002/").status_code == 404
        assert "INV-000002" not in admin.get("truth").json()["served_ids"]
        assert api.get("invoices/").json()["pagination"]["total_count"] == 50

        assert admin.delete("invoices/INV-000002").status_code == 404
        assert admin.post("mutate/INV-999999").status_code == 404


def test_deleted_invoice_leaves_filtered_views(make_sandbox: Any) -> None:
    server = make_sandbox(dialects=("meditrak_import",))
    with (
        admin_for(server, "meditrak_import") as admin,
        client_for(server, "meditrak_import") as api,
    ):
        params: dict[str, str | int] = {"status": "paid", "limit": 500}
        ids = [r["id"] for r in api.get("invoices", params=params).json()["data"]]
        admin.delete(f"invoices/{ids[0]}")
        again = [r["id"] for r in api.get("invoices", params=params).json()["data"]]
        assert again == ids[1:]


# -- stats, latency, faults ----------------------------------------------------------------


def test_stats_count_requests_and_concurrency(make_sandbox: Any) -> None:
    server = make_sandbox(dialects=("meditrak",), latency_ms=150)
    with client_for(server, "meditrak") as api:

        def fetch(page: int) -> int:
            return int(api.get("invoices/", params={"page": page, "limit": 5}).status_code)

        with ThreadPoolExecutor(max_workers=8) as pool:
            assert set(pool.map(fetch, range(1, 9))) == {200}
        api.get("invoices/INV-000001/")
    with admin_for(server, "meditrak") as admin:
        stats = admin.get("stats").json()
        assert stats == server.stats("meditrak")
        assert stats["requests"] == 9
        assert stats["in_flight"] == 0
        assert stats["max_in_flight"] > 1
        assert stats["max_requests_per_60s"] == 9
        assert stats["faults_injected"] == 0
        assert stats["by_path"] == {"/api/v1/invoices/": 8, "/api/v1/invoices/{invoice_id}/": 1}
        assert stats["by_status"] == {"200": 9}
        assert admin.post("stats/reset").status_code == 200
        assert admin.get("stats").json()["requests"] == 0


def test_requests_per_window_are_counted_per_credential(make_sandbox: Any) -> None:
    server = make_sandbox(dialects=("meditrak",))
    with client_for(server, "meditrak", auth=False) as api:
        for n in range(6):
            api.get("invoices/", headers={"Authorization": f"Bearer key-{n % 2}"})
    assert server.stats("meditrak")["max_requests_per_60s"] == 3


def test_latency_is_applied_and_adjustable(make_sandbox: Any) -> None:
    # Two seconds of latency: a delayed request takes at least that long, and an undelayed one
    # (milliseconds) stays below it even when a loaded machine stalls the test for a second.
    latency = 2.0
    server = make_sandbox(dialects=("meditrak",), latency_ms=latency * 1000)
    with client_for(server, "meditrak") as api, admin_for(server, "meditrak") as admin:
        started = time.monotonic()
        api.get("invoices/")
        assert time.monotonic() - started >= latency
        started = time.monotonic()
        admin.get("stats")  # admin routes are never delayed
        assert time.monotonic() - started < latency
        assert admin.post("faults", json={"latency_ms": 0}).json()["latency_ms"] == 0
        started = time.monotonic()
        api.get("invoices/")
        assert time.monotonic() - started < latency


def test_full_fault_rate_answers_429_or_503(make_sandbox: Any) -> None:
    server = make_sandbox(fault_rate=1.0, retry_after_s=7)
    for name in server.dialect_names:
        with client_for(server, name) as api, admin_for(server, name) as admin:
            statuses = []
            for _ in range(40):
                response = api.get("invoices/" if name == "meditrak" else "invoices")
                statuses.append(response.status_code)
                if response.status_code == 429:
                    assert response.headers["Retry-After"] == "7"
            assert set(statuses) == {429, 503}
            # Admin routes are unaffected by faults.
            assert admin.get("truth").status_code == 200
            stats = admin.get("stats").json()
            assert stats["faults_injected"] == stats["requests"] == 40


def test_faults_can_be_switched_at_runtime(make_sandbox: Any) -> None:
    server = make_sandbox(dialects=("meditrak",))
    with client_for(server, "meditrak") as api, admin_for(server, "meditrak") as admin:
        assert api.get("invoices/").status_code == 200
        assert admin.post("faults", json={"fault_rate": 1.0}).status_code == 200
        assert api.get("invoices/").status_code in (429, 503)
        server.set_faults(fault_rate=0.0)
        assert api.get("invoices/").status_code == 200
        assert admin.post("faults", json={"fault_rate": 2}).status_code == 400
        assert admin.post("faults", json={"latency_ms": "slow"}).status_code == 400
        assert admin.post("faults", content=b"not json").status_code == 400


def test_partial_fault_rate_is_deterministic(make_sandbox: Any) -> None:
    def run() -> list[int]:
        server = make_sandbox(dialects=("meditrak",), fault_rate=0.3)
        with client_for(server, "meditrak") as api:
            return [api.get("invoices/").status_code for _ in range(30)]

    first = run()
    assert first == run()
    assert 200 in first and set(first) - {200}


def test_large_pages_render_quickly(make_sandbox: Any) -> None:
    server = make_sandbox(invoices=5000, dialects=("meditrak_import",))
    with client_for(server, "meditrak_import") as api:
        api.get("invoices", params={"limit": 100})
        started = time.monotonic()
        for page in range(1, 21):
            body = api.get("invoices", params={"limit": 100, "page": page}).json()
            assert len(body["data"]) == 100
        # Generous bound: 20 pages of 100 records should take well under a second.
        assert time.monotonic() - started < 2.0


# -- serve_forever ---------------------------------------------------------------------------


def test_serve_forever_runs_until_sigterm() -> None:
    script = (
        "import json, sys\n"
        "from connector.sandbox import SandboxOptions, serve_forever\n"
        "serve_forever(SandboxOptions(invoices=10),"
        " lambda server: print(json.dumps(server.api_urls()), flush=True))\n"
        "print('bye', flush=True)\n"
    )
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    with subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            urls = json.loads(proc.stdout.readline())
            assert set(urls) == set(available_dialects())
            response = httpx.get(
                urls["meditrak"] + "invoices/",
                headers={"Authorization": "Bearer sandbox-meditrak-key"},
            )
            assert response.json()["pagination"]["total_count"] == 10
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, err
    assert out.strip() == "bye"
    assert err == ""
