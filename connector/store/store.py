"""`Store`: every read and write of the connector's database, behind one object.

The store is idempotent and checkpointed: each batch is upserted together with its run's
counters and resume point in one transaction (`connector.store.writes`). The class is
assembled from one module per concern: opening, migrations and transactions
(`connector.store.database`), run bookkeeping (`connector.store.runs`), the batch write
(`connector.store.writes`) and reads (`connector.store.reads`). The names other code imports
from here are re-exported.
"""

from __future__ import annotations

from connector.store import schema
from connector.store.bulk import Accepted, Rejected
from connector.store.database import chunks, sqlite_url_for, utcnow
from connector.store.reads import InvoiceReads, QuarantineEntry, StoredInvoice, quarantine_entry_of
from connector.store.runs import BatchCounts, RunBookkeeping, RunRecord, SyncState
from connector.store.writes import BatchWrites


class Store(RunBookkeeping, BatchWrites, InvoiceReads):
    """All reads and writes of the connector's database.

    Write with `transaction()` (serialised per process, `BEGIN IMMEDIATE` on SQLite, failures
    as `StoreError`); read with `engine.connect()`.
    """

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


__all__ = [
    "Accepted",
    "BatchCounts",
    "QuarantineEntry",
    "Rejected",
    "RunRecord",
    "Store",
    "StoredInvoice",
    "SyncState",
    "chunks",
    "quarantine_entry_of",
    "schema",
    "sqlite_url_for",
    "utcnow",
]
