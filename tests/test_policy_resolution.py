"""Policy resolution (issue 14): one rule over every candidate policy of an invoice.

The patient's registered link, the vendor's policy fields and a policy in the record are ranked
by registry standing (registered and active, then inactive, unknown, badly formatted), ties by
preference (link first, then the vendor's order). Checked here for every source that can offer
more than one candidate (Splose, Bio Ecko, Invoice API) through their real mappings, including
disagreements, and as properties over random candidate sets and registries (hypothesis).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.issues import Issue, Reason, errors_only
from connector.mapping.kit import CategoryMatch, MappingContext, SourceMapping
from connector.model import (
    LINK_ORIGIN,
    RECORD_ORIGIN,
    Category,
    Invoice,
    LineItem,
    Patient,
    PolicyCandidate,
)
from connector.pipeline.engine import RecordProcessor
from connector.policies import DEFAULT_POLICY_PATTERN, PolicyChecker, PolicyRecord, RegistrySnapshot
from mappings import bio_ecko, invoice_api, splose

FIXTURES = Path(__file__).resolve().parent / "fixtures"
DAY = date(2025, 6, 1)

ACTIVE = "POL-100001"
ACTIVE_TOO = "POL-100002"
SUSPENDED = "POL-100003"
EXPIRED = "POL-100004"
UNKNOWN = "POL-900001"
MEDICARE = "2123456781"
DVA = "QX000017"

REGISTRY = {
    ACTIVE: PolicyRecord(ACTIVE, "A", "active", None, None),
    ACTIVE_TOO: PolicyRecord(ACTIVE_TOO, "B", "active", date(2025, 1, 1), date(2025, 12, 31)),
    SUSPENDED: PolicyRecord(SUSPENDED, "C", "suspended", None, None),
    EXPIRED: PolicyRecord(EXPIRED, "D", "active", None, date(2024, 12, 31)),
}
ERROR_OF_STANDING = {1: Reason.POLICY_INACTIVE, 2: Reason.POLICY_UNKNOWN, 3: Reason.POLICY_FORMAT}


def load(path: str) -> Any:
    return json.loads((FIXTURES / path).read_text(encoding="utf-8"))


def checker_with(link: str | None, source: str, ref: str) -> PolicyChecker:
    links = {(source, ref): link} if link else {}
    return PolicyChecker(RegistrySnapshot(policies=REGISTRY, links=links))


def any_category(word: str | None, description: str | None) -> CategoryMatch:
    return CategoryMatch(Category.CONSULTATION, "test:any")


# ----------------------------------------------------------------------------- the sources


def splose_raw(policy: str | None, ref: str) -> dict[str, Any]:
    raw: dict[str, Any] = load("splose/invoice_mixed.json")
    raw["patientId"] = int(ref)
    # A Medicare provider number first, as Splose's own documentation shows the field.
    references = [f"Medicare: {MEDICARE}"]
    raw["referenceNumbers"] = [*references, f"Policy: {policy}"] if policy else references
    return raw


def bio_ecko_raw(policy: str | None, ref: str) -> dict[str, Any]:
    raw: dict[str, Any] = load("bio_ecko/detail_documented.json")
    raw["patient"]["id"] = ref
    raw["patient"]["insurance"] = {"provider": "Star Health", "policy_number": policy}
    return raw


def invoice_api_raw(policy: str | None, ref: str) -> dict[str, Any]:
    raw: dict[str, Any] = load("invoice_api/line_discount.json")
    raw["patient_id"] = ref
    raw["_patient"] = {"first_name": "Amina", "last_name": "K", "insurance_policy_number": policy}
    return raw


# vendor → (mapping, raw payload builder, patient ref, origin of the vendor's policy candidate)
SOURCES: dict[str, tuple[SourceMapping, Callable[[str | None, str], Any], str, str]] = {
    "splose": (splose.MAPPING, splose_raw, "42", "referenceNumbers[Policy]"),
    "bio_ecko": (bio_ecko.MAPPING, bio_ecko_raw, "pat_7", RECORD_ORIGIN),
    "invoice_api": (invoice_api.MAPPING, invoice_api_raw, "pat-uuid-7", RECORD_ORIGIN),
}


def context(mapping: SourceMapping, **options: Any) -> MappingContext:
    currency = {"splose": "AUD", "bio_ecko": "INR"}.get(mapping.vendor, "USD")
    return mapping.context(
        mapping.vendor, currency=currency, categorize=any_category, options=options
    )


def resolve(vendor: str, sent: str | None, link: str | None) -> tuple[Invoice, list[Issue]]:
    mapping, build, ref, _origin = SOURCES[vendor]
    invoice = mapping.to_canonical(build(sent, ref), context(mapping))
    invoice = invoice.model_copy(update={"invoice_date": DAY})
    checker = checker_with(link, vendor, ref)
    resolved = checker.resolve(invoice)
    return resolved, checker.check(resolved)


# (sent by the vendor, linked, expected policy, expected origin, expected error or None)
CASES = [
    # An explicit, registered link beats an unregistered or badly formatted payload value.
    (UNKNOWN, ACTIVE, ACTIVE, LINK_ORIGIN, None),
    (MEDICARE, ACTIVE, ACTIVE, LINK_ORIGIN, None),
    # A registered active payload beats a link to an unknown or suspended policy.
    (ACTIVE, UNKNOWN, ACTIVE, "vendor", None),
    (ACTIVE, SUSPENDED, ACTIVE, "vendor", None),
    (ACTIVE_TOO, EXPIRED, ACTIVE_TOO, "vendor", None),
    # Both registered and active: the operator's link is preferred.
    (ACTIVE_TOO, ACTIVE, ACTIVE, LINK_ORIGIN, None),
    # Nothing active: the better standing still decides, and is the reason given.
    (MEDICARE, SUSPENDED, SUSPENDED, LINK_ORIGIN, Reason.POLICY_INACTIVE),
    (UNKNOWN, DVA, UNKNOWN, "vendor", Reason.POLICY_UNKNOWN),
    # Agreement, or one candidate only: no warning.
    (ACTIVE, ACTIVE, ACTIVE, LINK_ORIGIN, None),
    (None, ACTIVE, ACTIVE, LINK_ORIGIN, None),
    (UNKNOWN, None, UNKNOWN, "vendor", Reason.POLICY_UNKNOWN),
    (None, None, None, None, Reason.POLICY_MISSING),
]


@pytest.mark.parametrize("vendor", sorted(SOURCES))
@pytest.mark.parametrize(("sent", "linked", "billed", "origin", "error"), CASES)
def test_every_multi_candidate_source_follows_the_rule(
    vendor: str,
    sent: str | None,
    linked: str | None,
    billed: str | None,
    origin: str | None,
    error: Reason | None,
) -> None:
    resolved, issues = resolve(vendor, sent, linked)
    patient = resolved.patient
    assert patient.policy_number == billed
    vendor_origin = SOURCES[vendor][3]
    assert patient.policy_source == (vendor_origin if origin == "vendor" else origin)
    assert [i.code for i in errors_only(issues)] == ([error] if error else [])
    warnings = [i for i in issues if i.severity == "warning"]
    disagree = sent is not None and linked is not None and sent != linked
    assert [w.code for w in warnings] == ([Reason.POLICY_CONFLICT] if disagree else [])
    for issue in issues:
        # Policy numbers are patient data: only masked in messages.
        assert not any(n in issue.message for n in (sent, linked) if n)
    if disagree:
        (warning,) = warnings
        assert warning.path == "patient.policy_number"
        assert f"used {patient.policy_source}" in warning.message


def test_the_conflict_warning_names_every_candidate_and_its_standing() -> None:
    resolved, issues = resolve("splose", UNKNOWN, ACTIVE)
    (warning,) = issues
    assert warning.code is Reason.POLICY_CONFLICT and warning.severity == "warning"
    assert "used patient link" in warning.message and "registered and active" in warning.message
    assert "referenceNumbers[Policy]" in warning.message
    assert "not in the registry" in warning.message
    # The Medicare number is no candidate by default, so the warning does not mention it.
    assert "Medicare" not in warning.message
    assert [c.origin for c in resolved.patient.policy_candidates] == [
        LINK_ORIGIN,
        "referenceNumbers[Policy]",
    ]


def test_configured_medicare_prefix_never_overrides_a_registered_link() -> None:
    mapping, build, ref, _ = SOURCES["splose"]
    ctx = context(mapping, policy_reference_prefixes=["Medicare", "Policy", "Insurance"])
    invoice = mapping.to_canonical(build(None, ref), ctx)
    assert invoice.patient.policy_number == MEDICARE  # the vendor's first, before resolution
    checker = checker_with(ACTIVE, "splose", ref)
    resolved = checker.resolve(invoice)
    assert resolved.patient.policy_number == ACTIVE
    issues = checker.check(resolved)
    assert [(i.code, i.severity) for i in issues] == [(Reason.POLICY_CONFLICT, "warning")]
    assert "referenceNumbers[Medicare]" in issues[0].message
    assert "not in the registry's format" in issues[0].message


def test_resolution_is_idempotent() -> None:
    checker = checker_with(ACTIVE, "splose", "42")
    once = checker.resolve(
        splose.MAPPING.to_canonical(splose_raw(UNKNOWN, "42"), context(splose.MAPPING))
    )
    twice = checker.resolve(once)
    assert twice == once
    assert [c.origin for c in twice.patient.policy_candidates].count(LINK_ORIGIN) == 1


def test_an_accepted_invoice_stays_accepted_and_keeps_its_warning() -> None:
    """Through the engine's own record processor: the disagreement is a warning, the invoice
    is accepted, and `warnings()` (what `connector validate` reports) still names it."""
    checker = checker_with(ACTIVE, "splose", "42")
    processor = RecordProcessor(
        splose.MAPPING, context(splose.MAPPING), checker.check, checker.resolve
    )
    accepted, rejected, _ = processor.process(splose_raw(UNKNOWN, "42"))
    assert rejected is None and accepted is not None
    assert accepted.invoice.patient.policy_number == ACTIVE
    assert [w.code for w in processor.warnings(accepted.invoice)] == [Reason.POLICY_CONFLICT]
    # Provenance is not content: the hash is that of the same invoice without it.
    bare = accepted.invoice.patient.model_copy(
        update={"policy_candidates": (), "policy_source": None}
    )
    assert (
        accepted.content_hash
        == accepted.invoice.model_copy(update={"patient": bare}).content_hash()
    )


def test_a_quarantined_invoice_carries_the_warning_with_its_errors() -> None:
    checker = checker_with(DVA, "splose", "42")
    processor = RecordProcessor(
        splose.MAPPING, context(splose.MAPPING), checker.check, checker.resolve
    )
    accepted, rejected, _ = processor.process(splose_raw(UNKNOWN, "42"))
    assert accepted is None and rejected is not None
    codes = [(i.code, i.severity) for i in rejected.issues]
    assert (Reason.POLICY_UNKNOWN, "error") in codes
    assert (Reason.POLICY_CONFLICT, "warning") in codes


# ----------------------------------------------------------------------------- properties

POOL = (ACTIVE, ACTIVE_TOO, SUSPENDED, EXPIRED, UNKNOWN, "POL-900002", MEDICARE, DVA, "pol-1")
FORMAT = DEFAULT_POLICY_PATTERN
VENDOR_ORIGINS = (
    "referenceNumbers[Policy]",
    "referenceNumbers[Insurance]",
    "referenceNumbers[Medicare]",
    RECORD_ORIGIN,
)


@st.composite
def registries(draw: st.DrawFn) -> dict[str, PolicyRecord]:
    """Random membership of the pool's numbers, random statuses and windows (a registry may
    even hold a number that fails the format: imports do not check it)."""
    registry: dict[str, PolicyRecord] = {}
    for number in POOL:
        kind = draw(st.sampled_from(["absent", "active", "inactive", "expired", "future"]))
        if kind == "absent":
            continue
        status = "inactive" if kind == "inactive" else "active"
        valid_to = date(2024, 12, 31) if kind == "expired" else None
        valid_from = date(2026, 1, 1) if kind == "future" else None
        registry[number] = PolicyRecord(number, None, status, valid_from, valid_to)
    return registry


def oracle_standing(number: str, registry: dict[str, PolicyRecord], day: date) -> int:
    """The rule's ranking, written independently of connector.policies."""
    if not re.search(FORMAT, number):
        return 3
    record = registry.get(number)
    if record is None:
        return 2
    if record.status != "active":
        return 1
    if record.valid_from is not None and day < record.valid_from:
        return 1
    if record.valid_to is not None and day > record.valid_to:
        return 1
    return 0


