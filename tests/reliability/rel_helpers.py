"""Shared pieces of the reliability suite: sandbox configs for every source, one wired sync,
a store snapshot that must not depend on how a sync went, and private PostgreSQL databases."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from connector.cli.demo import sandbox_sources
from connector.cli.sandbox import seed_sandbox_registry
from connector.config import AppConfig, build_config
from connector.pipeline.engine import RunResult
from connector.pipeline.wiring import build_engine
from connector.sandbox import SandboxServer
from connector.store import Store

PG_URL_ENV = "CONNECTOR_TEST_PG_URL"
PG_REQUIRED_ENV = "CONNECTOR_REQUIRE_PG"
PG_SERVER_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/"

# Fast retries for tests, but enough of them that 10 % faults never exhaust the budget
# (seven faults in a row: 1e-7 per request). The timeout is far above a healthy answer's time
# on a loaded machine (~0.15 s at most seen with the CPUs oversubscribed): a spurious timeout
# would add a request that tests counting requests or logins would take for a bug.
RETRYING_HTTP: dict[str, Any] = {
    "max_retries": 6,
    "backoff_base": "20ms",
    "backoff_max": "200ms",
    "timeout": "2s",
    "max_retry_after": "5s",
}


def source_overrides(server: SandboxServer, http: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per running dialect: the HTTP settings, and small pages where a source has a page size."""
    overrides: dict[str, dict[str, Any]] = {}
    for name in server.dialect_names:
        fields: dict[str, Any] = {"http": dict(http)}
        if name == "splose":
            fields["http"].setdefault("requests_per_minute", 600)
        elif name != "citabox":
            fields["page_size"] = 20
        overrides[name] = fields
    return overrides


def raw_sources(
    server: SandboxServer, http: dict[str, Any] | None = None, names: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Source configs as they would be written in YAML."""
    return sandbox_sources(server, names, **source_overrides(server, http or RETRYING_HTTP))


def sandbox_app_config(
    server: SandboxServer,
    store_url: str,
    http: dict[str, Any] | None = None,
    names: Sequence[str] | None = None,
    **extra: Any,
) -> AppConfig:
    sources = raw_sources(server, http, names)
    return build_config({"store": {"url": store_url}, "sources": sources, **extra}, env={})


def sync_all(config: AppConfig, store: Store, **engine_kwargs: Any) -> dict[str, RunResult]:
    results = asyncio.run(build_engine(config, store, **engine_kwargs).sync())
    return {result.source: result for result in results}


def seeded_store(server: SandboxServer, url: str) -> Store:
    store = Store(url)
    seed_sandbox_registry(server, store)
    return store


def snapshot(store: Store, names: Sequence[str]) -> dict[str, Any]:
    """Invoices (ids, content hashes, records with items) and quarantine (keys, reasons)."""
    return {
        name: {
            "hashes": store.content_hashes(name),
            "invoices": [i.to_import_record() for i in store.iter_invoices(name)],
            "quarantined": sorted(
                (
                    e.record_key,
                    tuple(sorted({i.code.value for i in e.issues if i.severity == "error"})),
                )
                for e in store.quarantine_entries(name)
            ),
        }
        for name in names
    }


def served_count(server: SandboxServer, name: str) -> int:
    return len(server.dataset(name))


# ----------------------------------------------------------------------------- PostgreSQL


def pg_server_url() -> str:
    return os.environ.get(PG_URL_ENV, PG_SERVER_URL)


@cache
def pg_unreachable() -> str | None:
    url = make_url(pg_server_url()).set(database="postgres")
    try:
        engine = create_engine(url, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:
        shown = url.render_as_string(hide_password=True)
        return (
            f"PostgreSQL not reachable at {shown} ({type(exc).__name__}). Start PostgreSQL "
            f"there, or set {PG_URL_ENV}=postgresql+psycopg://USER@HOST:PORT/ to a server where "
            f"the tests may create databases; {PG_REQUIRED_ENV}=1 turns this skip into a failure."
        )
    return None


def require_pg() -> None:
    reason = pg_unreachable()
    if reason is None:
        return
    if os.environ.get(PG_REQUIRED_ENV) == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@contextmanager
def private_pg_database() -> Iterator[str]:
    """A fresh database `connector_t_<hex>` on the test server, dropped afterwards."""
    require_pg()
    server = make_url(pg_server_url())
    name = f"connector_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
