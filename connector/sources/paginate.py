"""The pagination styles vendors use, written once: numbered pages or offsets with a total,
"next" links, and one plain array (stream-parsed by `JsonArraySplitter`).

A paginator yields `ListPage`s in order, each with the position from which a later run can
resume (the page *after* it). Numbered styles fetch ahead within the client's concurrency;
every style is bounded: a repeated page, a looping link or a runaway page count stops with a
`ContractError` instead of spinning forever.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import math
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
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
            f"{where}: expected a non-negative integer total at '{path}', "
            f"got {type(value).__name__}"
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
    """One request answering the whole list as one plain JSON array (no pagination), handed
    on in pages of `page_size`. The array is stream-parsed element by element and never held
    whole, so memory stays flat however long the list; `keep` may drop elements on the way
    (a filter the vendor cannot apply). Position `{"skip": n}`: the first n elements were
    handed on or dropped. A transient failure, even mid-answer, is retried by the client,
    which asks again and skips what was already handed on."""

    page_size: int = 500
    # One element longer than this (in characters) is a broken answer, not a record.
    max_element_chars: int = 1_000_000
    keep: Callable[[Any], bool] | None = None

    async def pages(
        self,
        client: SourceClient,
        path: str,
        params: Mapping[str, Any],
        resume: Position | None = None,
    ) -> AsyncGenerator[ListPage, None]:
        where = f"GET {path}"
        batches = client.stream_item_batches(
            "GET",
            path,
            lambda: JsonArraySplitter(max_element_chars=self.max_element_chars, where=where),
            skip=skip_of(resume),
            params=params,
        )
        keep = self.keep
        page: list[Any] = []
        number = 0
        try:
            async for batch in batches:
                for index, record in batch:
                    if keep is not None and not keep(record):
                        continue
                    if len(page) >= self.page_size:
                        # Everything before `index` is handed on or dropped.
                        yield ListPage(page, {"skip": index}, None, number)
                        page, number = [], number + 1
                    page.append(record)
        finally:
            # Closed here, not whenever it is collected: the answer's connection goes back now.
            await batches.aclose()
        # Held back one record so that the last page is the one whose position is None.
        yield ListPage(page, None, None, number)


def skip_of(position: Position | None) -> int:
    """The element count of a `SingleArrayPaginator` position."""
    if not position:
        return 0
    skip = position.get("skip", 0)
    if isinstance(skip, bool) or not isinstance(skip, int) or skip < 0:
        raise ContractError(f"unusable resume position {position!r}")
    return skip


class JsonArraySplitter:
    """Splits a JSON array arriving in byte chunks into its elements, one at a time (an
    `ItemParser` for `SourceClient.stream_item_batches`).

    Each element is decoded by the C-accelerated `json` scanner as soon as it is complete, so
    memory holds one chunk plus the element in progress, never the whole array. An element cut
    by a chunk boundary is retried once twice as much of it has arrived (linear overall).
    """

    def __init__(self, *, max_element_chars: int, where: str) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
        self._json = json.JSONDecoder()
        self._max = max_element_chars
        self._where = where
        self._buffer = ""
        # "start" → "value" (after "[" or ",") / "first" (right after "[") → "after" → "done"
        self._state = "start"
        self._wait_for = 0  # buffer length to reach before retrying an incomplete element

    def feed(self, data: bytes) -> list[Any]:
        try:
            self._buffer += self._decoder.decode(data)
        except UnicodeDecodeError as exc:
            raise ContractError(f"{self._where}: answer is not UTF-8 ({exc.reason})") from None
        return self._drain(final=False)

    def close(self) -> list[Any]:
        """The last elements; raises if the array never ended."""
        try:
            self._buffer += self._decoder.decode(b"", final=True)
        except UnicodeDecodeError as exc:
            raise ContractError(f"{self._where}: answer is not UTF-8 ({exc.reason})") from None
        elements = self._drain(final=True)
        if self._state != "done":
            raise ContractError(f"{self._where}: the JSON array ended early (truncated answer)")
        return elements

    def _fail(self, found: str) -> ContractError:
        return ContractError(f"{self._where}: expected a JSON array of invoices, found {found}")

    def _drain(self, *, final: bool) -> list[Any]:
        elements: list[Any] = []
        text = self._buffer
        size = len(text)
        pos = 0
        while True:
            while pos < size and text[pos] in " \t\r\n":
                pos += 1
            if pos >= size:
                break
            char = text[pos]
            state = self._state
            if state == "start":
                if char != "[":
                    raise self._fail(repr(text[pos : pos + 20]))
                self._state, pos = "first", pos + 1
            elif state == "done":
                raise self._fail(f"data after the array: {text[pos : pos + 20]!r}")
            elif state == "after":
                if char == ",":
                    self._state, pos = "value", pos + 1
                elif char == "]":
                    self._state, pos = "done", pos + 1
                else:
                    raise self._fail(f"{char!r} between elements")
            elif char == "]" and state == "first":
                self._state, pos = "done", pos + 1
            else:
                if not final and size - pos < self._wait_for:
                    break
                try:
                    element, end = self._json.raw_decode(text, pos)
                except json.JSONDecodeError as exc:
                    if final:
                        raise self._fail(f"invalid JSON ({exc.msg})") from None
                    # Most likely cut by the chunk boundary; if it is plainly invalid, the
                    # size bound or the end of the answer reports it.
                    self._need_more(size - pos, exc.msg)
                    break
                if end >= size and not final:
                    # A number at the very end may continue in the next chunk ("12" of "125").
                    self._need_more(size - pos, "incomplete")
                    break
                elements.append(element)
                self._state, pos, self._wait_for = "after", end, 0
        self._buffer = text[pos:]
        return elements

    def _need_more(self, pending: int, problem: str) -> None:
        if pending > self._max:
            raise ContractError(
                f"{self._where}: an array element is still not valid JSON after {self._max} "
                f"characters ({problem}): the answer is malformed, or the element is longer "
                "than the source's record size limit"
            )
        self._wait_for = max(pending + 1, 2 * pending)
