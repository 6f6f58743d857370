"""End to end over real loopback HTTP: the engine, wired as the CLI wires it (category rules,
policy registry imported from the sandbox), syncs the MediTrak sandboxes into a SQLite file.
A second sync writes nothing, a vendor-side change updates exactly that invoice, and every
seeded defect lands in quarantine with its expected reason code."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from connector.config import AppConfig, build_config
from connector.model import InvoiceStatus
from connector.pipeline.engine import RunResult
from connector.sandbox import EXPECTED_REASON, SandboxOptions, SandboxServer
from connector.sandbox.meditrak import MEDITRAK_DEFECTS
from connector.store import Store
from tests.conftest import FAST_HTTP, seed_registry, sources_for
from tests.conftest import sync_wired as sync

DIALECTS = ("meditrak", "meditrak_import")
# Every defect kind the MediTrak dialects can render, the unregistered policy included.
ALL_DEFECTS = {name: MEDITRAK_DEFECTS for name in DIALECTS}


def sandbox_config(server: SandboxServer, path: Path, **fields: object) -> AppConfig:
    sources = sources_for(server, DIALECTS, page_size=20, http=FAST_HTTP, **fields)
    return build_config({"store": {"url": str(path)}, "sources": sources}, env={})


@pytest.fixture
def synced(tmp_path: Path) -> Iterator[tuple[SandboxServer, AppConfig, Store]]:
    options = SandboxOptions(
        invoices=100, seed=21, defect_rate=0.18, dialects=DIALECTS, defect_kinds=ALL_DEFECTS
    )
    with SandboxServer(options) as server:
        config = sandbox_config(server, tmp_path / "store.db")
        seed_registry(server, config.store.sqlalchemy_url())
        with Store(config.store.sqlalchemy_url()) as store:
            yield server, config, store


def test_second_sync_writes_nothing_and_one_change_updates_exactly_one(
    synced: tuple[SandboxServer, AppConfig, Store],
) -> None:
    server, config, store = synced
    served = {name: len(server.dataset(name)) for name in DIALECTS}
    defective = {name: len(server.dataset(name).defects()) for name in DIALECTS}

    first = sync(config, store)
    for name in DIALECTS:
        result = first[name]
        assert result.ok, result.error
        assert result.counts.fetched == served[name]
        assert result.counts.inserted == served[name] - defective[name]
        assert result.counts.quarantined == defective[name]
        assert not result.resumed

    second = sync(config, store)
    for name in DIALECTS:
        assert second[name].ok, second[name].error
        assert (second[name].counts.inserted, second[name].counts.updated) == (0, 0), name
    # MediTrak v1 has no change filter: the whole list is read and found unchanged.
    assert second["meditrak"].counts.fetched == served["meditrak"]
    assert second["meditrak"].counts.unchanged == served["meditrak"] - defective["meditrak"]
    # The import contract filters by updated_since: only the lookback window is re-read.
    assert second["meditrak_import"].counts.fetched < served["meditrak_import"] // 4

    before = {name: store.content_hashes(name) for name in DIALECTS}
    changed: dict[str, str] = {}
    for name in DIALECTS:
        dataset = server.dataset(name)
        clean = [i for i in dataset.ids() if i not in dataset.defects()]
        changed[name] = clean[len(clean) // 2]
        dataset.mutate(changed[name])

    third = sync(config, store)
    for name in DIALECTS:
        result = third[name]
        assert result.ok, result.error
        assert (result.counts.inserted, result.counts.updated) == (0, 1), name
        after = store.content_hashes(name)
        assert after.keys() == before[name].keys()
        differing = {i for i in after if after[i] != before[name][i]}
        assert differing == {changed[name]}
        truth = server.dataset(name).get(changed[name])
        assert truth is not None
        (stored,) = [i for i in store.iter_invoices(name) if i.id == changed[name]]
        assert stored.items[0].unit_price == truth.items[0].unit_price
        assert stored.total_amount == truth.total
        assert stored.source_updated_at == truth.updated_at
    assert third["meditrak"].counts.fetched == served["meditrak"]
    # The incremental path picked the change up without reading the list again.
    assert third["meditrak_import"].counts.fetched < served["meditrak_import"] // 4
    assert store.runs("meditrak_import", limit=1)[0].cursor_before is not None

    fourth = sync(config, store)
    for name in DIALECTS:
        assert (fourth[name].counts.inserted, fourth[name].counts.updated) == (0, 0), name


def test_new_invoices_are_picked_up_by_both_paths(
    synced: tuple[SandboxServer, AppConfig, Store],
) -> None:
    server, config, store = synced
    sync(config, store)
    added = {name: server.dataset(name).add().id for name in DIALECTS}
    again = sync(config, store)
    for name in DIALECTS:
        assert (again[name].counts.inserted, again[name].counts.updated) == (1, 0), name
        assert added[name] in store.content_hashes(name)


def test_defects_are_quarantined_with_their_reasons_and_everything_else_is_stored(
    synced: tuple[SandboxServer, AppConfig, Store],
) -> None:
    server, config, store = synced
    results = sync(config, store)
    for name in DIALECTS:
        assert results[name].ok, results[name].error
        dataset = server.dataset(name)
        served = dataset.ids()
        defects = dataset.defects()
        # The seed must exercise every defect kind the dialect generates.
        assert set(defects.values()) == set(MEDITRAK_DEFECTS)

        entries = store.quarantine_entries(name)
        keys = [e.record_key for e in entries]
        assert len(keys) == len(set(keys)), "a record was quarantined twice"
        assert set(keys) == set(defects)
        for entry in entries:
            codes = {issue.code.value for issue in entry.issues if issue.severity == "error"}
            kind = defects[entry.record_key]
            assert EXPECTED_REASON[kind] in codes, (entry.record_key, kind, codes)
            assert entry.raw_payload, "the raw payload is kept for review"
            assert entry.attempts == 1

        stored = {i.id: i for i in store.iter_invoices(name)}
        assert len(stored) == store.count_invoices(name)
        assert set(stored).isdisjoint(keys)
        assert set(stored) | set(keys) == set(served)
        assert store.count_invoices(name) + store.count_quarantined(name) == len(served)

        for invoice_id, invoice in stored.items():
            truth = dataset.get(invoice_id)
            assert truth is not None
            assert invoice.invoice_number == truth.number
            assert invoice.invoice_date == truth.invoice_date
            assert invoice.total_amount == truth.total
            assert sum((i.total for i in invoice.items), Decimal(0)) == truth.total
            assert [i.description for i in invoice.items] == [i.description for i in truth.items]
            assert invoice.status == InvoiceStatus(truth.status)
            assert invoice.patient.policy_number == truth.policy_number
            assert invoice.currency == "USD"

    # A second pass re-reads MediTrak's full list: its defects are seen again (attempts 2),
    # never duplicated. The import source re-reads only its lookback window.
    sync(config, store)
    assert {e.attempts for e in store.quarantine_entries("meditrak")} == {2}
    import_attempts = [e.attempts for e in store.quarantine_entries("meditrak_import")]
    assert set(import_attempts) <= {1, 2}
    assert import_attempts.count(1) > len(import_attempts) // 2
    for name in DIALECTS:
        served_count = len(server.dataset(name))
        assert store.count_invoices(name) + store.count_quarantined(name) == served_count


def test_a_source_with_wrong_credentials_fails_alone(tmp_path: Path) -> None:
    options = SandboxOptions(invoices=40, seed=5, dialects=DIALECTS)
    with SandboxServer(options) as server:
        sources = sources_for(server, DIALECTS, http=FAST_HTTP)
        sources[0]["api_key"] = "wrong-key"
        config = build_config(
            {"store": {"url": str(tmp_path / "s.db")}, "sources": sources}, env={}
        )
        seed_registry(server, config.store.sqlalchemy_url())
        with Store(config.store.sqlalchemy_url()) as store:
            results = sync(config, store)
            assert not results["meditrak"].ok
            assert "Invalid or expired API key" in str(results["meditrak"].error)
            assert "wrong-key" not in str(results["meditrak"].error)
            assert results["meditrak_import"].ok
            assert store.count_invoices("meditrak") == 0
            assert store.count_invoices("meditrak_import") > 0
            (failed,) = store.runs("meditrak")
            assert failed.status == "failed" and failed.error


def test_a_resume_point_is_used_only_with_the_page_size_it_counted(tmp_path: Path) -> None:
    name = "meditrak_import"
    options = SandboxOptions(invoices=60, seed=9, defect_rate=0.0, dialects=(name,))
    # An unfinished run that committed three pages of ten (their rows are left out here, so
    # what the next run fetches shows where it started).
    checkpoint = {"since": None, "position": {"index": 3, "pass": 1}, "page_size": 10}
    with SandboxServer(options) as server:

        def resumed_sync(page_size: int, path: Path) -> tuple[RunResult, int]:
            sources = sources_for(server, [name], page_size=page_size, http=FAST_HTTP)
            config = build_config({"store": {"url": str(path)}, "sources": sources}, env={})
            seed_registry(server, config.store.sqlalchemy_url())
            with Store(config.store.sqlalchemy_url()) as store:
                run = store.start_run(name, "sync", None)
                store.write_batch(run, name, [], [], fetched=0, resume=checkpoint)
                result = sync(config, store)[name]
                assert result.ok, result.error
                assert store.get_state(name).resume is None
                return result, store.count_invoices(name)

        same, stored = resumed_sync(10, tmp_path / "same.db")
        assert same.resumed
        assert same.counts.fetched == stored == 30
        # With pages of 25, "index 3" would start at record 75: 30 records never read.
        other, stored = resumed_sync(25, tmp_path / "other.db")
        assert not other.resumed
        assert other.counts.fetched == stored == 60


@pytest.mark.postgres
def test_postgresql_and_sqlite_stores_end_up_identical(tmp_path: Path, pg_url: str) -> None:
    options = SandboxOptions(
        invoices=60, seed=17, defect_rate=0.2, dialects=DIALECTS, defect_kinds=ALL_DEFECTS
    )
    snapshots = []
    with SandboxServer(options) as server:
        for url in (f"sqlite:///{tmp_path / 's.db'}", pg_url):
            sources = sources_for(server, DIALECTS, page_size=25, http=FAST_HTTP)
            config = build_config({"store": {"url": url}, "sources": sources}, env={})
            seed_registry(server, url)
            with Store(url) as store:
                assert all(r.ok for r in sync(config, store).values())
                again = sync(config, store)
                assert all((r.counts.inserted, r.counts.updated) == (0, 0) for r in again.values())
                snapshots.append(
                    {
                        name: (
                            store.content_hashes(name),
                            [i.to_import_record() for i in store.iter_invoices(name)],
                            [(e.record_key, e.attempts) for e in store.quarantine_entries(name)],
                        )
                        for name in DIALECTS
                    }
                )
    sqlite_snapshot, postgres_snapshot = snapshots
    assert postgres_snapshot == sqlite_snapshot
