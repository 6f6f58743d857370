"""The pagination styles vendors use, written once: numbered pages or offsets with a total,
"next" links, and one plain array.

A paginator yields `ListPage`s in order, each with the position from which a later run can
resume (the page *after* it). Numbered styles fetch ahead within the client's concurrency;
every style is bounded: a repeated page, a looping link or a runaway page count stops with a
`ContractError` instead of spinning forever.
"""

from __future__ import annotations

import asyncio
import math
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import structlog

from connector.errors import ContractError
from connector.sources.http import SourceClient

log = structlog.get_logger("connector.sources.paginate")

Position = dict[str, Any]
# Beyond this many pages in one pass something is wrong with the vendor, not with our patience.
MAX_PAGES = 1_000_000
# Pages fetched ahead hold at most about this many records, whatever the page size: memory
# stays flat however large the sync, and the pipe stays full (docs/performance.md).
PREFETCH_RECORDS = 2_000


@dataclass(frozen=True, slots=True)
class ListPage:
    records: list[Any]
    # Where to resume after this page was stored; None after the last page.
    position: Position | None
    total: int | None = None
    number: int = 0


def dig(body: Any, path: str) -> Any:
    """`a.b.c` inside nested dicts; an empty path is the body itself."""
    node = body
    for part in filter(None, path.split(".")):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def records_at(body: Any, path: str, where: str) -> list[Any]:
    records = dig(body, path)
    if not isinstance(records, list):
        found = type(records).__name__ if records is not None else "nothing"
        raise ContractError(
            f"{where}: expected a list of records at '{path or '$'}', found {found}"
        )
    return records


def total_at(body: Any, path: str | None, where: str) -> int | None:
    if not path:
        return None
    value = dig(body, path)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ContractError(
            f"{where}: expected a non-negative integer total at '{path}', got {value!r}"
        )
    return value


class Paginator(ABC):
    @abstractmethod
    def pages(
        self,
        client: SourceClient,
        path: str,
        params: Mapping[str, Any],
        resume: Position | None = None,
    ) -> AsyncIterator[ListPage]:
        """The list's pages in order, starting at `resume` when given."""


