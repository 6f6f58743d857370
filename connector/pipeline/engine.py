"""The sync engine: wires adapter → mapping → validation → store for one source and one run.

Each source runs in its own task; a failing source records its failure and the others go on.
Within a run, fetching the next page overlaps with writing the previous batch, and every
batch is written together with its checkpoint, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import threading
import time
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import httpx
import orjson
import structlog

from connector.errors import ConnectorError, RecordError
from connector.issues import REASON_HELP, Issue, Reason, errors_only
from connector.logging import RunBinding, bound_run
from connector.mapping.kit import CategoryRules, MappingContext, SourceMapping
from connector.model import Invoice, content_digest
from connector.pipeline.validation import PolicyCheck, normalized, validate_invoice
from connector.settings import AppConfig, SourceConfig
from connector.sources.adapter import Adapter, FetchRequest, SourcePage
from connector.sources.discovery import source_type
from connector.sources.http import SourceClient
from connector.store import Accepted, BatchCounts, Rejected, Store
from connector.store.writer import start_writer

log = structlog.get_logger("connector.pipeline.engine")

# Fault injection for the crash tests: exit the process hard after this many batches.
EXIT_AFTER_BATCHES_ENV = "CONNECTOR_FAULT_EXIT_AFTER_BATCHES"

TransportFactory = Callable[[SourceConfig], httpx.AsyncBaseTransport | None]


class RunInterrupted(ConnectorError):
    """A stop was requested (daemon shutdown, Ctrl-C): the run ended between two batches."""


@dataclass
class RunResult:
    source: str
    kind: str
    ok: bool
    run_id: int | None = None
    error: str | None = None
    counts: BatchCounts = field(default_factory=BatchCounts)
    seconds: float = 0.0
    requests: int = 0
    resumed: bool = False
    # Stopped on request between batches: recorded as "interrupted", resume point kept.
    interrupted: bool = False
    # A dry run: nothing was written; `would_store` records passed and counts.quarantined
    # would have been quarantined.
    dry_run: bool = False
    would_store: int = 0
    # Quarantined records per blocking reason code (a record may carry several).
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def stored(self) -> int:
        """Records written into the store by this run (new or changed)."""
        return self.counts.inserted + self.counts.updated

    def all_quarantined(self) -> bool:
        """Every record fetched went to quarantine (nothing passed): worth a warning."""
        c = self.counts
        passed = self.would_store if self.dry_run else c.inserted + c.updated + c.unchanged
        return self.ok and c.fetched > 0 and c.quarantined > 0 and passed == 0

    def top_reason(self) -> tuple[str, int, str] | None:
        """The most frequent quarantine reason: (code, records, its fix)."""
        if not self.reasons:
            return None
        code, count = self.reasons.most_common(1)[0]
        return code, count, REASON_HELP[Reason(code)][1]


@dataclass
class Batch:
    accepted: list[Accepted]
    rejected: list[Rejected]
    fetched: int
    resume: dict[str, Any] | None


def payload_key(raw: Any) -> str:
    """A stable key for a record that carries no id of its own."""
    try:
        encoded = orjson.dumps(raw, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        encoded = repr(raw).encode()
    return "sha256:" + hashlib.sha256(encoded).hexdigest()


# The store keeps quarantine keys of at most this many characters (PostgreSQL refuses longer).
RECORD_KEY_LIMIT = 200


def record_key(record_id: str | None, raw: Any) -> str:
    """The quarantine key of a record: its id, or a digest of the payload when it has no id
    or one too long to store (which would make the whole batch fail on PostgreSQL)."""
    if record_id and len(record_id) <= RECORD_KEY_LIMIT:
        return record_id
    return payload_key(raw)


class RecordProcessor:
    """Mapping and validation of raw records for one source: pure, no I/O."""

    def __init__(
        self,
        mapping: SourceMapping,
        context: MappingContext,
        policy_check: PolicyCheck | None = None,
        resolve_policy: Callable[[Invoice], Invoice] | None = None,
    ) -> None:
        self.mapping = mapping
        self.context = context
        self.policy_check = policy_check
        # Runs before validation: fills in the policy number of sources that carry none.
        self.resolve_policy = resolve_policy

    @classmethod
    def for_source(
        cls,
        source: SourceConfig,
        *,
        categorize: CategoryRules | None = None,
        policy_check: PolicyCheck | None = None,
        resolve_policy: Callable[[Invoice], Invoice] | None = None,
    ) -> RecordProcessor:
        """The processor of one configured source: its type's mapping with the source's
        currency, status overrides, time zone and mapping options. Sync, reprocess and
        `connector validate` all build it here, so a dry run judges records as a sync does."""
        mapping = source_type(source.type).mapping()
        context = mapping.context(
            source.name,
            currency=source.currency,
            status_overrides=source.status_map,
            timezone=source.timezone,
            categorize=categorize,
            options=mapping_options(source),
        )
        return cls(mapping, context, policy_check, resolve_policy)

    def process(self, raw: Any) -> tuple[Accepted | None, Rejected | None, datetime | None]:
        try:
            invoice = self.mapping.to_canonical(raw, self.context)
            if self.resolve_policy is not None:
                invoice = self.resolve_policy(invoice)
        except RecordError as exc:
            key = record_key(self.mapping.record_id(raw), raw)
            return None, Rejected(key, raw, None, exc.issues), None
        except Exception as exc:  # a mapping bug must quarantine the record, not lose it
            known = self.mapping.record_id(raw) if isinstance(raw, dict) else None
            issue = Issue(Reason.PAYLOAD_INVALID, "$", f"mapping failed: {type(exc).__name__}")
            return None, Rejected(record_key(known, raw), raw, None, [issue]), None
        issues = validate_invoice(invoice, self.policy_check)
        if errors_only(issues):
            key = record_key(invoice.id, raw)
            return None, Rejected(key, raw, invoice, issues), invoice.source_updated_at
        final = normalized(invoice)
        content = final.content_json()
        return Accepted(final, content_digest(content), content), None, invoice.source_updated_at

    def warnings(self, invoice: Invoice) -> list[Issue]:
        """The warnings validation gives an accepted invoice: a sync keeps only the verdict,
        `connector validate` reports them too."""
        return [i for i in validate_invoice(invoice, self.policy_check) if i.severity != "error"]


class Engine:
    def __init__(
        self,
        config: AppConfig,
        store: Store,
        *,
        transport_factory: TransportFactory | None = None,
        policy_check: PolicyCheck | None = None,
        categorize: Callable[[SourceConfig], CategoryRules | None] | None = None,
        resolve_policy: Callable[[Invoice], Invoice] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self._transport_factory = transport_factory
        self._policy_check = policy_check
        self._categorize = categorize
        self._resolve_policy = resolve_policy
        self._batches_written = 0
        exit_after = os.environ.get(EXIT_AFTER_BATCHES_ENV)
        self._exit_after = int(exit_after) if exit_after else None
        self._stop = threading.Event()
        # One asyncio event per run under way, set by `request_stop` to end a page wait.
        self._stop_waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        # Started now, while forking may still be safe (`connector.store.writer`); None: the
        # batches are written by a thread of this process.
        self.writer = start_writer(config.store.writer, getattr(store, "url", None))
        if self.writer is not None:
            weakref.finalize(self, self.writer.close)

    def close(self) -> None:
        """End the writer process, if there is one (idempotent; also done when collected)."""
        if self.writer is not None:
            self.writer.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def request_stop(self) -> None:
        """End every run of this engine after the batch being written (from any thread, or a
        signal handler): a page still being fetched is abandoned, never half written."""
        self._stop.set()
        for loop, event in list(self._stop_waiters):
            with contextlib.suppress(RuntimeError):  # that loop is closed: its run is over
                loop.call_soon_threadsafe(event.set)

    def selected_sources(self, names: Sequence[str] | None = None) -> list[SourceConfig]:
        if names:
            return [self.config.source(name) for name in names]
        return [s for s in self.config.sources if s.enabled]

    async def sync(
        self, names: Sequence[str] | None = None, *, full: bool = False
    ) -> list[RunResult]:
        """Sync the named (or all enabled) sources concurrently; never raises for one source."""
        sources = self.selected_sources(names)
        return list(await asyncio.gather(*(self.sync_source(s, full=full) for s in sources)))

    def build_adapter(self, source: SourceConfig) -> Adapter:
        transport = self._transport_factory(source) if self._transport_factory else None
        adapter = source_type(source.type).adapter_class().create(source, transport=transport)
        report_rate_limit_waits(adapter, source.name)
        return adapter

    def processor(self, source: SourceConfig) -> RecordProcessor:
        return RecordProcessor.for_source(
            source,
            categorize=self._categorize(source) if self._categorize else None,
            policy_check=self._policy_check,
            resolve_policy=self._resolve_policy,
        )

    async def sync_source(
        self,
        source: SourceConfig,
        *,
        full: bool = False,
        kind: str = "sync",
        date_from: date | None = None,
        date_to: date | None = None,
        dry_run: bool = False,
    ) -> RunResult:
        """One run of `source`. A dry run fetches, maps and validates exactly as a sync does
        and writes nothing: no invoice, no quarantine entry, no checkpoint, no run row."""
        # Every log line of the run, the libraries' (httpx, alembic) included, carries the
        # source, the kind and, once the run is recorded, its id.
        with bound_run(source.name, kind=kind) as run_fields:
            return await self._sync_source(
                source,
                run_fields,
                full=full,
                kind=kind,
                date_from=date_from,
                date_to=date_to,
                dry_run=dry_run,
            )

    async def _sync_source(
        self,
        source: SourceConfig,
        run_fields: RunBinding,
        *,
        full: bool,
        kind: str,
        date_from: date | None,
        date_to: date | None,
        dry_run: bool,
    ) -> RunResult:
        started = time.monotonic()
        name = source.name
        bound = log.bind(source=name, kind=kind)
        result = RunResult(source=name, kind=kind, ok=False, dry_run=dry_run)
        track_state = kind == "sync"
        run_id = 0
        try:
            state = await asyncio.to_thread(self.store.get_state, name)
            if kind == "sync" and not dry_run:
                await asyncio.to_thread(self.store.mark_abandoned_runs, name)
            adapter = self.build_adapter(source)
            resume = state.resume if (track_state and not full) else None
            if resume and resume.get("page_size", source.page_size) != source.page_size:
                # Positions count pages of the old size: resuming would skip or repeat
                # records. Starting over costs no writes for what is already stored.
                bound.warning("sync.resume_discarded", reason="page_size changed")
                resume = None
            if resume:
                since = _parse_time(resume.get("since"))
                position = resume.get("position")
                high_water = _parse_time(resume.get("high_water"))
                result.resumed = True
            else:
                since = None
                if track_state and not full and state.cursor and adapter.filters_since():
                    since = state.cursor - source.lookback
                position, high_water = None, None
            request = FetchRequest(
                since=since,
                date_from=date_from,
                date_to=date_to,
                resume=position,
                carried=state.carry if track_state else None,
            )
            if not dry_run:
                run_id = await asyncio.to_thread(self.store.start_run, name, kind, state.cursor)
                result.run_id = run_id
                run_fields.bind(run_id=run_id)
                bound = bound.bind(run_id=run_id)
        except ConnectorError as exc:
            result.error = str(exc)
            bound.error("sync.failed", error=result.error)
            return result
        processor = self.processor(source)
        try:
            async with adapter:
                high_water, carry = await self._run_pages(
                    adapter,
                    processor,
                    request,
                    since,
                    high_water,
                    run_id,
                    name,
                    track_state,
                    result,
                )
                result.requests = adapter.client.stats.requests
            cursor_after = _later(state.cursor, high_water) if track_state else None
            if not dry_run:
                await asyncio.to_thread(
                    self.store.finish_run,
                    run_id,
                    name,
                    status="ok",
                    cursor_after=cursor_after,
                    clear_resume=True,
                    track_state=track_state,
                    carry=carry,
                )
            result.ok = True
        except (ConnectorError, httpx.HTTPError) as exc:
            result.error = worded_for_scheme(str(exc) or type(exc).__name__, source.base_url)
            result.interrupted = isinstance(exc, RunInterrupted)
        except Exception as exc:  # keep other sources alive whatever happened here
            bound.exception("sync.crashed")
            result.error = f"internal error: {type(exc).__name__}: {exc}"
        if not result.ok and not dry_run:
            try:
                await asyncio.to_thread(
                    self.store.finish_run,
                    run_id,
                    name,
                    status="interrupted" if result.interrupted else "failed",
                    error=result.error,
                    track_state=track_state,
                )
            except ConnectorError as exc:
                result.error = f"{result.error}; and recording the failure failed: {exc}"
        result.seconds = time.monotonic() - started
        # `resumed`: this run continued from the checkpoint of an unfinished one.
        summary = {
            **result.counts.as_dict(),
            "resumed": result.resumed,
            "seconds": round(result.seconds, 3),
        }
        if dry_run:
            summary.update(dry_run=True, would_store=result.would_store)
        if result.ok:
            bound.info("sync.finished", status="ok", requests=result.requests, **summary)
        else:
            status = "interrupted" if result.interrupted else "failed"
            bound.error("sync.failed", status=status, error=result.error, **summary)
        return result

    async def _run_pages(
        self,
        adapter: Adapter,
        processor: RecordProcessor,
        request: FetchRequest,
        since: datetime | None,
        high_water: datetime | None,
        run_id: int,
        name: str,
        track_state: bool,
        result: RunResult,
    ) -> tuple[datetime | None, dict[str, Any] | None]:
        pending: asyncio.Future[BatchCounts] | None = None
        carry: dict[str, Any] | None = None
        pages = adapter.fetch_pages(request)
        watch = _StopWatch(asyncio.Event())
        stop_waiter = (asyncio.get_running_loop(), watch.event)
        self._stop_waiters.add(stop_waiter)
        if self._stop.is_set():
            watch.event.set()
        watcher = asyncio.create_task(watch.run())
        try:
            while (page := await self._next_page(pages, watch)) is not None:
                batch, page_high = self._build_batch(processor, page)
                carry = page.carry if page.carry is not None else carry
                for rejected in batch.rejected:
                    result.reasons.update(
                        {i.code.value for i in rejected.issues if i.severity == "error"}
                    )
                high_water = _later(high_water, page_high)
                batch.resume = (
                    {
                        "since": _iso(since),
                        "position": page.position,
                        "high_water": _iso(high_water),
                        "page_size": adapter.config.page_size,
                    }
                    if page.position is not None
                    else None
                )
                if pending is not None:
                    result.counts.add(await asyncio.shield(pending))
                    pending = None
                    self._after_batch()
                    self._stop_if_requested()
                if result.dry_run:
                    result.would_store += len(batch.accepted)
                    pending = asyncio.create_task(_counted_only(batch))
                else:
                    pending = self._write(run_id, name, batch, track_state)
            if pending is not None:
                result.counts.add(await pending)
                pending = None
                self._after_batch()
        finally:
            self._stop_waiters.discard(stop_waiter)
            watcher.cancel()
            try:
                # Closed now, not when collected: the adapter's detail calls in flight end here.
                aclose = getattr(pages, "aclose", None)
                if aclose is not None:
                    await aclose()
            finally:
                if pending is not None:
                    # Never abandon a batch mid-write: let the transaction finish (or fail).
                    result.counts.add(await asyncio.shield(pending))
        return high_water, carry

    async def _next_page(
        self, pages: AsyncIterator[SourcePage], watch: _StopWatch
    ) -> SourcePage | None:
        """The next page, or None after the last; `RunInterrupted` as soon as a stop is
        requested, abandoning the page being fetched (a rate-limit wait, a slow vendor). The
        page is read in this task: the adapter's generator keeps its task all along."""
        if watch.event.is_set():
            raise RunInterrupted("stopped on request between batches; the next run resumes")
        watch.fetching = True
        try:
            return await anext(pages)
        except StopAsyncIteration:
            return None
        except asyncio.CancelledError:
            if watch.cancelled and watch.task.uncancel() == 0:
                raise RunInterrupted(
                    "stopped on request while a page was fetched; the next run resumes"
                ) from None
            raise
        finally:
            watch.fetching = False

    def _write(
        self, run_id: int, name: str, batch: Batch, track_state: bool
    ) -> asyncio.Future[BatchCounts]:
        """The batch's write, under way while the next page is mapped: sent to the writer
        process at once, or run by a thread of this process."""
        args = (run_id, name, batch.accepted, batch.rejected)
        options: dict[str, Any] = {
            "fetched": batch.fetched,
            "resume": batch.resume,
            "track_state": track_state,
        }
        if self.writer is not None:
            return self.writer.submit(*args, **options)
        return asyncio.ensure_future(asyncio.to_thread(self.store.write_batch, *args, **options))

    def _after_batch(self) -> None:
        self._batches_written += 1
        if self._exit_after is not None and self._batches_written >= self._exit_after:
            os._exit(99)

    def _stop_if_requested(self) -> None:
        # Checked only between batches, after one and its checkpoint are committed; a run
        # whose last page is already written finishes normally instead.
        if self._stop.is_set():
            raise RunInterrupted("stopped on request between batches; the next run resumes")

    def _build_batch(
        self, processor: RecordProcessor, page: SourcePage
    ) -> tuple[Batch, datetime | None]:
        accepted: list[Accepted] = []
        rejected: list[Rejected] = []
        high: datetime | None = None
        seen: dict[str, str] = {}
        for raw in page.records:
            ok, bad, updated_at = processor.process(raw)
            if ok is not None:
                earlier = seen.setdefault(ok.invoice.id, ok.content_hash)
                if earlier != ok.content_hash:
                    # Two different versions of one id in one answer: neither is trustworthy
                    # as "the" invoice, so the later copy waits in quarantine for review.
                    issue = Issue(
                        Reason.DUPLICATE_IN_RUN,
                        "id",
                        f"invoice id {ok.invoice.id!r} came twice with different content",
                    )
                    rejected.append(Rejected(ok.invoice.id + "#duplicate", raw, None, [issue]))
                else:
                    accepted.append(ok)
            elif bad is not None:
                rejected.append(bad)
            high = _later(high, updated_at)
        for failure in page.failures:
            key = record_key(failure.record_key, failure.raw)
            rejected.append(Rejected(key, failure.raw, None, [failure.issue]))
        fetched = len(page.records) + len(page.failures)
        return Batch(accepted, rejected, fetched, None), high


