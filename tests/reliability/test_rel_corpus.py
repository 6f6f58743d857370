"""The hostile-input corpus (tests/reliability/corpus.py) served by a small aiohttp server
speaking the MediTrak import contract, synced through the CLI's wiring: every record kind ends
stored or quarantined with its expected reason code, every page kind fails its source with a
clear error; nothing crashes, nothing is dropped silently."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from connector.config import build_config
from connector.policies import PolicyRecord
from connector.store import Store
from connector.store.policies import import_policies
from connector.store.store import sqlite_url_for
from tests.local_server import serve_app
from tests.reliability.corpus import PAGE_KINDS, POLICY, RECORD_KINDS, records_served
from tests.reliability.rel_helpers import sync_all

TOKEN = "corpus-token"
HTTP = {"max_retries": 1, "backoff_base": "10ms", "backoff_max": "20ms", "timeout": "5s"}


def corpus_app() -> web.Application:
    records = records_served()
    # Encoded once with the standard library: orjson refuses integers beyond 64 bits.
    import json

    list_body = json.dumps({"data": records, "total": len(records), "page": 1}).encode()
    pages = {kind.name: kind for kind in PAGE_KINDS}

    def authorized(request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {TOKEN}"

    async def records_list(request: web.Request) -> web.Response:
        if not authorized(request):
            return web.json_response({"detail": "Not authenticated"}, status=401)
        return web.Response(body=list_body, content_type="application/json")

    async def page_list(request: web.Request) -> web.Response:
        if not authorized(request):
            return web.json_response({"detail": "Not authenticated"}, status=401)
        kind = pages[request.match_info["kind"]]
        content_type = kind.content_type.partition(";")[0]
        return web.Response(body=kind.body, status=kind.status, content_type=content_type)

    app = web.Application()
    app.router.add_get("/records/api/invoices", records_list)
    app.router.add_get("/pages/{kind}/api/invoices", page_list)
    return app


@pytest.fixture(scope="module")
def corpus_url() -> Iterator[str]:
    with serve_app(corpus_app()) as url:
        yield url


def source(name: str, url: str) -> dict[str, Any]:
    return {
        "type": "meditrak_import",
        "name": name,
        "base_url": url,
        "api_key": TOKEN,
        "page_size": 500,
        "http": HTTP,
    }


def test_every_corpus_kind_is_quarantined_stored_or_a_clear_page_error(
    corpus_url: str, tmp_path: Path
) -> None:
    sources = [source("records", f"{corpus_url}/records/api/")]
    sources += [
        source(f"page-{k.name.replace('_', '-')}", f"{corpus_url}/pages/{k.name}/api/")
        for k in PAGE_KINDS
    ]
    url = sqlite_url_for(tmp_path / "store.db")
    config = build_config({"store": {"url": url}, "sources": sources}, env={})
    with Store(url) as store:
        import_policies(
            store, [PolicyRecord(POLICY, "John Doe", "active", date(2020, 1, 1), date(2030, 1, 1))]
        )
        results = sync_all(config, store)

        assert results["records"].ok, results["records"].error
        stored = store.content_hashes("records")
        entries = store.quarantine_entries("records")
        by_key = {e.record_key: e for e in entries}
        served = len(RECORD_KINDS)
        # Never a silent drop: every row served was counted, and kept or quarantined.
        assert results["records"].counts.fetched == served
        outcomes: dict[str, str] = {}
        wrong: list[str] = []
        for kind in RECORD_KINDS:
            record = kind.record
            if kind.expected is None:
                assert isinstance(record, dict)
                if record["id"] not in stored or record["id"] in by_key:
                    held = by_key.get(record["id"])
                    held_codes = sorted({i.code.value for i in held.issues}) if held else "nothing"
                    wrong.append(f"{kind.name}: expected stored, got {held_codes}")
                outcomes[kind.name] = "stored"
                continue
            key = kind.key if kind.key is not None else record["id"]
            if key == "":
                # Records without a usable id are filed under a hash of their payload.
                matches = [e for e in entries if e.raw_payload == _json_roundtrip(record)]
                assert len(matches) == 1, f"{kind.name}: {len(matches)} quarantine entries"
                entry = matches[0]
            else:
                assert key in by_key, f"{kind.name}: not quarantined (stored: {key in stored})"
                entry = by_key[key]
            codes = {i.code.value for i in entry.issues if i.severity == "error"}
            outcomes[kind.name] = "/".join(sorted(codes))
            if kind.expected not in codes:
                wrong.append(f"{kind.name}: expected {kind.expected}, got {sorted(codes)}")
        assert wrong == [], "\n".join(wrong)
        # The duplicate id is stored once, as first served; the other version waits for review.
        (duplicate,) = [i for i in store.iter_invoices("records") if i.id == "R39"]
        assert duplicate.facility == "CFB Medical Hospital"

        for page_kind in PAGE_KINDS:
            name = f"page-{page_kind.name.replace('_', '-')}"
            result = results[name]
            assert not result.ok, f"{page_kind.name}: a broken page was accepted"
            assert page_kind.error in str(result.error), f"{page_kind.name}: {result.error}"
            assert "internal error" not in str(result.error)
            assert store.count_invoices(name) == 0
            outcomes[page_kind.name] = f"source failed: {result.error}"
    print("\n" + "\n".join(f"{name}: {outcome[:150]}" for name, outcome in outcomes.items()))
    assert len(RECORD_KINDS) + len(PAGE_KINDS) >= 30


def _json_roundtrip(value: Any) -> Any:
    try:
        return orjson.loads(orjson.dumps(value))
    except TypeError:
        return value
