"""Processing pushed vendor events (webhooks): each stored event only says which invoice to
look at; the invoice is fetched from the vendor and goes through the normal mapping →
validation → store path, in a run of its own (kind "webhook") under the source's lock.

Because the current state is always fetched, a duplicate, late or out-of-order event can
only ever store the invoice as it is now (unchanged when already stored: upsert by content
hash), never an older version. An event whose fetch fails stays pending with one more attempt
and comes back after a growing delay; after `give_up_after` attempts it is marked failed and
the next poll (which stays on) brings the invoice instead. `PushWorker` runs the processor in
a thread of its own, woken when an event is stored (what `connector serve` does).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import structlog

from connector.errors import ConnectorError, StoreError
from connector.logging import bound_run
from connector.pipeline.engine import Engine
from connector.settings import AppConfig, SourceConfig
from connector.sources.http import RecordUnavailable
from connector.store import BatchCounts, Store
from connector.store.coordination import source_lock
from connector.store.database import utcnow
from connector.store.webhooks import WebhookEvent, WebhookEvents

log = structlog.get_logger("connector.pipeline.push")

RUN_KIND = "webhook"
EngineFactory = Callable[[AppConfig, Store], Engine]


@dataclass(frozen=True)
class RetryPolicy:
    """Back-off of events whose fetch failed: `first`, doubled per attempt up to `longest`."""

    first: timedelta = timedelta(seconds=5)
    longest: timedelta = timedelta(minutes=15)
    give_up_after: int = 20

    def delay(self, attempts_so_far: int) -> timedelta:
        grown: timedelta = self.first * (2 ** min(attempts_so_far, 20))
        return min(grown, self.longest)


@dataclass
class PushResult:
    """One source's round: what its run stored, and what happened to its events."""

    source: str
    run_id: int | None = None
    # The source's lock was held elsewhere (a sync): the events wait for the next round.
    locked: bool = False
    counts: BatchCounts = field(default_factory=BatchCounts)
    done: int = 0
    retried: int = 0
    error: str | None = None


def _outcome(counts: BatchCounts) -> str:
    for name in ("inserted", "updated", "quarantined"):
        if getattr(counts, name):
            return name
    return "unchanged"


async def _fetch(adapter: Any, invoice_id: str) -> Any:
    """The vendor's current record of one invoice (its adapter's one-invoice fetch)."""
    fetch = getattr(adapter, "fetch_invoice", None) or adapter.fetch_detail
    return await fetch(invoice_id)


