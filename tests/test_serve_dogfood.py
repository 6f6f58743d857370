"""Dogfood: the connector's own `meditrak_import` source reads `connector serve` with its
default settings. `connector validate` against the server says ready (exit 0), and a round
trip (vendor sandboxes → sync → serve → a second connector syncs from serve) ends with the
same invoices, to the cent."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connector.config import build_config
from connector.sandbox import SandboxOptions, SandboxServer
from connector.settings import AppConfig
from connector.store import Store
from connector.store.store import sqlite_url_for
from tests.conftest import (
    FAST_HTTP,
    invoke_cli,
    seed_registry,
    sources_for,
    sync_wired,
    write_config,
)
from tests.test_serve_kit import ALL_KEY, Served, consumers, serving

DIALECTS = ("meditrak", "splose", "citabox")


@pytest.fixture
def synced(store_url: str) -> Iterator[tuple[SandboxServer, AppConfig, Served]]:
    """Three vendor sandboxes synced into the store at `store_url`, which is being served."""
    options = SandboxOptions(invoices=60, seed=11, defect_rate=0.1, dialects=DIALECTS)
    with SandboxServer(options) as server:
        raw = {
            "store": {"url": store_url},
            "serve": {"port": 0, "consumers": consumers()},
            "sources": sources_for(server, DIALECTS, http=FAST_HTTP),
        }
        config = build_config(raw, env={})
        seed_registry(server, store_url)
        with Store(store_url) as store:
            results = sync_wired(config, store)
        assert all(r.ok for r in results.values()), results
        with serving(config) as served:
            yield server, config, served


def importer_source(served: Served, **extra: Any) -> dict[str, Any]:
    """A `meditrak_import` source aimed at the server, with nothing but URL and key."""
    return {
        "type": "meditrak_import",
        "name": "upstream",
        "base_url": f"{served.url}/api/v1/",
        "api_key": ALL_KEY,
        "http": FAST_HTTP,
        **extra,
    }


def test_validate_against_serve_says_ready(
    synced: tuple[SandboxServer, AppConfig, Served], tmp_path: Path
) -> None:
    server, _config, served = synced
    # The policy registry MediTrak checks against: the same as the first connector's.
    second_store = sqlite_url_for(tmp_path / "second.db")
    seed_registry(server, second_store)
    config = write_config(
        tmp_path / "second.yaml",
        {"store": {"url": second_store}, "sources": [importer_source(served)]},
    )
    result = invoke_cli(config, "validate", "-s", "upstream", "--all")
    assert result.exit_code == 0, result.output
    assert "ready" in result.output.lower()
    assert "not ready" not in result.output.lower()


def _canonical(store: Store, *, served_ids: bool) -> dict[str, tuple[Any, ...]]:
    """Every stored invoice's content by its served id: the copy's ids already are served
    ids ("<source>:<id>" of the first connector), the original's are made so."""
    found: dict[str, tuple[Any, ...]] = {}
    for inv in store.iter_invoices(include_void=False):
        key = inv.id if served_ids else f"{inv.source}:{inv.id}"
        found[key] = (
            inv.invoice_number,
            inv.invoice_date,
            inv.total_amount,
            inv.currency,
            inv.status,
            inv.facility,
            inv.patient.name,
            inv.patient.policy_number,
            tuple(
                (i.category, i.description, i.quantity, i.unit_price, i.total) for i in inv.items
            ),
        )
    return found


def test_round_trip_through_serve_keeps_every_invoice_to_the_cent(
    synced: tuple[SandboxServer, AppConfig, Served], store_url: str, tmp_path: Path
) -> None:
    server, _config, served = synced
    second_url = sqlite_url_for(tmp_path / "second.db")
    seed_registry(server, second_url)
    second = build_config(
        {"store": {"url": second_url}, "sources": [importer_source(served, page_size=17)]},
        env={},
    )
    with Store(second_url) as store:
        result = sync_wired(second, store)["upstream"]
        assert result.ok, result.error
        assert result.counts.quarantined == 0
        copied = _canonical(store, served_ids=True)
        # A second sync from the server's updated_at cursor writes nothing new.
        again = sync_wired(second, store)["upstream"]
        assert again.ok and again.counts.inserted == again.counts.updated == 0
    with Store(store_url) as store:
        quarantined = {(q.source, q.record_key) for q in store.quarantine_entries()}
        original = {
            key: value
            for key, value in _canonical(store, served_ids=False).items()
            if tuple(key.split(":", 1)) not in quarantined
        }
    assert len(original) > 100
    assert copied == original
