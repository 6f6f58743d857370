"""One HTTP client per source: auth, adaptive concurrency bound, rate limit, retries, JSON decoding.

Every request of an adapter goes through `SourceClient.request` (or `stream_item_batches` for
one answer parsed as it streams in). Each answer passes one classification hook, by default
`SourceClient.default_validate_response` and overridable per vendor as
`Adapter.validate_response`: the single place where an HTTP answer becomes data, a retry
(timeouts, connection errors, 429, 5xx; `Retry-After` honoured, see `connector.sources.retry`),
an error that stops the source (`AuthError`, `ContractError`, `SourceError`), or a record to
skip (`RecordUnavailable`).
`http.timeout` is a deadline for a whole attempt; a body is decompressed here in bounded steps
and refused past `http.max_response_bytes` as it arrives, so no body or bomb is held whole.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from functools import partial
from typing import Any, Protocol

import httpx
import structlog
from aiohttp import ClientSession
from httpx_aiohttp import AiohttpTransport

from connector.errors import (
    AuthError,
    ContractError,
    RetriableError,
    SourceError,
)
from connector.issues import Reason
from connector.settings import HttpSettings
from connector.sources.bodies import decode_json, describe_json_error
from connector.sources.lean import open_stream
from connector.sources.limiter import AdaptiveConcurrency
from connector.sources.retry import RETRIED, RetryPolicy

# Re-exported (`as`): callers and tests import the TLS names from here, where they lived first.
from connector.sources.tls import (
    CertificateRejected as CertificateRejected,
)
from connector.sources.tls import (
    certificate_error as certificate_error,
)
from connector.sources.tls import (
    describe_certificate_error as describe_certificate_error,
)
from connector.sources.tls import (
    tls_context_for,
)
from connector.sources.tls import (
    verified_tls_context as verified_tls_context,
)
from connector.sources.urls import joined_url

log = structlog.get_logger("connector.sources.http")

RETRIABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
# Answers that say "fewer at once, please": the adaptive concurrency bound shrinks on them (and
# on timeouts). A 500 or 502 says something is broken rather than busy.
OVERLOAD_STATUS = frozenset({429, 503, 504})
# The vendor counts a request when it arrives, a little after we start it: a window this much
# longer than the vendor's keeps arrival jitter from ever putting one request over the limit.
RATE_WINDOW_MARGIN_S = 1.0


class VendorHttpError(SourceError):
    """A non-retriable HTTP error answer; fatal for the source. `status` is the answer's."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class RecordUnavailable(VendorHttpError):
    """Skip this record: the answer concerns only the one record (or related resource) asked
    for, which cannot be had (by default a 404 or 410). A caller fetching one record
    quarantines it with `reason` and goes on; where no single record was asked for (a list
    request) there is nothing to skip, and it stops the source like any `VendorHttpError`."""

    def __init__(
        self, message: str, *, status: int, reason: Reason = Reason.DETAIL_UNAVAILABLE
    ) -> None:
        super().__init__(message, status=status)
        self.reason = reason


class ResponseTooLarge(ContractError):
    """An answer body over `http.max_response_bytes`: not retried, asking again won't help."""


class RequestDeadlineExceeded(RetriableError):
    """No whole answer within `http.timeout` (a slow drip): retried like a read timeout."""


OVERLOAD_ERRORS: tuple[type[BaseException], ...] = (
    httpx.TimeoutException,
    RequestDeadlineExceeded,
)


# `SourceClient.on_rate_wait`: told (seconds, requests per minute) before a request waits.
RateWaitHook = Callable[[float, int], None]


class SlidingWindowLimiter:
    """At most `limit` request starts in any `window` seconds: exact, never a burst over."""

    def __init__(self, limit: int, window: float = 60.0) -> None:
        self.limit = limit
        self.window = window
        self.per_minute = round(limit * 60 / window)  # as told to `on_wait`
        self._starts: deque[float] = deque()
        self._lock = asyncio.Lock()

    async def acquire(self, on_wait: RateWaitHook | None = None) -> None:
        async with self._lock:
            while True:
                now = time.monotonic()
                while self._starts and now - self._starts[0] >= self.window:
                    self._starts.popleft()
                if len(self._starts) < self.limit:
                    self._starts.append(now)
                    return
                wait = self.window - (now - self._starts[0]) + 0.001
                if on_wait is not None:
                    on_wait(wait, self.per_minute)
                await asyncio.sleep(wait)


