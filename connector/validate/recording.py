"""HTTP recording for `connector validate`: the transport that notes every exchange of a fetch
(method, path, status, content type; never a body, a query string or a header value), and the
list inspector that reads each list page's record count and promised total on the way.

The connection steps are derived from these recordings instead of from extra probes.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import httpx
import orjson
from httpx_aiohttp import AiohttpTransport

from connector.settings import SourceConfig
from connector.sources.adapter import Adapter, ListDetailAdapter
from connector.sources.http import describe_transport_error, verified_tls_context
from connector.sources.paginate import IndexedPaginator, dig


@dataclass
class Exchange:
    """One request as the validator saw it: never a body, a query string or a header value."""

    method: str
    path: str
    status: int | None
    content_type: str = ""
    error: str | None = None
    page: str | None = None
    records: int | None = None
    total: int | None = None


@dataclass
class ListInspector:
    """Where the list's records and total sit, to check pages against the promised total."""

    path: str
    paginator: IndexedPaginator


class RecordingTransport(httpx.AsyncBaseTransport):
    """Wraps the real transport and notes every exchange, so that connection steps are
    derived from what actually happened during the fetch instead of from extra probes."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner
        self.exchanges: list[Exchange] = []
        self.inspector: ListInspector | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        method, path = request.method, request.url.path
        try:
            response = await self._inner.handle_async_request(request)
        except httpx.TransportError as exc:
            self.exchanges.append(Exchange(method, path, None, error=describe_transport_error(exc)))
            raise
        exchange = Exchange(method, path, response.status_code)
        exchange.content_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        self.exchanges.append(exchange)
        inspector = self.inspector
        if (
            inspector is not None
            and method == "GET"
            and path == inspector.path
            and 200 <= response.status_code < 300
        ):
            response = await self._inspect(request, response, exchange, inspector.paginator)
        return response

    async def _inspect(
        self,
        request: httpx.Request,
        response: httpx.Response,
        exchange: Exchange,
        paginator: IndexedPaginator,
    ) -> httpx.Response:
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
        await response.aclose()
        copy = httpx.Response(
            response.status_code,
            headers=response.headers,
            content=raw,
            extensions=response.extensions,
            request=request,
        )
        content = await copy.aread()
        param = paginator.page_param if paginator.style == "page" else paginator.offset_param
        exchange.page = request.url.params.get(param)
        with contextlib.suppress(orjson.JSONDecodeError):
            body = orjson.loads(content)
            records = dig(body, paginator.records_path)
            if isinstance(records, list):
                exchange.records = len(records)
            total = dig(body, paginator.total_path) if paginator.total_path else None
            if isinstance(total, int) and not isinstance(total, bool):
                exchange.total = total
        return copy

    async def aclose(self) -> None:
        await self._inner.aclose()


class BorrowedTransport(httpx.AsyncBaseTransport):
    """Another client's transport, used without closing it."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        pass


def real_transport(source: SourceConfig) -> httpx.AsyncBaseTransport:
    """The network transport a sync would use, trusting what it trusts (`http.ca_bundle`)."""
    tls = verified_tls_context(source.http.ca_bundle)
    if source.http.transport == "aiohttp":
        return AiohttpTransport(verify=tls)
    return httpx.AsyncHTTPTransport(verify=tls)


def list_path_of(adapter: Adapter) -> str | None:
    """The list endpoint's URL path, when the adapter declares it."""
    if isinstance(adapter, ListDetailAdapter):
        relative = adapter.list_url()
    else:
        declared = getattr(adapter, "list_path", None)
        if not isinstance(declared, str):
            return None
        relative = declared
    return adapter.client.base_url.join(relative).path if relative else None


def list_inspector(adapter: Adapter, list_path: str | None) -> ListInspector | None:
    """An inspector for lists that announce a total, so pages can be checked against it."""
    if not isinstance(adapter, ListDetailAdapter) or list_path is None:
        return None
    paginator = adapter.paginator()
    if isinstance(paginator, IndexedPaginator) and paginator.total_path:
        return ListInspector(list_path, paginator)
    return None
