"""`connector backfill` of a declarative `rest` source: with `list.date_from_param` and
`list.date_to_param` (as the shipped MediTrak import example has them) each window asks the
vendor for its invoice dates only, and the store ends identical to the hand-written adapter's
backfill of the same contract; without them the source is refused with a message that says so."""

from __future__ import annotations

import asyncio
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from connector.config import AppConfig, build_config
from connector.daemon.backfill import Backfill, BackfillReport, LogProgress
from connector.errors import ConfigError
from connector.pipeline.wiring import build_engine
from connector.sandbox import SandboxOptions, SandboxServer
from connector.sources.adapter import FetchRequest, ListDetailAdapter
from connector.sources.discovery import source_type
from connector.store import Store
from connector.store.store import sqlite_url_for
from tests.conftest import FAST_HTTP, seed_registry
from tests.reliability.rel_helpers import snapshot
from tests.test_rest_config import problems_of
from tests.test_rest_equivalence import hand_source, rest_source

NAME = "meditrak_import"
DATE_RANGE = {"date_from_param": "date_from", "date_to_param": "date_to"}


def with_date_range(server: SandboxServer, **listing: Any) -> dict[str, Any]:
    source = rest_source(server, NAME)
    assert DATE_RANGE.items() <= source["list"].items(), "the shipped example has the range"
    return {**source, "list": {**source["list"], **listing}}


def config_of(source: dict[str, Any], path: Path) -> AppConfig:
    tuned = {**source, "page_size": 10, "http": FAST_HTTP}
    return build_config({"store": {"url": sqlite_url_for(path)}, "sources": [tuned]})


def backfill(config: AppConfig, store: Store, since: date, until: date) -> BackfillReport:
    job = Backfill(
        config,
        store,
        build_engine(config, store),
        source=NAME,
        since=since,
        until=until,
        window_days=60,
        progress=lambda key: LogProgress(key, 3600),
    )
    return asyncio.run(job.run(handle_signals=False))


def test_a_rest_backfill_asks_for_each_window_and_stores_what_the_hand_adapter_stores(
    tmp_path: Path,
) -> None:
    found = {}
    for kind in ("hand", "rest"):
        options = SandboxOptions(invoices=80, seed=41, defect_rate=0.1, dialects=(NAME,))
        with SandboxServer(options) as server:
            days = sorted(invoice.invoice_date for invoice in server.dataset(NAME))
            # The middle of the history only: the vendor must be what leaves the rest out.
            since, until = days[len(days) // 4], days[3 * len(days) // 4]
            wanted = {i.id for i in server.dataset(NAME) if since <= i.invoice_date <= until}
            source = hand_source(server, NAME) if kind == "hand" else rest_source(server, NAME)
            path = tmp_path / f"{kind}.db"
            config = config_of(source, path)
            seed_registry(server, sqlite_url_for(path))
            with Store(sqlite_url_for(path)) as store:
                report = backfill(config, store, since, until)
                assert report.complete and report.summary.total > 1, report
                found[kind] = snapshot(store, [NAME])[NAME]
            stored = {r["id"] for r in found[kind]["invoices"]}
            stored |= {key for key, _ in found[kind]["quarantined"]}
            assert stored == wanted, kind
    assert found["rest"] == found["hand"]
    assert found["rest"]["invoices"] and found["rest"]["quarantined"]


def test_the_date_range_is_sent_in_the_configured_format(tmp_path: Path) -> None:
    options = SandboxOptions(invoices=5, seed=3, dialects=(NAME,))
    with SandboxServer(options) as server:
        raw = with_date_range(server, date_format="%d/%m/%Y", params={"order": "date"})
        (source,) = config_of(raw, tmp_path / "s.db").sources
    adapter_class = source_type("rest").adapter_class()
    assert adapter_class.narrows_by_date(source)
    adapter = adapter_class.create(source)
    assert isinstance(adapter, ListDetailAdapter)
    request = FetchRequest(date_from=date(2025, 1, 2), date_to=date(2025, 2, 28))
    assert adapter.list_params(request) == {
        "order": "date",
        "date_from": "02/01/2025",
        "date_to": "28/02/2025",
    }
    assert adapter.list_params(FetchRequest()) == {"order": "date"}


def test_a_rest_source_without_a_date_range_is_refused_by_backfill(tmp_path: Path) -> None:
    options = SandboxOptions(invoices=5, seed=3, dialects=(NAME,))
    with SandboxServer(options) as server:
        raw = rest_source(server, NAME)
        listing = {k: v for k, v in raw["list"].items() if k not in DATE_RANGE}
        config = config_of({**raw, "list": listing}, tmp_path / "s.db")
    with Store(config.store.sqlalchemy_url()) as store:
        engine = build_engine(config, store)
        with pytest.raises(ConfigError, match="cannot ask its vendor for a date range"):
            Backfill(config, store, engine, source=NAME, since=date(2025, 1, 1))


def test_a_date_range_needs_both_ends_and_a_known_format() -> None:
    options = SandboxOptions(invoices=5, seed=3, dialects=(NAME,))
    with SandboxServer(options) as server:
        raw = with_date_range(server, date_to_param=None, date_format="dd.mm.yyyy")
    found = problems_of(raw)
    where = f"sources[0] ({NAME})."
    assert found == [
        where + "list.date_format: unknown format 'dd.mm.yyyy' (iso_date or a strftime pattern)",
        where + "list.date_to_param: a date range needs both ends (date_from_param and "
        "date_to_param)",
    ]
