"""CitaBox clinic groups end to end: one source reading several clinics of a login (`clinic_id`
a list or `all`) over loopback HTTP to the sandbox, through the engine the CLI builds, into a
real store (SQLite, and PostgreSQL where the store matters).

Shown here: every clinic is synced exactly, keyed "<clinic>:<id>" with its clinic's name as the
facility; a list reads only its clinics; a missing `clinic_id` with several memberships stops
that source alone, naming the clinics; a run cut off mid-clinic (process killed, or stopped
between batches) resumes in the right clinic at the right element and stores nothing twice; a
change in any clinic is picked up, whatever the other clinics' timestamps.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.citabox import Config as CitaBoxConfig
from connector.cli.demo import sandbox_config, sandbox_sources
from connector.config import build_config
from connector.pipeline.engine import EXIT_AFTER_BATCHES_ENV, Engine, RunResult
from connector.pipeline.wiring import build_engine
from connector.sandbox import EXPECTED_REASON, SandboxOptions, SandboxServer
from connector.sandbox.citabox import (
    INVOICE_CLINICS_ENV,
    CitaBoxDialect,
    invoice_clinics_from_env,
)
from connector.settings import AppConfig
from connector.store import BatchCounts, Store
from connector.store.store import sqlite_url_for
from tests.conftest import FAST_HTTP, run_connector, seed_registry, write_config

SOURCE = "citabox"
INVOICES = 240
INVOICE_CLINICS = 3
PAGE_SIZE = 20


@pytest.fixture
def server() -> Iterator[SandboxServer]:
    options = SandboxOptions(
        invoices=INVOICES, seed=17, defect_rate=0.1, dialects=(SOURCE,), retry_after_s=0
    )
    with SandboxServer(options) as running:
        dialect(running).invoice_clinics = INVOICE_CLINICS
        yield running


def dialect(server: SandboxServer) -> CitaBoxDialect:
    found = server.dialect(SOURCE)
    assert isinstance(found, CitaBoxDialect)
    return found


def config_for(server: SandboxServer, url: str, **overrides: Any) -> AppConfig:
    fields = {"page_size": PAGE_SIZE, "http": dict(FAST_HTTP), **overrides}
    return sandbox_config(server, url, names=[SOURCE], citabox=fields)


def sync(config: AppConfig, store: Store, engine: Engine | None = None) -> list[RunResult]:
    return list(asyncio.run((engine or build_engine(config, store)).sync()))


def sync_ok(config: AppConfig, store: Store) -> RunResult:
    (result,) = sync(config, store)
    assert result.ok, result.error
    return result


def truth_keys(server: SandboxServer) -> dict[str, str]:
    """Stored key → clinic id of every invoice the sandbox serves."""
    cb = dialect(server)
    return {cb.stored_key(inv): cb.clinic_of(inv) for inv in server.dataset(SOURCE).invoices}


def defect_keys(server: SandboxServer) -> dict[str, str]:
    cb = dialect(server)
    return {cb.stored_key(inv): inv.defect for inv in server.dataset(SOURCE).invoices if inv.defect}


def assert_store_matches_truth(server: SandboxServer, store: Store) -> dict[str, int]:
    """Every served invoice stored to the cent or quarantined with its defect's reason, under
    its clinic's key, and nothing else; returns the stored count per clinic name."""
    cb = dialect(server)
    truth = {cb.stored_key(inv): inv for inv in server.dataset(SOURCE).invoices}
    defects = defect_keys(server)
    names = {c["clinic_id"]: c["clinic_name"] for c in cb.memberships}
    stored = {inv.id: inv for inv in store.iter_invoices(SOURCE)}
    quarantined = {e.record_key: e for e in store.quarantine_entries(SOURCE)}
    assert set(quarantined) == set(defects), "exactly the seeded defects are quarantined"
    for key, kind in defects.items():
        assert EXPECTED_REASON[kind] in {i.code.value for i in quarantined[key].issues}
    assert set(stored) == set(truth) - set(defects), "every clean invoice is stored, once"
    for key, invoice in stored.items():
        expected = truth[key]
        clinic = cb.clinic_of(expected)
        assert key == f"{clinic}:{cb.vendor_id(expected)}"
        assert invoice.total_amount == expected.total
        assert invoice.items[0].total == expected.total
        assert invoice.facility == names[clinic]
        assert invoice.invoice_date == expected.invoice_date
    return dict(Counter(inv.facility or "" for inv in stored.values()))


# -- every clinic, exactly --------------------------------------------------------------------


