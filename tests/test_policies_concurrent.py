"""Two `policies import --replace` at once on PostgreSQL are serialised.

`import_policies` reads the registry, diffs it with the file and writes the difference; two
imports that both read before either writes would each delete and insert against a registry
that no longer exists — a lost update, a registry equal to neither file, or a deadlock. The
store takes `LOCK TABLE policy IN SHARE ROW EXCLUSIVE MODE` (self-conflicting) before reading,
so the second import waits for the first to commit and then diffs against its result.

The test forces the dangerous interleaving instead of hoping for it: each import, right after
reading the registry, waits until the other import has read it too — or is seen waiting for a
lock on `policy` (pg_locks), which only the table lock can cause at that point. Two `Store`s
(two engines), as two processes would have: one `Store` would queue its writers in Python.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from dataclasses import replace as with_fields

import pytest
from sqlalchemy import Connection, create_engine, text

from connector.policies import PolicyRecord
from connector.store import Store
from connector.store import policies as store_policies
from connector.store.policies import RegistryImport, import_policies, list_policies
from tests.conftest import pg_unreachable_reason

pytestmark = pytest.mark.postgres

WAIT_SECONDS = 20.0


@pytest.fixture(autouse=True)
def _pg_required() -> None:
    # conftest's `pg_url` skips when the server is down; CI (CONNECTOR_REQUIRE_PG=1) must fail.
    reason = pg_unreachable_reason()
    if reason and os.environ.get("CONNECTOR_REQUIRE_PG") == "1":
        pytest.fail(reason)


def active(number: int, holder: str = "Holder") -> PolicyRecord:
    return PolicyRecord(f"POL-{number}", holder, "active", None, None)


# The registry before: POL-100000 … POL-100019. File A drops POL-100018, adds POL-200001 and
# renames POL-100000's holder; file B drops POL-100019, adds POL-200002 and cancels
# POL-100000. Run alone in either order, the second import sees the first one's registry and
# removes 2 of its 20 policies: at the 10% limit, so neither import is refused.
BEFORE = [active(100000 + i) for i in range(20)]
FILE_A = [
    with_fields(BEFORE[0], holder_name="Ann A"),
    *(r for r in BEFORE[1:] if r.policy_number != "POL-100018"),
    active(200001),
]
FILE_B = [
    with_fields(BEFORE[0], status="cancelled"),
    *(r for r in BEFORE[1:] if r.policy_number != "POL-100019"),
    active(200002),
]


def by_number(records: list[PolicyRecord]) -> list[PolicyRecord]:
    return sorted(records, key=lambda r: r.policy_number)


@dataclass
class Rendezvous:
    """Holds each import right after its registry read until the other one has read too, or
    is blocked on a lock on `policy`: the interleaving in which an unlocked import loses."""

    monitor_url: str
    read: list[str] = field(default_factory=list)
    saw_lock_waiter: list[str] = field(default_factory=list)
    condition: threading.Condition = field(default_factory=threading.Condition)

    def wrap(self, real: Callable[[Connection], dict[str, PolicyRecord]]) -> Callable[..., object]:
        def read_then_wait(conn: Connection) -> dict[str, PolicyRecord]:
            stored = real(conn)
            me = threading.current_thread().name
            with self.condition:
                self.read.append(me)
                self.condition.notify_all()
            self._wait_for_the_other(me)
            return stored

        return read_then_wait

    def _wait_for_the_other(self, me: str) -> None:
        monitor = create_engine(self.monitor_url)
        deadline = time.monotonic() + WAIT_SECONDS
        try:
            while time.monotonic() < deadline:
                with self.condition:
                    if len(self.read) == 2:
                        return
                with monitor.connect() as conn:
                    waiting = conn.execute(
                        text(
                            "SELECT count(*) FROM pg_locks "
                            "WHERE relation = 'policy'::regclass AND NOT granted"
                        )
                    ).scalar_one()
                if waiting:
                    self.saw_lock_waiter.append(me)
                    return
                time.sleep(0.02)
            raise AssertionError("the other import neither read the registry nor waited")
        finally:
            monitor.dispose()


@pytest.fixture
def seeded(pg_url: str) -> Iterator[str]:
    """A PostgreSQL store (a private schema) holding the registry before both imports."""
    with Store(pg_url) as store:
        import_policies(store, BEFORE)
    yield pg_url


def test_two_concurrent_replacing_imports_are_serialised(
    seeded: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rendezvous = Rendezvous(seeded)
    monkeypatch.setattr(
        store_policies,
        "_stored_policies",
        rendezvous.wrap(store_policies._stored_policies),
    )
    results: dict[str, RegistryImport] = {}
    errors: dict[str, BaseException] = {}
    start = threading.Barrier(2)

    def run(name: str, records: list[PolicyRecord]) -> None:
        try:
            with Store(seeded) as store:
                start.wait(timeout=WAIT_SECONDS)
                results[name] = import_policies(store, records, replace=True)
        except BaseException as exc:  # reported below, with the other thread's outcome
            errors[name] = exc

    threads = [
        threading.Thread(target=run, args=("A", FILE_A), name="A"),
        threading.Thread(target=run, args=("B", FILE_B), name="B"),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=2 * WAIT_SECONDS)
    assert not any(t.is_alive() for t in threads), "an import never finished"
    assert not errors, errors

    first, second = rendezvous.read
    with Store(seeded) as store:
        final = list_policies(store)
    files = {"A": FILE_A, "B": FILE_B}
    # The registry equals the file of the import that ran second, exactly (every column).
    assert by_number(final) == by_number(files[second])

    def counts(result: RegistryImport) -> tuple[int, int, int, int]:
        return (result.inserted, result.updated, result.unchanged, result.removed)

    # Each import's counts are those it would have had alone, in that order: the first against
    # the registry before, the second against the first one's file.
    assert counts(results[first]) == (1, 1, 18, 1)
    assert results[first].diff.removed == ("POL-100018" if first == "A" else "POL-100019",)
    # The second: its own drop comes back as new, the first's new policy and its own drop go.
    a_first = first == "A"
    assert counts(results[second]) == (2, 1, 17, 2)
    assert results[second].diff.added == (
        ("POL-100018", "POL-200002") if a_first else ("POL-100019", "POL-200001")
    )
    assert results[second].diff.removed == (
        ("POL-100019", "POL-200001") if a_first else ("POL-100018", "POL-200002")
    )
    assert results[second].diff.stored_before == 20
    # And the interleaving did happen: the second import was seen waiting for the table lock
    # the first one held while it read, diffed and wrote.
    assert rendezvous.saw_lock_waiter == [first]
