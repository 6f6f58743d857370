"""The paginators against scripted vendors (respx): numbered pages and offsets with a total,
prefetching, resuming, rescans when the total moves, next links, and every way a vendor can
make a naive loop spin forever."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import respx

from connector.config import HttpSettings
from connector.errors import ContractError
from connector.sources.http import SourceClient
from connector.sources.paginate import (
    IndexedPaginator,
    JsonArraySplitter,
    ListPage,
    NextLinkPaginator,
    Paginator,
    Position,
    SingleArrayPaginator,
)

BASE = "https://vendor.example/api/"
SETTINGS = HttpSettings.model_validate({"max_retries": 0, "concurrency": 8, "transport": "httpx"})


def walk(
    paginator: Paginator, params: dict[str, Any] | None = None, resume: Position | None = None
) -> list[ListPage]:
    async def go() -> list[ListPage]:
        async with SourceClient(BASE, SETTINGS) as client:
            pages = paginator.pages(client, "invoices", params or {}, resume)
            return [page async for page in pages]

    return asyncio.run(go())


def records(pages: list[ListPage]) -> list[Any]:
    return [record for page in pages for record in page.records]


class PagedVendor:
    """`?page=&limit=` or `?offset=&limit=` over a list that a test may change mid-walk."""

    def __init__(
        self, rows: list[int], *, total: bool = True, delay: float = 0.0, first_page: int = 1
    ) -> None:
        self.rows = rows
        self.first_page = first_page
        self.with_total = total
        self.delay = delay
        self.requests: list[dict[str, str]] = []
        self.in_flight = 0
        self.peak = 0
        self.before: Callable[[PagedVendor], None] | None = None

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        params = dict(request.url.params)
        self.requests.append(params)
        if self.before is not None:
            self.before(self)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        limit = int(params["limit"])
        if "offset" in params:
            start = int(params["offset"])
        else:
            start = (int(params["page"]) - self.first_page) * limit
        body: dict[str, Any] = {"data": self.rows[start : start + limit]}
        if self.with_total:
            body["meta"] = {"total": len(self.rows)}
        return httpx.Response(200, json=body)


@respx.mock
def test_page_and_total_prefetches_and_yields_in_order() -> None:
    vendor = PagedVendor(list(range(23)), delay=0.05)
    respx.get(BASE + "invoices").mock(side_effect=vendor)
    paginator = IndexedPaginator("data", "meta.total", page_size=5, prefetch=3)
    pages = walk(paginator, {"status": "paid"})
    assert records(pages) == list(range(23))
    assert [p.number for p in pages] == [0, 1, 2, 3, 4]
    assert [p.position for p in pages] == [
        {"index": 1, "pass": 1},
        {"index": 2, "pass": 1},
        {"index": 3, "pass": 1},
        {"index": 4, "pass": 1},
        None,
    ]
    assert all(p.total == 23 for p in pages)
    assert sorted(int(r["page"]) for r in vendor.requests) == [1, 2, 3, 4, 5]
    assert all(r["limit"] == "5" and r["status"] == "paid" for r in vendor.requests)
    # Pages after the first were fetched ahead, at most `prefetch` at a time.
    assert vendor.peak == 3


@respx.mock
def test_zero_based_pages_and_an_empty_list() -> None:
    vendor = PagedVendor(list(range(7)), first_page=0)
    respx.get(BASE + "invoices").mock(side_effect=vendor)
    pages = walk(IndexedPaginator("data", "meta.total", page_size=5, first_page=0))
    assert records(pages) == list(range(7))
    assert [r["page"] for r in vendor.requests] == ["0", "1"]
    vendor.rows = []
    vendor.requests.clear()
    pages = walk(IndexedPaginator("data", "meta.total", page_size=5))
    assert [(p.records, p.position) for p in pages] == [([], None)]
    assert len(vendor.requests) == 1


@respx.mock
def test_offset_style_pagination() -> None:
    vendor = PagedVendor(list(range(12)))
    respx.get(BASE + "invoices").mock(side_effect=vendor)
    paginator = IndexedPaginator(
        "data", "meta.total", style="offset", offset_param="offset", page_size=5
    )
    pages = walk(paginator)
    assert records(pages) == list(range(12))
    assert sorted(int(r["offset"]) for r in vendor.requests) == [0, 5, 10]
    assert all("page" not in r for r in vendor.requests)


@respx.mock
def test_resuming_from_a_position_fetches_only_the_rest() -> None:
    vendor = PagedVendor(list(range(23)))
    respx.get(BASE + "invoices").mock(side_effect=vendor)
    paginator = IndexedPaginator("data", "meta.total", page_size=5)
    pages = walk(paginator, resume={"index": 3, "pass": 1})
    assert records(pages) == list(range(15, 23))
    assert sorted(int(r["page"]) for r in vendor.requests) == [4, 5]
    assert pages[-1].position is None


@respx.mock
def test_a_total_that_changes_mid_run_triggers_a_rescan() -> None:
    vendor = PagedVendor(list(range(10)))

    def insert_at_front_once(v: PagedVendor) -> None:
        # While page 2 is asked for, a record appears at the front: offsets shift by one.
        if len(v.requests) == 2:
            v.rows.insert(0, -1)

    vendor.before = insert_at_front_once
    respx.get(BASE + "invoices").mock(side_effect=vendor)
    paginator = IndexedPaginator("data", "meta.total", page_size=5, prefetch=1)
    pages = walk(paginator)
    seen = records(pages)
    # Without the rescan record 4 (shifted from page 1 to page 2 behind our back) would be lost.
    assert set(seen) == set(range(-1, 10))
    assert pages[-1].position is None
    passes = [p.position["pass"] for p in pages if p.position]
    assert passes[0] == 1 and passes[-1] == 2
    assert len(vendor.requests) == 2 + 3


@respx.mock
def test_a_total_that_never_settles_is_a_contract_error() -> None:
    vendor = PagedVendor(list(range(10)))

    def always_growing(v: PagedVendor) -> None:
        v.rows.append(len(v.rows))

    vendor.before = always_growing
    respx.get(BASE + "invoices").mock(side_effect=vendor)
    paginator = IndexedPaginator("data", "meta.total", page_size=5, prefetch=1, max_passes=3)
    with pytest.raises(ContractError, match="total kept changing over 3 passes"):
        walk(paginator)


@respx.mock
def test_without_a_total_pages_end_at_a_short_page() -> None:
    vendor = PagedVendor(list(range(10)), total=False)
    respx.get(BASE + "invoices").mock(side_effect=vendor)
    pages = walk(IndexedPaginator("data", None, page_size=5))
    # 10 rows in pages of 5: the third (empty) page is what proves the end.
    assert [len(p.records) for p in pages] == [5, 5, 0]
    assert records(pages) == list(range(10))
    assert [p.position for p in pages] == [{"index": 1, "pass": 1}, {"index": 2, "pass": 1}, None]


@respx.mock
def test_a_repeated_page_without_a_total_is_a_contract_error() -> None:
    # A vendor that ignores the page parameter answers page 1 forever.
    route = respx.get(BASE + "invoices").respond(json={"data": [1, 2, 3, 4, 5]})
    with pytest.raises(ContractError, match="repeated the previous page"):
        walk(IndexedPaginator("data", None, page_size=5))
    assert route.call_count == 2


@respx.mock
def test_malformed_envelopes_are_contract_errors() -> None:
    respx.get(BASE + "invoices").respond(json={"items": []})
    with pytest.raises(ContractError, match="expected a list of records at 'data'"):
        walk(IndexedPaginator("data", None))
    respx.get(BASE + "invoices").respond(json={"data": [], "meta": {"total": "many"}})
    with pytest.raises(ContractError, match=r"non-negative integer total at 'meta\.total'"):
        walk(IndexedPaginator("data", "meta.total"))


def link_vendor(links: dict[str, str | None]) -> Callable[[httpx.Request], httpx.Response]:
    """Pages named by path; each answers its own name as record and the given next link."""

    def handler(request: httpx.Request) -> httpx.Response:
        name = request.url.path.rsplit("/", 1)[-1]
        return httpx.Response(200, json={"results": [name], "links": {"next": links[name]}})

    return handler


@respx.mock
def test_next_links_relative_and_absolute_are_followed_to_the_end() -> None:
    route = respx.get(url__startswith=BASE).mock(
        side_effect=link_vendor(
            {"invoices": "p2", "p2": BASE + "p3", "p3": "https://vendor.example/api/p4", "p4": None}
        )
    )
    pages = walk(NextLinkPaginator("results", "links.next"), {"since": "2025-01-01"})
    assert records(pages) == ["invoices", "p2", "p3", "p4"]
    assert [p.position for p in pages] == [
        {"next": "p2"},
        {"next": BASE + "p3"},
        {"next": "https://vendor.example/api/p4"},
        None,
    ]
    # The first request carries the filter; next links carry their own query.
    assert route.calls[0].request.url.params["since"] == "2025-01-01"
    assert "since" not in route.calls[1].request.url.params


@respx.mock
def test_next_link_resume_starts_at_the_stored_link() -> None:
    route = respx.get(url__startswith=BASE).mock(
        side_effect=link_vendor({"invoices": "p2", "p2": "p3", "p3": None})
    )
    pages = walk(NextLinkPaginator("results", "links.next"), resume={"next": "p3"})
    assert records(pages) == ["p3"]
    assert route.call_count == 1


@pytest.mark.parametrize(
    "links",
    [
        {"invoices": "p2", "p2": "p3", "p3": "p2"},
        {"invoices": "p2", "p2": "p2"},
    ],
    ids=["cycle", "self-link"],
)
@respx.mock
def test_a_looping_next_link_is_a_contract_error(links: dict[str, str | None]) -> None:
    route = respx.get(url__startswith=BASE).mock(side_effect=link_vendor(links))
    with pytest.raises(ContractError, match="loops back"):
        walk(NextLinkPaginator("results", "links.next"))
    assert route.call_count <= 3


@respx.mock
def test_a_next_link_that_is_not_text_is_a_contract_error() -> None:
    respx.get(BASE + "invoices").respond(json={"results": [], "links": {"next": 2}})
    with pytest.raises(ContractError, match="not a string"):
        walk(NextLinkPaginator("results", "links.next"))


@respx.mock
def test_single_array_is_handed_on_in_slices_and_resumes() -> None:
    route = respx.get(BASE + "invoices").respond(json=list(range(7)))
    pages = walk(SingleArrayPaginator(page_size=3))
    assert [p.records for p in pages] == [[0, 1, 2], [3, 4, 5], [6]]
    assert [p.position for p in pages] == [{"skip": 3}, {"skip": 6}, None]
    resumed = walk(SingleArrayPaginator(page_size=3), resume={"skip": 6})
    assert [p.records for p in resumed] == [[6]]
    assert walk(SingleArrayPaginator(page_size=3), resume={"skip": 9})[0].records == []
    assert route.call_count == 3


@respx.mock
def test_single_array_filters_on_the_way_and_counts_filtered_elements_in_positions() -> None:
    respx.get(BASE + "invoices").respond(json=list(range(10)))
    pages = walk(SingleArrayPaginator(page_size=2, keep=lambda n: n >= 5))
    assert [(p.records, p.position) for p in pages] == [
        ([5, 6], {"skip": 7}),
        ([7, 8], {"skip": 9}),
        ([9], None),
    ]
    assert [(p.records, p.position) for p in walk(SingleArrayPaginator(keep=bool))] == [
        (list(range(1, 10)), None)
    ]


@pytest.mark.parametrize("position", [{"skip": "ten"}, {"skip": -1}, {"skip": True}])
def test_single_array_refuses_a_broken_resume_position(position: Position) -> None:
    with pytest.raises(ContractError, match="unusable resume position"):
        walk(SingleArrayPaginator(), resume=position)


@respx.mock
def test_single_array_stopped_early_gives_its_connection_back() -> None:
    respx.get(BASE + "invoices").respond(json=list(range(10)))

    async def go() -> tuple[list[Any], int]:
        async with SourceClient(BASE, SETTINGS) as client:
            pages = SingleArrayPaginator(page_size=3).pages(client, "invoices", {})
            first = await anext(pages)
            await pages.aclose()
            return first.records, client.stats.in_flight

    assert asyncio.run(go()) == ([0, 1, 2], 0)


# -- the streamed single array: its splitter ------------------------------------------------

TRICKY = [
    {"id": "1", "text": "brackets ] [ } { and , commas", "n": 12345},
    {"id": "2", "text": 'escaped \\" quote and \\\\ backslash', "nested": {"a": [1, {"b": None}]}},
    {"id": "3", "text": "colón ₡ 15.000,00 — ñandú 🦜"},
    12345678901234567890,
    -0.5,
    "a string element",
    [],
    {},
    None,
    True,
]


def split(data: bytes, chunk: int) -> list[Any]:
    splitter = JsonArraySplitter(max_element_chars=10_000, where="test")
    out: list[Any] = []
    for start in range(0, len(data), chunk):
        out.extend(splitter.feed(data[start : start + chunk]))
    out.extend(splitter.close())
    return out


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 100_000])
def test_splitter_matches_a_whole_parse_at_any_chunking(chunk: int) -> None:
    for text in (json.dumps(TRICKY), json.dumps(TRICKY, indent=3), " [ ] ", "[]"):
        data = text.encode()
        assert split(data, chunk) == json.loads(data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"data": []}', "expected a JSON array"),
        (b"[1, 2", "ended early"),
        (b"[1 2]", "between elements"),
        (b"[1,]", "invalid JSON"),
        (b"[1] [2]", "data after the array"),
        (b"", "ended early"),
        (b"[\xff]", "not UTF-8"),
    ],
)
def test_splitter_rejects_what_is_not_one_array(data: bytes, message: str) -> None:
    with pytest.raises(ContractError, match=message):
        split(data, 1)


def test_splitter_refuses_an_oversized_element() -> None:
    splitter = JsonArraySplitter(max_element_chars=100, where="GET billing/invoices")
    with pytest.raises(ContractError, match="still not valid JSON after 100 characters"):
        splitter.feed(b'[{"notes": "' + b"x" * 500)


def test_splitter_reports_an_invalid_element_mid_stream_within_the_bound() -> None:
    splitter = JsonArraySplitter(max_element_chars=100, where="GET billing/invoices")
    assert splitter.feed(b'[{"id": 1}, {"id": oops}') == [{"id": 1}]
    with pytest.raises(ContractError, match="Expecting value"):
        splitter.feed(b", " + b'{"id": 2}, ' * 20)


def test_splitter_holds_only_the_element_in_progress() -> None:
    splitter = JsonArraySplitter(max_element_chars=10_000, where="test")
    elements = splitter.feed(b'[{"id": 1}, {"id": 2}, {"id"')
    assert elements == [{"id": 1}, {"id": 2}]
    assert splitter._buffer == '{"id"'
    assert splitter.feed(b": 3}]") + splitter.close() == [{"id": 3}]
