"""What the installed `connector` prints for scripts and pipes: `sync --dry-run` (what would be
stored and quarantined, nothing written), the documented `--json` shapes of sync, status,
reprocess and validate, and plain text without box drawing when stdout is not a terminal."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from connector.sandbox import SandboxOptions, SandboxServer
from connector.store import Store
from connector.store.database import sqlite_url_for
from tests.conftest import FAST_HTTP, seed_registry, sources_for, write_config

Run = Callable[..., subprocess.CompletedProcess[str]]

SOURCE = "meditrak"
BOX_DRAWING = set("─━│┃┏┓┗┛┡┩└┘├┤┬┴┼╇╈")


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    options = SandboxOptions(invoices=40, seed=9, defect_rate=0.2, dialects=(SOURCE,))
    with SandboxServer(options) as server:
        yield server


def _config(tmp_path: Path, server: SandboxServer, *, registry: bool = True) -> Path:
    store = tmp_path / "store.db"
    if registry:
        seed_registry(server, sqlite_url_for(store))
    return write_config(
        tmp_path / "c.yaml",
        {
            "store": {"url": str(store)},
            "logging": {"format": "json"},
            "sources": sources_for(server, (SOURCE,), http=FAST_HTTP),
        },
    )


def _nothing_written(store: Path) -> None:
    with Store(sqlite_url_for(store)) as opened:
        assert opened.runs() == []
        assert opened.all_states() == []
        assert opened.count_invoices() == 0
        assert opened.count_quarantined() == 0


def test_a_dry_run_writes_nothing_and_says_what_a_sync_would_store(
    sandbox: SandboxServer, connector: Run, tmp_path: Path
) -> None:
    config = _config(tmp_path, sandbox)
    text = connector("-c", str(config), "sync", "--dry-run")
    assert text.returncode == 0, text.stderr[-2000:]
    lines = text.stdout.splitlines()
    assert lines[0] == "Dry run: nothing was written"
    header = lines[1]
    assert header.split("  ")[0] == "source" and header.endswith("would quarantine  by reason")
    assert lines[2].startswith(f"{SOURCE}  ok")

    as_json = connector("-c", str(config), "sync", "--dry-run", "--json")
    assert as_json.returncode == 0, as_json.stderr[-2000:]
    document = json.loads(as_json.stdout)
    assert document["dry_run"] is True and document["ok"] is True
    planned = document["sources"][0]
    assert planned["would_store"] + planned["would_quarantine"] == planned["counts"]["fetched"]
    assert planned["would_quarantine"] > 0
    assert planned["quarantined_by_reason"]
    assert planned["run_id"] is None
    _nothing_written(tmp_path / "store.db")

    # A real sync stores and quarantines exactly what the dry run announced.
    real = connector("-c", str(config), "sync", "--json")
    assert real.returncode == 0, real.stderr[-2000:]
    done = json.loads(real.stdout)["sources"][0]
    assert done["counts"]["inserted"] == planned["would_store"]
    assert done["counts"]["quarantined"] == planned["would_quarantine"]
    assert done["quarantined_by_reason"] == planned["quarantined_by_reason"]


def test_a_dry_run_without_a_store_creates_none(
    sandbox: SandboxServer, connector: Run, tmp_path: Path
) -> None:
    config = _config(tmp_path, sandbox, registry=False)
    done = connector("-c", str(config), "sync", "--dry-run", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    planned = json.loads(done.stdout)["sources"][0]
    # Without the registry every record would be quarantined: the warning says why.
    assert planned["would_store"] == 0
    assert planned["warning"].startswith(f"{SOURCE}: all 40 record(s) fetched would be quarantined")
    assert not (tmp_path / "store.db").exists()


def test_json_shapes_and_plain_text_off_a_terminal(
    sandbox: SandboxServer, connector: Run, tmp_path: Path
) -> None:
    config = _config(tmp_path, sandbox)
    synced = connector("-c", str(config), "sync")
    assert synced.returncode == 0, synced.stderr[-2000:]
    assert not BOX_DRAWING & set(synced.stdout)
    lines = synced.stdout.splitlines()
    assert lines[0] == "Sync summary"
    assert lines[1].split()[:3] == ["source", "result", "fetched"]
    assert lines[2].split()[:3] == [SOURCE, "ok", "40"]

    again = json.loads(connector("-c", str(config), "sync", "--json").stdout)
    assert set(again) == {"ok", "dry_run", "interrupted", "message", "sources"}
    assert set(again["sources"][0]) == {
        "source",
        "ok",
        "interrupted",
        "error",
        "run_id",
        "resumed",
        "seconds",
        "counts",
        "quarantined_by_reason",
        "warning",
    }
    assert set(again["sources"][0]["counts"]) == {
        "fetched",
        "inserted",
        "updated",
        "unchanged",
        "quarantined",
        "released",
    }

    status = connector("-c", str(config), "status")
    assert status.returncode == 0 and not BOX_DRAWING & set(status.stdout)
    rows = json.loads(connector("-c", str(config), "status", "--json").stdout)
    assert rows[0]["source"] == SOURCE and rows[0]["outcome"] == "ok"

    reprocessed = connector("-c", str(config), "reprocess", "--json")
    assert reprocessed.returncode == 0, reprocessed.stderr[-2000:]
    summary = json.loads(reprocessed.stdout)
    assert set(summary) == {"ok", "moved", "sources"}
    assert set(summary["sources"][0]) == {
        "source",
        "ok",
        "error",
        "run_id",
        "examined",
        "moved",
        "still_quarantined",
        "needs_sync",
        "moved_by_reason",
    }
    assert not BOX_DRAWING & set(connector("-c", str(config), "reprocess").stdout)

    report = json.loads(connector("-c", str(config), "validate", "-s", SOURCE, "--json").stdout)
    assert report["schema"] == "connector.validation-report/1"
    assert report["verdict"] == "not ready"
