"""End to end over the sandbox (loopback HTTP, SQLite file, the real CLI commands): a sync with
an empty registry quarantines everything on policy grounds; importing the sandbox's registry
and `connector reprocess` moves exactly the records that now pass; a second reprocess moves
nothing; stored + quarantined == served with no duplicates; unregistered policies stay
POLICY_UNKNOWN; a stored record quarantined later is never duplicated."""

from __future__ import annotations

import asyncio
import csv
import importlib.util
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from connector.cli.demo import sandbox_sources
from connector.cli.sandbox import sandbox_registry
from connector.config import AppConfig, load_config
from connector.issues import Reason
from connector.pipeline.wiring import build_engine
from connector.sandbox import EXPECTED_REASON, SandboxOptions, SandboxServer
from connector.store import Store
from tests.conftest import invoke_cli

ALL_KINDS = tuple(EXPECTED_REASON)
FAST_HTTP = {"max_retries": 2, "backoff_base": "10ms", "backoff_max": "50ms", "timeout": "10s"}
# Splose allows 60 requests a minute: too slow for a unit-test budget, so it is left out.
OPTIONAL_VENDORS = ("citabox", "bio_ecko", "invoice_api")


def vendors() -> list[str]:
    names = ["meditrak", "meditrak_import"]
    for name in OPTIONAL_VENDORS:
        if importlib.util.find_spec(f"adapters.{name}") and importlib.util.find_spec(
            f"connector.sandbox.{name}"
        ):
            names.append(name)
    return names


def write_config(server: SandboxServer, names: list[str], directory: Path) -> Path:
    sources = sandbox_sources(server, names)
    for source in sources:
        source["http"] = FAST_HTTP
    path = directory / "connector.yaml"
    document = {"store": {"url": str(directory / "store.db")}, "sources": sources}
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def cli(config: Path, *args: str) -> str:
    result = invoke_cli(config, *args)
    assert result.exit_code == 0, result.output
    return result.output


def served_keys(server: SandboxServer, name: str) -> set[str]:
    dialect = server.dialect(name)
    return {dialect.vendor_id(inv) for inv in dialect.dataset.invoices}


def defect_keys(server: SandboxServer, name: str, kind: str | None = None) -> set[str]:
    dialect = server.dialect(name)
    dataset = dialect.dataset
    return {
        dialect.vendor_id(inv)
        for inv_id, found in dataset.defects().items()
        if (kind is None or found == kind) and (inv := dataset.get(inv_id)) is not None
    }


def still_failing(server: SandboxServer, name: str) -> set[str]:
    """The seeded defects the connector must keep in quarantine once the registry is in (the
    sandbox renders `unknown_category` lines with a description no rule can place)."""
    return defect_keys(server, name)


def stored_ids(store: Store, name: str) -> list[str]:
    return [invoice.id for invoice in store.iter_invoices(name)]


def quarantined_keys(store: Store, name: str) -> list[str]:
    return [entry.record_key for entry in store.quarantine_entries(name)]


def moved(output: str) -> int:
    found = re.search(r"moved (\d+) record\(s\)", output)
    assert found, output
    return int(found.group(1))


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    names = vendors()
    options = SandboxOptions(
        invoices=60,
        seed=11,
        defect_rate=0.25,
        dialects=tuple(names),
        # Every kind each dialect can render, the unregistered policy included.
        defect_kinds=dict.fromkeys(names, ALL_KINDS),
    )
    with SandboxServer(options) as running:
        yield running


