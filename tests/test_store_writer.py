"""The store writer process (`store.writer`, connector/store/writer.py) over real loopback HTTP
to the sandbox and real SQLite files and PostgreSQL: it stores exactly what the thread writer
stores, hands back the store's own errors, fails a run loudly when the child dies (and the next
run resumes to the same end), forks only where that is safe, and dies with its parent.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from connector.config import build_config
from connector.errors import StoreError
from connector.pipeline.engine import Engine, RunResult
from connector.pipeline.wiring import build_engine
from connector.sandbox import SandboxOptions, SandboxServer
from connector.settings import AppConfig
from connector.store import Store
from connector.store.store import sqlite_url_for
from connector.store.writer import shareable, start_writer
from tests.conftest import pg_base_url
from tests.reliability.rel_helpers import sandbox_app_config, seeded_store, snapshot

NAMES = ("meditrak_import", "meditrak", "citabox")


@pytest.fixture(scope="module")
def server() -> Any:
    # Defects on purpose: quarantine writes go through the writer too.
    options = SandboxOptions(invoices=240, seed=17, defect_rate=0.1, dialects=NAMES)
    with SandboxServer(options) as running:
        yield running


def config_for(server: SandboxServer, url: str, writer: str) -> AppConfig:
    # Small pages: many batches per run, and the checkpoint moves between them.
    return sandbox_app_config(server, url, store={"url": url, "writer": writer})


def sync(engine: Engine) -> dict[str, RunResult]:
    return {r.source: r for r in asyncio.run(engine.sync())}


def synced_snapshot(server: SandboxServer, url: str, writer: str) -> tuple[Any, dict[str, Any]]:
    config = config_for(server, url, writer)
    with seeded_store(server, url) as store, build_engine(config, store) as engine:
        assert (engine.writer is None) == (writer == "thread")
        results = sync(engine)
        assert all(r.ok for r in results.values()), results
        counts = {name: r.counts.as_dict() for name, r in results.items()}
        # A second run changes nothing, through either writer.
        again = sync(engine)
        assert all(r.ok and r.stored == 0 for r in again.values()), again
        return snapshot(store, NAMES), counts


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_the_writer_process_stores_exactly_what_the_thread_stores(
    server: SandboxServer, backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend == "sqlite":
        urls = [sqlite_url_for(tmp_path / f"{side}.db") for side in ("thread", "process")]
    else:
        urls = [str(request.getfixturevalue("pg_url")), second_pg_schema(request)]
    thread_side = synced_snapshot(server, urls[0], "thread")
    process_side = synced_snapshot(server, urls[1], "process")
    assert process_side == thread_side
    stored = sum(len(thread_side[0][name]["invoices"]) for name in NAMES)
    quarantined = sum(len(thread_side[0][name]["quarantined"]) for name in NAMES)
    assert stored > 0 and quarantined > 0


def second_pg_schema(request: pytest.FixtureRequest) -> str:
    """Another private schema beside `pg_url`'s, dropped after the test."""
    schema = f"connector_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(pg_base_url())
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))

    def drop() -> None:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()

    request.addfinalizer(drop)
    url = make_url(pg_base_url()).update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False)


def test_auto_keeps_the_thread_where_forking_is_unsafe(
    server: SandboxServer, tmp_path: Path
) -> None:
    # This test process runs the sandbox in a thread: forking here is not safe.
    url = sqlite_url_for(tmp_path / "store.db")
    with Store(url) as store, Engine(config_for(server, url, "auto"), store) as engine:
        assert engine.writer is None
    assert start_writer("auto", "sqlite://") is None
    assert not shareable("sqlite://") and not shareable("sqlite:///:memory:")
    assert shareable(url) and shareable("postgresql+psycopg://db/x")


def test_the_store_s_own_error_comes_back_from_the_writer(
    server: SandboxServer, tmp_path: Path
) -> None:
    url = sqlite_url_for(tmp_path / "store.db")
    with (
        seeded_store(server, url) as store,
        build_engine(config_for(server, url, "process"), store) as engine,
    ):
        with store.engine.begin() as conn:
            conn.execute(text("DROP TABLE invoice_item"))
        result = sync(engine)["meditrak_import"]
    assert not result.ok
    assert "store write failed, nothing of this batch was kept" in str(result.error)
    assert "no such table: invoice_item" in str(result.error)


def test_a_dead_writer_fails_the_run_loudly_and_the_next_run_ends_the_same(
    server: SandboxServer, tmp_path: Path
) -> None:
    reference, _ = synced_snapshot(server, sqlite_url_for(tmp_path / "clean.db"), "thread")
    url = sqlite_url_for(tmp_path / "store.db")
    config = config_for(server, url, "process")
    with seeded_store(server, url) as store:
        with build_engine(config, store) as engine:
            assert engine.writer is not None and engine.writer.pid is not None
            os.kill(engine.writer.pid, signal.SIGKILL)
            results = sync(engine)
            for result in results.values():
                assert not result.ok
                assert "the store writer process ended" in str(result.error), result.error
                assert "-9" in str(result.error)
            # The writer stays dead: every later batch of this engine fails the same way.
            again = sync(engine)
            assert not any(r.ok for r in again.values())
        with build_engine(config, store) as engine:
            assert all(r.ok for r in sync(engine).values())
        assert snapshot(store, NAMES) == reference


