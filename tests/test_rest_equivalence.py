"""Proof that the shipped YAML descriptions (`examples/*.rest.yaml`) are the hand-written
adapters: each runs against its own sandbox of the same dialect (same seed, same defects, same
anomaly or fault mode) into its own store, and the two stores must end identical: the records to
the cent with their content hashes, the quarantine keys with their reason codes, and the sync
checkpoints, also after a run cut off mid-way and resumed. The clean sync runs on SQLite and
PostgreSQL (the store is where the backends differ; the other cases are about HTTP)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

from connector.config import AppConfig, build_config
from connector.pipeline.engine import EXIT_AFTER_BATCHES_ENV, RunResult
from connector.pipeline.wiring import build_engine
from connector.sandbox import SandboxOptions, SandboxServer
from connector.sandbox._anomaly import HostileBody
from connector.sources.adapter import FetchRequest
from connector.sources.discovery import source_type
from connector.store import Store
from connector.store.store import sqlite_url_for
from tests.conftest import run_connector, seed_registry, write_config
from tests.reliability.rel_helpers import RETRYING_HTTP, private_pg_database, snapshot

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
VENDORS = ("meditrak_import", "invoice_api")
PAGE_SIZE = 20
# Sandbox data is dated before this; only a record inserted mid-run is dated "now".
STARTED = datetime.now(UTC) - timedelta(seconds=5)


def rest_source(server: SandboxServer, name: str) -> dict[str, Any]:
    """The shipped YAML's source, its `${...}` filled in for this sandbox."""
    text = (EXAMPLES / f"{name}.rest.yaml").read_text(encoding="utf-8")
    sources: list[dict[str, Any]] = yaml.safe_load(text)["sources"]
    (source,) = sources
    credentials = server.dialect(name).credentials()
    env = {
        "MEDITRAK_IMPORT_URL": server.api_url(name),
        "MEDITRAK_IMPORT_KEY": credentials.get("api_key", ""),
        "INVOICE_API_URL": server.api_url(name),
        "INVOICE_API_USER": credentials.get("username", ""),
        "INVOICE_API_PASSWORD": credentials.get("password", ""),
    }
    filled = build_config({"sources": [source]}, env=env)
    assert filled.sources[0].type == "rest"
    # Raw again, with the variables substituted: the config files below are written from it.
    for key, value in list(source.items()):
        source[key] = _substitute(value, env)
    return source


def _substitute(value: Any, env: dict[str, str]) -> Any:
    if isinstance(value, str):
        for name, text in env.items():
            value = value.replace(f"${{{name}}}", text)
        return value
    if isinstance(value, dict):
        return {k: _substitute(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, env) for v in value]
    return value


def hand_source(server: SandboxServer, name: str) -> dict[str, Any]:
    source: dict[str, Any] = server.dialect(name).connector_source(server.api_url(name))
    return source


def document(source: dict[str, Any], store_path: Path, http: dict[str, Any]) -> dict[str, Any]:
    tuned = {**source, "page_size": PAGE_SIZE, "http": dict(http)}
    return {"store": {"url": str(store_path)}, "sources": [tuned]}


def sync(config: AppConfig, store: Store) -> RunResult:
    (result,) = asyncio.run(build_engine(config, store).sync())
    return result


Outcome = dict[str, tuple[RunResult, dict[str, Any], Any, tuple[int, int]]]


def run_pair(
    name: str,
    tmp_path: Path,
    http: dict[str, Any] | None = None,
    urls: dict[str, str] | None = None,
    **options: Any,
) -> Outcome:
    """One sync by each description against its own identical sandbox, into its own store
    (`urls` by description; SQLite files by default): result, snapshot, sync state, and
    (faults injected, anomalies applied) per description."""
    outcome: Outcome = {}
    for kind, make in (("hand", hand_source), ("rest", rest_source)):
        sandbox = SandboxOptions(invoices=120, seed=23, dialects=(name,), **options)
        with SandboxServer(sandbox) as server:
            url = (urls or {}).get(kind) or sqlite_url_for(tmp_path / f"{kind}.db")
            raw = document(make(server, name), tmp_path / f"{kind}.db", http or RETRYING_HTTP)
            config = build_config({**raw, "store": {"url": url}})
            seed_registry(server, url)
            with Store(url) as store:
                result = sync(config, store)
                state = store.get_state(name)
                fired = (server.stats(name)["faults_injected"], len(server.anomaly_log(name)))
                found = snapshot(store, [name])
                outcome[kind] = (result, found, (state.cursor, state.resume), fired)
    return outcome


def without_clock(found: dict[str, Any], state: Any, started: datetime) -> tuple[Any, Any]:
    """A record the sandbox inserted mid-run carries the wall clock of its sandbox as its
    update time (and so in its hash and the cursor): written as "now" on both sides."""
    cursor, resume = state
    for shown in found.values():
        for record in shown["invoices"]:
            stamp = record.get("source_updated_at")
            if stamp and datetime.fromisoformat(stamp) >= started:
                record["source_updated_at"] = "now"
                shown["hashes"].pop(record["id"], None)
    if cursor is not None and cursor >= started:
        cursor = "now"
    return found, (cursor, resume)


def assert_same(outcome: Outcome) -> None:
    hand, rest = outcome["hand"], outcome["rest"]
    assert hand[0].ok, hand[0].error
    assert rest[0].ok, rest[0].error
    assert without_clock(rest[1], rest[2], STARTED) == without_clock(hand[1], hand[2], STARTED)
    assert rest[0].counts == hand[0].counts


