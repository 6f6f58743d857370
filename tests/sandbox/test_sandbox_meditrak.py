"""Contract tests for the MediTrak API v1 sandbox dialect (/api/v1/invoices/)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import pytest

from connector.sandbox import SandboxServer, item_total
from connector.sandbox._dataset import SandboxInvoice
from tests.sandbox.sandbox_helpers import admin_for, client_for, exact_json

DIALECT = "meditrak"
STATUS_WORDS = {"draft", "submitted", "approved", "rejected", "paid"}


@pytest.fixture(scope="module")
def api(sandbox: SandboxServer) -> Any:
    with client_for(sandbox, DIALECT) as client:
        yield client


def _truth(sandbox: SandboxServer) -> dict[str, Any]:
    with admin_for(sandbox, DIALECT) as admin:
        result: dict[str, Any] = admin.get("truth").json()
        return result


def _first_with_defect(sandbox: SandboxServer, kind: str) -> SandboxInvoice:
    defects = sandbox.dataset(DIALECT).defects()
    invoice_id = next(i for i, k in defects.items() if k == kind)
    invoice = sandbox.dataset(DIALECT).get(invoice_id)
    assert invoice is not None
    return invoice


def _detail(api: httpx.Client, invoice_id: str) -> dict[str, Any]:
    response = api.get(f"invoices/{invoice_id}/")
    assert response.status_code == 200
    body = exact_json(response)
    assert body["success"] is True
    result: dict[str, Any] = body["invoice"]
    return result


def _summary(api: httpx.Client, invoice_id: str) -> dict[str, Any]:
    number = int(invoice_id.removeprefix("INV-"))
    page, index = divmod(number - 1, 100)
    rows = exact_json(api.get("invoices/", params={"limit": 100, "page": page + 1}))["invoices"]
    row: dict[str, Any] = rows[index]
    assert row["invoice_id"] == invoice_id
    return row


# -- auth --------------------------------------------------------------------------------


@pytest.mark.parametrize("header", [None, "Bearer wrong-key", "Basic c2FuZGJveA==", "Bearer"])
@pytest.mark.parametrize("path", ["invoices/", "invoices/INV-000001/", "invoices/stats/"])
def test_bad_credentials_get_401(sandbox: SandboxServer, header: str | None, path: str) -> None:
    headers = {"Authorization": header} if header else {}
    with client_for(sandbox, DIALECT, auth=False) as client:
        response = client.get(path, headers=headers)
    assert response.status_code == 401
    assert response.json() == {
        "success": False,
        "error": "Invalid or expired API key",
        "code": "INVALID_API_KEY",
    }


def test_token_can_be_overridden(make_sandbox: Any) -> None:
    server = make_sandbox(dialects=(DIALECT,), tokens={DIALECT: "my-key"})
    assert server.token(DIALECT) == "my-key"
    assert server.credentials(DIALECT) == {"api_key": "my-key"}
    with client_for(server, DIALECT) as client:
        assert client.get("invoices/").status_code == 200
        assert client.get("invoices/", headers={"Authorization": "Bearer x"}).status_code == 401


# -- list + pagination -------------------------------------------------------------------


def test_api_url_points_at_api_root(sandbox: SandboxServer) -> None:
    assert sandbox.api_url(DIALECT).endswith("/api/v1/")
    assert sandbox.api_url(DIALECT).startswith("http://127.0.0.1:")


def test_default_page_and_envelope(api: httpx.Client, sandbox: SandboxServer) -> None:
    body = api.get("invoices/").json()
    assert set(body) == {"success", "invoices", "pagination"}
    assert body["success"] is True
    assert body["pagination"] == {"page": 1, "total_count": len(sandbox.dataset(DIALECT))}
    assert len(body["invoices"]) == 50
    row = body["invoices"][0]
    assert set(row) == {"invoice_id", "patient_name", "total_amount", "status", "service_date"}
    assert isinstance(row["total_amount"], int | float)


def test_paging_covers_everything_once_in_id_order(
    api: httpx.Client, sandbox: SandboxServer
) -> None:
    seen: list[str] = []
    page = 1
    while True:
        body = api.get("invoices/", params={"page": page, "limit": 100}).json()
        assert body["pagination"]["page"] == page
        if not body["invoices"]:
            break
        seen.extend(row["invoice_id"] for row in body["invoices"])
        page += 1
    assert seen == _truth(sandbox)["served_ids"]
    assert seen == sorted(seen)
    assert page == 4  # 300 invoices: three full pages, then an empty one


def test_limit_is_honoured(api: httpx.Client) -> None:
    body = api.get("invoices/", params={"limit": 7, "page": 2}).json()
    assert [r["invoice_id"] for r in body["invoices"]] == [f"INV-{n:06d}" for n in range(8, 15)]


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 101},
        {"limit": 0},
        {"limit": -5},
        {"limit": "ten"},
        {"limit": "1.5"},
        {"page": 0},
        {"page": "x"},
        {"status": "unpaid"},
        {"status": "PAID"},
        {"date_from": "2025-13-01"},
        {"date_from": "15/01/2025"},
        {"date_to": "20250115"},
    ],
)
def test_bad_parameters_get_400(api: httpx.Client, params: dict[str, Any]) -> None:
    response = api.get("invoices/", params=params)
    assert response.status_code == 400
    body = response.json()
    assert body["success"] is False
    assert body["code"] == "INVALID_PARAMETER"
    assert body["error"]


def test_bad_date_message_matches_the_docs(api: httpx.Client) -> None:
    body = api.get("invoices/", params={"date_from": "01-01-2025"}).json()
    assert body == {"success": False, "error": "Invalid date format", "code": "INVALID_PARAMETER"}


def test_status_filter(api: httpx.Client) -> None:
    counts = {}
    for word in sorted(STATUS_WORDS):
        body = api.get("invoices/", params={"status": word, "limit": 100}).json()
        assert all(row["status"] == word for row in body["invoices"])
        counts[word] = body["pagination"]["total_count"]
    assert counts["paid"] > 0 and counts["approved"] > 0
    total = api.get("invoices/").json()["pagination"]["total_count"]
    refunded = sum(1 for k in _defect_kinds(api) if k == "unknown_status")
    assert sum(counts.values()) + refunded == total


def _defect_kinds(api: httpx.Client) -> list[str]:
    base = str(api.base_url).split("/api/")[0]
    with httpx.Client(base_url=base) as admin:
        return [d["kind"] for d in admin.get("/_sandbox/truth").json()["defects"].values()]


def test_date_filter_is_inclusive(api: httpx.Client, sandbox: SandboxServer) -> None:
    params: dict[str, str | int] = {
        "date_from": "2025-03-01",
        "date_to": "2025-03-31",
        "limit": 100,
    }
    body = api.get("invoices/", params=params).json()
    expected = [
        inv.id
        for inv in sandbox.dataset(DIALECT)
        if "2025-03-01" <= inv.invoice_date.isoformat() <= "2025-03-31"
    ]
    assert [row["invoice_id"] for row in body["invoices"]] == expected
    assert body["pagination"]["total_count"] == len(expected)


# -- trailing slash + detail ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "location"),
    [
        ("/api/v1/invoices?page=2&limit=5", "/api/v1/invoices/?page=2&limit=5"),
        ("/api/v1/invoices/INV-000001", "/api/v1/invoices/INV-000001/"),
    ],
)
def test_missing_trailing_slash_redirects(sandbox: SandboxServer, path: str, location: str) -> None:
    with client_for(sandbox, DIALECT) as client:
        response = client.get(sandbox.base_url(DIALECT) + path)
        assert response.status_code == 301
        assert response.headers["Location"] == location
        followed = client.get(sandbox.base_url(DIALECT) + path, follow_redirects=True)
        assert followed.status_code == 200


def test_detail_of_clean_invoice(api: httpx.Client, sandbox: SandboxServer) -> None:
    invoice = next(inv for inv in sandbox.dataset(DIALECT) if inv.defect is None)
    detail = _detail(api, invoice.id)
    assert detail["invoice_id"] == invoice.id
    assert detail["invoice_number"] == invoice.number
    assert detail["service_date"] == invoice.invoice_date.isoformat()
    assert detail["updated_at"] == invoice.updated_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert detail["status"] in STATUS_WORDS
    assert detail["total_amount"] == invoice.total
    assert detail["currency"] == "USD"
    assert detail["facility"] == invoice.facility
    assert detail["patient"] == {
        "name": invoice.patient_name,
        "policy_number": invoice.policy_number,
    }
    assert len(detail["items"]) == len(invoice.items)
    for rendered, item in zip(detail["items"], invoice.items, strict=True):
        assert rendered == {
            "category": item.category,
            "description": item.description,
            "quantity": item.quantity,
            "unit_price": item.unit_price,
            "total": item_total(item),
        }
    summary = _summary(api, invoice.id)
    assert summary["total_amount"] == detail["total_amount"]
    assert summary["status"] == detail["status"]
    assert summary["service_date"] == detail["service_date"]


def test_money_keeps_two_decimals_in_the_json_text(api: httpx.Client) -> None:
    text = api.get("invoices/INV-000001/").text
    assert '"total_amount":' in text
    amount = text.split('"total_amount":')[1].split(",")[0]
    assert len(amount.split(".")[1]) == 2


def test_status_words_follow_the_mapping(api: httpx.Client, sandbox: SandboxServer) -> None:
    expected = {"paid": {"paid"}, "unpaid": {"approved"}, "void": {"rejected"}}
    expected["pending"] = {"submitted", "draft"}
    rows = []
    for page in (1, 2, 3):
        rows += api.get("invoices/", params={"limit": 100, "page": page}).json()["invoices"]
    words = {row["invoice_id"]: row["status"] for row in rows}
    for inv in sandbox.dataset(DIALECT):
        if inv.defect != "unknown_status":
            assert words[inv.id] in expected[inv.status]
    assert {"draft", "submitted"} <= set(words.values())


def test_unknown_invoice_is_404(api: httpx.Client) -> None:
    response = api.get("invoices/INV-999999/")
    assert response.status_code == 404
    assert response.json() == {
        "success": False,
        "error": "Invoice not found",
        "code": "INVOICE_NOT_FOUND",
    }


# -- defects -------------------------------------------------------------------------------


def test_truth_lists_expected_reasons(sandbox: SandboxServer) -> None:
    truth = _truth(sandbox)
    kinds = {d["kind"] for d in truth["defects"].values()}
    # Every default kind is present; unregistered_policy is off by default for MediTrak.
    assert kinds == set(sandbox.dialect(DIALECT).default_defects)
    assert "unregistered_policy" not in kinds
    for invoice_id, defect in truth["defects"].items():
        assert invoice_id in truth["served_ids"]
        assert defect["expected_reason"]


def test_defect_unknown_category(api: httpx.Client, sandbox: SandboxServer) -> None:
    invoice = _first_with_defect(sandbox, "unknown_category")
    detail = _detail(api, invoice.id)
    assert detail["items"][0]["category"] == "miscellaneous"
    assert [i["category"] for i in detail["items"][1:]] == [i.category for i in invoice.items[1:]]


def test_defect_item_total_mismatch(api: httpx.Client, sandbox: SandboxServer) -> None:
    invoice = _first_with_defect(sandbox, "item_total_mismatch")
    item = _detail(api, invoice.id)["items"][0]
    assert item["total"] == item["quantity"] * item["unit_price"] + Decimal("10.00")


def test_defect_no_items(api: httpx.Client, sandbox: SandboxServer) -> None:
    invoice = _first_with_defect(sandbox, "no_items")
    assert _detail(api, invoice.id)["items"] == []
    assert invoice.items  # the truth stays clean


def test_defect_three_decimal_amount(api: httpx.Client, sandbox: SandboxServer) -> None:
    invoice = _first_with_defect(sandbox, "three_decimal_amount")
    expected = invoice.total + Decimal("0.005")
    assert _detail(api, invoice.id)["total_amount"] == expected
    assert _summary(api, invoice.id)["total_amount"] == expected
    text = api.get(f"invoices/{invoice.id}/").text
    assert f'"total_amount":{expected}' in text


def test_defect_missing_invoice_number(api: httpx.Client, sandbox: SandboxServer) -> None:
    invoice = _first_with_defect(sandbox, "missing_invoice_number")
    assert "invoice_number" not in _detail(api, invoice.id)


def test_defect_bad_date(api: httpx.Client, sandbox: SandboxServer) -> None:
    invoice = _first_with_defect(sandbox, "bad_date")
    expected = invoice.invoice_date.strftime("%d/%m/%Y")
    assert _detail(api, invoice.id)["service_date"] == expected
    assert _summary(api, invoice.id)["service_date"] == expected


def test_defect_unknown_status(api: httpx.Client, sandbox: SandboxServer) -> None:
    invoice = _first_with_defect(sandbox, "unknown_status")
    assert _detail(api, invoice.id)["status"] == "refunded"
    assert _summary(api, invoice.id)["status"] == "refunded"


def test_defect_invoice_total_mismatch(api: httpx.Client, sandbox: SandboxServer) -> None:
    invoice = _first_with_defect(sandbox, "invoice_total_mismatch")
    detail = _detail(api, invoice.id)
    assert detail["total_amount"] == sum(i["total"] for i in detail["items"]) + Decimal("5.00")
    assert _summary(api, invoice.id)["total_amount"] == detail["total_amount"]


def test_unregistered_policy_can_be_enabled(make_sandbox: Any) -> None:
    server = make_sandbox(
        dialects=(DIALECT,),
        defect_rate=0.3,
        defect_kinds={DIALECT: ("unregistered_policy",)},
    )
    invoice = _first_with_defect(server, "unregistered_policy")
    with client_for(server, DIALECT) as api, admin_for(server, DIALECT) as admin:
        detail = _detail(api, invoice.id)
        registry = admin.get("registry.csv").text
        truth = admin.get("truth").json()
    assert detail["patient"]["policy_number"] == invoice.policy_number
    assert invoice.policy_number not in registry
    assert truth["defects"][invoice.id] == {
        "kind": "unregistered_policy",
        "expected_reason": "POLICY_UNKNOWN",
    }


# -- statistics + bulk export ------------------------------------------------------------


def test_statistics(api: httpx.Client, sandbox: SandboxServer) -> None:
    params = {"date_from": "2025-01-01", "date_to": "2025-06-30"}
    body = exact_json(api.get("invoices/stats/", params=params))
    assert body["success"] is True
    stats = body["statistics"]
    chosen = [
        inv for inv in sandbox.dataset(DIALECT) if inv.invoice_date.isoformat() <= "2025-06-30"
    ]
    assert stats["total_invoices"] == len(chosen)
    assert stats["total_amount"] == sum(inv.total for inv in chosen)
    assert stats["average_amount"] == (stats["total_amount"] / len(chosen)).quantize(
        Decimal("0.01")
    )
    assert sum(s["count"] for s in stats["by_status"].values()) == len(chosen)
    assert sum(s["amount"] for s in stats["by_status"].values()) == stats["total_amount"]
    bad = api.get("invoices/stats/", params={"date_to": "June"})
    assert bad.status_code == 400


def test_bulk_export(api: httpx.Client) -> None:
    body = api.post("invoices/export/bulk/", json={"invoice_ids": ["INV-000002", "INV-000005"]})
    assert body.status_code == 200
    rows = body.json()["invoices"]
    assert [row["invoice_id"] for row in rows] == ["INV-000002", "INV-000005"]
    assert "items" in rows[0]
    everything = api.post("invoices/export/bulk/", json={}).json()
    assert everything["count"] == 300
    assert api.post("invoices/export/bulk/", json={"status": "nope"}).status_code == 400
