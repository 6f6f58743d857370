"""Store side of the policy registry: import (all or nothing), listing and the run snapshot.

An import is one transaction: new policies / links are inserted, known ones updated in place
(a re-import upserts), so a failure leaves the registry exactly as it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, bindparam, func, insert, select, update

from connector.policies import PatientLink, PolicyRecord, RegistrySnapshot
from connector.store.schema import patient_link, policy
from connector.store.store import Store, _chunks, utcnow


@dataclass(frozen=True, slots=True)
class ImportCounts:
    inserted: int
    updated: int


def import_policies(store: Store, records: Sequence[PolicyRecord]) -> ImportCounts:
    """Upsert registry rows in one transaction."""
    now = utcnow()
    by_number = {r.policy_number: r for r in records}
    numbers = list(by_number)
    with store._transaction() as conn:
        known = _known(conn, numbers)
        fresh = [by_number[n] for n in numbers if n not in known]
        stale = [by_number[n] for n in numbers if n in known]
        if fresh:
            conn.execute(insert(policy), [_policy_row(r) | {"imported_at": now} for r in fresh])
        if stale:
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
                    for r in stale
                ],
            )
    return ImportCounts(len(fresh), len(stale))


def _known(conn: Connection, numbers: Sequence[str]) -> set[str]:
    known: set[str] = set()
    for chunk in _chunks(numbers):
        known.update(
            conn.execute(
                select(policy.c.policy_number).where(policy.c.policy_number.in_(chunk))
            ).scalars()
        )
    return known


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
    with store._transaction() as conn:
        for source, refs in by_source.items():
            known: set[str] = set()
            for chunk in _chunks(list(refs)):
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
