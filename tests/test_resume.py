"""A sync process killed between batches resumes from its checkpoint: nothing lost, nothing
fetched twice, nothing stored twice, and the end state equals an uninterrupted sync.

The kill is real: `connector sync` runs as a subprocess with CONNECTOR_FAULT_EXIT_AFTER_BATCHES,
which makes the engine `os._exit(99)` right after that many batches were committed, while the
sandbox keeps serving from this test process.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from connector.config import build_config
from connector.pipeline.engine import EXIT_AFTER_BATCHES_ENV
from connector.sandbox import SandboxOptions, SandboxServer
from connector.store import Store
from connector.store.store import sqlite_url_for
from tests.conftest import FAST_HTTP, seed_registry, sources_for, sync_wired, write_config

DIALECTS = ("meditrak", "meditrak_import")
Run = Callable[..., subprocess.CompletedProcess[str]]


def snapshot(store: Store) -> dict[str, Any]:
    """Everything a sync leaves behind that must not depend on how the sync went."""
    return {
        name: {
            "hashes": store.content_hashes(name),
            "invoices": [i.to_import_record() for i in store.iter_invoices(name)],
            "quarantined": sorted(e.record_key for e in store.quarantine_entries(name)),
        }
        for name in DIALECTS
    }


def log_events(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def test_a_killed_sync_resumes_from_its_checkpoint_without_duplicates(
    tmp_path: Path, connector: Run
) -> None:
    options = SandboxOptions(invoices=70, seed=13, defect_rate=0.1, dialects=DIALECTS)
    with SandboxServer(options) as server:
        served = {name: set(server.dataset(name).ids()) for name in DIALECTS}
        # Small pages: 7 batches per source, so the kill lands mid-list.
        sources = sources_for(server, DIALECTS, page_size=10, http=FAST_HTTP)
        config_path = write_config(
            tmp_path / "cfg.yaml",
            {
                "store": {"url": "crash.db"},
                "logging": {"format": "json", "level": "info"},
                "sources": sources,
            },
        )

        seed_registry(server, sqlite_url_for(tmp_path / "crash.db"))
        crashed = connector("--config", str(config_path), "sync", env={EXIT_AFTER_BATCHES_ENV: "2"})
        assert crashed.returncode == 99, crashed.stdout + crashed.stderr
        with Store(sqlite_url_for(tmp_path / "crash.db")) as store:
            kept = {
                name: store.count_invoices(name) + store.count_quarantined(name)
                for name in DIALECTS
            }
            assert 0 < sum(kept.values()) < sum(len(ids) for ids in served.values())
            states = {s.source: s for s in store.all_states()}
            interrupted = {name for name, state in states.items() if state.resume}
            assert interrupted, "no checkpoint was written before the kill"
            # The killed process left its runs "running"; their counters were committed with
            # the batches, so they match the rows.
            crashed_runs = {r.source: r for r in store.runs() if r.status == "running"}
            assert interrupted <= set(crashed_runs) <= set(DIALECTS)
            for name in DIALECTS:
                fetched = crashed_runs[name].counts["fetched"] if name in crashed_runs else 0
                assert fetched == kept[name]
            # At least the two counted batches; the other source's batch may also have
            # committed just before the exit (a crash lands wherever it lands).
            assert sum(r.counts["batches"] for r in crashed_runs.values()) >= 2

        resumed = connector("--config", str(config_path), "sync")
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        finished = {
            e["source"]: e for e in log_events(resumed.stderr) if e["event"] == "sync.finished"
        }
        assert set(finished) == set(DIALECTS), resumed.stderr
        for name in DIALECTS:
            assert finished[name]["resumed"] is (name in interrupted), finished[name]
            # Only what the killed run had not stored was fetched again.
            assert finished[name]["fetched"] == len(served[name]) - kept[name]

        reference_config = build_config(
            {"store": {"url": str(tmp_path / "reference.db")}, "sources": sources}, env={}
        )
        seed_registry(server, reference_config.store.sqlalchemy_url())
        with Store(reference_config.store.sqlalchemy_url()) as reference:
            results = sync_wired(reference_config, reference)
            assert all(r.ok for r in results.values()), [r.error for r in results.values()]
            expected = snapshot(reference)

    with Store(sqlite_url_for(tmp_path / "crash.db")) as store:
        final = snapshot(store)
        for name in DIALECTS:
            stored_ids = [r["id"] for r in final[name]["invoices"]]
            quarantined = final[name]["quarantined"]
            assert len(stored_ids) == len(set(stored_ids)) == store.count_invoices(name)
            assert len(quarantined) == len(set(quarantined))
            assert set(stored_ids).isdisjoint(quarantined)
            assert set(stored_ids) | set(quarantined) == served[name]
            assert final[name]["hashes"] == expected[name]["hashes"]
            assert final[name] == expected[name]
        assert all(state.resume is None for state in store.all_states())
        # The next run closed the killed runs; each source then finished once.
        statuses = sorted((r.source, r.status) for r in store.runs())
        expected_statuses = [(name, "ok") for name in DIALECTS]
        expected_statuses += [(name, "interrupted") for name in crashed_runs]
        assert statuses == sorted(expected_statuses)