class _StopWatch:
    """Cancels the run's task when a stop is requested while it waits for a page: the page is
    abandoned, and `_next_page` turns the cancellation into `RunInterrupted`."""

    def __init__(self, event: asyncio.Event) -> None:
        self.event = event
        task = asyncio.current_task()
        assert task is not None, "a run is always a task"
        self.task = task
        self.fetching = False
        self.cancelled = False

    async def run(self) -> None:
        await self.event.wait()
        if self.fetching:
            self.cancelled = True
            self.task.cancel()


async def _counted_only(batch: Batch) -> BatchCounts:
    """A dry run's stand-in for a batch write: what would have been stored, writing nothing."""
    return BatchCounts(fetched=batch.fetched, quarantined=len(batch.rejected))


# A rate-limit wait at least this long is announced (shorter ones are the limiter's rhythm).
RATE_WAIT_REPORT_S = 2.0


class RateWaitAnnouncer:
    """A source client's `on_rate_wait` hook: logs `source.rate_limit_wait` before a long
    wait, so that an operator watching `sync` or `validate` sees why nothing moves."""

    def __init__(self, source: str) -> None:
        self._source = source
        self._announced_until = 0.0

    def __call__(self, seconds: float, per_minute: int) -> None:
        now = time.monotonic()
        # Requests queued behind the same wait would announce it again: once is enough.
        if seconds < RATE_WAIT_REPORT_S or now + seconds <= self._announced_until + 1.0:
            return
        self._announced_until = now + seconds
        log.info(
            "source.rate_limit_wait",
            source=self._source,
            wait_s=round(seconds),
            limit_per_minute=per_minute,
            detail=f"waiting {round(seconds)} s for {self._source}'s rate limit ({per_minute}/min)",
        )