@dataclass(frozen=True)
class IndexedPaginator(Paginator):
    """`page`+`limit` (1-based or 0-based) or `offset`+`limit`, with a total in the envelope.

    With a total, the pages after the first are fetched ahead (up to `prefetch` at once) and
    yielded in order. If the total changes during a pass (records added or deleted, so that
    offsets shift), the list is walked once more from the start so nothing is skipped;
    unchanged records cost no write the second time.
    """

    records_path: str
    total_path: str | None
    style: Literal["page", "offset"] = "page"
    page_param: str = "page"
    offset_param: str = "offset"
    size_param: str = "limit"
    page_size: int = 100
    first_page: int = 1
    prefetch: int = 4
    max_passes: int = 3

    def _params(self, base: Mapping[str, Any], index: int) -> dict[str, Any]:
        params = dict(base)
        if self.style == "page":
            params[self.page_param] = self.first_page + index
        else:
            params[self.offset_param] = index * self.page_size
        params[self.size_param] = self.page_size
        return params

    def _index_of(self, position: Position | None) -> tuple[int, int]:
        if not position:
            return 0, 1
        return int(position.get("index", 0)), int(position.get("pass", 1))

    async def pages(
        self,
        client: SourceClient,
        path: str,
        params: Mapping[str, Any],
        resume: Position | None = None,
    ) -> AsyncIterator[ListPage]:
        start, pass_no = self._index_of(resume)
        while True:
            drifted = False
            async for page, page_drifted in self._one_pass(client, path, params, start, pass_no):
                drifted = drifted or page_drifted
                yield page
            if not drifted:
                return
            if pass_no >= self.max_passes:
                raise ContractError(
                    f"GET {path}: the total kept changing over {pass_no} passes (or pages "
                    f"before the last came back short of page_size {self.page_size}); records "
                    "may have been skipped - check page_size against the vendor's maximum, or "
                    "run again when the source is quieter"
                )
            log.warning("paginate.drift", path=path, rescan_pass=pass_no + 1)
            start, pass_no = 0, pass_no + 1

    async def _one_pass(
        self,
        client: SourceClient,
        path: str,
        params: Mapping[str, Any],
        start: int,
        pass_no: int,
    ) -> AsyncIterator[tuple[ListPage, bool]]:
        async def fetch(index: int) -> tuple[list[Any], int | None]:
            body = await client.get_json(path, self._params(params, index))
            where = f"GET {path} page {index + 1}"
            return records_at(body, self.records_path, where), total_at(
                body, self.total_path, where
            )

        def position(next_index: int, last: bool) -> Position | None:
            return None if last else {"index": next_index, "pass": pass_no}

        records, total = await fetch(start)
        if total is None:
            async for item in self._until_short(fetch, records, start, position):
                yield item
            return
        last_index = max(0, math.ceil(total / self.page_size) - 1)
        # A page before the last with fewer records than asked for (an empty page, a vendor
        # capping the page size) would silently skip records: read the list again instead.
        short = start < last_index and len(records) < self.page_size
        if short:
            log.warning("paginate.short_page", path=path, page=start + 1, records=len(records))
        yield ListPage(records, position(start + 1, start >= last_index), total, start), short
        if start >= last_index or short:
            return
        pending: dict[int, asyncio.Task[tuple[list[Any], int | None]]] = {}
        ahead = max(1, min(self.prefetch, PREFETCH_RECORDS // max(1, self.page_size)))
        next_to_start = start + 1
        try:
            for index in range(start + 1, last_index + 1):
                while next_to_start <= last_index and len(pending) < ahead:
                    pending[next_to_start] = asyncio.create_task(fetch(next_to_start))
                    next_to_start += 1
                page_records, page_total = await pending.pop(index)
                is_last = index == last_index
                drifted = page_total != total
                if drifted:
                    log.warning("paginate.total_changed", path=path, was=total, now=page_total)
                elif not is_last and len(page_records) < self.page_size:
                    log.warning(
                        "paginate.short_page", path=path, page=index + 1, records=len(page_records)
                    )
                    drifted = True
                yield (
                    ListPage(page_records, position(index + 1, is_last), page_total, index),
                    drifted,
                )
                if drifted:
                    return
        finally:
            for task in pending.values():
                task.cancel()
            await asyncio.gather(*pending.values(), return_exceptions=True)

    async def _until_short(
        self,
        fetch: Any,
        records: list[Any],
        index: int,
        position: Any,
    ) -> AsyncIterator[tuple[ListPage, bool]]:
        previous: list[Any] | None = None
        while True:
            short = len(records) < self.page_size
            if previous is not None and records and records == previous:
                raise ContractError(f"GET page {index + 1} repeated the previous page: stopping")
            yield ListPage(records, position(index + 1, short), None, index), False
            if short or index >= MAX_PAGES:
                return
            previous = records
            index += 1
            records, _ = await fetch(index)


@dataclass(frozen=True)
class NextLinkPaginator(Paginator):
    """Follow a "next page" link (relative or absolute) until it is null."""

    records_path: str
    next_path: str

    async def pages(
        self,
        client: SourceClient,
        path: str,
        params: Mapping[str, Any],
        resume: Position | None = None,
    ) -> AsyncIterator[ListPage]:
        url: str = resume["next"] if resume and resume.get("next") else path
        query: Mapping[str, Any] | None = None if resume and resume.get("next") else params
        seen: set[str] = set()
        number = 0
        while True:
            body = await client.get_json(url, query)
            records = records_at(body, self.records_path, f"GET {url}")
            link = dig(body, self.next_path)
            if link is not None and not isinstance(link, str):
                raise ContractError(f"GET {url}: next link at '{self.next_path}' is not a string")
            if link:
                if link in seen or link == url:
                    raise ContractError(f"GET {url}: next link loops back to {link}: stopping")
                seen.add(url)
            yield ListPage(records, {"next": link} if link else None, None, number)
            if not link or number >= MAX_PAGES:
                return
            url, query, number = link, None, number + 1


@dataclass(frozen=True)
class SingleArrayPaginator(Paginator):
    """One request answering the whole list; handed on in slices of `page_size`."""

    records_path: str = ""
    page_size: int = 500

    async def pages(
        self,
        client: SourceClient,
        path: str,
        params: Mapping[str, Any],
        resume: Position | None = None,
    ) -> AsyncIterator[ListPage]:
        body = await client.get_json(path, params)
        records = records_at(body, self.records_path, f"GET {path}")
        del body
        skip = int(resume.get("skip", 0)) if resume else 0
        total = len(records)
        if skip >= total:
            yield ListPage([], None, total, 0)
            return
        for number, begin in enumerate(range(skip, total, self.page_size)):
            end = min(begin + self.page_size, total)
            yield ListPage(
                records[begin:end], {"skip": end} if end < total else None, total, number
            )
