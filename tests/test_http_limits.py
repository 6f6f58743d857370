"""Hostile vendor bodies over real loopback HTTP (the sandbox's `HostileBody` modes): an
oversized page and a gzip bomb fail their source on `http.max_response_bytes`, bounded by the
bytes read, while the other sources sync; a vendor dripping its answer a byte a second fails
the request on the `http.timeout` deadline; a normal (or normally compressed) sync is unchanged.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from connector.config import AppConfig, HttpSettings, build_config
from connector.errors import RetriesExhausted
from connector.sandbox import SandboxOptions, SandboxServer
from connector.sandbox._anomaly import HostileBody
from connector.sources.http import STREAM_CHUNK_BYTES, ResponseTooLarge, SourceClient
from connector.store import Store
from tests.conftest import FAST_HTTP, seed_registry, sources_for
from tests.conftest import sync_wired as sync

DIALECTS = ("meditrak", "meditrak_import")
MB = 1 << 20


@pytest.fixture
def server() -> Iterator[SandboxServer]:
    options = SandboxOptions(invoices=30, seed=5, defect_rate=0.0, dialects=DIALECTS)
    with SandboxServer(options) as running:
        yield running


def sandbox_config(server: SandboxServer, path: Path, **http: object) -> AppConfig:
    sources = sources_for(server, DIALECTS, page_size=20, http={**FAST_HTTP, **http})
    return build_config({"store": {"url": str(path)}, "sources": sources}, env={})


def meditrak_client(server: SandboxServer, **http: object) -> SourceClient:
    token = server.token("meditrak")
    return SourceClient(
        server.api_url("meditrak"),
        HttpSettings.model_validate({**FAST_HTTP, **http}),
        headers={"Authorization": f"Bearer {token}"},
        source="meditrak",
    )


def test_an_oversized_page_fails_its_source_alone(server: SandboxServer, tmp_path: Path) -> None:
    server.set_hostile_body("meditrak", HostileBody("oversized", size=8 * MB))
    config = sandbox_config(server, tmp_path / "store.db", max_response_bytes=MB)
    seed_registry(server, config.store.sqlalchemy_url())
    with Store(config.store.sqlalchemy_url()) as store:
        results = sync(config, store)
    failed = results["meditrak"]
    assert not failed.ok
    assert "http.max_response_bytes (1048576 bytes" in str(failed.error)
    assert "GET invoices" in str(failed.error)
    assert "?" not in str(failed.error), "the query string stays out of the error"
    other = results["meditrak_import"]
    assert other.ok, other.error
    assert other.counts.fetched == len(server.dataset("meditrak_import"))
    # Not retried: asking again gets the same answer.
    assert server.stats("meditrak")["by_path"]["/api/v1/invoices/"] == 1


def test_reading_stops_at_the_limit(server: SandboxServer) -> None:
    server.set_hostile_body("meditrak", HostileBody("oversized", size=64 * MB))
    client = meditrak_client(server, max_response_bytes=MB)

    async def go() -> None:
        async with client:
            await client.get_json("invoices/")

    with pytest.raises(ResponseTooLarge):
        asyncio.run(go())
    # At most one network read past the limit was taken in, of the 64 MB on offer.
    assert MB < client.stats.body_bytes <= MB + STREAM_CHUNK_BYTES


def test_a_gzip_bomb_stops_at_the_limit_of_inflated_bytes(server: SandboxServer) -> None:
    server.set_hostile_body("meditrak", HostileBody("gzip_bomb", size=1024 * MB))
    client = meditrak_client(server, max_response_bytes=MB)

    async def go() -> None:
        async with client:
            await client.get_json("invoices/")

    with pytest.raises(ResponseTooLarge, match="decompressed"):
        asyncio.run(go())
    # Inflated a bounded step at a time: never more than one step past the limit.
    assert MB < client.stats.body_bytes <= MB + STREAM_CHUNK_BYTES


# A sync in a fresh process against a 300 MB page and a 1 GB gzip bomb, at the default limit
# (32 MB), printing the bytes read and the peak RSS of the whole process (sandbox included).
_PEAK_RSS_SCRIPT = """
import json, sys, time
from pathlib import Path
from connector.config import build_config
from connector.sandbox import SandboxOptions, SandboxServer
from connector.sandbox._anomaly import HostileBody
from connector.store import Store
from tests.conftest import FAST_HTTP, seed_registry, sources_for, sync_wired

