"""`PerRunLookup`, the per-run cache of a resource that raw records only point at (the Splose
and Invoice API patients): each id fetched once per run within the client's concurrency bound,
answers attached, and a resource the vendor no longer has attached as None or failing only the
records pointing at it. The vendor is an `httpx.MockTransport`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import httpx
import pytest

from connector.config import HttpSettings
from connector.issues import Issue, Reason
from connector.sources.adapter import RecordFailure, SourcePage
from connector.sources.http import SourceClient, VendorHttpError
from connector.sources.lookups import GoneAsNone, GoneFailsRecord, PerRunLookup

BASE = "https://vendor.example/api/"
T = TypeVar("T")


class Vendor:
    """`GET patients/{id}` answering `{"id": id}` after `delay` seconds, or `status` for the ids
    in `statuses`; records every path asked for and the most calls in flight at once."""

    def __init__(self, statuses: dict[str, int] | None = None, delay: float = 0.0) -> None:
        self.statuses = statuses or {}
        self.delay = delay
        self.paths: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.raw_path.decode())
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        key = request.url.raw_path.decode().rsplit("/", 1)[-1]
        if key in self.statuses:
            return httpx.Response(self.statuses[key], json={"detail": f"no patient {key}"})
        return httpx.Response(200, json={"id": key})


def record_id(raw: Any) -> str:
    return str(raw.get("id", ""))


def patient_of(raw: Any) -> str | None:
    value = raw.get("patient") if isinstance(raw, dict) else None
    return value if isinstance(value, str) and value else None


GONE_AS_NONE = GoneAsNone(statuses=(404,))
GONE_FAILS = GoneFailsRecord(
    statuses=(404, 410), field="patient", label="patient", record_key=record_id
)


def run(
    vendor: Vendor,
    action: Callable[[PerRunLookup], Awaitable[T]],
    *,
    when_gone: GoneAsNone | GoneFailsRecord = GONE_AS_NONE,
    concurrency: int = 8,
) -> T:
    async def go() -> T:
        settings = HttpSettings(
            concurrency=concurrency, max_retries=0, transport="httpx", backoff_base=0.001
        )
        client = SourceClient(BASE, settings, transport=httpx.MockTransport(vendor))
        async with client:
            lookup = PerRunLookup(
                client,
                path="patients/{id}",
                key_of=patient_of,
                attach_as="_patient",
                when_gone=when_gone,
            )
            return await action(lookup)

    return asyncio.run(go())


def page(*records: Any, failures: list[RecordFailure] | None = None) -> SourcePage:
    return SourcePage(list(records), {"page": 1}, failures or [])


def attach_all(*pages: SourcePage) -> Callable[[PerRunLookup], Awaitable[list[SourcePage]]]:
    async def action(lookup: PerRunLookup) -> list[SourcePage]:
        return [await lookup.attach(p) for p in pages]

    return action


def test_each_id_is_fetched_once_per_run_and_attached_to_every_record() -> None:
    vendor = Vendor()
    first = page({"id": "a", "patient": "p1"}, {"id": "b", "patient": "p2"})
    second = page({"id": "c", "patient": "p1"}, {"id": "d", "patient": "p3"})
    out = run(vendor, attach_all(first, second))
    assert sorted(vendor.paths) == ["/api/patients/p1", "/api/patients/p2", "/api/patients/p3"]
    records = [raw for p in out for raw in p.records]
    assert [(r["id"], r["_patient"]) for r in records] == [
        ("a", {"id": "p1"}),
        ("b", {"id": "p2"}),
        ("c", {"id": "p1"}),
        ("d", {"id": "p3"}),
    ]
    assert [p.position for p in out] == [{"page": 1}, {"page": 1}]
    # The raw records handed in are left as they were.
    assert "_patient" not in first.records[0]


def test_records_without_a_usable_id_pass_unchanged() -> None:
    vendor = Vendor()
    odd: list[Any] = [{"id": "a"}, {"id": "b", "patient": ""}, "not a dict"]
    (out,) = run(vendor, attach_all(page(*odd)))
    assert out.records == odd
    assert out.failures == []
    assert vendor.paths == []


def test_calls_stay_within_the_clients_concurrency_bound() -> None:
    vendor = Vendor(delay=0.02)
    records = [{"id": str(n), "patient": f"p{n}"} for n in range(6)]
    run(vendor, attach_all(page(*records)), concurrency=2)
    assert len(vendor.paths) == 6
    assert vendor.max_in_flight == 2


def test_the_id_is_quoted_into_its_path_segment() -> None:
    vendor = Vendor()
    (out,) = run(vendor, attach_all(page({"id": "a", "patient": "../x?y"})))
    assert vendor.paths == ["/api/patients/..%2Fx%3Fy"]
    assert out.records[0]["_patient"] == {"id": "..%2Fx%3Fy"}


def test_gone_as_none_attaches_none_and_keeps_the_record() -> None:
    vendor = Vendor(statuses={"gone": 404})
    records = [{"id": "a", "patient": "gone"}, {"id": "b", "patient": "p2"}]
    (out,) = run(vendor, attach_all(page(*records, {"id": "c", "patient": "gone"})))
    assert [(r["id"], r["_patient"]) for r in out.records] == [
        ("a", None),
        ("b", {"id": "p2"}),
        ("c", None),
    ]
    assert out.failures == []
    assert vendor.paths.count("/api/patients/gone") == 1


def test_gone_fails_only_the_records_pointing_at_it() -> None:
    vendor = Vendor(statuses={"gone": 410})
    earlier = RecordFailure("z", {}, Issue(Reason.DETAIL_UNAVAILABLE, "$", "earlier"))
    listed = page(
        {"id": "a", "patient": "gone"},
        {"id": "b", "patient": "p2"},
        {"id": "c", "patient": "gone"},
        failures=[earlier],
    )
    (out,) = run(vendor, attach_all(listed), when_gone=GONE_FAILS)
    assert [r["id"] for r in out.records] == ["b"]
    assert [f.record_key for f in out.failures] == ["z", "a", "c"]
    assert out.failures[1].raw == {"id": "a", "patient": "gone"}
    issue = out.failures[1].issue
    assert (issue.code, issue.path) == (Reason.DETAIL_UNAVAILABLE, "patient")
    assert issue.message.startswith("patient gone: ")
    # The vendor's own text names the patient: withheld (connector/sources/bodies.py).
    assert "410 from GET patients/gone" in issue.message and "no patient gone" not in issue.message
    assert vendor.paths.count("/api/patients/gone") == 1


@pytest.mark.parametrize("when_gone", [GONE_AS_NONE, GONE_FAILS])
def test_any_other_error_answer_ends_the_walk(when_gone: GoneAsNone | GoneFailsRecord) -> None:
    vendor = Vendor(statuses={"bad": 400})
    with pytest.raises(VendorHttpError) as raised:
        run(vendor, attach_all(page({"id": "a", "patient": "bad"})), when_gone=when_gone)
    assert raised.value.status == 400


def test_attach_pages_closes_the_walk_when_the_consumer_stops() -> None:
    closed: list[bool] = []

    async def walk() -> AsyncIterator[SourcePage]:
        try:
            for n in range(3):
                yield page({"id": str(n), "patient": "p1"})
        finally:
            closed.append(True)

    async def first_page_only(lookup: PerRunLookup) -> SourcePage:
        pages = lookup.attach_pages(walk())
        first = await anext(pages)
        await pages.aclose()
        return first

    first = run(Vendor(), first_page_only)
    assert first.records == [{"id": "0", "patient": "p1", "_patient": {"id": "p1"}}]
    assert closed == [True]
