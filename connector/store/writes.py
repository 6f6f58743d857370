"""The batch write: upsert one batch, quarantine its rejects and move the checkpoint, all in
one transaction, so that a crash between batches never moves the cursor past unsaved data.

Upsert key: (source, source invoice id). Every accepted invoice is new (inserted), changed
(content hash differs: row updated, items replaced) or unchanged (no write at all); records
that now pass leave quarantine. The steps that differ by backend are a `BulkPath`
(`connector.store.bulk`, `connector.store.sqlite_bulk`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, bindparam, delete, insert, select, update

from connector.store.bulk import Accepted, BulkPath, CoreBulk, Rejected, invoice_values
from connector.store.database import Database, chunks, utcnow
from connector.store.leases import LeaseClock
from connector.store.locks import require_fence
from connector.store.runs import BatchCounts, record_batch
from connector.store.schema import invoice, invoice_item, quarantine
from connector.store.sqlite_bulk import SqliteBulk

_BULK_PATHS: dict[str, BulkPath] = {"sqlite": SqliteBulk()}
_PORTABLE = CoreBulk()


def _keyed_update(
    table: Table,
    key: tuple[str, ...],
    assigned: tuple[str, ...],
    kept: tuple[str, ...],
    **extra: Any,
) -> Any:
    """UPDATE of `assigned` columns by `key`, for executemany with `_keyed` rows: the key
    columns bind as "k_<name>" in WHERE, the assigned ones as "v_<name>" in SET (a bind
    parameter may not share its name with a column that SET assigns). Every column must be
    named somewhere, so that a column added to the schema cannot be silently left stale."""
    named = {*key, *assigned, *kept, *extra}
    if named != set(table.c.keys()):
        raise RuntimeError(f"the update of {table.name} does not account for every column")
    where = [table.c[name] == bindparam(f"k_{name}") for name in key]
    values = {name: bindparam(f"v_{name}", type_=table.c[name].type) for name in assigned}
    return update(table).where(*where).values(values).values(extra)


def _keyed(row: dict[str, Any], key: tuple[str, ...]) -> dict[str, Any]:
    """A row's values under the bind names of `_keyed_update`."""
    return {(f"k_{name}" if name in key else f"v_{name}"): value for name, value in row.items()}


def _quarantine_values(r: Rejected, run_id: int, now: datetime) -> dict[str, Any]:
    codes = sorted({i.code.value for i in r.issues if i.severity == "error"})
    return {
        "record_key": r.record_key,
        "raw_payload": r.raw,
        "canonical": r.canonical.model_dump(mode="json") if r.canonical else None,
        "issues": [i.as_dict() for i in r.issues],
        "reason_codes": "," + ",".join(codes) + ",",
        "last_seen_at": now,
        "last_run_id": run_id,
    }


_INVOICE_KEY = ("source", "source_id")
_QUARANTINE_KEY = ("source", "record_key")
# Exactly the columns `invoice_values` / `_quarantine_values` carry: first_seen_at is kept.
_INVOICE_UPDATE = _keyed_update(
    invoice,
    _INVOICE_KEY,
    tuple(c.key for c in invoice.c if c.key not in (*_INVOICE_KEY, "first_seen_at")),
    kept=("first_seen_at",),
)
_QUARANTINE_UPDATE = _keyed_update(
    quarantine,
    _QUARANTINE_KEY,
    ("raw_payload", "canonical", "issues", "reason_codes", "last_seen_at", "last_run_id"),
    kept=("id", "first_seen_at"),
    attempts=quarantine.c.attempts + 1,
)


class BatchWrites(Database):
    """The `Store` method that writes a batch (`write_batch`)."""

    def write_batch(
        self,
        run_id: int,
        source: str,
        accepted: Sequence[Accepted],
        rejected: Sequence[Rejected],
        *,
        fetched: int,
        resume: dict[str, Any] | None,
        track_state: bool = True,
    ) -> BatchCounts:
        """Upsert one batch, quarantine its rejects and move the checkpoint: all or nothing.

        A run started under a source lock writes only while its lock epoch is current: the
        fence is checked first, in this transaction, else `LockLost` and nothing is kept."""
        counts = BatchCounts(fetched=fetched)
        now = utcnow()
        with self.transaction() as conn:
            require_fence(conn, run_id, LeaseClock(self))
            _upsert_invoices(conn, run_id, source, accepted, counts, now)
            _quarantine(conn, run_id, source, rejected, counts, now)
            record_batch(
                conn, run_id, source, counts, resume=resume, now=now, track_state=track_state
            )
        return counts


def _upsert_invoices(
    conn: Connection,
    run_id: int,
    source: str,
    accepted: Sequence[Accepted],
    counts: BatchCounts,
    now: datetime,
) -> None:
    if not accepted:
        return
    bulk = _BULK_PATHS.get(conn.dialect.name, _PORTABLE)
    # The last copy of an id within one batch wins, as it would across batches.
    by_id = {a.id: a for a in accepted}
    ids = list(by_id)
    known = bulk.known_hashes(conn, source, ids)
    new = [by_id[i] for i in ids if i not in known]
    changed = [by_id[i] for i in ids if i in known and known[i] != by_id[i].content_hash]
    counts.unchanged += len(ids) - len(new) - len(changed)
    counts.inserted += len(new)
    counts.updated += len(changed)
    if new:
        bulk.insert_invoices(conn, new, run_id, now)
    if changed:
        # One compiled statement, one driver executemany (was one compiled UPDATE per row).
        conn.execute(
            _INVOICE_UPDATE,
            [_keyed(invoice_values(a, run_id, now), _INVOICE_KEY) for a in changed],
        )
        for chunk in chunks([a.id for a in changed]):
            conn.execute(
                delete(invoice_item).where(
                    invoice_item.c.source == source, invoice_item.c.source_id.in_(chunk)
                )
            )
    bulk.insert_items(conn, (*new, *changed))
    counts.released += bulk.release_quarantined(conn, source, ids)


def _quarantine(
    conn: Connection,
    run_id: int,
    source: str,
    rejected: Sequence[Rejected],
    counts: BatchCounts,
    now: datetime,
) -> None:
    if not rejected:
        return
    by_key = {r.record_key: r for r in rejected}
    keys = list(by_key)
    existing: set[str] = set()
    for chunk in chunks(keys):
        existing.update(
            conn.execute(
                select(quarantine.c.record_key).where(
                    quarantine.c.source == source, quarantine.c.record_key.in_(chunk)
                )
            ).scalars()
        )
    counts.quarantined += len(keys)
    fresh = [by_key[k] for k in keys if k not in existing]
    if fresh:
        conn.execute(
            insert(quarantine),
            [
                _quarantine_values(r, run_id, now)
                | {"source": source, "first_seen_at": now, "attempts": 1}
                for r in fresh
            ],
        )
    seen_again = [
        _keyed(_quarantine_values(by_key[key], run_id, now) | {"source": source}, _QUARANTINE_KEY)
        for key in keys
        if key in existing
    ]
    if seen_again:
        conn.execute(_QUARANTINE_UPDATE, seen_again)
