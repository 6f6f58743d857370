"""The one status → retry / fatal / skip path: the retry policy on tenacity (entered only after
a first attempt failed), the adapter's classification hook, and streamed answers retried by the
same client code (httpx.MockTransport in place of the vendor)."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any, TypeVar

import httpx
import pytest
import structlog
from pydantic import SecretStr
from tenacity import AsyncRetrying

from adapters import meditrak
from connector.config import HttpSettings
from connector.errors import (
    AuthError,
    RetriableError,
    RetriesExhausted,
    SourceError,
)
from connector.issues import Reason
from connector.sources import http, retry
from connector.sources.adapter import FetchRequest, SourcePage
from connector.sources.auth import BearerKey, OAuth2ClientCredentials
from connector.sources.http import (
    CertificateRejected,
    RecordUnavailable,
    SourceClient,
    VendorHttpError,
)
from connector.sources.paginate import JsonArraySplitter, SingleArrayPaginator

BASE = "https://vendor.example/api/"
T = TypeVar("T")
Handler = Callable[[httpx.Request], Coroutine[None, None, httpx.Response]]


def settings(**overrides: Any) -> HttpSettings:
    fields: dict[str, Any] = {"max_retries": 3, "backoff_base": "1ms", "backoff_max": "2ms"}
    fields.update(overrides)
    return HttpSettings.model_validate(fields)


def with_client(
    handler: Handler,
    action: Callable[[SourceClient], Awaitable[T]],
    **overrides: Any,
) -> tuple[T, SourceClient]:
    async def go() -> tuple[T, SourceClient]:
        client = SourceClient(
            BASE,
            settings(**overrides),
            auth=BearerKey(SecretStr("k-123")),
            transport=httpx.MockTransport(handler),
            source="vendor",
        )
        async with client:
            return await action(client), client

    return asyncio.run(go())


def scripted(*answers: httpx.Response | Exception) -> tuple[Handler, list[httpx.Request]]:
    """A vendor answering each request with the next scripted answer (the last one repeats)."""
    seen: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = answers[min(len(seen), len(answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer

    return handler, seen


async def get_invoices(client: SourceClient) -> Any:
    return await client.get_json("invoices")


@pytest.fixture
def no_tenacity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any construction of the retry controller fails the test."""

    def refuse(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("AsyncRetrying was built")

    monkeypatch.setattr(retry, "AsyncRetrying", refuse)


@pytest.fixture
def retry_logs() -> Iterator[list[MutableMapping[str, Any]]]:
    with captured_debug_logs() as logs:
        yield logs


@contextmanager
def captured_debug_logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """Every event, debug ones included (`http.retry` is debug), whatever level an earlier
    test configured logging at."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        with structlog.testing.capture_logs() as logs:
            yield logs
    finally:
        structlog.configure(**saved)


# -- the common path costs nothing extra ----------------------------------------------------


@pytest.mark.usefixtures("no_tenacity")
def test_a_success_builds_no_retry_controller() -> None:
    handler, seen = scripted(httpx.Response(200, json={"ok": True}))
    body, client = with_client(handler, get_invoices)
    assert body == {"ok": True} and len(seen) == 1
    assert (client.stats.requests, client.stats.retries) == (1, 0)


@pytest.mark.usefixtures("no_tenacity")
def test_a_fatal_first_answer_builds_no_retry_controller_either() -> None:
    handler, seen = scripted(httpx.Response(401, json={"error": "bad key"}))
    with pytest.raises(AuthError):
        with_client(handler, get_invoices)
    assert len(seen) == 1


@pytest.mark.usefixtures("no_tenacity")
def test_a_streamed_answer_that_succeeds_builds_no_retry_controller() -> None:
    handler, _ = scripted(httpx.Response(200, json=list(range(5))))
    items, _client = with_client(handler, stream_all)
    assert items == [(i, i) for i in range(5)]


def test_the_controller_is_built_once_a_first_attempt_failed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built: list[AsyncRetrying] = []

    class Spy(AsyncRetrying):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            built.append(self)

    monkeypatch.setattr(retry, "AsyncRetrying", Spy)
    handler, seen = scripted(httpx.Response(503), httpx.Response(503), httpx.Response(200, json=1))
    body, client = with_client(handler, get_invoices)
    assert body == 1 and len(seen) == 3
    assert len(built) == 1  # one controller for the whole run of failures
    assert client.stats.retries == 2


# -- what is retried, how long it waits, when it gives up -----------------------------------


def test_retry_after_is_the_wait_and_every_retry_is_logged(
    retry_logs: list[MutableMapping[str, Any]],
) -> None:
    handler, seen = scripted(
        httpx.Response(429, headers={"Retry-After": "0.3"}, json={"error": "rate limit exceeded"}),
        httpx.Response(503),
        httpx.Response(200, json={"ok": True}),
    )
    started = time.monotonic()
    body, client = with_client(handler, get_invoices, backoff_base="0.1s", backoff_max="0.15s")
    assert time.monotonic() - started >= 0.3
    assert body == {"ok": True} and len(seen) == 3
    retries = [e for e in retry_logs if e["event"] == "http.retry"]
    assert [(e["source"], e["attempt"]) for e in retries] == [("vendor", 1), ("vendor", 2)]
    assert "429 from GET invoices: rate limit exceeded" in retries[0]["error"]
    # The vendor's hint, then full jitter within the second step (0.1 s * 2, capped 0.15 s).
    assert retries[0]["wait_s"] == pytest.approx(0.3)
    assert 0 <= retries[1]["wait_s"] <= 0.15
    assert client.stats.retries == 2


@pytest.mark.parametrize(
    "failure",
    [
        httpx.Response(500),
        httpx.Response(502),
        httpx.Response(503),
        httpx.Response(504),
        httpx.Response(408),
        httpx.ReadTimeout("slow"),
        httpx.ConnectTimeout("slow to connect"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.ConnectError("refused"),
    ],
    ids=lambda f: str(getattr(f, "status_code", type(f).__name__)),
)
def test_transient_failures_are_retried_up_to_max_retries(
    failure: httpx.Response | Exception,
) -> None:
    handler, seen = scripted(failure)
    with pytest.raises(RetriesExhausted, match="GET invoices still failing after 3 attempts"):
        with_client(handler, get_invoices, max_retries=2)
    assert len(seen) == 3
    handler, seen = scripted(failure, failure, httpx.Response(200, json=[]))
    body, client = with_client(handler, get_invoices, max_retries=2)
    assert body == [] and len(seen) == 3 and client.stats.retries == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 410, 422])
def test_client_errors_are_fatal_at_once(status: int) -> None:
    handler, seen = scripted(httpx.Response(status, json={"detail": "no"}))
    with pytest.raises(SourceError) as caught:
        with_client(handler, get_invoices)
    assert not isinstance(caught.value, RetriesExhausted)
    assert len(seen) == 1
    if status in (401, 403):
        assert isinstance(caught.value, AuthError)
    else:
        assert isinstance(caught.value, VendorHttpError) and caught.value.status == status
        # 404/410 say "this one record", which a caller of one record may skip.
        assert isinstance(caught.value, RecordUnavailable) == (status in (404, 410))


def test_a_rejected_certificate_is_fatal_at_once() -> None:
    refused = httpx.ConnectError("handshake failed")
    refused.__cause__ = ssl.SSLCertVerificationError(1, "certificate verify failed")
    handler, seen = scripted(refused)
    with pytest.raises(CertificateRejected):
        with_client(handler, get_invoices)
    assert len(seen) == 1


def test_a_retry_after_beyond_the_limit_on_a_later_attempt_still_means_down() -> None:
    handler, seen = scripted(
        httpx.Response(503), httpx.Response(429, headers={"Retry-After": "600"})
    )
    with pytest.raises(SourceError, match="Retry-After 600s exceeds 120s") as caught:
        with_client(handler, get_invoices, max_retries=1)
    assert not isinstance(caught.value, RetriesExhausted)
    assert len(seen) == 2


def test_max_retries_zero_makes_one_attempt() -> None:
    handler, seen = scripted(httpx.Response(503))
    with pytest.raises(RetriesExhausted, match="after 1 attempts"):
        with_client(handler, get_invoices, max_retries=0)
    assert len(seen) == 1


def test_a_refused_login_answer_is_retried_with_its_retry_after() -> None:
    logins = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal logins
        if request.url.path.endswith("/token"):
            logins += 1
            if logins == 1:
                return httpx.Response(429, headers={"Retry-After": "0"})
            return httpx.Response(200, json={"access_token": "t", "expires_in": 3600})
        assert request.headers["Authorization"] == "Bearer t"
        return httpx.Response(200, json={"ok": True})

    async def go() -> Any:
        auth = OAuth2ClientCredentials(BASE + "token", "id", SecretStr("secret"))
        transport = httpx.MockTransport(handler)
        async with SourceClient(BASE, settings(), auth=auth, transport=transport) as client:
            return await client.get_json("invoices")

    assert asyncio.run(go()) == {"ok": True}
    assert logins == 2


# -- the adapter's classification hook --------------------------------------------------------


class PickyMediTrak(meditrak.Adapter):
    """A vendor whose statuses differ from the standard table: 422 on a detail call means that
    one invoice is broken (skip it), a 404 means the whole path is wrong (stop), and a 200 with
    `{"success": false, "code": "BUSY"}` means "try again"."""

    def validate_response(self, response: httpx.Response) -> None:
        if response.status_code == 422:
            raise RecordUnavailable(
                f"422 from {self.client.describe_request(response)}",
                status=422,
                reason=Reason.FIELD_INVALID,
            )
        if response.status_code == 404:
            raise SourceError("404: the vendor moved its API")
        if response.status_code == 200 and b'"BUSY"' in response.content:
            raise RetriableError("vendor busy")
        super().validate_response(response)


MEDITRAK = "https://meditrak.example/api/v1/"


def meditrak_vendor(detail: Callable[[str, int], httpx.Response]) -> httpx.MockTransport:
    """Three listed invoices; `detail(id, attempt)` answers their detail calls."""
    attempts: dict[str, int] = {}

    async def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/api/v1/")
        if path == "invoices/":
            rows = [{"invoice_id": i} for i in ("A", "B", "C")]
            return httpx.Response(
                200, json={"invoices": rows, "pagination": {"page": 1, "total_count": 3}}
            )
        record_id = path.split("/")[1]
        attempts[record_id] = attempts.get(record_id, 0) + 1
        return detail(record_id, attempts[record_id])

    return httpx.MockTransport(handler)


def run_picky(transport: httpx.MockTransport) -> list[SourcePage]:
    config = meditrak.Config.model_validate(
        {
            "type": "meditrak",
            "name": "m",
            "base_url": MEDITRAK,
            "api_key": "k",
            "http": {"max_retries": 2, "backoff_base": "1ms", "backoff_max": "2ms"},
        }
    )

    async def go() -> list[SourcePage]:
        async with PickyMediTrak.create(config, transport=transport) as adapter:
            return [page async for page in adapter.fetch_pages(FetchRequest())]

    return asyncio.run(go())


def invoice(record_id: str) -> httpx.Response:
    return httpx.Response(200, json={"success": True, "invoice": {"invoice_id": record_id}})


def test_an_override_can_skip_a_record_and_retry_a_busy_answer() -> None:
    def detail(record_id: str, attempt: int) -> httpx.Response:
        if record_id == "B":
            return httpx.Response(422, json={"detail": "broken"})
        if record_id == "C" and attempt == 1:
            return httpx.Response(200, json={"success": False, "code": "BUSY"})
        return invoice(record_id)

    (page,) = run_picky(meditrak_vendor(detail))
    assert page.records == [{"invoice_id": "A"}, {"invoice_id": "C"}]
    (failure,) = page.failures
    assert failure.record_key == "B"
    assert failure.issue.code is Reason.FIELD_INVALID
    assert "422 from GET invoices/B/" in failure.issue.message


def test_an_override_can_make_a_status_fatal_for_the_source() -> None:
    def detail(record_id: str, attempt: int) -> httpx.Response:
        return httpx.Response(404) if record_id == "B" else invoice(record_id)

    with pytest.raises(SourceError, match="moved its API"):
        run_picky(meditrak_vendor(detail))


def test_without_an_override_a_missing_detail_is_skipped() -> None:
    """The standard table: a 404 to one record's call skips that record only."""

    def detail(record_id: str, attempt: int) -> httpx.Response:
        return httpx.Response(404) if record_id == "B" else invoice(record_id)

    config = meditrak.Config.model_validate(
        {"type": "meditrak", "name": "m", "base_url": MEDITRAK, "api_key": "k"}
    )

    async def go() -> list[SourcePage]:
        async with meditrak.Adapter.create(config, transport=meditrak_vendor(detail)) as adapter:
            return [page async for page in adapter.fetch_pages(FetchRequest())]

    (page,) = asyncio.run(go())
    assert [f.record_key for f in page.failures] == ["B"]
    assert page.failures[0].issue.code is Reason.DETAIL_UNAVAILABLE


def test_a_client_built_outside_create_still_uses_the_adapters_hook() -> None:
    """`validate` builds its own recording client and then the adapter on it."""
    config = meditrak.Config.model_validate(
        {"type": "meditrak", "name": "m", "base_url": MEDITRAK, "api_key": "k"}
    )
    client = SourceClient(MEDITRAK, config.http)
    adapter = PickyMediTrak(config, client)
    assert client.validate_response == adapter.validate_response
    asyncio.run(client.aclose())


# -- streamed answers go through the same retries -------------------------------------------


async def stream_all(client: SourceClient, skip: int = 0) -> list[tuple[int, Any]]:
    batches = client.stream_item_batches(
        "GET",
        "invoices",
        lambda: JsonArraySplitter(max_element_chars=1000, where="GET invoices"),
        skip=skip,
    )
    return [item async for batch in batches for item in batch]


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks as the vendor sends them: httpx otherwise gathers 64 KiB before the client sees
    any, which would hide every item of these short answers behind a drop."""
    monkeypatch.setattr(http, "STREAM_CHUNK_BYTES", 1)


def dropping_array(count: int, drop_at: dict[int, int]) -> tuple[Handler, list[int]]:
    """An array of `count` numbers whose attempt n (1-based) drops after `drop_at[n]` of them;
    attempts not in `drop_at` send it whole."""
    attempts: list[int] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        attempts.append(len(attempts) + 1)
        cut = drop_at.get(len(attempts))

        async def body() -> AsyncIterator[bytes]:
            yield b"["
            for index in range(count):
                if index == cut:
                    raise httpx.ReadError("connection reset by peer")
                yield (b"," if index else b"") + str(index).encode()
            yield b"]"

        return httpx.Response(200, content=body())

    return handler, attempts


@pytest.mark.usefixtures("small_chunks")
def test_a_dropped_stream_is_asked_again_and_resumes_after_what_was_handed_on(
    retry_logs: list[MutableMapping[str, Any]],
) -> None:
    handler, attempts = dropping_array(10, {1: 4, 2: 7})
    items, client = with_client(handler, stream_all)
    assert items == [(i, i) for i in range(10)]
    assert len(attempts) == 3
    assert (client.stats.requests, client.stats.retries) == (3, 2)
    assert client.stats.in_flight == 0
    retries = [e for e in retry_logs if e["event"] == "http.retry"]
    # Each drop followed progress, so each starts a new run of failures at attempt 1.
    assert [e["attempt"] for e in retries] == [1, 1]
    assert all("connection reset" in e["error"] for e in retries)


@pytest.mark.usefixtures("small_chunks")
def test_a_stream_that_keeps_dropping_before_progress_exhausts_the_budget() -> None:
    # Attempt 1 hands on 3 items and drops; attempts 2 and 3 drop before the 4th: three
    # failures in a row, which is max_retries = 2 spent. Attempt 4 would have succeeded.
    handler, attempts = dropping_array(10, {1: 3, 2: 3, 3: 2})
    with pytest.raises(RetriesExhausted, match="still failing after 3 attempts") as caught:
        with_client(handler, stream_all, max_retries=2)
    assert "connection reset" in str(caught.value)
    assert len(attempts) == 3


def test_a_streamed_answer_is_classified_and_its_retry_after_honoured() -> None:
    handler, seen = scripted(
        httpx.Response(429, headers={"Retry-After": "0.2"}),
        httpx.Response(503, json={"error": "down"}),
        httpx.Response(200, json=[1, 2]),
    )
    started = asyncio.run(_now())
    items, client = with_client(handler, stream_all)
    assert items == [(0, 1), (1, 2)]
    assert asyncio.run(_now()) - started >= 0.2
    assert len(seen) == 3 and client.stats.retries == 2
    handler, seen = scripted(httpx.Response(403, json={"error": "access denied"}))
    with pytest.raises(AuthError, match="403 from GET invoices: access denied"):
        with_client(handler, stream_all)
    assert len(seen) == 1


async def _now() -> float:
    return asyncio.get_running_loop().time()


def test_streamed_items_start_at_skip() -> None:
    handler, _ = scripted(httpx.Response(200, json=list(range(6))))
    items, _client = with_client(handler, lambda c: stream_all(c, skip=4))
    assert items == [(4, 4), (5, 5)]


@pytest.mark.usefixtures("small_chunks")
def test_the_single_array_paginator_streams_through_the_client_retries() -> None:
    handler, attempts = dropping_array(9, {1: 5})
    keep_odd = SingleArrayPaginator(page_size=2, keep=lambda n: n % 2 == 1)

    async def pages(client: SourceClient) -> list[tuple[list[Any], Any]]:
        walk = keep_odd.pages(client, "invoices", {})
        return [(page.records, page.position) async for page in walk]

    walked, client = with_client(handler, pages)
    # Positions count every element, the dropped even ones included.
    assert walked == [([1, 3], {"skip": 5}), ([5, 7], None)]
    assert len(attempts) == 2 and client.stats.retries == 1
