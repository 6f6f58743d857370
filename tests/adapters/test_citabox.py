"""CitaBox adapter tests: the shared contract against the sandbox dialect, then what is
CitaBox's own: login memberships and x-clinic-id, NestJS errors, and the one-array answer that
must be stream-parsed, filtered on updatedAt, resumed by element count and retried mid-stream
(by the core paginator and client; the array splitter's own tests are in test_paginate.py).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest

from adapters.citabox import (
    Adapter,
    CitaBoxLogin,
    Config,
    describe_nestjs_error,
)
from connector.errors import AuthError, ContractError, RetriesExhausted
from connector.sandbox import SandboxOptions, SandboxServer
from connector.sandbox.citabox import CLINICS, SANDBOX_EMAIL, CitaBoxDialect
from connector.sources.adapter import FetchRequest, SourcePage
from mappings.citabox import MAPPING
from tests.contract import FAST_RETRIES, AdapterContract, collect
from tests.test_retry_policy import captured_debug_logs

PASSWORD = "s3cret-pw"
CLINIC = CLINICS[0]["clinic_id"]


class TestContract(AdapterContract):
    source_type = "citabox"
    dialect = "citabox"
    token_auth = True
    vendor_error_text = "Invalid credentials"

    def wrong_credentials(self) -> dict[str, Any]:
        return {"password": "not-the-password"}

    def test_expired_token_is_refreshed_once(self, server: SandboxServer) -> None:
        """Adapted from the contract: CitaBox answers the whole list in ONE request, so a token
        expiring between pages cannot be noticed by the stream already flowing. The contract's
        loop is kept (the run completes although the token expires after every page), and the
        refresh is checked where it can happen: the next request re-logs in exactly once."""
        adapter = self.adapter(server)
        dialect = server.dialect(self.dialect)

        async def run() -> tuple[int, int, int]:
            async with adapter:
                count = 0
                async for page in adapter.fetch_pages(FetchRequest()):
                    count += len(page.records) + len(page.failures)
                    dialect.expire_tokens()
                again = 0
                async for page in adapter.fetch_pages(FetchRequest()):
                    again += len(page.records)
                auth = adapter.client._client.auth
                assert isinstance(auth, CitaBoxLogin)
                return count, again, auth.token_requests

        count, again, token_requests = asyncio.run(run())
        assert count == again == len(self.served_ids(server))
        assert token_requests == 2, "the expired token was not renewed exactly once"

    def test_transient_faults_are_retried_to_completion(self) -> None:
        """Adapted from the contract: one CitaBox run is only two requests (login and the
        array), so at the contract's 20 % fault rate a single run may meet no fault at all.
        Runs are repeated at the same rate until faults were injected; every run must still
        hand on every record."""
        options = SandboxOptions(
            invoices=60, seed=5, dialects=(self.dialect,), fault_rate=0.2, retry_after_s=0
        )
        with SandboxServer(options) as server:
            for _ in range(10):
                adapter = self.adapter(server, http={**FAST_RETRIES, "max_retries": 8})
                ids = self.record_ids(collect(adapter))
                assert sorted(ids) == sorted(self.served_ids(server))
                if server.stats(self.dialect)["faults_injected"] >= 2:
                    break
            assert server.stats(self.dialect)["faults_injected"] >= 2


# -- against the sandbox --------------------------------------------------------------------


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    options = SandboxOptions(invoices=80, seed=3, dialects=("citabox",), retry_after_s=0)
    with SandboxServer(options) as server:
        yield server


def sandbox_config(server: SandboxServer, **overrides: Any) -> Config:
    raw = server.dialect("citabox").connector_source(server.api_url("citabox"))
    return Config.model_validate({**raw, "http": dict(FAST_RETRIES), **overrides})


def run_adapter(config: Config, request: FetchRequest | None = None) -> list[SourcePage]:
    return collect(Adapter.create(config), request)


def test_the_sandbox_config_names_the_clinic_that_serves_invoices(
    sandbox: SandboxServer,
) -> None:
    config = sandbox_config(sandbox)
    assert config.clinic_id == CLINIC and not config.several_clinics
    pages = run_adapter(config)
    assert sum(len(p.records) for p in pages) == 80
    assert {r["clinic_id"] for p in pages for r in p.records} == {CLINIC}
    assert not any("_clinic" in r for p in pages for r in p.records), "one clinic: untagged"


def test_no_clinic_id_with_several_memberships_is_an_error_naming_them(
    sandbox: SandboxServer,
) -> None:
    """Never a silent first choice: the source stops at its login, before any invoice."""
    before = sandbox.stats("citabox")["requests"]
    with pytest.raises(AuthError) as caught:
        run_adapter(sandbox_config(sandbox, clinic_id=None))
    message = str(caught.value)
    for clinic in CLINICS:
        assert f"{clinic['clinic_id']} ({clinic['clinic_name']})" in message
    assert "belongs to 2 clinics" in message and "nothing was synced" in message
    assert "one of them, to a list of them, or to 'all'" in message
    assert sandbox.dialect("citabox").token not in message
    assert sandbox.stats("citabox")["requests"] - before == 1, "only the login was sent"


def test_no_clinic_id_with_one_membership_reads_that_clinic() -> None:
    pages = collect(scripted_adapter(scripted_vendor(array_body(3, []), [])))
    assert [r["id"] for p in pages for r in p.records] == [f"inv-{i:05d}" for i in range(3)]


def test_unknown_ids_in_a_list_are_named(sandbox: SandboxServer) -> None:
    config = sandbox_config(sandbox, clinic_id=[CLINIC, "nope-1", "nope-2"])
    with pytest.raises(AuthError) as caught:
        run_adapter(config)
    message = str(caught.value)
    assert "clinic_id 'nope-1', 'nope-2': not among the clinics" in message
    assert "Clínica San José Centro" in message and "Consultorio Escazú" in message


def test_a_configured_clinic_is_sent_as_x_clinic_id(sandbox: SandboxServer) -> None:
    other = CLINICS[1]["clinic_id"]
    pages = run_adapter(sandbox_config(sandbox, clinic_id=other))
    # The sandbox's second clinic has no invoices: one empty, final page.
    assert [(p.records, p.position) for p in pages] == [([], None)]


def test_a_clinic_outside_the_memberships_is_a_clear_auth_error(sandbox: SandboxServer) -> None:
    config = sandbox_config(sandbox, clinic_id="clinic-that-is-not-mine")
    with pytest.raises(AuthError) as caught:
        run_adapter(config)
    message = str(caught.value)
    assert "clinic-that-is-not-mine" in message
    assert "Clínica San José Centro" in message and "Consultorio Escazú" in message
    assert sandbox.dialect("citabox").token not in message


def test_a_login_validation_error_reads_the_list_message(sandbox: SandboxServer) -> None:
    with pytest.raises(AuthError) as caught:
        run_adapter(sandbox_config(sandbox, email="not-an-email"))
    assert "400" in str(caught.value)
    assert "email must be an email" in str(caught.value)


def test_incremental_filter_is_inclusive_and_resumable(sandbox: SandboxServer) -> None:
    invoices = sandbox.dataset("citabox").invoices
    moments = sorted(inv.updated_at for inv in invoices)
    since = moments[len(moments) // 2]
    config = sandbox_config(sandbox, page_size=7)
    pages = run_adapter(config, FetchRequest(since=since))
    ids = [r["id"] for p in pages for r in p.records]
    dialect = sandbox.dialect("citabox")
    expected = {dialect.vendor_id(inv) for inv in invoices if inv.updated_at >= since}
    assert sorted(ids) == sorted(expected)
    # Positions count array elements, filtered ones included, so resuming with the same
    # cursor hands on exactly the rest.
    position = pages[0].position
    assert position is not None and position["skip"] >= len(pages[0].records)
    rest = run_adapter(config, FetchRequest(since=since, resume=position))
    assert [r["id"] for r in pages[0].records] + [r["id"] for p in rest for r in p.records] == ids


def test_resume_past_the_end_yields_one_empty_final_page(sandbox: SandboxServer) -> None:
    pages = run_adapter(sandbox_config(sandbox), FetchRequest(resume={"skip": 10_000}))
    assert [(p.records, p.position) for p in pages] == [([], None)]


def test_a_broken_resume_position_is_refused(sandbox: SandboxServer) -> None:
    with pytest.raises(ContractError):
        run_adapter(sandbox_config(sandbox), FetchRequest(resume={"skip": "ten"}))


def test_the_dialect_speaks_nestjs(sandbox: SandboxServer) -> None:
    api = sandbox.api_url("citabox")
    with httpx.Client(base_url=api, timeout=10) as http:
        login = http.post("auth/login", json={"email": SANDBOX_EMAIL, "password": "wrong"})
        assert login.status_code == 401
        assert login.json() == {
            "statusCode": 401,
            "message": "Invalid credentials",
            "error": "Unauthorized",
        }
        invalid = http.post("auth/login", json={"email": "x"})
        assert invalid.status_code == 400
        assert invalid.json()["message"] == [
            "email must be an email",
            "password must be a string",
        ]
        good = http.post(
            "auth/login",
            json={"email": SANDBOX_EMAIL, "password": sandbox.dialect("citabox").token},
        )
        assert good.status_code == 201
        token = good.json()["access_token"]
        assert [m["clinic_id"] for m in good.json()["memberships"]] == [
            c["clinic_id"] for c in CLINICS
        ]
        bearer = {"Authorization": f"Bearer {token}"}
        assert http.get("billing/invoices", headers=bearer).status_code == 403
        foreign = http.get("billing/invoices", headers={**bearer, "x-clinic-id": "nope"})
        assert foreign.status_code == 403 and foreign.json()["error"] == "Forbidden"
        listed = http.get("billing/invoices", headers={**bearer, "x-clinic-id": CLINIC})
        assert listed.status_code == 200 and isinstance(listed.json(), list)
        # Amounts are integer cents of colones.
        assert all(
            isinstance(r["total_amount"], int)
            for r in listed.json()
            if r["id"] not in _defective(sandbox, "three_decimal_amount")
        )
        sandbox.dialect("citabox").expire_tokens()
        expired = http.get("billing/invoices", headers={**bearer, "x-clinic-id": CLINIC})
        assert expired.status_code == 401
        assert expired.json() == {"statusCode": 401, "message": "Unauthorized"}


def _defective(server: SandboxServer, kind: str) -> set[str]:
    dialect = server.dialect("citabox")
    dataset = server.dataset("citabox")
    return {dialect.vendor_id(inv) for inv in dataset.invoices if inv.defect == kind}


# -- against a scripted vendor (httpx.MockTransport) ----------------------------------------


def scripted_record(index: int) -> dict[str, Any]:
    return {
        "id": f"inv-{index:05d}",
        "total_amount": 1_500_000 + index,
        "service_description": 'Consulta médica general [control] {"ok"} \\ fin',
        "payment_status": "PAID",
        "hacienda_status": "ACCEPTED",
        "createdAt": "2025-03-01T15:00:00.000Z",
        "updatedAt": f"2025-03-{1 + index % 28:02d}T15:00:00.000Z",
        "patient": {"first_name": "Ñandú", "last_name": "Pérez"},
    }


Body = Callable[[int], AsyncIterator[bytes]]


def scripted_vendor(body: Body, seen: list[httpx.Request]) -> httpx.MockTransport:
    """Login plus a list whose body the test scripts per attempt (1, 2, ...)."""
    attempts = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal attempts
        seen.append(request)
        if request.url.path == "/auth/login":
            sent = json.loads(request.content)
            if sent != {"email": "caja@clinica.cr", "password": PASSWORD}:
                return httpx.Response(401, json={"statusCode": 401, "message": "Invalid"})
            memberships = [{"clinic_id": CLINIC, "clinic_name": "Centro", "role": "ADMIN"}]
            return httpx.Response(201, json={"access_token": "tok", "memberships": memberships})
        assert request.headers["Authorization"] == "Bearer tok"
        assert request.headers["x-clinic-id"] == CLINIC
        attempts += 1
        return httpx.Response(200, content=body(attempts))

    return httpx.MockTransport(handler)


def scripted_adapter(transport: httpx.MockTransport, **overrides: Any) -> Adapter:
    config = Config.model_validate(
        {
            "type": "citabox",
            "name": "citabox",
            "base_url": "https://api.citabox.example/",
            "email": "caja@clinica.cr",
            "password": PASSWORD,
            "http": dict(FAST_RETRIES),
            **overrides,
        }
    )
    adapter = Adapter.create(config, transport=transport)
    assert isinstance(adapter, Adapter)
    return adapter


def array_body(count: int, produced: list[int], fail_after: int | None = None) -> Body:
    async def body(attempt: int) -> AsyncIterator[bytes]:
        yield b"[\n  "
        for index in range(count):
            if attempt == 1 and fail_after is not None and index == fail_after:
                raise httpx.ReadError("connection reset by peer")
            produced.append(index)
            yield (b",\n  " if index else b"") + orjson.dumps(scripted_record(index))
        yield b"\n]"

    return body


def test_the_array_is_streamed_not_loaded_whole() -> None:
    produced: list[int] = []
    seen: list[httpx.Request] = []
    adapter = scripted_adapter(scripted_vendor(array_body(5000, produced), seen), page_size=50)

    async def run() -> tuple[int, int]:
        async with adapter:
            pages = adapter.fetch_pages(FetchRequest())
            first = await anext(pages)
            produced_at_first_page = len(produced)
            rest = [page async for page in pages]
            return produced_at_first_page, len(first.records) + sum(len(p.records) for p in rest)

    produced_at_first_page, total = asyncio.run(run())
    assert total == 5000
    # The first page was handed on while most of the body had not even been produced.
    assert produced_at_first_page < 1000


def test_a_connection_dropped_mid_stream_resumes_after_what_was_read() -> None:
    produced: list[int] = []
    seen: list[httpx.Request] = []
    body = array_body(300, produced, fail_after=120)
    adapter = scripted_adapter(scripted_vendor(body, seen), page_size=40)
    with captured_debug_logs() as logs:
        pages = collect(adapter)
    ids = [r["id"] for p in pages for r in p.records]
    assert ids == [f"inv-{i:05d}" for i in range(300)]
    assert adapter.client.stats.requests == 2
    assert adapter.client.stats.retries == 1
    # Retried by the source client's policy, not by the adapter.
    (retry,) = [e for e in logs if e["event"] == "http.retry"]
    assert retry["source"] == "citabox" and "connection reset" in retry["error"]
    assert [r.url.path for r in seen] == ["/auth/login", "/billing/invoices", "/billing/invoices"]


def test_a_connection_that_keeps_dropping_fails_in_bounded_attempts() -> None:
    async def always_drops(attempt: int) -> AsyncIterator[bytes]:
        yield b"["
        raise httpx.ReadError("connection reset by peer")

    seen: list[httpx.Request] = []
    adapter = scripted_adapter(
        scripted_vendor(always_drops, seen), http={**FAST_RETRIES, "max_retries": 2}
    )
    with pytest.raises(RetriesExhausted, match="still failing after 3 attempts") as caught:
        collect(adapter)
    assert "connection reset" in str(caught.value)
    assert len([r for r in seen if r.url.path == "/billing/invoices"]) == 3


def test_a_truncated_array_is_a_contract_error() -> None:
    async def truncated(attempt: int) -> AsyncIterator[bytes]:
        yield b'[{"id": "a"}, {"id": "b"'

    with pytest.raises(ContractError, match=r"ended early|invalid JSON"):
        collect(scripted_adapter(scripted_vendor(truncated, [])))


def test_an_envelope_instead_of_an_array_is_a_contract_error() -> None:
    async def envelope(attempt: int) -> AsyncIterator[bytes]:
        yield b'{"data": []}'

    with pytest.raises(ContractError, match="expected a JSON array"):
        collect(scripted_adapter(scripted_vendor(envelope, [])))


def test_records_without_a_readable_updated_at_are_kept_by_the_filter() -> None:
    records = [
        {"id": "old", "updatedAt": "2025-01-01T00:00:00.000Z"},
        {"id": "new", "updatedAt": "2025-06-01T00:00:00.000Z"},
        {"id": "naive-local", "updatedAt": "2025-05-31T19:00:00"},  # 01:00 UTC next day
        {"id": "unreadable", "updatedAt": "ayer"},
        {"id": "missing"},
        ["not", "an", "object"],
    ]

    async def body(attempt: int) -> AsyncIterator[bytes]:
        yield orjson.dumps(records)

    since = datetime(2025, 6, 1, tzinfo=UTC)
    pages = collect(scripted_adapter(scripted_vendor(body, [])), FetchRequest(since=since))
    kept = [r["id"] if isinstance(r, dict) else "list" for p in pages for r in p.records]
    assert kept == ["new", "naive-local", "unreadable", "missing", "list"]


def test_a_second_401_after_renewing_is_an_auth_error() -> None:
    logins = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal logins
        if request.url.path == "/auth/login":
            logins += 1
            memberships = [{"clinic_id": CLINIC}]
            return httpx.Response(201, json={"access_token": "tok", "memberships": memberships})
        return httpx.Response(401, json={"statusCode": 401, "message": "Unauthorized"})

    with pytest.raises(AuthError, match="401 from GET billing/invoices: Unauthorized"):
        collect(scripted_adapter(httpx.MockTransport(handler)))
    assert logins == 2


def test_a_login_without_memberships_is_an_auth_error() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(201, json={"access_token": "tok", "memberships": []})

    with pytest.raises(AuthError, match="no clinic memberships"):
        collect(scripted_adapter(httpx.MockTransport(handler)))


def test_a_refused_login_never_echoes_the_password() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        # A careless vendor that repeats what it was sent.
        said = f"wrong password {json.loads(request.content)['password']}"
        return httpx.Response(401, json={"statusCode": 401, "message": said})

    with pytest.raises(AuthError) as caught:
        collect(scripted_adapter(httpx.MockTransport(handler)))
    assert PASSWORD not in str(caught.value)
    # The vendor's free text echoed the password: withheld whole.
    assert "(vendor message withheld: may contain patient data)" in str(caught.value)


def test_secrets_stay_out_of_reprs() -> None:
    adapter = scripted_adapter(httpx.MockTransport(lambda r: httpx.Response(500)))
    assert PASSWORD not in repr(adapter.config)
    assert PASSWORD not in repr(adapter.client._client.auth)
    assert adapter.config.secrets() == [PASSWORD]


def test_config_defaults() -> None:
    config = Config.model_validate(
        {
            "name": "cb",
            "base_url": "https://api.citabox.example",
            "email": "a@b.cr",
            "password": "p",
        }
    )
    assert (config.currency, config.timezone, config.page_size) == (
        "CRC",
        "America/Costa_Rica",
        500,
    )
    assert config.clinic_id is None and config.facility is None
    assert config.mapping_options == {"facility": None}


# -- NestJS error bodies --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (b'{"statusCode":401,"message":"Unauthorized"}', "Unauthorized"),
        (
            b'{"statusCode":403,"message":"No access to this clinic","error":"Forbidden"}',
            "Forbidden: No access to this clinic",
        ),
        (
            b'{"statusCode":400,"error":"Bad Request",'
            b'"message":["email must be an email","password should not be empty"]}',
            "Bad Request: email must be an email; password should not be empty",
        ),
        (b'{"error":"Service Unavailable"}', "Service Unavailable"),
        (b"<html>502 Bad Gateway</html>", None),
    ],
)
def test_describe_nestjs_error(body: bytes, said: str | None) -> None:
    assert describe_nestjs_error(httpx.Response(400, content=body)) == said


# -- clinic_id shapes ---------------------------------------------------------------------


def config_with(clinic_id: Any) -> Config:
    return Config.model_validate(
        {
            "name": "cb",
            "base_url": "https://api.citabox.example",
            "email": "a@b.cr",
            "password": "p",
            "clinic_id": clinic_id,
        }
    )


@pytest.mark.parametrize(
    ("given", "read", "several"),
    [
        (None, None, False),
        (" c-1 ", "c-1", False),
        (42, "42", False),
        ("all", "all", True),
        ("ALL", "all", True),
        (["c-1"], ["c-1"], True),
        (["c-2", " c-1"], ["c-2", "c-1"], True),
    ],
)
def test_clinic_id_shapes(given: Any, read: Any, several: bool) -> None:
    config = config_with(given)
    assert (config.clinic_id, config.several_clinics) == (read, several)


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ("", "clinic_id is empty"),
        ([], "clinic_id list is empty"),
        (["c-1", "c-1"], "'c-1' is listed twice"),
        (["c-1", "all"], "write 'all' alone"),
        (["c-1", ""], "is not a clinic id"),
        ([True], "is not a clinic id"),
        ({"id": "c-1"}, "a list of clinic ids or 'all'"),
    ],
)
def test_clinic_id_shapes_refused_at_load(given: Any, said: str) -> None:
    with pytest.raises(ValueError, match=said):
        config_with(given)


# -- a clinic group against the sandbox ---------------------------------------------------

GROUP_INVOICES = 90


@pytest.fixture(scope="module")
def group() -> Iterator[SandboxServer]:
    options = SandboxOptions(
        invoices=GROUP_INVOICES, seed=4, dialects=("citabox",), retry_after_s=0
    )
    with SandboxServer(options) as server:
        dialect = server.dialect("citabox")
        assert isinstance(dialect, CitaBoxDialect)
        dialect.invoice_clinics = 3
        yield server


def group_roster(server: SandboxServer) -> list[str]:
    dialect = server.dialect("citabox")
    assert isinstance(dialect, CitaBoxDialect)
    return [c["clinic_id"] for c in dialect.memberships]


def test_all_reads_every_clinic_in_membership_order_each_record_tagged(
    group: SandboxServer,
) -> None:
    config = sandbox_config(group, page_size=10)
    assert config.clinic_id == "all" and config.several_clinics
    adapter = Adapter.create(config)
    assert isinstance(adapter, Adapter) and adapter.filters_since()
    pages = collect(adapter)
    records = [r for p in pages for r in p.records]
    assert len(records) == GROUP_INVOICES
    read_order = list(dict.fromkeys(r["_clinic"]["clinic_id"] for r in records))
    roster = group_roster(group)
    assert read_order == roster[:3], "the fourth clinic has no invoices"
    assert all(r["_clinic"]["clinic_id"] == r["clinic_id"] for r in records)
    dialect = group.dialect("citabox")
    assert isinstance(dialect, CitaBoxDialect)
    assert {MAPPING.record_id(r) for r in records} == {
        dialect.stored_key(inv) for inv in group.dataset("citabox").invoices
    }
    # Every page but the last says where to go on; the last clinic's empty array ends it.
    assert pages[-1].position is None and pages[-1].records == []
    assert all(p.position is not None and "clinic" in p.position for p in pages[:-1])
    auth = adapter.client._client.auth
    assert isinstance(auth, CitaBoxLogin) and auth.token_requests == 1


def test_a_list_reads_its_clinics_in_its_order(group: SandboxServer) -> None:
    roster = group_roster(group)
    pages = run_adapter(sandbox_config(group, clinic_id=[roster[2], roster[0]]))
    order = list(dict.fromkeys(r["_clinic"]["clinic_id"] for p in pages for r in p.records))
    assert order == [roster[2], roster[0]]


def test_resuming_any_group_position_hands_on_exactly_the_rest(group: SandboxServer) -> None:
    config = sandbox_config(group, page_size=7)
    pages = run_adapter(config)
    keys = [MAPPING.record_id(r) for p in pages for r in p.records]
    clinics_seen = set()
    for index, page in enumerate(pages[:-1]):
        assert page.position is not None
        clinics_seen.add(page.position["clinic"])
        rest = run_adapter(config, FetchRequest(resume=page.position))
        handed = [MAPPING.record_id(r) for p in pages[: index + 1] for r in p.records]
        assert handed + [MAPPING.record_id(r) for p in rest for r in p.records] == keys
    assert clinics_seen == set(group_roster(group)), "positions in and between every clinic"


def test_a_resume_position_of_the_other_shape_starts_over(group: SandboxServer) -> None:
    """The setting changed between a cut-off run and its resumption: nothing is skipped."""
    grouped = run_adapter(sandbox_config(group), FetchRequest(resume={"skip": 20}))
    assert sum(len(p.records) for p in grouped) == GROUP_INVOICES
    roster = group_roster(group)
    single = sandbox_config(group, clinic_id=roster[0])
    resume = {"clinics_done": [], "clinic": roster[0], "skip": 5}
    alone = run_adapter(single, FetchRequest(resume=resume))
    assert len(run_adapter(single)) == len(alone) > 0
    assert sum(len(p.records) for p in alone) == sum(len(p.records) for p in run_adapter(single))


def test_a_clinic_no_longer_selected_is_dropped_on_resume(group: SandboxServer) -> None:
    roster = group_roster(group)
    config = sandbox_config(group, clinic_id=[roster[1], roster[2]])
    resume = {"clinics_done": [roster[1]], "clinic": roster[0], "skip": 3}
    pages = run_adapter(config, FetchRequest(resume=resume))
    assert {r["_clinic"]["clinic_id"] for p in pages for r in p.records} == {roster[2]}


@pytest.mark.parametrize(
    "position",
    [
        {"clinics_done": "c-1", "clinic": "c-2", "skip": 0},
        {"clinics_done": [], "clinic": 7, "skip": 0},
        {"clinics_done": [], "clinic": "c-2", "skip": -1},
        {"clinics_done": [], "clinic": "c-2", "skip": True},
    ],
)
def test_a_broken_group_position_is_refused(group: SandboxServer, position: Any) -> None:
    with pytest.raises(ContractError, match="unusable resume position"):
        run_adapter(sandbox_config(group), FetchRequest(resume=position))


def test_a_group_login_refused_never_echoes_the_password() -> None:
    """A group logs in by itself (to learn its clinics first): the same care as the flow's."""

    async def handler(request: httpx.Request) -> httpx.Response:
        said = f"wrong password {json.loads(request.content)['password']}"
        return httpx.Response(401, json={"statusCode": 401, "message": said})

    with pytest.raises(AuthError) as caught:
        collect(scripted_adapter(httpx.MockTransport(handler), clinic_id="all"))
    assert "401" in str(caught.value) and PASSWORD not in str(caught.value)