def test_registry_import_then_reprocess_moves_exactly_what_now_passes(
    server: SandboxServer, tmp_path: Path
) -> None:
    names = list(server.dialect_names)
    config_path = write_config(server, names, tmp_path)
    config: AppConfig = load_config(config_path)

    # 1. Empty registry: nothing passes the policy check.
    with Store(config.store.sqlalchemy_url()) as store:
        results = asyncio.run(build_engine(config, store).sync())
        assert all(r.ok for r in results), [r.error for r in results]
        for name in names:
            assert store.count_invoices(name) == 0
            assert sorted(quarantined_keys(store, name)) == sorted(served_keys(server, name))
            for entry in store.quarantine_entries(name):
                if entry.canonical is None:
                    continue  # never reached validation (malformed payload): its defect says why
                codes = {i.code for i in entry.issues}
                assert codes & {Reason.POLICY_UNKNOWN, Reason.POLICY_MISSING}, entry
        cursors = {name: store.get_state(name).cursor for name in names}

    # 2. Import the registry as an operator would: the sandbox's CSV, through the CLI. Sources
    #    that send no policy number get a patient link file.
    for name in names:
        answer = httpx.get(server.base_url(name) + "/_sandbox/registry.csv", timeout=10)
        answer.raise_for_status()
        registry = tmp_path / f"registry-{name}.csv"
        registry.write_text(answer.text, encoding="utf-8")
        assert "imported" in cli(config_path, "policies", "import", str(registry))
    _policies, links = sandbox_registry(server)
    link_file = tmp_path / "links.csv"
    with link_file.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["source", "patient_ref", "policy_number"])
        writer.writerows((link.source, link.patient_ref, link.policy_number) for link in links)
    cli(config_path, "policies", "link", str(link_file))

    # 3. Reprocess: exactly the records that now pass move (all but the seeded defects).
    first = cli(config_path, "reprocess")
    expected_moves = sum(len(served_keys(server, n)) - len(still_failing(server, n)) for n in names)
    assert moved(first) == expected_moves
    assert "POLICY_UNKNOWN:" in first

    with Store(config.store.sqlalchemy_url()) as store:
        for name in names:
            served = served_keys(server, name)
            stored = stored_ids(store, name)
            quarantined = quarantined_keys(store, name)
            assert sorted(quarantined) == sorted(still_failing(server, name)), name
            assert sorted(stored) == sorted(served - still_failing(server, name)), name
            # stored + quarantined == served, nothing twice.
            assert len(stored) == len(set(stored))
            assert not set(stored) & set(quarantined)
            assert len(stored) + len(quarantined) == len(served)
            # Each remaining record is quarantined for its own defect now.
            for entry in store.quarantine_entries(name):
                assert entry.attempts == 2
            # Reprocess never touches the sync cursor; its runs say what they were.
            assert store.get_state(name).cursor == cursors[name]
            assert store.runs(name, limit=1)[0].kind == "reprocess"
        # The unregistered policies are still unknown to the registry.
        for name in ("meditrak", "meditrak_import"):
            unregistered = defect_keys(server, name, "unregistered_policy")
            assert unregistered, f"seed gave {name} no unregistered_policy defect"
            for entry in store.quarantine_entries(name, Reason.POLICY_UNKNOWN.value):
                unregistered.discard(entry.record_key)
            assert not unregistered

    # 4. Nothing changed since: a second reprocess moves nothing and counts the attempt.
    second = cli(config_path, "reprocess")
    assert moved(second) == 0
    with Store(config.store.sqlalchemy_url()) as store:
        assert all(e.attempts == 3 for e in store.quarantine_entries())
        total_stored = store.count_invoices()
    assert total_stored == expected_moves

    # 5. A reason filter only looks at records carrying that code.
    third = cli(config_path, "reprocess", "--reason", "POLICY_UNKNOWN")
    assert moved(third) == 0


def test_quarantine_views_after_a_sync(server: SandboxServer, tmp_path: Path) -> None:
    config_path = write_config(server, ["meditrak_import"], tmp_path)
    cli(config_path, "sync")
    listing = cli(config_path, "quarantine", "list", "--format", "json")
    entries: list[dict[str, Any]] = yaml.safe_load(io.StringIO(listing))
    assert len(entries) == len(served_keys(server, "meditrak_import"))
    assert all("POLICY_UNKNOWN" in e["reasons"] or e["reasons"] for e in entries)
    only_unknown = cli(
        config_path, "quarantine", "list", "--reason", "POLICY_UNKNOWN", "--format", "json"
    )
    assert all("POLICY_UNKNOWN" in e["reasons"] for e in yaml.safe_load(only_unknown))
    first_id = str(entries[0]["id"])
    shown = cli(config_path, "quarantine", "show", first_id)
    dataset = server.dataset("meditrak_import")
    names = {inv.patient_name for inv in dataset.invoices}
    policies = {inv.policy_number for inv in dataset.invoices}
    assert not any(name in shown for name in names)
    assert not any(number in shown for number in policies)
    assert "patient data masked" in shown
    revealed = cli(config_path, "quarantine", "show", first_id, "--reveal")
    assert any(name in revealed for name in names)
    assert any(number in revealed for number in policies)


def test_a_stored_record_quarantined_later_is_never_duplicated(tmp_path: Path) -> None:
    options = SandboxOptions(invoices=20, seed=5, defect_rate=0.0, dialects=("meditrak_import",))
    with SandboxServer(options) as server:
        config_path = write_config(server, ["meditrak_import"], tmp_path)
        rows = server.dataset("meditrak_import").registry_rows()
        registry = tmp_path / "registry.csv"

        def write_registry(status_of_first: str) -> None:
            with registry.open("w", encoding="utf-8", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows([{**rows[0], "status": status_of_first}, *rows[1:]])
            cli(config_path, "policies", "import", str(registry))

        write_registry("active")
        cli(config_path, "sync")
        config = load_config(config_path)
        with Store(config.store.sqlalchemy_url()) as store:
            assert store.count_invoices() == 20
            assert store.count_quarantined() == 0

        # The first policy is suspended; a full sync re-reads everything and quarantines the
        # invoices on it, while their stored copies stay.
        write_registry("suspended")
        cli(config_path, "sync", "--full")
        with Store(config.store.sqlalchemy_url()) as store:
            affected = store.quarantine_entries(reason=Reason.POLICY_INACTIVE.value)
            assert affected
            assert store.count_invoices() == 20

        # Reactivated: reprocess moves them back, upserting in place.
        write_registry("active")
        output = cli(config_path, "reprocess")
        assert moved(output) == len(affected)
        assert f"POLICY_INACTIVE: {len(affected)} moved" in output
        with Store(config.store.sqlalchemy_url()) as store:
            ids = stored_ids(store, "meditrak_import")
            assert len(ids) == len(set(ids)) == 20
            assert store.count_quarantined() == 0
