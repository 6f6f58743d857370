"""The real `connector` executable off a terminal: every line it writes on stderr is one JSON
object, whoever wrote it (the connector, httpx, alembic), and no configured secret is in any."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

from connector.config import build_config
from connector.sandbox import SandboxOptions, SandboxServer
from tests.conftest import FAST_HTTP, seed_registry, sources_for, write_config
from tests.test_logging import older_store

Run = Callable[..., subprocess.CompletedProcess[str]]


def test_a_debug_sync_writes_only_json_lines_with_library_records_and_no_secret(
    connector: Run, tmp_path: Path
) -> None:
    options = SandboxOptions(invoices=12, seed=5, dialects=("meditrak",))
    with SandboxServer(options) as server:
        sources = sources_for(server, ["meditrak"], http=FAST_HTTP)
        document = {"store": {"url": str(tmp_path / "s.db")}, "sources": sources}
        config = write_config(tmp_path / "c.yaml", document)
        built = build_config(document, env={})
        seed_registry(server, built.store.sqlalchemy_url())
        # A store one migration behind, so that opening it runs (and logs) Alembic.
        older_store(built.store.sqlalchemy_url())
        done = connector("--config", str(config), "--log-level", "debug", "sync")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.strip()]
    loggers = {line["logger"] for line in lines}
    # httpx's request lines, and alembic's when the store checks its migrations.
    assert {"httpx", "alembic.runtime.migration"} <= loggers, loggers
    assert any(line["event"] == "sync.finished" for line in lines)
    finished = next(line for line in lines if line["event"] == "sync.finished")
    assert finished["source"] == "meditrak"
    # httpx's own lines written during the run carry the run's source, kind and id.
    requests = [line for line in lines if line["logger"] == "httpx"]
    assert requests and all(line.get("source") == "meditrak" for line in requests), requests[:2]
    assert {line.get("run_id") for line in requests} == {finished["run_id"]}
    assert all(line.get("kind") == "sync" for line in requests)
    secrets = built.secrets()
    assert secrets and not [s for s in secrets if s in done.stderr]
