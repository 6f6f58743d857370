"""Contract tests for the MediTrak import-contract sandbox dialect (/api/invoices)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest

from connector.sandbox import SandboxServer, item_total
from tests.sandbox.sandbox_helpers import admin_for, client_for, exact_json

DIALECT = "meditrak_import"
RECORD_KEYS = {
    "id",
    "invoice_number",
    "invoice_date",
    "total_amount",
    "status",
    "facility",
    "patient",
    "items",
    "updated_at",
}


@pytest.fixture(scope="module")
def api(sandbox: SandboxServer) -> Any:
    with client_for(sandbox, DIALECT) as client:
        yield client


def _record(api: httpx.Client, invoice_id: str) -> dict[str, Any]:
    response = api.get(f"invoices/{invoice_id}")
    assert response.status_code == 200
    result: dict[str, Any] = exact_json(response)
    return result


def _with_defect(sandbox: SandboxServer, kind: str) -> str:
    return next(i for i, k in sandbox.dataset(DIALECT).defects().items() if k == kind)


@pytest.mark.parametrize("header", [None, "Bearer sandbox-meditrak-key", "Token x"])
def test_bad_credentials_get_401(sandbox: SandboxServer, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    with client_for(sandbox, DIALECT, auth=False) as client:
        for path in ("invoices", "invoices/INV-000001"):
            response = client.get(path, headers=headers)
            assert response.status_code == 401
            assert response.json() == {"detail": "Not authenticated"}


def test_envelope_and_record_shape(api: httpx.Client, sandbox: SandboxServer) -> None:
    body = api.get("invoices").json()
    assert set(body) == {"data", "total", "page", "limit"}
    assert (body["total"], body["page"], body["limit"]) == (len(sandbox.dataset(DIALECT)), 1, 50)
    assert len(body["data"]) == 50
    clean = next(inv for inv in sandbox.dataset(DIALECT) if inv.defect is None)
    record = _record(api, clean.id)
    assert set(record) == RECORD_KEYS
    assert record["invoice_date"] == clean.invoice_date.isoformat()
    assert record["total_amount"] == clean.total
    assert record["status"] == clean.status
    assert record["updated_at"].endswith("Z")
    assert record["patient"] == {"name": clean.patient_name, "policy_number": clean.policy_number}
    assert [i["total"] for i in record["items"]] == [item_total(i) for i in clean.items]


def test_never_serves_void(api: httpx.Client, sandbox: SandboxServer) -> None:
    assert all(inv.status != "void" for inv in sandbox.dataset(DIALECT))


def test_paging_up_to_500(api: httpx.Client, sandbox: SandboxServer) -> None:
    body = api.get("invoices", params={"limit": 500}).json()
    assert body["limit"] == 500
    ids = [r["id"] for r in body["data"]]
    assert ids == [inv.id for inv in sandbox.dataset(DIALECT)]
    second = api.get("invoices", params={"limit": 120, "page": 2}).json()
    assert [r["id"] for r in second["data"]] == ids[120:240]
    assert api.get("invoices", params={"page": 99}).json()["data"] == []


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 501},
        {"limit": 0},
        {"limit": "many"},
        {"page": 0},
        {"status": "void"},
        {"status": "approved"},
        {"updated_since": "yesterday"},
        {"updated_since": "2025-02-30T00:00:00Z"},
        {"date_from": "2025/01/01"},
        {"date_to": "2025-1-1"},
    ],
)
def test_bad_parameters_get_400(api: httpx.Client, params: dict[str, Any]) -> None:
    response = api.get("invoices", params=params)
    assert response.status_code == 400
    assert set(response.json()) == {"detail"}


def test_unknown_invoice_is_404(api: httpx.Client) -> None:
    response = api.get("invoices/INV-999999")
    assert response.status_code == 404
    assert response.json() == {"detail": "Invoice not found"}


def _all_ids(api: httpx.Client, **params: str) -> list[str]:
    body = api.get("invoices", params={"limit": 500, **params}).json()
    assert body["total"] == len(body["data"])
    return [r["id"] for r in body["data"]]


@pytest.mark.parametrize(
    "since_format",
    ["%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S+00:00", "%Y-%m-%dT%H:%M:%S.000Z"],
)
def test_updated_since_is_inclusive(
    api: httpx.Client, sandbox: SandboxServer, since_format: str
) -> None:
    invoices = sorted(sandbox.dataset(DIALECT), key=lambda inv: inv.updated_at)
    pivot = invoices[len(invoices) // 2].updated_at
    expected = sorted(inv.id for inv in invoices if inv.updated_at >= pivot)
    assert _all_ids(api, updated_since=pivot.strftime(since_format)) == expected
    later = (pivot + timedelta(seconds=1)).strftime(since_format)
    assert len(_all_ids(api, updated_since=later)) < len(expected)


def test_updated_since_with_other_offset(api: httpx.Client, sandbox: SandboxServer) -> None:
    pivot = sorted(inv.updated_at for inv in sandbox.dataset(DIALECT))[100]
    local = (pivot + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S+02:00")
    expected = [inv.id for inv in sandbox.dataset(DIALECT) if inv.updated_at >= pivot]
    assert _all_ids(api, updated_since=local) == expected


def test_date_and_status_filters(api: httpx.Client, sandbox: SandboxServer) -> None:
    ids = _all_ids(api, date_from="2025-04-01", date_to="2025-04-30", status="unpaid")
    expected = [
        inv.id
        for inv in sandbox.dataset(DIALECT)
        if inv.invoice_date.month == 4 and inv.status == "unpaid" and inv.defect != "unknown_status"
    ]
    assert ids == expected and ids


@pytest.mark.parametrize(
    ("kind", "check"),
    [
        ("unknown_category", lambda r, inv: r["items"][0]["category"] == "miscellaneous"),
        (
            "item_total_mismatch",
            lambda r, inv: (
                r["items"][0]["total"]
                == r["items"][0]["quantity"] * r["items"][0]["unit_price"] + Decimal("10.00")
            ),
        ),
        ("no_items", lambda r, inv: r["items"] == []),
        (
            "three_decimal_amount",
            lambda r, inv: r["total_amount"] == inv.total + Decimal("0.005"),
        ),
        ("missing_invoice_number", lambda r, inv: "invoice_number" not in r),
        ("bad_date", lambda r, inv: r["invoice_date"] == inv.invoice_date.strftime("%d/%m/%Y")),
        ("unknown_status", lambda r, inv: r["status"] == "refunded"),
        (
            "invoice_total_mismatch",
            lambda r, inv: (
                r["total_amount"] == sum(i["total"] for i in r["items"]) + Decimal("5.00")
            ),
        ),
    ],
)
def test_defects_are_rendered(
    api: httpx.Client, sandbox: SandboxServer, kind: str, check: Any
) -> None:
    invoice_id = _with_defect(sandbox, kind)
    invoice = sandbox.dataset(DIALECT).get(invoice_id)
    record = _record(api, invoice_id)
    assert check(record, invoice)
    # The list renders the same record as get-by-id.
    page = exact_json(api.get("invoices", params={"limit": 500}))["data"]
    assert next(r for r in page if r["id"] == invoice_id) == record


def test_mutation_shows_up_in_updated_since(make_sandbox: Any) -> None:
    server = make_sandbox(dialects=(DIALECT,))
    dataset = server.dataset(DIALECT)
    watermark = dataset.max_updated_at().strftime("%Y-%m-%dT%H:%M:%SZ")
    with client_for(server, DIALECT) as api, admin_for(server, DIALECT) as admin:
        before = _all_ids(api, updated_since=watermark)
        changed = admin.post("mutate/INV-000003").json()
        added = admin.post("add").json()
        after = _all_ids(api, updated_since=watermark)
        assert {"INV-000003", added["id"]} <= set(after)
        assert set(before) <= set(after)
        assert _record(api, "INV-000003")["updated_at"] == changed["updated_at"]
