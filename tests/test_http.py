"""The HTTP client every adapter uses (respx in place of the vendor): retries with Retry-After,
bounded retry budgets, and the classification of answers into auth, contract and vendor
errors."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any, TypeVar

import httpx
import pytest
import respx
from pydantic import SecretStr

from adapters import meditrak
from connector.config import HttpSettings
from connector.errors import AuthError, ContractError, RetriesExhausted, SourceError
from connector.issues import Reason
from connector.sources.adapter import FetchRequest
from connector.sources.auth import BearerKey
from connector.sources.http import (
    SlidingWindowLimiter,
    SourceClient,
    VendorHttpError,
    retry_after_seconds,
)

BASE = "https://vendor.example/api/"
T = TypeVar("T")


def settings(**overrides: Any) -> HttpSettings:
    # respx patches httpx's own transport, not the aiohttp one used in production.
    fields: dict[str, Any] = {
        "max_retries": 3,
        "backoff_base": "1ms",
        "backoff_max": "2ms",
        "transport": "httpx",
    }
    fields.update(overrides)
    return HttpSettings.model_validate(fields)


def run_client(
    action: Callable[[SourceClient], Awaitable[T]], **overrides: Any
) -> tuple[T, SourceClient]:
    async def go() -> tuple[T, SourceClient]:
        client = SourceClient(BASE, settings(**overrides), auth=BearerKey(SecretStr("k-123")))
        async with client:
            return await action(client), client

    return asyncio.run(go())


def get(path: str = "invoices") -> Callable[[SourceClient], Awaitable[Any]]:
    async def action(client: SourceClient) -> Any:
        return await client.get_json(path, {"page": 1})

    return action


@respx.mock
def test_success_sends_bearer_auth_and_decodes_json() -> None:
    route = respx.get(BASE + "invoices").respond(json={"data": [1, 2]})
    body, client = run_client(get())
    assert body == {"data": [1, 2]}
    request = route.calls.last.request
    assert request.headers["Authorization"] == "Bearer k-123"
    assert request.headers["Accept"] == "application/json"
    assert request.url.params["page"] == "1"
    assert client.stats.requests == 1 and client.stats.retries == 0


@respx.mock
def test_429_waits_as_long_as_retry_after_says() -> None:
    route = respx.get(BASE + "invoices").mock(
        side_effect=[
            httpx.Response(429, headers={"Retry-After": "0.4"}, json={"error": "slow down"}),
            httpx.Response(200, json={"ok": True}),
        ]
    )
    started = time.monotonic()
    body, client = run_client(get())
    elapsed = time.monotonic() - started
    assert body == {"ok": True}
    assert route.call_count == 2
    # The back-off alone would be a millisecond or two; the vendor asked for 0.4 s.
    assert elapsed >= 0.4
    assert client.stats.retries == 1


@respx.mock
def test_a_retry_after_beyond_the_limit_stops_the_source_at_once() -> None:
    route = respx.get(BASE + "invoices").respond(429, headers={"Retry-After": "3600"})
    with pytest.raises(SourceError, match="Retry-After 3600s exceeds 120s") as caught:
        run_client(get())
    assert not isinstance(caught.value, RetriesExhausted)
    assert route.call_count == 1


def test_retry_after_as_seconds_or_http_date() -> None:
    def response(value: str) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": value})

    assert retry_after_seconds(response("7")) == 7
    assert retry_after_seconds(response("-3")) == 0
    assert retry_after_seconds(httpx.Response(429)) is None
    assert retry_after_seconds(response("soon")) is None
    in_a_minute = format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)
    seconds = retry_after_seconds(response(in_a_minute))
    assert seconds is not None and 55 <= seconds <= 60


@respx.mock
def test_503_is_retried_until_it_clears() -> None:
    route = respx.get(BASE + "invoices").mock(
        side_effect=[
            httpx.Response(503, json={"error": "Service Unavailable"}),
            httpx.Response(502, text="bad gateway"),
            httpx.Response(200, json={"ok": True}),
        ]
    )
    body, client = run_client(get())
    assert body == {"ok": True}
    assert route.call_count == 3
    assert client.stats.retries == 2


@respx.mock
def test_retries_are_bounded_then_retries_exhausted() -> None:
    route = respx.get(BASE + "invoices").respond(503, json={"error": "Service Unavailable"})
    with pytest.raises(RetriesExhausted) as caught:
        run_client(get(), max_retries=2)
    assert route.call_count == 3
    message = str(caught.value)
    assert "after 3 attempts" in message
    assert "503" in message and "Service Unavailable" in message


@respx.mock
def test_connection_errors_are_retried_within_the_same_budget() -> None:
    route = respx.get(BASE + "invoices").mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(RetriesExhausted, match="cannot connect"):
        run_client(get(), max_retries=1)
    assert route.call_count == 2
    flaky = respx.get(BASE + "flaky").mock(
        side_effect=[httpx.ReadTimeout("slow"), httpx.Response(200, json=[])]
    )
    assert run_client(get("flaky"))[0] == []
    assert flaky.call_count == 2


@respx.mock
def test_401_is_an_auth_error_carrying_the_vendor_text() -> None:
    route = respx.get(BASE + "invoices").respond(
        401,
        json={"success": False, "error": "Invalid or expired API key", "code": "INVALID_API_KEY"},
    )
    with pytest.raises(AuthError) as caught:
        run_client(get())
    assert route.call_count == 1  # credentials do not get better by asking again
    message = str(caught.value)
    assert "401" in message
    assert "Invalid or expired API key" in message
    assert "INVALID_API_KEY" in message
    assert "k-123" not in message


@respx.mock
def test_403_with_a_fastapi_body_is_an_auth_error() -> None:
    respx.get(BASE + "invoices").respond(403, json={"detail": "Not authenticated"})
    with pytest.raises(AuthError, match="Not authenticated"):
        run_client(get())


@respx.mock
def test_non_json_200_is_a_contract_error_naming_the_content_type() -> None:
    respx.get(BASE + "invoices").respond(
        200, text="<html><body>Login</body></html>", headers={"Content-Type": "text/html"}
    )
    with pytest.raises(ContractError) as caught:
        run_client(get())
    message = str(caught.value)
    assert "text/html" in message
    assert "non-JSON" in message
    assert "/api/invoices" in message
    # Described, never quoted: a vendor page may carry patient data (tests/test_phi_errors.py).
    assert "looks like HTML" in message
    assert "<html>" not in message and "Login" not in message


@respx.mock
def test_other_4xx_are_vendor_errors_with_their_status() -> None:
    respx.get(BASE + "invoices/X").respond(404, json={"detail": "Invoice not found"})
    with pytest.raises(VendorHttpError) as caught:
        run_client(get("invoices/X"))
    assert caught.value.status == 404
    assert "Invoice not found" in str(caught.value)


@respx.mock
def test_redirects_are_not_followed() -> None:
    respx.get(BASE + "invoices").respond(301, headers={"Location": BASE + "invoices/"})
    expected = re.escape("redirected to https://vendor.example/api/invoices/")
    with pytest.raises(ContractError, match=expected):
        run_client(get())


@respx.mock
def test_concurrency_is_bounded_per_source() -> None:
    active = 0
    peak = 0
    full = asyncio.Event()

    async def slow(request: httpx.Request) -> httpx.Response:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        if active >= 3:
            full.set()
        # Held until three are in flight rather than for a fixed time, so that the peak does
        # not depend on how quickly the loop gets the requests going; the timeout only keeps a
        # too-low bound from hanging (`peak == 3` then fails).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(full.wait(), timeout=5)
        await asyncio.sleep(0.01)
        active -= 1
        return httpx.Response(200, json={"n": request.url.params["n"]})

    respx.get(BASE + "invoices").mock(side_effect=slow)

    async def many(client: SourceClient) -> list[Any]:
        return await asyncio.gather(*(client.get_json("invoices", {"n": n}) for n in range(10)))

    bodies, client = run_client(many, concurrency=3)
    assert [b["n"] for b in bodies] == [str(n) for n in range(10)]
    assert peak == 3
    assert client.stats.max_in_flight == 3


def test_sliding_window_limiter_never_exceeds_its_limit() -> None:
    window = 1.0

    async def go() -> list[float]:
        limiter = SlidingWindowLimiter(3, window=window)
        starts = []
        for _ in range(5):
            called = time.monotonic()
            await limiter.acquire()
            returned = time.monotonic()
            # The start the limiter counted (its own clock reading), which must lie within the
            # call: measuring after `acquire` returns instead adds a preemption delay to the
            # first start that can hide a too-early fourth one, or fail a correct limiter.
            start = limiter._starts[-1]
            assert called <= start <= returned
            starts.append(start)
        return starts

    starts = asyncio.run(go())
    # Three starts are free: had the third waited, it would be a whole window after the first
    # (the window is long so that a stalled machine cannot take that long by itself).
    assert starts[2] - starts[0] < window
    assert starts[3] - starts[0] >= window
    assert starts[4] - starts[1] >= window


@respx.mock
def test_a_missing_detail_is_quarantined_not_fatal() -> None:
    """MediTrak's adapter: a 404 on one detail call is DETAIL_UNAVAILABLE for that record."""
    base = "https://meditrak.example/api/v1/"
    respx.get(base + "invoices/").respond(
        json={
            "success": True,
            "invoices": [{"invoice_id": "A"}, {"invoice_id": "B"}, {"patient_name": "no id"}],
            "pagination": {"page": 1, "total_count": 3},
        }
    )
    respx.get(base + "invoices/A/").respond(json={"success": True, "invoice": {"invoice_id": "A"}})
    respx.get(base + "invoices/B/").respond(
        404, json={"success": False, "error": "Invoice not found", "code": "INVOICE_NOT_FOUND"}
    )
    config = meditrak.Config.model_validate(
        {
            "type": "meditrak",
            "name": "m",
            "base_url": base,
            "api_key": "k",
            "http": {"transport": "httpx"},
        }
    )

    async def go() -> list[Any]:
        async with meditrak.Adapter.create(config) as adapter:
            return [page async for page in adapter.fetch_pages(FetchRequest())]

    (page,) = asyncio.run(go())
    assert page.records == [{"invoice_id": "A"}]
    failures = {f.record_key: f.issue.code for f in page.failures}
    assert failures == {"B": Reason.DETAIL_UNAVAILABLE, "": Reason.FIELD_MISSING}
    assert page.position is None
