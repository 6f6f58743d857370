"""Coordination of several workers and replicas sharing one database: the public names of
`connector.store.leases` (backfill windows under leases, the lease clock),
`connector.store.locks` (one replica syncs a source at a time) and `connector.store.status`
(read-only backfill status), gathered under the name the daemon and the CLI import.

To skew the SQLite lease clock in a test, patch `connector.store.leases.utcnow`.
"""

from __future__ import annotations

from connector.store.leases import (
    DONE,
    FAILED,
    PENDING,
    RUNNING,
    WINDOW_COUNTS,
    BackfillWindows,
    LeaseClock,
    Window,
    WindowSummary,
    backfill_key,
)
from connector.store.locks import AdvisorySourceLock, LeaseSourceLock, SourceLock, source_lock
from connector.store.runs import close_own_running_runs
from connector.store.status import (
    BackfillStatus,
    FailedWindow,
    HeldLease,
    backfill_statuses,
    open_backfill_keys,
)

__all__ = [
    "DONE",
    "FAILED",
    "PENDING",
    "RUNNING",
    "WINDOW_COUNTS",
    "AdvisorySourceLock",
    "BackfillStatus",
    "BackfillWindows",
    "FailedWindow",
    "HeldLease",
    "LeaseClock",
    "LeaseSourceLock",
    "SourceLock",
    "Window",
    "WindowSummary",
    "backfill_key",
    "backfill_statuses",
    "close_own_running_runs",
    "open_backfill_keys",
    "source_lock",
]
