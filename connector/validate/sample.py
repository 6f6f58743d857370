"""Reading a sample for `connector validate`: the source's own adapter (built by
`Adapter.create` over the recording transport, with a small retry budget) fetches records page
by page, and the engine's record processor maps and validates each one as a sync would.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import httpx

from connector.errors import SourceError
from connector.issues import Issue, Reason
from connector.model import Invoice
from connector.pipeline.engine import RecordProcessor, payload_key, report_rate_limit_waits
from connector.settings import SourceConfig
from connector.sources.adapter import Adapter, FetchRequest
from connector.sources.discovery import source_type

DEFAULT_SAMPLE = 500
# A dry run should diagnose quickly: transient failures are retried this often at most.
MAX_VALIDATE_RETRIES = 2


@dataclass
class ValidateOptions:
    """What to read: the first `sample` records of the list, and only changes since a day."""

    sample: int | None = DEFAULT_SAMPLE  # None: every record
    since: date | None = None


@dataclass
class RecordResult:
    """One record's outcome: the canonical invoice when mapping succeeded, and every issue."""

    key: str
    invoice: Invoice | None
    issues: list[Issue]
    raw_digest: str

    @property
    def blocking(self) -> bool:
        return any(i.severity == "error" for i in self.issues)

    def codes(self, severity: str = "error") -> set[str]:
        return {i.code.value for i in self.issues if i.severity == severity}


@dataclass
class Sample:
    """The records read, in list order, and what the walk of the list looked like."""

    records: list[RecordResult] = field(default_factory=list)
    pages: int = 0
    page_sizes: list[int] = field(default_factory=list)
    complete: bool = False
    duplicates: Counter[str] = field(default_factory=Counter)
    skipped_before_since: int = 0


def build_adapter(
    source: SourceConfig, transport: httpx.AsyncBaseTransport
) -> tuple[Adapter, httpx.Auth | None]:
    """The source's adapter over the given transport, with validate's retry budget, and an
    auth of its own for the diagnosis: the refresh check logs in a second time, independently
    of the token the adapter's client holds."""
    adapter_cls = source_type(source.type).adapter_class()
    settings = source.http.model_copy(
        update={"max_retries": min(source.http.max_retries, MAX_VALIDATE_RETRIES)}
    )
    quick = source.model_copy(update={"http": settings})
    adapter = adapter_cls.create(quick, transport=transport)
    # A rate-limit wait is announced as a sync announces it: validate may wait for minutes.
    report_rate_limit_waits(adapter, source.name)
    return adapter, adapter_cls.build_auth(quick)


async def fetch_sample(
    adapter: Adapter,
    processor: RecordProcessor,
    request: FetchRequest,
    limit: int | None,
    since: datetime | None,
) -> tuple[Sample, BaseException | None]:
    """Map and validate records page by page until `limit` (None: the whole list)."""
    sample = Sample()
    seen: dict[str, str] = {}
    error: BaseException | None = None
    try:
        async with contextlib.aclosing(adapter.fetch_pages(request)) as pages:  # type: ignore[type-var]
            async for page in pages:
                sample.pages += 1
                sample.page_sizes.append(len(page.records) + len(page.failures))
                for raw in page.records:
                    result = _process(processor, raw)
                    invoice = result.invoice
                    if (
                        since is not None
                        and invoice is not None
                        and invoice.source_updated_at is not None
                        and invoice.source_updated_at < since
                    ):
                        sample.skipped_before_since += 1
                        continue
                    _note_duplicate(sample, seen, result)
                    sample.records.append(result)
                for failure in page.failures:
                    key = failure.record_key or payload_key(failure.raw)
                    sample.records.append(
                        RecordResult(key, None, [failure.issue], payload_key(failure.raw))
                    )
                if limit is not None and len(sample.records) >= limit:
                    del sample.records[limit:]
                    return sample, None
        sample.complete = True
    except (SourceError, httpx.HTTPError) as exc:
        error = exc
    return sample, error


def _process(processor: RecordProcessor, raw: Any) -> RecordResult:
    """One raw record through the sync's own step; accepted ones keep their warnings too."""
    accepted, rejected, _updated = processor.process(raw)
    if accepted is not None:
        invoice = accepted.invoice
        return RecordResult(invoice.id, invoice, processor.warnings(invoice), payload_key(raw))
    assert rejected is not None
    return RecordResult(
        rejected.record_key, rejected.canonical, list(rejected.issues), payload_key(raw)
    )


def _note_duplicate(sample: Sample, seen: dict[str, str], result: RecordResult) -> None:
    earlier = seen.get(result.key)
    if earlier is None:
        seen[result.key] = result.raw_digest
        return
    sample.duplicates[result.key] += 1
    if earlier != result.raw_digest:
        result.issues.append(
            Issue(
                Reason.DUPLICATE_IN_RUN,
                "id",
                "the same id was listed again with different content",
            )
        )
