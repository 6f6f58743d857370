"""The sync history report (`connector report`): what every source's runs did, over the store.

Per source: its runs (sync, backfill, reprocess) with their counters, failed runs with their
error, the lag of its cursor behind now, and its quarantine by reason, in total and per day
of last sighting. A plain JSON-ready dict following `connector.history-report/1`; only counts,
ids of runs and error texts (scrubbed of secrets), never a record's content.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import UTC, date, datetime
from typing import Any

from connector.logging import scrub_text
from connector.settings import AppConfig
from connector.store import RunRecord, Store

SCHEMA = "connector.history-report/1"
COUNTERS = ("fetched", "inserted", "updated", "unchanged", "quarantined", "released")
KINDS = ("sync", "backfill", "reprocess")


def _since_moment(since: date | None) -> datetime | None:
    return datetime.combine(since, datetime.min.time(), UTC) if since else None


def _run_row(run: RunRecord) -> dict[str, Any]:
    seconds = (
        round((run.finished_at - run.started_at).total_seconds(), 3)
        if run.finished_at is not None
        else None
    )
    return {
        "id": run.id,
        "kind": run.kind,
        "status": run.status,
        "started_at": run.started_at.isoformat(),
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "seconds": seconds,
        "counts": {name: int(run.counts.get(name, 0)) for name in COUNTERS},
        "error": scrub_text(run.error) if run.error else None,
    }


def _totals(runs: list[RunRecord]) -> list[dict[str, Any]]:
    rows = []
    kinds = [k for k in KINDS if any(r.kind == k for r in runs)]
    kinds += sorted({r.kind for r in runs} - set(KINDS))
    for kind in kinds:
        of_kind = [r for r in runs if r.kind == kind]
        rows.append(
            {
                "kind": kind,
                "runs": len(of_kind),
                "failed": sum(1 for r in of_kind if r.status == "failed"),
                **{name: sum(int(r.counts.get(name, 0)) for r in of_kind) for name in COUNTERS},
            }
        )
    return rows


def history_report(
    store: Store,
    config: AppConfig | None = None,
    *,
    since: date | None = None,
    now: datetime | None = None,
    secrets: Iterable[str] = (),
) -> dict[str, Any]:
    """The history of every configured source and every source the store knows."""
    now = now or datetime.now(UTC)
    start = _since_moment(since)
    names = [s.name for s in config.sources] if config is not None else []
    runs_by_source: dict[str, list[RunRecord]] = defaultdict(list)
    for run in store.runs():
        if start is None or run.started_at >= start:
            runs_by_source[run.source].append(run)
    names += sorted({s.source for s in store.all_states()} - set(names))
    names += sorted(set(runs_by_source) - set(names))
    quarantine_days: dict[str, dict[str, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))
    for entry in store.quarantine_entries():
        if start is not None and entry.last_seen_at < start:
            continue
        day = entry.last_seen_at.date().isoformat()
        for code in sorted({i.code.value for i in entry.issues if i.severity == "error"}):
            quarantine_days[entry.source][day][code] += 1
    names += sorted(set(quarantine_days) - set(names))
    sources = []
    for name in names:
        runs = sorted(runs_by_source.get(name, []), key=lambda r: r.id)
        state = store.get_state(name)
        days = quarantine_days.get(name, {})
        by_reason: Counter[str] = Counter()
        for counts in days.values():
            by_reason.update(counts)
        sources.append(
            {
                "name": name,
                "cursor": state.cursor.isoformat() if state.cursor else None,
                "lag_seconds": int((now - state.cursor).total_seconds()) if state.cursor else None,
                "resume_pending": state.resume is not None,
                "stored": store.count_invoices(name),
                "quarantined": store.count_quarantined(name),
                "runs": [_run_row(r) for r in runs],
                "totals": _totals(runs),
                "failures": [
                    {
                        "run_id": r.id,
                        "kind": r.kind,
                        "status": r.status,
                        "started_at": r.started_at.isoformat(),
                        "error": scrub_text(r.error or "failed without an error text"),
                    }
                    for r in runs
                    if r.status in ("failed", "interrupted")
                ],
                "quarantine_by_reason": dict(sorted(by_reason.items(), key=lambda kv: -kv[1])),
                "quarantine_by_day": [
                    {"day": day, "reasons": dict(sorted(days[day].items()))} for day in sorted(days)
                ],
            }
        )
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "generated_at": now.isoformat(),
        "since": since.isoformat() if since else None,
        "sources": sources,
    }
    scrubbed: dict[str, Any] = _scrub(report, [s for s in secrets if s and len(s) >= 4])
    return scrubbed


def _scrub(node: Any, secrets: list[str]) -> Any:
    if isinstance(node, str):
        for secret in secrets:
            node = node.replace(secret, "**********")
        return node
    if isinstance(node, dict):
        return {k: _scrub(v, secrets) for k, v in node.items()}
    if isinstance(node, list):
        return [_scrub(v, secrets) for v in node]
    return node
