"""`connector report` over a store filled by sandbox syncs (one source failing on its
credentials) and a reprocess: the runs with their counts, the failure text, the lag and the
quarantine by reason, in every format."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from connector.config import AppConfig, build_config
from connector.pipeline.reprocess import reprocess
from connector.pipeline.wiring import build_engine
from connector.reports import history_report, render
from connector.sandbox import SandboxOptions, SandboxServer
from connector.store import Store
from connector.store.store import sqlite_url_for
from tests.conftest import FAST_HTTP, seed_registry, sources_for, sync_wired, write_config
from tests.test_validate_report import (
    assert_markdown_tables,
    assert_matches_schema,
    assert_readable_html,
    assert_self_contained_html,
)

DIALECTS = ("meditrak", "meditrak_import")
Run = Callable[..., subprocess.CompletedProcess[str]]
WRONG_KEY = "wrong-key-789"


@pytest.fixture(scope="module")
def history(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[SandboxServer, AppConfig, Path]]:
    directory = tmp_path_factory.mktemp("history")
    options = SandboxOptions(invoices=60, seed=9, defect_rate=0.15, dialects=DIALECTS)
    with SandboxServer(options) as server:
        sources = sources_for(server, DIALECTS, page_size=25, http=FAST_HTTP)
        sources[0]["api_key"] = WRONG_KEY  # meditrak fails on every run
        document = {"store": {"url": str(directory / "store.db")}, "sources": sources}
        config = build_config(document, env={})
        write_config(directory / "connector.yaml", document)
        seed_registry(server, config.store.sqlalchemy_url())
        with Store(config.store.sqlalchemy_url()) as store:
            sync_wired(config, store)
            sync_wired(config, store)
            reprocess(build_engine(config, store), sources=["meditrak_import"])
        yield server, config, directory


def open_report(config: AppConfig, **options: Any) -> dict[str, Any]:
    with Store(config.store.sqlalchemy_url()) as store:
        return history_report(store, config, secrets=config.secrets(), **options)


def test_runs_counts_failures_and_quarantine(
    history: tuple[SandboxServer, AppConfig, Path],
) -> None:
    server, config, _directory = history
    report = open_report(config)
    assert_matches_schema(report)
    sources = {s["name"]: s for s in report["sources"]}
    assert list(sources) == list(DIALECTS)

    failing = sources["meditrak"]
    assert [r["status"] for r in failing["runs"]] == ["failed", "failed"]
    assert len(failing["failures"]) == 2
    assert all("Invalid or expired API key" in f["error"] for f in failing["failures"])
    assert WRONG_KEY not in json.dumps(report)
    assert failing["stored"] == 0 and failing["cursor"] is None and failing["lag_seconds"] is None

    working = sources["meditrak_import"]
    served = len(server.dataset("meditrak_import"))
    defects = len(server.dataset("meditrak_import").defects())
    kinds = [r["kind"] for r in working["runs"]]
    assert kinds == ["sync", "sync", "reprocess"]
    first, second = working["runs"][0], working["runs"][1]
    assert first["status"] == "ok" and first["error"] is None
    assert first["counts"]["fetched"] == served
    assert first["counts"]["inserted"] == served - defects
    assert first["counts"]["quarantined"] == defects
    assert second["counts"]["inserted"] == 0 and second["counts"]["updated"] == 0
    totals = {t["kind"]: t for t in working["totals"]}
    assert totals["sync"]["runs"] == 2 and totals["sync"]["failed"] == 0
    assert totals["reprocess"]["runs"] == 1
    assert working["stored"] == served - defects and working["quarantined"] == defects
    assert working["lag_seconds"] is not None and working["lag_seconds"] > 0

    with Store(config.store.sqlalchemy_url()) as store:
        expected = store.quarantine_by_reason()["meditrak_import"]
    assert working["quarantine_by_reason"] == expected
    by_day: Counter[str] = Counter()
    for day in working["quarantine_by_day"]:
        by_day.update(day["reasons"])
    assert dict(by_day) == expected
    assert working["quarantine_by_day"][-1]["day"] == datetime.now(UTC).date().isoformat()


def test_since_leaves_out_older_runs(history: tuple[SandboxServer, AppConfig, Path]) -> None:
    _server, config, _directory = history
    tomorrow = datetime.now(UTC).date() + timedelta(days=1)
    report = open_report(config, since=tomorrow)
    assert report["since"] == tomorrow.isoformat()
    for source in report["sources"]:
        assert source["runs"] == [] and source["failures"] == []
        assert source["quarantine_by_day"] == []
    assert_matches_schema(report)
    everything = open_report(config, since=date(2000, 1, 1))
    assert sum(len(s["runs"]) for s in everything["sources"]) == 5


def test_every_format(history: tuple[SandboxServer, AppConfig, Path]) -> None:
    _server, config, _directory = history
    report = open_report(config)
    text = render(report, "text")
    assert "Sync history" in text and "Invalid or expired API key" in text
    assert "reprocess" in text and "Quarantine by reason" in text
    markdown = render(report, "md")
    assert assert_markdown_tables(markdown) >= 4
    assert "| run | kind | status | started |" in markdown
    html = render(report, "html")
    parser = assert_self_contained_html(html)
    assert_readable_html(html)
    assert "svg" in parser.seen
    # The per-day quarantine table names reason codes in its header: breakable at "_".
    assert "_<wbr>" in html
    for code in report["sources"][1]["quarantine_by_reason"]:
        assert code in html and code in markdown


def test_the_cli_report(history: tuple[SandboxServer, AppConfig, Path], connector: Run) -> None:
    _server, _config, directory = history
    config_path = directory / "connector.yaml"
    done = connector("--config", str(config_path), "report", "--format", "json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["schema"] == "connector.history-report/1"
    assert_matches_schema(report)
    out = directory / "history.html"
    done = connector("--config", str(config_path), "report", "-f", "html", "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert_self_contained_html(out.read_text(encoding="utf-8"))
    bad = connector("--config", str(config_path), "report", "--since", "yesterday")
    assert bad.returncode == 2 and "YYYY-MM-DD" in bad.stderr


def test_an_empty_store(tmp_path: Path) -> None:
    config = build_config({"store": {"url": str(tmp_path / "s.db")}, "sources": []}, env={})
    with Store(sqlite_url_for(tmp_path / "s.db")) as store:
        report = history_report(store, config)
    assert report["sources"] == []
    assert_matches_schema(report)
    assert "No source has run yet." in render(report, "text")