MB = 1 << 20
mode, size, store_path = sys.argv[1], int(sys.argv[2]) * MB, sys.argv[3]
options = SandboxOptions(invoices=30, seed=5, defect_rate=0.0, dialects=("meditrak",))
with SandboxServer(options) as server:
    server.set_hostile_body("meditrak", HostileBody(mode, size=size))
    sources = sources_for(server, ("meditrak",), page_size=20, http=FAST_HTTP)
    config = build_config({"store": {"url": store_path}, "sources": sources}, env={})
    seed_registry(server, config.store.sqlalchemy_url())
    with Store(config.store.sqlalchemy_url()) as store:
        began = time.monotonic()
        result = sync_wired(config, store)["meditrak"]
        seconds = time.monotonic() - began
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent (pytest, often
# 200 MB by then) across exec, while VmHWM belongs to this process's own memory map.
status = Path("/proc/self/status").read_text()
peak_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))
print(json.dumps({"ok": result.ok, "error": str(result.error), "peak_mb": peak_kb / 1024,
                  "seconds": seconds}))
"""


@pytest.mark.parametrize(("mode", "size_mb"), [("oversized", 300), ("gzip_bomb", 1024)])
def test_peak_memory_of_a_sync_against_a_hostile_page_stays_small(
    mode: str, size_mb: int, tmp_path: Path
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS_SCRIPT, mode, str(size_mb), str(tmp_path / "s.db")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parent.parent,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    print(mode, size_mb, "MB:", measured)
    assert not measured["ok"]
    assert "http.max_response_bytes (33554432 bytes" in measured["error"]
    assert measured["peak_mb"] < 200, measured


def test_a_slow_drip_fails_within_the_deadline(server: SandboxServer) -> None:
    server.set_hostile_body("meditrak", HostileBody("slow_drip", interval_s=0.5))
    client = meditrak_client(server, timeout="1s", max_retries=0)

    async def go() -> None:
        async with client:
            await client.get_json("invoices/")

    began = time.monotonic()
    with pytest.raises(RetriesExhausted, match=r"after 1 attempts: .*http\.timeout \(1s\)"):
        asyncio.run(go())
    elapsed = time.monotonic() - began
    # Each byte comes well within a per-read timeout: only a whole-request deadline stops it.
    assert elapsed < 5, f"the request went on for {elapsed:.1f}s past its 1s deadline"
    assert client.stats.requests == 1


def test_a_slow_streamed_answer_fails_within_the_deadline(tmp_path: Path) -> None:
    # CitaBox sends all its invoices in one answer, parsed as it streams in: there the
    # deadline bounds the wait for each next item.
    options = SandboxOptions(invoices=30, dialects=("citabox", "meditrak_import"))
    with SandboxServer(options) as server:
        server.set_hostile_body("citabox", HostileBody("slow_drip", interval_s=0.2))
        http = {**FAST_HTTP, "timeout": "1s", "max_retries": 0}
        sources = sources_for(server, ("citabox", "meditrak_import"), http=http)
        config = build_config(
            {"store": {"url": str(tmp_path / "s.db")}, "sources": sources}, env={}
        )
        with Store(config.store.sqlalchemy_url()) as store:
            began = time.monotonic()
            results = sync(config, store)
            elapsed = time.monotonic() - began
    assert "http.timeout (1s)" in str(results["citabox"].error)
    assert results["meditrak_import"].ok, results["meditrak_import"].error
    assert elapsed < 5, f"the sync went on for {elapsed:.1f}s"


def test_a_deadline_hit_is_retried_like_a_timeout(server: SandboxServer) -> None:
    server.set_hostile_body("meditrak", HostileBody("slow_drip", interval_s=0.5))
    client = meditrak_client(server, timeout="1s", max_retries=1)

    async def go() -> None:
        async with client:
            await client.get_json("invoices/")

    with pytest.raises(RetriesExhausted, match="after 2 attempts"):
        asyncio.run(go())
    assert (client.stats.requests, client.stats.retries) == (2, 1)


def test_a_normal_sync_and_a_compressed_page_are_unchanged(
    server: SandboxServer, tmp_path: Path
) -> None:
    # A "bomb" far under the limit is just a gzip-compressed page with some whitespace.
    server.set_hostile_body("meditrak", HostileBody("gzip_bomb", size=3 * MB + 7))
    config = sandbox_config(server, tmp_path / "store.db", max_response_bytes=4 * MB)
    seed_registry(server, config.store.sqlalchemy_url())
    with Store(config.store.sqlalchemy_url()) as store:
        results = sync(config, store)
    for name in DIALECTS:
        assert results[name].ok, results[name].error
        assert results[name].counts.fetched == len(server.dataset(name))
