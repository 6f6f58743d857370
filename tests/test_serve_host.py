"""Hosting `connector serve`: the real `connector serve` process (graceful SIGTERM, its log
holds no key or patient data), TLS from certificate settings, serving on the caller's event
loop (how the daemon can host it), `connector serve hash-key`, and the settings' checks."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from connector.serve import create_app, serve_until, start_in_thread
from connector.serve.auth import hash_key
from connector.serve.host import ServeError
from connector.settings import ServeSettings
from connector.store import Store
from connector.store.serving import ServingReads
from connector.store.store import sqlite_url_for
from tests.conftest import CONNECTOR_BIN, invoke_cli, write_config
from tests.test_serve_kit import ALL_KEY, consumers, invoice, serve_config, write
from tests.test_tls import Pki


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def store_file(tmp_path: Path) -> str:
    url = sqlite_url_for(tmp_path / "store.db")
    with Store(url) as store:
        write(store, "clinic-a", [invoice("clinic-a", n) for n in range(5)])
    return url


def test_the_serve_process_answers_and_stops_gracefully_with_a_clean_log(
    store_file: str, tmp_path: Path
) -> None:
    port = _free_port()
    config = write_config(
        tmp_path / "connector.yaml",
        {
            "store": {"url": store_file},
            "logging": {"level": "info", "format": "json"},
            "serve": {"port": port, "consumers": consumers()},
        },
    )
    environment = {k: v for k, v in os.environ.items() if k != "CONNECTOR_CONFIG"}
    process = subprocess.Popen(
        [str(CONNECTOR_BIN), "-c", str(config), "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "serve did not start"
            time.sleep(0.1)
        listed = httpx.get(
            f"{base}/api/v1/invoices", headers={"Authorization": f"Bearer {ALL_KEY}"}
        ).json()
        assert listed["total"] == 5
        assert httpx.get(f"{base}/api/v1/invoices").status_code == 401
    finally:
        process.send_signal(signal.SIGTERM)
        _out, log = process.communicate(timeout=30)
    assert process.returncode == 0, log
    assert '"event": "serve.request"' in log and '"consumer": "meditrak"' in log
    assert ALL_KEY not in log
    for record in listed["data"]:
        assert record["patient"]["name"] not in log
        assert record["patient"]["policy_number"] not in log


def test_serve_refuses_a_missing_store(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "connector.yaml",
        {"store": {"url": str(tmp_path / "absent.db")}, "serve": {"consumers": consumers()}},
    )
    result = invoke_cli(config, "serve")
    assert result.exit_code == 2
    assert "no store" in result.output
    assert not (tmp_path / "absent.db").exists()


def test_tls_from_the_certificate_settings(store_file: str, tmp_path: Path) -> None:
    pki = Pki.create(tmp_path / "pki")
    pki.server_context("127.0.0.1")
    chain = str(tmp_path / "pki" / "server-127.0.0.1.pem")
    config = serve_config(store_file, tls_certfile=chain, tls_keyfile=chain)
    reads = ServingReads(store_file)
    running = start_in_thread(create_app(config, reads), config.serve)
    try:
        assert running.url.startswith("https://127.0.0.1:")
        with httpx.Client(verify=ssl.create_default_context(cafile=pki.ca_file)) as client:
            answer = client.get(
                f"{running.url}/api/v1/invoices", headers={"Authorization": f"Bearer {ALL_KEY}"}
            )
        assert answer.status_code == 200 and answer.json()["total"] == 5
        with pytest.raises(httpx.TransportError):
            httpx.get(running.url.replace("https", "http") + "/healthz", timeout=5)
    finally:
        running.stop()
        reads.close()


def test_serving_on_the_callers_event_loop_until_told_to_stop(store_file: str) -> None:
    port = _free_port()
    config = serve_config(store_file, port=port)
    reads = ServingReads(store_file)

    async def host() -> dict[str, Any]:
        stop = asyncio.Event()
        task = asyncio.create_task(serve_until(create_app(config, reads), config.serve, stop))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for _ in range(200):
                try:
                    health = await client.get("/healthz")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.02)
            stop.set()
            await asyncio.wait_for(task, 15)
        return dict(health.json())

    try:
        assert asyncio.run(host()) == {"status": "ok", "store": "ok"}
    finally:
        reads.close()


def test_a_taken_port_fails_at_once(store_file: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = serve_config(store_file, port=taken.getsockname()[1])
        reads = ServingReads(store_file)
        try:
            with pytest.raises(ServeError, match="cannot listen"):
                start_in_thread(create_app(config, reads), config.serve)
        finally:
            reads.close()


def test_hash_key_prints_the_digest_the_config_keeps(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from connector.cli.app import get_app

    runner = CliRunner()
    given = runner.invoke(get_app(), ["serve", "hash-key"], input="my-consumer-key\n")
    assert given.exit_code == 0
    assert given.output.strip() == f"key_sha256: {hash_key('my-consumer-key')}"
    made = runner.invoke(get_app(), ["serve", "hash-key", "--generate"])
    key_line, hash_line = made.output.strip().splitlines()
    key = key_line.split()[-1]
    assert len(key) >= 40 and hash_line.split()[-1] == hash_key(key)


@pytest.mark.parametrize(
    "settings",
    [
        {"tls_certfile": "cert.pem"},
        {"default_page_size": 600},
        {"consumers": [{"name": "a", "key_sha256": "plaintext-key", "sources": ["*"]}]},
        {"consumers": [{"name": "a", "key_sha256": hash_key("k"), "sources": []}]},
        {"consumers": consumers() + consumers()},
    ],
)
def test_serve_settings_refuse_what_cannot_work(settings: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ServeSettings.model_validate(settings)