LATEST_1 = "2025-03-03T15:00:00+00:00"  # scripted_record(2)'s updatedAt


def test_a_group_sends_each_clinic_its_own_header_and_logs_in_once() -> None:
    seen: list[httpx.Request] = []
    memberships = [{"clinic_id": c, "clinic_name": c.upper()} for c in ("c-1", "c-2")]

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/auth/login":
            return httpx.Response(201, json={"access_token": "tok", "memberships": memberships})
        clinic = request.headers["x-clinic-id"]
        body = [{**scripted_record(i), "id": f"{clinic}-{i}", "clinic_id": clinic} for i in (1, 2)]
        return httpx.Response(200, content=orjson.dumps(body))

    pages = collect(scripted_adapter(httpx.MockTransport(handler), clinic_id="all"))
    assert [MAPPING.record_id(r) for p in pages for r in p.records] == [
        "c-1:c-1-1",
        "c-1:c-1-2",
        "c-2:c-2-1",
        "c-2:c-2-2",
    ]
    assert [(r.url.path, r.headers.get("x-clinic-id")) for r in seen] == [
        ("/auth/login", None),
        ("/billing/invoices", "c-1"),
        ("/billing/invoices", "c-2"),
    ]
    assert "Authorization" not in seen[0].headers
    # One page per clinic: the first says the next run goes on with the second.
    assert [p.position for p in pages] == [
        {"clinics_done": ["c-1"], "clinic": "c-2", "skip": 0, "latest": {"c-1": LATEST_1}},
        None,
    ]


