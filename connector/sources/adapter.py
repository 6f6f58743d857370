"""The adapter contract: one vendor's HTTP API in, raw source records out.

Adapters know base URLs, auth, paths, pagination, incremental filters and error bodies.
They never validate business rules and never see the store. Most vendors fit
`ListDetailAdapter`: a declarative class naming paths and a paginator, plus small hooks.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, ClassVar, TypeVar
from urllib.parse import quote

import httpx

from connector.issues import Issue, Reason
from connector.settings import SourceConfig
from connector.sources.bodies import describe_json_error
from connector.sources.http import ErrorDescriber, RecordUnavailable, SourceClient
from connector.sources.paginate import ListPage, Paginator, Position

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class FetchRequest:
    """What one run asks of a source: an incremental cursor, a date window, a resume point."""

    since: datetime | None = None
    date_from: date | None = None
    date_to: date | None = None
    resume: Position | None = None
    # What the adapter left for its next run at the end of the last finished one
    # (`SourcePage.carry`), e.g. cursors of its own finer than the source's one.
    carried: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class RecordFailure:
    """A listed record whose own fetch failed: quarantined, the run goes on."""

    record_key: str
    raw: Any
    issue: Issue


@dataclass(frozen=True, slots=True)
class SourcePage:
    records: list[Any]
    # Resume point after this page is stored; None when the list is exhausted.
    position: Position | None
    failures: list[RecordFailure] = field(default_factory=list)
    # On the last page: what to hand the next run (`FetchRequest.carried`), kept by the store
    # once the run finished ok; None keeps what was carried before.
    carry: dict[str, Any] | None = None


class Adapter(ABC):
    """Base of every source adapter."""

    # Whether `FetchRequest.since` narrows the list at the vendor (else: full scan each run).
    supports_since: ClassVar[bool] = False
    # Whether `FetchRequest.date_from/date_to` narrows the list at the vendor.
    supports_date_window: ClassVar[bool] = False

    def filters_since(self) -> bool:
        """Whether incremental runs can ask the vendor for changes only (config may decide)."""
        return self.supports_since

    @classmethod
    def narrows_by_date(cls, config: SourceConfig) -> bool:
        """Whether this source can ask its vendor for a date range (config may decide)."""
        return cls.supports_date_window

    def __init__(self, config: SourceConfig, client: SourceClient) -> None:
        self.config = config
        self.client = client
        # Installed here rather than in `create`, so that a client built elsewhere (validate's
        # recording client) classifies answers by this adapter's rules too.
        client.validate_response = self.validate_response

    @classmethod
    def create(
        cls, config: SourceConfig, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> Adapter:
        client = SourceClient(
            config.base_url,
            config.http,
            auth=cls.build_auth(config),
            headers=cls.default_headers(config),
            describe_error=cls.describe_error,
            transport=transport,
            source=config.name,
        )
        return cls(config, client)

    @classmethod
    def build_auth(cls, config: SourceConfig) -> httpx.Auth | None:
        return None

    @classmethod
    def default_headers(cls, config: SourceConfig) -> dict[str, str]:
        return {}

    describe_error: ClassVar[ErrorDescriber] = staticmethod(describe_json_error)

    def validate_response(self, response: httpx.Response) -> None:
        """The one place where an answer of this source becomes data, a retry, the end of the
        source, or a record to skip. The client calls it for every answer (a streamed 2xx one
        before its body is read), which is then:

        - data: return;
        - retried: raise `RetriableError` (`retry_after` = the vendor's hint, in seconds);
        - fatal for this source: raise a `SourceError` (`AuthError`, `ContractError`,
          `VendorHttpError`...);
        - skip this record: raise `RecordUnavailable` (its `reason` is the quarantine issue);
          fatal where no single record was asked for, like a list request.

        The default is the client's standard table (`SourceClient.default_validate_response`);
        a vendor overrides this for its own statuses or error bodies and calls `super()` for
        the rest."""
        self.client.default_validate_response(response)

    @abstractmethod
    def fetch_pages(self, request: FetchRequest) -> AsyncIterator[SourcePage]:
        """Raw records page by page, in an order that makes each page's position resumable."""

    async def aclose(self) -> None:
        await self.client.aclose()

    async def __aenter__(self) -> Adapter:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()


class ListDetailAdapter(Adapter):
    """A list endpoint walked by a paginator, optionally one detail call per listed record."""

    list_path: ClassVar[str]
    detail_path: ClassVar[str | None] = None

    @abstractmethod
    def paginator(self) -> Paginator: ...

    def list_params(self, request: FetchRequest) -> dict[str, Any]:
        return {}

    def summary_id(self, summary: Any) -> str | None:
        if isinstance(summary, dict):
            value = summary.get("id")
            return None if value is None else str(value)
        return None

    def needs_detail(self) -> bool:
        return self.detail_path is not None

    def unwrap_detail(self, body: Any) -> Any:
        return body

    def list_url(self) -> str:
        return self.list_path

    def detail_url(self, record_id: str) -> str:
        assert self.detail_path is not None, "needs_detail() without a detail_path"
        # Quote the id: a hostile id must not escape its path segment.
        return self.detail_path.format(id=quote(record_id, safe=""))

    async def fetch_detail(self, record_id: str) -> Any:
        return self.unwrap_detail(await self.client.get_json(self.detail_url(record_id)))

    async def fetch_pages(self, request: FetchRequest) -> AsyncIterator[SourcePage]:
        pages = self.paginator().pages(
            self.client, self.list_url(), self.list_params(request), request.resume
        )
        if not self.needs_detail():
            async for page in pages:
                yield SourcePage(page.records, page.position)
            return
        detailed = self._with_details(pages)
        try:
            async for source_page in detailed:
                yield source_page
        finally:
            # Closed here, not whenever they are collected: no detail call outlives the walk.
            await detailed.aclose()
            aclose = getattr(pages, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _with_details(
        self, pages: AsyncIterator[ListPage]
    ) -> AsyncGenerator[SourcePage, None]:
        """Detail calls concurrent up to the client's bound, across page boundaries: the next
        page's calls start while the current page's last ones still run, so the pipe never
        drains at a page end. Pages come out in order, each with its own position; at most
        `DETAIL_PAGES_AHEAD` pages (more only while their calls would not fill the client's
        bound) have tasks in flight, and none is left running on error or close."""
        window: deque[tuple[ListPage, list[asyncio.Task[Any]]]] = deque()
        bound = self.client.settings.concurrency
        list_error: Exception | None = None
        exhausted = False
        try:
            while True:
                while not exhausted and (
                    len(window) < DETAIL_PAGES_AHEAD or _running(window) < bound
                ):
                    try:
                        page = await anext(pages)
                    except StopAsyncIteration:
                        exhausted = True
                    except Exception as exc:
                        # Hand on the pages already listed first, as a page-by-page walk would.
                        list_error, exhausted = exc, True
                    else:
                        tasks = [asyncio.ensure_future(self._one_detail(s)) for s in page.records]
                        window.append((page, tasks))
                if not window:
                    if list_error is not None:
                        raise list_error
                    return
                page, tasks = window[0]
                results = await asyncio.gather(*tasks)
                window.popleft()
                records = [r for r in results if not isinstance(r, RecordFailure)]
                failures = [r for r in results if isinstance(r, RecordFailure)]
                del results
                yield SourcePage(records, page.position, failures)
        finally:
            # One fatal answer (or the consumer stopping) ends the walk: no call is left
            # running detached.
            left = [task for _, tasks in window for task in tasks]
            for task in left:
                task.cancel()
            if left:
                await asyncio.gather(*left, return_exceptions=True)

    async def _one_detail(self, summary: Any) -> Any | RecordFailure:
        record_id = self.summary_id(summary)
        if not record_id:
            return RecordFailure(
                "", summary, Issue(Reason.FIELD_MISSING, "id", "listed record has no id")
            )
        try:
            return await self.fetch_detail(record_id)
        except RecordUnavailable as exc:
            return RecordFailure(record_id, summary, Issue(exc.reason, "$", str(exc)))


async def gather_or_cancel(calls: Iterable[Awaitable[T]]) -> list[T]:
    """Run the calls concurrently and return their results in order; on the first failure
    (or cancellation) cancel the others and wait for them, so none is left running detached."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


# Pages whose detail calls may be in flight at once (beyond that, only while the calls of
# those pages would not fill the client's concurrency bound): the next page's calls start
# while the current one's last calls still run.
DETAIL_PAGES_AHEAD = 2


def _running(window: deque[tuple[ListPage, list[asyncio.Task[Any]]]]) -> int:
    return sum(1 for _, tasks in window for task in tasks if not task.done())
