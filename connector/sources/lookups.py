"""Per-run lookups of a resource that raw records only point at, such as the patient behind an
invoice's patient id: each distinct id is fetched once per run, concurrently within the source
client's bound, and the answer is attached to every record pointing at it.

What differs between vendors is declared, not coded: the path, how to read the id from a raw
record, the key the answer is attached under, and what a resource the vendor no longer has
becomes (`GoneAsNone` or `GoneFailsRecord`).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable, Collection
from dataclasses import KW_ONLY, dataclass, field
from typing import Any
from urllib.parse import quote

from connector.issues import Issue, Reason
from connector.sources.adapter import RecordFailure, SourcePage, gather_or_cancel
from connector.sources.http import SourceClient, VendorHttpError


@dataclass(frozen=True, slots=True)
class Gone:
    """The vendor's answer for a resource it no longer has (e.g. a 404)."""

    status: int
    message: str


@dataclass(frozen=True, slots=True)
class GoneAsNone:
    """A resource the vendor no longer has is attached as None: the record goes on, and the
    mapping reports what is then missing (e.g. an empty patient name)."""

    # The answer statuses that mean "no longer there"; any other error stays fatal.
    statuses: Collection[int]

    def settle(self, raw: Any, key: str, gone: Gone) -> None:
        return None


@dataclass(frozen=True, slots=True)
class GoneFailsRecord:
    """Every record pointing at a resource the vendor no longer has fails on its own (it is
    quarantined as DETAIL_UNAVAILABLE at `field`, e.g. "patient 7: 404 Not Found"); the run
    goes on."""

    statuses: Collection[int]
    # Where the issue points in the raw record, and what the message calls the resource.
    field: str
    label: str
    # The failed record's key in quarantine.
    record_key: Callable[[Any], str]

    def settle(self, raw: Any, key: str, gone: Gone) -> RecordFailure:
        issue = Issue(Reason.DETAIL_UNAVAILABLE, self.field, f"{self.label} {key}: {gone.message}")
        return RecordFailure(self.record_key(raw), raw, issue)


@dataclass
class PerRunLookup:
    """One adapter run's cache of a related resource, fetched by id through the source's client
    (so the calls share its concurrency bound, rate limit and retries)."""

    client: SourceClient
    _: KW_ONLY
    # Relative to the base URL, with `{id}` where the (quoted) id goes.
    path: str
    # The id a raw record points at, or None when it has no usable one.
    key_of: Callable[[Any], str | None]
    # The raw-record key the answer goes under: never one of the vendor's own fields.
    attach_as: str
    when_gone: GoneAsNone | GoneFailsRecord
    # id → the resource's body (whatever the vendor sent: the mapping judges it) or Gone.
    _answers: dict[str, Any] = field(default_factory=dict, init=False, repr=False)

    async def attach_pages(
        self, pages: AsyncIterator[SourcePage]
    ) -> AsyncGenerator[SourcePage, None]:
        """Each page of a walk with its records' resources attached (see `attach`)."""
        try:
            async for page in pages:
                yield await self.attach(page)
        finally:
            # Closed here, not whenever it is collected: nothing of the walk outlives it.
            aclose = getattr(pages, "aclose", None)
            if aclose is not None:
                await aclose()

    async def attach(self, page: SourcePage) -> SourcePage:
        """The page with each record's resource attached; ids not seen before in this run are
        fetched first. A record without a usable id passes unchanged (the mapping reports it)."""
        wanted = {key for raw in page.records if (key := self.key_of(raw)) is not None}
        wanted -= self._answers.keys()
        # One fatal answer ends the page; its siblings are cancelled, not left running.
        await gather_or_cancel(self._fetch(key) for key in sorted(wanted))
        records: list[Any] = []
        failures: list[RecordFailure] = []
        for raw in page.records:
            key = self.key_of(raw)
            if key is None:
                records.append(raw)
                continue
            answer = self._answers[key]
            if isinstance(answer, Gone):
                answer = self.when_gone.settle(raw, key, answer)
                if isinstance(answer, RecordFailure):
                    failures.append(answer)
                    continue
            records.append({**raw, self.attach_as: answer})
        return SourcePage(records, page.position, [*page.failures, *failures])

    async def _fetch(self, key: str) -> None:
        # Quote the id: a hostile id must not escape its path segment.
        url = self.path.format(id=quote(key, safe=""))
        try:
            self._answers[key] = await self.client.get_json(url)
        except VendorHttpError as exc:
            if exc.status not in self.when_gone.statuses:
                raise
            self._answers[key] = Gone(exc.status, str(exc))
