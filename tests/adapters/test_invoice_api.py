"""Adapter tests for the "Invoice API": the shared contract over loopback against the sandbox
dialect, offset drift while invoices are added or removed mid-walk, the per-run patient cache,
FastAPI error bodies, and the sandbox's fidelity to the vendor's documented contract."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from adapters.invoice_api import PATIENT_KEY, Adapter, Config, describe_fastapi_error
from connector.errors import AuthError, ContractError
from connector.issues import Reason
from connector.sandbox import SandboxOptions, SandboxServer, item_total
from connector.sandbox.invoice_api import USERNAME, InvoiceApiDialect, created_at
from connector.sources.adapter import FetchRequest, SourcePage
from connector.sources.http import VendorHttpError
from tests.contract import FAST_RETRIES, AdapterContract, collect

DIALECT = "invoice_api"
PATIENT_ROUTE = "/api/v1/patient/{patient_id}"


class TestContract(AdapterContract):
    source_type = "invoice_api"
    dialect = "invoice_api"
    token_auth = True
    vendor_error_text = "Incorrect username or password"

    def wrong_credentials(self) -> dict[str, Any]:
        return {"password": "not-the-password"}


# -- helpers ----------------------------------------------------------------------------------


def iapi(server: SandboxServer) -> InvoiceApiDialect:
    dialect = server.dialect(DIALECT)
    assert isinstance(dialect, InvoiceApiDialect)
    return dialect


def make_config(server: SandboxServer, **overrides: Any) -> Config:
    raw = iapi(server).connector_source(server.api_url(DIALECT))
    raw.update({"page_size": 25, "http": dict(FAST_RETRIES)})
    raw.update(overrides)
    return Config.model_validate(raw)


def make_adapter(server: SandboxServer, **overrides: Any) -> Adapter:
    adapter = Adapter.create(make_config(server, **overrides))
    assert isinstance(adapter, Adapter)
    return adapter


def ids_of(pages: list[SourcePage]) -> list[str]:
    return [str(raw["id"]) for page in pages for raw in page.records] + [
        f.record_key for page in pages for f in page.failures
    ]


def served(server: SandboxServer) -> set[str]:
    dialect = iapi(server)
    return {dialect.vendor_id(inv) for inv in server.dataset(DIALECT)}


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    """Read-only for the tests using it: nothing may change its data."""
    options = SandboxOptions(invoices=150, seed=21, defect_rate=0.1, dialects=(DIALECT,))
    with SandboxServer(options) as server:
        yield server


@pytest.fixture
def private_sandbox() -> Iterator[SandboxServer]:
    options = SandboxOptions(
        invoices=120, seed=8, defect_rate=0.0, dialects=(DIALECT,), retry_after_s=0
    )
    with SandboxServer(options) as server:
        yield server


# -- offset drift -----------------------------------------------------------------------------


def walk_changing(
    server: SandboxServer, change_after: dict[int, Callable[[], Any]]
) -> tuple[list[SourcePage], list[int]]:
    """Fetch page by page, changing the dataset after the given page numbers (1-based).

    Concurrency 1 means no page is fetched ahead, so each change lands before the next
    request. Returns the pages and, per page, the pass it belonged to.
    """
    adapter = make_adapter(server, http={**FAST_RETRIES, "concurrency": 1})

    async def run() -> tuple[list[SourcePage], list[int]]:
        pages: list[SourcePage] = []
        passes: list[int] = []
        async with adapter:
            async for page in adapter.fetch_pages(FetchRequest()):
                pages.append(page)
                # A position names the pass it belongs to; the very last page has none.
                previous = passes[-1] if passes else 1
                passes.append(int(page.position["pass"]) if page.position else previous)
                change = change_after.get(len(pages))
                if change is not None:
                    change()
        return pages, passes

    return asyncio.run(run())


def test_invoices_added_while_walking_are_not_skipped(private_sandbox: SandboxServer) -> None:
    server = private_sandbox
    dataset = server.dataset(DIALECT)
    dialect = iapi(server)
    added: list[str] = []
    # One invoice right after the first page, another in the middle of the rescan.
    pages, passes = walk_changing(
        server,
        {
            1: lambda: added.append(dialect.vendor_id(dataset.add())),
            4: lambda: added.append(dialect.vendor_id(dataset.add())),
        },
    )
    ids = ids_of(pages)
    assert len(added) == 2 and len(dataset) == 122
    assert set(ids) == served(server), "an invoice was skipped"
    assert set(added) <= set(ids)
    # The first pass ended as soon as the total changed; later passes start from offset 0.
    assert max(passes) == 3
    assert pages[-1].position is None
    # New invoices sort last by created_at: beyond the first pass's last offset (it planned
    # pages for 120 records), only a rescan can reach them.
    first_pass = {
        i for page, p in zip(pages, passes, strict=True) if p == 1 for i in ids_of([page])
    }
    assert added[0] not in first_pass


def test_invoices_removed_while_walking_do_not_hide_their_neighbours(
    private_sandbox: SandboxServer,
) -> None:
    server = private_sandbox
    dataset = server.dataset(DIALECT)
    dialect = iapi(server)
    first_id = dataset.invoices[0].id
    # Offsets shift down by one after the removal: the 26th invoice moves to offset 24,
    # which the first pass has already read, so a naive walk would never return it.
    shifted = dialect.vendor_id(dataset.invoices[25])
    pages, passes = walk_changing(server, {1: lambda: dataset.delete(first_id)})
    ids = ids_of(pages)
    first_pass = {
        i for page, p in zip(pages, passes, strict=True) if p == 1 for i in ids_of([page])
    }
    assert shifted not in first_pass
    assert served(server) <= set(ids)
    assert shifted in ids


def test_a_source_that_never_settles_fails_instead_of_skipping(
    private_sandbox: SandboxServer,
) -> None:
    dataset = private_sandbox.dataset(DIALECT)
    adds = {n: dataset.add for n in range(1, 40)}
    with pytest.raises(ContractError, match="kept changing"):
        walk_changing(private_sandbox, adds)


# -- patients ---------------------------------------------------------------------------------


def test_each_patient_is_fetched_once_per_run_and_attached(sandbox: SandboxServer) -> None:
    dialect = iapi(sandbox)
    sandbox.reset_stats(DIALECT)
    pages = collect(make_adapter(sandbox))
    records = [raw for page in pages for raw in page.records]
    patients = {dialect.patient_id(inv) for inv in sandbox.dataset(DIALECT)}
    assert sandbox.stats(DIALECT)["by_path"][PATIENT_ROUTE] == len(patients)
    assert len(patients) < len(records)
    for raw in records:
        assert raw[PATIENT_KEY]["id"] == raw["patient_id"]
        assert {"first_name", "last_name", "insurance_policy_number"} <= set(raw[PATIENT_KEY])


def test_patients_are_not_fetched_when_switched_off(sandbox: SandboxServer) -> None:
    sandbox.reset_stats(DIALECT)
    pages = collect(make_adapter(sandbox, fetch_patients=False))
    assert all(PATIENT_KEY not in raw for page in pages for raw in page.records)
    assert PATIENT_ROUTE not in sandbox.stats(DIALECT)["by_path"]


def test_an_unknown_patient_fails_only_its_invoices() -> None:
    invoice = {"id": "a", "patient_id": "11111111-1111-4111-8111-111111111111", "items": []}
    other = {"id": "b", "patient_id": "22222222-2222-4222-8222-222222222222", "items": []}
    calls: list[str] = []

    def vendor(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if request.url.path.endswith("/token"):
            return httpx.Response(200, json={"access_token": "t", "token_type": "bearer"})
        if request.url.path.endswith("/invoice/"):
            body = {"total": 3, "offset": 0, "limit": 100, "data": [invoice, other, invoice]}
            return httpx.Response(200, json=body)
        if "1111" in request.url.path:
            return httpx.Response(404, json={"detail": "Patient not found"})
        return httpx.Response(200, json={"id": other["patient_id"], "first_name": "A"})

    adapter = mock_adapter(vendor)
    (page,) = collect(adapter)
    assert [r["id"] for r in page.records] == ["b"]
    assert [f.record_key for f in page.failures] == ["a", "a"]
    assert page.failures[0].issue.code is Reason.DETAIL_UNAVAILABLE
    assert "Patient not found" in page.failures[0].issue.message
    # The missing patient was asked for once, not once per invoice.
    assert sum(1 for path in calls if "/patient/" in path) == 2


# -- errors, auth and config ------------------------------------------------------------------


def mock_adapter(vendor: Callable[[httpx.Request], httpx.Response], **overrides: Any) -> Adapter:
    config = Config.model_validate(
        {
            "name": "iapi",
            "base_url": "https://billing.example/api/",
            "username": "clinic",
            "password": "s3cret-pass",
            "http": dict(FAST_RETRIES),
            **overrides,
        }
    )
    adapter = Adapter.create(config, transport=httpx.MockTransport(vendor))
    assert isinstance(adapter, Adapter)
    return adapter


def test_fastapi_validation_errors_are_described() -> None:
    body = {
        "detail": [
            {"loc": ["query", "limit"], "msg": "Input should be at most 1000", "type": "x"},
            {"loc": ["body", "password"], "msg": "Field required", "input": "s3cret-pass"},
        ]
    }
    said = describe_fastapi_error(httpx.Response(422, json=body))
    # "at most 1000": a run of four digits could be an id or a policy number, so the
    # message is withheld (connector/sources/bodies.py); the field path stays.
    assert said == (
        "query.limit: (vendor message withheld: may contain patient data); "
        "body.password: Field required"
    )
    assert describe_fastapi_error(httpx.Response(404, json={"detail": "Not Found"})) == "Not Found"
    assert describe_fastapi_error(httpx.Response(502, text="<html>")) is None


def test_a_page_size_the_vendor_refuses_names_the_parameter(sandbox: SandboxServer) -> None:
    with pytest.raises(VendorHttpError) as caught:
        collect(make_adapter(sandbox, page_size=5000))
    assert caught.value.status == 422
    assert "query.limit" in str(caught.value)


def test_login_form_and_token_url() -> None:
    seen: list[httpx.Request] = []

    def vendor(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "POST":
            return httpx.Response(200, json={"access_token": "tok", "token_type": "bearer"})
        return httpx.Response(200, json={"total": 0, "offset": 0, "limit": 100, "data": []})

    collect(mock_adapter(vendor, token_path="auth/jwt/login"))
    login, listing = seen
    assert str(login.url) == "https://billing.example/api/auth/jwt/login"
    assert login.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert login.content == b"grant_type=password&username=clinic&password=s3cret-pass"
    assert listing.url.path == "/api/invoice/"
    assert listing.url.params["order_by"] == "created_at"
    assert listing.headers["Authorization"] == "Bearer tok"


def test_a_rejected_login_says_why_without_the_password() -> None:
    def vendor(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            422,
            json={
                "detail": [
                    {"loc": ["body", "username"], "msg": "Field required", "input": None},
                    # Newer FastAPI echoes the rejected value: here, the password.
                    {
                        "loc": ["body", "password"],
                        "msg": "String should have at most 8 characters",
                        "input": "s3cret-pass",
                    },
                ]
            },
        )

    with pytest.raises(AuthError) as caught:
        collect(mock_adapter(vendor))
    assert "body.username: Field required" in str(caught.value)
    assert "s3cret-pass" not in str(caught.value)


def test_a_refused_login_message_never_echoes_the_password() -> None:
    def vendor(request: httpx.Request) -> httpx.Response:
        # A careless vendor that repeats what it was sent.
        return httpx.Response(401, json={"detail": f"Wrong password {request.content.decode()}"})

    with pytest.raises(AuthError) as caught:
        collect(mock_adapter(vendor))
    assert "401" in str(caught.value)
    assert "s3cret-pass" not in str(caught.value)
    # The vendor's free text echoed the password: withheld whole.
    assert "(vendor message withheld: may contain patient data)" in str(caught.value)


def test_status_filter_and_order_are_sent(sandbox: SandboxServer) -> None:
    dialect = iapi(sandbox)
    paid = collect(make_adapter(sandbox, status_filter="PARTIALY_PAID"))
    expected = {
        dialect.vendor_id(inv)
        for inv in sandbox.dataset(DIALECT)
        if dialect.status_word(inv) == "PARTIALY_PAID"
    }
    assert set(ids_of(paid)) == expected and expected
    newest_first = ids_of(collect(make_adapter(sandbox, order_by="-created_at")))
    assert newest_first == list(reversed(ids_of(collect(make_adapter(sandbox)))))


def test_config_rules_and_secrets() -> None:
    base = {"name": "iapi", "base_url": "https://billing.example/", "username": "u"}
    config = Config.model_validate({**base, "password": "hunter2"})
    assert config.token_url() == "https://billing.example/token"
    assert "hunter2" not in repr(config) and "hunter2" in config.secrets()
    assert "hunter2" not in repr(Adapter.build_auth(config))
    absolute = Config.model_validate(
        {**base, "password": "p", "token_path": "https://login.example/oauth/token"}
    )
    assert absolute.token_url() == "https://login.example/oauth/token"
    with pytest.raises(ValueError, match="plain http"):
        Config.model_validate({**base, "password": "p", "token_path": "http://login.example/t"})
    with pytest.raises(ValueError, match=r"\{id\}"):
        Config.model_validate({**base, "password": "p", "patient_path": "patient/"})
    assert not Adapter.create(config).filters_since()


# -- the sandbox follows the vendor's contract ------------------------------------------------


@pytest.fixture(scope="module")
def api(sandbox: SandboxServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox.api_url(DIALECT), timeout=10) as client:
        login = client.post(
            "token",
            data={
                "grant_type": "password",
                "username": USERNAME,
                "password": sandbox.token(DIALECT),
            },
        )
        assert login.status_code == 200
        assert set(login.json()) == {"access_token", "token_type"}
        client.headers["Authorization"] = f"Bearer {login.json()['access_token']}"
        yield client


def all_rows(api: httpx.Client) -> list[dict[str, Any]]:
    body = api.get("invoice/", params={"limit": 1000}).json()
    assert set(body) == {"total", "offset", "limit", "data"}
    assert body["total"] == len(body["data"])
    rows: list[dict[str, Any]] = body["data"]
    return rows


def test_sandbox_auth_answers_like_fastapi(sandbox: SandboxServer) -> None:
    with httpx.Client(base_url=sandbox.api_url(DIALECT), timeout=10) as client:
        for headers in ({}, {"Authorization": "Bearer nope"}):
            response = client.get("invoice/", headers=headers)
            assert response.status_code == 401
            assert response.json() == {"detail": "Not authenticated"}
            assert response.headers["WWW-Authenticate"] == "Bearer"
        wrong = client.post("token", data={"username": USERNAME, "password": "x"})
        assert wrong.status_code == 401
        assert wrong.json() == {"detail": "Incorrect username or password"}
        missing = client.post("token", data={"username": USERNAME})
        assert missing.status_code == 422
        assert missing.json()["detail"][0]["loc"] == ["body", "password"]


def test_sandbox_redirects_the_slashless_list(api: httpx.Client) -> None:
    response = api.get("invoice", params={"limit": 1})
    assert response.status_code == 307
    assert response.headers["Location"].endswith("/invoice/?limit=1")


def test_sandbox_orders_by_created_at_and_honours_order_by(
    api: httpx.Client, sandbox: SandboxServer
) -> None:
    dataset = sandbox.dataset(DIALECT)
    rows = all_rows(api)
    assert [r["created_at"] for r in rows] == sorted(r["created_at"] for r in rows)
    by_number = api.get("invoice/", params={"limit": 1000, "order_by": "-reg_number"}).json()
    numbers = [r["reg_number"] for r in by_number["data"] if r["reg_number"]]
    assert numbers == sorted(numbers, reverse=True)
    bad = api.get("invoice/", params={"order_by": "price"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "order_by"]
    first = min(dataset, key=lambda inv: created_at(inv, InvoiceApiDialect.id_prefix))
    assert rows[0]["reg_number"] == first.number


def test_sandbox_arithmetic_is_the_vendors_and_nets_to_the_truth(
    api: httpx.Client, sandbox: SandboxServer
) -> None:
    dialect = iapi(sandbox)
    by_id = {dialect.vendor_id(inv): inv for inv in sandbox.dataset(DIALECT)}
    kinds = set()
    for row in all_rows(api):
        truth = by_id[row["id"]]
        if truth.defect is not None:
            continue
        money = {k: Decimal(str(row[k])) for k in ("subtotal", "discount_amount", "total_amount")}
        assert money["total_amount"] == money["subtotal"] - money["discount_amount"]
        assert money["total_amount"] == truth.total
        paid, remaining = Decimal(str(row["paid_amount"])), Decimal(str(row["remaining_amount"]))
        assert paid + remaining == money["total_amount"]
        lines = row["items"]
        assert len(lines) == len(truth.items)
        assert sum(Decimal(str(i["total"])) for i in lines) == money["subtotal"]
        for line, item in zip(lines, truth.items, strict=True):
            gross = Decimal(str(line["quantity"])) * Decimal(str(line["unit_price"]))
            assert Decimal(str(line["total"])) == gross - Decimal(str(line["discount_amount"]))
            if not money["discount_amount"]:
                assert Decimal(str(line["total"])) == item_total(item)
        if money["discount_amount"]:
            kinds.add("percent" if row["discount_percent"] else "amount")
        elif any(line["discount_amount"] for line in lines):
            kinds.add("line")
        assert row["patient_id"] == dialect.patient_id(truth)
        assert row["issue_date"][:10] == truth.invoice_date.isoformat()
    assert kinds == {"percent", "amount", "line"}


def test_sandbox_serves_patients(api: httpx.Client, sandbox: SandboxServer) -> None:
    truth = sandbox.dataset(DIALECT).invoices[0]
    patient_id = iapi(sandbox).patient_id(truth)
    body = api.get(f"patient/{patient_id}").json()
    assert f"{body['first_name']} {body['last_name']}" == truth.patient_name
    assert body["insurance_policy_number"] == truth.policy_number
    missing = api.get("patient/00000000-0000-4000-8000-000000000000")
    assert missing.status_code == 404 and missing.json() == {"detail": "Patient not found"}
    assert api.get("patient/not-a-uuid").status_code == 422


def test_sandbox_detail_matches_the_list(api: httpx.Client) -> None:
    row = all_rows(api)[3]
    assert api.get(f"invoice/{row['id']}").json() == row
    assert api.get("invoice/00000000-0000-4000-8000-000000000000").status_code == 404


def test_expired_tokens_are_refused(sandbox: SandboxServer) -> None:
    with httpx.Client(base_url=sandbox.api_url(DIALECT), timeout=10) as client:
        form = {"grant_type": "password", **sandbox.credentials(DIALECT)}
        token = client.post("token", data=form).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        assert client.get("invoice/", headers=headers, params={"limit": 1}).status_code == 200
        iapi(sandbox).expire_tokens()
        assert client.get("invoice/", headers=headers, params={"limit": 1}).status_code == 401