def test_all_syncs_every_clinic_exactly_and_a_second_sync_writes_nothing(
    server: SandboxServer, store_url: str
) -> None:
    seed_registry(server, store_url)
    config = config_for(server, store_url)
    source = config.sources[0]
    assert isinstance(source, CitaBoxConfig) and source.clinic_id == "all"  # the sandbox's own
    per_clinic = Counter(truth_keys(server).values())
    assert len(per_clinic) == INVOICE_CLINICS and min(per_clinic.values()) > PAGE_SIZE
    with Store(store_url) as store:
        first = sync_ok(config, store)
        stored = assert_store_matches_truth(server, store)
        assert first.counts.fetched == INVOICES
        assert first.counts.inserted == sum(stored.values())
        assert len(stored) == INVOICE_CLINICS
        # Login, then one array per membership (the clinic without invoices included).
        assert first.requests == 1 + INVOICE_CLINICS + 1

        second = sync_ok(config, store)
        assert (second.counts.inserted, second.counts.updated) == (0, 0)
        # Incremental per clinic: only what is within the lookback of each clinic's cursor.
        assert second.counts.fetched < INVOICES // 4
        (full,) = asyncio.run(build_engine(config, store).sync(full=True))
        assert (full.counts.inserted, full.counts.updated) == (0, 0)
        assert full.counts.unchanged == sum(stored.values())
        assert full.counts.quarantined == len(defect_keys(server))
        assert store.get_state(SOURCE).resume is None


def test_a_list_reads_only_its_clinics_in_its_order(server: SandboxServer, tmp_path: Path) -> None:
    url = sqlite_url_for(tmp_path / "store.db")
    seed_registry(server, url)
    roster = dialect(server).memberships
    wanted = [roster[2]["clinic_id"], roster[0]["clinic_id"]]
    config = config_for(server, url, clinic_id=wanted)
    with Store(url) as store:
        result = sync_ok(config, store)
        keys = {inv.id for inv in store.iter_invoices(SOURCE)}
        keys |= {e.record_key for e in store.quarantine_entries(SOURCE)}
    expected = {key for key, clinic in truth_keys(server).items() if clinic in wanted}
    assert keys == expected
    assert result.counts.fetched == len(expected)
    assert result.requests == 1 + len(wanted)


def test_a_single_clinic_keeps_the_plain_vendor_keys(server: SandboxServer, tmp_path: Path) -> None:
    """A source naming one clinic stores what it stored before clinic groups: plain ids."""
    url = sqlite_url_for(tmp_path / "store.db")
    seed_registry(server, url)
    cb = dialect(server)
    first = cb.memberships[0]["clinic_id"]
    config = config_for(server, url, clinic_id=first)
    with Store(url) as store:
        sync_ok(config, store)
        keys = {inv.id for inv in store.iter_invoices(SOURCE)}
        keys |= {e.record_key for e in store.quarantine_entries(SOURCE)}
    served = {cb.vendor_id(i) for i in server.dataset(SOURCE).invoices if cb.clinic_of(i) == first}
    assert keys == served


# -- no silent first choice -------------------------------------------------------------------


def test_no_clinic_id_with_several_memberships_stops_that_source_only(
    server: SandboxServer, tmp_path: Path
) -> None:
    url = sqlite_url_for(tmp_path / "store.db")
    seed_registry(server, url)
    (group,) = sandbox_sources(server, [SOURCE])
    unset = {**group, "name": "citabox-unset", "clinic_id": None}
    raw = {"store": {"url": url}, "sources": [unset, {**group, "page_size": PAGE_SIZE}]}
    config = build_config(raw, env={})
    before = server.stats(SOURCE)["requests"]
    with Store(url) as store:
        results = {r.source: r for r in sync(config, store)}
        assert results[SOURCE].ok, results[SOURCE].error
        assert store.count_invoices(SOURCE) > 0
        assert store.count_invoices("citabox-unset") == 0
        assert store.count_quarantined("citabox-unset") == 0
        assert store.get_state("citabox-unset").cursor is None
    failed = results["citabox-unset"]
    assert not failed.ok and failed.error is not None
    for clinic in dialect(server).memberships:
        assert clinic["clinic_id"] in failed.error and clinic["clinic_name"] in failed.error
    assert "clinic_id" in failed.error and "'all'" in failed.error and "list" in failed.error
    assert dialect(server).token not in failed.error
    # The stopped source logged in and asked for no invoices: the group's 1 + 4 requests and
    # its one login.
    assert server.stats(SOURCE)["requests"] - before == 1 + (1 + INVOICE_CLINICS + 1)


# -- cut off mid-way, resumed -----------------------------------------------------------------


