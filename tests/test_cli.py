"""The `connector` executable as an operator runs it (subprocesses): export to the MediTrak
import contract (jsonl) and per line item (csv), the demo, exit codes of sync, and how an
invalid configuration is reported."""

from __future__ import annotations

import csv
import io
import json
import socket
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from connector.cli.export import CSV_COLUMNS
from connector.config import build_config
from connector.model import ImportRecord
from connector.sandbox import SandboxOptions, SandboxServer
from connector.store import Store
from connector.store.store import sqlite_url_for
from tests.conftest import FAST_HTTP, seed_registry, sources_for, sync_wired, write_config

DIALECTS = ("meditrak", "meditrak_import")
Run = Callable[..., subprocess.CompletedProcess[str]]


@dataclass
class Synced:
    server: SandboxServer
    config_path: Path
    store_path: Path


@pytest.fixture(scope="module")
def synced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Synced]:
    """A sandbox synced once into a SQLite file, and a config pointing at both."""
    directory = tmp_path_factory.mktemp("export")
    options = SandboxOptions(invoices=80, seed=8, defect_rate=0.15, dialects=DIALECTS)
    with SandboxServer(options) as server:
        sources = sources_for(server, DIALECTS, page_size=40, http=FAST_HTTP)
        document = {"store": {"url": "store.db"}, "sources": sources}
        config_path = write_config(directory / "connector.yaml", document)
        config = build_config({**document, "store": {"url": str(directory / "store.db")}}, env={})
        seed_registry(server, config.store.sqlalchemy_url())
        with Store(config.store.sqlalchemy_url()) as store:
            results = sync_wired(config, store)
        assert all(r.ok for r in results.values()), [r.error for r in results.values()]
        yield Synced(server, config_path, directory / "store.db")


def billable_truth(server: SandboxServer, name: str) -> dict[str, Any]:
    """Served invoices that must be exported: not defective, not void."""
    dataset = server.dataset(name)
    defects = dataset.defects()
    return {
        inv.id: inv for inv in dataset.invoices if inv.id not in defects and inv.status != "void"
    }


def test_export_jsonl_is_the_import_contract_and_sums_to_the_served_totals(
    synced: Synced, connector: Run, tmp_path: Path
) -> None:
    output = tmp_path / "export.jsonl"
    done = connector("--config", str(synced.config_path), "export", "--format", "jsonl",
                     "--output", str(output))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert output.stat().st_mode & 0o777 == 0o600  # exports carry patient data
    lines = output.read_text(encoding="utf-8").splitlines()
    records = [ImportRecord.model_validate(json.loads(line)) for line in lines]
    assert f"exported {len(records)} invoice(s)" in done.stderr

    keys = [(getattr(r, "source", None), r.id) for r in records]
    assert len(keys) == len(set(keys)), "an invoice was exported twice"
    for name in DIALECTS:
        truth = billable_truth(synced.server, name)
        mine = [r for r in records if getattr(r, "source", None) == name]
        assert {r.id for r in mine} == set(truth)
        exported_total = sum((r.total_amount for r in mine), Decimal("0.00"))
        served_total = sum((inv.total for inv in truth.values()), Decimal("0.00"))
        assert exported_total == served_total
        assert exported_total > 0
        for record in mine:
            assert record.total_amount == truth[record.id].total
            assert sum((i.total for i in record.items), Decimal(0)) == record.total_amount
            assert record.status != "void"
            assert record.invoice_number == truth[record.id].number


def test_export_csv_has_one_row_per_line_item(synced: Synced, connector: Run) -> None:
    done = connector("--config", str(synced.config_path), "export", "--format", "csv",
                     "--include-void")  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert tuple(csv.reader(io.StringIO(done.stdout)).__next__()) == CSV_COLUMNS
    expected: dict[tuple[str, str, int], Decimal] = {}
    invoice_totals: dict[tuple[str, str], Decimal] = {}
    for name in DIALECTS:
        dataset = synced.server.dataset(name)
        defects = dataset.defects()
        for inv in dataset.invoices:
            if inv.id in defects:
                continue
            invoice_totals[(name, inv.id)] = inv.total
            for line_no, item in enumerate(inv.items, start=1):
                expected[(name, inv.id, line_no)] = (item.quantity * item.unit_price).quantize(
                    Decimal("0.01")
                )
    got = {(r["source"], r["id"], int(r["line_no"])): Decimal(r["item_total"]) for r in rows}
    assert len(rows) == len(got), "a line item was exported twice"
    assert got == expected
    assert Counter(r["status"] for r in rows)["void"] > 0  # --include-void keeps them
    for row in rows:
        assert Decimal(row["total_amount"]) == invoice_totals[(row["source"], row["id"])]
        assert row["category"] and row["description"]


