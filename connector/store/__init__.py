"""The local store: the only package that talks to the database."""

from connector.store.store import (
    Accepted,
    BatchCounts,
    QuarantineEntry,
    Rejected,
    RunRecord,
    Store,
    StoredInvoice,
    SyncState,
)

__all__ = [
    "Accepted",
    "BatchCounts",
    "QuarantineEntry",
    "Rejected",
    "RunRecord",
    "Store",
    "StoredInvoice",
    "SyncState",
]