def test_a_process_killed_mid_clinic_resumes_there_and_stores_nothing_twice(
    server: SandboxServer, tmp_path: Path
) -> None:
    store_path = tmp_path / "store.db"
    url = sqlite_url_for(store_path)
    seed_registry(server, url)
    (source,) = sandbox_sources(server, [SOURCE])
    source.update(page_size=PAGE_SIZE, http=dict(FAST_HTTP))
    config_path = write_config(
        tmp_path / "connector.yaml", {"store": {"url": url}, "sources": [source]}
    )
    cb = dialect(server)
    roster = [c["clinic_id"] for c in cb.memberships]
    per_clinic = Counter(truth_keys(server).values())
    # Batches of the first clinic, then a few into the second: killed in the middle of it.
    first_batches = -(-per_clinic[roster[0]] // PAGE_SIZE)
    cut_after = first_batches + 2
    crashed = run_connector(
        "--config", str(config_path), "sync", env={EXIT_AFTER_BATCHES_ENV: str(cut_after)}
    )
    assert crashed.returncode != 0
    with Store(url) as store:
        cut = store.get_state(SOURCE)
        assert cut.resume is not None, "the killed run left no checkpoint"
        position = cut.resume["position"]
        assert (position["clinics_done"], position["clinic"], position["skip"]) == (
            [roster[0]],
            roster[1],
            2 * PAGE_SIZE,
        ), position
        assert set(position["latest"]) == {roster[0], roster[1]}
        kept_at_cut = {inv.id for inv in store.iter_invoices(SOURCE)}
        assert {key.partition(":")[0] for key in kept_at_cut} == {roster[0], roster[1]}

    resumed = run_connector("--config", str(config_path), "sync")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    with Store(url) as store:
        runs = store.runs(SOURCE)
        assert [r.status for r in runs] == ["ok", "interrupted"]
        assert runs[0].counts["updated"] == 0
        assert runs[0].counts["unchanged"] == 0, "the resumed run read a stored batch again"
        assert runs[0].counts["inserted"] + len(kept_at_cut) == store.count_invoices(SOURCE)
        # The rest of the second clinic, then the third and the empty fourth.
        assert runs[0].counts["fetched"] == INVOICES - per_clinic[roster[0]] - 2 * PAGE_SIZE
        assert_store_matches_truth(server, store)
        assert store.get_state(SOURCE).resume is None


class StopAfter:
    """A store that asks the engine to stop once `batches` batches were written: what a
    daemon shutdown or Ctrl-C does between two batches."""

    def __init__(self, store: Store, batches: int) -> None:
        self._store = store
        self._left = batches
        self.engine_to_stop: Engine | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def write_batch(self, *args: Any, **kwargs: Any) -> BatchCounts:
        counts = self._store.write_batch(*args, **kwargs)
        self._left -= 1
        if self._left == 0 and self.engine_to_stop is not None:
            self.engine_to_stop.request_stop()
        return counts


def test_a_run_stopped_between_batches_resumes_in_the_right_clinic(
    server: SandboxServer, store_url: str
) -> None:
    seed_registry(server, store_url)
    config = config_for(server, store_url)
    roster = [c["clinic_id"] for c in dialect(server).memberships]
    per_clinic = Counter(truth_keys(server).values())
    # Into the third clinic: its first page written, then the stop.
    cut = -(-per_clinic[roster[0]] // PAGE_SIZE) + -(-per_clinic[roster[1]] // PAGE_SIZE) + 1
    with Store(store_url) as store:
        stopping = StopAfter(store, cut)
        engine = build_engine(config, stopping)  # type: ignore[arg-type]
        stopping.engine_to_stop = engine
        (stopped,) = sync(config, store, engine)
        assert stopped.interrupted and not stopped.ok
        position = store.get_state(SOURCE).resume["position"]  # type: ignore[index]
        assert position["clinics_done"] == roster[:2] and position["clinic"] == roster[2]
        assert position["skip"] > 0

        resumed = sync_ok(config, store)
        assert resumed.resumed
        assert (resumed.counts.updated, resumed.counts.unchanged) == (0, 0)
        total = stopped.counts.inserted + resumed.counts.inserted
        assert total == store.count_invoices(SOURCE)
        assert stopped.counts.fetched + resumed.counts.fetched == INVOICES
        assert_store_matches_truth(server, store)


# -- changes in any clinic ---------------------------------------------------------------------


def test_a_change_in_a_clinic_is_picked_up_whatever_the_other_clinics_timestamps(
    server: SandboxServer, store_url: str
) -> None:
    seed_registry(server, store_url)
    config = config_for(server, store_url)
    cb = dialect(server)
    dataset = server.dataset(SOURCE)
    roster = [c["clinic_id"] for c in cb.memberships]
    with Store(store_url) as store:
        sync_ok(config, store)
        before = {inv.id: inv for inv in store.iter_invoices(SOURCE)}

        # A change in the clinic whose latest change is oldest, stamped after that one but
        # well before the latest change of another clinic (a late write, or clocks apart): a
        # cursor shared by the clinics would pass over it, the clinic's own would not.
        clean = [inv for inv in dataset.invoices if inv.defect is None]
        latest = {
            clinic: max(inv.updated_at for inv in clean if cb.clinic_of(inv) == clinic)
            for clinic in roster[:INVOICE_CLINICS]
        }
        oldest, newest = min(latest, key=latest.__getitem__), max(latest, key=latest.__getitem__)
        gap = latest[newest] - latest[oldest]
        assert gap > 4 * config.sources[0].lookback, "the seed must spread the clinics apart"
        target = next(inv for inv in clean if cb.clinic_of(inv) == oldest)
        dataset.mutate(target.id)
        with dataset.lock:
            target.updated_at = latest[oldest] + gap / 2
            dataset.version += 1
        # And an ordinary one in another clinic.
        other = next(inv for inv in clean if cb.clinic_of(inv) != oldest)
        dataset.mutate(other.id)

        result = sync_ok(config, store)
        assert (result.counts.inserted, result.counts.updated) == (0, 2)
        # Each clinic filtered on its own cursor: the two changes and the few records
        # within the lookback of their clinic's latest change, not every invoice.
        assert result.counts.fetched < INVOICES // 4, result.counts.fetched
        cursors = store.get_state(SOURCE).carry["clinic_cursors"]  # type: ignore[index]
        assert set(cursors) == set(roster[:INVOICE_CLINICS])
        after = {inv.id: inv for inv in store.iter_invoices(SOURCE)}
        changed = {key for key in after if after[key] != before[key]}
        assert changed == {cb.stored_key(target), cb.stored_key(other)}
        assert after[cb.stored_key(target)].total_amount == target.total
        assert after[cb.stored_key(other)].total_amount == other.total
        assert before[cb.stored_key(target)].total_amount != target.total
        assert_store_matches_truth(server, store)


# -- the sandbox's clinic groups ----------------------------------------------------------------


def test_the_sandbox_spreads_invoices_over_clinics_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`CONNECTOR_SANDBOX_CITABOX_CLINICS=n` (what `connector sandbox` is started with): each
    invoice is served by exactly one of n clinics, over HTTP, and the written config reads
    `all` of them."""
    monkeypatch.setenv(INVOICE_CLINICS_ENV, "3")
    options = SandboxOptions(invoices=60, seed=2, dialects=(SOURCE,))
    with SandboxServer(options) as running, httpx.Client(base_url=running.api_url(SOURCE)) as http:
        cb = dialect(running)
        assert cb.invoice_clinics == 3
        (source,) = sandbox_sources(running, [SOURCE])
        assert source["clinic_id"] == "all" and "facility" not in source
        login = http.post("auth/login", json=cb.credentials()).json()
        memberships = login["memberships"]
        assert [m["clinic_id"] for m in memberships] == [c["clinic_id"] for c in cb.memberships]
        assert len(memberships) == 4 and len({m["clinic_name"] for m in memberships}) == 4
        bearer = {"Authorization": f"Bearer {login['access_token']}"}
        served: Counter[str] = Counter()
        for membership in memberships:
            clinic = membership["clinic_id"]
            answer = http.get("billing/invoices", headers={**bearer, "x-clinic-id": clinic})
            assert answer.status_code == 200
            records = answer.json()
            assert all(r["clinic_id"] == clinic for r in records)
            served.update(r["id"] for r in records)
        assert set(served) == {cb.vendor_id(inv) for inv in running.dataset(SOURCE).invoices}
        assert set(served.values()) == {1}, "an invoice served by two clinics"
        assert (
            http.get(
                "billing/invoices", headers={**bearer, "x-clinic-id": memberships[-1]["clinic_id"]}
            ).json()
            == []
        ), "the last membership has no invoices"


def test_the_default_sandbox_keeps_one_clinic_with_invoices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(INVOICE_CLINICS_ENV, raising=False)
    with SandboxServer(SandboxOptions(invoices=10, dialects=(SOURCE,))) as running:
        cb = dialect(running)
        (source,) = sandbox_sources(running, [SOURCE])
        first = cb.memberships[0]
        assert (source["clinic_id"], source["facility"]) == (
            first["clinic_id"],
            first["clinic_name"],
        )
        assert len(cb.memberships) == 2
        assert {cb.stored_key(inv) for inv in running.dataset(SOURCE).invoices} == {
            cb.vendor_id(inv) for inv in running.dataset(SOURCE).invoices
        }


@pytest.mark.parametrize("value", ["0", "many", "51"])
def test_a_bad_clinic_count_in_the_environment_is_refused(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(INVOICE_CLINICS_ENV, value)
    with pytest.raises(ValueError, match=INVOICE_CLINICS_ENV):
        invoice_clinics_from_env()