def retry_after_seconds(response: httpx.Response) -> float | None:
    """`Retry-After` as seconds, whether given as a number or an HTTP date."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


ErrorDescriber = Callable[[httpx.Response], str | None]


@dataclass
class RequestStats:
    requests: int = 0
    retries: int = 0
    max_in_flight: int = 0
    in_flight: int = 0
    max_concurrency_limit: int = 0  # the highest the adaptive bound went
    body_bytes: int = 0  # answer bytes read, decompressed (what memory had to take in)


class CountedAiohttpTransport(AiohttpTransport):
    """aiohttp's transport without its hidden resend. aiohttp quietly sends an idempotent
    request a second time when a reused keep-alive connection drops (RFC 9112 9.3.1); that
    attempt would bypass the rate limiter and the retry budget, which must count every attempt,
    so a dropped connection surfaces as a transport error and `SourceClient` retries it.

    TLS: `SourceClient` hands it the source's cached `verified_tls_context` (left out, the base
    class builds `httpx.create_ssl_context(verify=True)`), so certificates and host names are
    verified exactly as with httpx's own transport."""

    def get_client(self) -> ClientSession:
        session = super().get_client()
        session._retry_connection = False
        return session


class _SetCookieCookies(httpx.Cookies):
    """httpx's cookie jar, minus the urllib round trip it makes for every answer: an answer
    without `Set-Cookie` (nearly all of them) cannot change the jar, so it is skipped. That
    round trip was about a seventh of the client's CPU per request (docs/performance.md)."""

    def extract_cookies(self, response: httpx.Response) -> None:
        headers = response.headers
        if "set-cookie" in headers or "set-cookie2" in headers:
            super().extract_cookies(response)


# The classification hook: returns for an answer that is data, raises for anything else.
ResponseValidator = Callable[[httpx.Response], None]
# A streamed answer is parsed in chunks of this many bytes (httpx gathers them before handing
# any on): few enough parser calls, and memory stays one chunk plus the item in progress.
STREAM_CHUNK_BYTES = 64 * 1024
# Statuses that say "the one record asked for cannot be had" rather than "this source is broken".
RECORD_GONE_STATUS = frozenset({404, 410})


class ItemParser(Protocol):
    """Turns an answer arriving in byte chunks into its items, as soon as each is complete."""

    def feed(self, data: bytes) -> list[Any]:
        """The items completed by `data`."""

    def close(self) -> list[Any]:
        """The last items; raises `ContractError` if the answer ended in the middle of one."""