def report_rate_limit_waits(adapter: Adapter, source: str) -> None:
    """Announce the long rate-limit waits of `adapter`'s client (an adapter without a
    `SourceClient` is left alone)."""
    client = getattr(adapter, "client", None)
    if isinstance(client, SourceClient):
        client.on_rate_wait = RateWaitAnnouncer(source)


# aiohttp's "Cannot connect to host H:P ssl:default [reason]" names TLS settings even for a
# plain-http URL; the operator is told what was tried, in the URL's own terms.
_CANNOT_CONNECT = re.compile(
    r"(?:cannot connect: )?Cannot connect to host (?P<host>\S+?) ssl:\S+(?: \[(?P<why>[^\]]*)\])?"
)


def worded_for_scheme(text: str, base_url: str) -> str:
    """An error text with transport jargon replaced by words matching the URL's scheme."""
    scheme = base_url.split("://", 1)[0].lower()
    over = "plain HTTP" if scheme == "http" else "HTTPS"

    def reworded(match: re.Match[str]) -> str:
        why = match["why"] or "no connection"
        return (
            f"cannot connect to {match['host']} over {over}: {why} - is the service running "
            "and the port right?"
        )

    return _CANNOT_CONNECT.sub(reworded, text)


def mapping_options(source: SourceConfig) -> dict[str, Any]:
    """Source settings a mapping may read (plain data only)."""
    options = getattr(source, "mapping_options", None)
    return dict(options) if isinstance(options, dict) else {}


def _later(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _parse_time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) and value else None


def issues_summary(issues: Sequence[Issue]) -> str:
    return ", ".join(sorted({i.code.value for i in issues}))
