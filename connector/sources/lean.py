"""Sending a request around httpx's send layers, where nothing in them is needed.

`AsyncClient.stream` passes each request through `send`, the auth flow's driver, the redirect
loop and `_send_single_request` before the transport sees it: about a tenth of `SourceClient`'s
CPU per request (docs/performance.md, "Issue 19, session 5"). For a client whose auth needs no
answer (none, or a static key) and that never follows redirects, `lean_stream` does what those
layers do for the request, and no more. It uses two private methods of `httpx.AsyncClient`
(`_build_request_auth`, `_transport_for_url`), so that auth and proxy mounts are exactly
httpx's; `tests/test_http_lean.py` pins them and holds the requests equal to httpx's own.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx

# httpx's own logger: the line httpx would have written is written here too.
_HTTPX_LOG = logging.getLogger("httpx")


def open_stream(
    client: httpx.AsyncClient,
    lean: bool,
    method: str,
    url: httpx.URL | str,
    kwargs: dict[str, Any],
) -> AbstractAsyncContextManager[httpx.Response]:
    """`client.stream(...)`, or `lean_stream` where it does the same for less: `lean` says the
    client's auth needs no answer, and the request does not bring an auth of its own."""
    if lean and "auth" not in kwargs:
        return lean_stream(client, method, url, kwargs)
    return client.stream(method, url, **kwargs)


@asynccontextmanager
async def lean_stream(
    client: httpx.AsyncClient, method: str, url: httpx.URL | str, kwargs: dict[str, Any]
) -> AsyncIterator[httpx.Response]:
    """`client.stream(method, url, **kwargs)` for a single-request auth: the request as httpx
    builds it (base URL, headers, cookies, params, body, timeouts), the auth's one request, the
    transport httpx would pick (proxy mounts included), the request attached to a transport
    error, the answer's cookies kept, its default encoding and httpx's log line."""
    request = client.build_request(method, url, **kwargs)
    flow = client._build_request_auth(request).async_auth_flow(request)
    request = await anext(flow)
    await flow.aclose()
    try:
        response = await client._transport_for_url(request.url).handle_async_request(request)
    except httpx.RequestError as exc:
        exc.request = request
        raise
    try:
        response.request = request
        client.cookies.extract_cookies(response)
        response.default_encoding = client._default_encoding
        if _HTTPX_LOG.isEnabledFor(logging.INFO):
            _HTTPX_LOG.info(
                'HTTP Request: %s %s "%s %d %s"',
                request.method,
                request.url,
                response.http_version,
                response.status_code,
                response.reason_phrase,
            )
        yield response
    finally:
        await response.aclose()