class SourceClient:
    """An httpx.AsyncClient bound to one source's base URL, auth and limits."""

    def __init__(
        self,
        base_url: str,
        settings: HttpSettings,
        *,
        auth: httpx.Auth | None = None,
        headers: Mapping[str, str] | None = None,
        describe_error: ErrorDescriber = describe_json_error,
        transport: httpx.AsyncBaseTransport | None = None,
        source: str = "",
    ) -> None:
        self.settings = settings
        self.source = source
        self._describe_error = describe_error
        # Every answer passes this hook; an adapter installs its own `validate_response`.
        self.validate_response: ResponseValidator = self.default_validate_response
        # `http.concurrency` is the ceiling; the adaptive bound finds the vendor's own below it.
        self.concurrency = AdaptiveConcurrency(
            settings.concurrency,
            initial=settings.initial_concurrency,
            minimum=settings.min_concurrency,
            adaptive=settings.adaptive_concurrency,
        )
        self._limiter: SlidingWindowLimiter | None = None
        if rate := settings.requests_per_minute:
            self._limiter = SlidingWindowLimiter(rate, 60.0 + RATE_WINDOW_MARGIN_S)
            # `on_rate_wait` is told the setting, not the rounding of its widened window.
            self._limiter.per_minute = rate
        # Called before a request waits on the rate limit, so a caller can say why nothing moves.
        self.on_rate_wait: RateWaitHook | None = None
        self.stats = RequestStats()
        self._retry_policy = RetryPolicy(
            settings, describe=describe_failure, on_retry=self._count_and_log_retry
        )
        timeout = settings.timeout.total_seconds()
        limits = httpx.Limits(
            max_connections=settings.concurrency, max_keepalive_connections=settings.concurrency
        )
        tls = tls_context_for(base_url, settings.ca_bundle)
        if transport is None and settings.transport == "aiohttp":
            transport = CountedAiohttpTransport(verify=tls, limits=limits)
        self._client = httpx.AsyncClient(
            base_url=base_url,
            auth=auth,
            headers={
                "Accept": "application/json",
                "User-Agent": "invoice-connector/0.1",
                **(headers or {}),
            },
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=limits,
            transport=transport,
            verify=tls,
            follow_redirects=False,
        )
        # httpx's `cookies` setter copies into a plain jar, so the cheaper one is set directly.
        self._client._cookies = _SetCookieCookies(self._client.cookies)
        # Around httpx's send layers when nothing in them is needed (`connector.sources.lean`).
        self._lean = auth is None or getattr(auth, "single_request", False) is True

    def limit_rate(self, per_window: int, window_s: float) -> None:
        """At most `per_window` request starts in any `window_s` seconds, in place of the
        `http.requests_per_minute` window (a test shortens the minute to seconds)."""
        self._limiter = SlidingWindowLimiter(per_window, window_s)

    @property
    def base_url(self) -> httpx.URL:
        return self._client.base_url

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> SourceClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def get_json(self, url: str, params: Mapping[str, Any] | None = None) -> Any:
        response = await self.request("GET", url, params=params)
        return decode_json(response)

    async def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """Send with retries; return a response the classification accepted, or raise.

        The first attempt is a plain send: the retry policy (tenacity) is entered only once it
        failed, so the request nearly every call stops at costs nothing beyond the send."""
        try:
            return await self._send_once(method, url, **kwargs)
        except RETRIED as exc:
            failure = exc
        again = partial(self._send_once, method, url, _retry=True, **kwargs)
        return await self._retry_policy.after_failure(failure, again, f"{method} {_path(url)}")

    async def stream_item_batches(
        self,
        method: str,
        url: str,
        parser: Callable[[], ItemParser],
        *,
        skip: int = 0,
        **kwargs: Any,
    ) -> AsyncGenerator[list[tuple[int, Any]], None]:
        """(index, item) pairs of one streamed answer, from index `skip` on, each item parsed
        by a `parser()` as soon as its bytes arrived: memory holds one chunk and the item in
        progress, never the whole answer. One batch per chunk that completed any items (an
        async step per item would cost more than the parsing).

        Retried like `request`, under the same limits and classification: a transient failure
        before or in the middle of the answer asks for it again and skips the items already
        handed on. The retry budget counts failures in a row without a new item, so a long
        answer that drops now and then still completes."""
        answer = _StreamedAnswer(self, method, url, parser, kwargs)
        what = f"{method} {_path(url)}"
        wanted = skip  # index of the next item to hand on
        try:
            try:
                items = await answer.open_from(wanted)
            except RETRIED as exc:
                items = await self._retry_policy.after_failure(
                    exc, partial(answer.open_from, wanted), what
                )
            while items:
                yield items
                wanted = items[-1][0] + 1
                try:
                    items = await answer.next_items()
                except RETRIED as exc:
                    items = await self._retry_policy.after_failure(
                        exc, partial(answer.open_from, wanted), what
                    )
        finally:
            await answer.aclose()

    @asynccontextmanager
    async def stream(self, method: str, url: str, **kwargs: Any) -> AsyncIterator[httpx.Response]:
        """One streamed attempt (no retries: see `stream_item_batches`) under the same rate limit,
        concurrency bound and classification as `request`. The hook sees a 2xx answer before
        its body is read, any other after."""
        url = self.resolve(url)
        try:
            async with (
                self._slot() as answer,
                self._client.stream(method, url, **kwargs) as response,
            ):
                answer.status = response.status_code
                if not 200 <= response.status_code < 300:
                    await self.read_body(response)
                self.validate_response(response)
                yield response
        except httpx.TransportError as exc:
            self._raise_if_certificate_rejected(exc)
            raise

    @asynccontextmanager
    async def _slot(self, timed: bool = False, retry: bool = False) -> AsyncIterator[_Answer]:
        """One request's place under the concurrency bound and the rate limit, counted. The
        caller notes the answer's status; the bound learns from it, and from the round trip
        when `timed` (a streamed answer's length says nothing about the vendor's load)."""
        bound, stats = self.concurrency, self.stats
        # A retry goes ahead of fresh requests: with the bound cut low by a failing vendor, it
        # would otherwise wait behind every queued first attempt, and the run with it.
        await bound.acquire(first=retry)
        answer = _Answer()
        try:
            # Stamped inside the concurrency bound, i.e. when the request really leaves: a
            # burst queued behind the bound must not count as sent before it is.
            if self._limiter is not None:
                await self._limiter.acquire(self.on_rate_wait)
            stats.requests += 1
            stats.in_flight += 1
            stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
            stats.max_concurrency_limit = max(stats.max_concurrency_limit, bound.limit)
            started = time.monotonic()
        except BaseException:
            bound.release(None)
            raise
        try:
            yield answer
        except OVERLOAD_ERRORS:
            bound.release(None, overloaded=True)
            raise
        except BaseException:
            bound.release(None, overloaded=answer.status in OVERLOAD_STATUS)
            raise
        else:
            rtt = time.monotonic() - started if timed else None
            bound.release(rtt, overloaded=answer.status in OVERLOAD_STATUS)
        finally:
            stats.in_flight -= 1

    def resolve(self, url: str) -> str:
        """A vendor link as a URL we may call: root-relative links ("/v1/...") are resolved
        against the host (httpx would append them to the base path), and absolute links must
        stay on the source's host, which is the only one that may see our credentials."""
        if url.startswith("/"):
            return str(self._client.base_url.join(url))
        if "://" in url:
            target, base = httpx.URL(url), self._client.base_url
            if (target.scheme, target.host, target.port) != (base.scheme, base.host, base.port):
                raise ContractError(f"refusing to follow a link to another host: {target.host}")
        return url

    async def _send_once(
        self, method: str, url: str, _retry: bool = False, **kwargs: Any
    ) -> httpx.Response:
        url = self.resolve(url)
        try:
            async with (
                self._slot(timed=True, retry=_retry) as answer,
                self.deadline(),
                open_stream(
                    self._client, self._lean, method, joined_url(self.base_url, url), kwargs
                ) as response,
            ):
                answer.status = response.status_code
                body = await self.read_body(response)
        except httpx.TransportError as exc:
            self._raise_if_certificate_rejected(exc)
            raise
        # httpx leaves the read response and its stream pointing at each other: a cycle that
        # kept each page's body alive until the next cyclic collection. The body is read, so
        # the stream can be the plain bytes, freed with the response (docs/performance.md).
        response.stream = httpx.ByteStream(body)
        self.validate_response(response)
        return response

    @asynccontextmanager
    async def deadline(self) -> AsyncIterator[None]:
        """`http.timeout` for everything inside, together: httpx's own timeouts bound each
        read, which a vendor sending a byte a second never trips."""
        seconds = self.settings.timeout.total_seconds()
        scope = asyncio.timeout(seconds)
        try:
            async with scope:
                yield
        except TimeoutError:
            if not scope.expired():
                raise
            said = f"no whole answer within http.timeout ({seconds:g}s)"
            raise RequestDeadlineExceeded(said) from None

    async def read_body(self, response: httpx.Response) -> bytes:
        """The whole body of a streamed `response`, decompressed, kept as its `content`;
        `ResponseTooLarge` as soon as it passes `http.max_response_bytes`."""
        limit = self.settings.max_response_bytes
        chunks: list[bytes] = []
        size = 0
        async for chunk in self.body_chunks(response):
            size += len(chunk)
            if size > limit:
                raise ResponseTooLarge(
                    f"the answer to {self.describe_request(response)} is over "
                    f"http.max_response_bytes ({limit} bytes, decompressed): stopped reading"
                )
            chunks.append(chunk)
        body = b"".join(chunks)
        response._content = body  # what `response.content` returns, as after httpx's read
        return body

    async def body_chunks(
        self, response: httpx.Response, size: int = STREAM_CHUNK_BYTES
    ) -> AsyncIterator[bytes]:
        """The body of a streamed `response` as it arrives, decompressed in steps of at most
        `size` bytes and counted in `stats.body_bytes`. Decompressed here, not by httpx: httpx
        inflates each network chunk at once, so one 16 KB chunk of a gzip bomb was 16 MB."""
        if response.is_stream_consumed:  # httpx read it already: an auth flow that reads answers
            self.stats.body_bytes += len(response.content)
            yield response.content
            return
        encoding = response.headers.get("Content-Encoding", "").strip().lower()
        inflater = None
        if encoding not in ("", "identity"):
            if encoding not in ("gzip", "x-gzip", "deflate"):
                what = self.describe_request(response)
                raise ContractError(f"{what}: unsupported Content-Encoding {encoding[:40]!r}")
            # gzip or zlib framing, told apart by the header; raw deflate retried below.
            inflater = zlib.decompressobj(zlib.MAX_WBITS | 32)
        fresh = True
        async for data in response.aiter_raw():
            while data:
                if inflater is None:
                    chunk, data = data, b""
                else:
                    try:
                        chunk, data = inflater.decompress(data, size), inflater.unconsumed_tail
                    except zlib.error:
                        if not (fresh and encoding == "deflate"):
                            what = self.describe_request(response)
                            raise ContractError(f"{what}: not valid {encoding} data") from None
                        # Some servers send "deflate" without the zlib framing.
                        inflater, fresh = zlib.decompressobj(-zlib.MAX_WBITS), False
                        continue
                fresh = False
                self.stats.body_bytes += len(chunk)
                yield chunk

    def default_validate_response(self, response: httpx.Response) -> None:
        """The standard classification of an answer: 2xx is data; 408, 425, 429 and 5xx are
        retried (`RetriableError` with the `Retry-After` hint); 401/403 are `AuthError`; a
        redirect is a `ContractError` (base_url or a path is wrong); 404/410 are
        `RecordUnavailable` (skipped when one record was asked for); any other status is a
        `VendorHttpError`. Every error carries the vendor's own message, when it gave one."""
        status = response.status_code
        if 200 <= status < 300:
            return
        said = self._describe_error(response)
        detail = f"{status} from {self.describe_request(response)}" + (f": {said}" if said else "")
        if status in RETRIABLE_STATUS:
            raise RetriableError(detail, retry_after=retry_after_seconds(response))
        if status in (401, 403):
            raise AuthError(f"{detail} - the credentials were rejected")
        if 300 <= status < 400:
            location = response.headers.get("Location", "?")
            raise ContractError(f"{detail} - redirected to {location}; check base_url and paths")
        if status in RECORD_GONE_STATUS:
            raise RecordUnavailable(detail, status=status)
        raise VendorHttpError(detail, status=status)

    def describe_request(self, response: httpx.Response) -> str:
        """ "GET invoices/7": the request behind `response` as errors name it, its path relative
        to the base URL when below it (as adapters write paths), without the query."""
        url = response.request.url
        base = self._client.base_url
        path = url.raw_path.decode("ascii").split("?", 1)[0]
        prefix = base.raw_path.decode("ascii")
        if (url.scheme, url.host, url.port) == (base.scheme, base.host, base.port) and (
            path.startswith(prefix)
        ):
            return f"{response.request.method} {path[len(prefix) :]}"
        return f"{response.request.method} {_path(str(url))}"

    def _raise_if_certificate_rejected(self, error: httpx.TransportError) -> None:
        rejected = certificate_error(error)
        if rejected is not None:
            try:
                host = error.request.url.host  # a token endpoint may be on another host
            except RuntimeError:
                host = self._client.base_url.host
            raise CertificateRejected(
                describe_certificate_error(rejected, host, self.settings.ca_bundle)
            ) from None

    def _count_and_log_retry(self, attempt: int, error: BaseException, wait: float) -> None:
        self.stats.retries += 1
        log.debug(
            "http.retry",
            source=self.source,
            attempt=attempt,
            error=describe_failure(error),
            wait_s=round(wait, 3),
        )