class PushProcessor:
    """Takes the pending events of each source and stores their invoices as they are now."""

    def __init__(
        self,
        config: AppConfig,
        store: Store,
        *,
        engine_factory: EngineFactory | None = None,
        retry: RetryPolicy | None = None,
        per_round: int = 200,
        engine_ttl: timedelta = timedelta(seconds=60),
    ) -> None:
        self.config = config
        self.store = store
        self.events = WebhookEvents(store)
        self.retry = retry or RetryPolicy()
        self.per_round = per_round
        self._engine_factory = engine_factory
        self._engine: tuple[float, Engine] | None = None
        self._engine_ttl = engine_ttl.total_seconds()

    def engine(self) -> Engine:
        """A wired engine (category rules, policy registry), rebuilt once it is `engine_ttl`
        old so that a registry import reaches the webhook path too."""
        now = time.monotonic()
        if self._engine is None or now - self._engine[0] > self._engine_ttl:
            if self._engine_factory is not None:
                engine = self._engine_factory(self.config, self.store)
            else:
                from connector.pipeline.wiring import build_engine

                engine = build_engine(self.config, self.store)
            self._engine = (now, engine)
        return self._engine[1]

    async def process_due(self) -> list[PushResult]:
        """One round over every source with due events; never raises for one source."""
        names = await asyncio.to_thread(self.events.sources_due)
        results = []
        for name in names:
            try:
                source = self.config.source(name)
            except ConnectorError:
                continue  # events of a source no longer configured wait for it to come back
            try:
                results.append(await self.process_source(source))
            except Exception as exc:  # a bug here must not starve the other sources
                log.error("webhook.source_failed", source=name, error=type(exc).__name__)
        return results

    async def process_source(self, source: SourceConfig) -> PushResult:
        result = PushResult(source.name)
        lock = source_lock(self.store, source.name, self.config.daemon.lease)
        try:
            held = await asyncio.to_thread(lock.acquire)
        except ConnectorError as exc:
            result.error = str(exc)
            return result
        if not held:
            result.locked = True
            return result
        try:
            with bound_run(source.name, kind=RUN_KIND) as run_fields:
                await self._under_lock(source, lock, result, run_fields)
        finally:
            with contextlib.suppress(ConnectorError):
                await asyncio.to_thread(lock.release)
        return result

    async def _under_lock(
        self, source: SourceConfig, lock: Any, result: PushResult, run_fields: Any
    ) -> None:
        name = source.name
        # Holding the lock, no other webhook run of this source can be live: a running one
        # was cut off by a crash, and its events are still pending.
        await asyncio.to_thread(self.store.mark_abandoned_runs, name, RUN_KIND)
        due = await asyncio.to_thread(self.events.due, name, limit=self.per_round)
        if not due:
            return
        by_invoice: dict[str, list[WebhookEvent]] = {}
        for event in due:
            by_invoice.setdefault(event.invoice_id, []).append(event)
        try:
            engine = await asyncio.to_thread(self.engine)
        except ConnectorError as exc:  # a broken rules file: the events wait, untouched
            result.error = str(exc)
            log.error("webhook.engine_failed", error=result.error)
            return
        processor = engine.processor(source)
        run_id = await asyncio.to_thread(self.store.start_run, name, RUN_KIND, None)
        result.run_id = run_id
        run_fields.bind(run_id=run_id)
        failure: str | None = None
        try:
            async with engine.build_adapter(source) as adapter:
                for invoice_id, events in by_invoice.items():
                    if failure is not None:
                        # The vendor or the store is failing: the rest waits for a retry.
                        await self._retry(events, failure, run_id, result)
                        continue
                    failure = await self._one(
                        adapter, processor, source, invoice_id, events, result
                    )
                    if failure is None and not await asyncio.to_thread(lock.renew):
                        failure = "the source lock was lost"
        except (ConnectorError, httpx.HTTPError) as exc:
            failure = str(exc) or type(exc).__name__
        result.error = failure
        status = "ok" if failure is None else "failed"
        try:
            await asyncio.to_thread(
                self.store.finish_run, run_id, name, status=status, error=failure, track_state=False
            )
        except StoreError as exc:
            result.error = f"{failure or 'ok'}; and recording the run failed: {exc}"
        (log.info if failure is None else log.warning)(
            "webhook.processed",
            status=status,
            events_done=result.done,
            events_retried=result.retried,
            error=failure,
            **result.counts.as_dict(),
        )

    async def _one(
        self,
        adapter: Any,
        processor: Any,
        source: SourceConfig,
        invoice_id: str,
        events: list[WebhookEvent],
        result: PushResult,
    ) -> str | None:
        """Fetch, map, validate and store one invoice for its events. Returns the error that
        should stop the round (vendor or store failing), None to go on."""
        run_id = result.run_id
        assert run_id is not None
        try:
            raw = await _fetch(adapter, invoice_id)
        except RecordUnavailable as exc:
            # Only this invoice (not found yet, or gone): retried alone, the round goes on.
            await self._retry(events, str(exc), run_id, result)
            return None
        except (ConnectorError, httpx.HTTPError) as exc:
            error = str(exc) or type(exc).__name__
            await self._retry(events, error, run_id, result)
            return error
        accepted, rejected, _updated_at = processor.process(raw)
        try:
            counts = await asyncio.to_thread(
                self.store.write_batch,
                run_id,
                source.name,
                [accepted] if accepted is not None else [],
                [rejected] if rejected is not None else [],
                fetched=1,
                resume=None,
                track_state=False,
            )
        except StoreError as exc:  # LockLost included: nothing of it was stored
            await self._retry(events, str(exc), run_id, result)
            return str(exc)
        result.counts.add(counts)
        await asyncio.to_thread(
            self.events.mark_done, [e.id for e in events], run_id=run_id, outcome=_outcome(counts)
        )
        result.done += len(events)
        return None

    async def _retry(
        self, events: list[WebhookEvent], error: str, run_id: int | None, result: PushResult
    ) -> None:
        attempts = max(e.attempts for e in events)
        await asyncio.to_thread(
            self.events.mark_retry,
            [e.id for e in events],
            error=error,
            next_attempt_at=utcnow() + self.retry.delay(attempts),
            give_up_after=self.retry.give_up_after,
            run_id=run_id,
        )
        result.retried += len(events)


class PushWorker:
    """The processor in a thread of its own: a round whenever `wake()` is called (an event
    was stored), when the earliest retry falls due, and at least every `idle` seconds."""

    def __init__(
        self,
        processor: PushProcessor,
        *,
        idle: float = 30.0,
        busy_retry: float = 2.0,
    ) -> None:
        self.processor = processor
        self.idle = idle
        # How soon a source whose lock was busy (a sync) is tried again.
        self.busy_retry = busy_retry
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)
            self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the round under way (its writes commit or roll back), then end."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            wait = self.idle
            try:
                results = asyncio.run(self.processor.process_due())
                self.processor.events.prune_if_due(self.processor.config.serve.webhook_retention)
                if any(r.locked for r in results):
                    wait = self.busy_retry
                due = self.processor.events.next_due_at()
                if due is not None:
                    wait = min(wait, max(0.05, (due - utcnow()).total_seconds()))
            except Exception as exc:  # the worker outlives any one round
                log.error("webhook.round_failed", error=type(exc).__name__)
                wait = self.busy_retry
            self._wake.wait(wait)