@pytest.fixture
def store_pair(store_url: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Two empty stores on the backend of `store_url`: the hand-written adapter's and the
    YAML description's."""
    if make_url(store_url).get_backend_name() == "sqlite":
        yield {"hand": store_url, "rest": sqlite_url_for(tmp_path / "rest.db")}
        return
    with private_pg_database() as other:
        yield {"hand": store_url, "rest": other}


@pytest.mark.parametrize("name", VENDORS)
def test_a_clean_sync_stores_and_quarantines_exactly_as_the_hand_written_adapter(
    name: str, tmp_path: Path, store_pair: dict[str, str]
) -> None:
    outcome = run_pair(name, tmp_path, urls=store_pair, defect_rate=0.15)
    assert_same(outcome)
    stored = outcome["rest"][1][name]
    assert stored["invoices"] and stored["quarantined"], "the sandbox served no defect"


@pytest.mark.parametrize("name", VENDORS)
def test_429_and_503_answers_are_retried_to_the_same_store(name: str, tmp_path: Path) -> None:
    outcome = run_pair(name, tmp_path, defect_rate=0.1, fault_rate=0.3, retry_after_s=0)
    assert_same(outcome)
    assert outcome["hand"][3][0] > 0 and outcome["rest"][3][0] > 0, "no fault was injected"


@pytest.mark.parametrize("mode", ["delete", "insert", "duplicate"])
@pytest.mark.parametrize("name", VENDORS)
def test_records_changing_between_pages_end_the_same(name: str, mode: str, tmp_path: Path) -> None:
    outcome = run_pair(name, tmp_path, defect_rate=0.1, anomalies={name: mode})
    assert_same(outcome)
    assert outcome["hand"][3][1] > 0 and outcome["rest"][3][1] > 0, "the anomaly never fired"


@pytest.mark.parametrize("name", VENDORS)
def test_a_run_cut_off_mid_way_leaves_the_same_checkpoint_and_resumes_the_same(
    name: str, tmp_path: Path
) -> None:
    states: dict[str, list[Any]] = {}
    snapshots = {}
    for kind, make in (("hand", hand_source), ("rest", rest_source)):
        options = SandboxOptions(invoices=120, seed=29, defect_rate=0.1, dialects=(name,))
        with SandboxServer(options) as server:
            store_path = tmp_path / f"{kind}.db"
            config_path = write_config(
                tmp_path / f"{kind}.yaml", document(make(server, name), store_path, RETRYING_HTTP)
            )
            seed_registry(server, sqlite_url_for(store_path))
            crashed = run_connector(
                "--config", str(config_path), "sync", env={EXIT_AFTER_BATCHES_ENV: "2"}
            )
            assert crashed.returncode != 0
            with Store(sqlite_url_for(store_path)) as store:
                cut = store.get_state(name)
                assert cut.resume is not None, "the cut-off run left no checkpoint"
                states[kind] = [cut.resume, store.count_invoices(name)]
            resumed = run_connector("--config", str(config_path), "sync")
            assert resumed.returncode == 0, resumed.stderr[-2000:]
            with Store(sqlite_url_for(store_path)) as store:
                done = store.get_state(name)
                states[kind] += [done.cursor, done.resume]
                snapshots[kind] = snapshot(store, [name])
    assert states["rest"] == states["hand"]
    assert snapshots["rest"] == snapshots["hand"]


def test_a_second_sync_writes_nothing(tmp_path: Path) -> None:
    options = SandboxOptions(invoices=60, seed=31, defect_rate=0.1, dialects=("invoice_api",))
    with SandboxServer(options) as server:
        path = tmp_path / "rest.db"
        config = build_config(document(rest_source(server, "invoice_api"), path, RETRYING_HTTP))
        seed_registry(server, sqlite_url_for(path))
        with Store(sqlite_url_for(path)) as store:
            first = sync(config, store)
            before = snapshot(store, ["invoice_api"])
            again = sync(config, store)
            assert snapshot(store, ["invoice_api"]) == before
    assert first.counts.inserted > 0
    assert (again.counts.inserted, again.counts.updated) == (0, 0)
    assert again.counts.unchanged == first.counts.inserted


def test_the_rate_limit_is_never_exceeded(tmp_path: Path) -> None:
    per_window, window_s = 4, 1.0
    options = SandboxOptions(
        invoices=100, seed=3, dialects=("meditrak_import",), stats_window_s=window_s
    )
    with SandboxServer(options) as server:
        raw = {**rest_source(server, "meditrak_import"), "page_size": 10}
        raw["http"] = {**RETRYING_HTTP, "requests_per_minute": 60, "concurrency": 8}
        (source,) = build_config({"sources": [raw]}).sources
        adapter = source_type("rest").adapter_class().create(source)
        # The setting's own sliding window, shrunk to a second so that the test takes seconds.
        adapter.client.limit_rate(per_window, window_s * 1.2)

        async def walk() -> int:
            fetched = 0
            async with adapter:
                async for page in adapter.fetch_pages(FetchRequest()):
                    fetched += len(page.records)
            return fetched

        assert asyncio.run(walk()) == 100
        stats = server.stats("meditrak_import")
    assert stats["max_requests_per_window"] <= per_window, stats


def test_an_oversized_answer_fails_the_source_without_retrying(tmp_path: Path) -> None:
    options = SandboxOptions(invoices=30, seed=3, dialects=("meditrak_import",))
    with SandboxServer(options) as server:
        server.set_hostile_body("meditrak_import", HostileBody("oversized", size=2 * 1024 * 1024))
        http = {**RETRYING_HTTP, "max_response_bytes": 256 * 1024}
        path = tmp_path / "rest.db"
        config = build_config(document(rest_source(server, "meditrak_import"), path, http))
        with Store(sqlite_url_for(path)) as store:
            result = sync(config, store)
        requests = server.stats("meditrak_import")["by_path"]["/api/invoices"]
    assert not result.ok
    assert "http.max_response_bytes" in str(result.error)
    assert requests == 1