class _Answer:
    """What a request's slot learns of its answer: the status (0 until the headers came)."""

    __slots__ = ("status",)

    def __init__(self) -> None:
        self.status = 0


class _StreamedAnswer:
    """The answer `SourceClient.stream_item_batches` reads: one streamed attempt at a time, each
    handing on only the items at or after the index it was opened from."""

    def __init__(
        self,
        client: SourceClient,
        method: str,
        url: str,
        parser: Callable[[], ItemParser],
        kwargs: dict[str, Any],
    ) -> None:
        self._client = client
        self._request = (method, url, kwargs)
        self._new_parser = parser
        self._attempt: AsyncExitStack | None = None
        self._chunks: AsyncIterator[bytes] | None = None
        self._parser: ItemParser | None = None
        # Items of the current attempt before this index were handed on by an earlier one.
        self._first = 0
        self._index = 0  # items the current attempt parsed so far
        self._ended = False

    async def open_from(self, first: int) -> list[tuple[int, Any]]:
        """Ask for the answer (again) and read up to its first item at or after `first`:
        an attempt has succeeded only once it made progress."""
        await self.aclose()
        method, url, kwargs = self._request
        self._attempt = attempt = AsyncExitStack()
        try:
            async with self._client.deadline():
                response = await attempt.enter_async_context(
                    self._client.stream(method, url, **kwargs)
                )
        except BaseException:
            await self.aclose()
            raise
        self._chunks = _gathered(self._client.body_chunks(response), STREAM_CHUNK_BYTES)
        self._parser = self._new_parser()
        self._first, self._index, self._ended = first, 0, False
        return await self.next_items()

    async def next_items(self) -> list[tuple[int, Any]]:
        """The next items (at least one) with their indexes; [] once the answer has ended.
        Each must arrive within `http.timeout` (a streamed answer may take longer as a whole:
        CitaBox sends every invoice in one). A failed read closes the attempt at once: it must
        not hold its concurrency slot through the retry's wait."""
        chunks, parser = self._chunks, self._parser
        assert chunks is not None and parser is not None, "next_items() before open_from()"
        try:
            async with self._client.deadline():
                while not self._ended:
                    chunk = await anext(chunks, None)
                    if chunk is None:
                        parsed, self._ended = parser.close(), True
                    else:
                        parsed = parser.feed(chunk)
                    start, self._index = self._index, self._index + len(parsed)
                    if parsed and self._index > self._first:
                        skipped = max(0, self._first - start)
                        return list(enumerate(parsed[skipped:], start + skipped))
        except BaseException:
            await self.aclose()
            raise
        return []

    async def aclose(self) -> None:
        chunks, attempt = self._chunks, self._attempt
        self._chunks, self._attempt, self._parser = None, None, None
        if isinstance(chunks, AsyncGenerator):
            await chunks.aclose()
        if attempt is not None:
            await attempt.aclose()