candidate_lists = st.lists(
    st.builds(
        lambda n, o: PolicyCandidate(number=n, origin=o),
        st.sampled_from(POOL),
        st.sampled_from(VENDOR_ORIGINS),
    ),
    max_size=5,
)


def bare_invoice(candidates: tuple[PolicyCandidate, ...]) -> Invoice:
    return Invoice(
        source="src",
        id="1",
        invoice_number="N-1",
        invoice_date=DAY,
        total_amount=0,
        currency="USD",
        status=None,
        source_status="x",
        patient=Patient(
            name="A B",
            policy_number=candidates[0].number if candidates else None,
            source_ref="p-1",
            policy_candidates=candidates,
        ),
        items=(
            LineItem(category=Category.DENTAL, description="d", quantity=1, unit_price=0, total=0),
        ),
    )


@settings(max_examples=400, deadline=None)
@given(registries(), candidate_lists, st.one_of(st.none(), st.sampled_from(POOL)))
def test_the_chosen_candidate_satisfies_the_rule(
    registry: dict[str, PolicyRecord], sent: list[PolicyCandidate], link: str | None
) -> None:
    links = {("src", "p-1"): link} if link else {}
    checker = PolicyChecker(RegistrySnapshot(policies=registry, links=links))
    resolved = checker.resolve(bare_invoice(tuple(sent)))
    offered = ([PolicyCandidate(number=link, origin=LINK_ORIGIN)] if link else []) + sent
    issues = checker.check(resolved)
    if not offered:
        assert resolved.patient.policy_number is None
        assert [i.code for i in issues] == [Reason.POLICY_MISSING]
        return
    standings = [oracle_standing(c.number, registry, DAY) for c in offered]
    best = min(standings)
    chosen = offered[standings.index(best)]  # the first of the best, in order of preference
    assert resolved.patient.policy_number == chosen.number
    assert resolved.patient.policy_source == chosen.origin
    assert list(resolved.patient.policy_candidates) == offered
    # A candidate failing the format never overrides one passing it.
    if any(s < 3 for s in standings):
        assert oracle_standing(resolved.patient.policy_number, registry, DAY) < 3
    # A registered, active link always wins.
    if link and oracle_standing(link, registry, DAY) == 0:
        assert resolved.patient.policy_number == link
    errors = errors_only(issues)
    assert [i.code for i in errors] == ([ERROR_OF_STANDING[best]] if best else [])
    conflict = len({c.number for c in offered}) > 1
    warnings = [i.code for i in issues if i.severity == "warning"]
    assert warnings == ([Reason.POLICY_CONFLICT] if conflict else [])


