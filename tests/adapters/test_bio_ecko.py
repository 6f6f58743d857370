"""Bio Ecko adapter tests: the shared adapter contract over loopback, the OAuth2 client
credentials specifics (form login, billing:read scope, expiry), envelope and filter settings,
and checks that the sandbox dialect keeps the vendor's contract and reconciles with the truth."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from pydantic import SecretStr, ValidationError

from adapters.bio_ecko import (
    Adapter,
    BioEckoClientCredentials,
    Config,
    describe_bio_ecko_error,
)
from connector.errors import AuthError, ContractError
from connector.issues import Reason
from connector.model import to_cents
from connector.sandbox import SandboxOptions, SandboxServer, item_total
from connector.sandbox.bio_ecko import BIO_ECKO_FEES, DEPARTMENTS, STATUS_WORDS, bio_ecko_status
from connector.sources.adapter import FetchRequest
from tests.contract import FAST_RETRIES, AdapterContract, collect

DIALECT = "bio_ecko"
SECRET = "sandbox-bio-ecko-secret"


class TestContract(AdapterContract):
    source_type = "bio_ecko"
    dialect = DIALECT
    token_auth = True
    # The vendor's own error code must reach the operator.
    vendor_error_text = "invalid_client"

    def wrong_credentials(self) -> dict[str, Any]:
        return {"client_secret": "not-the-secret"}


# -- helpers -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    """A read-only server: tests using it must not change data, tokens or settings."""
    options = SandboxOptions(invoices=120, seed=17, defect_rate=0.15, dialects=(DIALECT,))
    with SandboxServer(options) as server:
        yield server


@pytest.fixture
def private_sandbox() -> Iterator[SandboxServer]:
    """A server a test may reconfigure."""
    options = SandboxOptions(invoices=60, seed=4, defect_rate=0.0, dialects=(DIALECT,))
    with SandboxServer(options) as server:
        yield server


def config(server: SandboxServer, **overrides: Any) -> Config:
    raw = server.dialect(DIALECT).connector_source(server.api_url(DIALECT))
    return Config.model_validate({**raw, "page_size": 25, "http": FAST_RETRIES, **overrides})


def adapter(
    server: SandboxServer, transport: httpx.AsyncBaseTransport | None = None, **overrides: Any
) -> Adapter:
    created = Adapter.create(config(server, **overrides), transport=transport)
    assert isinstance(created, Adapter)
    return created


def all_records(server: SandboxServer, request: FetchRequest | None = None, **kw: Any) -> list[Any]:
    return [raw for page in collect(adapter(server, **kw), request) for raw in page.records]


def login(server: SandboxServer, **form: str) -> httpx.Response:
    data = {"grant_type": "client_credentials", **server.credentials(DIALECT), **form}
    return httpx.post(server.api_url(DIALECT) + "auth/token", data=data, timeout=10)


def api(server: SandboxServer, scope: str = "billing:read") -> httpx.Client:
    token = login(server, scope=scope).json()["access_token"]
    return httpx.Client(
        base_url=server.api_url(DIALECT),
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )


def exact(response: httpx.Response) -> Any:
    """Decode with Decimal numbers so that amounts keep their exact digits."""
    return json.loads(response.text, parse_float=Decimal)


# -- config --------------------------------------------------------------------------------


def test_config_defaults_follow_the_vendor(sandbox: SandboxServer) -> None:
    cfg = Config.model_validate(
        {
            "type": "bio_ecko",
            "name": "clinic",
            "base_url": "https://api.bioecko.example/api/v1",
            "client_id": "abc",
            "client_secret": "s3cret",
        }
    )
    assert (cfg.token_path, cfg.scope, cfg.page_size) == ("auth/token", "billing:read", 100)
    assert (cfg.currency, cfg.timezone) == ("INR", "Asia/Kolkata")
    assert (cfg.records_field, cfg.total_field, cfg.detail_field) == ("data", "meta.total", "data")
    assert "s3cret" not in repr(cfg) and "s3cret" not in str(cfg.model_dump())
    auth = Adapter.build_auth(cfg)
    assert isinstance(auth, BioEckoClientCredentials)
    assert auth.token_url == "https://api.bioecko.example/api/v1/auth/token"
    assert "s3cret" not in repr(auth)


def test_per_page_above_the_vendor_cap_is_a_config_error(sandbox: SandboxServer) -> None:
    with pytest.raises(ValidationError, match="page_size"):
        config(sandbox, page_size=101)


def test_an_absolute_token_url_is_used_as_is(sandbox: SandboxServer) -> None:
    cfg = config(sandbox, token_path="https://login.bioecko.example/oauth/token")
    auth = Adapter.build_auth(cfg)
    assert isinstance(auth, BioEckoClientCredentials)
    assert auth.token_url == "https://login.bioecko.example/oauth/token"


# -- auth ----------------------------------------------------------------------------------


def test_login_is_a_form_post_with_client_credentials_and_scope() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("/auth/token"):
            return httpx.Response(
                200,
                json={
                    "access_token": "tok-1",
                    "token_type": "Bearer",
                    "expires_in": 3600,
                    "scope": "billing:read appointments:read",
                },
            )
        return httpx.Response(200, json={"data": [], "meta": {"page": 1, "total": 0}})

    cfg = Config.model_validate(
        {
            "type": "bio_ecko",
            "name": "clinic",
            "base_url": "https://api.bioecko.example/api/v1/",
            "client_id": "client-1",
            "client_secret": "s3cret",
        }
    )
    pages = collect(Adapter.create(cfg, transport=httpx.MockTransport(handler)))
    assert pages[-1].position is None
    token_call, list_call = seen
    assert token_call.method == "POST"
    assert token_call.headers["Content-Type"] == "application/x-www-form-urlencoded"
    form = {k: v[0] for k, v in parse_qs(token_call.content.decode()).items()}
    assert form == {
        "grant_type": "client_credentials",
        "client_id": "client-1",
        "client_secret": "s3cret",
        "scope": "billing:read",
    }
    assert list_call.url.path == "/api/v1/billing/invoices"
    assert list_call.headers["Authorization"] == "Bearer tok-1"
    assert dict(list_call.url.params) == {"page": "1", "per_page": "100"}


def test_a_token_without_billing_read_fails_clearly(sandbox: SandboxServer) -> None:
    with pytest.raises(AuthError) as caught:
        collect(adapter(sandbox, scope="appointments:read"))
    message = str(caught.value)
    assert "billing:read" in message and "appointments:read" in message
    assert SECRET not in message


def test_a_scope_the_vendor_refuses_names_the_vendor_reason(sandbox: SandboxServer) -> None:
    with pytest.raises(AuthError) as caught:
        collect(adapter(sandbox, scope="billing:write"))
    assert "400" in str(caught.value) and "invalid_scope" in str(caught.value)
    assert SECRET not in str(caught.value)


def test_an_unknown_client_id_is_rejected(sandbox: SandboxServer) -> None:
    with pytest.raises(AuthError, match="invalid_client"):
        collect(adapter(sandbox, client_id="someone-else"))


def test_a_refused_login_never_echoes_the_client_secret() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        # A careless vendor that repeats what it was sent.
        sent = parse_qs(request.content.decode())["client_secret"][0]
        body = {"error": {"code": "invalid_client", "message": f"unknown secret {sent}"}}
        return httpx.Response(401, json=body)

    cfg = Config.model_validate(
        {
            "type": "bio_ecko",
            "name": "clinic",
            "base_url": "https://api.bioecko.example/api/v1/",
            "client_id": "client-1",
            "client_secret": "s3cret-bio",
        }
    )
    with pytest.raises(AuthError) as caught:
        collect(Adapter.create(cfg, transport=httpx.MockTransport(handler)))
    assert "s3cret-bio" not in str(caught.value)
    # The vendor's free text echoed the secret: withheld whole, its code kept.
    assert "invalid_client - " + "(vendor message withheld: may contain patient data)" in str(
        caught.value
    )


def test_one_token_serves_a_whole_run(sandbox: SandboxServer) -> None:
    created = adapter(sandbox)

    async def run() -> int:
        async with created:
            async for _ in created.fetch_pages(FetchRequest()):
                pass
        auth = created.client._client.auth
        assert isinstance(auth, BioEckoClientCredentials)
        return auth.token_requests

    assert asyncio.run(run()) == 1


# -- pagination, envelope, filters ---------------------------------------------------------


def test_a_bare_array_list_is_paged_until_a_short_page(private_sandbox: SandboxServer) -> None:
    private_sandbox.dialect(DIALECT).bare_array = True  # type: ignore[attr-defined]
    # The default envelope paths cannot read a bare array: that is a contract error.
    with pytest.raises(ContractError, match="expected a list of records at 'data'"):
        collect(adapter(private_sandbox))
    pages = collect(adapter(private_sandbox, records_field=""))
    ids = [raw["id"] for page in pages for raw in page.records]
    assert sorted(ids) == private_sandbox.dataset(DIALECT).ids()
    assert len(ids) == len(set(ids))
    assert pages[-1].position is None


def test_the_date_window_narrows_the_list(sandbox: SandboxServer) -> None:
    start, end = date(2025, 4, 1), date(2025, 6, 30)
    records = all_records(sandbox, FetchRequest(date_from=start, date_to=end))
    expected = {
        inv.id for inv in sandbox.dataset(DIALECT).invoices if start <= inv.invoice_date <= end
    }
    assert {raw["id"] for raw in records} == expected
    assert 0 < len(expected) < len(sandbox.dataset(DIALECT))


def test_status_and_branch_filters_are_sent(sandbox: SandboxServer) -> None:
    paid = all_records(sandbox, status_filter="paid")
    assert paid and {raw["status"] for raw in paid} == {"paid"}
    branch = all_records(sandbox, branch_id="BR-02")
    assert branch and {raw["branch"]["id"] for raw in branch} == {"BR-02"}


def test_a_detail_that_vanished_is_one_record_failure() -> None:
    class DetailGone(httpx.AsyncBaseTransport):
        def __init__(self, path: str) -> None:
            self.inner = httpx.AsyncHTTPTransport()
            self.path = path

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.path == self.path:
                body = {"error": {"code": "not_found", "message": "Invoice not found"}}
                return httpx.Response(404, json=body)
            return await self.inner.handle_async_request(request)

        async def aclose(self) -> None:
            await self.inner.aclose()

    options = SandboxOptions(invoices=30, seed=8, defect_rate=0.0, dialects=(DIALECT,))
    with SandboxServer(options) as server:
        transport = DetailGone("/api/v1/billing/invoices/BEI-000007")
        pages = collect(adapter(server, transport=transport))
    failures = [f for page in pages for f in page.failures]
    assert [f.record_key for f in failures] == ["BEI-000007"]
    assert failures[0].issue.code is Reason.DETAIL_UNAVAILABLE
    assert "not_found - Invoice not found" in failures[0].issue.message
    assert sum(len(page.records) for page in pages) == 29


def test_a_detail_outside_its_envelope_is_a_contract_error(sandbox: SandboxServer) -> None:
    with pytest.raises(ContractError, match="no invoice object at 'invoice'"):
        collect(adapter(sandbox, detail_field="invoice"))


def test_the_detail_envelope_can_be_the_body_itself() -> None:
    created = Adapter.create(
        Config.model_validate(
            {
                "type": "bio_ecko",
                "name": "x",
                "base_url": "https://h.example/api/v1/",
                "client_id": "c",
                "client_secret": "s",
                "detail_field": "",
            }
        )
    )
    assert isinstance(created, Adapter)
    assert created.unwrap_detail({"id": "A"}) == {"id": "A"}
    with pytest.raises(ContractError):
        created.unwrap_detail([{"id": "A"}])


# -- error bodies --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ({"error": {"code": "invalid_parameter", "message": "bad"}}, "invalid_parameter - bad"),
        ({"error": {"code": "not_found"}}, "not_found"),
        ({"error": "invalid_client", "error_description": "nope"}, "invalid_client - nope"),
        ({"message": "Service down"}, "Service down"),
        ({"error": {}}, None),
        ([1, 2], None),
    ],
)
def test_error_bodies_are_described(body: Any, said: str | None) -> None:
    assert describe_bio_ecko_error(httpx.Response(400, json=body)) == said


def test_a_non_json_error_body_is_not_described() -> None:
    assert describe_bio_ecko_error(httpx.Response(502, text="<html>Bad Gateway</html>")) is None


def test_a_refused_parameter_carries_the_vendor_message(sandbox: SandboxServer) -> None:
    with api(sandbox) as client:
        response = client.get("billing/invoices", params={"per_page": 101})
    assert response.status_code == 400
    assert describe_bio_ecko_error(response) == (
        "invalid_parameter - per_page must be an integer between 1 and 100"
    )


# -- the sandbox dialect keeps the vendor's contract ---------------------------------------


def test_token_answer_follows_rfc_6749(sandbox: SandboxServer) -> None:
    answer = login(sandbox, scope="billing:read")
    assert answer.status_code == 200
    body = answer.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
    assert "billing:read" in body["scope"].split()
    everything = login(sandbox).json()["scope"].split()
    assert set(everything) >= {"billing:read", "appointments:read"}


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"data": {"grant_type": "password"}}, 400, "unsupported_grant_type"),
        ({"data": {"client_secret": "wrong"}}, 401, "invalid_client"),
        ({"data": {"scope": "billing:write"}}, 400, "invalid_scope"),
        ({"json": {}}, 400, "invalid_request"),
    ],
)
def test_token_endpoint_refusals(
    sandbox: SandboxServer, kwargs: dict[str, Any], status: int, code: str
) -> None:
    url = sandbox.api_url(DIALECT) + "auth/token"
    if "data" in kwargs:
        form = {"grant_type": "client_credentials", **sandbox.credentials(DIALECT)}
        kwargs = {"data": {**form, **kwargs["data"]}}
    else:
        kwargs = {"json": {"grant_type": "client_credentials", **sandbox.credentials(DIALECT)}}
    response = httpx.post(url, timeout=10, **kwargs)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code


def test_a_token_lacking_billing_read_gets_403(sandbox: SandboxServer) -> None:
    with api(sandbox, scope="appointments:read") as client:
        response = client.get("billing/invoices")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "insufficient_scope"


def test_calls_without_a_live_token_get_401(sandbox: SandboxServer) -> None:
    url = sandbox.api_url(DIALECT) + "billing/invoices"
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {SECRET}"}):
        response = httpx.get(url, headers=headers, timeout=10)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"


def test_tokens_die_after_expires_in(private_sandbox: SandboxServer) -> None:
    dialect = private_sandbox.dialect(DIALECT)
    # Long enough that the first call, right after the login, is inside it on a loaded machine.
    lifetime = 1.5
    dialect.token_lifetime_s = lifetime  # type: ignore[attr-defined]
    answer = login(private_sandbox)
    assert answer.json()["expires_in"] == lifetime
    with api(private_sandbox) as client:
        issued_by = time.monotonic()  # the sandbox (same clock) issued the token before this
        assert client.get("billing/invoices").status_code == 200
        # Past the lifetime by the sandbox's clock, however long the steps above took.
        time.sleep(max(0.0, issued_by + lifetime + 0.05 - time.monotonic()))
        expired = client.get("billing/invoices")
    assert expired.status_code == 401
    assert expired.json()["error"]["code"] == "token_expired"


def test_expire_tokens_invalidates_every_token(private_sandbox: SandboxServer) -> None:
    with api(private_sandbox) as client:
        assert client.get("billing/invoices").status_code == 200
        private_sandbox.dialect(DIALECT).expire_tokens()
        assert client.get("billing/invoices").status_code == 401


def test_list_envelope_and_per_page_rules(sandbox: SandboxServer) -> None:
    with api(sandbox) as client:
        default = client.get("billing/invoices").json()
        assert default["meta"] == {"page": 1, "per_page": 20, "total": 120}
        assert len(default["data"]) == 20
        assert set(default["data"][0]) == {
            "id",
            "invoice_number",
            "patient_name",
            "total",
            "paid",
            "balance",
            "status",
            "date",
        }
        last = client.get("billing/invoices", params={"page": 2, "per_page": 100}).json()
        assert len(last["data"]) == 20
        for bad in ({"per_page": 0}, {"page": 0}, {"status": "open"}, {"date_from": "1/2/2025"}):
            response = client.get("billing/invoices", params=bad)
            assert response.status_code == 400
            assert response.json()["error"]["code"] == "invalid_parameter"
        missing = client.get("billing/invoices/BEI-999999")
        assert missing.status_code == 404
        assert missing.json() == {"error": {"code": "not_found", "message": "Invoice not found"}}


def test_status_words_and_patient_filter(sandbox: SandboxServer) -> None:
    dataset = sandbox.dataset(DIALECT)
    assert {bio_ecko_status(inv) for inv in dataset if inv.defect != "unknown_status"} <= set(
        STATUS_WORDS
    )
    someone = dataset.invoices[0].patient_ref
    with api(sandbox) as client:
        rows = client.get(
            "billing/invoices", params={"patient_id": someone, "per_page": 100}
        ).json()["data"]
    assert {row["id"] for row in rows} == {inv.id for inv in dataset if inv.patient_ref == someone}


def test_details_reconcile_with_the_truth_to_the_paisa(sandbox: SandboxServer) -> None:
    """Every clean invoice: lines add up per the fold rule, totals add up, and the grand total
    and each line amount equal the truth."""
    dataset = sandbox.dataset(DIALECT)
    taxed = lines = igst_invoices = 0
    with api(sandbox) as client:
        summaries = client.get("billing/invoices", params={"per_page": 100}).json()["data"]
        summaries += client.get("billing/invoices", params={"per_page": 100, "page": 2}).json()[
            "data"
        ]
        by_id = {row["id"]: row for row in summaries}
        for invoice in dataset:
            if invoice.defect is not None:
                continue
            detail = exact(client.get(f"billing/invoices/{invoice.id}"))["data"]
            assert detail["patient"]["insurance"]["policy_number"] == invoice.policy_number
            assert detail["patient"]["id"] == invoice.patient_ref
            assert detail["branch"]["name"] == invoice.facility
            totals = detail["totals"]
            gross = discount = tax = Decimal(0)
            for line, item in zip(detail["line_items"], invoice.items, strict=True):
                lines += 1
                taxed += line["tax"] > 0
                assert line["department"] == DEPARTMENTS[item.category]
                assert line["service_name"] == item.description
                assert line["quantity"] == item.quantity
                line_gross = to_cents(line["quantity"] * line["rate"])
                net = line_gross - line["discount"] + line["tax"]
                assert line["amount"] == net == item_total(item)
                if line["tax"]:
                    assert line["tax_rate"] == 18
                    # 18 % of the discounted value, allowing for CGST/SGST rounded apart.
                    exact_tax = (line_gross - line["discount"]) * Decimal("0.18")
                    assert abs(line["tax"] - exact_tax) <= Decimal("0.01")
                else:
                    assert line["tax_rate"] == 0
                if not line["discount"] and not line["tax"]:
                    assert line["rate"] == item.unit_price
                gross += line_gross
                discount += line["discount"]
                tax += line["tax"]
            assert totals["sub_total"] == gross and totals["discount"] == discount
            gst = totals["tax"]
            assert gst["cgst"] + gst["sgst"] + gst["igst"] == tax
            assert gst["cgst"] == gst["sgst"]
            igst_invoices += gst["igst"] > 0
            assert totals["grand_total"] == gross - discount + tax == invoice.total
            paid = sum((p["amount"] for p in detail["payments"]), Decimal(0))
            assert detail["balance"] == invoice.total - paid
            summary = by_id[invoice.id]
            assert Decimal(str(summary["total"])) == invoice.total
            assert Decimal(str(summary["paid"])) == paid
            assert summary["status"] == detail["status"] == bio_ecko_status(invoice)
            if detail["status"] == "paid":
                assert paid == invoice.total
            elif detail["status"] == "partially_paid":
                assert 0 < paid < invoice.total
            else:
                assert paid == 0
    # GST on a realistic share of lines (healthcare services are mostly exempt).
    assert 0.15 < taxed / lines < 0.5
    assert igst_invoices > 0


def test_defects_are_rendered_in_the_vendor_shape(sandbox: SandboxServer) -> None:
    dataset = sandbox.dataset(DIALECT)
    seen: set[str] = set()
    with api(sandbox) as client:
        for invoice_id, kind in dataset.defects().items():
            detail = exact(client.get(f"billing/invoices/{invoice_id}"))["data"]
            seen.add(kind)
            if kind == "unknown_category":
                assert detail["line_items"][0]["department"] == "Miscellaneous"
            elif kind == "no_items":
                assert detail["line_items"] == []
            elif kind == "three_decimal_amount":
                assert detail["totals"]["grand_total"].as_tuple().exponent == -3
            elif kind == "missing_invoice_number":
                assert "invoice_number" not in detail
            elif kind == "bad_date":
                assert detail["date"][2] == "-" and detail["date"][5] == "-"
            elif kind == "unknown_status":
                assert detail["status"] == "refunded"
            elif kind == "invoice_total_mismatch":
                assert detail["totals"]["grand_total"] == dataset.get(invoice_id).total + 5  # type: ignore[union-attr]
    assert len(seen) >= 6


def test_the_financial_summary_adds_up(sandbox: SandboxServer) -> None:
    with api(sandbox) as client:
        summary = exact(client.get("billing/summary"))
    assert summary["total_outstanding"] == summary["total_billed"] - summary["total_collected"]
    assert sum(summary["collection_by_mode"].values()) == summary["total_collected"]
    fee_desks = {desk for desk, _wordings in BIO_ECKO_FEES.values()}
    known = {*DEPARTMENTS.values(), "Miscellaneous", *fee_desks}
    assert set(summary["revenue_by_department"]) <= known


def test_faults_use_the_vendor_error_shape(private_sandbox: SandboxServer) -> None:
    private_sandbox.set_faults(DIALECT, fault_rate=1.0)
    response = httpx.get(private_sandbox.api_url(DIALECT) + "billing/invoices", timeout=10)
    assert response.status_code in (429, 503)
    assert response.json()["error"]["code"] in ("rate_limited", "service_unavailable")


def test_the_client_secret_is_the_sandbox_token(sandbox: SandboxServer) -> None:
    creds = sandbox.credentials(DIALECT)
    assert creds == {"client_id": "sandbox-bio-ecko-client", "client_secret": SECRET}
    raw = sandbox.dialect(DIALECT).connector_source(sandbox.api_url(DIALECT))
    cfg = Config.model_validate(raw)
    assert isinstance(cfg.client_secret, SecretStr) and cfg.type == DIALECT
