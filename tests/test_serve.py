"""`connector serve` over real loopback HTTP on SQLite and PostgreSQL: the list (filters,
paging, total), get-by-id, keys and scopes, errors in MediTrak's shape, OpenAPI, health,
metrics and the access log."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from urllib.parse import quote

import pytest

from connector.logging import configure_logging
from connector.model import InvoiceStatus
from connector.store import Store
from tests.test_serve_kit import (
    ALL_KEY,
    ONE_KEY,
    Served,
    every_page,
    invoice,
    serve_config,
    serving,
    write,
)


@pytest.fixture
def served(store_url: str) -> Iterator[Served]:
    """Two sources: clinic-a 30 invoices (one quarantined, March and April, some unpaid),
    clinic-b 10 (one void, one with a fractional quantity)."""
    with Store(store_url) as store:
        write(
            store,
            "clinic-a",
            [
                invoice(
                    "clinic-a",
                    n,
                    day=date(2025, 3 + n % 2, 1 + n % 28),
                    status=InvoiceStatus.UNPAID if n % 3 == 0 else InvoiceStatus.PAID,
                )
                for n in range(30)
            ],
            quarantined=["INV-00007"],
        )
        write(
            store,
            "clinic-b",
            [
                invoice(
                    "clinic-b",
                    n,
                    status=InvoiceStatus.VOID if n == 4 else InvoiceStatus.PENDING,
                    amount=Decimal("1250"),
                    quantity=Decimal("2.5") if n == 5 else Decimal("1"),
                )
                for n in range(10)
            ],
        )
    with serving(serve_config(store_url)) as running:
        yield running


def test_list_envelope_and_record_shape_as_documented(served: Served) -> None:
    with served.client() as client:
        answer = client.get("/api/v1/invoices", params={"limit": 100})
    assert answer.status_code == 200
    body = answer.json()
    assert set(body) == {"success", "data", "total", "page", "limit", "next_cursor", "as_of"}
    assert body["success"] is True and body["page"] == 1 and body["limit"] == 100
    # 29 of clinic-a (one quarantined) + 9 of clinic-b (the void one left out).
    assert body["total"] == 38 == len(body["data"])
    assert body["next_cursor"] is None
    ids = [r["id"] for r in body["data"]]
    assert "clinic-a:INV-00007" not in ids and "clinic-b:INV-00004" not in ids
    first = body["data"][0]
    assert first["invoice_date"] == "2025-03-01"
    assert set(first["patient"]) == {"name", "policy_number"}
    assert set(first["items"][0]) == {"category", "description", "quantity", "unit_price", "total"}
    # Money is written with exactly two decimals, never as a float's 1250.0.
    assert re.search(r'"total_amount":1250\.00[,}]', answer.text)
    assert '"quantity":2.5,"unit_price":500.00,"total":1250.00' in answer.text


def test_get_by_id_serves_one_record_and_hides_quarantined_and_void(served: Served) -> None:
    with served.client() as client:
        one = client.get("/api/v1/invoices/clinic-b:INV-00001")
        assert one.status_code == 200
        record = one.json()
        assert record["id"] == "clinic-b:INV-00001" and record["status"] == "pending"
        assert record["total_amount"] == 1250 and '"total_amount":1250.00' in one.text
        for hidden in ("clinic-a:INV-00007", "clinic-b:INV-00004", "clinic-b:NOPE", "nocolon"):
            missing = client.get(f"/api/v1/invoices/{hidden}")
            assert missing.status_code == 404
            assert missing.json() == {
                "success": False,
                "error": "Invoice not found",
                "code": "INVOICE_NOT_FOUND",
            }
        void = client.get("/api/v1/invoices/clinic-b:INV-00004", params={"include_void": "true"})
        assert void.status_code == 200 and void.json()["status"] == "void"


def test_void_only_on_request(served: Served) -> None:
    with served.client() as client:
        only_void = client.get("/api/v1/invoices", params={"status": "void"}).json()
        with_void = client.get("/api/v1/invoices", params={"include_void": "true"}).json()
    assert [r["id"] for r in only_void["data"]] == ["clinic-b:INV-00004"]
    assert with_void["total"] == 39


def test_filters_by_status_dates_source_and_update_time(served: Served) -> None:
    with served.client() as client:

        def ids(**params: str) -> list[str]:
            return every_page(client, {"limit": 7, **params}, cursor=True)

        unpaid = ids(status="unpaid")
        assert unpaid and all(i.startswith("clinic-a:") for i in unpaid)
        assert len(unpaid) == 10
        april = ids(date_from="2025-04-01", date_to="2025-04-30")
        assert len(april) == 14 and "clinic-a:INV-00001" in april
        assert len(ids(source="clinic-b")) == 9
        everything = ids()
        assert len(everything) == 38
        stamp = client.get("/api/v1/invoices/clinic-b:INV-00001").json()["updated_at"]
        # Inclusive: the very moment the batch was stored lists it.
        assert "clinic-b:INV-00001" in ids(updated_since=stamp)
        later = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
        assert ids(updated_since=later) == []


def test_page_numbers_and_cursor_give_the_same_order_without_repeats(served: Served) -> None:
    with served.client() as client:
        by_page = every_page(client, {"limit": 6}, cursor=False)
        by_cursor = every_page(client, {"limit": 6}, cursor=True)
    assert by_page == by_cursor
    assert len(by_page) == len(set(by_page)) == 38
    assert by_page == sorted(by_page, key=lambda i: tuple(i.split(":", 1)))


def test_a_cursor_pass_neither_skips_nor_repeats_while_a_sync_writes(
    served: Served, store_url: str
) -> None:
    """Records inserted ahead of and behind the cursor, and records updated, during a pass:
    the pass lists each record that existed at its start exactly once; what changed after
    its horizon is listed by the next pass (updated_since = the pass's as_of)."""
    with served.client() as client, Store(store_url) as store:
        first = client.get("/api/v1/invoices", params={"limit": 10}).json()
        seen = [r["id"] for r in first["data"]]
        # An update behind the cursor and one ahead of it, a new source behind and one ahead.
        write(store, "clinic-a", [invoice("clinic-a", 3, amount=Decimal("9.99"))])
        write(store, "clinic-a", [invoice("clinic-a", 25, amount=Decimal("9.99"))])
        write(store, "clinic-0", [invoice("clinic-0", 1)])
        write(store, "clinic-z", [invoice("clinic-z", 1)])
        write(store, "clinic-b", [invoice("clinic-b", 8, amount=Decimal("1.00"))])
        cursor = first["next_cursor"]
        while cursor:
            page = client.get("/api/v1/invoices", params={"cursor": cursor, "limit": 10}).json()
            seen += [r["id"] for r in page["data"]]
            cursor = page["next_cursor"]
        assert len(seen) == len(set(seen))
        assert set(seen) == {f"clinic-a:INV-{n:05d}" for n in range(30) if n not in (7, 25)} | {
            f"clinic-b:INV-{n:05d}" for n in range(10) if n not in (4, 8)
        }
        # The next pass, from the first pass's horizon, brings everything written since.
        after = every_page(client, {"updated_since": first["as_of"], "limit": 3}, cursor=True)
        assert set(after) == {
            "clinic-a:INV-00003",
            "clinic-a:INV-00025",
            "clinic-0:INV-00001",
            "clinic-z:INV-00001",
            "clinic-b:INV-00008",
        }


def test_keys_and_scopes(served: Served) -> None:
    with served.client(None) as anonymous:
        answer = anonymous.get("/api/v1/invoices")
        assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"
        assert answer.json()["code"] == "INVALID_API_KEY"
        assert anonymous.get("/api/v1/invoices/clinic-a:INV-00001").status_code == 401
    with served.client("not-a-key-of-anyone") as stranger:
        assert stranger.get("/api/v1/invoices").json() == {
            "success": False,
            "error": "Invalid or expired API key",
            "code": "INVALID_API_KEY",
        }
    with served.client(ONE_KEY) as auditor:
        mine = every_page(auditor, {"limit": 50}, cursor=True)
        assert len(mine) == 29 and all(i.startswith("clinic-a:") for i in mine)
        forbidden = auditor.get("/api/v1/invoices", params={"source": "clinic-b"})
        assert forbidden.status_code == 403 and forbidden.json()["code"] == "SOURCE_FORBIDDEN"
        # Another source's invoice is not found rather than forbidden: no existence leak.
        assert auditor.get("/api/v1/invoices/clinic-b:INV-00001").status_code == 404
        assert auditor.get("/api/v1/invoices/clinic-a:INV-00001").status_code == 200


@pytest.mark.parametrize(
    ("params", "names"),
    [
        ({"page": "abc"}, "page"),
        ({"page": "0"}, "page"),
        ({"limit": "100000"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"status": "approved"}, "status"),
        ({"date_from": "2025-13-01"}, "date_from"),
        ({"date_to": "15/01/2025"}, "date_to"),
        ({"date_from": "2025-05-01", "date_to": "2025-04-01"}, "date_from"),
        ({"updated_since": "yesterday"}, "updated_since"),
        ({"cursor": "bm90IGEgY3Vyc29y"}, "cursor"),
        ({"cursor": "%%%"}, "cursor"),
        ({"page": "2", "cursor": "abc"}, "cursor"),
        ({"include_void": "maybe"}, "include_void"),
        ({"source": "Not A Source!"}, "source"),
    ],
)
def test_bad_parameters_get_a_clear_400_and_change_nothing(
    served: Served, store_url: str, params: dict[str, str], names: str
) -> None:
    with Store(store_url) as store:
        before = (store.count_invoices(), store.content_hashes("clinic-a"))
        with served.client() as client:
            answer = client.get("/api/v1/invoices", params=params)
        assert answer.status_code == 400, answer.text
        body = answer.json()
        assert body["success"] is False and body["code"] == "INVALID_PARAMETER"
        assert names in body["error"]
        assert (store.count_invoices(), store.content_hashes("clinic-a")) == before


def test_unknown_paths_and_methods_answer_in_the_error_shape(served: Served) -> None:
    with served.client() as client:
        nowhere = client.get("/api/v2/invoices")
        assert nowhere.status_code == 404 and nowhere.json()["code"] == "NOT_FOUND"
        posted = client.post("/api/v1/invoices", json={})
        assert posted.status_code == 405 and posted.json()["success"] is False


def test_openapi_document_names_parameters_and_envelope(served: Served) -> None:
    with served.client(None) as client:
        document = client.get("/openapi.json").json()
    listing = document["paths"]["/api/v1/invoices"]["get"]
    names = {p["name"] for p in listing["parameters"]}
    assert names >= {"page", "limit", "cursor", "status", "date_from", "date_to", "updated_since"}
    limit = next(p for p in listing["parameters"] if p["name"] == "limit")
    assert limit["schema"]["anyOf"][0]["maximum"] == 500
    envelope = document["components"]["schemas"]["InvoiceListModel"]["properties"]
    assert {"data", "total", "page", "limit", "next_cursor"} <= set(envelope)
    assert "/api/v1/invoices/{invoice_id}" in document["paths"]
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_health_and_metrics_on_the_same_app(served: Served) -> None:
    with served.client() as client:
        client.get("/api/v1/invoices")
        client.get("/api/v1/invoices/clinic-b:NOPE")
        health = client.get("/healthz")
        metrics = client.get("/metrics").text
    assert health.status_code == 200 and health.json() == {"status": "ok", "store": "ok"}
    assert (
        'connector_serve_requests_total{method="GET",route="/api/v1/invoices",status="200"} 1.0'
        in metrics
    )
    assert 'route="/api/v1/invoices/{invoice_id:path}",status="404"' in metrics
    assert "connector_serve_request_duration_seconds_bucket" in metrics
    assert "connector_up 1.0" in metrics


def test_the_openapi_document_is_counted_under_its_own_route(served: Served) -> None:
    with served.client(None) as client:
        assert client.get("/openapi.json").status_code == 200
        client.get("/no/such/path")
        metrics = client.get("/metrics").text
    assert 'route="/openapi.json",status="200"' in metrics
    assert 'route="unmatched",status="404"' in metrics


def test_no_key_patient_name_or_policy_number_in_the_server_log(served: Served) -> None:
    stream = io.StringIO()
    configure_logging("debug", "json", stream=stream)
    try:
        with served.client() as client:
            listed = client.get("/api/v1/invoices", params={"limit": 100}).json()["data"]
            client.get("/api/v1/invoices/clinic-a:INV-00001")
            client.get("/api/v1/invoices", params={"page": "x", "date_from": "Patient Person1"})
        with served.client("POL-100001-as-a-key") as stranger:
            stranger.get("/api/v1/invoices")
    finally:
        configure_logging("warning")
    log = stream.getvalue()
    assert '"serve.request"' in log and '"consumer": "meditrak"' in log
    for secret in (ALL_KEY, ONE_KEY, "POL-100001-as-a-key"):
        assert secret not in log
    for record in listed:
        assert record["patient"]["name"] not in log
        assert record["patient"]["policy_number"] not in log


def test_ids_with_slashes_and_colons_are_reachable_url_encoded(
    served: Served, store_url: str
) -> None:
    odd = invoice("clinic-c", 1).model_copy(update={"id": "2025/INV:7 a"})
    with Store(store_url) as store:
        write(store, "clinic-c", [odd])
    with served.client() as client:
        listed = client.get("/api/v1/invoices", params={"source": "clinic-c"}).json()["data"]
        assert [r["id"] for r in listed] == ["clinic-c:2025/INV:7 a"]
        # As the meditrak_import adapter asks for it: the whole id quoted, "/" included.
        answer = client.get("/api/v1/invoices/" + quote("clinic-c:2025/INV:7 a", safe=""))
    assert answer.status_code == 200 and answer.json()["id"] == "clinic-c:2025/INV:7 a"