def test_a_group_filters_each_clinic_on_its_own_carried_cursor() -> None:
    memberships = [{"clinic_id": c, "clinic_name": c.upper()} for c in ("c-1", "c-2", "c-3")]

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/auth/login":
            return httpx.Response(201, json={"access_token": "tok", "memberships": memberships})
        clinic = request.headers["x-clinic-id"]
        body = [{**scripted_record(i), "id": f"{clinic}-{i}"} for i in range(1, 11)]
        return httpx.Response(200, content=orjson.dumps(body))

    carried = {
        "clinic_cursors": {
            "c-1": "2025-03-09T15:00:00+00:00",
            "c-2": "2025-03-04T15:00:00+00:00",
        }
    }
    # Any `since` makes the run incremental; each clinic then uses its own cursor (minus
    # the lookback, 0 here), and c-3, new to the group, is read whole.
    request = FetchRequest(since=datetime(2030, 1, 1, tzinfo=UTC), carried=carried)
    adapter = scripted_adapter(httpx.MockTransport(handler), clinic_id="all", lookback="0s")
    pages = collect(adapter, request)
    ids = [r["id"] for p in pages for r in p.records]
    assert ids == [
        "c-1-8",
        "c-1-9",
        "c-1-10",
        *(f"c-2-{i}" for i in range(3, 11)),
        *(f"c-3-{i}" for i in range(1, 11)),
    ]
    assert pages[-1].carry == {
        "clinic_cursors": {c: "2025-03-11T15:00:00+00:00" for c in ("c-1", "c-2", "c-3")}
    }
    assert all(p.carry is None for p in pages[:-1])
