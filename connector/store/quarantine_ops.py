"""Quarantine reads and repairs the reprocess and quarantine commands need beyond `Store`.

Kept beside the store because only store code talks to the database.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, select

from connector.store.database import chunks
from connector.store.reads import QuarantineEntry, quarantine_entry_of
from connector.store.schema import quarantine
from connector.store.store import Store


def quarantine_entry(store: Store, entry_id: int) -> QuarantineEntry | None:
    """One quarantined record by its id, or None."""
    with store.engine.connect() as conn:
        r = conn.execute(select(quarantine).where(quarantine.c.id == entry_id)).first()
    if r is None:
        return None
    return quarantine_entry_of(r)


def release_quarantined(store: Store, source: str, record_keys: Sequence[str]) -> int:
    """Drop quarantine rows of records now stored under another key (a record whose mapping
    failed before it had an id): the batch write only releases rows keyed by invoice id."""
    released = 0
    with store.transaction() as conn:
        for chunk in chunks(list(record_keys)):
            released += conn.execute(
                delete(quarantine).where(
                    quarantine.c.source == source, quarantine.c.record_key.in_(chunk)
                )
            ).rowcount
    return released
