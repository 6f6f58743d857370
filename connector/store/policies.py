"""Store side of the policy registry: import (all or nothing), listing and the run snapshot.

An import is one transaction: new policies / links are inserted, known ones updated in place
(a re-import upserts), so a failure leaves the registry exactly as it was. A replacing import
(`replace=True`) also deletes, in that same transaction, every policy the file does not
list, so that the registry equals the file; a policy deleted that way is simply unknown to
the next run (POLICY_UNKNOWN), exactly as if it had never been imported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Column, Connection, bindparam, delete, func, insert, select, update

from connector.policies import (
    MAX_REMOVED_SHARE,
    PatientLink,
    PolicyRecord,
    RegistryDiff,
    RegistryReplaceRefused,
    RegistrySnapshot,
    diff_registry,
    removal_refusal,
)
from connector.store.database import chunks, utcnow
from connector.store.schema import invoice, patient_link, policy
from connector.store.store import Store


@dataclass(frozen=True, slots=True)
class ImportCounts:
    inserted: int
    updated: int


@dataclass(frozen=True, slots=True)
class RegistryImport:
    """The outcome of a policy import (or, with `written=False`, of its dry run).

    `invoices_on_removed` / `links_to_removed` count the stored invoices and patient links
    that name a removed policy: they are left as they are (an invoice was valid when it was
    accepted; links are their own file), and the operator is told about them.
    `refusal` says why the import is refused: set on a dry run that the real import would
    refuse, and on the outcome an `ImportRefused` carries.
    """

    diff: RegistryDiff
    written: bool
    invoices_on_removed: int = 0
    links_to_removed: int = 0
    refusal: str | None = None

    @property
    def inserted(self) -> int:
        return len(self.diff.added)

    @property
    def updated(self) -> int:
        return len(self.diff.updated)

    @property
    def unchanged(self) -> int:
        return len(self.diff.unchanged)

    @property
    def removed(self) -> int:
        return len(self.diff.removed)


class ImportRefused(RegistryReplaceRefused):
    """A refused replacing import, with everything the import would have done (`outcome`:
    the diff and the counts of stored invoices and links naming the policies it removes)."""

    def __init__(self, outcome: RegistryImport) -> None:
        assert outcome.refusal is not None
        super().__init__(outcome.refusal, outcome.diff)
        self.outcome = outcome


def import_policies(
    store: Store,
    records: Sequence[PolicyRecord],
    *,
    replace: bool = False,
    max_removed_share: float | None = MAX_REMOVED_SHARE,
    dry_run: bool = False,
) -> RegistryImport:
    """Upsert registry rows in one transaction; with `replace`, also delete every stored
    policy the file lacks, unless that removes more than `max_removed_share` of the registry
    (`ImportRefused`, a `RegistryReplaceRefused`; None lifts the limit). `dry_run` writes
    nothing and reports what the import would do, a refusal included."""
    now = utcnow()
    by_number = {r.policy_number: r for r in records}
    with store.transaction() as conn:
        if conn.dialect.name == "postgresql":
            # Two imports at once must not interleave between the diff and the writes; runs
            # reading the registry (ACCESS SHARE) are not blocked by this mode.
            conn.exec_driver_sql("LOCK TABLE policy IN SHARE ROW EXCLUSIVE MODE")
        diff = diff_registry(_stored_policies(conn), list(by_number.values()), replace=replace)
        refusal = removal_refusal(diff, max_removed_share)
        invoices_on_removed = _count_in(conn, invoice.c.policy_number, diff.removed)
        links_to_removed = _count_in(conn, patient_link.c.policy_number, diff.removed)
        outcome = RegistryImport(
            diff,
            written=not dry_run and refusal is None,
            invoices_on_removed=invoices_on_removed,
            links_to_removed=links_to_removed,
            refusal=refusal,
        )
        if dry_run:
            return outcome
        if refusal is not None:
            raise ImportRefused(outcome)
        for chunk in chunks(diff.removed):
            conn.execute(delete(policy).where(policy.c.policy_number.in_(chunk)))
        if diff.added:
            conn.execute(
                insert(policy),
                [_policy_row(by_number[n]) | {"imported_at": now} for n in diff.added],
            )
        # Unchanged rows are rewritten too: `imported_at` says when an import last listed them.
        known = [by_number[n] for n in (*diff.updated, *diff.unchanged)]
        if known:
            conn.execute(
                update(policy)
                .where(policy.c.policy_number == bindparam("b_number"))
                .values(
                    holder_name=bindparam("b_holder"),
                    status=bindparam("b_status"),
                    valid_from=bindparam("b_from"),
                    valid_to=bindparam("b_to"),
                    imported_at=bindparam("b_at"),
                ),
                [
                    {
                        "b_number": r.policy_number,
                        "b_holder": r.holder_name,
                        "b_status": r.status,
                        "b_from": r.valid_from,
                        "b_to": r.valid_to,
                        "b_at": now,
                    }
                    for r in known
                ],
            )
    return outcome


def _stored_policies(conn: Connection) -> dict[str, PolicyRecord]:
    return {
        r.policy_number: PolicyRecord(
            r.policy_number, r.holder_name, r.status, r.valid_from, r.valid_to
        )
        for r in conn.execute(select(policy))
    }


def _count_in(conn: Connection, column: Column[str], numbers: Sequence[str]) -> int:
    """Rows of `column`'s table whose `column` is one of `numbers`."""
    total = 0
    for chunk in chunks(numbers):
        query = select(func.count()).select_from(column.table).where(column.in_(chunk))
        total += int(conn.execute(query).scalar_one())
    return total


