"""The connector's error hierarchy, named by what the caller must do.

    ConnectorError
    ├── ConfigError            stop before starting; lists every problem at once
    ├── SourceError            this source cannot go on; the other sources continue
    │   ├── AuthError          credentials rejected (after one refresh where the auth allows it)
    │   ├── ContractError      the vendor answered something its contract does not allow
    │   └── RetriesExhausted   a retriable failure that did not clear within the retry budget
    ├── RetriableError         transient (timeout, connection, 429, 5xx): back off and try again
    ├── StoreError             the local store refused a write (disk full, read-only, schema)
    │   ├── StoreUnreachable   the database could not be reached: retry later, nothing was kept
    │   └── LockLost           this run no longer holds its source's lock: stop it (not a crash)
    └── RecordError            this one record cannot be mapped: quarantine it, go on

Record-level findings are `Issue`s (see `connector.issues`); `RecordError` only carries them out
of a mapping that could not build a canonical invoice at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from connector.issues import Issue


class ConnectorError(Exception):
    """Base of every error the connector raises on purpose."""


class ConfigError(ConnectorError):
    """The configuration is unusable; `problems` names every one of them."""

    def __init__(self, problems: Sequence[str], *, origin: str = "config") -> None:
        self.problems = list(problems)
        self.origin = origin
        listed = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{origin}: {len(self.problems)} problem(s)\n{listed}")


class SourceError(ConnectorError):
    """Fatal for one source's run: stop it, record the failure, keep the other sources going."""


class AuthError(SourceError):
    """The vendor rejected our credentials."""


class ContractError(SourceError):
    """The vendor's answer breaks its documented contract (non-JSON body, missing envelope...)."""


class RetriesExhausted(SourceError):
    """A transient failure outlasted the retry budget."""


class RetriableError(ConnectorError):
    """A transient failure worth retrying; `retry_after` is the server's hint in seconds."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StoreError(ConnectorError):
    """The store could not complete a write; nothing of the failed transaction was kept."""


class StoreUnreachable(StoreError):
    """The database could not be reached (refused, dropped, timed out); nothing was kept."""


class LockLost(StoreError):
    """The run's source lock is gone (its session died, its lease ran out, or another replica
    took the source over): the store refused the write or checkpoint, so the run must stop.
    Expected in a fleet of replicas, and never a crash."""


class RecordError(ConnectorError):
    """One record is unusable as received; it goes to quarantine with these issues."""

    def __init__(self, issues: Sequence[Issue]) -> None:
        self.issues = list(issues)
        super().__init__("; ".join(f"{i.code.value} at {i.path}" for i in self.issues))