def test_a_writer_cut_off_mid_run_keeps_whole_batches_and_the_next_run_resumes(
    server: SandboxServer, tmp_path: Path
) -> None:
    def paged(url: str, writer: str) -> AppConfig:
        name = "meditrak_import"
        source = {
            "type": name,
            "name": name,
            "base_url": server.api_url(name),
            "api_key": server.token(name),
            "page_size": 20,  # 12 batches
        }
        return build_config({"store": {"url": url, "writer": writer}, "sources": [source]}, env={})

    clean = sqlite_url_for(tmp_path / "clean.db")
    with seeded_store(server, clean) as store, build_engine(paged(clean, "thread"), store) as e:
        assert all(r.ok for r in sync(e).values())
        reference = snapshot(store, ["meditrak_import"])
    url = sqlite_url_for(tmp_path / "store.db")
    config = paged(url, "process")
    with seeded_store(server, url) as store:
        with build_engine(config, store) as engine:
            writer = engine.writer
            assert writer is not None
            original = writer.submit
            submitted = 0

            def kill_on_third(*args: Any, **kwargs: Any) -> Any:
                nonlocal submitted
                submitted += 1
                if submitted == 3:  # two batches written; the child dies before the third
                    assert writer.pid is not None
                    os.kill(writer.pid, signal.SIGKILL)
                    time.sleep(0.2)
                return original(*args, **kwargs)

            writer.submit = kill_on_third  # type: ignore[method-assign]
            first = sync(engine)["meditrak_import"]
        assert not first.ok and "the store writer process ended" in str(first.error)
        assert first.counts.fetched == 40  # exactly the two batches answered
        assert store.get_state("meditrak_import").resume is not None
        with build_engine(config, store) as engine:
            resumed = sync(engine)["meditrak_import"]
        assert resumed.ok and resumed.resumed
        assert resumed.counts.fetched == 200
        assert snapshot(store, ["meditrak_import"]) == reference


CHILD = """
import asyncio, json, sys, time
from connector.config import build_config
from connector.pipeline.engine import Engine
from connector.logging import configure_logging
from connector.store import Store

configure_logging("error", "json")
url, api, token, mode = sys.argv[1:5]
source = {"type": "meditrak_import", "name": "m", "base_url": api, "api_key": token,
          "page_size": 20}
config = build_config({"store": {"url": url, "writer": mode}, "sources": [source]}, env={})
with Store(url) as store:
    engine = Engine(config, store)
    writer = engine.writer
    print(json.dumps({"method": writer and writer.start_method, "pid": writer and writer.pid}),
          flush=True)
    result = asyncio.run(engine.sync_source(config.source("m")))
    print(json.dumps({"ok": result.ok, "stored": result.stored,
                      "quarantined": result.counts.quarantined}), flush=True)
    if "--linger" in sys.argv:
        time.sleep(60)
    engine.close()
"""


def run_child(server: SandboxServer, url: str, mode: str, *extra: str) -> subprocess.Popen[str]:
    name = "meditrak_import"
    command = [sys.executable, "-c", CHILD, url, server.api_url(name), server.token(name), mode]
    return subprocess.Popen([*command, *extra], stdout=subprocess.PIPE, text=True)


def ours(lines: Iterable[str]) -> Iterator[str]:
    """The child's own report lines (not its log lines)."""
    return (line for line in lines if line.startswith(('{"method"', '{"ok"')))


def test_a_process_without_threads_forks_its_writer(server: SandboxServer, tmp_path: Path) -> None:
    outcomes = {}
    for mode in ("auto", "thread"):
        child = run_child(server, sqlite_url_for(tmp_path / f"{mode}.db"), mode)
        out, _ = child.communicate(timeout=120)
        assert child.returncode == 0
        started, finished = (json.loads(line) for line in ours(out.splitlines()))
        outcomes[mode] = (started["method"], finished)
    assert outcomes["auto"][0] == "fork"
    assert outcomes["thread"][0] is None
    assert outcomes["auto"][1] == outcomes["thread"][1]
    assert outcomes["auto"][1]["ok"] and outcomes["auto"][1]["stored"] > 0


def test_the_writer_dies_with_its_parent(server: SandboxServer, tmp_path: Path) -> None:
    child = run_child(server, sqlite_url_for(tmp_path / "store.db"), "auto", "--linger")
    assert child.stdout is not None
    lines = ours(iter(child.stdout.readline, ""))
    writer_pid = json.loads(next(lines))["pid"]
    assert json.loads(next(lines))["ok"]
    assert os.path.exists(f"/proc/{writer_pid}")
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    child.stdout.close()
    # Reaped by init once the kernel's parent-death signal has killed it.
    for _ in range(100):
        if not _alive(writer_pid):
            break
        time.sleep(0.1)
    assert not _alive(writer_pid)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_closed_writer_refuses_batches(tmp_path: Path) -> None:
    url = sqlite_url_for(tmp_path / "store.db")
    Store(url).close()
    writer = start_writer("process", url)
    assert writer is not None
    writer.close()
    writer.close()  # idempotent

    async def submit() -> None:
        await writer.submit(1, "x", [], [], fetched=0, resume=None)

    with pytest.raises(StoreError, match="closed"):
        asyncio.run(submit())