def _policy_row(record: PolicyRecord) -> dict[str, object]:
    return {
        "policy_number": record.policy_number,
        "holder_name": record.holder_name,
        "status": record.status,
        "valid_from": record.valid_from,
        "valid_to": record.valid_to,
    }


def import_links(store: Store, links: Sequence[PatientLink]) -> ImportCounts:
    """Upsert patient → policy links in one transaction."""
    now = utcnow()
    by_source: dict[str, dict[str, PatientLink]] = {}
    for link in links:
        by_source.setdefault(link.source, {})[link.patient_ref] = link
    inserted = updated = 0
    with store.transaction() as conn:
        for source, refs in by_source.items():
            known: set[str] = set()
            for chunk in chunks(list(refs)):
                known.update(
                    conn.execute(
                        select(patient_link.c.patient_ref).where(
                            patient_link.c.source == source, patient_link.c.patient_ref.in_(chunk)
                        )
                    ).scalars()
                )
            fresh = [link for ref, link in refs.items() if ref not in known]
            stale = [link for ref, link in refs.items() if ref in known]
            if fresh:
                conn.execute(
                    insert(patient_link),
                    [
                        {
                            "source": link.source,
                            "patient_ref": link.patient_ref,
                            "policy_number": link.policy_number,
                            "imported_at": now,
                        }
                        for link in fresh
                    ],
                )
            if stale:
                conn.execute(
                    update(patient_link)
                    .where(
                        patient_link.c.source == bindparam("b_source"),
                        patient_link.c.patient_ref == bindparam("b_ref"),
                    )
                    .values(policy_number=bindparam("b_number"), imported_at=bindparam("b_at")),
                    [
                        {
                            "b_source": link.source,
                            "b_ref": link.patient_ref,
                            "b_number": link.policy_number,
                            "b_at": now,
                        }
                        for link in stale
                    ],
                )
            inserted += len(fresh)
            updated += len(stale)
    return ImportCounts(inserted, updated)


def list_policies(store: Store) -> list[PolicyRecord]:
    with store.engine.connect() as conn:
        rows = conn.execute(select(policy).order_by(policy.c.policy_number)).all()
    return [
        PolicyRecord(r.policy_number, r.holder_name, r.status, r.valid_from, r.valid_to)
        for r in rows
    ]


def count_policies(store: Store) -> tuple[int, int]:
    """(policies, patient links) in the registry."""
    with store.engine.connect() as conn:
        policies = conn.execute(select(func.count()).select_from(policy)).scalar_one()
        links = conn.execute(select(func.count()).select_from(patient_link)).scalar_one()
    return int(policies), int(links)


def load_registry(store: Store) -> RegistrySnapshot:
    """The whole registry, read once per run (a consistent view for every record of it)."""
    with store.engine.connect() as conn, conn.begin():
        policies = {
            r.policy_number: PolicyRecord(
                r.policy_number, r.holder_name, r.status, r.valid_from, r.valid_to
            )
            for r in conn.execute(select(policy))
        }
        links = {
            (r.source, r.patient_ref): r.policy_number for r in conn.execute(select(patient_link))
        }
    return RegistrySnapshot(policies, links)