async def _gathered(chunks: AsyncIterator[bytes], size: int) -> AsyncGenerator[bytes, None]:
    """`chunks` joined into pieces of `size` bytes or more: fewer parser calls."""
    pending = bytearray()
    async for chunk in chunks:
        pending += chunk
        if len(pending) >= size:
            yield bytes(pending)
            pending.clear()
    if pending:
        yield bytes(pending)


def describe_failure(error: BaseException) -> str:
    """A failed attempt in words: what went wrong on the wire, or the classification's text."""
    if isinstance(error, httpx.TransportError):
        return describe_transport_error(error)
    return str(error)


def describe_transport_error(error: BaseException | None) -> str:
    if error is None:
        return "unknown error"
    kinds: dict[type[BaseException], str] = {
        httpx.ConnectTimeout: "connect timeout",
        httpx.ReadTimeout: "read timeout",
        httpx.ConnectError: "cannot connect",
        httpx.RemoteProtocolError: "connection dropped",
    }
    kind = kinds.get(type(error))
    # httpx-aiohttp maps aiohttp's errors coarsely (a refused connection arrives as a connect
    # timeout): the original aiohttp error, kept as the cause, says what really happened.
    cause = type(error.__cause__).__name__ if error.__cause__ is not None else ""
    kind = {
        "ClientConnectorError": "cannot connect",
        "ClientConnectorDNSError": "cannot resolve host",
        "ClientConnectorCertificateError": "TLS certificate rejected",
        "ClientSSLError": "TLS handshake failed",
        "ServerDisconnectedError": "connection dropped",
        "ConnectionTimeoutError": "connect timeout",
        "SocketTimeoutError": "read timeout",
    }.get(cause, kind)
    text = str(error) or error.__class__.__name__
    return f"{kind}: {text}" if kind else text


def _path(url: str) -> str:
    return url.split("?", 1)[0]
