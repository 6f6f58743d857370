"""Reprocessing: re-validate quarantined records from their stored raw payload, no network.

After the category rules or the policy registry changed, `reprocess` runs every quarantined
record (of the chosen sources / reason) through the current mapping and validation. Records
that now pass go into the store through the ordinary batch write (which also releases their
quarantine rows) in a run of kind "reprocess" that never touches the sync cursor; those still
failing get their issues and attempt count updated. An invoice stored earlier is upserted in
place, never duplicated.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from connector.errors import ConfigError, ConnectorError
from connector.issues import Reason
from connector.logging import RunBinding, bound_run
from connector.pipeline.engine import Engine, RecordProcessor
from connector.settings import SourceConfig
from connector.store import Accepted, QuarantineEntry, Rejected, Store
from connector.store.coordination import source_lock
from connector.store.quarantine_ops import release_quarantined

REPROCESS_KIND = "reprocess"
# These were never mapped from a complete record (the detail call failed) or need a human
# decision (two copies of one id): only a sync can settle them.
NEEDS_SYNC = frozenset({Reason.DETAIL_UNAVAILABLE, Reason.DUPLICATE_IN_RUN})
_BATCH = 500


@dataclass
class ReprocessResult:
    source: str
    run_id: int | None = None
    examined: int = 0
    moved: int = 0
    still_quarantined: int = 0
    skipped: int = 0
    moved_by_reason: Counter[str] = field(default_factory=Counter)
    error: str | None = None


def _needs_sync(entry: QuarantineEntry) -> bool:
    return any(issue.code in NEEDS_SYNC for issue in entry.issues)


def reprocess(
    engine: Engine, *, sources: Sequence[str] | None = None, reason: str | None = None
) -> list[ReprocessResult]:
    """Reprocess the quarantine of the named sources (default: every source that has one)."""
    store = engine.store
    names = list(sources) if sources else sorted(store.quarantine_by_reason())
    results = []
    for name in names:
        result = ReprocessResult(name)
        results.append(result)
        try:
            source = engine.config.source(name)
        except ConfigError:
            result.error = "not in the config: its records cannot be mapped"
            continue
        entries = store.quarantine_entries(name, reason)
        if not entries:
            continue
        # The replica lock of syncs: a sync writing a newer copy of a record while we move an
        # older one would otherwise race us.
        lock = source_lock(store, name, engine.config.daemon.lease)
        if not lock.acquire():
            result.error = "another process is syncing this source right now; try again later"
            continue
        try:
            with bound_run(name, kind=REPROCESS_KIND) as run_fields:
                _reprocess_source(engine, source, entries, lock.renew, result, run_fields)
        finally:
            lock.release()
    return results


def _reprocess_source(
    engine: Engine,
    source: SourceConfig,
    entries: Sequence[QuarantineEntry],
    keep_lock: Callable[[], bool],
    result: ReprocessResult,
    run_fields: RunBinding,
) -> None:
    store, name = engine.store, source.name
    processor = engine.processor(source)
    try:
        run_id = store.start_run(name, REPROCESS_KIND, None)
    except ConnectorError as exc:
        result.error = str(exc)
        return
    result.run_id = run_id
    run_fields.bind(run_id=run_id)
    try:
        for start in range(0, len(entries), _BATCH):
            if not keep_lock():
                result.error = "lost the source lock to another process; stopped"
                break
            batch = entries[start : start + _BATCH]
            _reprocess_batch(store, processor, run_id, name, batch, result)
    except ConnectorError as exc:
        result.error = str(exc)
    store.finish_run(
        run_id,
        name,
        status="ok" if result.error is None else "failed",
        error=result.error,
        track_state=False,
    )


def _reprocess_batch(
    store: Store,
    processor: RecordProcessor,
    run_id: int,
    name: str,
    entries: Sequence[QuarantineEntry],
    result: ReprocessResult,
) -> None:
    accepted: list[Accepted] = []
    rejected: list[Rejected] = []
    rekeyed: list[str] = []
    moved_reasons: Counter[str] = Counter()
    for entry in entries:
        result.examined += 1
        if _needs_sync(entry):
            result.skipped += 1
            continue
        ok, bad, _updated_at = processor.process(entry.raw_payload)
        if ok is not None:
            accepted.append(ok)
            if ok.invoice.id != entry.record_key:
                rekeyed.append(entry.record_key)
            moved_reasons.update({i.code.value for i in entry.issues if i.severity == "error"})
        elif bad is not None:
            # Keep the stored key: the issues and attempts of this very row are updated.
            rejected.append(Rejected(entry.record_key, bad.raw, bad.canonical, bad.issues))
    if not accepted and not rejected:
        return
    store.write_batch(
        run_id,
        name,
        accepted,
        rejected,
        fetched=len(accepted) + len(rejected),
        resume=None,
        track_state=False,
    )
    if rekeyed:
        release_quarantined(store, name, rekeyed)
    result.moved += len(accepted)
    result.still_quarantined += len(rejected)
    result.moved_by_reason.update(moved_reasons)
