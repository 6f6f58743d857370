"""Shared fixtures of the foundation tests: stores on SQLite and PostgreSQL, sandbox configs,
and a helper that runs the real `connector` executable.

PostgreSQL tests use the server at `postgresql+psycopg://postgres@127.0.0.1:5432/test`
(override with CONNECTOR_TEST_PG_URL). Every test gets a schema of its own, dropped
afterwards, so concurrent test runs sharing that database never see each other's tables.

The CLI wiring (category rules, policy registry) is imported only by the tests that use it,
so that a problem there fails those tests rather than the collection of every test.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, settings
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from typer.testing import CliRunner, Result

from connector.cli.demo import sandbox_sources
from connector.config import AppConfig
from connector.pipeline.engine import EXIT_AFTER_BATCHES_ENV, RunResult
from connector.sandbox import SandboxServer
from connector.store import Store
from connector.store.store import sqlite_url_for

PG_URL_ENV = "CONNECTOR_TEST_PG_URL"
PG_DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
CONNECTOR_BIN = Path(sys.executable).with_name("connector")
# Property tests judge the code, not the machine: no per-example deadline (Hypothesis's 200 ms
# default fails an example that a loaded CI machine stalls once) and no health check on slow data
# generation. Explicit @settings in a test inherit these for what they leave out.
settings.register_profile("connector", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("connector")

# Retry fast: the tests want failures in milliseconds, not in a production back-off.
FAST_HTTP = {"max_retries": 1, "backoff_base": "10ms", "backoff_max": "50ms", "timeout": "10s"}


def pg_base_url() -> str:
    return os.environ.get(PG_URL_ENV, PG_DEFAULT_URL)


@cache
def pg_unreachable_reason() -> str | None:
    """None when PostgreSQL answers, else why not (checked once per session)."""
    url = pg_base_url()
    try:
        engine = create_engine(url, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:
        shown = make_url(url).render_as_string(hide_password=True)
        return (
            f"PostgreSQL not reachable at {shown} ({type(exc).__name__}). To run the postgres "
            f"tests start PostgreSQL there, or set {PG_URL_ENV}=postgresql+psycopg://USER@HOST:"
            "PORT/DB to a database the tests may create schemas in."
        )
    return None


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A SQLAlchemy URL whose connections live in a fresh, private schema."""
    reason = pg_unreachable_reason()
    if reason:
        # CI (CONNECTOR_REQUIRE_PG=1) must not pass by skipping every PostgreSQL test.
        if os.environ.get("CONNECTOR_REQUIRE_PG") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    base = pg_base_url()
    schema = f"connector_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty store, once per backend."""
    if request.param == "sqlite":
        return sqlite_url_for(tmp_path / "store.db")
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    with Store(store_url) as opened:
        yield opened


def seed_registry(server: SandboxServer, url: str) -> None:
    """Import the sandbox's policy registry and patient links into the store at `url`, as an
    operator runs `connector policies import` before the first sync."""
    from connector.cli.sandbox import seed_sandbox_registry  # imported late: see module doc

    with Store(url) as store:
        seed_sandbox_registry(server, store)


def sync_wired(config: AppConfig, store: Store) -> dict[str, RunResult]:
    """One sync of every source through the engine the CLI builds (category rules, policy
    registry check), keyed by source name."""
    from connector.pipeline.wiring import build_engine  # imported late: see module doc

    results = asyncio.run(build_engine(config, store).sync())
    return {result.source: result for result in results}


def write_config(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def sources_for(
    server: SandboxServer, names: Sequence[str] | None = None, **fields: Any
) -> list[dict[str, Any]]:
    """Raw source configs for the running dialects, each with `fields` added."""
    names = tuple(names or server.dialect_names)
    return sandbox_sources(server, names, **{name: dict(fields) for name in names})


def seeded_sandbox_config(
    server: SandboxServer, name: str, tmp: Path, **source: Any
) -> tuple[Path, str]:
    """A config for one sandbox dialect (rate limit out of the way) over a fresh SQLite store
    with the sandbox's registry and patient links imported, as an operator sets up before the
    first sync: (config path, store URL)."""
    url = sqlite_url_for(tmp / "connector.db")
    seed_registry(server, url)
    http = {**FAST_HTTP, "requests_per_minute": 100_000}
    (raw,) = sources_for(server, [name], http=http, **source)
    config = write_config(tmp / "connector.yaml", {"store": {"url": url}, "sources": [raw]})
    return config, url


def run_connector(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """The installed `connector` executable, as an operator would run it."""
    environment = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    for inherited in ("CONNECTOR_CONFIG", EXIT_AFTER_BATCHES_ENV):
        environment.pop(inherited, None)
    environment.update(env or {})
    return subprocess.run(
        [str(CONNECTOR_BIN), *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=timeout,
        check=False,
    )


def invoke_cli(config: Path, *args: str) -> Result:
    """A `connector` command run in-process (typer's runner) against the config at `config`."""
    from connector.cli.app import get_app  # the command tree, built when first asked for

    return CliRunner().invoke(get_app(), ["-c", str(config), "--log-level", "error", *args])


@pytest.fixture
def connector() -> Callable[..., subprocess.CompletedProcess[str]]:
    if not CONNECTOR_BIN.exists():
        pytest.fail(f"{CONNECTOR_BIN} is missing: install the project (pip install -e .)")
    return run_connector