def table_rows(stdout: str) -> dict[str, list[str]]:
    """Rows of a rich table printed without colour, or of the plain table printed off a
    terminal (columns two spaces apart): source → cells."""
    rows = {}
    for line in stdout.splitlines():
        if "│" in line:
            cells = [c.strip() for c in line.strip().strip("│").split("│")]
        else:
            cells = [c.strip() for c in line.strip().split("  ") if c.strip()]
        if len(cells) > 3 and cells[0] and cells[0] != "source":
            rows[cells[0]] = cells
    return rows


def test_demo_prints_inserted_and_quarantined_per_source(connector: Run, tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    done = connector("demo", "--invoices", "12", "--seed", "3", "--defect-rate", "0.3",
                     "--db", str(db))  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    # The first table is the sync summary; the one after it counts quarantine reasons.
    summary = done.stdout.split("Quarantined records by reason code")[0]
    rows = table_rows(summary)
    assert set(DIALECTS) <= set(rows), done.stdout
    header = next(line for line in done.stdout.splitlines() if "inserted" in line)
    columns = [c.strip() for c in header.strip().strip("┃").split("┃")]
    at = {name: columns.index(name) for name in ("result", "fetched", "inserted", "quarantined")}
    with Store(sqlite_url_for(db)) as store:
        for source, cells in rows.items():
            assert cells[at["result"]] == "ok", cells
            fetched, inserted, quarantined = (
                int(cells[at[name]]) for name in ("fetched", "inserted", "quarantined")
            )
            assert fetched == 12
            assert inserted + quarantined == fetched
            assert store.count_invoices(source) == inserted
            assert store.count_quarantined(source) == quarantined
        stored, held = store.count_invoices(), store.count_quarantined()
    assert sum(int(cells[at["quarantined"]]) for cells in rows.values()) > 0
    assert f"store: {stored} invoice(s) stored, {held} quarantined" in done.stdout


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_sync_exits_1_when_a_source_fails_and_keeps_the_others(
    connector: Run, tmp_path: Path
) -> None:
    options = SandboxOptions(invoices=30, seed=4, dialects=("meditrak_import",))
    with SandboxServer(options) as server:
        (good,) = sources_for(server, ["meditrak_import"], http=FAST_HTTP)
        down = {
            "type": "meditrak",
            "name": "meditrak",
            "base_url": f"http://127.0.0.1:{closed_port()}/api/v1/",
            "api_key": "k",
            "http": FAST_HTTP,
        }
        path = write_config(
            tmp_path / "c.yaml", {"store": {"url": "s.db"}, "sources": [down, good]}
        )
        seed_registry(server, sqlite_url_for(tmp_path / "s.db"))
        done = connector("--config", str(path), "sync")
        dataset = server.dataset("meditrak_import")
        expected = len(dataset) - len(dataset.defects())
    assert done.returncode == 1, done.stdout + done.stderr
    rows = table_rows(done.stdout)
    assert rows["meditrak"][1].startswith("failed")
    assert rows["meditrak_import"][1] == "ok"
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    (failure,) = [e for e in events if e["event"] == "sync.failed"]
    assert failure["source"] == "meditrak"
    assert "connect" in failure["error"].lower() and "127.0.0.1" in failure["error"]
    with Store(sqlite_url_for(tmp_path / "s.db")) as store:
        assert store.count_invoices("meditrak") == 0
        assert store.count_invoices("meditrak_import") == expected
        assert [r.status for r in store.runs("meditrak")] == ["failed"]


def test_an_invalid_config_exits_2_listing_every_problem(connector: Run, tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(
        """\
store:
  url: store.db
sources:
  - {type: sage, name: sage, base_url: "https://sage.example/"}
  - {type: meditrak, name: meditrak, base_url: "https://meditrak.example/api/v1/"}
  - type: meditrak_import
    name: partner
    base_url: "partner.example/api"
    api_key: ${PARTNER_API_KEY}
""",
        encoding="utf-8",
    )
    unset = connector("--config", str(path), "sync")
    assert unset.returncode == 2
    report = " ".join(unset.stderr.split())
    assert "Invalid configuration" in report
    assert "4 problem(s)" in report
    assert "'sage' is not one of" in report
    assert "(meditrak).api_key" in report
    assert "(partner).base_url" in report and "partner.example/api" in report
    assert "PARTNER_API_KEY is not set" in report
    assert not (tmp_path / "store.db").exists(), "nothing may run on an invalid config"
