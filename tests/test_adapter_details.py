"""`ListDetailAdapter`'s detail calls across page boundaries: the next page's calls start
while the current page's last ones run, pages come out in order with their own positions,
and no call is left running after an error or an early stop."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import httpx
import pytest

from adapters import meditrak_import
from connector.sources.adapter import DETAIL_PAGES_AHEAD, FetchRequest, SourcePage
from connector.sources.http import VendorHttpError

BASE = "https://vendor.example/api/"
PAGE_SIZE = 4


class Vendor:
    """A list of `n` ids and a detail endpoint whose answers take `delay(id)` seconds."""

    def __init__(self, n: int, *, fail: str | None = None, hold_page_ends: bool = False) -> None:
        self.ids = [f"R{i:03d}" for i in range(n)]
        self.fail = fail
        # Whether a page's slow last call also waits for the next page's first call to start.
        self.hold_page_ends = hold_page_ends
        self._starting: dict[str, asyncio.Event] = {}
        self.started: dict[str, float] = {}
        self.finished: dict[str, float] = {}
        self.in_flight = 0
        self.max_in_flight = 0

    def _started_event(self, record_id: str) -> asyncio.Event:
        return self._starting.setdefault(record_id, asyncio.Event())

    def delay(self, record_id: str) -> float:
        # The last record of each page is the slow one: the page end is where a page-by-page
        # walk would drain the pipe.
        return 0.08 if int(record_id[1:]) % PAGE_SIZE == PAGE_SIZE - 1 else 0.01

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/invoices"):
            page = int(request.url.params["page"])
            chunk = self.ids[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
            return httpx.Response(
                200, json={"data": [{"id": i} for i in chunk], "total": len(self.ids)}
            )
        record_id = path.rsplit("/", 1)[1]
        self.started[record_id] = time.monotonic()
        self._started_event(record_id).set()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay(record_id))
            index = int(record_id[1:])
            page_end = index % PAGE_SIZE == PAGE_SIZE - 1
            if self.hold_page_ends and page_end and index + 1 < len(self.ids):
                # A pipelining walk starts the next page during this call whatever the machine's
                # speed; a page-by-page one never does, and is let through after the timeout.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._started_event(self.ids[index + 1]).wait(), 5)
        finally:
            self.in_flight -= 1
        self.finished[record_id] = time.monotonic()
        if record_id == self.fail:
            return httpx.Response(400, json={"error": "bad request"})
        return httpx.Response(200, json={"id": record_id, "detail": True})


def adapter(vendor: Vendor, concurrency: int = 3) -> meditrak_import.Adapter:
    config = meditrak_import.Config.model_validate(
        {
            "type": "meditrak_import",
            "name": "m",
            "base_url": BASE,
            "api_key": "k",
            "fetch_detail": True,
            "page_size": PAGE_SIZE,
            "http": {"transport": "httpx", "concurrency": concurrency, "max_retries": 0},
        }
    )
    created = meditrak_import.Adapter.create(config, transport=httpx.MockTransport(vendor))
    assert isinstance(created, meditrak_import.Adapter)
    return created


def test_pages_keep_their_order_and_positions_while_the_pipe_stays_full() -> None:
    vendor = Vendor(5 * PAGE_SIZE, hold_page_ends=True)

    async def go() -> list[SourcePage]:
        async with adapter(vendor) as source:
            pages = [page async for page in source.fetch_pages(FetchRequest())]
        assert asyncio.all_tasks() == {asyncio.current_task()}
        return pages

    pages = asyncio.run(go())
    assert [[r["id"] for r in page.records] for page in pages] == [
        vendor.ids[i : i + PAGE_SIZE] for i in range(0, len(vendor.ids), PAGE_SIZE)
    ]
    assert all(r["detail"] for page in pages for r in page.records)
    assert [page.position for page in pages] == [
        {"index": 1, "pass": 1},
        {"index": 2, "pass": 1},
        {"index": 3, "pass": 1},
        {"index": 4, "pass": 1},
        None,
    ]
    assert vendor.max_in_flight <= 3
    # Each page's first detail call started before the previous page's slow last one ended.
    for page in range(1, 5):
        slow_end = vendor.finished[vendor.ids[page * PAGE_SIZE - 1]]
        assert vendor.started[vendor.ids[page * PAGE_SIZE]] < slow_end


def test_a_fatal_detail_answer_cancels_every_call_in_flight() -> None:
    vendor = Vendor(6 * PAGE_SIZE, fail="R005")  # on the second page

    async def go() -> list[SourcePage]:
        seen: list[SourcePage] = []
        async with adapter(vendor) as source:
            with pytest.raises(VendorHttpError):
                async for page in source.fetch_pages(FetchRequest()):
                    seen.append(page)
        assert asyncio.all_tasks() == {asyncio.current_task()}
        return seen

    seen = asyncio.run(go())
    # The first page was handed on before the failing one; nothing after it was.
    assert [[r["id"] for r in page.records] for page in seen] == [vendor.ids[:PAGE_SIZE]]
    assert DETAIL_PAGES_AHEAD >= 2
    assert len(vendor.started) < len(vendor.ids)


def test_a_consumer_that_stops_early_leaves_no_call_running() -> None:
    vendor = Vendor(6 * PAGE_SIZE)

    async def go() -> int:
        async with adapter(vendor) as source:
            pages = source.fetch_pages(FetchRequest())
            first = await anext(pages)
            await pages.aclose()  # type: ignore[attr-defined]
        assert asyncio.all_tasks() == {asyncio.current_task()}
        finished = len(vendor.finished)
        await asyncio.sleep(0.2)
        assert len(vendor.finished) == finished  # nothing completed after the stop
        return len(first.records)

    assert asyncio.run(go()) == PAGE_SIZE


def test_without_details_the_list_pages_pass_through() -> None:
    vendor = Vendor(2 * PAGE_SIZE + 1)

    async def go() -> list[Any]:
        source = adapter(vendor)
        source.config = source.config.model_copy(update={"fetch_detail": False})
        async with source:
            return [page async for page in source.fetch_pages(FetchRequest())]

    pages = asyncio.run(go())
    assert [len(page.records) for page in pages] == [4, 4, 1]
    assert not vendor.started
