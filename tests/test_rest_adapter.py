"""The `rest` source against vendors of its own on loopback (aiohttp apps), for what the two
sandbox equivalences do not reach: OAuth2 client credentials and header keys, next links and
one plain array, a detail call per record with an id that must be percent-encoded, an id at
another path than `id`, money in minor units, strftime dates in a local time zone, tax folding,
constant facility, category rules over the description, the updated-since parameter in epoch
seconds and the client-side change filter."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from connector.config import AppConfig, build_config
from connector.model import Category, InvoiceStatus
from connector.pipeline.engine import RunResult
from connector.pipeline.wiring import build_engine
from connector.policies import ACTIVE, PatientLink, PolicyRecord
from connector.store import Store
from connector.store.policies import import_links, import_policies
from connector.store.store import sqlite_url_for
from tests.conftest import FAST_HTTP
from tests.local_server import serve_app

SECRET = "s3cret-client-value"
KEY = "header-key-value"


def bill(ref: str, state: str, changed: str, *, cents: int = 10000) -> dict[str, Any]:
    return {
        "ref": ref,
        "number": f"N-{ref}",
        "issued": "03/02/2025 21:30",
        "amount_cents": cents + cents // 10,
        "state": state,
        "client": {"first": "Ana", "last": "Mora", "policy": "POL-100", "id": "c-1"},
        "lines": [
            {
                "text": "General consultation",
                "qty": 1,
                "price_cents": cents,
                "tax_cents": cents // 10,
            }
        ],
        "changed": changed,
    }


BILLS = {
    "A/1": bill("A/1", "settled", "2025-02-03T21:30:00"),
    "A/2": bill("A/2", "mystery", "2025-02-04T10:00:00"),
    "A/3": bill("A/3", "open", "2025-02-05T10:00:00", cents=2550),
}


class Vendor:
    """Client credentials, a next-linked list of summaries, one detail call per bill."""

    def __init__(self) -> None:
        self.tokens = 0
        self.detail_paths: list[str] = []
        self.list_queries: list[dict[str, str]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/oauth/token", self.token)
        app.router.add_get("/v2/bills", self.listing)
        app.router.add_get("/v2/bills/{ref}", self.detail)
        return app

    async def token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("client_secret") != SECRET or form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "invalid_client"}, status=401)
        self.tokens += 1
        return web.json_response({"access_token": "tok", "expires_in": 3600})

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == "Bearer tok"

    async def listing(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({}, status=401)
        self.list_queries.append(dict(request.query))
        # A/9 is listed but deleted before its detail call.
        refs = sorted([*BILLS, "A/9"])
        page = int(request.query.get("cursor", "0"))
        rows = [{"ref": ref} for ref in refs[page * 2 : page * 2 + 2]]
        more = page * 2 + 2 < len(refs)
        link = f"/v2/bills?cursor={page + 1}" if more else None
        return web.json_response({"result": {"items": rows}, "links": {"next": link}})

    async def detail(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({}, status=401)
        self.detail_paths.append(request.raw_path)
        found = BILLS.get(request.match_info["ref"])
        if found is None:
            return web.json_response({"detail": "gone"}, status=404)
        return web.json_response({"bill": found})


FIELDS: dict[str, Any] = {
    "id": "ref",
    "invoice_number": {"path": "number", "required": True},
    "invoice_date": {"path": "issued", "format": "%d/%m/%Y %H:%M"},
    "total_amount": {"path": "amount_cents", "unit": "minor"},
    "status": "state",
    "facility": {"value": "Clínica Central"},
    "updated_at": "changed",
    "patient": {
        "name": {"path": ["client.first", "client.last"], "join": " "},
        "policy_number": "client.policy",
        "ref": "client.id",
    },
    "items": {
        "path": "lines",
        "description": "text",
        "quantity": "qty",
        "unit_price": {"path": "price_cents", "unit": "minor"},
        "tax": {"amount": {"path": "tax_cents", "unit": "minor"}, "name": "IVA"},
    },
}


def source(base_url: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "rest",
        "name": "acme",
        "base_url": base_url + "/v2/",
        "timezone": "America/Costa_Rica",
        "currency": "CRC",
        "http": FAST_HTTP,
        "lookback": "0s",
        "auth": {
            "kind": "oauth2_client_credentials",
            "token_path": "/oauth/token",
            "client_id": "connector",
            "client_secret": SECRET,
        },
        "list": {"path": "bills", "records": "result.items", "next": "links.next"},
        "detail": {"path": "bills/{id}", "id": "ref", "record": "bill"},
        "pagination": {"kind": "next_link"},
        "status_map": {"settled": "paid", "open": "unpaid"},
        "fields": FIELDS,
        **extra,
    }


def register(store: Store, *numbers: str) -> None:
    """The policy registry a sync checks policy numbers against."""
    import_policies(store, [PolicyRecord(n, None, ACTIVE, None, None) for n in numbers])


def sync(config: AppConfig, store: Store) -> RunResult:
    (result,) = asyncio.run(build_engine(config, store).sync())
    assert result.ok, result.error
    return result


@pytest.fixture
def vendor() -> Iterator[tuple[Vendor, str]]:
    served = Vendor()
    with serve_app(served.app()) as url:
        yield served, url


def test_a_next_linked_vendor_with_details_syncs_through_the_whole_pipeline(
    vendor: tuple[Vendor, str], tmp_path: Path
) -> None:
    served, url = vendor
    # token_path starts with "/": relative to the host, as httpx joins it.
    config = build_config({"store": {"url": str(tmp_path / "s.db")}, "sources": [source(url)]})
    with Store(sqlite_url_for(tmp_path / "s.db")) as store:
        register(store, "POL-100")
        result = sync(config, store)
        assert result.counts.fetched == 4
        assert served.tokens == 1
        # The id's slash is percent-encoded: it cannot escape its path segment.
        assert sorted(served.detail_paths) == [
            "/v2/bills/A%2F1",
            "/v2/bills/A%2F2",
            "/v2/bills/A%2F3",
            "/v2/bills/A%2F9",
        ]
        stored = {inv.id: inv for inv in store.iter_invoices("acme")}
        assert set(stored) == {"A/1", "A/3"}
        first = stored["A/1"]
        # 21:30 in San José is that day, not the next UTC day.
        assert str(first.invoice_date) == "2025-02-03"
        assert first.total_amount == pytest.approx(110) and str(first.total_amount) == "110.00"
        assert first.status is InvoiceStatus.PAID
        assert first.facility == "Clínica Central"
        assert first.patient.name == "Ana Mora"
        (item,) = first.items
        assert item.category is Category.CONSULTATION
        assert item.description == "General consultation (1 × 100.00, +IVA 10.00)"
        assert (str(item.quantity), str(item.unit_price), str(item.total)) == (
            "1",
            "110.00",
            "110.00",
        )
        assert first.source_updated_at is not None
        assert first.source_updated_at.isoformat() == "2025-02-04T03:30:00+00:00"
        # An unknown status word is quarantined, keyed by the record's own id (`ref`); so is
        # the record deleted between the list and its detail call.
        quarantined = {
            entry.record_key: {issue.code.value for issue in entry.issues}
            for entry in store.quarantine_entries("acme")
        }
        assert quarantined == {"A/2": {"STATUS_UNMAPPED"}, "A/9": {"DETAIL_UNAVAILABLE"}}


def test_the_client_side_change_filter_drops_records_before_the_cursor(
    vendor: tuple[Vendor, str], tmp_path: Path
) -> None:
    served, url = vendor
    raw = source(url, incremental={"field": "changed"})
    config = build_config({"store": {"url": str(tmp_path / "s.db")}, "sources": [raw]})
    with Store(sqlite_url_for(tmp_path / "s.db")) as store:
        register(store, "POL-100")
        assert sync(config, store).counts.fetched == 4
        again = sync(config, store)
        # Only the newest record (changed at the cursor itself) is handed on again, and the
        # listed record whose detail call fails (it has no change time to filter by).
        assert again.counts.fetched == 2
        assert again.counts.inserted == 0
        # The vendor was asked for no filter: it has none.
        assert all("changed_since" not in query for query in served.list_queries)


def test_a_secret_never_reaches_the_logs_or_the_errors(
    vendor: tuple[Vendor, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _served, url = vendor
    raw = source(url)
    raw["auth"] = {**raw["auth"], "client_secret": "wrong-" + SECRET}
    config = build_config({"store": {"url": str(tmp_path / "s.db")}, "sources": [raw]})
    assert "wrong-" + SECRET in config.secrets()
    with Store(sqlite_url_for(tmp_path / "s.db")) as store:
        (result,) = asyncio.run(build_engine(config, store).sync())
    assert not result.ok
    assert "login rejected" in (result.error or "")
    assert SECRET not in (result.error or "") + capsys.readouterr().out


class ArrayVendor:
    """One plain JSON array behind a header key, filtered by an epoch-seconds parameter."""

    def __init__(self) -> None:
        self.queries: list[dict[str, str]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/all", self.everything)
        return app

    async def everything(self, request: web.Request) -> web.Response:
        if request.headers.get("X-Api-Key") != f"Key {KEY}":
            return web.json_response({}, status=401)
        self.queries.append(dict(request.query))
        records = [
            {
                "invoiceId": n,
                "no": f"R-{n}",
                "date": "2025-03-01",
                "total": "25.50",
                "st": "PAID",
                "pt": {"name": "Luis Vega", "pol": "POL-7"},
                "rows": [{"what": "Blood test", "cat": "laboratory", "n": 1, "each": "25.50"}],
                "upd": "2025-03-01T10:00:00Z",
            }
            for n in range(1, 8)
        ]
        return web.json_response(records)


def test_a_single_array_vendor_with_a_header_key_and_an_epoch_since(tmp_path: Path) -> None:
    served = ArrayVendor()
    fields = {
        "id": "invoiceId",
        "invoice_number": "no",
        "invoice_date": "date",
        "total_amount": "total",
        "status": "st",
        "updated_at": "upd",
        "patient": {"name": "pt.name", "policy_number": "pt.pol"},
        "items": {
            "path": "rows",
            "description": "what",
            "category": "cat",
            "quantity": "n",
            "unit_price": "each",
        },
    }
    with serve_app(served.app()) as url:
        raw = {
            "type": "rest",
            "name": "arrays",
            "base_url": url,
            "http": FAST_HTTP,
            "page_size": 3,
            "lookback": "0s",
            "auth": {"kind": "header", "header": "X-Api-Key", "key": KEY, "prefix": "Key "},
            "list": {"path": "all", "params": {"scope": "billing"}},
            "pagination": {"kind": "single_array"},
            "incremental": {"param": "since", "format": "epoch_seconds"},
            "status_map": {"PAID": "paid"},
            "fields": fields,
        }
        config = build_config({"store": {"url": str(tmp_path / "a.db")}, "sources": [raw]})
        with Store(sqlite_url_for(tmp_path / "a.db")) as store:
            register(store, "POL-7")
            first = sync(config, store)
            assert (first.counts.fetched, first.counts.inserted) == (7, 7)
            sync(config, store)
            stored = {inv.id for inv in store.iter_invoices("arrays")}
    # Integer ids are read as text; the second run sent the cursor as epoch seconds.
    assert stored == {str(n) for n in range(1, 8)}
    assert served.queries[0] == {"scope": "billing"}
    assert served.queries[1] == {"scope": "billing", "since": "1740823200"}


def test_a_policy_number_comes_from_the_policy_links_when_the_record_has_none(
    vendor: tuple[Vendor, str], tmp_path: Path
) -> None:
    _served, url = vendor
    raw = source(url)
    patient = {k: v for k, v in FIELDS["patient"].items() if k != "policy_number"}
    raw["fields"] = {**FIELDS, "patient": patient}
    config = build_config({"store": {"url": str(tmp_path / "s.db")}, "sources": [raw]})
    with Store(sqlite_url_for(tmp_path / "s.db")) as store:
        register(store, "POL-555")
        import_links(store, [PatientLink("acme", "c-1", "POL-555")])
        sync(config, store)
        stored = list(store.iter_invoices("acme"))
    assert {inv.id for inv in stored} == {"A/1", "A/3"}
    assert {inv.patient.policy_number for inv in stored} == {"POL-555"}


class PlainVendor:
    """Records in an envelope, paged from 0 without a total when asked, else all at once."""

    def __init__(self) -> None:
        self.queries: list[dict[str, str]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/inv", self.listing)
        return app

    async def listing(self, request: web.Request) -> web.Response:
        self.queries.append(dict(request.query))
        rows = [
            {
                "id": f"P{n}",
                "number": f"P-{n}",
                "day": "2025-05-05",
                "amount": 1000,
                "status": "paid",
                "patient": {"name": "Eva Ruiz", "policy": "POL-9"},
                "items": [{"text": "Physio session", "kind": "physiotherapy", "price": 1000}],
            }
            for n in range(7)
        ]
        if "pg" in request.query:
            start = int(request.query["pg"]) * int(request.query["size"])
            rows = rows[start : start + int(request.query["size"])]
        return web.json_response({"body": {"rows": rows}})


@pytest.mark.parametrize("kind", ["page", "none"])
def test_pages_without_a_total_and_one_whole_answer(kind: str, tmp_path: Path) -> None:
    served = PlainVendor()
    fields = {
        "id": "id",
        "invoice_number": "number",
        "invoice_date": "day",
        "total_amount": {"path": "amount", "unit": "minor"},
        "status": "status",
        "patient": {"name": "patient.name", "policy_number": "patient.policy"},
        "items": {
            "description": "text",
            "category": "kind",
            "unit_price": {"path": "price", "unit": "minor"},
        },
    }
    pagination: dict[str, Any] = {"kind": kind}
    if kind == "page":
        pagination.update(page_param="pg", first_page=0, size_param="size")
    with serve_app(served.app()) as url:
        raw = {
            "type": "rest",
            "name": "plain",
            "base_url": url,
            "http": FAST_HTTP,
            "page_size": 3,
            "auth": {"kind": "none"},
            "list": {"path": "inv", "records": "body.rows"},
            "pagination": pagination,
            "status_map": {"paid": "paid"},
            "fields": fields,
        }
        config = build_config({"store": {"url": str(tmp_path / "p.db")}, "sources": [raw]})
        with Store(sqlite_url_for(tmp_path / "p.db")) as store:
            register(store, "POL-9")
            result = sync(config, store)
            stored = sorted(inv.id for inv in store.iter_invoices("plain"))
    assert stored == [f"P{n}" for n in range(7)]
    assert result.counts.inserted == 7
    if kind == "page":
        # Pages 0, 1, 2 (short: the last) of three.
        assert [q["pg"] for q in served.queries] == ["0", "1", "2"]
    else:
        assert served.queries == [{}]