@settings(max_examples=300, deadline=None)
@given(registries(), candidate_lists, st.one_of(st.none(), st.sampled_from(POOL)), st.randoms())
def test_the_order_of_vendor_fields_never_lets_a_worse_candidate_win(
    registry: dict[str, PolicyRecord],
    sent: list[PolicyCandidate],
    link: str | None,
    rng: Any,
) -> None:
    links = {("src", "p-1"): link} if link else {}
    checker = PolicyChecker(RegistrySnapshot(policies=registry, links=links))
    shuffled = list(sent)
    rng.shuffle(shuffled)
    first = checker.resolve(bare_invoice(tuple(sent))).patient.policy_number
    second = checker.resolve(bare_invoice(tuple(shuffled))).patient.policy_number
    # Only ties may be broken differently; the standing of the policy billed is the same.
    if first is None or second is None:
        assert first == second
    else:
        assert oracle_standing(first, registry, DAY) == oracle_standing(second, registry, DAY)


LABELS = ("Policy", "Insurance", "Medicare", "DVA", "Provider")


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(LABELS), st.sampled_from(POOL)), max_size=5),
    st.sampled_from([None, ["Medicare", "Policy", "Insurance"], ["DVA", "Medicare"]]),
    st.randoms(),
)
def test_a_registered_link_always_wins_over_any_unregistered_splose_reference(
    entries: list[tuple[str, str]], prefixes: list[str] | None, rng: Any
) -> None:
    rng.shuffle(entries)
    raw = splose_raw(None, "42")
    # Every payload value outside the registry (registered ones could tie with the link).
    raw["referenceNumbers"] = [
        f"{label}: {number}" for label, number in entries if number not in REGISTRY
    ]
    options = {} if prefixes is None else {"policy_reference_prefixes": prefixes}
    invoice = splose.MAPPING.to_canonical(raw, context(splose.MAPPING, **options))
    checker = checker_with(ACTIVE, "splose", "42")
    resolved = checker.resolve(invoice.model_copy(update={"invoice_date": DAY}))
    assert resolved.patient.policy_number == ACTIVE
    assert resolved.patient.policy_source == LINK_ORIGIN
    issues = checker.check(resolved)
    assert errors_only(issues) == []
    sent = {c.number for c in invoice.patient.policy_candidates}
    assert [i.code for i in issues] == ([Reason.POLICY_CONFLICT] if sent - {ACTIVE} else [])
    # By default a Medicare or DVA entry is never a candidate at all.
    if prefixes is None:
        assert all(
            c.origin in {"referenceNumbers[Policy]", "referenceNumbers[Insurance]"}
            for c in invoice.patient.policy_candidates
        )
